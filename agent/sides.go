package agent

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/path"
)

// fhirAPI is what the agent needs from the FHIR client.
type fhirAPI interface {
	Read(ctx context.Context, typ, id string) (fhir.Resource, error)
	Create(ctx context.Context, res fhir.Resource) (fhir.Resource, error)
	Update(ctx context.Context, res fhir.Resource, ifMatch string) (fhir.Resource, error)
	Delete(ctx context.Context, typ, id string) error
	Search(ctx context.Context, typ string, q url.Values) (*fhir.Page, error)
}

// crmAPI is what the agent needs from the Dataverse client.
type crmAPI interface {
	Retrieve(ctx context.Context, t crm.Target, sel ...string) (crm.Record, error)
	RetrieveMultiple(ctx context.Context, set string, q crm.Query, fn func(crm.Record) error) error
	Upsert(ctx context.Context, t crm.Target, rec crm.Record, o crm.UpsertOptions) (crm.UpsertResult, error)
	Create(ctx context.Context, set string, rec crm.Record) (string, error)
	Delete(ctx context.Context, t crm.Target, etag string) error
}

// classify turns the clients' errors into the agent's retry data.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var fe *fhir.Error
	var ce *crm.Error
	switch {
	case errors.As(err, &fe):
		return classified(string(fe.Class), fe.Status, fe.Retryable, fe.RetryAfter, err)
	case errors.As(err, &ce):
		return classified(string(ce.Class), ce.Status, ce.Retryable, ce.RetryAfter, err)
	case errors.Is(err, context.DeadlineExceeded):
		return &endpointError{class: classUnavailable, err: err}
	}
	return err
}

func classified(class string, status int, retryable bool, after time.Duration, err error) error {
	if class == string(fhir.ClassGone) {
		class = classNotFound
	}
	e := &endpointError{class: class, status: status, err: err}
	switch {
	case !retryable:
		return Permanent(e)
	case after > 0:
		return RetryAfter(after, e)
	}
	return e
}

func isMissing(err error) bool {
	return errors.Is(err, fhir.ErrNotFound) || errors.Is(err, fhir.ErrGone) || errors.Is(err, crm.ErrNotFound)
}

// fhirSide reads FHIR resources as a source and writes them as a target.
type fhirSide struct {
	api fhirAPI
	// crm is used after creating a resource from a CRM record, to store the
	// new FHIR id in the record's correlation attribute.
	crm    crmAPI
	writes ownWrites
}

func (s fhirSide) read(ctx context.Context, m *maps.Mapping, id string) (record, error) {
	em := m.Def()
	res, err := s.api.Read(ctx, em.FHIRType, id)
	if isMissing(err) {
		return record{}, errGone
	}
	if err != nil {
		return record{}, classify(err)
	}
	return record{Type: em.FHIRType, ID: res.ID(), Version: res.VersionID(), Data: res, Keys: fhirKeys(res)}, nil
}

// fhirKeys picks the business keys of a resource: its medical record
// number when it has one. Values are hashed by the sync log.
func fhirKeys(res fhir.Resource) []logs.BusinessKey {
	ids, _ := res["identifier"].([]any)
	for _, x := range ids {
		id, _ := x.(map[string]any)
		typ, _ := id["type"].(map[string]any)
		codings, _ := typ["coding"].([]any)
		for _, c := range codings {
			cm, _ := c.(map[string]any)
			if cm["code"] == "MR" {
				if v, _ := id["value"].(string); v != "" {
					return []logs.BusinessKey{{Name: "mrn", Value: v}}
				}
			}
		}
	}
	return nil
}

// find locates the FHIR resource correlated with a CRM record: the cached
// link, the FHIR id the record holds in its correlation attribute, or a
// search by the identifier system that carries the CRM id.
func (s fhirSide) find(ctx context.Context, m *maps.Mapping, src record, cached *link) (record, error) {
	em := m.Def()
	var ids []string
	if cached != nil {
		ids = append(ids, cached.FHIRID)
	}
	// The CRM record holds the FHIR id in its correlation attribute.
	if st := crmState(&src); st != nil {
		if v, _ := st.Record[em.Correlation.CRMAttribute].(string); v != "" && (cached == nil || v != cached.FHIRID) {
			ids = append(ids, v)
		}
	}
	for _, id := range ids {
		r, err := s.read(ctx, m, id)
		if errors.Is(err, errGone) {
			continue
		}
		return r, err
	}
	if em.Correlation.FHIRIdentifierSystem != "" && src.ID != "" {
		r, err := s.search(ctx, em, em.Correlation.FHIRIdentifierSystem+"|"+src.ID)
		if !errors.Is(err, errGone) {
			return r, err
		}
	}
	// The same record created on both sides: the business key links them.
	if v := crmBusinessKey(em, &src); v != "" {
		return s.search(ctx, em, em.Correlation.BusinessKey.FHIRIdentifierSystem+"|"+v)
	}
	return record{}, errGone
}

// search finds the resource carrying identifier (system|value).
func (s fhirSide) search(ctx context.Context, em *maps.EntityMap, identifier string) (record, error) {
	page, err := s.api.Search(ctx, em.FHIRType, url.Values{"identifier": {identifier}})
	if err != nil {
		return record{}, classify(err)
	}
	for _, e := range page.Entries {
		if e.Resource != nil && (e.SearchMode == "" || e.SearchMode == "match") {
			res := e.Resource
			return record{Type: em.FHIRType, ID: res.ID(), Version: res.VersionID(), Data: res}, nil
		}
	}
	return record{}, errGone
}

// crmBusinessKey is the CRM record's business key value ("" when the map
// has none or the record holds none).
func crmBusinessKey(em *maps.EntityMap, src *record) string {
	bk := em.Correlation.BusinessKey
	st := crmState(src)
	if bk == nil || st == nil {
		return ""
	}
	v, _ := st.Record[bk.CRMAttribute].(string)
	return v
}

// conditionalCreator is a FHIR client that creates with If-None-Exist.
type conditionalCreator interface {
	CreateIfNoneExist(ctx context.Context, res fhir.Resource, criteria url.Values) (fhir.Resource, bool, error)
}

func (s fhirSide) write(ctx context.Context, m *maps.Mapping, src record, cur *record, out mapped) (written, error) {
	em := m.Def()
	res, ok := out.Data.(map[string]any)
	if !ok {
		return written{}, Permanent(fmt.Errorf("mapping produced %T, not a FHIR resource", out.Data))
	}
	var got fhir.Resource
	var err error
	created := cur == nil
	if cur != nil {
		got, err = s.api.Update(ctx, fhir.Resource(res), cur.Version)
	} else {
		delete(res, "id")
		cc, ok := s.api.(conditionalCreator)
		if v, has := m.BusinessKeyValue(res); has && ok {
			// Created on both sides at once: the server links by the
			// business key instead of creating a second resource.
			var made bool
			got, made, err = cc.CreateIfNoneExist(ctx, fhir.Resource(res), url.Values{"identifier": {em.Correlation.BusinessKey.FHIRIdentifierSystem + "|" + v}})
			if err == nil && !made {
				// Someone created it since the search: merge with it on
				// the next try, as with a lost race.
				return written{}, &endpointError{class: classConflict, status: 412, err: fmt.Errorf("%s with the same business key was created meanwhile", em.FHIRType)}
			}
		} else {
			got, err = s.api.Create(ctx, fhir.Resource(res))
		}
	}
	if err != nil {
		return written{}, classify(err)
	}
	var held string
	if st := crmState(&src); st != nil {
		held, _ = st.Record[em.Correlation.CRMAttribute].(string)
	}
	if held != got.ID() && em.Correlation.CRMAttribute != "" && src.ID != "" {
		// Store the new FHIR id (or that of a resource linked by business
		// key) on the CRM record so the pair is found by its alternate key
		// from now on, and remember that write as ours.
		landed := s.writes.flights.begin("crm", em.CRMEntity)
		defer landed()
		r, err := s.crm.Upsert(ctx, crm.ByID(em.CRMEntitySet, src.ID),
			crm.Record{em.Correlation.CRMAttribute: got.ID()}, crm.UpsertOptions{Mode: crm.UpdateOnly})
		if err != nil {
			return written{}, fmt.Errorf("storing the new FHIR id on %s %s: %w", em.CRMEntity, src.ID, classify(err))
		}
		_ = s.writes.remember(ctx, "crm", em.CRMEntity, src.ID, r.ETag)
	}
	return written{ID: got.ID(), Version: got.VersionID(), Created: created}, nil
}

// deactivate sets the resource's active element to false, with If-Match
// on the version read.
func (s fhirSide) deactivate(ctx context.Context, m *maps.Mapping, cur record) (written, error) {
	res, _ := path.DeepCopy(cur.Data).(map[string]any)
	if res == nil {
		return written{}, Permanent(fmt.Errorf("no resource to deactivate"))
	}
	if res["active"] == false {
		return written{ID: cur.ID}, nil
	}
	res["active"] = false
	got, err := s.api.Update(ctx, fhir.Resource(res), cur.Version)
	if err != nil {
		return written{}, classify(err)
	}
	return written{ID: got.ID(), Version: got.VersionID()}, nil
}

func (s fhirSide) remove(ctx context.Context, m *maps.Mapping, cur record) error {
	if err := s.api.Delete(ctx, m.Def().FHIRType, cur.ID); err != nil && !isMissing(err) {
		return classify(err)
	}
	return nil
}

// crmSide reads CRM records (with their expansion child rows) as a source
// and upserts them as a target.
type crmSide struct {
	api    crmAPI
	writes ownWrites
	// links and sharing tell, in a table several entity maps share
	// (patient-contact and practitioner-contact on contact), a row found
	// through the correlation column that is another map's record; nil
	// sharing: no map shares a table.
	links   links
	sharing func(crmEntity string) []*maps.EntityMap
}

func (s crmSide) read(ctx context.Context, m *maps.Mapping, id string) (record, error) {
	rec, err := s.api.Retrieve(ctx, crm.ByID(m.Def().CRMEntitySet, id), crmColumns(m)...)
	if isMissing(err) {
		return record{}, errGone
	}
	if err != nil {
		return record{}, classify(err)
	}
	return s.withChildren(ctx, m, id, rec)
}

// withChildren reads the record's expansion child rows as the mapping's
// child queries describe them.
func (s crmSide) withChildren(ctx context.Context, m *maps.Mapping, id string, rec crm.Record) (record, error) {
	em := m.Def()
	if id == "" {
		// Found by alternate key: the primary id comes from the record.
		id, _ = rec[em.IDAttribute()].(string)
		if id == "" {
			return record{}, &endpointError{class: classInvalid, err: fmt.Errorf("%s record has no %s", em.CRMEntity, em.IDAttribute())}
		}
	}
	state := maps.CRMState{Record: rec}
	for _, q := range m.ChildQueries() {
		if q.ParentLookup == "" {
			continue
		}
		rows, err := s.childRows(ctx, q, q.ParentIDs(&state, id))
		if err != nil {
			return record{}, classify(err)
		}
		if state.Children == nil {
			state.Children = map[string][]map[string]any{}
		}
		state.Children[q.Expansion] = rows
	}
	return record{Type: em.CRMEntity, ID: id, Version: rec.ETag(), Data: map[string]any{"state": state}}, nil
}

// maxChildReads bounds the reads of one nested expansion's rows in flight
// at once (one per parent row).
const maxChildReads = 16

// childRows reads q's rows under each of parents, in the parents' order.
// A nested expansion's rows are read under each row of its parent
// expansion, one query per parent row; the queries go at once, so a
// batching client (crm.Coalescer) answers them with one request.
func (s crmSide) childRows(ctx context.Context, q maps.ChildQuery, parents []string) ([]map[string]any, error) {
	read := func(pid string) ([]map[string]any, error) {
		var rows []map[string]any
		err := s.api.RetrieveMultiple(ctx, q.EntitySet, crm.Query{Select: q.Select, Filter: fmt.Sprintf("_%s_value eq %s", q.ParentLookup, pid)},
			func(r crm.Record) error { rows = append(rows, r); return nil })
		return rows, err
	}
	if len(parents) == 1 {
		return read(parents[0])
	}
	per := make([][]map[string]any, len(parents))
	errs := make([]error, len(parents))
	slots := make(chan struct{}, maxChildReads)
	var wg sync.WaitGroup
	for i, pid := range parents {
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer func() { <-slots; wg.Done() }()
			per[i], errs[i] = read(pid)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return slices.Concat(per...), nil
}

// crmColumns is the $select of the agent's reads of a record of m: the
// columns the mapping reads or compares (maps.Mapping.CRMSelect), and
// those the merge and loop prevention read — when and by whom the record
// was last modified, and its business key.
func crmColumns(m *maps.Mapping) []string { return m.CRMReadColumns() }

// crmState unwraps the state a crm record carries.
func crmState(r *record) *maps.CRMState {
	if r == nil {
		return nil
	}
	st, _ := r.Data["state"].(maps.CRMState)
	return &st
}

// crmParts is a CRM record as read in full: its attributes and its child
// rows by expansion map (never nil, so none read means none there).
func crmParts(r *record) (rec map[string]any, kids map[string][]map[string]any) {
	kids = map[string][]map[string]any{}
	if st := crmState(r); st != nil {
		rec = st.Record
		if st.Children != nil {
			kids = st.Children
		}
	}
	return rec, kids
}

// find locates the CRM record correlated with a FHIR resource: the cached
// link, else the alternate key holding the FHIR id.
func (s crmSide) find(ctx context.Context, m *maps.Mapping, src record, cached *link) (record, error) {
	em := m.Def()
	if cached != nil {
		r, err := s.read(ctx, m, cached.CRMID)
		if !errors.Is(err, errGone) {
			return r, err
		}
	}
	rec, err := s.api.Retrieve(ctx, crm.ByKey(em.CRMEntitySet, em.Correlation.CRMAttribute, src.ID), crmColumns(m)...)
	if isMissing(err) {
		// The same record created on both sides: the business key, an
		// alternate key of the entity, links them.
		v, has := m.BusinessKeyValue(src.Data)
		if !has {
			return record{}, errGone
		}
		rec, err = s.api.Retrieve(ctx, crm.ByKey(em.CRMEntitySet, em.Correlation.BusinessKey.CRMAttribute, v), crmColumns(m)...)
		if isMissing(err) {
			return record{}, errGone
		}
	}
	if err != nil {
		return record{}, classify(err)
	}
	if err := ownRow(ctx, s.links, s.sharing, em, rec); err != nil {
		return record{}, err
	}
	return s.withChildren(ctx, m, "", rec)
}

// ownRow checks that a row of em's table found through the correlation
// column (or the business key), not through em's link, is em's. FHIR ids
// are unique within a resource type only
// (https://hl7.org/fhir/R4/resource.html#id), so when entity maps of two
// types share a table and its correlation column, Patient/123 and
// Practitioner/123 both look for the value 123. A row linked under a map
// of another type, or one em's CRM filter excludes, is not em's: a
// *sharedRowError. A second row cannot be created beside it, as the agent
// creates rows by the correlation column's alternate key (one row per
// value). rec must hold em's filter column.
func ownRow(ctx context.Context, lk links, sharing func(string) []*maps.EntityMap, em *maps.EntityMap, rec crm.Record) error {
	var owner *maps.EntityMap
	if id, _ := rec[em.IDAttribute()].(string); id != "" {
		o, err := linkedElsewhere(ctx, lk, sharing, em, id)
		if err != nil {
			return err
		}
		owner = o
	}
	if owner == nil && (em.CRMFilter.Admits(rec) || unclassified(em.CRMFilter, rec)) {
		return nil
	}
	e := &sharedRowError{entityMap: em.Name, fhirType: em.FHIRType, crmEntity: em.CRMEntity, column: em.Correlation.CRMAttribute}
	if owner == nil {
		e.filter = em.CRMFilter.Name
		// Name the map of another type whose filter admits the row, when
		// the row holds that filter's column.
		for _, m := range othersOfTable(sharing, em) {
			if f := m.CRMFilter; f != nil {
				if _, read := rec[f.Attribute]; read && f.Admits(rec) {
					owner = m
					break
				}
			}
		}
	}
	if owner != nil {
		e.ownerMap, e.ownerType = owner.Name, owner.FHIRType
	}
	return e
}

// unclassified reports that rec holds no value in f's column: a row
// nobody has given a type (a contact without msemr_contacttype, made
// before fhirsync or by hand) is not another record's by its filter, and
// is taken as it was before the check, as the record's own row. A row
// whose column holds a value f refuses (a Patient's contact, for a
// Practitioner) is refused.
func unclassified(f *maps.CRMFilter, rec crm.Record) bool {
	if f == nil {
		return false
	}
	v, has := rec[f.Attribute]
	return !has || v == nil || v == ""
}

// othersOfTable is the entity maps of another resource type than em's
// that share em's table.
func othersOfTable(sharing func(string) []*maps.EntityMap, em *maps.EntityMap) []*maps.EntityMap {
	if sharing == nil {
		return nil
	}
	var out []*maps.EntityMap
	for _, m := range sharing(em.CRMEntity) {
		if m.Name != em.Name && m.FHIRType != em.FHIRType {
			out = append(out, m)
		}
	}
	return out
}

// sharedRowError is a CRM row found through the correlation column that
// is another record's (see ownRow). Its text names the
// entity maps, the resource types, the table, the column and the filter,
// never an id or a value: it reaches the sync log and the process log.
type sharedRowError struct {
	entityMap, fhirType string // the map syncing the record, and its type
	crmEntity, column   string // the table and its correlation column
	// ownerMap and ownerType name the map of another type the row is
	// linked under, or whose filter admits it ("" when unknown).
	ownerMap, ownerType string
	// filter names em's CRM filter when it excludes the row.
	filter string
}

func (e *sharedRowError) Error() string {
	return e.whose() + "; entity map " + e.entityMap + " does not write it"
}

// whose says whose the row is, for decision messages.
func (e *sharedRowError) whose() string {
	row := fmt.Sprintf("the %s row whose %s holds this %s's id", e.crmEntity, e.column, e.fhirType)
	switch {
	case e.ownerMap != "" && e.filter != "":
		return fmt.Sprintf("%s is a %s's (entity map %s), excluded by filter %s", row, e.ownerType, e.ownerMap, e.filter)
	case e.ownerMap != "":
		return fmt.Sprintf("%s is a %s's (entity map %s)", row, e.ownerType, e.ownerMap)
	}
	return fmt.Sprintf("%s is excluded by filter %s", row, e.filter)
}

func (s crmSide) write(ctx context.Context, m *maps.Mapping, src record, cur *record, out mapped) (written, error) {
	em := m.Def()
	res, ok := out.Data.(*maps.CRMResult)
	if !ok {
		return written{}, Permanent(fmt.Errorf("mapping produced %T, not a CRM record", out.Data))
	}
	opts := crm.UpsertOptions{Mode: crm.CreateOnly}
	target := crm.ByKey(em.CRMEntitySet, em.Correlation.CRMAttribute, src.ID)
	if cur != nil {
		opts = crm.UpsertOptions{Mode: crm.UpdateOnly, IfMatch: cur.Version}
		target = crm.ByID(em.CRMEntitySet, cur.ID)
	}
	rec := crm.Record(res.Record)
	if cur == nil {
		// The alternate key is in the URL; Dataverse refuses it in the body
		// as well only when the values differ, so keep them equal.
		rec[em.Correlation.CRMAttribute] = src.ID
	}
	if cs, ok := s.api.(changeSets); ok {
		parentRef := "$1"
		if cur != nil {
			parentRef = crm.Bind(em.CRMEntitySet, cur.ID)
		}
		return s.writeChangeSet(ctx, cs, em, target, rec, opts, parentRef, res.Children)
	}
	r, err := s.api.Upsert(ctx, target, rec, opts)
	if err != nil {
		return written{}, classify(err)
	}
	if err := s.writeChildren(ctx, em, r.ID, res.Children); err != nil {
		return written{}, err
	}
	return written{ID: r.ID, Version: r.ETag, Created: r.Created}, nil
}

// changeSets is a CRM client that applies one record's writes as one
// atomic change set of a $batch (crm.Coalescer).
type changeSets interface {
	Apply(ctx context.Context, ops []crm.Op) ([]crm.OpResult, error)
}

// writeChangeSet writes the record and its child row changes as one
// change set: all of them or none, so a failed child row leaves the record
// as it was and the next attempt's diff is the same. Child rows created
// with a new record bind to it by its Content-ID ($1); those of an
// existing record by its id. A nested expansion's row whose parent row is
// created in the same change set binds to that create's Content-ID ($n):
// "reference URIs in an operation" of any earlier request of the change
// set, https://learn.microsoft.com/power-apps/developer/data-platform/webapi/execute-batch-operations-using-web-api. The written version is the record's own
// ETag, as the upsert answered it.
func (s crmSide) writeChangeSet(ctx context.Context, cs changeSets, em *maps.EntityMap, target crm.Target, rec crm.Record,
	opts crm.UpsertOptions, parentRef string, changes []maps.ChildChange) (written, error) {
	parent, err := crm.UpsertOp(nil, target, rec, opts)
	if err != nil {
		return written{}, Permanent(err)
	}
	dropped := make([]bool, len(changes))
	for {
		ops := []crm.Op{parent}
		// opAt is each change's 1-based place among ops (its Content-ID),
		// changeAt each op's change: a row nested under a row created in
		// the same change set binds to that create as "$<Content-ID>".
		opAt, changeAt := make([]int, len(changes)), []int{-1}
		for i, c := range changes {
			if dropped[i] {
				continue
			}
			ref := parentRef
			if c.Parent > 0 {
				ref = "$" + strconv.Itoa(opAt[c.Parent-1])
			}
			op, err := childOp(c, ref)
			if err != nil {
				return written{}, fmt.Errorf("writing %s row of %s: %w", c.Op, c.Expansion, err)
			}
			ops = append(ops, op)
			opAt[i], changeAt = len(ops), append(changeAt, i)
		}
		results, err := cs.Apply(ctx, ops)
		if err != nil {
			return written{}, classify(err)
		}
		at, ferr := failedOp(results)
		if ferr == nil {
			r, err := crm.UpsertResultOf(target, results[0])
			if err != nil {
				return written{}, classify(err)
			}
			return written{ID: r.ID, Version: r.ETag, Created: r.Created}, nil
		}
		if at == 0 {
			return written{}, classify(ferr)
		}
		c := changes[changeAt[at]]
		if c.Op == maps.ChildDelete && isMissing(ferr) {
			// Already gone: the change set goes again without it.
			dropped[changeAt[at]] = true
			continue
		}
		return written{}, fmt.Errorf("writing %s row of %s: %w", c.Op, c.Expansion, classify(ferr))
	}
}

// failedOp finds the op that failed a change set: the one whose own
// answer was an error (the others carry a rolled-back copy of it).
func failedOp(results []crm.OpResult) (int, error) {
	for i, r := range results {
		if r.Err != nil && !r.Err.RolledBack {
			return i, r.Err
		}
	}
	for _, r := range results {
		if r.Err != nil {
			return 0, r.Err
		}
	}
	return -1, nil
}

// childOp is one child row change as a request of a change set. A new
// row binds to parentRef unless its record names its parent row already
// (a nested row under an existing row).
func childOp(c maps.ChildChange, parentRef string) (crm.Op, error) {
	rec := crm.Record(c.Record)
	switch c.Op {
	case maps.ChildCreate:
		if rec == nil {
			rec = crm.Record{}
		}
		if bind := c.ParentNavigation + "@odata.bind"; c.ParentNavigation != "" && (c.Parent > 0 || rec[bind] == nil) {
			rec[bind] = parentRef
		}
		op, err := crm.CreateOp(c.EntitySet, rec)
		return op, err
	case maps.ChildUpdate:
		return crm.UpsertOp(nil, crm.ByID(c.EntitySet, c.ID), rec, crm.UpsertOptions{Mode: crm.UpdateOnly})
	case maps.ChildDeactivate:
		return crm.UpsertOp(nil, crm.ByID(c.EntitySet, c.ID), crm.Record{"statecode": 1, "statuscode": 2}, crm.UpsertOptions{Mode: crm.UpdateOnly})
	case maps.ChildDelete:
		return crm.DeleteOp(crm.ByID(c.EntitySet, c.ID), ""), nil
	}
	return crm.Op{}, Permanent(fmt.Errorf("unknown child operation %q", c.Op))
}

// writeChildren applies expansion-map row changes. Each is idempotent on
// retry: creates are found again by their match key on the next attempt's
// diff, so a crash between rows never duplicates one.
func (s crmSide) writeChildren(ctx context.Context, em *maps.EntityMap, parentID string, changes []maps.ChildChange) error {
	created := make([]string, len(changes))
	for i, c := range changes {
		rec := crm.Record(c.Record)
		var err error
		switch c.Op {
		case maps.ChildCreate:
			if rec == nil {
				rec = crm.Record{}
			}
			ref := "/" + em.CRMEntitySet + "(" + parentID + ")"
			if c.Parent > 0 {
				// A row nested under a row created just before.
				ref = "/" + changes[c.Parent-1].EntitySet + "(" + created[c.Parent-1] + ")"
			}
			if bind := c.ParentNavigation + "@odata.bind"; c.ParentNavigation != "" && (c.Parent > 0 || rec[bind] == nil) {
				rec[bind] = ref
			}
			created[i], err = s.api.Create(ctx, c.EntitySet, rec)
		case maps.ChildUpdate:
			_, err = s.api.Upsert(ctx, crm.ByID(c.EntitySet, c.ID), rec, crm.UpsertOptions{Mode: crm.UpdateOnly})
		case maps.ChildDeactivate:
			_, err = s.api.Upsert(ctx, crm.ByID(c.EntitySet, c.ID), crm.Record{"statecode": 1, "statuscode": 2}, crm.UpsertOptions{Mode: crm.UpdateOnly})
		case maps.ChildDelete:
			err = s.api.Delete(ctx, crm.ByID(c.EntitySet, c.ID), "")
			if isMissing(err) {
				err = nil
			}
		default:
			err = Permanent(fmt.Errorf("unknown child operation %q", c.Op))
		}
		if err != nil {
			return fmt.Errorf("writing %s row of %s: %w", c.Op, c.Expansion, classify(err))
		}
	}
	return nil
}

// deactivate sets the record's state to inactive (statecode 1, statuscode
// 2), with If-Match on the ETag read.
func (s crmSide) deactivate(ctx context.Context, m *maps.Mapping, cur record) (written, error) {
	r, err := s.api.Upsert(ctx, crm.ByID(m.Def().CRMEntitySet, cur.ID), crm.Record{"statecode": 1, "statuscode": 2},
		crm.UpsertOptions{Mode: crm.UpdateOnly, IfMatch: cur.Version})
	if err != nil {
		return written{}, classify(err)
	}
	return written{ID: r.ID, Version: r.ETag}, nil
}

func (s crmSide) remove(ctx context.Context, m *maps.Mapping, cur record) error {
	if err := s.api.Delete(ctx, crm.ByID(m.Def().CRMEntitySet, cur.ID), ""); err != nil && !isMissing(err) {
		return classify(err)
	}
	return nil
}

// resolver answers the engine's lookups from memory (lookups), the link
// cache, or the CRM's alternate key. It honours the reference's type: a
// reference to another resource type than the entity map syncs is refused
// with a *maps.ReferenceTypeError (a mapping error naming the types), never
// looked up among that map's records; so is, on write-back, a CRM row
// linked under an entity map of another type that shares the table.
type resolver struct {
	links links
	crm   crmAPI
	maps  func(name string) (*maps.EntityMap, bool)
	// sharing lists the entity maps of a CRM entity (nil: none known).
	sharing func(crmEntity string) []*maps.EntityMap
	lookups *lookupCache
}

func (r resolver) CRMID(ctx context.Context, entityMap, fhirRef string) (string, bool, error) {
	typ, id := maps.SplitReference(fhirRef)
	em, known := r.maps(entityMap)
	if known && typ != "" && typ != em.FHIRType {
		return "", false, &maps.ReferenceTypeError{Got: typ, Want: []string{em.FHIRType}, EntityMap: entityMap}
	}
	if known {
		if v, ok := r.lookups.get(lookupKey("fhir", em.FHIRType, id)); ok {
			return v, true, nil
		}
	}
	if l, err := r.links.byFHIR(ctx, entityMap, id); err == nil {
		if known {
			r.lookups.put(em, id, l.CRMID)
		}
		return l.CRMID, true, nil
	}
	if !known {
		return "", false, nil
	}
	sel := []string{em.IDAttribute()}
	if f := em.CRMFilter; f != nil {
		sel = append(sel, f.Attribute)
	}
	rec, err := r.crm.Retrieve(ctx, crm.ByKey(em.CRMEntitySet, em.Correlation.CRMAttribute, id), sel...)
	if isMissing(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, classify(err)
	}
	// The row holding the id may be another type's record (a Patient's
	// contact for a Practitioner's id): the lookup must not point at it.
	if err := ownRow(ctx, r.links, r.sharing, em, rec); err != nil {
		return "", false, err
	}
	crmID, _ := rec[em.IDAttribute()].(string)
	if crmID != "" {
		r.lookups.put(em, id, crmID)
	}
	return crmID, crmID != "", nil
}

func (r resolver) FHIRRef(ctx context.Context, entityMap, crmID string) (string, bool, error) {
	em, ok := r.maps(entityMap)
	if !ok {
		return "", false, nil
	}
	if v, ok := r.lookups.fhirOf(em, crmID); ok {
		return em.FHIRType + "/" + v, true, nil
	}
	if l, err := r.links.byCRM(ctx, entityMap, crmID); err == nil {
		r.lookups.put(em, l.FHIRID, crmID)
		return em.FHIRType + "/" + l.FHIRID, true, nil
	}
	// Two entity maps may share a table and its correlation column
	// (patient-contact and practitioner-contact): a row linked under a map
	// of another type is that type's record, and its correlation column
	// holds that resource's id. Only a row linked under no map falls back
	// to the column.
	other, err := linkedElsewhere(ctx, r.links, r.sharing, em, crmID)
	if err != nil {
		return "", false, err
	}
	if other != nil {
		return "", false, &maps.ReferenceTypeError{Got: other.FHIRType, Want: []string{em.FHIRType}, EntityMap: entityMap}
	}
	rec, err := r.crm.Retrieve(ctx, crm.ByID(em.CRMEntitySet, crmID), em.Correlation.CRMAttribute)
	if isMissing(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, classify(err)
	}
	fid, _ := rec[em.Correlation.CRMAttribute].(string)
	if fid == "" {
		return "", false, nil
	}
	r.lookups.put(em, fid, crmID)
	return em.FHIRType + "/" + fid, true, nil
}

// linkedElsewhere returns the entity map, among sharing's maps of another
// resource type than em's, under which CRM row crmID of em's table is
// linked; nil when there is none.
func linkedElsewhere(ctx context.Context, lk links, sharing func(string) []*maps.EntityMap, em *maps.EntityMap, crmID string) (*maps.EntityMap, error) {
	for _, m := range othersOfTable(sharing, em) {
		_, err := lk.byCRM(ctx, m.Name, crmID)
		if err == nil {
			return m, nil
		}
		if !errors.Is(err, errNoLink) {
			return nil, fmt.Errorf("reading the links of a %s row: %w", em.CRMEntity, err)
		}
	}
	return nil, nil
}

// lookupCacheSize and lookupCacheTTL bound the lookup cache: a process
// that missed a change notice (another replica took it) forgets within
// the TTL.
const (
	lookupCacheSize = 50_000
	lookupCacheTTL  = 10 * time.Minute
)

// lookupCache remembers resolved references — a FHIR resource's CRM row id
// and a CRM row's FHIR id — so that the lookups of many records cost no
// read each. A pair is forgotten when a change notice names either record
// (forget), after lookupCacheTTL, or, when full, oldest first. Misses are
// not remembered: a reference to a record not yet synced is asked again.
type lookupCache struct {
	mu    sync.Mutex
	byKey map[string]*lookupPair
	order []*lookupPair // insertion order, for eviction
	now   func() time.Time
}

// lookupPair is one resolved reference, under the keys of both records.
type lookupPair struct {
	fhirKey, crmKey string
	fhirID, crmID   string
	at              time.Time
	gone            bool
}

func newLookupCache() *lookupCache {
	return &lookupCache{byKey: map[string]*lookupPair{}, now: time.Now}
}

// lookupKey names a record: its side, its type (FHIR resource type or CRM
// entity logical name) and its id, as change notices carry them.
func lookupKey(side, typ, id string) string { return side + "|" + typ + "|" + id }

// get returns the other side's id of the record key names.
func (c *lookupCache) get(key string) (string, bool) {
	if c == nil {
		return "", false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.byKey[key]
	if p == nil {
		return "", false
	}
	if c.now().Sub(p.at) > lookupCacheTTL {
		c.drop(p)
		return "", false
	}
	if key == p.fhirKey {
		return p.crmID, true
	}
	return p.fhirID, true
}

// fhirOf returns the FHIR id paired with the CRM row crmID of em's table
// when the pair is of em's resource type: a row of a table two entity
// maps share, paired with a Patient, is no Practitioner.
func (c *lookupCache) fhirOf(em *maps.EntityMap, crmID string) (string, bool) {
	if c == nil {
		return "", false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.byKey[lookupKey("crm", em.CRMEntity, strings.ToLower(crmID))]
	if p == nil {
		return "", false
	}
	if c.now().Sub(p.at) > lookupCacheTTL {
		c.drop(p)
		return "", false
	}
	if p.fhirKey != lookupKey("fhir", em.FHIRType, p.fhirID) {
		return "", false
	}
	return p.fhirID, true
}

func (c *lookupCache) put(em *maps.EntityMap, fhirID, crmID string) {
	if c == nil || fhirID == "" || crmID == "" {
		return
	}
	p := &lookupPair{fhirKey: lookupKey("fhir", em.FHIRType, fhirID), crmKey: lookupKey("crm", em.CRMEntity, strings.ToLower(crmID)),
		fhirID: fhirID, crmID: crmID}
	c.mu.Lock()
	defer c.mu.Unlock()
	p.at = c.now()
	for _, k := range []string{p.fhirKey, p.crmKey} {
		if old := c.byKey[k]; old != nil {
			c.drop(old)
		}
	}
	c.byKey[p.fhirKey], c.byKey[p.crmKey] = p, p
	c.order = append(c.order, p)
	for len(c.byKey) > 2*lookupCacheSize && len(c.order) > 0 {
		c.drop(c.order[0])
		c.order = c.order[1:]
	}
	if len(c.order) > 4*lookupCacheSize {
		// Compact the dropped pairs out of the eviction order.
		live := c.order[:0]
		for _, q := range c.order {
			if !q.gone {
				live = append(live, q)
			}
		}
		c.order = live
	}
}

// forget drops the pair a record takes part in: a change notice names it
// (it may have been deleted, re-created or re-linked).
func (c *lookupCache) forget(side, typ, id string) {
	if c == nil {
		return
	}
	if side == "crm" {
		id = strings.ToLower(id)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.byKey[lookupKey(side, typ, id)]; p != nil {
		c.drop(p)
	}
}

func (c *lookupCache) drop(p *lookupPair) {
	if c.byKey[p.fhirKey] == p {
		delete(c.byKey, p.fhirKey)
	}
	if c.byKey[p.crmKey] == p {
		delete(c.byKey, p.crmKey)
	}
	p.gone = true
}
