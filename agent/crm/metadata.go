package crm

import (
	"context"
	"fmt"
	"net/url"
)

// EntityMetadata describes one table, for map validation.
type EntityMetadata struct {
	LogicalName    string
	EntitySetName  string
	PrimaryID      string
	PrimaryName    string
	ChangeTracking bool
	Attributes     map[string]*AttributeMetadata
	Keys           []KeyMetadata
	Lookups        []LookupMetadata
}

// AttributeMetadata describes one column.
type AttributeMetadata struct {
	LogicalName string
	// Type is the AttributeType: String, Memo, Integer, BigInt, Decimal,
	// Double, Money, Boolean, DateTime, Picklist, MultiSelectPicklist,
	// State, Status, Lookup, Customer, Owner, Uniqueidentifier, …
	Type string
	// MaxLength bounds String and Memo values (characters).
	MaxLength int
	// Precision is how many decimal places a Decimal or Money column
	// keeps; Dataverse rounds longer values to it. Nil when the metadata
	// does not say (other types).
	Precision *int
	// PrecisionSource says where a Money column's precision comes from:
	// 0 its own Precision, 1 the organization's pricing precision, 2 the
	// record's currency. Nil for other types.
	PrecisionSource *int
	// MinValue and MaxValue bound Integer, Decimal, Double and Money
	// values; nil when the metadata gives none.
	MinValue, MaxValue *float64
	// Format is "DateOnly" or "DateAndTime" for DateTime columns.
	Format string
	// Targets names the entities a lookup may reference.
	Targets []string
	// Options are the choices of option-set columns.
	Options        []OptionMetadata
	Required       bool
	ValidForCreate bool
	ValidForUpdate bool
}

// HasOption reports whether v is one of the attribute's choices.
func (a *AttributeMetadata) HasOption(v int) bool {
	for _, o := range a.Options {
		if o.Value == v {
			return true
		}
	}
	return false
}

// OptionMetadata is one choice.
type OptionMetadata struct {
	Value int
	Label string
}

// KeyMetadata is an alternate key.
type KeyMetadata struct {
	LogicalName string
	Attributes  []string
}

// LookupMetadata is a many-to-one relationship: writes bind Attribute
// through NavigationProperty ("<nav>@odata.bind").
type LookupMetadata struct {
	Attribute          string
	Target             string
	NavigationProperty string
}

type label struct {
	UserLocalizedLabel *struct {
		Label string `json:"Label"`
	} `json:"UserLocalizedLabel"`
}

type rawAttribute struct {
	LogicalName     string   `json:"LogicalName"`
	AttributeType   string   `json:"AttributeType"`
	MaxLength       *int     `json:"MaxLength"`
	Precision       *int     `json:"Precision"`
	PrecisionSource *int     `json:"PrecisionSource"`
	MinValue        *float64 `json:"MinValue"`
	MaxValue        *float64 `json:"MaxValue"`
	Format          string   `json:"Format"`
	Targets         []string
	RequiredLevel   struct {
		Value string `json:"Value"`
	} `json:"RequiredLevel"`
	IsValidForCreate *bool `json:"IsValidForCreate"`
	IsValidForUpdate *bool `json:"IsValidForUpdate"`
	OptionSet        *struct {
		Options []struct {
			Value int   `json:"Value"`
			Label label `json:"Label"`
		} `json:"Options"`
	} `json:"OptionSet"`
}

// EntityDefinition reads the metadata of one entity: attributes with their
// types, option-set choices, alternate keys and lookups.
func (c *Client) EntityDefinition(ctx context.Context, logicalName string) (*EntityMetadata, error) {
	op := "reading metadata of " + logicalName
	path := "EntityDefinitions(LogicalName=" + url.PathEscape(quote(logicalName)) + ")"
	q := url.Values{}
	q.Set("$select", "LogicalName,EntitySetName,PrimaryIdAttribute,PrimaryNameAttribute,ChangeTrackingEnabled")
	q.Set("$expand", "Attributes,Keys($select=LogicalName,KeyAttributes),ManyToOneRelationships($select=ReferencingAttribute,ReferencedEntity,ReferencingEntityNavigationPropertyName)")
	res, err := c.send(ctx, op, call{method: "GET", url: c.url(path, q), idempotent: true})
	if err != nil {
		return nil, err
	}
	var raw struct {
		LogicalName    string         `json:"LogicalName"`
		EntitySetName  string         `json:"EntitySetName"`
		PrimaryID      string         `json:"PrimaryIdAttribute"`
		PrimaryName    string         `json:"PrimaryNameAttribute"`
		ChangeTracking *bool          `json:"ChangeTrackingEnabled"`
		Attributes     []rawAttribute `json:"Attributes"`
		Keys           []struct {
			LogicalName   string   `json:"LogicalName"`
			KeyAttributes []string `json:"KeyAttributes"`
		} `json:"Keys"`
		ManyToOne []struct {
			Attribute  string `json:"ReferencingAttribute"`
			Target     string `json:"ReferencedEntity"`
			Navigation string `json:"ReferencingEntityNavigationPropertyName"`
		} `json:"ManyToOneRelationships"`
	}
	if err := decodeJSON(op, res, &raw); err != nil {
		return nil, err
	}
	if raw.LogicalName == "" || raw.EntitySetName == "" || raw.PrimaryID == "" {
		return nil, invalidResponse(op, res.status, "entity definition without LogicalName, EntitySetName or PrimaryIdAttribute")
	}
	m := &EntityMetadata{LogicalName: raw.LogicalName, EntitySetName: raw.EntitySetName, PrimaryID: raw.PrimaryID,
		PrimaryName: raw.PrimaryName, ChangeTracking: raw.ChangeTracking != nil && *raw.ChangeTracking,
		Attributes: map[string]*AttributeMetadata{}}
	for _, a := range raw.Attributes {
		m.Attributes[a.LogicalName] = convertAttribute(a)
	}
	for _, k := range raw.Keys {
		m.Keys = append(m.Keys, KeyMetadata{LogicalName: k.LogicalName, Attributes: k.KeyAttributes})
	}
	for _, r := range raw.ManyToOne {
		m.Lookups = append(m.Lookups, LookupMetadata{Attribute: r.Attribute, Target: r.Target, NavigationProperty: r.Navigation})
	}
	// Choices are only returned through a cast to the option-set types.
	for _, cast := range []string{"PicklistAttributeMetadata", "MultiSelectPicklistAttributeMetadata", "StateAttributeMetadata", "StatusAttributeMetadata"} {
		q := url.Values{}
		q.Set("$select", "LogicalName")
		q.Set("$expand", "OptionSet($select=Options)")
		res, err := c.send(ctx, op, call{method: "GET", url: c.url(path+"/Attributes/Microsoft.Dynamics.CRM."+cast, q), idempotent: true})
		if err != nil {
			return nil, fmt.Errorf("%s: option sets: %w", op, err)
		}
		var list struct {
			Value *[]rawAttribute `json:"value"`
		}
		if err := decodeJSON(op, res, &list); err != nil {
			return nil, err
		}
		if list.Value == nil {
			return nil, invalidResponse(op, res.status, "attribute list without a value array")
		}
		for _, a := range *list.Value {
			if cur := m.Attributes[a.LogicalName]; cur != nil && a.OptionSet != nil {
				cur.Options = convertAttribute(a).Options
			}
		}
	}
	return m, nil
}

func convertAttribute(a rawAttribute) *AttributeMetadata {
	out := &AttributeMetadata{LogicalName: a.LogicalName, Type: a.AttributeType, Format: a.Format, Targets: a.Targets,
		Required:       a.RequiredLevel.Value == "ApplicationRequired" || a.RequiredLevel.Value == "SystemRequired",
		ValidForCreate: a.IsValidForCreate == nil || *a.IsValidForCreate,
		ValidForUpdate: a.IsValidForUpdate == nil || *a.IsValidForUpdate}
	if a.MaxLength != nil {
		out.MaxLength = *a.MaxLength
	}
	out.Precision, out.PrecisionSource, out.MinValue, out.MaxValue = a.Precision, a.PrecisionSource, a.MinValue, a.MaxValue
	if a.OptionSet != nil {
		for _, o := range a.OptionSet.Options {
			l := ""
			if o.Label.UserLocalizedLabel != nil {
				l = o.Label.UserLocalizedLabel.Label
			}
			out.Options = append(out.Options, OptionMetadata{Value: o.Value, Label: l})
		}
	}
	return out
}

// Attribute finds an attribute by logical name.
func (m *EntityMetadata) Attribute(name string) (*AttributeMetadata, bool) {
	a, ok := m.Attributes[name]
	return a, ok
}

// Lookup finds the relationship a navigation property binds.
func (m *EntityMetadata) Lookup(navigationProperty string) (LookupMetadata, bool) {
	for _, l := range m.Lookups {
		if l.NavigationProperty == navigationProperty {
			return l, true
		}
	}
	return LookupMetadata{}, false
}

// HasKey reports whether attrs (in any order) form an alternate key.
func (m *EntityMetadata) HasKey(attrs ...string) bool {
	for _, k := range m.Keys {
		if len(k.Attributes) != len(attrs) {
			continue
		}
		match := true
		for _, a := range attrs {
			found := false
			for _, b := range k.Attributes {
				found = found || a == b
			}
			match = match && found
		}
		if match {
			return true
		}
	}
	return false
}

// Places is the number of decimal places the CRM keeps for the column's
// values, and whether that is known: the Precision of a Decimal column or
// of a Money column whose precision is its own (PrecisionSource 0).
// A Money column that takes its precision from the organization or the
// currency is not known from the column alone.
func (a *AttributeMetadata) Places() (int, bool) {
	if a == nil || a.Precision == nil {
		return 0, false
	}
	switch a.Type {
	case "Decimal":
		return *a.Precision, true
	case "Money":
		if a.PrecisionSource == nil || *a.PrecisionSource == 0 {
			return *a.Precision, true
		}
	}
	return 0, false
}
