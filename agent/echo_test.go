package agent

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func TestNormVersion(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, in, want string }{
		{name: "weak etag", in: `W/"123"`, want: "123"},
		{name: "strong etag", in: `"123"`, want: "123"},
		{name: "row version", in: "123", want: "123"},
		{name: "fhir uuid version", in: "5b8c0a6e-1f2d", want: "5b8c0a6e-1f2d"},
		{name: "empty", in: "", want: ""},
	}
	for _, tt := range tests {
		if got := normVersion(tt.in); got != tt.want {
			t.Errorf("%s: normVersion(%q) = %q, want %q", tt.name, tt.in, got, tt.want)
		}
	}
}

// crmRecord is a re-read CRM record as the CRM side returns it.
func crmRecord(id, version string, attrs map[string]any) record {
	return record{Type: "contact", ID: id, Version: version, Data: map[string]any{"state": maps.CRMState{Record: attrs}}}
}

// decoded round-trips v through JSON, as values read back from an
// endpoint are (numbers become float64).
func decoded(t *testing.T, v map[string]any) map[string]any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestValueDigestComparesWhatWasWritten(t *testing.T) {
	t.Parallel()
	key := []byte("installation-key-0123456789")
	wrote := &maps.CRMResult{Record: map[string]any{
		"lastname": "Doe", "gendercode": 2, "emailaddress1": nil,
		"parentcustomerid_account@odata.bind": "/accounts(a1)",
	}}
	hash, fields := valueDigest(key, "crm", wrote, nil)
	if fields != "emailaddress1,gendercode,lastname" {
		t.Fatalf("fields = %q, want the written attributes without the lookup bind", fields)
	}
	if strings.Contains(hash, "Doe") || len(hash) != 64 {
		t.Fatalf("hash = %q, want 64 hex digits and no value", hash)
	}
	read := decoded(t, map[string]any{"lastname": "Doe", "gendercode": 2, "firstname": "unmapped", "@odata.etag": `W/"9"`})
	tests := []struct {
		name  string
		key   []byte
		attrs map[string]any
		want  bool
	}{
		{name: "the values written, read back", key: key, attrs: read, want: true},
		{name: "a mapped value changed", key: key, attrs: map[string]any{"lastname": "Roe", "gendercode": 2.0}, want: false},
		{name: "a cleared value set", key: key, attrs: map[string]any{"lastname": "Doe", "gendercode": 2.0, "emailaddress1": "x@example.org"}, want: false},
		{name: "another installation's key", key: []byte("another-installation-key-00"), attrs: read, want: false},
	}
	for _, tt := range tests {
		got := recordDigest(tt.key, "crm", crmRecord("c1", "9", tt.attrs), fields) == hash
		if got != tt.want {
			t.Errorf("%s: equal = %v, want %v", tt.name, got, tt.want)
		}
	}

	// A FHIR resource: the server's meta and id do not count.
	res := map[string]any{"resourceType": "Patient", "id": "p1", "meta": map[string]any{"versionId": "1"}, "gender": "female"}
	fh, ff := valueDigest(key, "fhir", res, nil)
	if ff != "gender,resourceType" {
		t.Fatalf("fhir fields = %q", ff)
	}
	back := record{Type: "Patient", ID: "p1", Version: "2", Data: map[string]any{"resourceType": "Patient", "id": "p1", "meta": map[string]any{"versionId": "2"}, "gender": "female"}}
	if recordDigest(key, "fhir", back, ff) != fh {
		t.Error("the resource read back with a new meta did not match what was written")
	}
}

// TestValueDigestHashesLookupsAsTheyReadBack: a lookup fhirsync wrote as
// "nav@odata.bind": "/set(id)" is hashed as the column's lookup property
// "_logicalname_value" with the id, so a re-read row that holds the same
// ids (in any case, with annotations beside them) matches, and one whose
// lookup columns alone were changed does not.
func TestValueDigestHashesLookupsAsTheyReadBack(t *testing.T) {
	t.Parallel()
	key := []byte("installation-key-0123456789")
	em := &maps.EntityMap{Name: "patient-contact", CRMEntity: "contact", Attributes: []maps.AttributeMap{
		{Name: "family", CRMAttribute: "lastname"},
		{Name: "general-practitioner", CRMAttribute: "msemr_generalpractitioner", Lookup: &maps.Lookup{EntityMap: "practitioner-contact"}},
		{Name: "managing-organization", CRMAttribute: "parentcustomerid", Lookup: &maps.Lookup{EntityMap: "organization-account", Navigation: "parentcustomerid_account"}},
		{Name: "actor", Lookup: &maps.Lookup{ByType: []maps.LookupTarget{
			{Type: "Location", EntityMap: "location", CRMAttribute: "msemr_actorlocation"},
			{Type: "Practitioner", EntityMap: "practitioner-contact", CRMAttribute: "msemr_actorpractitioner", Navigation: "msemr_ActorPractitioner"},
		}}},
	}}
	const gp, org, loc = "6F1A2B3C-0000-4000-8000-00000000AA01", "6f1a2b3c-0000-4000-8000-00000000bb02", "{6F1A2B3C-0000-4000-8000-00000000CC03}"
	wrote := &maps.CRMResult{Record: map[string]any{
		"lastname":                             "Doe",
		"msemr_generalpractitioner@odata.bind": "/contacts(" + gp + ")",
		"parentcustomerid_account@odata.bind":  "/accounts(" + org + ")",
		"msemr_actorlocation@odata.bind":       "/msemr_locations(" + loc + ")",
		"msemr_ActorPractitioner@odata.bind":   nil,
		"ownerid@odata.bind":                   "/systemusers(6f1a2b3c-0000-4000-8000-00000000dd04)",
		"msemr_link@odata.bind":                "$1",
	}}
	hash, fields := valueDigest(key, "crm", wrote, em)
	want := "_msemr_actorlocation_value,_msemr_actorpractitioner_value,_msemr_generalpractitioner_value,_parentcustomerid_value,lastname"
	if fields != want {
		t.Fatalf("fields = %q, want %q (lookups by their columns; binds the map does not write left out)", fields, want)
	}
	if nohash, _ := valueDigest(key, "crm", wrote, nil); nohash == hash {
		t.Fatal("the hash without the entity map equals the one with its lookups")
	}
	read := map[string]any{
		"lastname":                         "Doe",
		"_msemr_generalpractitioner_value": strings.ToLower(gp),
		"_msemr_generalpractitioner_value@Microsoft.Dynamics.CRM.lookuplogicalname": "contact",
		"_parentcustomerid_value": org,
		"_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "account",
		"_msemr_actorlocation_value":                                       "6f1a2b3c-0000-4000-8000-00000000cc03",
		"_msemr_actorpractitioner_value":                                   nil,
		"@odata.etag":                                                      `W/"9"`,
	}
	with := func(k string, v any) map[string]any {
		out := make(map[string]any, len(read))
		for k, v := range read {
			out[k] = v
		}
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
		return out
	}
	tests := []struct {
		name  string
		attrs map[string]any
		want  bool
	}{
		{name: "the lookups written, read back", attrs: decoded(t, read), want: true},
		{name: "the ids in upper case", attrs: with("_parentcustomerid_value", strings.ToUpper(org)), want: true},
		{name: "a cleared lookup read as absent", attrs: with("_msemr_actorpractitioner_value", nil), want: true},
		{name: "the general practitioner changed", attrs: with("_msemr_generalpractitioner_value", "6f1a2b3c-0000-4000-8000-00000000ee05"), want: false},
		{name: "the general practitioner cleared", attrs: with("_msemr_generalpractitioner_value", nil), want: false},
		{name: "a lookup by type moved to another column", attrs: with("_msemr_actorpractitioner_value", strings.ToLower(gp)), want: false},
	}
	for _, tt := range tests {
		if got := recordDigest(key, "crm", crmRecord("c1", "9", tt.attrs), fields) == hash; got != tt.want {
			t.Errorf("%s: equal = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestOwnWritesEcho(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		ow := newOwnWrites(db)
		hash, fields := valueDigest(ow.key, "crm", &maps.CRMResult{Record: map[string]any{"lastname": "Doe"}}, nil)
		// The agent wrote version 7 of c1 (the ETag form the Web API answers).
		if err := rememberTx(db, []ownWrite{{Side: "crm", RType: "contact", RID: "c1", Version: `W/"7"`, WrittenAt: time.Now().UTC(),
			ValueHash: hash, ValueFields: fields}}); err != nil {
			t.Fatal(err)
		}
		mine := crmRecord("c1", `W/"7"`, map[string]any{"lastname": "Doe"})
		edited := crmRecord("c1", `W/"8"`, map[string]any{"lastname": "Roe"})
		sameValues := crmRecord("c1", `W/"8"`, map[string]any{"lastname": "Doe", "firstname": "unmapped change"})
		tests := []struct {
			name    string
			version string // the notice's
			src     record
			want    bool
		}{
			{name: "the notice names the version written", version: "7", src: mine, want: true},
			{name: "the notice names the version written, the record moved on", version: "7", src: edited, want: true},
			{name: "the notice names another version", version: "8", src: edited, want: false},
			{name: "an older notice, the record read is the agent's", version: "6", src: mine, want: true},
			{name: "no version, the record read is the agent's", src: mine, want: true},
			{name: "no version, mapped values edited", src: edited, want: false},
			{name: "no version, mapped values as written", src: sameValues, want: true},
			{name: "no version, a record the agent never wrote", src: crmRecord("c2", `W/"1"`, map[string]any{"lastname": "Doe"}), want: false},
		}
		for _, tt := range tests {
			got, err := ow.echo(ctx, "crm", queues.Notice{Side: queues.SideCRM, Type: "contact", ID: tt.src.ID, Version: tt.version}, tt.src)
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			if got != tt.want {
				t.Errorf("%s: echo = %v, want %v", tt.name, got, tt.want)
			}
		}

		// A write not committed yet is known from memory.
		pending := ownWrite{Side: "crm", RType: "contact", RID: "c3", Version: `W/"2"`, ValueHash: hash, ValueFields: fields}
		done := ow.note(pending)
		for _, n := range []queues.Notice{{Version: "2"}, {}} {
			if got, err := ow.echo(ctx, "crm", n, crmRecord("c3", `W/"2"`, map[string]any{"lastname": "Doe"})); err != nil || !got {
				t.Errorf("pending write, notice version %q: echo = %v, %v; want true", n.Version, got, err)
			}
		}
		done()
		if got, _ := ow.echo(ctx, "crm", queues.Notice{Version: "2"}, crmRecord("c3", `W/"2"`, nil)); got {
			t.Error("a pending write forgotten without a commit is still an echo")
		}
	})
}

func TestFlightsWait(t *testing.T) {
	t.Parallel()
	f := newFlights()
	ctx := context.Background()
	if wait(ctx, f.inFlight("crm", "contact"), time.Second) {
		t.Fatal("waited with no write in progress")
	}
	end := f.begin("crm", "contact")
	other := f.begin("fhir", "Patient")
	defer other()
	if n := len(f.inFlight("crm", "contact")); n != 1 {
		t.Fatalf("%d contact writes in flight, want 1", n)
	}
	go func() { time.Sleep(50 * time.Millisecond); end() }()
	start := time.Now()
	if !wait(ctx, f.inFlight("crm", "contact"), 5*time.Second) {
		t.Fatal("did not wait for the write in progress")
	}
	if d := time.Since(start); d < 40*time.Millisecond || d > 4*time.Second {
		t.Errorf("waited %v, want until the write ended", d)
	}
	// A write that never ends is waited for at most max.
	if n := len(f.inFlight("crm", "contact")); n != 0 {
		t.Fatalf("%d contact writes in flight after the write ended, want 0", n)
	}
	stuck := f.begin("crm", "contact")
	defer stuck()
	start = time.Now()
	wait(ctx, f.inFlight("crm", "contact"), 100*time.Millisecond)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("waited %v past max", d)
	}
}

// TestEchoRedeliveredIsStillAnEcho: the echo notice delivered again (a
// retry with the same message id) is decided an echo each time, and the
// source's author alone never makes one.
func TestEchoRedeliveredIsStillAnEcho(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		h := newHarness(t, db)
		ctx := context.Background()
		h.fhir.put("p1", "a")
		h.p.handle(ctx, notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, 1))
		for i := range 3 {
			m := retry(notice(t, queues.SideCRM, "contact", "contact-1", "1", queues.EventCreated, i+1))
			if s := h.p.handle(ctx, m); s.kind != settleComplete {
				t.Fatalf("delivery %d: settlement %v, want complete", i+1, s.kind)
			}
			if d := lastDecision(t, h, m.ID); d.Reason != "own_write_echo" || d.Outcome != logs.OutcomeSkipped {
				t.Fatalf("delivery %d: decision %s/%s, want skipped/own_write_echo", i+1, d.Outcome, d.Reason)
			}
		}
		if h.fhir.writes != 0 {
			t.Errorf("the echo was written back %d time(s)", h.fhir.writes)
		}
	})
}
