package maps_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

var quiet = slog.New(slog.DiscardHandler)

func starterDoc(t *testing.T) *maps.Document {
	t.Helper()
	doc, err := maps.Parse(starter.YAML())
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func TestStoreVersionsPublishRollback(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		st, err := maps.New(db, maps.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Current(ctx); !errors.Is(err, maps.ErrNotFound) {
			t.Fatalf("Current before any publication: %v, want ErrNotFound", err)
		}
		doc := starterDoc(t)
		v1, err := st.CreateDraft(ctx, doc, "alice", "starter")
		if err != nil {
			t.Fatal(err)
		}
		if v1.Number != 1 || v1.Status != maps.StatusDraft {
			t.Fatalf("first draft = %+v", v1)
		}

		// The stored version exports byte-identically to the original.
		want, _ := maps.Export(doc)
		back, info, err := st.Version(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := maps.Export(back)
		if !bytes.Equal(got, want) {
			t.Fatalf("stored version exports differently:\n%s", firstDiff(got, want))
		}
		if info.Checksum != v1.Checksum {
			t.Fatalf("checksum %s, want %s", info.Checksum, v1.Checksum)
		}

		// Drafts can be edited until published.
		doc.EntityMaps[0].Description = "edited"
		if _, err := st.UpdateDraft(ctx, 1, doc, "alice", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Publish(ctx, 1, "bob", "go live"); err != nil {
			t.Fatal(err)
		}
		set, err := st.Current(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if set.Version() != 1 || set.Document().EntityMaps[0].Description != "edited" {
			t.Fatalf("current set is version %d", set.Version())
		}

		// Published versions are immutable, in the store and in the schema.
		if _, err := st.UpdateDraft(ctx, 1, doc, "mallory", ""); !errors.Is(err, maps.ErrImmutable) {
			t.Fatalf("UpdateDraft on published: %v, want ErrImmutable", err)
		}
		if err := st.DeleteDraft(ctx, 1); !errors.Is(err, maps.ErrImmutable) {
			t.Fatalf("DeleteDraft on published: %v, want ErrImmutable", err)
		}
		for _, stmt := range []string{
			`UPDATE map_attribute_maps SET fhir_path = 'gender' WHERE name = 'first-name'`,
			`DELETE FROM map_entity_maps`,
			`UPDATE map_versions SET note = 'x'`,
			`DELETE FROM map_versions`,
		} {
			if err := db.Exec(stmt).Error; err == nil {
				t.Errorf("%s on a published version succeeded", stmt)
			}
		}

		// A second version, then a rollback to the first.
		doc.EntityMaps[0].Description = "second"
		if v2, err := st.CreateDraft(ctx, doc, "alice", ""); err != nil || v2.Number != 2 {
			t.Fatalf("second draft: %+v, %v", v2, err)
		}
		if _, err := st.Publish(ctx, 2, "bob", ""); err != nil {
			t.Fatal(err)
		}
		if set, _ := st.Current(ctx); set.Version() != 2 {
			t.Fatalf("current = %d, want 2", set.Version())
		}
		if _, err := st.Rollback(ctx, 1, "bob", "bad release"); err != nil {
			t.Fatal(err)
		}
		set, err = st.Current(ctx)
		if err != nil || set.Version() != 1 || set.Document().EntityMaps[0].Description != "edited" {
			t.Fatalf("after rollback: version %v, %v", set, err)
		}
		pubs, err := st.Publications(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(pubs) != 3 || pubs[0].Version != 1 || !pubs[0].Rollback || pubs[1].Version != 2 || pubs[1].Rollback {
			t.Fatalf("publications = %+v", pubs)
		}
		vs, err := st.Versions(ctx)
		if err != nil || len(vs) != 2 || vs[0].Number != 2 || vs[0].Current || !vs[1].Current {
			t.Fatalf("versions = %+v, %v", vs, err)
		}
		if _, err := st.Rollback(ctx, 3, "bob", ""); !errors.Is(err, maps.ErrNotFound) {
			t.Fatalf("rollback to a missing version: %v", err)
		}
	})
}

func TestStoreRefusesInvalidMapSets(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		st, _ := maps.New(db, maps.Options{Logger: quiet})
		doc := starterDoc(t)
		doc.EntityMaps[0].FHIRType = "Patinet"
		_, err := st.CreateDraft(context.Background(), doc, "alice", "")
		var ve *maps.ValidationError
		if !errors.As(err, &ve) {
			t.Fatalf("CreateDraft(invalid) = %v, want a ValidationError", err)
		}
		if vs, _ := st.Versions(context.Background()); len(vs) != 0 {
			t.Fatalf("an invalid draft was stored: %+v", vs)
		}
	})
}

// TestStoreWatchSeesOtherProcesses publishes through one Store and watches
// through another on the same database, as two processes would.
func TestStoreWatchSeesOtherProcesses(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		writer, _ := maps.New(db, maps.Options{Logger: quiet})
		watcher, _ := maps.New(db, maps.Options{PollInterval: 20 * time.Millisecond, Logger: quiet})
		doc := starterDoc(t)
		if _, err := writer.CreateDraft(ctx, doc, "", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := writer.Publish(ctx, 1, "", ""); err != nil {
			t.Fatal(err)
		}
		wctx, stop := context.WithCancel(ctx)
		ch := watcher.Watch(wctx)
		if set := <-ch; set == nil || set.Version() != 1 {
			t.Fatalf("first watched set = %v", set)
		}
		if _, err := writer.CreateDraft(ctx, doc, "", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := writer.Publish(ctx, 2, "", ""); err != nil {
			t.Fatal(err)
		}
		select {
		case set := <-ch:
			if set.Version() != 2 {
				t.Fatalf("watched version %d, want 2", set.Version())
			}
		case <-ctx.Done():
			t.Fatal("no new set after publication")
		}
		if _, err := writer.Rollback(ctx, 1, "", ""); err != nil {
			t.Fatal(err)
		}
		if set := <-ch; set.Version() != 1 {
			t.Fatalf("after rollback watched version %d, want 1", set.Version())
		}
		stop()
		for range ch {
		}
	})
}

func firstDiff(a, b []byte) string {
	la, lb := bytes.Split(a, []byte("\n")), bytes.Split(b, []byte("\n"))
	for i := range min(len(la), len(lb)) {
		if !bytes.Equal(la[i], lb[i]) {
			return "line " + itoa(i+1) + ":\n got: " + string(la[i]) + "\nwant: " + string(lb[i])
		}
	}
	return "lengths differ"
}

func itoa(i int) string {
	return string(rune('0'+i/1000%10)) + string(rune('0'+i/100%10)) + string(rune('0'+i/10%10)) + string(rune('0'+i%10))
}

func TestStoreConcurrentDraftsGetDistinctNumbers(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		doc := starterDoc(t)
		errs := make(chan error, 3)
		for range 3 {
			go func() {
				st, _ := maps.New(db, maps.Options{Logger: quiet})
				_, err := st.CreateDraft(ctx, doc, "", "")
				errs <- err
			}()
		}
		for range 3 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		st, _ := maps.New(db, maps.Options{Logger: quiet})
		vs, err := st.Versions(ctx)
		if err != nil || len(vs) != 3 || vs[0].Number != 3 || vs[2].Number != 1 {
			t.Fatalf("versions = %+v, %v", vs, err)
		}
	})
}

// A version saved with round declarations reads back with them: round 0
// (whole numbers) is kept apart from no round at all, on entity maps' and
// expansion maps' attribute maps alike.
func TestStoreKeepsRound(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		st, err := maps.New(db, maps.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		doc := starterDoc(t)
		want := map[string]*int{}
		places := []int{0, 4, 10}
		n := 0
		set := func(owner string, as []maps.AttributeMap) {
			for i := range as {
				a := &as[i]
				if a.CRMType != maps.TypeDecimal && a.CRMType != maps.TypeMoney {
					continue
				}
				a.Round = nil
				if n%4 != 3 {
					a.Round = new(places[n%4])
				}
				want[owner+"/"+a.Name] = a.Round
				n++
			}
		}
		for i := range doc.EntityMaps {
			e := &doc.EntityMaps[i]
			set(e.Name, e.Attributes)
			for j := range e.Expansions {
				set(e.Name+"/"+e.Expansions[j].Name, e.Expansions[j].Attributes)
			}
		}
		if n < 4 {
			t.Fatalf("the starter maps have %d decimal attribute maps, want at least 4", n)
		}
		v, err := st.CreateDraft(ctx, doc, "alice", "round")
		if err != nil {
			t.Fatal(err)
		}
		back, _, err := st.Version(ctx, v.Number)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]*int{}
		for _, e := range back.EntityMaps {
			for _, a := range e.Attributes {
				if a.CRMType == maps.TypeDecimal || a.CRMType == maps.TypeMoney {
					got[e.Name+"/"+a.Name] = a.Round
				}
			}
			for _, x := range e.Expansions {
				for _, a := range x.Attributes {
					if a.CRMType == maps.TypeDecimal || a.CRMType == maps.TypeMoney {
						got[e.Name+"/"+x.Name+"/"+a.Name] = a.Round
					}
				}
			}
		}
		if len(got) != len(want) {
			t.Fatalf("read back %d decimal attribute maps, saved %d", len(got), len(want))
		}
		for k, w := range want {
			g := got[k]
			if (g == nil) != (w == nil) || (g != nil && *g != *w) {
				t.Errorf("%s: round read back as %s, saved %s", k, roundText(g), roundText(w))
			}
		}
		// And the YAML export carries it.
		out, err := maps.Export(back)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(out, []byte("round: 0")) || !bytes.Contains(out, []byte("round: 10")) {
			t.Fatalf("exported YAML lacks the round declarations")
		}
	})
}

func roundText(p *int) string {
	if p == nil {
		return "none"
	}
	return strconv.Itoa(*p)
}
