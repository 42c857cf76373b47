// Package tracing turns OpenTelemetry tracing on for a fhirsync process: it
// builds the tracer provider and its OTLP exporter (HTTP/protobuf or gRPC)
// from the configuration, or nothing at all when tracing is off.
//
// It does not start spans: the queues start each message's "notice" span
// and carry its context across the queue hop (queues.TraceSend), and the
// agent starts the spans of processing it. Span attributes follow the rule
// of process logs: record references, map names, reason codes and counts,
// never a field value or a business key. The admin app links a decision's
// trace to the tracing backend (admin.trace_url).
package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// The OTLP protocols the exporter speaks (the values of
// OTEL_EXPORTER_OTLP_PROTOCOL).
const (
	ProtocolHTTP = "http/protobuf"
	ProtocolGRPC = "grpc"
)

// Config is the tracing section of the configuration. Tracing is off unless
// Enabled is set.
type Config struct {
	// Enabled turns tracing on: spans are exported over OTLP. Off, no
	// exporter is created and the tracer is a no-op.
	Enabled bool `yaml:"enabled"`
	// Endpoint is the collector's base URL, e.g. http://otel-collector:4318
	// (HTTP/protobuf; /v1/traces is appended) or http://otel-collector:4317
	// (gRPC). An http URL sends in clear, https over TLS. Empty: the
	// standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
	// OTEL_EXPORTER_OTLP_ENDPOINT variable, else localhost.
	Endpoint string `yaml:"endpoint"`
	// Protocol is http/protobuf or grpc. Empty: the standard
	// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL
	// variable, else http/protobuf.
	Protocol string `yaml:"protocol"`
	// SampleRatio is the share of messages whose traces are kept, above 0
	// and at most 1 (0: 1, every message). The worker follows the
	// decision taken when the notice was sent.
	SampleRatio float64 `yaml:"sample_ratio"`
}

// Validate reports every problem in c at once.
func (c Config) Validate() error {
	var errs []error
	switch c.Protocol {
	case "", ProtocolHTTP, ProtocolGRPC:
	default:
		errs = append(errs, fmt.Errorf("tracing.protocol %q is not %s or %s", c.Protocol, ProtocolHTTP, ProtocolGRPC))
	}
	if c.Endpoint != "" {
		if u, err := url.Parse(c.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("tracing.endpoint %q is not an http(s) URL", c.Endpoint))
		}
	}
	if c.SampleRatio < 0 || c.SampleRatio > 1 {
		errs = append(errs, fmt.Errorf("tracing.sample_ratio %v is not between 0 and 1", c.SampleRatio))
	}
	return errors.Join(errs...)
}

// Deps are what New needs from the process.
type Deps struct {
	// Getenv reads the standard OTEL_* variables the configuration does
	// not set (nil: none are read by fhirsync; the exporter still reads
	// its own, such as OTEL_EXPORTER_OTLP_HEADERS).
	Getenv func(string) string
	// Version is the service.version resource attribute.
	Version string
	// Logger receives export failures (nil: discarded).
	Logger *slog.Logger
}

// Tracing is a process's tracer provider, or none when tracing is off.
type Tracing struct {
	sdk *sdktrace.TracerProvider
}

// New builds the tracer provider and its exporter when cfg.Enabled, else a
// Tracing whose Provider is nil. The exporter connects lazily: a collector
// that is down costs dropped spans, never a failed start.
func New(ctx context.Context, cfg Config, deps Deps) (*Tracing, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	getenv := deps.Getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	if !cfg.Enabled || strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") {
		return &Tracing{}, nil
	}
	exp, err := newExporter(ctx, cfg, getenv)
	if err != nil {
		return nil, err
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "fhirsync"), attribute.String("service.version", deps.Version)),
		// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win.
		resource.WithFromEnv())
	if err != nil {
		return nil, fmt.Errorf("tracing resource: %w", err)
	}
	ratio := cfg.SampleRatio
	if ratio == 0 {
		ratio = 1
	}
	if deps.Logger != nil {
		log := deps.Logger
		// The SDK reports export failures only through this process-wide
		// hook.
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			log.Warn("exporting traces failed", "error", err)
		}))
	}
	return &Tracing{sdk: sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
	)}, nil
}

// protocol is the OTLP protocol cfg and the environment choose.
func protocol(cfg Config, getenv func(string) string) (string, error) {
	p := cfg.Protocol
	for _, v := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if p == "" {
			p = getenv(v)
		}
	}
	switch p {
	case "", ProtocolHTTP:
		return ProtocolHTTP, nil
	case ProtocolGRPC:
		return ProtocolGRPC, nil
	}
	return "", fmt.Errorf("OTLP protocol %q is not supported (use %s or %s)", p, ProtocolHTTP, ProtocolGRPC)
}

func newExporter(ctx context.Context, cfg Config, getenv func(string) string) (sdktrace.SpanExporter, error) {
	p, err := protocol(cfg, getenv)
	if err != nil {
		return nil, err
	}
	if p == ProtocolGRPC {
		var opts []otlptracegrpc.Option
		if cfg.Endpoint != "" {
			opts = append(opts, otlptracegrpc.WithEndpointURL(cfg.Endpoint))
		}
		exp, err := otlptracegrpc.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("OTLP gRPC trace exporter: %w", err)
		}
		return exp, nil
	}
	var opts []otlptracehttp.Option
	if cfg.Endpoint != "" {
		// Like OTEL_EXPORTER_OTLP_ENDPOINT: a base URL the signal's path
		// is appended to.
		u, _ := url.Parse(cfg.Endpoint) // Validate parsed it
		u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/traces"
		opts = append(opts, otlptracehttp.WithEndpointURL(u.String()))
	}
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("OTLP HTTP trace exporter: %w", err)
	}
	return exp, nil
}

// Provider is the tracer provider to hand to the queues and the agent, nil
// when tracing is off.
func (t *Tracing) Provider() trace.TracerProvider {
	if t == nil || t.sdk == nil {
		return nil
	}
	return t.sdk
}

// Shutdown exports the spans still buffered and stops the exporter.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil || t.sdk == nil {
		return nil
	}
	return t.sdk.Shutdown(ctx)
}
