package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/maps"
)

// conceptLookups is the engine's resolver with concept lookups added: the
// lookups of resolver, and the concept rows of maps.ConceptResolver found
// in (and, where a map allows, created in) the CRM's msemr_codeableconcept
// table, cached.
type conceptLookups struct {
	resolver
	concepts *conceptCache
}

// conceptCacheSize and conceptCacheTTL bound the concept cache. Concept
// rows are reference data no entity map covers, so no change notice names
// them: a row renamed or deleted in the CRM is forgotten within the TTL
// (until then a write that binds a deleted row fails and is retried).
const (
	conceptCacheSize = 20_000
	conceptCacheTTL  = 10 * time.Minute
)

// conceptCache finds concept rows by type and code and reads them by id,
// remembering what it found. Creates of the same concept are serialised
// in the process, and a create refused because another writer made the
// row first (412, the alternate key on msemr_code and msemr_type that
// maps/starter/SOURCES.md asks for) reads the row that writer made: a
// concept is created once, not once per record that carries it.
type conceptCache struct {
	api crmAPI
	now func() time.Time

	mu    sync.Mutex
	byKey map[string]conceptEntry // maps.ConceptKey → row
	byID  map[string]conceptEntry // lower-case id → row
	keyMu map[string]*keyLock     // creates under way, by key
}

type conceptEntry struct {
	row maps.ConceptRow
	at  time.Time
}

// keyLock serialises the finds-then-creates of one concept.
type keyLock struct {
	mu   sync.Mutex
	refs int
}

func newConceptCache(api crmAPI) *conceptCache {
	return &conceptCache{api: api, now: time.Now, byKey: map[string]conceptEntry{}, byID: map[string]conceptEntry{}, keyMu: map[string]*keyLock{}}
}

// ConceptID implements maps.ConceptResolver.
func (l conceptLookups) ConceptID(ctx context.Context, want maps.ConceptRow, create bool) (string, bool, error) {
	return l.concepts.id(ctx, want, create)
}

// Concept implements maps.ConceptResolver.
func (l conceptLookups) Concept(ctx context.Context, id string) (maps.ConceptRow, bool, error) {
	return l.concepts.row(ctx, id)
}

func (c *conceptCache) cached(key string, byKey bool) (maps.ConceptRow, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.byID
	if byKey {
		m = c.byKey
	}
	e, ok := m[key]
	if !ok {
		return maps.ConceptRow{}, false
	}
	if c.now().Sub(e.at) > conceptCacheTTL {
		c.drop(e.row)
		return maps.ConceptRow{}, false
	}
	return e.row, true
}

func (c *conceptCache) put(row maps.ConceptRow) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.byID) >= conceptCacheSize {
		// Reference data: starting over costs one read per concept.
		c.byKey, c.byID = map[string]conceptEntry{}, map[string]conceptEntry{}
	}
	e := conceptEntry{row: row, at: c.now()}
	c.byKey[maps.ConceptKey(row.Type, row.Code)] = e
	c.byID[strings.ToLower(row.ID)] = e
}

// forgetID drops whatever the cache holds under the row id: the row is
// gone from the CRM.
func (c *conceptCache) forgetID(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.byKey {
		if strings.EqualFold(e.row.ID, id) {
			delete(c.byKey, k)
		}
	}
	delete(c.byID, strings.ToLower(id))
}

func (c *conceptCache) drop(row maps.ConceptRow) {
	delete(c.byKey, maps.ConceptKey(row.Type, row.Code))
	delete(c.byID, strings.ToLower(row.ID))
}

// lock takes the create lock of key; the returned func releases it.
func (c *conceptCache) lock(key string) func() {
	c.mu.Lock()
	kl := c.keyMu[key]
	if kl == nil {
		kl = &keyLock{}
		c.keyMu[key] = kl
	}
	kl.refs++
	c.mu.Unlock()
	kl.mu.Lock()
	return func() {
		kl.mu.Unlock()
		c.mu.Lock()
		if kl.refs--; kl.refs == 0 {
			delete(c.keyMu, key)
		}
		c.mu.Unlock()
	}
}

// id finds the row of want's type and code: the cache, else a query of
// the concept table, else (create) a new row.
func (c *conceptCache) id(ctx context.Context, want maps.ConceptRow, create bool) (string, bool, error) {
	key := maps.ConceptKey(want.Type, want.Code)
	if row, ok := c.cached(key, true); ok {
		return row.ID, true, nil
	}
	unlock := c.lock(key)
	defer unlock()
	if row, ok := c.cached(key, true); ok {
		// Found or made by the holder of the lock before us.
		return row.ID, true, nil
	}
	row, found, _, err := c.find(ctx, want)
	if err != nil || found {
		return row.ID, found, err
	}
	if !create {
		return "", false, nil
	}
	rec := crm.Record{maps.ConceptCodeColumn: want.Code, maps.ConceptNameColumn: want.Name}
	if want.Text != "" {
		rec[maps.ConceptTextColumn] = want.Text
	}
	if want.Type != nil {
		rec[maps.ConceptTypeColumn] = *want.Type
	}
	id, err := c.api.Create(ctx, maps.ConceptEntitySet, rec)
	var ce *crm.Error
	if errors.As(err, &ce) && ce.Class == crm.ClassConflict {
		// Another writer (a second process) made it first; or the table
		// holds the code in another case, which the alternate key does
		// not tell from this one (maps.ConceptCaseError): a retry would
		// be refused the same, so it is a mapping error, and the CRM's
		// refusal is not wrapped (it would make it a retried conflict).
		row, found, variant, ferr := c.find(ctx, want)
		if ferr == nil && found {
			return row.ID, true, nil
		}
		if ferr == nil && variant != nil {
			return "", false, &maps.ConceptCaseError{Code: want.Code, Held: variant.Code, Type: want.Type}
		}
	}
	if err != nil {
		return "", false, fmt.Errorf("creating a %s row: %w", maps.ConceptEntity, classify(err))
	}
	want.ID = id
	c.put(want)
	return id, true, nil
}

// find queries the concept table for want's type and code
// (maps.ConceptFilter, maps.ChooseConceptRow: exact code, smallest id).
// When no row has the code exactly, variant is a row whose code differs
// only in case (the filter compares as Dataverse does, without regard to
// case), if there is one.
func (c *conceptCache) find(ctx context.Context, want maps.ConceptRow) (row maps.ConceptRow, found bool, variant *maps.ConceptRow, err error) {
	var rows []maps.ConceptRow
	err = c.api.RetrieveMultiple(ctx, maps.ConceptEntitySet, crm.Query{Select: maps.ConceptColumns(), Filter: maps.ConceptFilter(want)},
		func(r crm.Record) error {
			rows = append(rows, maps.ConceptRowOf(r))
			return nil
		})
	if err != nil {
		return maps.ConceptRow{}, false, nil, fmt.Errorf("finding a %s row: %w", maps.ConceptEntity, classify(err))
	}
	row, found = maps.ChooseConceptRow(rows, want)
	if found {
		c.put(row)
		return row, true, nil, nil
	}
	if v, ok := maps.CaseVariant(rows, want); ok {
		variant = &v
	}
	return row, false, variant, nil
}

// row reads the concept row id, for write-back.
func (c *conceptCache) row(ctx context.Context, id string) (maps.ConceptRow, bool, error) {
	if row, ok := c.cached(strings.ToLower(id), false); ok {
		return row, true, nil
	}
	r, err := c.api.Retrieve(ctx, crm.ByID(maps.ConceptEntitySet, id), maps.ConceptColumns()...)
	if isMissing(err) {
		c.forgetID(id)
		return maps.ConceptRow{}, false, nil
	}
	if err != nil {
		return maps.ConceptRow{}, false, fmt.Errorf("reading a %s row: %w", maps.ConceptEntity, classify(err))
	}
	row := maps.ConceptRowOf(r)
	if row.ID == "" {
		row.ID = id
	}
	c.put(row)
	return row, true, nil
}
