package admin

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestDecisionPageLinksItsTrace: a traced decision links to the tracing
// backend through admin.trace_url, shows the bare trace id without one,
// and an untraced decision says so; the JSON API carries trace_id.
func TestDecisionPageLinksItsTrace(t *testing.T) {
	t.Parallel()
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	for _, tc := range []struct {
		name, template, want string
	}{
		{"linked", "https://grafana.example/explore?left=%7B%22queries%22%3A%5B%7B%22query%22%3A%22{trace_id}%22%7D%5D%7D&traceId={trace_id}",
			"https://grafana.example/explore?left=%7B%22queries%22%3A%5B%7B%22query%22%3A%22" + traceID + "%22%7D%5D%7D&traceId=" + traceID},
		{"text", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{TraceURL: tc.template})
			viewer := e.as(e.user("auditor@example.org", RoleAuditor, false))
			traced := &logs.Decision{Time: e.clock.now(), MessageID: "m1", Direction: logs.FHIRToCRM, Source: logs.Ref{Type: "Patient", ID: "p1"},
				Outcome: logs.OutcomeSent, Reason: logs.ReasonCreated, TraceID: traceID}
			plain := &logs.Decision{Time: e.clock.now(), MessageID: "m2", Direction: logs.FHIRToCRM, Source: logs.Ref{Type: "Patient", ID: "p2"},
				Outcome: logs.OutcomeSent, Reason: logs.ReasonCreated}
			for _, d := range []*logs.Decision{traced, plain} {
				if err := e.app.data.logs.Write(context.Background(), d); err != nil {
					t.Fatal(err)
				}
			}
			code, body := e.page(viewer, "GET", "/logs/"+itoa(traced.ID), "", "")
			if code != 200 {
				t.Fatalf("decision page = %d", code)
			}
			if tc.want != "" {
				if got := hrefOf(t, body, "trace-link"); got != tc.want {
					t.Errorf("trace link %q, want %q", got, tc.want)
				}
			} else if strings.Contains(body, `id="trace-link"`) || !strings.Contains(body, "<code>"+traceID+"</code>") {
				t.Errorf("without admin.trace_url the trace id should show as text:\n%s", section(body, `id="trace"`))
			}
			_, body = e.page(viewer, "GET", "/logs/"+itoa(plain.ID), "", "")
			if !strings.Contains(section(body, `id="trace"`), "not traced") {
				t.Errorf("an untraced decision: %s", section(body, `id="trace"`))
			}
			_, js := e.page(viewer, "GET", "/api/v1/logs/"+itoa(traced.ID), "", "")
			if !strings.Contains(js, `"trace_id": "`+traceID+`"`) {
				t.Errorf("the API's decision lacks its trace id: %s", js)
			}
		})
	}
}

func TestTraceURLValidated(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ url, want string }{
		{"https://grafana.example/explore", "{trace_id}"},
		{"javascript:alert('{trace_id}')", "not an http(s) URL"},
		{"/explore?traceId={trace_id}", "not an http(s) URL"},
	} {
		err := AppConfig{TraceURL: tc.url}.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("admin.trace_url %q: Validate() = %v, want %q", tc.url, err, tc.want)
		}
	}
	if err := (AppConfig{TraceURL: "http://jaeger.local:16686/trace/{trace_id}"}).Validate(); err != nil {
		t.Errorf("a Jaeger trace URL: %v", err)
	}
}

func itoa(id int64) string { return strconv.FormatInt(id, 10) }

// section is the text from the element marked by attr to the end of its
// line, for messages.
func section(body, attr string) string {
	i := strings.Index(body, attr)
	if i < 0 {
		return "(no " + attr + ")"
	}
	j := strings.IndexByte(body[i:], '\n')
	if j < 0 {
		return body[i:]
	}
	return body[i : i+j]
}
