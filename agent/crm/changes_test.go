package crm

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

func collect(t *testing.T, c *Client, link string) ([]Change, string) {
	t.Helper()
	var got []Change
	next, err := c.Changes(context.Background(), ChangeQuery{Set: "contacts", PrimaryID: "contactid", Select: []string{"lastname"}, DeltaLink: link},
		func(ch Change) error { got = append(got, ch); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if next == "" {
		t.Fatal("no delta link")
	}
	return got, next
}

func summary(chs []Change) string {
	var parts []string
	for _, ch := range chs {
		if ch.Deleted {
			parts = append(parts, "-"+ch.ID[:4])
		} else {
			parts = append(parts, ch.Record.String("lastname"))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func TestChangeTrackingWithDeletes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, c := sandbox(t, crmserver.Options{}, Config{PageSize: 2})
	ids := map[string]string{}
	for _, n := range []string{"A", "B", "C"} {
		id, err := c.Create(ctx, "contacts", Record{"lastname": n})
		if err != nil {
			t.Fatal(err)
		}
		ids[n] = id
	}
	initial, link := collect(t, c, "")
	if summary(initial) != "A,B,C" {
		t.Fatalf("initial = %s", summary(initial))
	}
	none, link2 := collect(t, c, link)
	if len(none) != 0 {
		t.Fatalf("changes without writes: %s", summary(none))
	}

	// update B, delete C, create D and E (more than one page)
	if _, err := c.Upsert(ctx, ByID("contacts", ids["B"]), Record{"lastname": "B2"}, UpsertOptions{Mode: UpdateOnly}); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, ByID("contacts", ids["C"]), ""); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"D", "E"} {
		if _, err := c.Create(ctx, "contacts", Record{"lastname": n}); err != nil {
			t.Fatal(err)
		}
	}
	delta, link3 := collect(t, c, link2)
	want := fmt.Sprintf("-%s,B2,D,E", ids["C"][:4])
	if summary(delta) != want {
		t.Fatalf("delta = %s, want %s", summary(delta), want)
	}
	for _, ch := range delta {
		if ch.Deleted && (ch.ID != ids["C"] || ch.Record != nil) {
			t.Fatalf("deleted change = %+v", ch)
		}
	}
	// the old link still works and sees the same changes (the client may replay)
	again, _ := collect(t, c, link2)
	if summary(again) != want {
		t.Fatalf("replayed delta = %s", summary(again))
	}
	// expired tokens say so; starting over gives every current row
	srv.ExpireDeltaTokens()
	_, err := c.Changes(ctx, ChangeQuery{Set: "contacts", PrimaryID: "contactid", DeltaLink: link3}, func(Change) error { return nil })
	if !errors.Is(err, ErrDeltaExpired) {
		t.Fatalf("expired token: %v", err)
	}
	full, _ := collect(t, c, "")
	if summary(full) != "A,B2,D,E" {
		t.Fatalf("full reconcile = %s", summary(full))
	}
	// change tracking refuses $filter, as Dataverse does
	bad := c.root + "contacts?$filter=lastname%20eq%20'A'"
	_, err = c.Changes(ctx, ChangeQuery{Set: "contacts", PrimaryID: "contactid", DeltaLink: bad}, func(Change) error { return nil })
	wantClass(t, err, ClassRejected)
}
