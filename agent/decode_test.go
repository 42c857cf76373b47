package agent

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

func readTestFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestShape(t *testing.T) {
	t.Parallel()
	small := string(readTestFile(t, filepath.Join("crm", "testdata", "remotecontext", "delete_contact.json")))
	notice := `{"v":1,"side":"crm","type":"contact","id":"5f1e9a3b-2c4d-ee11-be6e-000d3a5b8f21","event":"updated","origin":"backfill"}`
	pad := `"InputParameters":[{"key":"Target","value":{"__type":"Entity:x","Attributes":[{"key":"description","value":"` +
		strings.Repeat("d", 5000) + `"}]}}]`
	tests := []struct {
		name string
		body string
		want string
	}{
		{name: "context", body: small, want: "remote-execution-context"},
		{name: "context with MessageName behind 5 KB of parameters", body: `{"BusinessUnitId":"b",` + pad + `,"MessageName":"Update","PrimaryEntityName":"contact"}`, want: "remote-execution-context"},
		{name: "context with MessageName behind 200 KB", body: `{"A":"` + strings.Repeat("a", 200<<10) + `","MessageName":"Update"}`, want: "remote-execution-context"},
		{name: "context with members in reverse order", body: `{"UserId":"u","PrimaryEntityName":"contact","MessageName":"Create"}`, want: "remote-execution-context"},
		{name: "context member names in another case", body: `{"messagename":"Create"}`, want: "remote-execution-context"},
		{name: "context member name escaped", body: `{"Message\u004eame":"Create"}`, want: "remote-execution-context"},
		{name: "context after a byte-order mark", body: "\xef\xbb\xbf" + small, want: "remote-execution-context"},
		{name: "truncated context", body: `{"MessageName":"Update","PrimaryEntityId":`, want: "remote-execution-context"},
		{name: "notice", body: notice, want: "notice"},
		{name: "notice whose value names a context member", body: `{"v":1,"side":"crm","type":"contact","correlation_id":"\"MessageName\":","id":"x"}`, want: "notice"},
		{name: "notice with a nested MessageName", body: `{"v":1,"x":{"MessageName":"Update","eventType":"y"},"side":"crm"}`, want: "notice"},
		{name: "Event Grid event", body: `{"id":"1","data":{"resourceFhirId":"p"},"eventType":"Microsoft.HealthcareApis.FhirResourceCreated"}`, want: "fhir-event"},
		{name: "Event Grid array", body: `[{"id":"1","eventType":"Microsoft.HealthcareApis.FhirResourceUpdated"},{"id":"2"}]`, want: "fhir-event"},
		{name: "CloudEvent", body: `{"specversion":"1.0","type":"Microsoft.HealthcareApis.FhirResourceDeleted"}`, want: "fhir-event"},
		{name: "array of arrays", body: `[["MessageName","eventType"]]`, want: "notice"},
		{name: "string", body: `"MessageName"`, want: "notice"},
		{name: "not JSON", body: `<MessageName/>`, want: "notice"},
		{name: "empty", body: ``, want: "notice"},
		{name: "unterminated string", body: `{"MessageN`, want: "notice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := shape([]byte(tt.body)); got != tt.want {
				t.Fatalf("shape = %s, want %s", got, tt.want)
			}
		})
	}
}

// memSender keeps what the sandbox CRM's service endpoint posts.
type memSender struct {
	mu   sync.Mutex
	msgs []queues.Message
}

func (q *memSender) Send(_ context.Context, msgs ...queues.Message) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.msgs = append(q.msgs, msgs...)
	return nil
}

// TestDecodeMessageLargeContext decodes what the sandbox CRM's service
// endpoint posts for a contact with a 5,000-character description: its
// MessageName sits more than 4 KB into the body.
func TestDecodeMessageLargeContext(t *testing.T) {
	t.Parallel()
	q := &memSender{}
	srv, err := crmserver.New(crmserver.Options{Endpoint: q, EndpointImages: true})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	body := `{"lastname":"Lee","description":"` + strings.Repeat("x", 5000) + `"}`
	resp, err := http.Post(hs.URL+crmserver.APIPath+"contacts", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("create: status %d", resp.StatusCode)
	}
	q.mu.Lock()
	msgs := q.msgs
	q.mu.Unlock()
	if len(msgs) != 1 {
		t.Fatalf("%d messages posted", len(msgs))
	}
	m := msgs[0].Body
	if i := strings.Index(string(m), `"MessageName"`); i < 4096 {
		t.Fatalf("MessageName at byte %d: the case needs it past 4 KB", i)
	}
	ns, err := decodeMessage(m, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(ns) != 1 || ns[0].Side != queues.SideCRM || ns[0].Type != "contact" || ns[0].Event != queues.EventCreated || ns[0].Origin != crm.OriginEndpoint {
		t.Fatalf("notices = %+v", ns)
	}
}

func TestDecodeMessage(t *testing.T) {
	t.Parallel()
	n := queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Type: "Patient", ID: "p1", Event: queues.EventUpdated, Origin: "backfill"}
	nm, err := n.Message()
	if err != nil {
		t.Fatal(err)
	}
	eventGrid := `{"id":"e1","subject":"x/Patient/p2","eventType":"Microsoft.HealthcareApis.FhirResourceDeleted","eventTime":"2024-01-02T03:04:05Z",` +
		`"data":{"resourceType":"Patient","resourceFhirAccount":"acc","resourceFhirId":"p2","resourceVersionId":3},"dataVersion":"1","metadataVersion":"1"}`
	cloudEvent := `{"specversion":"1.0","id":"e2","source":"x","type":"Microsoft.HealthcareApis.FhirResourceUpdated","time":"2024-01-02T03:04:05Z",` +
		`"data":{"resourceType":"Patient","resourceFhirAccount":"acc","resourceFhirId":"p3","resourceVersionId":4}}`
	tests := []struct {
		name    string
		body    string
		account string        // agent.fhir_account
		want    queues.Notice // Side, Type, ID, Event compared
		wantErr error
	}{
		{name: "notice", body: string(nm.Body), want: n},
		{name: "context", body: string(readTestFile(t, filepath.Join("crm", "testdata", "remotecontext", "update_untyped_images_large.json"))),
			want: queues.Notice{Side: queues.SideCRM, Type: "contact", ID: "5f1e9a3b-2c4d-ee11-be6e-000d3a5b8f21", Event: queues.EventUpdated}},
		{name: "Event Grid event", body: eventGrid, account: "acc",
			want: queues.Notice{Side: queues.SideFHIR, Type: "Patient", ID: "p2", Event: queues.EventDeleted}},
		{name: "CloudEvents event", body: cloudEvent, account: "acc",
			want: queues.Notice{Side: queues.SideFHIR, Type: "Patient", ID: "p3", Event: queues.EventUpdated}},
		{name: "Event Grid event without an account", body: eventGrid, wantErr: errNoFHIRAccount},
		{name: "CloudEvents event without an account", body: cloudEvent, wantErr: errNoFHIRAccount},
		{name: "Event Grid array without an account", body: "[" + eventGrid + "," + cloudEvent + "]", wantErr: errNoFHIRAccount},
		{name: "event from another account", body: eventGrid, account: "other", wantErr: fhir.ErrInvalidEvent},
		{name: "notice without an account", body: string(nm.Body), want: n},
		{name: "context that is not valid", body: `{"MessageName":"Update","PrimaryEntityName":"contact","PrimaryEntityId":"nope"}`, wantErr: crm.ErrInvalidContext},
		{name: "event that is not valid", body: `{"eventType":"Microsoft.HealthcareApis.FhirResourceCreated"}`, wantErr: fhir.ErrInvalidEvent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ns, err := decodeMessage([]byte(tt.body), tt.account)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if tt.wantErr == errNoFHIRAccount {
					if msg := describeDecodeError(err); !strings.Contains(msg, "refused until agent.fhir_account names the FHIR service") {
						t.Fatalf("decision sentence %q does not say agent.fhir_account must be set", msg)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(ns) != 1 || ns[0].Side != tt.want.Side || ns[0].Type != tt.want.Type || ns[0].ID != tt.want.ID || ns[0].Event != tt.want.Event {
				t.Fatalf("notices = %+v", ns)
			}
		})
	}
}

// FuzzDecodeMessage holds decodeMessage to its contract on any body: it
// returns notices that validate, or an error, and never panics.
func FuzzDecodeMessage(f *testing.F) {
	for _, rel := range conformanceFiles(f, "dataverse/contexts", "modified/dataverse", "events") {
		f.Add(readCorpus(f, rel))
	}
	own, _ := filepath.Glob(filepath.Join("crm", "testdata", "remotecontext", "*.json"))
	for _, name := range own {
		f.Add(readTestFile(f, name))
	}
	f.Add([]byte(`{"v":1,"side":"crm","type":"contact","id":"x","event":"updated","origin":"backfill"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Without an account events are refused; with the corpus's
		// account they reach the event decoder's full path.
		for _, account := range []string{"", "ws-fhir.fhir.azurehealthcareapis.com"} {
			ns, err := decodeMessage(b, account)
			if err != nil {
				continue
			}
			if len(ns) == 0 {
				t.Fatal("no notices and no error")
			}
			for _, n := range ns {
				if err := n.Validate(); err != nil {
					t.Fatalf("notice does not validate: %v", err)
				}
			}
		}
	})
}
