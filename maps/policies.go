package maps

import (
	"reflect"
	"strings"

	"github.com/fhirsync/fhirsync/maps/path"
)

// fhirActive lists the FHIR R4 resource types with a boolean "active"
// element, the element deletePolicy deactivate sets to false on the FHIR
// side. Each resource's page under https://hl7.org/fhir/R4/ (for instance
// https://hl7.org/fhir/R4/patient.html#resource) shows the element. Types
// such as Location, Device, Endpoint, CareTeam and InsurancePlan record
// their state in a status code instead, which has no single "inactive"
// meaning, so they cannot be deactivated.
var fhirActive = map[string]bool{
	"BodyStructure":           true,
	"Group":                   true,
	"HealthcareService":       true,
	"Linkage":                 true,
	"Organization":            true,
	"OrganizationAffiliation": true,
	"Patient":                 true,
	"Person":                  true,
	"Practitioner":            true,
	"PractitionerRole":        true,
	"RelatedPerson":           true,
	"Schedule":                true,
}

// HasActive reports whether the FHIR R4 resource type has a boolean
// "active" element (what deletePolicy deactivate sets on the FHIR side).
func HasActive(fhirType string) bool { return fhirActive[fhirType] }

// deletePolicy checks the entity map's deletePolicy. Deactivating a FHIR
// resource needs its active element, so deactivate is refused for types
// without one when CRM deletions travel to FHIR. (CRM records are
// deactivated through statecode and statuscode, which every Dataverse
// entity has; with metadata configured their presence is checked.)
func (c *compiler) deletePolicy(at Problem, def *EntityMap) {
	at = withField(at, "deletePolicy")
	switch def.DeletePolicy {
	case "", DeletePropagate, DeleteIgnore:
	case DeleteDeactivate:
		if def.CRMToFHIR.Allows(OpDelete) && def.FHIRType != "" && knownResourceType(def.FHIRType) && !HasActive(def.FHIRType) {
			c.ps.add(at, "deletePolicy deactivate sets active to false on a FHIR resource, but %s has no active element; "+
				"use propagate or ignore, or take delete out of crmToFHIR.operations", def.FHIRType)
		}
		if def.FHIRToCRM.Allows(OpDelete) {
			for _, attr := range []string{"statecode", "statuscode"} {
				if _, ok, checked := c.crmAttr(def.CRMEntity, attr); checked && !ok {
					c.ps.add(at, "deletePolicy deactivate sets %s on the CRM record, but CRM entity %s has no such attribute", attr, def.CRMEntity)
				}
			}
		}
	default:
		c.ps.add(at, "deletePolicy must be propagate, deactivate or ignore, got %q", def.DeletePolicy)
	}
}

// businessKey checks correlation.businessKey and compiles the path that
// reads its identifier value. The identifier system goes into a path
// literal and into an identifier=system|value search, so characters those
// would need escaped are refused.
func (c *compiler) businessKey(at Problem, m *Mapping, resType reflect.Type) {
	def := m.def
	bk := def.Correlation.BusinessKey
	if bk == nil {
		return
	}
	const field = "correlation.businessKey."
	ok := true
	if bk.FHIRIdentifierSystem == "" {
		c.ps.add(withField(at, field+"fhirIdentifierSystem"), "fhirIdentifierSystem is required")
		ok = false
	} else if strings.ContainsAny(bk.FHIRIdentifierSystem, "'\\\"|,$") {
		c.ps.add(withField(at, field+"fhirIdentifierSystem"), "the identifier system must not contain quotes, backslashes, |, , or $")
		ok = false
	} else if bk.FHIRIdentifierSystem == def.Correlation.FHIRIdentifierSystem {
		c.ps.add(withField(at, field+"fhirIdentifierSystem"),
			"the business key's identifier system must differ from correlation.fhirIdentifierSystem, which carries the CRM record id")
		ok = false
	}
	if bk.CRMAttribute == "" {
		c.ps.add(withField(at, field+"crmAttribute"), "crmAttribute is required")
		ok = false
	} else if bk.CRMAttribute == def.Correlation.CRMAttribute {
		c.ps.add(withField(at, field+"crmAttribute"),
			"the business key's CRM attribute must differ from correlation.crmAttribute, which holds the FHIR resource id")
		ok = false
	} else {
		c.businessKeyAttribute(withField(at, field+"crmAttribute"), def.CRMEntity, bk.CRMAttribute)
	}
	if resType == nil {
		return // fhirType is reported already
	}
	if _, has := jsonFields(resType)["identifier"]; !has {
		c.ps.add(withField(at, field+"fhirIdentifierSystem"), "%s has no identifier element to hold a business key", def.FHIRType)
		return
	}
	if !ok {
		return
	}
	p, err := path.Compile("identifier.where(system='" + bk.FHIRIdentifierSystem + "').value")
	if err != nil {
		c.ps.add(withField(at, field+"fhirIdentifierSystem"), "%v", err)
		return
	}
	m.keyPath = p
}

// businessKeyAttribute checks, against CRM metadata when configured, that
// the business key attribute exists, holds text, and is an alternate key
// of its own (the agent finds the CRM record by it). Metadata read without
// $expand=Keys says nothing about keys, and then only the attribute is
// checked.
func (c *compiler) businessKeyAttribute(at Problem, entity, attribute string) {
	a, ok, checked := c.crmAttr(entity, attribute)
	if !checked {
		return
	}
	if !ok {
		c.ps.add(at, "CRM entity %s has no attribute %q", entity, attribute)
		return
	}
	types := a.crmTypes()
	if len(types) == 0 || types[0] != TypeString {
		c.ps.add(at, "a business key attribute holds an identifier value as text, but %s.%s is %s", entity, attribute, a.AttributeType)
	}
	e := c.opts.CRM.entities[entity]
	if e.Keys == nil {
		return
	}
	for _, k := range e.Keys {
		if len(k.KeyAttributes) == 1 && k.KeyAttributes[0] == attribute {
			return
		}
	}
	c.ps.add(at, "%s.%s is not an alternate key of its own; define one in the CRM so the record can be found by it", entity, attribute)
}

// BusinessKeyValue returns the value of the business key identifier in the
// FHIR resource res: the value of its identifier with the business key's
// system. It reports false when the map has no business key or res has no
// such identifier (or an empty one).
func (m *Mapping) BusinessKeyValue(res map[string]any) (string, bool) {
	if m.keyPath == nil {
		return "", false
	}
	v, ok := m.keyPath.Get(res)
	s, isString := v.(string)
	if !ok || !isString || s == "" {
		return "", false
	}
	return s, true
}
