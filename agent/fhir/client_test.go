package fhir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
	"github.com/fhirsync/fhirsync/sandbox/medplum"
)

// target is a FHIR server the client suite runs against, with the
// behaviours in which servers legitimately differ.
type target struct {
	name string
	// start returns a base URL valid for the test's lifetime.
	start func(t *testing.T) string
	// versionPattern matches the server's version ids.
	versionPattern *regexp.Regexp
	// exactDecimals: the server keeps decimal text as sent (1.50 stays
	// 1.50); JavaScript servers normalise it to the number (1.5).
	exactDecimals bool
	// deletedRead is the class of reading a deleted resource: 410 Gone
	// where the server keeps deletion history, 404 where it forgets.
	deletedRead Class
}

var (
	intVersion  = regexp.MustCompile(`^[1-9][0-9]*$`)
	uuidVersion = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
)

func targets() []target {
	return []target{
		{
			name: "sandbox",
			start: func(t *testing.T) string {
				srv, err := fhirserver.New(fhirserver.Options{})
				if err != nil {
					t.Fatal(err)
				}
				hs := httptest.NewServer(srv)
				t.Cleanup(func() { hs.Close(); srv.Close() })
				return hs.URL
			},
			versionPattern: intVersion,
			exactDecimals:  true,
			deletedRead:    ClassGone,
		},
		{
			name:           "medplum",
			start:          func(t *testing.T) string { return medplum.Start(t) },
			versionPattern: uuidVersion,
			exactDecimals:  false,
			deletedRead:    ClassNotFound,
		},
	}
}

// TestClientSuite runs one suite against every target.
func TestClientSuite(t *testing.T) {
	t.Parallel()
	for _, tg := range targets() {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			base := tg.start(t)
			c, err := New(Config{BaseURL: base, Timeout: 20 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			for _, tc := range suite {
				t.Run(tc.name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					tc.run(ctx, t, c, tg)
				})
			}
		})
	}
}

// conditionalCreateCase: If-None-Exist on the identifier creates once,
// then reports the match without creating (R4 http.html#ccreate).
var conditionalCreateCase = suiteCase{"conditional create", func(ctx context.Context, t *testing.T, c *Client, _ target) {
	val := uniq("ccreate")
	crit := url.Values{"identifier": {testSystem + "|" + val}}
	first, created, err := c.CreateIfNoneExist(ctx, patient(testSystem, val), crit)
	if err != nil || !created || first.ID() == "" {
		t.Fatalf("first conditional create = %v, created %v, %v; want a new resource", first, created, err)
	}
	again, created, err := c.CreateIfNoneExist(ctx, patient(testSystem, val), crit)
	if err != nil || created {
		t.Fatalf("second conditional create: created %v, %v; want the match", created, err)
	}
	if again != nil && again.ID() != first.ID() {
		t.Errorf("the match answered %s, want %s", again.ID(), first.ID())
	}
	page, err := c.Search(ctx, "Patient", crit)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(page.Entries); n != 1 {
		t.Errorf("%d Patients carry the identifier, want 1", n)
	}
}}

type suiteCase struct {
	name string
	run  func(ctx context.Context, t *testing.T, c *Client, tg target)
}

// patient builds a Patient with elements this program does not interpret,
// to check that nothing is lost on the way through.
func patient(system, value string) Resource {
	return mustResource(`{
		"resourceType": "Patient",
		"identifier": [{"system": "` + system + `", "value": "` + value + `"}],
		"active": true,
		"name": [{"use": "official", "family": "Testperson", "given": ["Alex"]}],
		"birthDate": "1980-02-29",
		"_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1980-02-29T10:15:00+01:00"}]},
		"extension": [{"url": "http://example.org/fhir/StructureDefinition/registration-weight", "valueDecimal": 72.50}],
		"contained": [{"resourceType": "Organization", "id": "org1", "name": "Clinic"}],
		"managingOrganization": {"reference": "#org1"}
	}`)
}

func mustResource(s string) Resource {
	r, err := decodeResource([]byte(s))
	if err != nil {
		panic(err)
	}
	return r
}

func uniq(prefix string) string { return prefix + "-" + uuid.NewString()[:8] }

const testSystem = "urn:oid:2.16.840.1.113883.19.5.99999.1"

// withoutMeta strips the server-assigned parts for comparison.
func withoutMeta(r Resource) string {
	cp := map[string]any{}
	for k, v := range r {
		if k != "meta" && k != "id" {
			cp[k] = v
		}
	}
	b, _ := json.Marshal(cp)
	return string(b)
}

func wantClass(t *testing.T, err error, class Class) *Error {
	t.Helper()
	var fe *Error
	if !errors.As(err, &fe) {
		t.Fatalf("err = %v, want an *Error of class %s", err, class)
	}
	if fe.Class != class {
		t.Fatalf("class = %s (status %d), want %s: %v", fe.Class, fe.Status, class, err)
	}
	return fe
}

var suite = []suiteCase{
	conditionalCreateCase,
	{"capabilities", func(ctx context.Context, t *testing.T, c *Client, tg target) {
		cs, err := c.Capabilities(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if cs["fhirVersion"] != "4.0.1" {
			t.Errorf("fhirVersion = %v, want 4.0.1", cs["fhirVersion"])
		}
	}},
	{"create read vread keep every element", func(ctx context.Context, t *testing.T, c *Client, tg target) {
		in := patient(testSystem, uniq("mrn"))
		created, err := c.Create(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		if created.ID() == "" || !tg.versionPattern.MatchString(created.VersionID()) {
			t.Fatalf("created id %q version %q; want an id and a version matching %s", created.ID(), created.VersionID(), tg.versionPattern)
		}
		if created.LastUpdated().IsZero() {
			t.Error("meta.lastUpdated missing")
		}
		got, err := c.Read(ctx, "Patient", created.ID())
		if err != nil {
			t.Fatal(err)
		}
		if withoutMeta(got) != withoutMeta(created) {
			t.Errorf("read differs from created:\n%s\n%s", withoutMeta(got), withoutMeta(created))
		}
		if withoutMeta(got) != withoutMeta(in) && tg.exactDecimals {
			t.Errorf("read differs from what was sent:\n got %s\nsent %s", withoutMeta(got), withoutMeta(in))
		}
		ext := got["extension"].([]any)[0].(map[string]any)["valueDecimal"].(json.Number)
		want := "72.5"
		if tg.exactDecimals {
			want = "72.50"
		}
		if ext.String() != want {
			t.Errorf("valueDecimal = %s, want %s", ext, want)
		}
		v, err := c.VRead(ctx, "Patient", created.ID(), created.VersionID())
		if err != nil {
			t.Fatal(err)
		}
		if v.VersionID() != created.VersionID() {
			t.Errorf("vread version = %q, want %q", v.VersionID(), created.VersionID())
		}
	}},
	{"read of a missing resource is not_found", func(ctx context.Context, t *testing.T, c *Client, tg target) {
		_, err := c.Read(ctx, "Patient", uniq("missing"))
		fe := wantClass(t, err, ClassNotFound)
		if fe.Retryable || !errors.Is(err, ErrNotFound) {
			t.Errorf("not found must be permanent and match ErrNotFound: %+v", fe)
		}
	}},
	{"update with If-Match and a lost race", func(ctx context.Context, t *testing.T, c *Client, tg target) {
		created, err := c.Create(ctx, patient(testSystem, uniq("mrn")))
		if err != nil {
			t.Fatal(err)
		}
		v1 := created.VersionID()
		created["active"] = false
		updated, err := c.Update(ctx, created, v1)
		if err != nil {
			t.Fatal(err)
		}
		if updated.VersionID() == v1 || !tg.versionPattern.MatchString(updated.VersionID()) {
			t.Fatalf("version after update = %q (before %q)", updated.VersionID(), v1)
		}
		if updated["active"] != false {
			t.Errorf("active = %v after update", updated["active"])
		}
		updated["active"] = true
		_, err = c.Update(ctx, updated, v1) // stale version
		fe := wantClass(t, err, ClassConflict)
		if fe.Status != 412 || fe.Retryable || !errors.Is(err, ErrConflict) {
			t.Errorf("stale If-Match: status %d retryable %v; want a permanent 412 matching ErrConflict", fe.Status, fe.Retryable)
		}
		cur, err := c.Read(ctx, "Patient", created.ID())
		if err != nil {
			t.Fatal(err)
		}
		if cur.VersionID() != updated.VersionID() || cur["active"] != false {
			t.Errorf("a rejected update changed the resource: version %q active %v", cur.VersionID(), cur["active"])
		}
	}},
	{"read-modify-write keeps unmapped elements", func(ctx context.Context, t *testing.T, c *Client, tg target) {
		created, err := c.Create(ctx, patient(testSystem, uniq("mrn")))
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Read(ctx, "Patient", created.ID())
		if err != nil {
			t.Fatal(err)
		}
		got["gender"] = "other"
		if _, err := c.Update(ctx, got, got.VersionID()); err != nil {
			t.Fatal(err)
		}
		after, err := c.Read(ctx, "Patient", created.ID())
		if err != nil {
			t.Fatal(err)
		}
		delete(after, "gender")
		if withoutMeta(after) != withoutMeta(created) {
			t.Errorf("elements changed by a read-modify-write:\n got %s\nwant %s", withoutMeta(after), withoutMeta(created))
		}
	}},
	{"conditional update creates, then updates, then refuses two matches", func(ctx context.Context, t *testing.T, c *Client, tg target) {
		val := uniq("cu")
		crit := url.Values{"identifier": {testSystem + "|" + val}}
		first, created, err := c.ConditionalUpdate(ctx, patient(testSystem, val), crit)
		if err != nil {
			t.Fatal(err)
		}
		if !created {
			t.Error("first conditional update should create")
		}
		p := patient(testSystem, val)
		p["gender"] = "female"
		second, created, err := c.ConditionalUpdate(ctx, p, crit)
		if err != nil {
			t.Fatal(err)
		}
		if created || second.ID() != first.ID() || second.VersionID() == first.VersionID() {
			t.Errorf("second conditional update: created=%v id %s (first %s) version %s (first %s)",
				created, second.ID(), first.ID(), second.VersionID(), first.VersionID())
		}
		if _, err := c.Create(ctx, patient(testSystem, val)); err != nil {
			t.Fatal(err)
		}
		_, _, err = c.ConditionalUpdate(ctx, patient(testSystem, val), crit)
		fe := wantClass(t, err, ClassConflict)
		if fe.Status != 412 {
			t.Errorf("two matches: status %d, want 412", fe.Status)
		}
	}},
	{"search follows next links", func(ctx context.Context, t *testing.T, c *Client, tg target) {
		val := uniq("page")
		want := map[string]bool{}
		for range 7 {
			r, err := c.Create(ctx, patient(testSystem, val))
			if err != nil {
				t.Fatal(err)
			}
			want[r.ID()] = true
		}
		first, err := c.Search(ctx, "Patient", url.Values{"identifier": {testSystem + "|" + val}, "_count": {"3"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(first.Entries) != 3 || first.Next == "" {
			t.Fatalf("first page: %d entries, next %q; want 3 and a next link", len(first.Entries), first.Next)
		}
		if first.Total != 7 {
			t.Errorf("total = %d, want 7", first.Total)
		}
		got := map[string]bool{}
		pages := 0
		err = c.Each(ctx, first, func(e Entry) error {
			if e.Resource.Type() != "Patient" {
				return fmt.Errorf("entry of type %q", e.Resource.Type())
			}
			if got[e.Resource.ID()] {
				return fmt.Errorf("%s seen twice", e.Resource.ID())
			}
			got[e.Resource.ID()] = true
			if len(got)%3 == 1 {
				pages++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) || pages != 3 {
			t.Errorf("collected %d resources over %d pages, want 7 over 3", len(got), pages)
		}
		for id := range want {
			if !got[id] {
				t.Errorf("%s missing from the search", id)
			}
		}
		if _, err := c.Search(ctx, "Patient", url.Values{"_id": {uniq("nobody")}}); err != nil {
			t.Errorf("empty search: %v", err)
		}
	}},
	{"history since at type and system level, deletions included", func(ctx context.Context, t *testing.T, c *Client, tg target) {
		since := time.Now().Add(-time.Second)
		a, err := c.Create(ctx, patient(testSystem, uniq("h")))
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.Create(ctx, patient(testSystem, uniq("h")))
		if err != nil {
			t.Fatal(err)
		}
		a["gender"] = "male"
		a2, err := c.Update(ctx, a, a.VersionID())
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Delete(ctx, "Patient", b.ID()); err != nil {
			t.Fatal(err)
		}
		type change struct{ id, version, method string }
		collect := func(typ string) []change {
			p, err := c.History(ctx, typ, since, 2)
			if err != nil {
				t.Fatal(err)
			}
			var out []change
			err = c.Each(ctx, p, func(e Entry) error {
				rt, id, v := e.Ref()
				if id == a.ID() || id == b.ID() {
					if rt != "Patient" {
						return fmt.Errorf("entry for %s/%s", rt, id)
					}
					m := strings.ToUpper(e.Method)
					if e.Deleted() {
						m = "DELETE"
					}
					out = append(out, change{id, v, m})
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		for _, typ := range []string{"Patient", ""} {
			got := collect(typ)
			if len(got) != 4 {
				t.Fatalf("history(%q) has %d changes for the test's resources, want 4: %v", typ, len(got), got)
			}
			// Newest first.
			if got[0].id != b.ID() || got[0].method != "DELETE" {
				t.Errorf("history(%q)[0] = %v, want the deletion of %s", typ, got[0], b.ID())
			}
			if got[1].id != a.ID() || got[1].version != a2.VersionID() {
				t.Errorf("history(%q)[1] = %v, want %s version %s", typ, got[1], a.ID(), a2.VersionID())
			}
			seen := map[string]bool{}
			for _, ch := range got {
				key := ch.id + "/" + ch.version
				if seen[key] || ch.version == "" {
					t.Errorf("history(%q): duplicate or unversioned change %v", typ, ch)
				}
				seen[key] = true
			}
		}
		later, err := c.History(ctx, "Patient", time.Now().Add(time.Hour), 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(later.Entries) != 0 {
			t.Errorf("history since the future has %d entries", len(later.Entries))
		}
	}},
	{"delete, then read", func(ctx context.Context, t *testing.T, c *Client, tg target) {
		r, err := c.Create(ctx, patient(testSystem, uniq("d")))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Delete(ctx, "Patient", r.ID()); err != nil {
			t.Fatal(err)
		}
		_, err = c.Read(ctx, "Patient", r.ID())
		wantClass(t, err, tg.deletedRead)
	}},
	{"transaction resolves urn:uuid references", func(ctx context.Context, t *testing.T, c *Client, tg target) {
		pu := "urn:uuid:" + uuid.NewString()
		bundle := Resource{"resourceType": "Bundle", "type": "transaction", "entry": []any{
			map[string]any{"fullUrl": pu, "resource": map[string]any(patient(testSystem, uniq("tx"))),
				"request": map[string]any{"method": "POST", "url": "Patient"}},
			map[string]any{"resource": map[string]any{"resourceType": "Observation", "status": "final",
				"code":    map[string]any{"text": "weight"},
				"subject": map[string]any{"reference": pu}},
				"request": map[string]any{"method": "POST", "url": "Observation"}},
		}}
		resp, err := c.Transaction(ctx, bundle)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Type != "transaction-response" || len(resp.Entries) != 2 {
			t.Fatalf("response: type %q with %d entries", resp.Type, len(resp.Entries))
		}
		for i, e := range resp.Entries {
			if !strings.HasPrefix(e.Status, "201") {
				t.Errorf("entry %d status %q, want 201", i, e.Status)
			}
		}
		_, pid, _ := resp.Entries[0].Ref()
		_, oid, _ := resp.Entries[1].Ref()
		obs, err := c.Read(ctx, "Observation", oid)
		if err != nil {
			t.Fatal(err)
		}
		if ref := obs["subject"].(map[string]any)["reference"]; ref != "Patient/"+pid {
			t.Errorf("subject.reference = %v, want Patient/%s", ref, pid)
		}
	}},
	{"a rejected request is permanent with the outcome text", func(ctx context.Context, t *testing.T, c *Client, tg target) {
		_, err := c.Update(ctx, Resource{"resourceType": "Patient", "id": "abc"}, "")
		if err != nil {
			t.Fatalf("plain update-as-create: %v", err)
		}
		_, _, err = c.doResource(ctx, call{op: "update Patient/abc", method: "PUT", path: "Patient/abc",
			body: []byte(`{"resourceType":"Patient","id":"not-abc"}`), want: "Patient"})
		fe := wantClass(t, err, ClassRejected)
		if fe.Status != 400 || fe.Retryable || fe.Outcome == "" {
			t.Errorf("status %d retryable %v outcome %q; want a permanent 400 with outcome text", fe.Status, fe.Retryable, fe.Outcome)
		}
	}},
}

// TestConditionalCreateMatchWithoutBody: R4 says only that a conditional
// create with one match "ignores the post and returns 200 OK"
// (https://hl7.org/fhir/R4/http.html#ccreate); a server may answer with
// no body, and that is a match, not an invalid response.
func TestConditionalCreateMatchWithoutBody(t *testing.T) {
	t.Parallel()
	var got string
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Get("If-None-Exist")
		w.WriteHeader(http.StatusOK)
	}))
	defer hs.Close()
	c, err := New(Config{BaseURL: hs.URL})
	if err != nil {
		t.Fatal(err)
	}
	r, created, err := c.CreateIfNoneExist(context.Background(), patient(testSystem, "x"), url.Values{"identifier": {testSystem + "|x"}})
	if err != nil || created || r != nil {
		t.Fatalf("CreateIfNoneExist = %v, created %v, %v; want a match with no resource", r, created, err)
	}
	if got != "identifier="+url.QueryEscape(testSystem+"|x") {
		t.Errorf("If-None-Exist = %q", got)
	}
}

// BenchmarkConditionalUpdate measures the agent's FHIR write path, client
// and sandbox server together.
func BenchmarkConditionalUpdate(b *testing.B) {
	srv, err := fhirserver.New(fhirserver.Options{})
	if err != nil {
		b.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	defer func() { hs.Close(); srv.Close() }()
	c, err := New(Config{BaseURL: hs.URL})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		val := fmt.Sprintf("bench-%d", i%1000)
		p := patient(testSystem, val)
		if _, _, err := c.ConditionalUpdate(ctx, p, url.Values{"identifier": {testSystem + "|" + val}}); err != nil {
			b.Fatal(err)
		}
	}
}
