package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// pluginRejection stands for a plug-in registered in the customer's CRM
// that refuses contacts of one family name, the way Dataverse answers an
// InvalidPluginExecutionException (code 0x80040265, the plug-in's own
// message, testdata/conformance/dataverse/webapi/create-plugin-error-annotations):
// its message quotes the record's values.
type pluginRejection struct {
	next    http.RoundTripper
	family  string
	refused atomic.Int32
}

func (p *pluginRejection) RoundTrip(r *http.Request) (*http.Response, error) {
	if (r.Method == http.MethodPatch || r.Method == http.MethodPost) && strings.Contains(r.URL.Path, "/contacts") && r.Body != nil {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		if bytes.Contains(body, []byte(p.family)) {
			p.refused.Add(1)
			msg, _ := json.Marshal(map[string]any{"error": map[string]any{
				"code":    "0x80040265",
				"message": "Contact '" + p.family + " Quartz' (MRN 55501234) is a duplicate of an existing patient; merge them first.",
				"@Microsoft.PowerApps.CDS.ErrorDetails.OperationStatus": "1",
			}})
			return &http.Response{StatusCode: http.StatusBadRequest, Status: "400 Bad Request", Request: r, ProtoMajor: 1, ProtoMinor: 1,
				Header: http.Header{"Content-Type": {"application/json; odata.metadata=minimal"}, "Odata-Version": {"4.0"}},
				Body:   io.NopCloser(bytes.NewReader(msg))}, nil
		}
	}
	return p.next.RoundTrip(r)
}

// TestCRMRejectionKeepsTheCRMsCodeAndMessage: when the CRM refuses a
// write, the decision carries the CRM's own error code and its message,
// with the values the message quotes elided; the sentence names the code.
func TestCRMRejectionKeepsTheCRMsCodeAndMessage(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		plugin := &pluginRejection{family: "Rejectable"}
		e := startEnv(t, db, agent.Config{Workers: 2, MaxAttempts: 3, RetryBase: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond, CRMBatchMax: 1},
			envOptions{noPoller: true, crmRetries: -1,
				crmTransport: func(next http.RoundTripper) http.RoundTripper { plugin.next = next; return plugin }})
		ctx := context.Background()
		for _, id := range allIDs(t, e, "Organization") {
			e.notify(t, queues.SideFHIR, "Organization", id, "", queues.EventChanged)
		}
		e.quiet(t)

		// A plug-in's refusal, quoting the patient's name and MRN.
		p, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Patient", "gender": "female",
			"name": []any{map[string]any{"use": "official", "family": "Rejectable", "given": []any{"Quartz"}}}})
		if err != nil {
			t.Fatal(err)
		}
		d := e.byMessage(t, e.notify(t, queues.SideFHIR, "Patient", p.ID(), "", queues.EventChanged), "target_rejected")
		te := d.LastError()
		if d.Outcome != logs.OutcomeDeadLettered || te == nil {
			t.Fatalf("decision = %s/%s with attempts %+v, want dead_lettered target_rejected with the CRM's error", d.Outcome, d.Reason, d.Attempts)
		}
		if te.Code != "0x80040265" || te.Status != http.StatusBadRequest {
			t.Errorf("target error = %+v, want the CRM's code 0x80040265 and status 400", te)
		}
		if !strings.Contains(te.Message, "is a duplicate of an existing patient; merge them first.") {
			t.Errorf("target error message %q lost the CRM's words", te.Message)
		}
		if !strings.Contains(d.Message, "0x80040265") {
			t.Errorf("decision sentence %q does not name the CRM's code", d.Message)
		}
		whole, _ := json.Marshal(d)
		for _, v := range []string{"Rejectable", "Quartz", "55501234"} {
			if bytes.Contains(whole, []byte(v)) {
				t.Errorf("the decision carries the value %q: %s", v, whole)
			}
		}
		if n := plugin.refused.Load(); n != 1 {
			t.Errorf("the plug-in refused %d writes, want 1 (a rejection is not retried)", n)
		}

	})
}

// TestRetriedMessageIsOneDecision: a message that fails twice and then
// goes through is one decision, sent, listing three attempts with the
// class and code of each failure — not three decisions.
func TestRetriedMessageIsOneDecision(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := startEnv(t, db, agent.Config{Workers: 1, MaxAttempts: 5, RetryBase: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond, CRMBatchMax: 1},
			envOptions{noPoller: true, crmRetries: -1})
		ctx := context.Background()
		for _, id := range allIDs(t, e, "Organization") {
			e.notify(t, queues.SideFHIR, "Organization", id, "", queues.EventChanged)
		}
		e.quiet(t)
		p, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Patient", "gender": "female",
			"name": []any{map[string]any{"use": "official", "family": "Retried"}}})
		if err != nil {
			t.Fatal(err)
		}
		e.crmSrv.FailNext(2, http.StatusServiceUnavailable)
		msg := e.notify(t, queues.SideFHIR, "Patient", p.ID(), "", queues.EventChanged)
		e.byMessage(t, msg, "created")
		e.quiet(t)
		page, err := e.logs.Search(ctx, logs.Filter{MessageID: msg}, "", 50)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Decisions) != 1 {
			for _, d := range page.Decisions {
				t.Logf("decision %d: %s/%s, %d attempts", d.ID, d.Outcome, d.Reason, len(d.Attempts))
			}
			t.Fatalf("the retried message has %d decisions, want 1", len(page.Decisions))
		}
		d := page.Decisions[0]
		if d.Outcome != logs.OutcomeSent || len(d.Attempts) != 3 {
			t.Fatalf("decision = %s/%s with %d attempts %+v, want sent with 3", d.Outcome, d.Reason, len(d.Attempts), d.Attempts)
		}
		for i, a := range d.Attempts[:2] {
			if a.ErrorClass != "http_503" || !a.Retryable || a.TargetError == nil || a.Code != "0x80040216" {
				t.Errorf("attempt %d = %+v, want http_503, retryable, the CRM's code 0x80040216", i+1, a)
			}
		}
		if last := d.Attempts[2]; last.ErrorClass != "" || last.TargetError != nil {
			t.Errorf("the last attempt (the write that went through) = %+v", last)
		}
		if !d.Attempts[0].At.Before(d.Attempts[2].At) {
			t.Errorf("attempts out of order: %+v", d.Attempts)
		}
	})
}
