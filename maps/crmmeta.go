package maps

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// CRMMetadata is a snapshot of Dataverse entity metadata, as returned by
// GET /api/data/v9.2/EntityDefinitions?$expand=Attributes,Keys (and, for
// option sets, the OptionSet of Picklist attributes). Validation uses it to check
// entity, attribute and type names when it is configured.
type CRMMetadata struct {
	entities map[string]*crmEntityMeta
}

type crmEntityMeta struct {
	LogicalName        string
	EntitySetName      string
	PrimaryIDAttribute string `json:"PrimaryIdAttribute"`
	Attributes         []crmAttributeMeta
	// Keys are the entity's alternate keys; nil when the snapshot was read
	// without them ($expand=Keys), empty when the entity has none.
	Keys  []crmKeyMeta
	attrs map[string]*crmAttributeMeta
}

type crmKeyMeta struct {
	LogicalName   string
	KeyAttributes []string
}

type crmAttributeMeta struct {
	LogicalName       string
	AttributeType     string
	AttributeTypeName *struct{ Value string }
	Format            string
	DateTimeBehavior  *struct{ Value string }
	MaxLength         int
	Targets           []string
	OptionSet         *struct {
		Options []struct{ Value int }
	}
}

// ParseCRMMetadata reads an EntityDefinitions response: either
// {"value":[entity,...]} or a bare array of entities.
func ParseCRMMetadata(data []byte) (*CRMMetadata, error) {
	var list []*crmEntityMeta
	var wrapped struct {
		Value []*crmEntityMeta `json:"value"`
	}
	if err := json.Unmarshal(data, &wrapped); err == nil && wrapped.Value != nil {
		list = wrapped.Value
	} else if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("reading CRM metadata: %w", err)
	}
	md := &CRMMetadata{entities: map[string]*crmEntityMeta{}}
	for _, e := range list {
		if e == nil || e.LogicalName == "" {
			return nil, fmt.Errorf("reading CRM metadata: an entity has no LogicalName")
		}
		e.attrs = map[string]*crmAttributeMeta{}
		for i := range e.Attributes {
			e.attrs[e.Attributes[i].LogicalName] = &e.Attributes[i]
		}
		md.entities[e.LogicalName] = e
	}
	return md, nil
}

// crmTypeOf maps Dataverse metadata to this package's CRM types.
func (a *crmAttributeMeta) crmTypes() []CRMType {
	behavior := ""
	if a.DateTimeBehavior != nil {
		behavior = a.DateTimeBehavior.Value
	}
	switch a.AttributeType {
	case "String", "EntityName":
		return []CRMType{TypeString}
	case "Memo":
		return []CRMType{TypeMemo, TypeString}
	case "Integer", "BigInt":
		return []CRMType{TypeInt}
	case "Decimal", "Double":
		return []CRMType{TypeDecimal}
	case "Money":
		return []CRMType{TypeMoney, TypeDecimal}
	case "Boolean":
		return []CRMType{TypeBool}
	case "DateTime":
		if behavior == "DateOnly" || (behavior == "" && a.Format == "DateOnly") {
			return []CRMType{TypeDateOnly}
		}
		return []CRMType{TypeDateTimeUTC}
	case "Picklist", "State", "Status":
		return []CRMType{TypeOptionSet}
	case "Lookup", "Customer", "Owner":
		return []CRMType{TypeLookup}
	case "Uniqueidentifier":
		return []CRMType{TypeString}
	case "Virtual":
		if a.AttributeTypeName != nil && a.AttributeTypeName.Value == "MultiSelectPicklistType" {
			return []CRMType{TypeMultiSelect}
		}
	}
	return nil
}

func (c *compiler) crmEntity(at Problem, entity, entitySet string) {
	md := c.opts.CRM
	if md == nil || entity == "" {
		return
	}
	e, ok := md.entities[entity]
	if !ok {
		c.ps.add(withField(at, "crmEntity"), "CRM metadata has no entity %q", entity)
		return
	}
	if entitySet != "" && e.EntitySetName != "" && e.EntitySetName != entitySet {
		c.ps.add(withField(at, "crmEntitySet"), "entity %s has entity set %q, not %q", entity, e.EntitySetName, entitySet)
	}
}

func (c *compiler) crmAttr(entity, attribute string) (*crmAttributeMeta, bool, bool) {
	md := c.opts.CRM
	if md == nil || entity == "" || attribute == "" {
		return nil, false, false
	}
	e, ok := md.entities[entity]
	if !ok {
		return nil, false, false // reported by crmEntity
	}
	a, ok := e.attrs[attribute]
	return a, ok, true
}

// crmMaxLength checks a string attribute map's maxLength against the
// attribute's own limit: a longer value would be rejected by the CRM.
func (c *compiler) crmMaxLength(at Problem, entity string, a *AttributeMap) {
	m, ok, checked := c.crmAttr(entity, a.CRMAttribute)
	if !checked || !ok || m.MaxLength <= 0 || (a.CRMType != TypeString && a.CRMType != TypeMemo) {
		return
	}
	if a.MaxLength > m.MaxLength {
		c.ps.add(withField(at, "maxLength"), "maxLength %d exceeds the CRM attribute's limit of %d", a.MaxLength, m.MaxLength)
	}
}

func (c *compiler) crmAttribute(at Problem, entity, attribute string, typ CRMType) {
	a, ok, checked := c.crmAttr(entity, attribute)
	if !checked {
		return
	}
	if !ok {
		c.ps.add(withField(at, "crmAttribute"), "CRM entity %s has no attribute %q", entity, attribute)
		return
	}
	if typ == "" {
		return
	}
	types := a.crmTypes()
	if !slices.Contains(types, typ) {
		c.ps.add(withField(at, "crmType"), "type mismatch: CRM attribute %s.%s is %s, the map says %s", entity, attribute, a.AttributeType, typ)
	}
}

func (c *compiler) crmLookupTarget(at Problem, entity, attribute, target string) {
	a, ok, checked := c.crmAttr(entity, attribute)
	if !checked || !ok || len(a.Targets) == 0 || target == "" {
		return
	}
	if !slices.Contains(a.Targets, target) {
		c.ps.add(withField(at, "crmAttribute"), "lookup %s.%s targets %s, not %s", entity, attribute, strings.Join(a.Targets, ", "), target)
	}
}

func (c *compiler) crmOptions(at Problem, entity, attribute string, vm *valueMap) {
	a, ok, checked := c.crmAttr(entity, attribute)
	if !checked || !ok || a.OptionSet == nil || len(a.OptionSet.Options) == 0 {
		return
	}
	valid := map[int]bool{}
	for _, o := range a.OptionSet.Options {
		valid[o.Value] = true
	}
	for _, e := range vm.def.Entries {
		if !valid[e.CRM] {
			c.ps.add(withField(at, "valueMap"), "value map %q uses option value %d, which %s.%s does not define", vm.def.Name, e.CRM, entity, attribute)
		}
	}
}
