package maps

import (
	"fmt"
	"time"

	"gorm.io/gorm"
)

// Rows of migration 0002_maps (with the columns 0009 and 0013 added). Each
// child row carries version_id so the immutability triggers can check its
// version directly.

type versionRow struct {
	ID          int64 `gorm:"primaryKey"`
	Number      int
	Status      Status
	Format      int
	Note        string
	Checksum    string
	CreatedBy   string
	CreatedAt   time.Time
	UpdatedAt   time.Time
	PublishedAt *time.Time
	PublishedBy string
}

func (versionRow) TableName() string { return "map_versions" }

func (r versionRow) info(current bool) VersionInfo {
	vi := VersionInfo{Number: r.Number, Status: r.Status, Note: r.Note, Checksum: r.Checksum, CreatedBy: r.CreatedBy,
		CreatedAt: r.CreatedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC(), PublishedBy: r.PublishedBy, Current: current}
	if r.PublishedAt != nil {
		t := r.PublishedAt.UTC()
		vi.PublishedAt = &t
	}
	return vi
}

type publicationRow struct {
	Seq         int64 `gorm:"primaryKey"`
	VersionID   int64
	PublishedAt time.Time
	PublishedBy string
	Note        string
	Rollback    bool
}

func (publicationRow) TableName() string { return "map_publications" }

type valueMapRow struct {
	ID          int64 `gorm:"primaryKey"`
	VersionID   int64
	Position    int
	Name        string
	Description string
	System      string
	Entries     string
	Unmapped    string
	DefaultCRM  *int   `gorm:"column:default_crm"`
	DefaultFHIR string `gorm:"column:default_fhir"`
}

func (valueMapRow) TableName() string { return "map_value_maps" }

type entityRow struct {
	ID                      int64 `gorm:"primaryKey"`
	VersionID               int64
	Position                int
	Name                    string
	Description             string
	Enabled                 bool
	CRMEntity               string  `gorm:"column:crm_entity"`
	CRMEntitySet            string  `gorm:"column:crm_entity_set"`
	CRMIDAttribute          string  `gorm:"column:crm_id_attribute"`
	FHIRType                string  `gorm:"column:fhir_type"`
	FHIRToCRM               bool    `gorm:"column:fhir_to_crm"`
	FHIRToCRMOperations     string  `gorm:"column:fhir_to_crm_operations"`
	CRMToFHIR               bool    `gorm:"column:crm_to_fhir"`
	CRMToFHIROperations     string  `gorm:"column:crm_to_fhir_operations"`
	CorrelationCRMAttribute string  `gorm:"column:correlation_crm_attribute"`
	CorrelationFHIRSystem   string  `gorm:"column:correlation_fhir_system"`
	FHIRFilter              *string `gorm:"column:fhir_filter"`
	CRMFilter               *string `gorm:"column:crm_filter"`
	CRMGate                 *string `gorm:"column:crm_gate"`
	ConflictPolicy          string
	DeletePolicy            string
	BusinessKeyFHIRSystem   string `gorm:"column:business_key_fhir_system"`
	BusinessKeyCRMAttribute string `gorm:"column:business_key_crm_attribute"`
	Samples                 *string
	Stream                  *string // JSON Stream; NULL: not a stream map
	Signal                  *string // JSON Signal; NULL: not a signal map
}

func (entityRow) TableName() string { return "map_entity_maps" }

type expansionRow struct {
	ID               int64 `gorm:"primaryKey"`
	VersionID        int64
	EntityMapID      int64
	Position         int
	Name             string
	Enabled          bool
	FHIRPath         string `gorm:"column:fhir_path"`
	Exclude          *string
	Direction        string
	CRMEntity        string `gorm:"column:crm_entity"`
	CRMEntitySet     string `gorm:"column:crm_entity_set"`
	CRMIDAttribute   string `gorm:"column:crm_id_attribute"`
	ParentLookup     string
	ParentNavigation string
	MatchKey         string
	OnRemove         string
	// ParentExpansionID is the expansion map this one is nested in; nil
	// at the top level (migration 0030).
	ParentExpansionID *int64
}

func (expansionRow) TableName() string { return "map_expansion_maps" }

type attributeRow struct {
	ID               int64 `gorm:"primaryKey"`
	VersionID        int64
	EntityMapID      int64
	ExpansionMapID   *int64
	Position         int
	Name             string
	Enabled          bool
	CRMAttribute     string  `gorm:"column:crm_attribute"`
	CRMType          string  `gorm:"column:crm_type"`
	FHIRPath         string  `gorm:"column:fhir_path"`
	FallbackPaths    *string `gorm:"column:fallback_paths"`
	Direction        string
	Action           string
	DefaultValue     string
	ValueMap         string
	LookupEntityMap  string
	LookupNavigation string
	Expression       string
	Required         bool
	MaxLength        int
	LengthPolicy     string
	RoundPlaces      *int `gorm:"column:round_places"`
	ConflictPolicy   string

	// LookupByType is a lookup by type's part (lookupByTypeColumn as
	// JSON); NULL for any other attribute map (migration 0029).
	LookupByType *string `gorm:"column:lookup_by_type"`
	// Concept is a concept lookup's section as JSON (NULL: none; migration
	// 0031).
	Concept *string `gorm:"column:concept"`
}

func (attributeRow) TableName() string { return "map_attribute_maps" }

// lookupByTypeColumn is what map_attribute_maps.lookup_by_type holds: the
// part of a Lookup that chooses its column by the reference's type.
type lookupByTypeColumn struct {
	ByType        []LookupTarget `json:"byType,omitempty"`
	TypeAttribute string         `json:"typeAttribute,omitempty"`
	TypeValueMap  string         `json:"typeValueMap,omitempty"`
	OtherTypes    OtherTypes     `json:"otherTypes,omitempty"`
}

func optJSON(v any, empty bool) *string {
	if empty {
		return nil
	}
	s := toJSON(v)
	return &s
}

func attributeRowOf(versionID, entityID int64, expID *int64, pos int, a *AttributeMap) attributeRow {
	r := attributeRow{VersionID: versionID, EntityMapID: entityID, ExpansionMapID: expID, Position: pos, Name: a.Name,
		Enabled: a.IsEnabled(), CRMAttribute: a.CRMAttribute, CRMType: string(a.CRMType), FHIRPath: a.FHIRPath,
		Direction: string(a.Direction), Action: string(a.Action), DefaultValue: a.Default, ValueMap: a.ValueMap,
		Expression: a.Expression, Required: a.Required, MaxLength: a.MaxLength, LengthPolicy: string(a.LengthPolicy),
		FallbackPaths: optJSON(a.FallbackPaths, len(a.FallbackPaths) == 0), ConflictPolicy: string(a.ConflictPolicy),
		RoundPlaces: a.Round}
	if a.Lookup != nil {
		r.LookupEntityMap, r.LookupNavigation = a.Lookup.EntityMap, a.Lookup.Navigation
		if a.Lookup.IsByType() || a.Lookup.TypeAttribute != "" || a.Lookup.TypeValueMap != "" || a.Lookup.OtherTypes != "" {
			r.LookupByType = optJSON(lookupByTypeColumn{ByType: a.Lookup.ByType, TypeAttribute: a.Lookup.TypeAttribute,
				TypeValueMap: a.Lookup.TypeValueMap, OtherTypes: a.Lookup.OtherTypes}, false)
		}
	}
	if a.Concept != nil {
		r.Concept = optJSON(a.Concept, false)
	}
	return r
}

func (r *attributeRow) attributeMap() (AttributeMap, error) {
	a := AttributeMap{Name: r.Name, CRMAttribute: r.CRMAttribute, CRMType: CRMType(r.CRMType), FHIRPath: r.FHIRPath,
		Direction: Direction(r.Direction), Action: Action(r.Action), Default: r.DefaultValue, ValueMap: r.ValueMap,
		Expression: r.Expression, Required: r.Required, MaxLength: r.MaxLength, LengthPolicy: LengthPolicy(r.LengthPolicy),
		ConflictPolicy: ConflictPolicy(r.ConflictPolicy), Round: r.RoundPlaces}
	if !r.Enabled {
		a.Enabled = new(false)
	}
	if r.LookupEntityMap != "" || r.LookupNavigation != "" || r.LookupByType != nil {
		a.Lookup = &Lookup{EntityMap: r.LookupEntityMap, Navigation: r.LookupNavigation}
	}
	if r.LookupByType != nil {
		var bt lookupByTypeColumn
		if err := fromJSON(r.LookupByType, &bt); err != nil {
			return a, fmt.Errorf("attribute map %q: %w", r.Name, err)
		}
		a.Lookup.ByType, a.Lookup.TypeAttribute, a.Lookup.TypeValueMap, a.Lookup.OtherTypes = bt.ByType, bt.TypeAttribute, bt.TypeValueMap, bt.OtherTypes
	}
	if err := fromJSON(r.FallbackPaths, &a.FallbackPaths); err != nil {
		return a, fmt.Errorf("attribute map %q: %w", r.Name, err)
	}
	if r.Concept != nil {
		a.Concept = &Concept{}
		if err := fromJSON(r.Concept, a.Concept); err != nil {
			return a, fmt.Errorf("attribute map %q: concept: %w", r.Name, err)
		}
	}
	return a, nil
}

// insertContent writes doc's maps as rows of version versionID.
func insertContent(tx *gorm.DB, versionID int64, doc *Document) error {
	for i := range doc.ValueMaps {
		vm := &doc.ValueMaps[i]
		row := valueMapRow{VersionID: versionID, Position: i, Name: vm.Name, Description: vm.Description, System: vm.System,
			Entries: toJSON(vm.Entries), Unmapped: string(vm.Unmapped), DefaultCRM: vm.DefaultCRM, DefaultFHIR: vm.DefaultFHIR}
		if err := tx.Create(&row).Error; err != nil {
			return fmt.Errorf("value map %q: %w", vm.Name, err)
		}
	}
	for i := range doc.EntityMaps {
		m := &doc.EntityMaps[i]
		row := entityRow{VersionID: versionID, Position: i, Name: m.Name, Description: m.Description, Enabled: m.IsEnabled(),
			CRMEntity: m.CRMEntity, CRMEntitySet: m.CRMEntitySet, CRMIDAttribute: m.CRMIDAttribute, FHIRType: m.FHIRType,
			FHIRToCRM: m.FHIRToCRM.Enabled, FHIRToCRMOperations: toJSON(m.FHIRToCRM.Operations),
			CRMToFHIR: m.CRMToFHIR.Enabled, CRMToFHIROperations: toJSON(m.CRMToFHIR.Operations),
			CorrelationCRMAttribute: m.Correlation.CRMAttribute, CorrelationFHIRSystem: m.Correlation.FHIRIdentifierSystem,
			FHIRFilter: optJSON(m.FHIRFilter, m.FHIRFilter == nil), CRMFilter: optJSON(m.CRMFilter, m.CRMFilter == nil),
			CRMGate:        optJSON(m.CRMGate, m.CRMGate == nil),
			ConflictPolicy: string(m.ConflictPolicy), DeletePolicy: string(m.DeletePolicy),
			Samples: optJSON(m.Samples, len(m.Samples) == 0), Stream: optJSON(m.Stream, m.Stream == nil),
			Signal: optJSON(m.Signal, m.Signal == nil)}
		if bk := m.Correlation.BusinessKey; bk != nil {
			row.BusinessKeyFHIRSystem, row.BusinessKeyCRMAttribute = bk.FHIRIdentifierSystem, bk.CRMAttribute
		}
		if err := tx.Create(&row).Error; err != nil {
			return fmt.Errorf("entity map %q: %w", m.Name, err)
		}
		attrs := make([]attributeRow, 0, len(m.Attributes))
		for j := range m.Attributes {
			attrs = append(attrs, attributeRowOf(versionID, row.ID, nil, j, &m.Attributes[j]))
		}
		var expansions func(xs []ExpansionMap, parent *int64) error
		expansions = func(xs []ExpansionMap, parent *int64) error {
			for j := range xs {
				x := &xs[j]
				xr := expansionRow{VersionID: versionID, EntityMapID: row.ID, Position: j, Name: x.Name, Enabled: x.IsEnabled(),
					FHIRPath: x.FHIRPath, Exclude: optJSON(x.Exclude, len(x.Exclude) == 0), Direction: string(x.Direction),
					CRMEntity: x.CRMEntity, CRMEntitySet: x.CRMEntitySet, CRMIDAttribute: x.CRMIDAttribute,
					ParentLookup: x.ParentLookup, ParentNavigation: x.ParentNavigation, MatchKey: toJSON(x.MatchKey), OnRemove: string(x.OnRemove),
					ParentExpansionID: parent}
				if err := tx.Create(&xr).Error; err != nil {
					return fmt.Errorf("expansion map %q: %w", x.Name, err)
				}
				for k := range x.Attributes {
					attrs = append(attrs, attributeRowOf(versionID, row.ID, &xr.ID, k, &x.Attributes[k]))
				}
				if err := expansions(x.Expansions, &xr.ID); err != nil {
					return err
				}
			}
			return nil
		}
		if err := expansions(m.Expansions, nil); err != nil {
			return err
		}
		if len(attrs) > 0 {
			if err := tx.CreateInBatches(attrs, 200).Error; err != nil {
				return fmt.Errorf("attribute maps of %q: %w", m.Name, err)
			}
		}
	}
	return nil
}

// loadContent reads the maps of a version back into a Document.
func loadContent(tx *gorm.DB, v *versionRow) (*Document, error) {
	doc := &Document{Format: v.Format}
	var vms []valueMapRow
	if err := tx.Where("version_id = ?", v.ID).Order("position").Find(&vms).Error; err != nil {
		return nil, err
	}
	for _, r := range vms {
		vm := ValueMap{Name: r.Name, Description: r.Description, System: r.System, Unmapped: Unmapped(r.Unmapped), DefaultCRM: r.DefaultCRM, DefaultFHIR: r.DefaultFHIR}
		if err := fromJSON(&r.Entries, &vm.Entries); err != nil {
			return nil, fmt.Errorf("value map %q: %w", r.Name, err)
		}
		doc.ValueMaps = append(doc.ValueMaps, vm)
	}
	var ems []entityRow
	if err := tx.Where("version_id = ?", v.ID).Order("position").Find(&ems).Error; err != nil {
		return nil, err
	}
	var xs []expansionRow
	if err := tx.Where("version_id = ?", v.ID).Order("entity_map_id, position").Find(&xs).Error; err != nil {
		return nil, err
	}
	var as []attributeRow
	if err := tx.Where("version_id = ?", v.ID).Order("entity_map_id, position").Find(&as).Error; err != nil {
		return nil, err
	}
	for _, r := range ems {
		m := EntityMap{Name: r.Name, Description: r.Description, CRMEntity: r.CRMEntity, CRMEntitySet: r.CRMEntitySet,
			CRMIDAttribute: r.CRMIDAttribute, FHIRType: r.FHIRType,
			FHIRToCRM: Flow{Enabled: r.FHIRToCRM}, CRMToFHIR: Flow{Enabled: r.CRMToFHIR},
			Correlation:    Correlation{CRMAttribute: r.CorrelationCRMAttribute, FHIRIdentifierSystem: r.CorrelationFHIRSystem},
			ConflictPolicy: ConflictPolicy(r.ConflictPolicy), DeletePolicy: DeletePolicy(r.DeletePolicy)}
		// Validation requires both halves of a business key, so a stored
		// one has both; either column set means the map has one.
		if r.BusinessKeyFHIRSystem != "" || r.BusinessKeyCRMAttribute != "" {
			m.Correlation.BusinessKey = &BusinessKey{FHIRIdentifierSystem: r.BusinessKeyFHIRSystem, CRMAttribute: r.BusinessKeyCRMAttribute}
		}
		if !r.Enabled {
			m.Enabled = new(false)
		}
		for _, j := range []struct {
			s *string
			v any
		}{{&r.FHIRToCRMOperations, &m.FHIRToCRM.Operations}, {&r.CRMToFHIROperations, &m.CRMToFHIR.Operations},
			{r.FHIRFilter, &m.FHIRFilter}, {r.CRMFilter, &m.CRMFilter}, {r.CRMGate, &m.CRMGate}, {r.Samples, &m.Samples}, {r.Stream, &m.Stream}, {r.Signal, &m.Signal}} {
			if err := fromJSON(j.s, j.v); err != nil {
				return nil, fmt.Errorf("entity map %q: %w", r.Name, err)
			}
		}
		for i := range as {
			if as[i].EntityMapID == r.ID && as[i].ExpansionMapID == nil {
				a, err := as[i].attributeMap()
				if err != nil {
					return nil, fmt.Errorf("entity map %q: %w", r.Name, err)
				}
				m.Attributes = append(m.Attributes, a)
			}
		}
		var expansions func(parent *int64) ([]ExpansionMap, error)
		expansions = func(parent *int64) ([]ExpansionMap, error) {
			var out []ExpansionMap
			for _, xr := range xs {
				if xr.EntityMapID != r.ID || !sameID(xr.ParentExpansionID, parent) {
					continue
				}
				x, err := xr.expansionMap(as)
				if err != nil {
					return nil, err
				}
				if x.Expansions, err = expansions(&xr.ID); err != nil {
					return nil, err
				}
				out = append(out, x)
			}
			return out, nil
		}
		var err error
		if m.Expansions, err = expansions(nil); err != nil {
			return nil, err
		}
		doc.EntityMaps = append(doc.EntityMaps, m)
	}
	return doc, nil
}

func sameID(a, b *int64) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

// expansionMap is the expansion map of xr with its attribute maps (from
// as), without its nested expansions.
func (xr *expansionRow) expansionMap(as []attributeRow) (ExpansionMap, error) {
	x := ExpansionMap{Name: xr.Name, FHIRPath: xr.FHIRPath, Direction: Direction(xr.Direction), CRMEntity: xr.CRMEntity,
		CRMEntitySet: xr.CRMEntitySet, CRMIDAttribute: xr.CRMIDAttribute, ParentLookup: xr.ParentLookup,
		ParentNavigation: xr.ParentNavigation, OnRemove: RemovePolicy(xr.OnRemove)}
	if !xr.Enabled {
		x.Enabled = new(false)
	}
	if err := fromJSON(xr.Exclude, &x.Exclude); err != nil {
		return x, fmt.Errorf("expansion map %q: %w", xr.Name, err)
	}
	if err := fromJSON(&xr.MatchKey, &x.MatchKey); err != nil {
		return x, fmt.Errorf("expansion map %q: %w", xr.Name, err)
	}
	for i := range as {
		if as[i].ExpansionMapID != nil && *as[i].ExpansionMapID == xr.ID {
			a, err := as[i].attributeMap()
			if err != nil {
				return x, fmt.Errorf("expansion map %q: %w", xr.Name, err)
			}
			x.Attributes = append(x.Attributes, a)
		}
	}
	return x, nil
}
