package fhir

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/sandbox/corpus"
)

// docAccount is the FHIR service name Microsoft's samples carry.
const docAccount = "{fhir-account}.fhir.azurehealthcareapis.com"

// eventExpectation is what decoding one corpus file must give: the
// notices (as summary renders them: Type/id@version:event, in order),
// their FHIR service, and the event time of the first; or the class of
// error.
type eventExpectation struct {
	notices   string
	account   string
	changedAt string // RFC 3339, UTC
	// wantErr is the error class: ErrUnsupportedEvent for a well-formed
	// event that is not a FHIR change, ErrInvalidEvent for a malformed one.
	wantErr error
}

// eventExpectations states the result for every file of the event
// corpora, keyed by its path under testdata/conformance. A file without
// an entry fails the test.
var eventExpectations = map[string]eventExpectation{
	"events/fhir-resource-created.eventgrid.json": {
		notices: "Patient/e0a1f743-1a70-451f-830e-e96477163902@1:created", account: docAccount,
		changedAt: "2021-09-08T01:14:04.5613214Z"},
	"events/fhir-resource-updated.eventgrid.json": {
		notices: "Patient/e0a1f743-1a70-451f-830e-e96477163902@2:updated", account: docAccount,
		changedAt: "2021-09-08T01:29:12.0618739Z"},
	"events/fhir-resource-deleted.eventgrid.json": {
		notices: "Patient/e0a1f743-1a70-451f-830e-e96477163902@3:deleted", account: docAccount,
		changedAt: "2021-09-08T01:31:58.5175837Z"},
	"events/fhir-resource-created.cloudevent.json": {
		notices: "Patient/e87ef649-abe1-485c-8c09-549d85dfe30b@1:created", account: docAccount,
		changedAt: "2022-02-03T16:48:09.6223354Z"},
	"events/fhir-resource-updated.cloudevent.json": {
		notices: "Patient/e87ef649-abe1-485c-8c09-549d85dfe30b@2:updated", account: docAccount,
		changedAt: "2022-02-03T16:48:33.5147352Z"},
	"events/fhir-resource-deleted.cloudevent.json": {
		notices: "Patient/e87ef649-abe1-485c-8c09-549d85dfe30b@3:deleted", account: docAccount,
		changedAt: "2022-02-03T16:48:38.7338799Z"},
	// DICOM events come from the same workspace's event subscription; they
	// are well-formed but no FHIR change.
	"events/dicom-image-created.cloudevent.json": {wantErr: ErrUnsupportedEvent},
	"events/dicom-image-created.eventgrid.json":  {wantErr: ErrUnsupportedEvent},
	"events/dicom-image-updated.cloudevent.json": {wantErr: ErrUnsupportedEvent},

	"modified/events/fhir-resource-created.eventgrid.array.json": {
		notices: "Patient/e0a1f743-1a70-451f-830e-e96477163902@1:created", account: docAccount,
		changedAt: "2021-09-08T01:14:04.5613214Z"},
	"modified/events/fhir-resource-updated.cloudevent.string-version.json": {
		notices: "Patient/e87ef649-abe1-485c-8c09-549d85dfe30b@2:updated", account: docAccount,
		changedAt: "2022-02-03T16:48:33.5147352Z"},
}

// eventCorpusFiles lists the Azure Health Data Services events of the
// conformance corpus, as Microsoft publishes them (events/) and changed by
// hand to exercise one case (modified/events/), each listed with its
// address in testdata/conformance/SOURCES.md; keyed by the path under
// testdata/conformance, the value is the file's path.
func eventCorpusFiles(t testing.TB) map[string]string {
	t.Helper()
	rels, err := corpus.Files("events", "modified/events")
	if err != nil {
		t.Fatal(err)
	}
	files := make(map[string]string, len(rels))
	for _, rel := range rels {
		files[rel] = filepath.Join(corpus.Dir(), filepath.FromSlash(rel))
	}
	return files
}

// TestEventConformance decodes every published event sample and checks
// the notices, or the error class, stated for it. Adding a file adds a
// case, and fails until its expectation is stated.
func TestEventConformance(t *testing.T) {
	t.Parallel()
	files := eventCorpusFiles(t)
	if len(files) == 0 {
		t.Fatal("no event samples under testdata/conformance/events")
	}
	for name := range eventExpectations {
		if _, ok := files[name]; !ok {
			t.Errorf("expectation for %s, which is not in the corpus", name)
		}
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			exp, ok := eventExpectations[name]
			if !ok {
				t.Fatalf("no expectation for %s", name)
			}
			body, err := os.ReadFile(files[name])
			if err != nil {
				t.Fatal(err)
			}
			ns, err := DecodeEvents(body, exp.account)
			if exp.wantErr != nil {
				if !errors.Is(err, exp.wantErr) {
					t.Fatalf("err = %v, want %v", err, exp.wantErr)
				}
				if exp.wantErr == ErrInvalidEvent && errors.Is(err, ErrUnsupportedEvent) {
					t.Fatalf("err = %v: a malformed event taken for a well-formed one of another kind", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("decoding: %v", err)
			}
			if got := summary(ns); got != exp.notices {
				t.Errorf("notices %s, want %s", got, exp.notices)
			}
			for _, n := range ns {
				if n.Origin != "ahds-event" || n.CorrelationID == "" {
					t.Errorf("notice origin %q correlation %q, want ahds-event and the event id", n.Origin, n.CorrelationID)
				}
			}
			if got := ns[0].ChangedAt.Format("2006-01-02T15:04:05.9999999Z07:00"); got != exp.changedAt {
				t.Errorf("changed at %s, want %s", got, exp.changedAt)
			}
			// The events name their FHIR service; one from another service
			// is refused when the agent is told its own.
			other := strings.Replace(exp.account, "{fhir-account}", "another-workspace", 1)
			if _, err := DecodeEvents(body, other); !errors.Is(err, ErrInvalidEvent) {
				t.Errorf("decoding for service %s: err = %v, want ErrInvalidEvent", other, err)
			}
			// The subject names the same resource as data.
			subjects := subjectsOf(t, body)
			for i, n := range ns {
				if i < len(subjects) && !strings.HasSuffix(subjects[i], "/"+n.Type+"/"+n.ID) {
					t.Errorf("subject %q does not end with the notice's %s/%s", subjects[i], n.Type, n.ID)
				}
			}
		})
	}
}

// subjectsOf returns the subject of each event in body.
func subjectsOf(t *testing.T, body []byte) []string {
	t.Helper()
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("sample is not JSON: %v", err)
	}
	events, ok := v.([]any)
	if !ok {
		events = []any{v}
	}
	out := make([]string, 0, len(events))
	for _, e := range events {
		m, _ := e.(map[string]any)
		s, _ := m["subject"].(string)
		out = append(out, s)
	}
	return out
}
