package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
)

// FHIRReader reads one FHIR resource by type and id, for previewing a live
// record and for reading a CRM record's FHIR counterpart. It must not
// write. A resource the server does not have is an error matching
// fhir.ErrNotFound. *fhir.Client is one.
type FHIRReader interface {
	Read(ctx context.Context, typ, id string) (fhir.Resource, error)
}

// CRMRecordReader reads one CRM record by primary key or alternate key,
// for previewing a live record and for reading a FHIR resource's CRM
// counterpart. It must not write. A record the CRM does not have is an
// error matching crm.ErrNotFound. *crm.Client is one.
type CRMRecordReader interface {
	Retrieve(ctx context.Context, t crm.Target, sel ...string) (crm.Record, error)
	// RetrieveMultiple reads the rows of set that q selects, page by
	// page (an expansion map's child rows).
	RetrieveMultiple(ctx context.Context, set string, q crm.Query, fn func(crm.Record) error) error
}

// Audit actions of the preview: a live record's content is patient data,
// so each read of one is recorded, like a view of a payload capture.
const (
	auditPreviewLiveRead = "preview.live_read"
)

// Where a preview's record comes from.
const (
	sourcePaste    = "paste"
	sourceFHIR     = "fhir"     // read live from the FHIR server by id
	sourceCRM      = "crm"      // read live from the CRM by id
	sourceDecision = "decision" // a logged decision's captured payload
)

// previewData is the preview page: the form on one side, the result
// beside it.
type previewData struct {
	Info    maps.VersionInfo
	Maps    []mapRow
	PHI     bool
	Form    previewForm
	Preview *previewView
	Error   string
	// LiveFHIR and LiveCRM say which endpoints the app can read records
	// from.
	LiveFHIR, LiveCRM bool
}

// previewForm is what the preview form holds.
type previewForm struct {
	Map       string `json:"map"`
	Direction string `json:"direction"`
	Input     string `json:"input"`
	Current   string `json:"current"`
	// Source is paste, fhir, crm or decision; empty means decision when
	// DecisionID is set, else paste.
	Source     string `json:"source,omitempty"`
	RecordID   string `json:"record_id,omitempty"` // with source fhir or crm
	DecisionID int64  `json:"decision_id,omitempty"`
}

// normalized is f with the direction a live source implies: a record read
// from the FHIR server goes to the CRM, one read from the CRM to FHIR.
func (f previewForm) normalized() previewForm {
	switch f.source() {
	case sourceFHIR:
		f.Direction = string(maps.FHIRToCRM)
	case sourceCRM:
		f.Direction = string(maps.CRMToFHIR)
	}
	return f
}

// source is the form's source with its default filled in.
func (f previewForm) source() string {
	switch {
	case f.Source != "":
		return f.Source
	case f.DecisionID != 0:
		return sourceDecision
	}
	return sourcePaste
}

// previewView is a preview's result for people and for the API.
type previewView struct {
	Map          string   `json:"map"`
	Decision     string   `json:"decision"`
	Outcome      string   `json:"outcome,omitempty"`
	Reason       string   `json:"reason,omitempty"`
	Meaning      string   `json:"meaning,omitempty"`
	Filter       string   `json:"filter,omitempty"`
	Attribute    string   `json:"attribute,omitempty"`
	MappingError string   `json:"mapping_error,omitempty"`
	InputError   string   `json:"input_error,omitempty"`
	Output       string   `json:"output,omitempty"`
	Changed      []string `json:"changed"`
	// Diff shows each changed CRM attribute's current and mapped value
	// (FHIR → CRM with a current state only).
	Diff   []fieldChange `json:"diff,omitempty"`
	Source string        `json:"source,omitempty"` // "pasted record", "captured payload of decision N", …
	// Record is the record mapped when it was read live or from a
	// capture, so the page can show it beside the result.
	Record string `json:"record,omitempty"`
	// Current says where the target's current state came from, or why
	// there is none.
	Current string `json:"current,omitempty"`
}

// fieldChange is one changed target field, values as JSON text.
type fieldChange struct {
	Field  string `json:"field"`
	Before string `json:"before"`
	After  string `json:"after"`
}

// recordDiff pairs the changed CRM attributes' values in the current
// state and in the mapped output.
func recordDiff(current, output []byte, changed []string) []fieldChange {
	var cur, out struct {
		Record map[string]json.RawMessage `json:"record"`
	}
	if json.Unmarshal(current, &cur) != nil || json.Unmarshal(output, &out) != nil {
		return nil
	}
	show := func(v json.RawMessage, ok bool) string {
		if !ok {
			return "(absent)"
		}
		return string(v)
	}
	var diff []fieldChange
	for _, f := range changed {
		before, inCur := cur.Record[f]
		after, inOut := out.Record[f]
		if !inCur && !inOut {
			continue // an expansion map's name, not an attribute
		}
		diff = append(diff, fieldChange{Field: f, Before: show(before, inCur), After: show(after, inOut)})
	}
	return diff
}

// previewError is a preview request that cannot run; status says why.
type previewError struct {
	status int
	msg    string
}

func (e *previewError) Error() string { return e.msg }

// runPreview maps one pasted, live or logged record with entity map f.Map
// of version n using the one sample runner, against the target's current
// state: pasted, or read live from the target (read-only), or captured
// with the decision.
func (a *app) runPreview(r *http.Request, n int, f previewForm) (*previewView, error) {
	doc, _, err := a.data.maps.Version(r.Context(), n)
	if errors.Is(err, maps.ErrNotFound) {
		return nil, &previewError{http.StatusNotFound, "No such map version."}
	}
	if err != nil {
		return nil, err
	}
	set, err := maps.Compile(doc, maps.CompileOptions{})
	if err != nil {
		return nil, &previewError{http.StatusUnprocessableEntity, "This version does not validate; fix it before previewing."}
	}
	m, ok := set.Map(f.Map)
	if !ok {
		return nil, &previewError{http.StatusNotFound, "No such entity map in this version."}
	}
	u, _ := currentUser(r)
	f = f.normalized()
	src := f.source()
	switch src {
	case sourcePaste, sourceDecision, sourceFHIR, sourceCRM:
	default:
		return nil, &previewError{http.StatusBadRequest, "Choose where the record comes from: paste, fhir, crm or decision."}
	}
	dir := maps.Direction(f.Direction)
	if dir != maps.FHIRToCRM && dir != maps.CRMToFHIR {
		return nil, &previewError{http.StatusBadRequest, "Choose a direction: fhir-to-crm or crm-to-fhir."}
	}
	in := maps.PreviewInput{Direction: dir, Input: []byte(f.Input)}
	v := &previewView{Source: "pasted record"}
	var captured []byte // the target state captured with a decision
	switch src {
	case sourceDecision:
		if f.DecisionID <= 0 {
			return nil, &previewError{http.StatusBadRequest, "Enter the id of a logged decision."}
		}
		if !u.can(permPHI) {
			return nil, &previewError{http.StatusForbidden, "Previewing a logged record shows its payload, which needs the PHI permission; paste a record instead."}
		}
		c, err := a.data.logs.ReadCapture(r.Context(), principal{u}, f.DecisionID)
		switch {
		case errors.Is(err, logs.ErrNotFound):
			return nil, &previewError{http.StatusNotFound, fmt.Sprintf("Decision %d has no captured payload (capture is off, or it has expired).", f.DecisionID)}
		case errors.Is(err, logs.ErrUnknownKey), errors.Is(err, logs.ErrWrongKey), errors.Is(err, logs.ErrTampered):
			return nil, &previewError{http.StatusConflict, "The captured payload cannot be opened: " + err.Error() + "."}
		case err != nil:
			return nil, err
		}
		in.Input, captured = c.Snapshots.Source, c.Snapshots.Target
		v.Source = fmt.Sprintf("captured payload of decision %d", f.DecisionID)
	case sourceFHIR, sourceCRM:
		rec, what, err := a.readLiveRecord(r, m, src, strings.TrimSpace(f.RecordID))
		if err != nil {
			return nil, err
		}
		in.Input, v.Source = rec, what
	default:
		if strings.TrimSpace(f.Input) == "" {
			return nil, &previewError{http.StatusBadRequest, "Paste a FHIR resource or a CRM record to preview."}
		}
	}
	if dir == maps.CRMToFHIR {
		in.Input = asCRMState(in.Input)
	}
	if src != sourcePaste {
		v.Record = indentJSON(in.Input)
	}

	// The target's current state: pasted, else read live, else captured.
	current := []byte(strings.TrimSpace(f.Current))
	switch {
	case len(current) > 0:
		v.Current = "pasted"
	default:
		current, v.Current, err = a.readLiveTarget(r, m, dir, in.Input)
		if err != nil {
			return nil, err
		}
		if current == nil && len(captured) > 0 {
			current = captured
			v.Current = "captured with the decision"
		}
	}
	if dir == maps.FHIRToCRM {
		if len(current) > 0 {
			in.Current = asCRMState(current)
		}
	} else {
		in.Base = current
	}

	if a.data.crmRecords != nil {
		in.Lookups = previewLookups{set: set, crm: a.data.crmRecords, MemoryConcepts: maps.NewMemoryConcepts()}
	}
	res := maps.Preview(r.Context(), m, in)
	v.Map, v.Decision, v.Filter, v.Attribute = res.Map, res.Decision, res.Filter, res.Attribute
	v.MappingError, v.Changed = res.MappingError, res.Changed
	if v.Changed == nil {
		v.Changed = []string{}
	}
	if res.ParseError != nil {
		v.InputError = res.ParseError.Error()
	}
	if res.EvalError != nil {
		v.InputError = "The engine failed: " + res.EvalError.Error()
	}
	if len(res.Output) > 0 {
		if dir == maps.FHIRToCRM && len(bytes.TrimSpace(in.Current)) > 0 {
			v.Diff = recordDiff(in.Current, res.Output, res.Changed)
		}
		if dir == maps.CRMToFHIR && len(bytes.TrimSpace(in.Base)) > 0 {
			v.Diff = resourceDiff(in.Base, res.Output)
		}
		v.Output = indentJSON(res.Output)
	}
	outcome, reason := previewDecision(res.Decision, len(bytes.TrimSpace(in.Current)) > 0 || len(bytes.TrimSpace(in.Base)) > 0)
	v.Outcome, v.Reason = string(outcome), string(reason)
	if rs, ok := logs.LookupReason(reason); ok {
		v.Meaning = rs.Meaning
	}
	return v, nil
}

// indentJSON is b indented for reading, or b as it is when it is not JSON.
func indentJSON(b []byte) string {
	var buf bytes.Buffer
	if json.Indent(&buf, b, "", "  ") == nil {
		return buf.String()
	}
	return string(b)
}

// fhirIDPattern is the FHIR R4 id type
// (https://hl7.org/fhir/R4/datatypes.html#id); crmIDPattern a GUID, the
// form of a Dataverse primary key.
var (
	fhirIDPattern = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)
	crmIDPattern  = regexp.MustCompile(`^[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}$`)
)

// readLiveRecord reads record id of em's FHIR type (src fhir) or CRM
// entity (src crm) from the endpoint, read-only, for a user with the PHI
// permission, and records the read in the audit trail. It returns the
// record as JSON and a sentence naming it.
func (a *app) readLiveRecord(r *http.Request, m *maps.Mapping, src, id string) ([]byte, string, error) {
	em := m.Def()
	u, _ := currentUser(r)
	if !u.can(permPHI) {
		return nil, "", &previewError{http.StatusForbidden, "A live record is patient data: reading one needs the PHI permission; paste a record instead."}
	}
	if src == sourceFHIR {
		if a.data.fhir == nil {
			return nil, "", &previewError{http.StatusConflict, "No FHIR server is configured (fhir.base_url), so no live record can be read; paste a FHIR resource instead."}
		}
		if !fhirIDPattern.MatchString(id) {
			return nil, "", &previewError{http.StatusBadRequest, "Enter the id of a " + em.FHIRType + " resource (letters, digits, '-' and '.', at most 64)."}
		}
		ref := em.FHIRType + "/" + id
		if err := a.auditLiveRead(r, "fhir_resource", ref); err != nil {
			return nil, "", err
		}
		res, err := a.data.fhir.Read(r.Context(), em.FHIRType, id)
		if errors.Is(err, fhir.ErrNotFound) {
			return nil, "", &previewError{http.StatusNotFound, "The FHIR server has no " + ref + "."}
		}
		if err != nil {
			return nil, "", &previewError{http.StatusBadGateway, "Reading " + ref + " from the FHIR server failed: " + err.Error()}
		}
		b, err := json.Marshal(res)
		if err != nil {
			return nil, "", err
		}
		return b, ref + ", read live from the FHIR server", nil
	}
	if a.data.crmRecords == nil {
		return nil, "", &previewError{http.StatusConflict, "No CRM is configured (crm.base_url), so no live record can be read; paste a CRM record instead."}
	}
	if !crmIDPattern.MatchString(id) {
		return nil, "", &previewError{http.StatusBadRequest, "Enter the id (a GUID) of a " + em.CRMEntity + " record."}
	}
	ref := em.CRMEntitySet + "(" + id + ")"
	if err := a.auditLiveRead(r, "crm_record", ref); err != nil {
		return nil, "", err
	}
	rec, err := a.data.crmRecords.Retrieve(r.Context(), crm.ByID(em.CRMEntitySet, id), m.CRMSelect()...)
	if errors.Is(err, crm.ErrNotFound) {
		return nil, "", &previewError{http.StatusNotFound, "The CRM has no " + em.CRMEntity + " record " + id + "."}
	}
	if err != nil {
		return nil, "", &previewError{http.StatusBadGateway, "Reading " + ref + " from the CRM failed: " + err.Error()}
	}
	b, err := a.crmState(r.Context(), m, rec)
	if err != nil {
		return nil, "", &previewError{http.StatusBadGateway, "Reading the child rows of " + ref + " from the CRM failed: " + err.Error()}
	}
	return b, ref + ", read live from the CRM", nil
}

// readLiveTarget reads the target's current state of the record input
// (a FHIR resource for fhir-to-crm, a CRM state for crm-to-fhir) the way
// the agent pairs them, through the correlation attribute, read-only. It
// returns nil and the reason when there is none or it cannot be read: the
// preview then maps as for a new record and says so.
func (a *app) readLiveTarget(r *http.Request, m *maps.Mapping, dir maps.Direction, input []byte) ([]byte, string, error) {
	em := m.Def()
	attr := em.Correlation.CRMAttribute
	u, _ := currentUser(r)
	if dir == maps.FHIRToCRM {
		var res struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(input, &res)
		switch {
		case a.data.crmRecords == nil:
			return nil, "not read: no CRM is configured; paste it to see the changes", nil
		case !u.can(permPHI):
			return nil, "not read: the CRM record is patient data, which needs the PHI permission; paste it to see the changes", nil
		case attr == "" || res.ID == "":
			return nil, "not read: the resource has no id, or the entity map no correlation attribute, to find its CRM record by", nil
		}
		ref := fmt.Sprintf("%s(%s='%s')", em.CRMEntitySet, attr, res.ID)
		if err := a.auditLiveRead(r, "crm_record", ref); err != nil {
			return nil, "", err
		}
		rec, err := a.data.crmRecords.Retrieve(r.Context(), crm.ByKey(em.CRMEntitySet, attr, res.ID), m.CRMSelect()...)
		if errors.Is(err, crm.ErrNotFound) {
			return nil, "read live from the CRM: no " + em.CRMEntity + " has " + attr + " = " + res.ID + ", so the agent would create one", nil
		}
		if err != nil {
			return nil, "", &previewError{http.StatusBadGateway, "Reading the target " + ref + " from the CRM failed: " + err.Error()}
		}
		b, err := a.crmState(r.Context(), m, rec)
		if err != nil {
			return nil, "", &previewError{http.StatusBadGateway, "Reading the child rows of the target " + ref + " from the CRM failed: " + err.Error()}
		}
		return b, "read live from the CRM: " + ref, nil
	}
	var st struct {
		Record map[string]any `json:"record"`
	}
	_ = json.Unmarshal(input, &st)
	id, _ := st.Record[attr].(string)
	switch {
	case a.data.fhir == nil:
		return nil, "not read: no FHIR server is configured; paste it to see the changes", nil
	case !u.can(permPHI):
		return nil, "not read: the FHIR resource is patient data, which needs the PHI permission; paste it to see the changes", nil
	case attr == "" || id == "":
		return nil, "not read: the record holds no FHIR id (" + attr + "), so the agent would create the resource", nil
	case !fhirIDPattern.MatchString(id):
		return nil, "not read: " + attr + " does not hold a FHIR id", nil
	}
	ref := em.FHIRType + "/" + id
	if err := a.auditLiveRead(r, "fhir_resource", ref); err != nil {
		return nil, "", err
	}
	res, err := a.data.fhir.Read(r.Context(), em.FHIRType, id)
	if errors.Is(err, fhir.ErrNotFound) {
		return nil, "read live from the FHIR server: there is no " + ref + ", so the agent would create it", nil
	}
	if err != nil {
		return nil, "", &previewError{http.StatusBadGateway, "Reading the target " + ref + " from the FHIR server failed: " + err.Error()}
	}
	b, err := json.Marshal(res)
	if err != nil {
		return nil, "", err
	}
	return b, "read live from the FHIR server: " + ref, nil
}

// crmState is a CRM record with its expansion maps' child rows, read as
// the agent reads them (maps.Mapping.ChildQueries), as a CRMState's JSON.
func (a *app) crmState(ctx context.Context, m *maps.Mapping, rec crm.Record) ([]byte, error) {
	id, _ := rec[m.Def().IDAttribute()].(string)
	st := maps.CRMState{Record: rec}
	for _, q := range m.ChildQueries() {
		if q.ParentLookup == "" || id == "" {
			continue
		}
		var rows []map[string]any
		for _, pid := range q.ParentIDs(&st, id) {
			err := a.data.crmRecords.RetrieveMultiple(ctx, q.EntitySet, crm.Query{Select: q.Select, Filter: fmt.Sprintf("_%s_value eq %s", q.ParentLookup, pid)},
				func(r crm.Record) error { rows = append(rows, r); return nil })
			if err != nil {
				return nil, fmt.Errorf("reading %s: %w", q.EntitySet, err)
			}
		}
		if st.Children == nil {
			st.Children = map[string][]map[string]any{}
		}
		st.Children[q.Expansion] = rows
	}
	return json.Marshal(st)
}

// previewLookups resolves a preview's lookups the way the agent does when
// its link store has no answer: through the referenced entity map's
// correlation attribute on the CRM, read-only. It reads ids and
// correlation values only, not a record's content.
type previewLookups struct {
	set *maps.Set
	crm CRMRecordReader
	// Concept lookups read the CRM's concept table (preview_concepts.go);
	// a preview writes nothing, so the rows a map would create are held
	// here, with the ids maps.MemoryConceptID gives them.
	*maps.MemoryConcepts
}

func (l previewLookups) CRMID(ctx context.Context, entityMap, fhirRef string) (string, bool, error) {
	m, ok := l.set.Map(entityMap)
	if !ok {
		return "", false, nil
	}
	em := m.Def()
	_, id, found := strings.Cut(fhirRef, "/")
	if !found {
		id = fhirRef
	}
	if em.Correlation.CRMAttribute == "" || !fhirIDPattern.MatchString(id) {
		return "", false, nil
	}
	rec, err := l.crm.Retrieve(ctx, crm.ByKey(em.CRMEntitySet, em.Correlation.CRMAttribute, id), em.IDAttribute())
	if errors.Is(err, crm.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("finding the CRM record of %s: %w", fhirRef, err)
	}
	crmID, _ := rec[em.IDAttribute()].(string)
	return crmID, crmID != "", nil
}

func (l previewLookups) FHIRRef(ctx context.Context, entityMap, crmID string) (string, bool, error) {
	m, ok := l.set.Map(entityMap)
	if !ok || !crmIDPattern.MatchString(crmID) {
		return "", false, nil
	}
	em := m.Def()
	if em.Correlation.CRMAttribute == "" {
		return "", false, nil
	}
	rec, err := l.crm.Retrieve(ctx, crm.ByID(em.CRMEntitySet, crmID), em.Correlation.CRMAttribute)
	if errors.Is(err, crm.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("finding the FHIR id of %s record %s: %w", em.CRMEntity, crmID, err)
	}
	fid, _ := rec[em.Correlation.CRMAttribute].(string)
	if fid == "" {
		return "", false, nil
	}
	return em.FHIRType + "/" + fid, true, nil
}

// auditLiveRead records, before it happens, that the signed-in user reads
// a live record for a preview. A read that cannot be recorded is refused.
func (a *app) auditLiveRead(r *http.Request, objectType, ref string) error {
	e := logs.AuditEntry{At: a.now(), Actor: actor(r), Action: auditPreviewLiveRead, ObjectType: objectType, ObjectID: ref,
		After: "read for a map preview"}
	if err := a.data.logs.AppendAudit(r.Context(), e); err != nil {
		return fmt.Errorf("recording a live read in the audit trail: %w", err)
	}
	return nil
}

// resourceDiff lists the elements of a FHIR resource that differ between
// the current state and the mapped output, each as a path to a leaf with
// its values as JSON text; meta is left out (the server sets it).
func resourceDiff(current, output []byte) []fieldChange {
	var cur, out any
	if json.Unmarshal(current, &cur) != nil || json.Unmarshal(output, &out) != nil {
		return nil
	}
	before, after := map[string]string{}, map[string]string{}
	flattenJSON("", cur, before)
	flattenJSON("", out, after)
	var paths []string
	for p := range before {
		paths = append(paths, p)
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	var diff []fieldChange
	for _, p := range paths {
		if p == "meta" || strings.HasPrefix(p, "meta.") || strings.HasPrefix(p, "meta[") {
			continue
		}
		b, inB := before[p]
		o, inO := after[p]
		if inB && inO && b == o {
			continue
		}
		if !inB {
			b = "(absent)"
		}
		if !inO {
			o = "(absent)"
		}
		diff = append(diff, fieldChange{Field: p, Before: b, After: o})
	}
	return diff
}

// flattenJSON writes each leaf of v (a value decoded from JSON) into out
// under its path, name.given[0].
func flattenJSON(prefix string, v any, out map[string]string) {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			flattenJSON(p, x, out)
		}
	case []any:
		for i, x := range t {
			flattenJSON(fmt.Sprintf("%s[%d]", prefix, i), x, out)
		}
	default:
		b, _ := json.Marshal(t)
		out[prefix] = string(b)
	}
}

// asCRMState wraps a bare CRM record as {"record": …} unless it already
// has that shape.
func asCRMState(b []byte) []byte {
	var probe map[string]json.RawMessage
	if json.Unmarshal(b, &probe) != nil {
		return b
	}
	if _, ok := probe["record"]; ok {
		return b
	}
	out, err := json.Marshal(map[string]json.RawMessage{"record": b})
	if err != nil {
		return b
	}
	return out
}

// previewDecision is the sync log decision the agent would record for a
// preview's result.
func previewDecision(decision string, exists bool) (logs.Outcome, logs.ReasonCode) {
	switch decision {
	case maps.DecisionMapped:
		if exists {
			return logs.OutcomeSent, logs.ReasonUpdated
		}
		return logs.OutcomeSent, logs.ReasonCreated
	case maps.DecisionUnchanged:
		return logs.OutcomeSkipped, logs.ReasonUnchanged
	case maps.DecisionFiltered:
		return logs.OutcomeSkipped, logs.ReasonFiltered
	case maps.DecisionMappingError:
		return logs.OutcomeFailed, logs.ReasonMappingError
	}
	return "", ""
}

// previewGet shows the preview form of version {id}; ?map= chooses the
// entity map and ?decision= fills in a logged decision's id (the log
// explorer's "Preview with current draft" link).
func (a *app) previewGet(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := previewForm{Map: q.Get("map"), Direction: q.Get("direction"), Source: q.Get("source")}
	if s := strings.TrimSpace(q.Get("decision")); s != "" {
		if id, err := strconv.ParseInt(s, 10, 64); err == nil && id > 0 {
			f.DecisionID, f.Source = id, sourceDecision
		}
	}
	a.renderPreview(w, r, http.StatusOK, f, nil, "")
}

// previewPage runs a preview from the preview page's form.
func (a *app) previewPage(w http.ResponseWriter, r *http.Request) {
	n, ok := a.pathVersion(w, r)
	if !ok {
		return
	}
	f := previewForm{Map: r.PostFormValue("map"), Direction: r.PostFormValue("direction"), Input: r.PostFormValue("input"),
		Current: r.PostFormValue("current"), Source: r.PostFormValue("source"), RecordID: r.PostFormValue("record_id")}
	if f.Source == sourcePaste && strings.TrimSpace(f.Input) == "" && strings.TrimSpace(r.PostFormValue("decision_id")) != "" {
		f.Source = sourceDecision // a decision id typed, its choice left on paste
	}
	if s := strings.TrimSpace(r.PostFormValue("decision_id")); s != "" && (f.Source == "" || f.Source == sourceDecision) {
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil || id <= 0 {
			a.renderPreview(w, r, http.StatusBadRequest, f, nil, "The decision id must be a number.")
			return
		}
		f.DecisionID = id
	}
	if f.Map == "" {
		a.renderError(w, r, http.StatusBadRequest, "Choose an entity map to preview.")
		return
	}
	f = f.normalized()
	v, err := a.runPreview(r, n, f)
	var pe *previewError
	if errors.As(err, &pe) {
		if pe.status == http.StatusNotFound && strings.HasPrefix(pe.msg, "No such map version") {
			a.renderError(w, r, pe.status, pe.msg)
			return
		}
		a.renderPreview(w, r, pe.status, f, nil, pe.msg)
		return
	}
	if err != nil {
		a.serverError(w, r, "previewing a map", err)
		return
	}
	a.renderPreview(w, r, http.StatusOK, f, v, "")
}

// renderPreview shows the preview page of version {id} with form f and,
// when one ran, its result v.
func (a *app) renderPreview(w http.ResponseWriter, r *http.Request, status int, f previewForm, v *previewView, msg string) {
	n, doc, info, ok := a.loadVersion(w, r)
	if !ok {
		return
	}
	u, _ := currentUser(r)
	d := previewData{Info: info, PHI: u.can(permPHI), Form: f, Preview: v, Error: msg,
		LiveFHIR: a.data.fhir != nil, LiveCRM: a.data.crmRecords != nil}
	if d.Form.Source == "" {
		d.Form.Source = d.Form.source()
	}
	for i := range doc.EntityMaps {
		em := &doc.EntityMaps[i]
		d.Maps = append(d.Maps, mapRow{Name: em.Name, FHIRType: em.FHIRType, CRMEntity: em.CRMEntity, Version: n, Status: string(info.Status)})
	}
	if d.Form.Map == "" && len(doc.EntityMaps) > 0 {
		d.Form.Map = doc.EntityMaps[0].Name
	}
	if d.Form.Direction == "" {
		d.Form.Direction = string(maps.FHIRToCRM)
	}
	a.render(w, r, status, "preview", fmt.Sprintf("Preview with map set version %d", n), d)
}

// previewLogged opens the preview of a logged decision's captured payload
// with the newest draft (or, without one, the current version): the
// decision page's "Preview with current draft" link.
func (a *app) previewLogged(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.URL.Query().Get("decision"), 10, 64)
	if err != nil || id <= 0 {
		a.renderError(w, r, http.StatusNotFound, "No such decision.")
		return
	}
	d, err := a.data.logs.Get(r.Context(), id)
	if errors.Is(err, logs.ErrNotFound) {
		a.renderError(w, r, http.StatusNotFound, "No such decision.")
		return
	}
	if err != nil {
		a.serverError(w, r, "reading a decision", err)
		return
	}
	vs, err := a.data.maps.Versions(r.Context())
	if err != nil {
		a.serverError(w, r, "listing map versions", err)
		return
	}
	n := 0
	for _, v := range vs { // newest first
		if v.Status == maps.StatusDraft {
			n = v.Number
			break
		}
	}
	for _, v := range vs {
		if n == 0 && v.Current {
			n = v.Number
		}
	}
	if n == 0 {
		a.renderError(w, r, http.StatusNotFound, "There is no map version to preview with: import or publish a map set first.")
		return
	}
	dir := maps.FHIRToCRM
	if d.Direction == logs.CRMToFHIR {
		dir = maps.CRMToFHIR
	}
	q := url.Values{"decision": {strconv.FormatInt(id, 10)}, "direction": {string(dir)}}
	if d.EntityMap != "" {
		q.Set("map", d.EntityMap)
	}
	http.Redirect(w, r, fmt.Sprintf("/maps/versions/%d/preview?%s", n, q.Encode()), http.StatusSeeOther)
}
