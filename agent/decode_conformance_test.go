package agent

import (
	"encoding/json"
	"errors"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/corpus"
)

// conformanceFiles lists the samples of the conformance corpus
// (testdata/conformance, each with its address in SOURCES.md) under dirs,
// as sorted slash-separated paths relative to the corpus.
func conformanceFiles(t testing.TB, dirs ...string) []string {
	t.Helper()
	files, err := corpus.Files(dirs...)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// corpusContexts lists the RemoteExecutionContext samples of the corpus.
func corpusContexts(t testing.TB) []string {
	t.Helper()
	files, err := corpus.Contexts()
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func readCorpus(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := corpus.Read(rel)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// decodeWant is the notice decodeMessage must give for a corpus context.
type decodeWant struct {
	entity, id string
	event      queues.Event
}

// contextNotices states the notice of every context sample of the corpus.
// A sample without an entry fails TestDecodeMessageConformance.
var contextNotices = map[string]decodeWant{
	"dataverse/contexts/create-account-sync-cp1252-mojibake.json":                     {"account", "53c52f26-a89d-ef11-8a69-000d3a30b0c1", queues.EventCreated},
	"dataverse/contexts/create-allfields-sync-unknown-member.json":                    {"shko_allfields", "6420f0cc-916b-ee11-9ae6-000d3a688809", queues.EventCreated},
	"dataverse/contexts/create-alltypes-async-compact.json":                           {"albxrm_alltypes", "44bfc2a7-903e-eb11-a813-000d3ad9c2e1", queues.EventCreated},
	"dataverse/contexts/create-documentlocation-async-queryexpression.json":           {"sharepointdocumentlocation", "1e3839b3-08d4-ef11-aeb0-00155d000101", queues.EventCreated},
	"dataverse/contexts/update-account-sync-typed-primitives.json":                    {"account", "ec4e2f7d-9d60-e811-a95a-000d3af24950", queues.EventUpdated},
	"dataverse/contexts/update-activity-async-preimage-entitycollection.json":         {"new_customactivity", "841579d9-7e63-ef11-9e4a-00155d0001ea", queues.EventUpdated},
	"dataverse/contexts/webhook-create-agentstatus-sync-formattedvalues.json":         {"msdyn_agentstatus", "4b1e3d75-a749-ef11-acce-00224802d26d", queues.EventCreated},
	"dataverse/contexts/webhook-update-agentstatus-async-parentcontext.json":          {"msdyn_agentstatus", "3d1feef9-604d-ef11-bfe3-6045bd03d9d8", queues.EventUpdated},
	"dataverse/contexts/webhook-update-contact-async-postimage.json":                  {"contact", "6d81597f-0f9f-e711-8122-000d3aa2331c", queues.EventUpdated},
	"modified/dataverse/webhook-update-contact-async-postimage.as-delete.json":        {"contact", "6d81597f-0f9f-e711-8122-000d3aa2331c", queues.EventDeleted},
	"modified/dataverse/webhook-update-contact-async-postimage.large-fullname.json":   {"contact", "6d81597f-0f9f-e711-8122-000d3aa2331c", queues.EventUpdated},
	"modified/dataverse/webhook-update-contact-async-postimage.reversed-members.json": {"contact", "6d81597f-0f9f-e711-8122-000d3aa2331c", queues.EventUpdated},
	"modified/dataverse/webhook-update-contact-async-postimage.size-exceeded.json":    {"contact", "6d81597f-0f9f-e711-8122-000d3aa2331c", queues.EventUpdated},
}

// TestDecodeMessageConformance runs every context of the corpus through
// decodeMessage, so the shape detection is held to real messages, and
// checks that every Azure Health Data Services event of the corpus is
// taken for an event.
func TestDecodeMessageConformance(t *testing.T) {
	t.Parallel()
	files := corpusContexts(t)
	for name := range contextNotices {
		if !slices.Contains(files, name) {
			t.Errorf("expectation for %s, which is not in the corpus", name)
		}
	}
	for _, file := range files {
		t.Run(file, func(t *testing.T) {
			t.Parallel()
			want, ok := contextNotices[file]
			if !ok {
				t.Fatalf("no expectation for %s", file)
			}
			body := readCorpus(t, file)
			if got := shape(body); got != "remote-execution-context" {
				t.Fatalf("shape = %s", got)
			}
			ns, err := decodeMessage(body, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(ns) != 1 || ns[0].Side != queues.SideCRM || ns[0].Type != want.entity || ns[0].ID != want.id || ns[0].Event != want.event {
				t.Fatalf("notices = %+v, want %s %s %s", ns, want.entity, want.id, want.event)
			}
		})
	}
	for _, file := range conformanceFiles(t, "events") {
		t.Run(file, func(t *testing.T) {
			t.Parallel()
			body := readCorpus(t, file)
			if got := shape(body); got != "fhir-event" {
				t.Fatalf("shape = %s, want fhir-event", got)
			}
			if strings.HasPrefix(path.Base(file), "dicom-") {
				_, err := decodeMessage(body, "")
				// Same workspace, another service: refused with a sentence
				// that says what to change, not taken for a malformed message.
				if !errors.Is(err, fhir.ErrUnsupportedEvent) {
					t.Fatalf("decodeMessage error = %v, want ErrUnsupportedEvent", err)
				}
				if msg := describeDecodeError(err); !strings.Contains(msg, "not a FHIR resource change") {
					t.Fatalf("decision sentence %q does not say the event is not a FHIR change", msg)
				}
				return
			}
			// With agent.fhir_account unset a FHIR change is refused with a
			// sentence that names the setting; with the sample's service
			// named it is taken.
			if _, err := decodeMessage(body, ""); !errors.Is(err, errNoFHIRAccount) {
				t.Fatalf("decodeMessage without an account: error = %v, want errNoFHIRAccount", err)
			} else if msg := describeDecodeError(err); !strings.Contains(msg, "agent.fhir_account") {
				t.Fatalf("decision sentence %q does not name agent.fhir_account", msg)
			}
			ns, err := decodeMessage(body, eventAccount(t, body))
			if err != nil {
				t.Fatal(err)
			}
			if len(ns) != 1 || ns[0].Side != queues.SideFHIR || ns[0].Type == "" || ns[0].ID == "" {
				t.Fatalf("notices = %+v, want one FHIR notice", ns)
			}
		})
	}
}

// eventAccount is the FHIR service a corpus event names
// (data.resourceFhirAccount of the event, or of the first in an array).
func eventAccount(t *testing.T, body []byte) string {
	t.Helper()
	type event struct {
		Data struct {
			Account string `json:"resourceFhirAccount"`
		} `json:"data"`
	}
	var one event
	if err := json.Unmarshal(body, &one); err != nil {
		var many []event
		if err := json.Unmarshal(body, &many); err != nil || len(many) == 0 {
			t.Fatalf("reading the event's account: %v", err)
		}
		one = many[0]
	}
	if one.Data.Account == "" {
		t.Fatal("the event names no resourceFhirAccount")
	}
	return one.Data.Account
}
