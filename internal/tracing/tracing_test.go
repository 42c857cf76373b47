package tracing_test

import (
	"context"
	"net"
	"strings"
	"testing"

	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"

	"github.com/fhirsync/fhirsync/internal/tracing"
	"github.com/fhirsync/fhirsync/internal/tracing/tracingtest"
)

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestOffCreatesNoProvider(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  tracing.Config
		env  func(string) string
	}{
		{"not enabled", tracing.Config{Endpoint: "http://127.0.0.1:1"}, nil},
		{"OTEL_SDK_DISABLED", tracing.Config{Enabled: true, Endpoint: "http://127.0.0.1:1"}, env("OTEL_SDK_DISABLED", "true")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := tracing.New(context.Background(), tc.cfg, tracing.Deps{Getenv: tc.env})
			if err != nil {
				t.Fatal(err)
			}
			if tr.Provider() != nil {
				t.Error("a tracer provider was built with tracing off")
			}
			if err := tr.Shutdown(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestExportsOverHTTP(t *testing.T) {
	t.Parallel()
	rcv := tracingtest.Start(t)
	tr, err := tracing.New(context.Background(), tracing.Config{Enabled: true, Endpoint: rcv.URL()}, tracing.Deps{Version: "1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tr.Provider().Tracer("test").Start(context.Background(), "probe")
	span.End()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown (flushes the batch): %v", err)
	}
	spans := rcv.Spans()
	if len(spans) != 1 || spans[0].Name != "probe" {
		t.Fatalf("received %+v, want the probe span", spans)
	}
	if r := spans[0].Resource; r["service.name"] != "fhirsync" || r["service.version"] != "1.2.3" {
		t.Errorf("resource %v", r)
	}
}

// grpcCollector is a loopback OTLP/gRPC trace service
// (opentelemetry.proto.collector.trace.v1.TraceService/Export).
type grpcCollector struct {
	collectorpb.UnimplementedTraceServiceServer
	rcv *tracingtest.Receiver
}

func (g grpcCollector) Export(_ context.Context, req *collectorpb.ExportTraceServiceRequest) (*collectorpb.ExportTraceServiceResponse, error) {
	g.rcv.Add(req)
	return &collectorpb.ExportTraceServiceResponse{}, nil
}

func startGRPC(t *testing.T) (*tracingtest.Receiver, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rcv := tracingtest.Start(t) // only its store is used
	srv := grpc.NewServer()
	collectorpb.RegisterTraceServiceServer(srv, grpcCollector{rcv: rcv})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return rcv, "http://" + lis.Addr().String()
}

func TestExportsOverGRPC(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  func(endpoint string) tracing.Config
		env  func(string) string
	}{
		{"configured", func(ep string) tracing.Config {
			return tracing.Config{Enabled: true, Endpoint: ep, Protocol: tracing.ProtocolGRPC}
		}, nil},
		{"from OTEL_EXPORTER_OTLP_PROTOCOL", func(ep string) tracing.Config { return tracing.Config{Enabled: true, Endpoint: ep} },
			env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rcv, ep := startGRPC(t)
			tr, err := tracing.New(context.Background(), tc.cfg(ep), tracing.Deps{Getenv: tc.env})
			if err != nil {
				t.Fatal(err)
			}
			_, span := tr.Provider().Tracer("test").Start(context.Background(), "probe")
			span.End()
			if err := tr.Shutdown(context.Background()); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if spans := rcv.Spans(); len(spans) != 1 || spans[0].Name != "probe" {
				t.Fatalf("received %+v over gRPC, want the probe span", spans)
			}
		})
	}
}

func TestSampleRatio(t *testing.T) {
	t.Parallel()
	rcv := tracingtest.Start(t)
	tr, err := tracing.New(context.Background(), tracing.Config{Enabled: true, Endpoint: rcv.URL(), SampleRatio: 1e-12}, tracing.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		_, span := tr.Provider().Tracer("test").Start(context.Background(), "probe")
		span.End()
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(rcv.Spans()); n != 0 {
		t.Errorf("%d of 50 traces exported at a ratio of 1e-12", n)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		cfg     tracing.Config
		wantErr string
	}{
		{"zero", tracing.Config{}, ""},
		{"full", tracing.Config{Enabled: true, Endpoint: "https://otel.example:4318", Protocol: "grpc", SampleRatio: 0.25}, ""},
		{"protocol", tracing.Config{Protocol: "http/json"}, "tracing.protocol"},
		{"endpoint", tracing.Config{Endpoint: "otel:4318"}, "tracing.endpoint"},
		{"ratio", tracing.Config{SampleRatio: 1.5}, "tracing.sample_ratio"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate() = %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}
	err := tracing.Config{Protocol: "x", SampleRatio: -1}.Validate()
	if err == nil || !strings.Contains(err.Error(), "protocol") || !strings.Contains(err.Error(), "sample_ratio") {
		t.Errorf("Validate() = %v, want every problem at once", err)
	}
}
