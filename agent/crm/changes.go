package crm

import (
	"context"
	"net/url"
	"strings"
)

// Change is one entry of a change-tracking answer.
type Change struct {
	// ID is the row's primary key.
	ID string
	// Deleted is set for $deletedEntity entries; Record is then nil.
	Deleted bool
	// Record holds the selected attributes of a new or changed row.
	Record Record
}

// ChangeQuery asks for the changes of one entity set.
type ChangeQuery struct {
	// Set is the entity set name, e.g. "contacts".
	Set string
	// PrimaryID is the primary key attribute, e.g. "contactid".
	PrimaryID string
	// Select names the attributes to return (the primary key is added).
	Select []string
	// DeltaLink is the link returned by the previous call; empty starts
	// tracking with every current row.
	DeltaLink string
}

// Changes walks the changes since q.DeltaLink (or every row, when empty),
// calling fn for each, and returns the new delta link to store. A link the
// server no longer honours gives an error matching ErrDeltaExpired; the
// caller then starts again with an empty link (a full reconcile).
func (c *Client) Changes(ctx context.Context, q ChangeQuery, fn func(Change) error) (string, error) {
	op := "tracking changes of " + q.Set
	link := q.DeltaLink
	if link == "" {
		v := url.Values{}
		sel := append([]string{q.PrimaryID}, q.Select...)
		v.Set("$select", strings.Join(dedupe(sel), ","))
		link = c.url(q.Set, v)
	}
	h := c.preferHeader("odata.track-changes")
	for {
		pg, err := c.page(ctx, op, link, h)
		if err != nil {
			return "", err
		}
		for _, r := range pg.Value {
			ch, err := toChange(op, q.PrimaryID, r)
			if err != nil {
				return "", err
			}
			if err := fn(ch); err != nil {
				return "", err
			}
		}
		switch {
		case pg.NextLink != "":
			link = pg.NextLink
		case pg.DeltaLink != "":
			return pg.DeltaLink, nil
		default:
			return "", invalidResponse(op, 200, "change-tracking answer without @odata.deltaLink")
		}
	}
}

func toChange(op, primaryID string, r Record) (Change, error) {
	ctx, _ := r["@odata.context"].(string)
	if strings.HasSuffix(ctx, "$deletedEntity") || (r["reason"] == "deleted" && r[primaryID] == nil) {
		id, _ := r["id"].(string)
		if id == "" {
			return Change{}, invalidResponse(op, 200, "$deletedEntity without an id")
		}
		return Change{ID: strings.ToLower(id), Deleted: true}, nil
	}
	id, _ := r[primaryID].(string)
	if id == "" {
		return Change{}, invalidResponse(op, 200, "changed row without %s", primaryID)
	}
	return Change{ID: strings.ToLower(id), Record: r}, nil
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	out := in[:0:0]
	for _, s := range in {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
