package agent

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
)

// Echoes are told by content, never by author alone: a change is the echo
// of an own write when the version it names (or, without one, the version
// re-read) is a version the agent wrote, or — when no version is named —
// when the re-read record's values for the fields the agent wrote equal
// what it wrote (compared as keyed hashes). A change by a person, or by
// another integration signed in as the same application user, between the
// agent's write and its echo has a version of its own and is synced.

// normVersion is the form versions are remembered and compared in: a CRM
// ETag W/"123" becomes the row version 123 that change notices carry; FHIR
// version ids are unchanged.
func normVersion(v string) string {
	v = strings.TrimPrefix(strings.TrimSpace(v), "W/")
	return strings.Trim(v, `"`)
}

// newValueKey returns the key own-write hashes are made under: one
// derived from the installation's secret (HMAC-SHA256 of a label of its
// own), or a random one for this process when there is none (then hashes
// from before a restart no longer match, and such a change is synced,
// which ends unchanged at the target).
func newValueKey(secret []byte) []byte {
	if len(secret) > 0 {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte("fhirsync own-write values"))
		return m.Sum(nil)
	}
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
}

// skipField reports fields that are not mapped values: FHIR bookkeeping
// the server rewrites, and OData annotations. A lookup bind, which reads
// back under another name, is hashed under that name (lookupField).
func skipField(side, name string) bool {
	if strings.Contains(name, "@") {
		return true
	}
	return side == "fhir" && (name == "meta" || name == "id" || name == "text")
}

// Lookups are written and read back in two shapes (Microsoft Learn, "Web
// API properties", Lookup properties:
// https://learn.microsoft.com/power-apps/developer/data-platform/webapi/web-api-properties#lookup-properties;
// "Retrieve related table records with a query":
// https://learn.microsoft.com/power-apps/developer/data-platform/webapi/retrieve-related-entities-query;
// "Associate and disassociate table rows using the Web API":
// https://learn.microsoft.com/power-apps/developer/data-platform/webapi/associate-disassociate-entities-using-web-api).
// fhirsync writes a lookup through its single-valued navigation property,
// "nav@odata.bind": "/set(id)" (null clears it), and the navigation
// property need not be the column's logical name (contact's
// parentcustomerid_account sets parentcustomerid). A read returns the
// column as the lookup property "_logicalname_value" holding the id (a
// GUID; the Prefer header may add annotations such as
// "_logicalname_value@Microsoft.Dynamics.CRM.lookuplogicalname", which
// are not values). So the echo hash names a lookup as it reads back,
// "_logicalname_value", and holds the referenced id in lower case on both
// sides: a person's edit of lookup columns alone changes the hash.

// lookupField reports whether name is a lookup property as the Web API
// reads it ("_logicalname_value"), a name no other property is given.
func lookupField(name string) bool {
	return len(name) > len("__value") && name[0] == '_' && strings.HasSuffix(name, "_value")
}

// lookupColumn is the logical name of the lookup column em writes through
// the navigation property nav: an attribute map's lookup or concept
// lookup, or a column of a lookup by type. "" when em maps no lookup
// through nav.
func lookupColumn(em *maps.EntityMap, nav string) string {
	if em == nil {
		return ""
	}
	for i := range em.Attributes {
		a := &em.Attributes[i]
		if a.Lookup.IsByType() {
			for _, t := range a.Lookup.ByType {
				if t.NavigationProperty() == nav {
					return t.CRMAttribute
				}
			}
			continue
		}
		if n := a.NavigationProperty(); n != "" && n == nav {
			return a.CRMAttribute
		}
	}
	return ""
}

// boundID is the id an @odata.bind value names (maps.BoundID), or nil
// for a null bind, which clears the lookup; ok is false for a bind that
// names no GUID (by alternate key, or a Content-ID reference "$1").
func boundID(v any) (id any, ok bool) {
	if v == nil {
		return nil, true
	}
	s, _ := v.(string)
	if g, ok := maps.BoundID(s); ok {
		return g, true
	}
	return nil, false
}

// lookupHashValue is a lookup property's value as hashed: the GUID in
// lower case, or the value as it is when it is none.
func lookupHashValue(v any) any {
	if s, ok := v.(string); ok && maps.IsGUID(s) {
		return strings.ToLower(s)
	}
	return v
}

// writtenValues returns the fields and values the agent wrote to side:
// the CRM attributes of a mapped record, or the top-level elements of a
// FHIR resource.
func writtenValues(side string, data any) map[string]any {
	switch v := data.(type) {
	case *maps.CRMResult:
		if v != nil {
			return v.Record
		}
	case map[string]any:
		return v
	}
	return nil
}

// valueDigest hashes the values fhirsync wrote to side; fields lists the
// names hashed (sorted, comma-separated), to project a re-read record the
// same way. Both are empty when nothing can be hashed. em is the entity
// map the values were written by: a CRM record's values are hashed as a
// read returns them (crmReadBack).
func valueDigest(key []byte, side string, data any, em *maps.EntityMap) (hash, fields string) {
	vals := writtenValues(side, data)
	if side == "crm" {
		vals = crmReadBack(vals, em)
	}
	names := make([]string, 0, len(vals))
	for n := range vals {
		// A name with a comma could not be told apart in fields.
		if !skipField(side, n) && !strings.Contains(n, ",") {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "", ""
	}
	slices.Sort(names)
	return hashValues(key, side, names, vals), strings.Join(names, ",")
}

// crmReadBack returns the values of a CRM record fhirsync wrote under the
// names a read returns them by: each lookup bind "nav@odata.bind" that em
// maps becomes its column's lookup property "_column_value" holding the
// bound id (nil for a null bind); a bind em does not map, or that names
// no id, is left out, and so is a lookup property in the written record
// (fhirsync writes lookups as binds). Other values are kept. vals itself
// is returned when it holds neither binds nor lookup properties.
func crmReadBack(vals map[string]any, em *maps.EntityMap) map[string]any {
	if !hasLookupNames(vals) {
		return vals
	}
	out := make(map[string]any, len(vals))
	for n, v := range vals {
		nav, isBind := strings.CutSuffix(n, "@odata.bind")
		switch {
		case isBind:
			col := lookupColumn(em, nav)
			id, ok := boundID(v)
			if col == "" || !ok {
				continue
			}
			// Two navigation properties of one column (a customer
			// lookup's _account and _contact): the one that sets it
			// counts over the one that clears it.
			f := "_" + col + "_value"
			if prev, dup := out[f]; dup && prev != nil && id == nil {
				continue
			}
			out[f] = id
		case lookupField(n):
			// Left out: fhirsync writes lookups as binds.
		default:
			out[n] = v
		}
	}
	return out
}

// hasLookupNames reports whether vals holds a lookup bind or a lookup
// property.
func hasLookupNames(vals map[string]any) bool {
	for n := range vals {
		if strings.HasSuffix(n, "@odata.bind") || lookupField(n) {
			return true
		}
	}
	return false
}

// recordDigest hashes src's values of the fields named (as valueDigest
// listed them).
func recordDigest(key []byte, side string, src record, fields string) string {
	if fields == "" {
		return ""
	}
	vals := src.Data
	if side == "crm" {
		st := crmState(&src)
		if st == nil {
			return ""
		}
		vals = st.Record
	}
	return hashValues(key, side, strings.Split(fields, ","), vals)
}

// hashValues is HMAC-SHA256 under key over each name and the canonical JSON
// of its value (absent and null alike), so equal values hash equal however
// they were decoded; a CRM lookup property's GUID counts in lower case.
func hashValues(key []byte, side string, names []string, vals map[string]any) string {
	m := hmac.New(sha256.New, key)
	var b []byte
	for _, n := range names {
		b = append(b[:0], n...)
		b = append(b, 0)
		v := vals[n]
		if side == "crm" && lookupField(n) {
			v = lookupHashValue(v)
		}
		var err error
		if b, err = maps.AppendJSON(b, v); err != nil {
			b = append(b, "!unencodable"...)
		}
		b = append(b, 0)
		m.Write(b)
	}
	return hex.EncodeToString(m.Sum(nil))
}

// echo decides whether a change is the echo of an own write: the version
// the notice names is one the agent wrote; or the re-read record is; or,
// when the notice names no version, the re-read record's values for the
// fields the agent last wrote equal what it wrote.
func (s ownWrites) echo(ctx context.Context, side string, n queues.Notice, src record) (bool, error) {
	if n.Version != "" {
		return s.isOwn(ctx, side, src.Type, src.ID, n.Version, src.Version)
	}
	own, w, ok, err := s.probe(ctx, side, src.Type, src.ID, src.Version)
	if err != nil || own || !ok || w.ValueHash == "" {
		return own, err
	}
	got := recordDigest(s.key, side, src, w.ValueFields)
	return got != "" && hmac.Equal([]byte(got), []byte(w.ValueHash)), nil
}

// flights tracks the target writes in progress, so that a change notice
// that may be their echo — its author is the agent's own user — and
// arrives before the write's version is known can wait for them instead of
// being taken for an edit.
type flights struct {
	mu   sync.Mutex
	seq  uint64
	open map[string]map[uint64]chan struct{}
}

func newFlights() *flights { return &flights{open: map[string]map[uint64]chan struct{}{}} }

// begin marks a write to a record of rtype on side as in progress; end
// marks it ended (its version noted, or failed).
func (f *flights) begin(side, rtype string) (end func()) {
	if f == nil {
		return func() {}
	}
	k := side + "\x00" + rtype
	f.mu.Lock()
	f.seq++
	id, ch := f.seq, make(chan struct{})
	if f.open[k] == nil {
		f.open[k] = map[uint64]chan struct{}{}
	}
	f.open[k][id] = ch
	f.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			delete(f.open[k], id)
			f.mu.Unlock()
			close(ch)
		})
	}
}

// inFlight returns the writes to side's rtype in progress now. Taken
// before an echo check, it closes the gap between a write's answer and its
// noting: a write that ends after it is waited for, and one that ended
// before it had noted its version already.
func (f *flights) inFlight(side, rtype string) []chan struct{} {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	open := f.open[side+"\x00"+rtype]
	chs := make([]chan struct{}, 0, len(open))
	for _, ch := range open {
		chs = append(chs, ch)
	}
	return chs
}

// wait blocks until the writes chs have ended, or max has passed; it
// reports whether there was any to wait for.
func wait(ctx context.Context, chs []chan struct{}, max time.Duration) bool {
	if len(chs) == 0 {
		return false
	}
	t := time.NewTimer(max)
	defer t.Stop()
	for _, ch := range chs {
		select {
		case <-ch:
		case <-t.C:
			return true
		case <-ctx.Done():
			return true
		}
	}
	return true
}
