package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/maps"
)

// entityDefiner reads a CRM entity's attribute metadata.
type entityDefiner interface {
	EntityDefinition(ctx context.Context, logicalName string) (*crm.EntityMetadata, error)
}

// precisions compares mapped CRM values with the CRM's current values at
// the precision the CRM keeps. Dataverse rounds a Decimal or Money value
// to its column's precision, so a FHIR value with more decimal places
// never reads back equal: compared exactly, every notice would update the
// record again.
type precisions struct {
	api entityDefiner // nil: the CRM client cannot tell, compare exactly
	ttl time.Duration
	now func() time.Time

	fetch sync.Mutex // one metadata read at a time: workers share its answer
	mu    sync.Mutex
	cache map[string]precisionEntry
}

type precisionEntry struct {
	places map[string]int // attribute → decimal places kept
	at     time.Time
}

func newPrecisions(api crmAPI) *precisions {
	p := &precisions{ttl: 10 * time.Minute, now: time.Now, cache: map[string]precisionEntry{}}
	if d, ok := api.(entityDefiner); ok {
		p.api = d
	}
	return p
}

// placesOf returns the decimal places the CRM keeps per attribute of
// entity; nil when the metadata cannot be read (values are then compared
// exactly, as before). Metadata is cached for a while: a column's
// precision rarely changes.
func (p *precisions) placesOf(ctx context.Context, entity string) map[string]int {
	if p == nil || p.api == nil {
		return nil
	}
	if places, ok := p.cached(entity); ok {
		return places
	}
	p.fetch.Lock()
	defer p.fetch.Unlock()
	if places, ok := p.cached(entity); ok {
		return places
	}
	md, err := p.api.EntityDefinition(ctx, entity)
	if err != nil {
		// Comparing exactly is the safe side: at worst one extra update.
		// The failure is remembered for a minute, so a CRM that refuses
		// metadata reads is not asked again for every message.
		p.mu.Lock()
		p.cache[entity] = precisionEntry{at: p.now().Add(time.Minute - p.ttl)}
		p.mu.Unlock()
		return nil
	}
	places := map[string]int{}
	for name, a := range md.Attributes {
		if n, ok := a.Places(); ok {
			places[name] = n
		}
	}
	p.mu.Lock()
	p.cache[entity] = precisionEntry{places: places, at: p.now()}
	p.mu.Unlock()
	return places
}

func (p *precisions) cached(entity string) (map[string]int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.cache[entity]
	if ok && p.now().Sub(e.at) < p.ttl {
		return e.places, true
	}
	return nil, false
}

// settle takes out of res.Changed the attributes whose mapped value,
// rounded as the CRM rounds it, equals the current value, and returns the
// attributes whose mapped value the CRM holds (or will hold) rounded.
func (p *precisions) settle(ctx context.Context, entity string, res *maps.CRMResult, cur *maps.CRMState) (rounded []string) {
	if res == nil || len(res.Record) == 0 {
		return nil
	}
	places := p.placesOf(ctx, entity)
	if len(places) == 0 {
		return nil
	}
	var current map[string]any
	if cur != nil {
		current = cur.Record
	}
	for name, v := range res.Record {
		n, ok := places[name]
		if !ok {
			continue
		}
		want, ok := decimalOf(v)
		if !ok {
			continue
		}
		r := roundRat(want, n)
		if r.Cmp(want) == 0 {
			continue // fits the column: nothing is rounded
		}
		rounded = append(rounded, name)
		if current == nil {
			continue
		}
		if have, ok := decimalOf(current[name]); ok && have.Cmp(r) == 0 {
			res.Changed = slices.DeleteFunc(res.Changed, func(c string) bool { return c == name })
		}
	}
	slices.Sort(rounded)
	return rounded
}

// decimalOf reads a JSON number (or its text) exactly.
func decimalOf(v any) (*big.Rat, bool) {
	var s string
	switch x := v.(type) {
	case json.Number:
		s = x.String()
	case float64:
		s = strconv.FormatFloat(x, 'g', -1, 64)
	case int:
		s = strconv.Itoa(x)
	case int64:
		s = strconv.FormatInt(x, 10)
	case string:
		s = x
	default:
		return nil, false
	}
	return new(big.Rat).SetString(s)
}

// roundRat rounds r to places decimal places, half away from zero.
func roundRat(r *big.Rat, places int) *big.Rat {
	out, _ := new(big.Rat).SetString(r.FloatString(places))
	return out
}

// declaredRounding describes the CRM attributes m's round declarations
// rounded ("msemr_valuequantity rounded to 10 decimal places"), sorted.
func declaredRounding(m *maps.Mapping, attrs []string) []string {
	if len(attrs) == 0 {
		return nil
	}
	places := map[string]int{}
	for _, a := range m.Def().Attributes {
		if a.Round != nil {
			places[a.CRMAttribute] = *a.Round
		}
	}
	out := make([]string, 0, len(attrs))
	for _, name := range attrs {
		if n, ok := places[name]; ok {
			out = append(out, fmt.Sprintf("%s rounded to %d decimal places", name, n))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
