package agent

import (
	"context"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

// keylessConceptCRM starts a sandbox CRM whose msemr_codeableconcept table
// has no alternate key on msemr_code and msemr_type, as the data model
// ships it (sandbox/crmserver/metadata_concept.go adds the key that
// maps/starter/SOURCES.md asks administrators for), and a client of it.
func keylessConceptCRM(t *testing.T) (*crmserver.Server, *crm.Client) {
	t.Helper()
	ents := crmserver.DefaultEntities()
	keyed := false
	for _, e := range ents {
		if e.LogicalName == maps.ConceptEntity {
			keyed = len(e.Keys) > 0
			e.Keys = nil
		}
	}
	if !keyed {
		t.Fatalf("the sandbox's %s has no alternate key to take away", maps.ConceptEntity)
	}
	srv, err := crmserver.New(crmserver.Options{Entities: ents})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	c, err := crm.New(crm.Config{URL: hs.URL})
	if err != nil {
		t.Fatal(err)
	}
	return srv, c
}

// reversedRows is a crmAPI that hands a query's rows over last first.
// Without $orderby the Web API promises no order (the sandbox answers in
// id order), so the choice among duplicates must not rest on it.
type reversedRows struct{ crmAPI }

func (r reversedRows) RetrieveMultiple(ctx context.Context, set string, q crm.Query, fn func(crm.Record) error) error {
	var rows []crm.Record
	if err := r.crmAPI.RetrieveMultiple(ctx, set, q, func(rec crm.Record) error {
		rows = append(rows, rec)
		return nil
	}); err != nil {
		return err
	}
	for _, rec := range slices.Backward(rows) {
		if err := fn(rec); err != nil {
			return err
		}
	}
	return nil
}

// TestConceptLookupsWithoutAlternateKey: where the concept table has no
// alternate key, rows duplicated by hand or by another writer resolve to
// the one with the smallest id (maps.ChooseConceptRow), from a warm cache
// and a cold one alike, whichever order the rows come in, and resolving
// creates nothing; concurrent resolutions of a new concept in one process
// still create one row.
func TestConceptLookupsWithoutAlternateKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, c := keylessConceptCRM(t)
	conditionCode, clinicalFinding := 935000023, 935000018
	const (
		code     = "39065001"
		otherTyp = "00000000-0000-4000-8000-000000000001" // same code, another type: not a duplicate
		smallest = "00000000-0000-4000-8000-00000000000a"
		larger   = "00000000-0000-4000-8000-00000000000b"
	)
	// The larger id first, so that the order rows were made in and the
	// order of their ids disagree.
	for _, r := range []struct {
		id  string
		typ int
	}{{larger, conditionCode}, {smallest, conditionCode}, {otherTyp, clinicalFinding}} {
		rec := crm.Record{maps.ConceptIDColumn: r.id, maps.ConceptCodeColumn: code, maps.ConceptNameColumn: "Burn of ear", maps.ConceptTypeColumn: r.typ}
		if _, err := c.Create(ctx, maps.ConceptEntitySet, rec); err != nil {
			t.Fatalf("creating concept row %s without an alternate key: %v", r.id, err)
		}
	}
	want := maps.ConceptRow{Code: code, Name: "Burn of ear", Type: &conditionCode}

	warm := conceptLookups{concepts: newConceptCache(c)}
	var wg sync.WaitGroup
	ids := make([]string, 8)
	errs := make([]error, len(ids))
	for i := range ids {
		wg.Go(func() {
			var found bool
			ids[i], found, errs[i] = warm.ConceptID(ctx, want, true)
			if errs[i] == nil && !found {
				ids[i] = "(not found)"
			}
		})
	}
	wg.Wait()
	for i := range ids {
		if errs[i] != nil {
			t.Fatalf("resolution %d: %v", i, errs[i])
		}
		if ids[i] != smallest {
			t.Errorf("resolution %d = %s, want the smallest id %s of the two duplicates", i, ids[i], smallest)
		}
	}
	cold := conceptLookups{concepts: newConceptCache(reversedRows{c})}
	if id, found, err := cold.ConceptID(ctx, want, false); err != nil || !found || id != smallest {
		t.Errorf("resolution from a cold cache = %s, %v, %v, want %s", id, found, err, smallest)
	}
	if row, found, err := cold.Concept(ctx, smallest); err != nil || !found || row.Code != code || row.Type == nil || *row.Type != conditionCode {
		t.Errorf("Concept(%s) = %+v, %v, %v, want the row with code %s and type %d", smallest, row, found, err, code, conditionCode)
	}
	if n := srv.Count(maps.ConceptEntity); n != 3 {
		t.Errorf("concept rows after resolving = %d, want the 3 made before (none created)", n)
	}

	// A new concept resolved at once by several workers: the process's
	// lock on the concept, not the table, keeps it to one row.
	fresh := maps.ConceptRow{Code: "40055000", Name: "Chronic sinusitis", Type: &conditionCode}
	for i := range ids {
		wg.Go(func() { ids[i], _, errs[i] = warm.ConceptID(ctx, fresh, true) })
	}
	wg.Wait()
	for i := range ids {
		if errs[i] != nil {
			t.Fatalf("creating resolution %d: %v", i, errs[i])
		}
	}
	if distinct := slices.Compact(slices.Sorted(slices.Values(ids))); len(distinct) != 1 || distinct[0] == "" {
		t.Errorf("concurrent resolutions of a new concept = %v, want one id", ids)
	}
	if n := srv.Count(maps.ConceptEntity); n != 4 {
		t.Errorf("concept rows after creating one concept = %d, want 4", n)
	}
}

// TestKeylessConceptCRMAcceptsDuplicates shows the option the test above
// relies on: with the sandbox's alternate key a second row of one code
// and type is refused, without it the row is made.
func TestKeylessConceptCRMAcceptsDuplicates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	typ := 935000023
	row := crm.Record{maps.ConceptCodeColumn: "39065001", maps.ConceptNameColumn: "Burn of ear", maps.ConceptTypeColumn: typ}

	keyedSrv, err := crmserver.New(crmserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { keyedSrv.Close() })
	hs := httptest.NewServer(keyedSrv)
	t.Cleanup(hs.Close)
	keyed, err := crm.New(crm.Config{URL: hs.URL})
	if err != nil {
		t.Fatal(err)
	}
	_, keyless := keylessConceptCRM(t)
	for _, tc := range []struct {
		name    string
		c       *crm.Client
		wantErr bool
	}{{name: "with the alternate key", c: keyed, wantErr: true}, {name: "without it", c: keyless, wantErr: false}} {
		if _, err := tc.c.Create(ctx, maps.ConceptEntitySet, row); err != nil {
			t.Fatalf("%s: first row: %v", tc.name, err)
		}
		_, err := tc.c.Create(ctx, maps.ConceptEntitySet, row)
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: second row of the same code and type: err = %v, want error %v", tc.name, err, tc.wantErr)
		}
	}
}
