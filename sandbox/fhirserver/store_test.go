package fhirserver

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Writes that wait while a group commits go into the next group together:
// each in a savepoint, so the one that fails is undone alone and the
// others commit.
func TestGroupCommitUndoesAFailedWriteAlone(t *testing.T) {
	s := testStore(t)
	ctx := context.Background()
	const n = 6
	boom := errors.New("refused")
	s.mu.Lock() // a group is committing: the writes below queue up
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			errs[i] = s.write(ctx, func(w *writer) error {
				res := map[string]any{"resourceType": "Patient", "id": fmt.Sprintf("p%d", i),
					"identifier": []any{map[string]any{"system": "urn:mrn", "value": fmt.Sprintf("m%d", i)}}}
				if _, err := w.put(ctx, res, "PUT", 0); err != nil {
					return err
				}
				if i == 3 {
					return boom // after its rows were written
				}
				return nil
			})
		})
	}
	for {
		s.qmu.Lock()
		queued := len(s.pending)
		s.qmu.Unlock()
		if queued == n {
			break
		}
		time.Sleep(time.Millisecond)
	}
	s.mu.Unlock()
	wg.Wait()
	for i, err := range errs {
		_, cerr := current(ctx, s.reader(), "Patient", fmt.Sprintf("p%d", i))
		var idents int
		if err := s.db.QueryRow(`SELECT COUNT(*) FROM identifiers WHERE id = ?`, fmt.Sprintf("p%d", i)).Scan(&idents); err != nil {
			t.Fatal(err)
		}
		if i == 3 {
			if !errors.Is(err, boom) {
				t.Errorf("write 3 returned %v, want its own error", err)
			}
			if !errors.Is(cerr, errNoRecord) || idents != 0 {
				t.Errorf("write 3 failed but left its rows: current %v, %d identifiers", cerr, idents)
			}
			continue
		}
		if err != nil || cerr != nil || idents != 1 {
			t.Errorf("write %d: %v; stored: %v, %d identifiers", i, err, cerr, idents)
		}
	}
}

// An update that keeps a resource's identifiers leaves their rows as they
// are; one that changes them replaces them.
func TestUpdateRewritesIdentifiersOnlyWhenTheyChange(t *testing.T) {
	s := testStore(t)
	put := func(prev int64, values ...string) { putAs(t, s, "a", prev, values...) }
	rows := func() (got []string, maxRowid int64) {
		t.Helper()
		r, err := s.db.Query(`SELECT value, rowid FROM identifiers WHERE type = 'Patient' AND id = 'a' ORDER BY value`)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		for r.Next() {
			var v string
			var id int64
			if err := r.Scan(&v, &id); err != nil {
				t.Fatal(err)
			}
			got = append(got, v)
			maxRowid = max(maxRowid, id)
		}
		return got, maxRowid
	}
	put(0, "x", "y")
	putAs(t, s, "b", 0, "q") // a rewrite of a's rows would take rowids after b's
	_, first := rows()
	put(1, "y", "x") // same identifiers, other order
	if got, id := rows(); fmt.Sprint(got) != "[x y]" || id != first {
		t.Errorf("after an update with the same identifiers: %v (largest rowid %d, was %d), want [x y] untouched", got, id, first)
	}
	put(2, "x", "z")
	if got, id := rows(); fmt.Sprint(got) != "[x z]" || id == first {
		t.Errorf("after an update with other identifiers: %v (largest rowid %d), want [x z] rewritten", got, id)
	}
	// Searching by identifier finds the current value only.
	var n int
	if err := s.db.QueryRow(`SELECT COUNT(*) FROM identifiers WHERE value = 'y'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d rows still hold the removed identifier y (%v)", n, err)
	}
}

func putAs(t *testing.T, s *store, id string, prev int64, values ...string) {
	t.Helper()
	var ids []any
	for _, v := range values {
		ids = append(ids, map[string]any{"system": "urn:mrn", "value": v})
	}
	ctx := context.Background()
	err := s.write(ctx, func(w *writer) error {
		_, err := w.put(ctx, map[string]any{"resourceType": "Patient", "id": id, "identifier": ids}, "PUT", prev)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A write that commits alone is undone alone too.
func TestWriteAloneUndoneOnError(t *testing.T) {
	s := testStore(t)
	ctx := context.Background()
	boom := errors.New("refused")
	err := s.write(ctx, func(w *writer) error {
		if _, err := w.put(ctx, map[string]any{"resourceType": "Patient", "id": "a"}, "PUT", 0); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("write returned %v, want its own error", err)
	}
	if _, err := current(ctx, s.reader(), "Patient", "a"); !errors.Is(err, errNoRecord) {
		t.Errorf("the failed write left Patient/a: %v", err)
	}
	putAs(t, s, "b", 0, "q")
	if _, err := current(ctx, s.reader(), "Patient", "b"); err != nil {
		t.Errorf("a write after the failed one: %v", err)
	}
}

// testStore opens a store in a file of the test's own.
func testStore(t *testing.T) *store {
	t.Helper()
	s, err := openStore(filepath.Join(t.TempDir(), "fhir.db"), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.close() })
	return s
}
