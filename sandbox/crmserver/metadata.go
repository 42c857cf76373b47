package crmserver

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/google/uuid"
)

// AttributeType is a Dataverse AttributeTypeCode as the Web API spells it.
type AttributeType string

// Attribute types the sandbox knows. Their spelling matches the
// AttributeType property of Dataverse attribute metadata.
const (
	TypeString           AttributeType = "String"
	TypeMemo             AttributeType = "Memo"
	TypeInteger          AttributeType = "Integer"
	TypeBigInt           AttributeType = "BigInt"
	TypeDecimal          AttributeType = "Decimal"
	TypeDouble           AttributeType = "Double"
	TypeMoney            AttributeType = "Money"
	TypeBoolean          AttributeType = "Boolean"
	TypeDateTime         AttributeType = "DateTime"
	TypePicklist         AttributeType = "Picklist"
	TypeMultiSelect      AttributeType = "MultiSelectPicklist" // stored as "1,2,3"
	TypeState            AttributeType = "State"
	TypeStatus           AttributeType = "Status"
	TypeLookup           AttributeType = "Lookup"
	TypeCustomer         AttributeType = "Customer" // a lookup to account or contact
	TypeOwner            AttributeType = "Owner"
	TypeUniqueidentifier AttributeType = "Uniqueidentifier"
)

// Option is one choice of an option set.
type Option struct {
	Value int
	Label string
}

// Attribute describes one column of an entity.
type Attribute struct {
	LogicalName string
	Type        AttributeType
	// MaxLength bounds String and Memo values (characters).
	MaxLength int
	// Precision is how many decimal places a Decimal or Money value
	// keeps; the sandbox rounds longer values to it (half away from zero).
	// Zero keeps none, as in Dataverse.
	Precision int
	// MinValue and MaxValue bound Integer, Decimal and Money values; both
	// zero means the type's Dataverse default range (Integer:
	// -2,147,483,648 to 2,147,483,647; Decimal: -100,000,000,000 to
	// 100,000,000,000; Money: -922,337,203,685,477 to 922,337,203,685,477).
	MinValue, MaxValue float64
	// DateOnly marks a DateTime attribute with the DateOnly format and
	// behaviour (values are "YYYY-MM-DD").
	DateOnly bool
	// Options lists the choices of Picklist, MultiSelect, State and Status
	// attributes.
	Options []Option
	// Targets names the entities a lookup may point at.
	Targets []string
	// Required is RequiredLevel "ApplicationRequired" (checked on create).
	Required bool
	// ReadOnly attributes are maintained by the platform.
	ReadOnly bool

	entity string // the owning entity's logical name, set by New
}

// valueRange is the attribute's [min, max] and whether it has one.
func (a *Attribute) valueRange() (lo, hi float64, ok bool) {
	if a.MinValue != 0 || a.MaxValue != 0 {
		return a.MinValue, a.MaxValue, true
	}
	switch a.Type {
	case TypeInteger:
		return math.MinInt32, math.MaxInt32, true
	case TypeDecimal:
		return -100000000000, 100000000000, true
	case TypeMoney:
		return -922337203685477, 922337203685477, true
	}
	return 0, 0, false
}

func (a *Attribute) isLookup() bool {
	return a.Type == TypeLookup || a.Type == TypeCustomer || a.Type == TypeOwner
}

func (a *Attribute) hasOption(v int) bool {
	for _, o := range a.Options {
		if o.Value == v {
			return true
		}
	}
	return false
}

// Key is an alternate key: one or more attributes whose values identify a
// row.
type Key struct {
	LogicalName string
	Attributes  []string
}

// Relationship is a many-to-one relationship: the lookup Attribute of the
// referencing entity points at Target, and writes bind it through
// NavigationProperty ("parentcustomerid_account@odata.bind").
type Relationship struct {
	SchemaName         string
	Attribute          string
	Target             string
	NavigationProperty string
}

// Entity describes one table.
type Entity struct {
	LogicalName   string
	EntitySetName string
	PrimaryID     string
	PrimaryName   string
	// ChangeTracking enables Prefer: odata.track-changes on the entity set.
	ChangeTracking bool
	Attributes     []*Attribute
	Keys           []Key
	ManyToOne      []Relationship
}

// Attribute finds an attribute by logical name.
func (e *Entity) Attribute(name string) *Attribute {
	for _, a := range e.Attributes {
		if a.LogicalName == name {
			return a
		}
	}
	return nil
}

func (e *Entity) navigation(name string) *Relationship {
	for i := range e.ManyToOne {
		if e.ManyToOne[i].NavigationProperty == name {
			return &e.ManyToOne[i]
		}
	}
	return nil
}

// keyFor finds the alternate key whose attributes are exactly names.
func (e *Entity) keyFor(names []string) *Key {
	want := append([]string(nil), names...)
	sort.Strings(want)
	for i := range e.Keys {
		got := append([]string(nil), e.Keys[i].Attributes...)
		sort.Strings(got)
		if strings.Join(got, ",") == strings.Join(want, ",") {
			return &e.Keys[i]
		}
	}
	return nil
}

// Cloud for Healthcare choice values start at this base.
const hcBase = 935000000

func str(name string, max int) *Attribute {
	return &Attribute{LogicalName: name, Type: TypeString, MaxLength: max}
}
func memo(name string) *Attribute {
	return &Attribute{LogicalName: name, Type: TypeMemo, MaxLength: 100000}
}
func date(name string) *Attribute {
	return &Attribute{LogicalName: name, Type: TypeDateTime, DateOnly: true}
}
func datetime(name string) *Attribute { return &Attribute{LogicalName: name, Type: TypeDateTime} }
func boolean(name string) *Attribute  { return &Attribute{LogicalName: name, Type: TypeBoolean} }

// decimalAttr is a Decimal column with Dataverse's default precision (2).
func decimalAttr(name string) *Attribute { return decimalPlaces(name, 2) }

// decimalPlaces is a Decimal column with the given precision.
func decimalPlaces(name string, precision int) *Attribute {
	return &Attribute{LogicalName: name, Type: TypeDecimal, Precision: precision}
}
func integer(name string) *Attribute { return &Attribute{LogicalName: name, Type: TypeInteger} }
func picklist(name string, opts ...Option) *Attribute {
	return &Attribute{LogicalName: name, Type: TypePicklist, Options: opts}
}
func lookup(name string, targets ...string) *Attribute {
	return &Attribute{LogicalName: name, Type: TypeLookup, Targets: targets}
}

func hcOptions(labels ...string) []Option {
	out := make([]Option, len(labels))
	for i, l := range labels {
		out[i] = Option{Value: hcBase + i, Label: l}
	}
	return out
}

// platformAttributes are present on every entity.
func platformAttributes(primaryID string) []*Attribute {
	return []*Attribute{
		{LogicalName: primaryID, Type: TypeUniqueidentifier},
		{LogicalName: "createdon", Type: TypeDateTime, ReadOnly: true},
		{LogicalName: "modifiedon", Type: TypeDateTime, ReadOnly: true},
		{LogicalName: "createdby", Type: TypeLookup, Targets: []string{"systemuser"}, ReadOnly: true},
		{LogicalName: "modifiedby", Type: TypeLookup, Targets: []string{"systemuser"}, ReadOnly: true},
		{LogicalName: "versionnumber", Type: TypeBigInt, ReadOnly: true},
		{LogicalName: "statecode", Type: TypeState, Options: []Option{{0, "Active"}, {1, "Inactive"}}},
		{LogicalName: "statuscode", Type: TypeStatus, Options: []Option{{1, "Active"}, {2, "Inactive"}}},
	}
}

func addressAttributes() []*Attribute {
	return []*Attribute{
		str("address1_line1", 250), str("address1_line2", 250), str("address1_line3", 250),
		str("address1_city", 80), str("address1_stateorprovince", 50),
		str("address1_postalcode", 20), str("address1_country", 80), str("address1_county", 50),
		picklist("address1_addresstypecode", Option{1, "Bill To"}, Option{2, "Ship To"}, Option{3, "Primary"}, Option{4, "Other"}),
		str("address2_line1", 250), str("address2_line2", 250), str("address2_city", 80),
		str("address2_stateorprovince", 50), str("address2_postalcode", 20), str("address2_country", 80),
	}
}

func fhirIDKey() []Key {
	return []Key{{LogicalName: "msemr_azurefhirid_key", Attributes: []string{"msemr_azurefhirid"}}}
}

// DefaultEntities returns the starter entities: contact, account and the
// Cloud for Healthcare tables msemr_medicalidentifier, msemr_encounter and
// msemr_observation, each with the msemr_azurefhirid alternate key, and
// the data-model tables of the clinical starter maps (metadata_msemr.go).
func DefaultEntities() []*Entity {
	contact := &Entity{
		LogicalName: "contact", EntitySetName: "contacts", PrimaryID: "contactid", PrimaryName: "fullname",
		ChangeTracking: true,
		Attributes: append(append(platformAttributes("contactid"),
			str("firstname", 50), str("lastname", 50), str("middlename", 50),
			&Attribute{LogicalName: "fullname", Type: TypeString, MaxLength: 160, ReadOnly: true},
			str("salutation", 100), str("suffix", 10), str("nickname", 100),
			date("birthdate"),
			picklist("gendercode", Option{1, "Male"}, Option{2, "Female"}, Option{hcBase, "Other"}, Option{hcBase + 1, "Unknown"}),
			picklist("familystatuscode", append([]Option{{1, "Single"}, {2, "Married"}, {3, "Divorced"}, {4, "Widowed"}},
				hcOptions("Annulled", "Interlocutory", "Legally Separated", "Polygamous", "Domestic Partner", "Unmarried", "Unknown")...)...),
			picklist("preferredcontactmethodcode", Option{1, "Any"}, Option{2, "Email"}, Option{3, "Phone"}, Option{4, "Fax"}, Option{5, "Mail"}),
			str("telephone1", 50), str("telephone2", 50), str("telephone3", 50), str("mobilephone", 50), str("fax", 50),
			str("emailaddress1", 100), str("emailaddress2", 100), str("emailaddress3", 100),
			boolean("donotphone"), boolean("donotemail"), boolean("isprivate"),
			memo("description"), str("jobtitle", 100), integer("numberofchildren"),
			&Attribute{LogicalName: "parentcustomerid", Type: TypeCustomer, Targets: []string{"account", "contact"}},
			str("msemr_azurefhirid", 100), str("msemr_azurefhirversion", 100),
			picklist("msemr_contacttype", hcOptions("Patient", "Practitioner", "Related Person", "Other")...),
			boolean("msemr_deceased"), datetime("msemr_deceaseddate"),
			boolean("msemr_syncenabled"),
			str("msemr_medicalrecordnumber", 100), str("msemr_primarylanguage", 100), str("msemr_preferredlanguage", 100),
			lookup("msemr_generalpractitioner", "contact"), str("msemr_npi", 20),
			lookup("msemr_managingorganization", "account"),
		), addressAttributes()...),
		Keys: fhirIDKey(),
		ManyToOne: []Relationship{
			{SchemaName: "contact_customer_accounts", Attribute: "parentcustomerid", Target: "account", NavigationProperty: "parentcustomerid_account"},
			{SchemaName: "contact_customer_contacts", Attribute: "parentcustomerid", Target: "contact", NavigationProperty: "parentcustomerid_contact"},
			{SchemaName: "msemr_contact_generalpractitioner", Attribute: "msemr_generalpractitioner", Target: "contact", NavigationProperty: "msemr_generalpractitioner"},
			{SchemaName: "msemr_account_contact_managingorganization", Attribute: "msemr_managingorganization", Target: "account", NavigationProperty: "msemr_managingorganization"},
		},
	}
	account := &Entity{
		LogicalName: "account", EntitySetName: "accounts", PrimaryID: "accountid", PrimaryName: "name",
		ChangeTracking: true,
		Attributes: append(append(platformAttributes("accountid"),
			&Attribute{LogicalName: "name", Type: TypeString, MaxLength: 160, Required: true},
			str("accountnumber", 20), str("telephone1", 50), str("telephone2", 50), str("fax", 50),
			str("emailaddress1", 100), str("websiteurl", 200), memo("description"),
			lookup("parentaccountid", "account"),
			picklist("msemr_accounttype", hcOptions("Healthcare Provider", "Hospital Department", "Organizational Team", "Government", "Insurance Company", "Payer", "Other")...),
			str("msemr_azurefhirid", 100), str("msemr_azurefhirversion", 100),
			boolean("msemr_syncenabled"), boolean("msemr_active"),
		), addressAttributes()...),
		Keys: fhirIDKey(),
		ManyToOne: []Relationship{
			{SchemaName: "account_parent_account", Attribute: "parentaccountid", Target: "account", NavigationProperty: "parentaccountid"},
		},
	}
	identifier := &Entity{
		LogicalName: "msemr_medicalidentifier", EntitySetName: "msemr_medicalidentifiers",
		PrimaryID: "msemr_medicalidentifierid", PrimaryName: "msemr_name", ChangeTracking: true,
		Attributes: append(platformAttributes("msemr_medicalidentifierid"),
			str("msemr_name", 100), str("msemr_identifiervalue", 200), str("msemr_identifiersystem", 400),
			picklist("msemr_identifieruse", hcOptions("Usual", "Official", "Temp", "Secondary", "Old")...),
			str("msemr_identifiertypecode", 100), str("msemr_identifiertypetext", 200),
			datetime("msemr_validfrom"), datetime("msemr_validto"),
			lookup("msemr_contact", "contact"),
			lookup("msemr_assigner", "account"),
			str("msemr_azurefhirid", 100),
		),
		Keys: []Key{
			{LogicalName: "msemr_azurefhirid_key", Attributes: []string{"msemr_azurefhirid"}},
		},
		ManyToOne: []Relationship{
			{SchemaName: "msemr_contact_msemr_medicalidentifier_contact", Attribute: "msemr_contact", Target: "contact", NavigationProperty: "msemr_contact"},
			{SchemaName: "msemr_account_msemr_medicalidentifier_assigner", Attribute: "msemr_assigner", Target: "account", NavigationProperty: "msemr_assigner"},
		},
	}
	encounter := &Entity{
		LogicalName: "msemr_encounter", EntitySetName: "msemr_encounters",
		PrimaryID: "msemr_encounterid", PrimaryName: "msemr_name", ChangeTracking: true,
		Attributes: append(platformAttributes("msemr_encounterid"),
			str("msemr_name", 100), str("msemr_encounteridentifier", 100),
			picklist("msemr_encounterstatus", hcOptions("Planned", "Arrived", "Triaged", "In Progress", "On Leave", "Finished", "Cancelled", "Entered in Error", "Unknown")...),
			str("msemr_encounterclass", 100),
			datetime("msemr_encounterstartdate"), datetime("msemr_encounterenddate"),
			decimalPlaces("msemr_encounterlength", 2), memo("msemr_reasontext"),
			lookup("msemr_encounterpatientidentifier", "contact"),
			lookup("msemr_encounterserviceprovider", "account"),
			str("msemr_azurefhirid", 100), str("msemr_azurefhirversion", 100),
		),
		Keys: fhirIDKey(),
		ManyToOne: []Relationship{
			{SchemaName: "msemr_contact_msemr_encounter_patient", Attribute: "msemr_encounterpatientidentifier", Target: "contact", NavigationProperty: "msemr_encounterpatientidentifier"},
			{SchemaName: "msemr_account_msemr_encounter_serviceprovider", Attribute: "msemr_encounterserviceprovider", Target: "account", NavigationProperty: "msemr_encounterserviceprovider"},
		},
	}
	observation := &Entity{
		LogicalName: "msemr_observation", EntitySetName: "msemr_observations",
		PrimaryID: "msemr_observationid", PrimaryName: "msemr_name", ChangeTracking: true,
		Attributes: append(platformAttributes("msemr_observationid"),
			str("msemr_name", 100), str("msemr_identifier", 100),
			picklist("msemr_observationstatus", hcOptions("Registered", "Preliminary", "Final", "Amended", "Corrected", "Cancelled", "Entered in Error", "Unknown")...),
			str("msemr_code", 100), str("msemr_codesystem", 400), str("msemr_codetext", 400),
			str("msemr_category", 100),
			datetime("msemr_effectivedatetime"), datetime("msemr_issueddate"), memo("msemr_description"),
			decimalPlaces("msemr_valuequantity", 10), str("msemr_valuequantityunit", 100),
			str("msemr_valuestring", 4000), boolean("msemr_valueboolean"),
			str("msemr_interpretation", 100),
			lookup("msemr_subjecttypepatient", "contact"),
			lookup("msemr_encounter", "msemr_encounter"),
			str("msemr_azurefhirid", 100), str("msemr_azurefhirversion", 100),
		),
		Keys: fhirIDKey(),
		ManyToOne: []Relationship{
			{SchemaName: "msemr_contact_msemr_observation_subject", Attribute: "msemr_subjecttypepatient", Target: "contact", NavigationProperty: "msemr_subjecttypepatient"},
			{SchemaName: "msemr_msemr_encounter_msemr_observation", Attribute: "msemr_encounter", Target: "msemr_encounter", NavigationProperty: "msemr_encounter"},
		},
	}
	medicalIdentifierColumns(identifier)
	return withActivities(append([]*Entity{contact, account, identifier, encounter, observation}, healthcareEntities()...))
}

// metadataJSON renders an entity the way EntityDefinitions does, with its
// Attributes, Keys and ManyToOneRelationships expanded.
func metadataJSON(e *Entity, base string) map[string]any {
	attrs := make([]any, 0, len(e.Attributes))
	for _, a := range e.Attributes {
		attrs = append(attrs, attributeJSON(e, a, true))
	}
	keys := make([]any, 0, len(e.Keys))
	for _, k := range e.Keys {
		keys = append(keys, map[string]any{
			"LogicalName": k.LogicalName, "KeyAttributes": k.Attributes, "EntityKeyIndexStatus": "Active",
		})
	}
	rels := make([]any, 0, len(e.ManyToOne))
	for _, r := range e.ManyToOne {
		target := r.Target
		rels = append(rels, map[string]any{
			"SchemaName": r.SchemaName, "ReferencingEntity": e.LogicalName, "ReferencingAttribute": r.Attribute,
			"ReferencedEntity": target, "ReferencedAttribute": target + "id",
			"ReferencingEntityNavigationPropertyName": r.NavigationProperty,
		})
	}
	return map[string]any{
		"@odata.context":         base + "$metadata#EntityDefinitions/$entity",
		"MetadataId":             metadataID(e.LogicalName),
		"LogicalName":            e.LogicalName,
		"EntitySetName":          e.EntitySetName,
		"PrimaryIdAttribute":     e.PrimaryID,
		"PrimaryNameAttribute":   e.PrimaryName,
		"ChangeTrackingEnabled":  e.ChangeTracking,
		"Attributes":             attrs,
		"Keys":                   keys,
		"ManyToOneRelationships": rels,
		"Privileges":             privilegesJSON(e),
	}
}

var metadataTypeNames = map[AttributeType]string{
	TypeString: "StringAttributeMetadata", TypeMemo: "MemoAttributeMetadata",
	TypeInteger: "IntegerAttributeMetadata", TypeBigInt: "BigIntAttributeMetadata",
	TypeDecimal: "DecimalAttributeMetadata", TypeDouble: "DoubleAttributeMetadata",
	TypeMoney: "MoneyAttributeMetadata", TypeBoolean: "BooleanAttributeMetadata",
	TypeDateTime: "DateTimeAttributeMetadata", TypePicklist: "PicklistAttributeMetadata",
	TypeMultiSelect: "MultiSelectPicklistAttributeMetadata", TypeState: "StateAttributeMetadata",
	TypeStatus: "StatusAttributeMetadata", TypeLookup: "LookupAttributeMetadata",
	TypeCustomer: "LookupAttributeMetadata", TypeOwner: "LookupAttributeMetadata",
	TypeUniqueidentifier: "UniqueIdentifierAttributeMetadata",
}

func attributeJSON(e *Entity, a *Attribute, withOptions bool) map[string]any {
	level := "None"
	if a.Required {
		level = "ApplicationRequired"
	}
	if a.LogicalName == e.PrimaryID {
		level = "SystemRequired"
	}
	m := map[string]any{
		"@odata.type":       "#Microsoft.Dynamics.CRM." + metadataTypeNames[a.Type],
		"LogicalName":       a.LogicalName,
		"AttributeType":     string(a.Type),
		"AttributeTypeName": map[string]any{"Value": string(a.Type) + "Type"},
		"RequiredLevel":     map[string]any{"Value": level},
		"IsPrimaryId":       a.LogicalName == e.PrimaryID,
		"IsPrimaryName":     a.LogicalName == e.PrimaryName,
		"IsValidForCreate":  !a.ReadOnly,
		"IsValidForUpdate":  !a.ReadOnly && a.LogicalName != e.PrimaryID,
		"IsValidForRead":    true,
	}
	if a.Type == TypeMultiSelect {
		m["AttributeTypeName"] = map[string]any{"Value": "MultiSelectPicklistType"}
	}
	m["MetadataId"] = metadataID(e.LogicalName + "." + a.LogicalName)
	switch a.Type {
	case TypeString, TypeMemo:
		m["MaxLength"] = a.MaxLength
	case TypeDecimal, TypeMoney:
		lo, hi, _ := a.valueRange()
		m["Precision"], m["MinValue"], m["MaxValue"] = a.Precision, lo, hi
		if a.Type == TypeMoney {
			// 0: the column's own Precision applies (not the organization's
			// pricing precision nor the currency's).
			m["PrecisionSource"] = 0
		}
	case TypeInteger:
		lo, hi, _ := a.valueRange()
		m["MinValue"], m["MaxValue"], m["Format"] = int64(lo), int64(hi), "None"
	case TypeDateTime:
		if a.DateOnly {
			m["Format"] = "DateOnly"
			m["DateTimeBehavior"] = map[string]any{"Value": "DateOnly"}
		} else {
			m["Format"] = "DateAndTime"
			m["DateTimeBehavior"] = map[string]any{"Value": "UserLocal"}
		}
	case TypeLookup, TypeCustomer, TypeOwner:
		m["Targets"] = a.Targets
	}
	if withOptions && len(a.Options) > 0 {
		opts := make([]any, 0, len(a.Options))
		for _, o := range a.Options {
			opts = append(opts, map[string]any{"Value": o.Value, "Label": map[string]any{
				"UserLocalizedLabel": map[string]any{"Label": o.Label, "LanguageCode": 1033},
			}})
		}
		m["OptionSet"] = map[string]any{"Options": opts}
	}
	return m
}

// metadataID is the stable MetadataId of an entity or attribute (a name
// based UUID, the same on every run).
func metadataID(name string) string {
	return uuid.NewSHA1(metadataSpace, []byte(name)).String()
}

var metadataSpace = uuid.MustParse("6f1c2b3a-5d4e-4f60-8a71-9b8c7d6e5f40")

// metadata serves the metadata a client learns attributes from:
// EntityDefinitions, EntityDefinitions(LogicalName='x') or
// EntityDefinitions(<MetadataId>), then /Attributes, one attribute
// /Attributes(LogicalName='y') or /Attributes(<MetadataId>), each
// optionally cast to a type (/Microsoft.Dynamics.CRM.<Type>AttributeMetadata).
// $select is honoured on attributes; OptionSet is returned with
// $expand=OptionSet.
func (s *Server) metadata(c *call, req *request, p string) response {
	if req.method != http.MethodGet {
		return errMethod()
	}
	sel := selectSet(req.query.Get("$select"))
	filter, err := metadataFilter(req.query.Get("$filter"))
	if err != nil {
		return errBadRequest("0x80060888", "Invalid $filter: "+err.Error()).response()
	}
	if p == "EntityDefinitions" {
		// Without $select, the sandbox expands Attributes, Keys and
		// ManyToOneRelationships.
		vals := []any{}
		for _, tb := range s.st.tables {
			m := metadataJSON(tb.def, c.base)
			delete(m, "@odata.context")
			if filter != nil && !filter.eval(metadataValue(m)) {
				continue
			}
			vals = append(vals, selectEntity(m, sel, req.query.Get("$expand")))
		}
		slices.SortFunc(vals, func(a, b any) int {
			return strings.Compare(a.(map[string]any)["LogicalName"].(string), b.(map[string]any)["LogicalName"].(string))
		})
		return jsonResponse(200, map[string]any{"@odata.context": c.base + "$metadata#EntityDefinitions", "value": vals})
	}
	rest, ok := strings.CutPrefix(p, "EntityDefinitions(")
	if !ok {
		return errSegment(p)
	}
	keyPart, sub, _ := strings.Cut(rest, ")")
	e, errResp := s.entityByKey(keyPart)
	if errResp != nil {
		return *errResp
	}
	sub = strings.TrimPrefix(sub, "/")
	if sub == "" {
		return jsonResponse(200, selectEntity(metadataJSON(e, c.base), sel, req.query.Get("$expand")))
	}
	expand := req.query.Get("$expand")
	withOptions := strings.Contains(expand, "OptionSet")
	ctx := c.base + "$metadata#EntityDefinitions('" + e.LogicalName + "')/Attributes"
	if one, ok := strings.CutPrefix(sub, "Attributes("); ok {
		key, cast, _ := strings.Cut(one, ")")
		cast = qualifiedCast(strings.TrimPrefix(cast, "/"))
		a := attributeByKey(e, key)
		if a == nil || (cast != "" && "Microsoft.Dynamics.CRM."+metadataTypeNames[a.Type] != cast) {
			return (&apiError{status: 404, code: "0x80040217", message: fmt.Sprintf("Could not find attribute %s of entity '%s'.", key, e.LogicalName)}).response()
		}
		out := selectAttribute(expandOptionSets(attributeJSON(e, a, withOptions), expand), sel)
		out["@odata.context"] = ctx + "/$entity"
		return jsonResponse(200, out)
	}
	attrs, cast, _ := strings.Cut(sub, "/")
	if attrs != "Attributes" {
		return errSegment(sub)
	}
	cast = qualifiedCast(cast)
	if cast != "" && !knownCast(cast) {
		return errSegment(cast)
	}
	vals := []any{}
	for _, a := range e.Attributes {
		if cast != "" && "Microsoft.Dynamics.CRM."+metadataTypeNames[a.Type] != cast {
			continue
		}
		m := expandOptionSets(attributeJSON(e, a, withOptions || (cast != "" && sel == nil)), expand)
		if filter != nil && !filter.eval(metadataValue(m)) {
			continue
		}
		vals = append(vals, selectAttribute(m, sel))
	}
	return jsonResponse(200, map[string]any{"@odata.context": ctx, "value": vals})
}

// entityByKey resolves LogicalName='x' or a MetadataId.
func (s *Server) entityByKey(key string) (*Entity, *response) {
	if name, ok := strings.CutPrefix(key, "LogicalName="); ok {
		name = strings.Trim(name, "'")
		if tb := s.st.tables[name]; tb != nil {
			return tb.def, nil
		}
		r := (&apiError{status: 404, code: "0x80040217", message: fmt.Sprintf("Could not find entity with name '%s'.", name)}).response()
		return nil, &r
	}
	for _, tb := range s.st.tables {
		if strings.EqualFold(metadataID(tb.def.LogicalName), key) {
			return tb.def, nil
		}
	}
	r := (&apiError{status: 404, code: "0x80040217", message: fmt.Sprintf("Could not find entity with id %s.", key)}).response()
	return nil, &r
}

func attributeByKey(e *Entity, key string) *Attribute {
	if name, ok := strings.CutPrefix(key, "LogicalName="); ok {
		return e.Attribute(strings.Trim(name, "'"))
	}
	for _, a := range e.Attributes {
		if strings.EqualFold(metadataID(e.LogicalName+"."+a.LogicalName), key) {
			return a
		}
	}
	return nil
}

// qualifiedCast adds the Microsoft.Dynamics.CRM namespace to a cast that
// omits it: Dataverse accepts type names without their namespace, and
// clients (dynamics-web-api among them) send them so.
func qualifiedCast(cast string) string {
	if cast == "" || strings.Contains(cast, ".") {
		return cast
	}
	return "Microsoft.Dynamics.CRM." + cast
}

func knownCast(cast string) bool {
	for _, n := range metadataTypeNames {
		if "Microsoft.Dynamics.CRM."+n == cast {
			return true
		}
	}
	return false
}

func selectSet(v string) map[string]bool {
	if v == "" {
		return nil
	}
	out := map[string]bool{}
	for _, n := range strings.Split(v, ",") {
		out[strings.TrimSpace(n)] = true
	}
	return out
}

// selectAttribute keeps the selected properties, the context and type
// annotations, MetadataId (always returned) and expanded option sets.
func selectAttribute(m map[string]any, sel map[string]bool) map[string]any {
	if sel == nil {
		return m
	}
	for k := range m {
		switch k {
		case "@odata.context", "@odata.type", "MetadataId", "OptionSet", "GlobalOptionSet":
		default:
			if !sel[k] {
				delete(m, k)
			}
		}
	}
	return m
}

// selectEntity keeps an entity's selected properties and the navigation
// properties named in $expand (Attributes, Keys, ManyToOneRelationships).
func selectEntity(m map[string]any, sel map[string]bool, expand string) map[string]any {
	if sel == nil {
		return m
	}
	keep := map[string]bool{}
	for k := range sel {
		keep[k] = true
	}
	depth, start := 0, 0
	for i := 0; i <= len(expand); i++ {
		switch {
		case i < len(expand) && expand[i] == '(':
			depth++
		case i < len(expand) && expand[i] == ')':
			depth--
		case i == len(expand) || expand[i] == ',' && depth == 0:
			name, _, _ := strings.Cut(expand[start:i], "(")
			keep[strings.TrimSpace(name)] = true
			start = i + 1
		}
	}
	return selectAttribute(m, keep)
}

// expandOptionSets answers $expand=GlobalOptionSet with the attribute's
// options (the sandbox has no global option sets, and Microsoft notes
// either property gives the options), and drops OptionSet when only the
// global one was asked for.
func expandOptionSets(m map[string]any, expand string) map[string]any {
	os, ok := m["OptionSet"]
	if !ok || !strings.Contains(expand, "GlobalOptionSet") {
		return m
	}
	m["GlobalOptionSet"] = os
	if !strings.Contains(strings.ReplaceAll(expand, "GlobalOptionSet", ""), "OptionSet") {
		delete(m, "OptionSet")
	}
	return m
}

// metadataFilter parses a $filter over metadata properties (nil: none).
func metadataFilter(f string) (filterNode, error) {
	if f == "" {
		return nil, nil
	}
	return parseFilter(f, func(string) bool { return true })
}

// metadataValue reads a metadata property for $filter: strings, booleans
// and numbers compare; other properties are null.
func metadataValue(m map[string]any) func(string) any {
	return func(name string) any {
		switch v := m[name].(type) {
		case string, bool:
			return v
		case int:
			return json.Number(strconv.Itoa(v))
		case int64:
			return json.Number(strconv.FormatInt(v, 10))
		case float64:
			return json.Number(strconv.FormatFloat(v, 'f', -1, 64))
		}
		return nil
	}
}
