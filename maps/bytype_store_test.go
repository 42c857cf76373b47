package maps_test

import (
	"bytes"
	"context"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestStoreKeepsLookupByType: a stored version gives back a lookup by type
// whole (targets, navigation, type column, value map, policy) and keeps
// plain lookups as they were.
func TestStoreKeepsLookupByType(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		st, err := maps.New(db, maps.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		doc := starterDoc(t)
		var found bool
		for i := range doc.EntityMaps {
			for j := range doc.EntityMaps[i].Expansions {
				for k := range doc.EntityMaps[i].Expansions[j].Attributes {
					a := &doc.EntityMaps[i].Expansions[j].Attributes[k]
					if a.Lookup.IsByType() {
						found = true
						a.Lookup.ByType[0].Navigation = "msemr_ActorPatient"
					}
				}
			}
		}
		if !found {
			t.Fatal("the starter maps have no lookup by type in an expansion")
		}
		want, _ := maps.Export(doc)
		if !bytes.Contains(want, []byte("byType:")) || !bytes.Contains(want, []byte("navigation: msemr_ActorPatient")) {
			t.Fatal("the exported starter maps lack the lookup by type")
		}
		v, err := st.CreateDraft(ctx, doc, "alice", "lookup by type")
		if err != nil {
			t.Fatal(err)
		}
		back, _, err := st.Version(ctx, v.Number)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := maps.Export(back)
		if !bytes.Equal(got, want) {
			t.Fatalf("the stored version differs from the document:\n%s", got)
		}
	})
}
