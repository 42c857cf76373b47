package fhir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/queues"
)

const account = "ws-fhir.fhir.azurehealthcareapis.com"

func TestDecodeEvents(t *testing.T) {
	t.Parallel()
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join("testdata", "events", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	valid := `{"eventType":"Microsoft.HealthcareApis.FhirResourceUpdated","eventTime":"2026-01-01T00:00:00Z","data":{"resourceType":"Patient","resourceFhirAccount":"` + account + `","resourceFhirId":"p1","resourceVersionId":3}}`
	tests := []struct {
		name    string
		body    string
		account string
		want    string // summary of notices
		wantErr bool
	}{
		{name: "Event Grid created", body: read("eventgrid-created.json"), account: account,
			want: "Patient/e0a1f743-1a70-451f-830e-e96477163902@1:created"},
		{name: "CloudEvents deleted", body: read("cloudevents-deleted.json"), want: "Observation/obs-1@4:deleted"},
		{name: "array of events, string version", body: read("eventgrid-batch.json"), want: "Patient/p1@2:updated Encounter/enc-9@1:created"},
		{name: "account matches case-insensitively", body: valid, account: strings.ToUpper(account), want: "Patient/p1@3:updated"},
		{name: "another FHIR service", body: valid, account: "other-fhir.fhir.azurehealthcareapis.com", wantErr: true},
		{name: "DICOM event", body: strings.Replace(valid, "FhirResourceUpdated", "DicomImageCreated", 1), wantErr: true},
		{name: "no event type", body: strings.Replace(valid, `"eventType":"Microsoft.HealthcareApis.FhirResourceUpdated",`, "", 1), wantErr: true},
		{name: "no data", body: `{"eventType":"Microsoft.HealthcareApis.FhirResourceUpdated"}`, wantErr: true},
		{name: "data not an object", body: `{"eventType":"Microsoft.HealthcareApis.FhirResourceUpdated","data":"x"}`, wantErr: true},
		{name: "lowercase type", body: strings.Replace(valid, `"Patient"`, `"patient"`, 1), wantErr: true},
		{name: "id with a slash", body: strings.Replace(valid, `"p1"`, `"p1/../x"`, 1), wantErr: true},
		{name: "version zero", body: strings.Replace(valid, `:3}`, `:0}`, 1), wantErr: true},
		{name: "version fraction", body: strings.Replace(valid, `:3}`, `:1.5}`, 1), wantErr: true},
		{name: "version missing", body: strings.Replace(valid, `,"resourceVersionId":3`, ``, 1), wantErr: true},
		{name: "no account", body: strings.Replace(valid, `"resourceFhirAccount":"`+account+`",`, ``, 1), wantErr: true},
		{name: "bad time", body: strings.Replace(valid, `2026-01-01T00:00:00Z`, `yesterday`, 1), wantErr: true},
		{name: "CloudEvents 0.3", body: `{"specversion":"0.3","type":"Microsoft.HealthcareApis.FhirResourceCreated","data":{}}`, wantErr: true},
		{name: "empty array", body: `[]`, wantErr: true},
		{name: "one bad event spoils the message", body: "[" + valid + `,{"eventType":"Microsoft.HealthcareApis.FhirResourceCreated"}]`, wantErr: true},
		{name: "a DICOM event beside FHIR events is skipped", body: "[" + strings.Replace(valid, "FhirResourceUpdated", "DicomImageCreated", 1) + "," + valid + "]",
			want: "Patient/p1@3:updated"},
		{name: "only DICOM events", body: "[" + strings.Replace(valid, "FhirResourceUpdated", "DicomImageCreated", 1) + "]", wantErr: true},
		{name: "not JSON", body: `<xml/>`, wantErr: true},
		{name: "truncated", body: valid[:40], wantErr: true},
		{name: "empty", body: ``, wantErr: true},
		{name: "invalid UTF-8", body: "\xff" + valid, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ns, err := DecodeEvents([]byte(tt.body), tt.account)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalidEvent) {
					t.Errorf("error %v does not wrap ErrInvalidEvent", err)
				}
				return
			}
			if got := summary(ns); got != tt.want {
				t.Errorf("notices %s, want %s", got, tt.want)
			}
			for _, n := range ns {
				if n.Side != queues.SideFHIR || n.Origin != "ahds-event" || n.ChangedAt.IsZero() {
					t.Errorf("notice %+v", n)
				}
			}
		})
	}
	ns, _ := DecodeEvents([]byte(read("eventgrid-created.json")), "")
	if want := time.Date(2026, 3, 2, 10, 15, 20, 123456700, time.UTC); !ns[0].ChangedAt.Equal(want) {
		t.Errorf("ChangedAt = %v, want %v", ns[0].ChangedAt, want)
	}
}

// FuzzDecodeEvents: any input either fails with ErrInvalidEvent or gives
// notices that are valid envelopes surviving an encode/decode round trip.
func FuzzDecodeEvents(f *testing.F) {
	for _, name := range []string{"eventgrid-created.json", "cloudevents-deleted.json", "eventgrid-batch.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", "events", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// Every published event sample of the conformance corpus is a seed.
	for _, path := range eventCorpusFiles(f) {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ns, err := DecodeEvents(body, "")
		if err != nil {
			if !errors.Is(err, ErrInvalidEvent) {
				t.Fatalf("error %v does not wrap ErrInvalidEvent", err)
			}
			return
		}
		if len(ns) == 0 {
			t.Fatal("no error and no notices")
		}
		for _, n := range ns {
			m, err := n.Message()
			if err != nil {
				t.Fatalf("notice does not encode: %v", err)
			}
			back, err := queues.DecodeNotice(m.Body)
			if err != nil {
				t.Fatalf("notice does not decode: %v", err)
			}
			if back.Ref() != n.Ref() || back.Version != n.Version || back.Event != n.Event {
				t.Fatalf("round trip changed the notice: %+v vs %+v", back, n)
			}
		}
	})
}
