package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/maps"
)

// conceptTable is a crmAPI holding msemr_codeableconcept rows, counting
// the queries and creates the cache makes. Creates are slow, so that
// concurrent resolutions of one concept overlap.
type conceptTable struct {
	mu       sync.Mutex
	rows     map[string]crm.Record
	queries  atomic.Int32
	creates  atomic.Int32
	retrieve atomic.Int32
}

func (f *conceptTable) Retrieve(_ context.Context, t crm.Target, _ ...string) (crm.Record, error) {
	f.retrieve.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if r, ok := f.rows[t.ID]; ok {
		return r, nil
	}
	return nil, &crm.Error{Status: 404, Class: crm.ClassNotFound}
}

func (f *conceptTable) RetrieveMultiple(_ context.Context, _ string, q crm.Query, fn func(crm.Record) error) error {
	f.queries.Add(1)
	f.mu.Lock()
	var match []crm.Record
	for _, r := range f.rows {
		want := fmt.Sprintf("msemr_code eq %s and msemr_type eq %v", crm.Quote(r.String("msemr_code")), r["msemr_type"])
		if q.Filter == want || strings.EqualFold(q.Filter, want) { // Dataverse compares without case
			match = append(match, r)
		}
	}
	f.mu.Unlock()
	for _, r := range match {
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

func (f *conceptTable) Create(_ context.Context, _ string, rec crm.Record) (string, error) {
	f.creates.Add(1)
	time.Sleep(20 * time.Millisecond)
	f.mu.Lock()
	defer f.mu.Unlock()
	// The alternate key on msemr_code and msemr_type, compared as
	// Dataverse's collation compares, without regard to case.
	for _, r := range f.rows {
		if strings.EqualFold(r.String("msemr_code"), rec.String("msemr_code")) && fmt.Sprint(r["msemr_type"]) == fmt.Sprint(rec["msemr_type"]) {
			return "", &crm.Error{Status: 412, Class: crm.ClassConflict, Code: "0x80060892"}
		}
	}
	id := fmt.Sprintf("00000000-0000-0000-0000-%012d", len(f.rows)+1)
	r := crm.Record{"msemr_codeableconceptid": id}
	for k, v := range rec {
		r[k] = v
	}
	f.rows[id] = r
	return id, nil
}

func (f *conceptTable) Upsert(context.Context, crm.Target, crm.Record, crm.UpsertOptions) (crm.UpsertResult, error) {
	return crm.UpsertResult{}, fmt.Errorf("not used")
}
func (f *conceptTable) Delete(context.Context, crm.Target, string) error {
	return fmt.Errorf("not used")
}

// TestConceptCacheCreatesOnceAndForgets: twenty concurrent resolutions of
// a new concept create one row; later ones are answered from the cache
// without a request; a code differing only in case from a row's is
// refused at once with a *maps.ConceptCaseError (the alternate key cannot
// hold both); after the TTL the table is asked again; a row gone from the
// CRM is forgotten.
func TestConceptCacheCreatesOnceAndForgets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	api := &conceptTable{rows: map[string]crm.Record{}}
	c := newConceptCache(api)
	now := time.Now()
	var clock atomic.Int64
	c.now = func() time.Time { return now.Add(time.Duration(clock.Load())) }
	typ := 935000023
	want := maps.ConceptRow{Code: "39065001", Name: "Burn of ear", Type: &typ}

	var wg sync.WaitGroup
	ids := make([]string, 20)
	for i := range ids {
		wg.Go(func() {
			id, found, err := c.id(ctx, want, true)
			if err != nil || !found {
				t.Errorf("resolution %d: %q %v %v", i, id, found, err)
			}
			ids[i] = id
		})
	}
	wg.Wait()
	if n := api.creates.Load(); n != 1 {
		t.Fatalf("creates for twenty concurrent resolutions = %d, want 1", n)
	}
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("resolutions answered different rows: %v", ids)
		}
	}
	q := api.queries.Load()
	if _, _, err := c.id(ctx, want, true); err != nil || api.queries.Load() != q {
		t.Errorf("a cached concept was asked again (%d queries, was %d): %v", api.queries.Load(), q, err)
	}

	// FHIR codes are case-sensitive, so "ABC" and "abc" are two concepts,
	// but the CRM's alternate key compares codes without regard to case
	// and holds only one: "abc" is a case error after one refused create,
	// not a row and not a retryable conflict.
	upper, found, err := c.id(ctx, maps.ConceptRow{Code: "ABC", Name: "A", Type: &typ}, true)
	if err != nil || !found || upper == "" {
		t.Fatalf("ABC: %q %v %v", upper, found, err)
	}
	lower, found, err := c.id(ctx, maps.ConceptRow{Code: "abc", Name: "a", Type: &typ}, true)
	var cce *maps.ConceptCaseError
	if !errors.As(err, &cce) || lower != "" || found || cce.Code != "abc" || cce.Held != "ABC" || cce.Type == nil || *cce.Type != typ {
		t.Errorf("abc after ABC = %q %v %v (%+v), want a case error", lower, found, err, cce)
	}
	var ce *crm.Error
	if errors.As(err, &ce) {
		t.Errorf("the case error wraps the CRM's conflict, which would make it a retried target_conflict: %v", err)
	}
	if n := api.creates.Load(); n != 3 {
		t.Errorf("creates = %d, want 3 (the concept, ABC, and the refused abc)", n)
	}
	if n := len(api.rows); n != 2 {
		t.Errorf("rows = %d, want 2", n)
	}

	// Past the TTL the table is asked again (and still has the row).
	clock.Store(int64(conceptCacheTTL + time.Second))
	id, found, err := c.id(ctx, want, false)
	if err != nil || !found || id != ids[0] || api.queries.Load() == q {
		t.Errorf("after the TTL: %q %v %v, queries %d (was %d)", id, found, err, api.queries.Load(), q)
	}

	// Write-back reads a row once; a row deleted in the CRM is forgotten.
	c2 := newConceptCache(api)
	if row, found, err := c2.row(ctx, ids[0]); err != nil || !found || row.Code != "39065001" || row.Type == nil || *row.Type != typ {
		t.Fatalf("row %s = %+v %v %v", ids[0], row, found, err)
	}
	r := api.retrieve.Load()
	c2.row(ctx, ids[0])
	if api.retrieve.Load() != r {
		t.Errorf("a cached row was read again")
	}
	api.mu.Lock()
	delete(api.rows, ids[0])
	api.mu.Unlock()
	c2.forgetID(ids[0]) // what a read answered 404 does
	if _, found, _ := c2.row(ctx, ids[0]); found {
		t.Errorf("a row deleted in the CRM is still found")
	}
	if _, found, _ := c2.id(ctx, want, false); found {
		t.Errorf("a concept whose row was deleted still resolves without create")
	}
}
