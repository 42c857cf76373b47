package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/maps"
)

// CRMEntityReader reads one CRM entity's metadata: attributes with their
// types, lengths, precision, option values and lookup targets, and the
// alternate keys. It returns an error matching crm.ErrNotFound when the
// CRM has no such entity. *crm.Client is one.
type CRMEntityReader interface {
	EntityDefinition(ctx context.Context, logicalName string) (*crm.EntityMetadata, error)
}

// crmMetadataTTL is how long entity metadata read from the CRM is reused
// before it is read again; the maps page can refresh it sooner.
const crmMetadataTTL = 10 * time.Minute

// crmMetadata keeps the entity metadata map validation reads from the CRM,
// per entity, for crmMetadataTTL.
type crmMetadata struct {
	reader CRMEntityReader
	now    func() time.Time

	mu       sync.Mutex
	entities map[string]cachedEntity
}

type cachedEntity struct {
	meta *crm.EntityMetadata // nil: the CRM has no such entity
	at   time.Time
}

func newCRMMetadata(r CRMEntityReader, now func() time.Time) *crmMetadata {
	if r == nil {
		return nil
	}
	return &crmMetadata{reader: r, now: now, entities: map[string]cachedEntity{}}
}

// refresh forgets every cached entity, so the next check reads them again.
func (c *crmMetadata) refresh() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.entities)
}

// forDocument returns the metadata of every CRM entity doc's entity and
// expansion maps name, read from the cache or the CRM. An entity the CRM
// does not have is left out (validation then reports it); any other
// failure to read is returned.
func (c *crmMetadata) forDocument(ctx context.Context, doc *maps.Document) (*maps.CRMMetadata, error) {
	var names []string
	for _, em := range doc.EntityMaps {
		names = append(names, em.CRMEntity)
		em.EachExpansion(func(x *maps.ExpansionMap, _ string) { names = append(names, x.CRMEntity) })
	}
	var list []any
	seen := map[string]bool{}
	for _, name := range names {
		if name == "" || seen[name] {
			continue
		}
		seen[name] = true
		m, err := c.entity(ctx, name)
		if err != nil {
			return nil, err
		}
		if m != nil {
			list = append(list, entityJSON(m))
		}
	}
	raw, err := json.Marshal(map[string]any{"value": append([]any{}, list...)})
	if err != nil {
		return nil, err
	}
	return maps.ParseCRMMetadata(raw)
}

func (c *crmMetadata) entity(ctx context.Context, name string) (*crm.EntityMetadata, error) {
	m, _, err := c.entityAt(ctx, name)
	return m, err
}

// entityAt is entity with the time its metadata was read from the CRM.
// A nil metadata means the CRM has no such entity.
func (c *crmMetadata) entityAt(ctx context.Context, name string) (*crm.EntityMetadata, time.Time, error) {
	c.mu.Lock()
	e, ok := c.entities[name]
	c.mu.Unlock()
	if ok && c.now().Sub(e.at) < crmMetadataTTL {
		return e.meta, e.at, nil
	}
	m, err := c.reader.EntityDefinition(ctx, name)
	if errors.Is(err, crm.ErrNotFound) {
		m, err = nil, nil
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("reading the CRM metadata of %s: %w", name, err)
	}
	at := c.now()
	c.mu.Lock()
	c.entities[name] = cachedEntity{meta: m, at: at}
	c.mu.Unlock()
	return m, at, nil
}

// crmTypeOf is the attribute map type that carries a CRM column of
// attribute metadata a, or "" when no map type does (a uniqueidentifier,
// a virtual column without choices).
func crmTypeOf(a *crm.AttributeMetadata) maps.CRMType {
	switch a.Type {
	case "String", "EntityName":
		return maps.TypeString
	case "Memo":
		return maps.TypeMemo
	case "Integer", "BigInt":
		return maps.TypeInt
	case "Decimal", "Double":
		return maps.TypeDecimal
	case "Money":
		return maps.TypeMoney
	case "Boolean":
		return maps.TypeBool
	case "DateTime":
		if a.Format == "DateOnly" {
			return maps.TypeDateOnly
		}
		return maps.TypeDateTimeUTC
	case "Picklist", "State", "Status":
		return maps.TypeOptionSet
	case "MultiSelectPicklist":
		return maps.TypeMultiSelect
	case "Virtual":
		if len(a.Options) > 0 {
			return maps.TypeMultiSelect
		}
	case "Lookup", "Customer", "Owner":
		return maps.TypeLookup
	}
	return ""
}

// entityJSON writes m in the shape of an EntityDefinitions entry, which
// maps.ParseCRMMetadata reads.
func entityJSON(m *crm.EntityMetadata) map[string]any {
	var attrs []map[string]any
	names := make([]string, 0, len(m.Attributes))
	for n := range m.Attributes {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		a := m.Attributes[n]
		j := map[string]any{"LogicalName": a.LogicalName, "AttributeType": a.Type, "Format": a.Format,
			"MaxLength": a.MaxLength, "Targets": a.Targets}
		// Left out when the CRM does not say: the checks then assume nothing.
		if a.Precision != nil {
			j["Precision"] = *a.Precision
		}
		if a.PrecisionSource != nil {
			j["PrecisionSource"] = *a.PrecisionSource
		}
		if a.MinValue != nil {
			j["MinValue"] = *a.MinValue
		}
		if a.MaxValue != nil {
			j["MaxValue"] = *a.MaxValue
		}
		switch a.Type {
		case "MultiSelectPicklist", "Virtual":
			if a.Type == "MultiSelectPicklist" || len(a.Options) > 0 {
				j["AttributeType"] = "Virtual"
				j["AttributeTypeName"] = map[string]string{"Value": "MultiSelectPicklistType"}
			}
		case "DateTime":
			if a.Format == "DateOnly" {
				j["DateTimeBehavior"] = map[string]string{"Value": "DateOnly"}
			}
		}
		if len(a.Options) > 0 {
			var opts []map[string]int
			for _, o := range a.Options {
				opts = append(opts, map[string]int{"Value": o.Value})
			}
			j["OptionSet"] = map[string]any{"Options": opts}
		}
		attrs = append(attrs, j)
	}
	keys := []map[string]any{}
	for _, k := range m.Keys {
		keys = append(keys, map[string]any{"LogicalName": k.LogicalName, "KeyAttributes": k.Attributes})
	}
	return map[string]any{"LogicalName": m.LogicalName, "EntitySetName": m.EntitySetName,
		"PrimaryIdAttribute": m.PrimaryID, "Attributes": attrs, "Keys": keys}
}

// crmCheck validates doc, and against the CRM's metadata when a CRM is
// configured. It returns the validation error when doc does not fit, and
// unchecked (with the reason) when the metadata could not be read: doc is
// then validated without it, saving a draft goes on with a warning,
// publishing does not. With reread, metadata that finds problems is read
// again from the CRM before they are reported (saves and publications,
// which are rare; not the validation run at every keystroke).
func (a *app) crmCheck(ctx context.Context, doc *maps.Document, reread bool) (unchecked string, err error) {
	if a.data.crm == nil {
		return "", maps.Validate(doc, maps.CompileOptions{})
	}
	md, err := a.data.crm.forDocument(ctx, doc)
	if err != nil {
		a.log.Warn("reading CRM metadata for map validation", "error", err)
		return "The CRM's metadata could not be read, so attributes were not checked against it.", maps.Validate(doc, maps.CompileOptions{})
	}
	err = maps.Validate(doc, maps.CompileOptions{CRM: md})
	var ve *maps.ValidationError
	if reread && errors.As(err, &ve) {
		// The CRM may have changed since the metadata was cached (a column
		// just added): read it again before refusing.
		a.data.crm.refresh()
		if md, rerr := a.data.crm.forDocument(ctx, doc); rerr == nil {
			err = maps.Validate(doc, maps.CompileOptions{CRM: md})
		}
	}
	return "", err
}
