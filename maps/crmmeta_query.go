package maps

import "slices"

// These accessors let other packages (such as the importer of the retired
// agent's maps) read a metadata snapshot the way validation does.

// HasEntity reports whether the snapshot holds the entity.
func (m *CRMMetadata) HasEntity(entity string) bool {
	_, ok := m.entities[entity]
	return ok
}

// EntitySet returns the entity's Web API entity set name.
func (m *CRMMetadata) EntitySet(entity string) (string, bool) {
	e, ok := m.entities[entity]
	if !ok || e.EntitySetName == "" {
		return "", false
	}
	return e.EntitySetName, true
}

// AttributeType returns the map type of an entity's attribute (the first
// one validation accepts for it); false when the snapshot does not hold the
// attribute or its type has no map type.
func (m *CRMMetadata) AttributeType(entity, attribute string) (CRMType, bool) {
	e, ok := m.entities[entity]
	if !ok {
		return "", false
	}
	a, ok := e.attrs[attribute]
	if !ok {
		return "", false
	}
	ts := a.crmTypes()
	if len(ts) == 0 {
		return "", false
	}
	return ts[0], true
}

// LookupTargets returns the entities a lookup attribute may refer to.
func (m *CRMMetadata) LookupTargets(entity, attribute string) []string {
	if e, ok := m.entities[entity]; ok {
		if a, ok := e.attrs[attribute]; ok {
			return a.Targets
		}
	}
	return nil
}

// MaxLength returns a string or memo attribute's maximum length; 0 when
// the snapshot does not say.
func (m *CRMMetadata) MaxLength(entity, attribute string) int {
	if e, ok := m.entities[entity]; ok {
		if a, ok := e.attrs[attribute]; ok {
			return a.MaxLength
		}
	}
	return 0
}

// LookupsTo returns the lookup attributes of entity whose targets include
// target, in the snapshot's order.
func (m *CRMMetadata) LookupsTo(entity, target string) []string {
	e, ok := m.entities[entity]
	if !ok {
		return nil
	}
	var out []string
	for _, a := range e.Attributes {
		if slices.Contains(a.crmTypes(), TypeLookup) && slices.Contains(a.Targets, target) {
			out = append(out, a.LogicalName)
		}
	}
	return out
}
