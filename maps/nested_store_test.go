package maps_test

import (
	"bytes"
	"context"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestStoreKeepsNestedExpansions stores the starter set, whose care-team
// map nests the participants' roles in their expansion, and reads it back
// with the nesting (map_expansion_maps.parent_expansion_id).
func TestStoreKeepsNestedExpansions(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		st, err := maps.New(db, maps.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		doc, _, err := maps.Import(starter.YAML(), maps.CompileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.CreateDraft(ctx, doc, "alice", "starter"); err != nil {
			t.Fatal(err)
		}
		back, _, err := st.Version(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		var roles *maps.ExpansionMap
		for _, em := range back.EntityMaps {
			for _, x := range em.Expansions {
				if em.Name == "care-team" && x.Name == "participants" && len(x.Expansions) == 1 {
					roles = &x.Expansions[0]
				}
				if x.Name == "participant-roles" {
					t.Errorf("entity map %s: the nested expansion came back at the top level", em.Name)
				}
			}
		}
		if roles == nil || roles.Name != "participant-roles" || len(roles.Attributes) != 3 || roles.ParentLookup != "msemr_careteamparticipant" {
			t.Fatalf("care-team participants' nested expansion = %+v", roles)
		}
		want, _ := maps.Export(doc)
		got, _ := maps.Export(back)
		if !bytes.Equal(got, want) {
			t.Errorf("stored version exports differently")
		}
	})
}
