package maps

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

// byTypeYAML is a small map set with lookups by type: a Schedule's first
// actor (no type column) and an Appointment's participant actors (with the
// type column msemr_participantactortype). Patient and Practitioner both
// sync to contact, through different entity maps.
const byTypeYAML = `format: 1
valueMaps:
  - name: actor-type
    entries:
      - {crm: 935000000, fhir: Patient}
      - {crm: 935000001, fhir: Practitioner}
      - {crm: 935000003, fhir: Device}
      - {crm: 935000005, fhir: Location}
entityMaps:
  - name: patient-contact
    crmEntity: contact
    crmEntitySet: contacts
    fhirType: Patient
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: true, operations: [create, update]}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:fhirsync:crm:contactid"}
    attributes:
      - {name: family, crmAttribute: lastname, crmType: string, fhirPath: "name[0].family"}
  - name: practitioner-contact
    crmEntity: contact
    crmEntitySet: contacts
    fhirType: Practitioner
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: true, operations: [create, update]}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:fhirsync:crm:contactid"}
    attributes:
      - {name: family, crmAttribute: lastname, crmType: string, fhirPath: "name[0].family"}
  - name: location
    crmEntity: msemr_location
    crmEntitySet: msemr_locations
    fhirType: Location
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: true, operations: [create, update]}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:fhirsync:crm:msemr_locationid"}
    attributes:
      - {name: name, crmAttribute: msemr_name, crmType: string, fhirPath: name}
  - name: schedule
    crmEntity: msemr_schedule
    crmEntitySet: msemr_schedules
    fhirType: Schedule
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: true, operations: [create, update]}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:fhirsync:crm:msemr_scheduleid"}
    attributes:
      - name: actor
        crmType: lookup
        fhirPath: "actor[0].reference"
        action: lookup
        lookup:
          byType:
            - {type: Patient, entityMap: patient-contact, crmAttribute: msemr_actorpatient}
            - {type: Practitioner, entityMap: practitioner-contact, crmAttribute: msemr_actorpractitioner}
            - {type: Location, entityMap: location, crmAttribute: msemr_actorlocation, navigation: msemr_ActorLocation}
          otherTypes: skip
  - name: appointment
    crmEntity: msemr_appointmentemr
    crmEntitySet: msemr_appointmentemrs
    crmIdAttribute: activityid
    fhirType: Appointment
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: true, operations: [create, update]}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:fhirsync:crm:msemr_appointmentemrid"}
    attributes:
      - {name: description, crmAttribute: msemr_description, crmType: string, fhirPath: description}
    expansions:
      - name: participants
        fhirPath: participant
        crmEntity: msemr_appointmentemrparticipant
        crmEntitySet: msemr_appointmentemrparticipants
        parentLookup: msemr_appointmentemr
        matchKey: [name]
        onRemove: delete
        attributes:
          - {name: name, crmAttribute: msemr_name, crmType: string, fhirPath: actor.display}
          - name: actor
            crmType: lookup
            fhirPath: actor.reference
            action: lookup
            lookup:
              byType:
                - {type: Patient, entityMap: patient-contact, crmAttribute: msemr_actorpatient}
                - {type: Practitioner, entityMap: practitioner-contact, crmAttribute: msemr_actorphysician}
                - {type: Location, entityMap: location, crmAttribute: msemr_actorlocation}
              typeAttribute: msemr_participantactortype
              typeValueMap: actor-type
`

func byTypeSet(t *testing.T) *Set {
	t.Helper()
	_, set, err := Import([]byte(byTypeYAML), CompileOptions{})
	if err != nil {
		t.Fatalf("lookup-by-type map set: %v", err)
	}
	return set
}

// typedResolver resolves a reference only through the entity map of its
// own type, as a correlation store holds each map's records apart, and
// records which entity map each look-up went to.
type typedResolver struct {
	mu    sync.Mutex
	types map[string]string // entity map → FHIR type
	asked []string          // entity map + " " + reference
	crmTo map[string]string // CRM id → reference
}

func newTypedResolver(set *Set) *typedResolver {
	r := &typedResolver{types: map[string]string{}, crmTo: map[string]string{}}
	for _, m := range set.Maps() {
		r.types[m.Name()] = m.Def().FHIRType
	}
	return r
}

func (r *typedResolver) CRMID(_ context.Context, entityMap, ref string) (string, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked = append(r.asked, entityMap+" "+ref)
	typ, id := SplitReference(ref)
	if typ != r.types[entityMap] {
		return "", false, nil
	}
	crmID := strings.ToLower(typ) + "-" + id
	r.crmTo[crmID] = typ + "/" + id
	return crmID, true, nil
}

func (r *typedResolver) FHIRRef(_ context.Context, entityMap, crmID string) (string, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ref, ok := r.crmTo[crmID]
	if !ok || !strings.HasPrefix(ref, r.types[entityMap]+"/") {
		return "", false, nil
	}
	return ref, true, nil
}

func TestSplitReference(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ ref, typ, id string }{
		{"Patient/123", "Patient", "123"},
		{"Patient/123/_history/2", "Patient", "123"},
		{"https://example.org/fhir/Practitioner/a-1", "Practitioner", "a-1"},
		{"#pr1", "", "#pr1"},
		{"urn:uuid:8f1e3b5a-0000-4000-8000-000000000001", "", "urn:uuid:8f1e3b5a-0000-4000-8000-000000000001"},
		{"123", "", "123"},
		{"Patient/", "", "Patient/"},
		{"patient/1", "", "patient/1"},
	} {
		typ, id := SplitReference(tc.ref)
		if typ != tc.typ || id != tc.id {
			t.Errorf("SplitReference(%q) = %q, %q; want %q, %q", tc.ref, typ, id, tc.typ, tc.id)
		}
	}
}

// TestLookupByTypeToCRM: the reference's type chooses the entity map and
// the column; the other columns are cleared; the type column gets the
// type's option value; Reference.type counts and must agree with the
// reference.
func TestLookupByTypeToCRM(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	set := byTypeSet(t)
	sched, _ := set.Map("schedule")
	appt, _ := set.Map("appointment")
	tests := []struct {
		name      string
		m         *Mapping
		res       string
		want      map[string]any // record (schedule) or first child row (appointment)
		wantAsked []string
		wantErr   string
	}{
		{
			name: "a practitioner goes to its own column through practitioner-contact",
			m:    sched, res: `{"resourceType":"Schedule","actor":[{"reference":"Practitioner/dr1"}]}`,
			want: map[string]any{"msemr_actorpractitioner@odata.bind": "/contacts(practitioner-dr1)", "msemr_actorpatient@odata.bind": nil,
				"msemr_ActorLocation@odata.bind": nil},
			wantAsked: []string{"practitioner-contact Practitioner/dr1"},
		},
		{
			name: "a patient, also a contact, through patient-contact",
			m:    sched, res: `{"resourceType":"Schedule","actor":[{"reference":"Patient/p1"}]}`,
			want: map[string]any{"msemr_actorpatient@odata.bind": "/contacts(patient-p1)", "msemr_actorpractitioner@odata.bind": nil,
				"msemr_ActorLocation@odata.bind": nil},
			wantAsked: []string{"patient-contact Patient/p1"},
		},
		{
			name: "a location through its navigation property",
			m:    sched, res: `{"resourceType":"Schedule","actor":[{"reference":"Location/1"}]}`,
			want: map[string]any{"msemr_ActorLocation@odata.bind": "/msemr_locations(location-1)", "msemr_actorpatient@odata.bind": nil,
				"msemr_actorpractitioner@odata.bind": nil},
			wantAsked: []string{"location Location/1"},
		},
		{
			name: "a type the lookup skips clears every column and asks nothing",
			m:    sched, res: `{"resourceType":"Schedule","actor":[{"reference":"HealthcareService/hs1"}]}`,
			want: map[string]any{"msemr_ActorLocation@odata.bind": nil, "msemr_actorpatient@odata.bind": nil, "msemr_actorpractitioner@odata.bind": nil},
		},
		{
			name: "no actor clears every column",
			m:    sched, res: `{"resourceType":"Schedule"}`,
			want: map[string]any{"msemr_ActorLocation@odata.bind": nil, "msemr_actorpatient@odata.bind": nil, "msemr_actorpractitioner@odata.bind": nil},
		},
		{
			name: "the type column gets the type's option value",
			m:    appt, res: `{"resourceType":"Appointment","participant":[{"actor":{"reference":"Location/1","display":"South Wing"}}]}`,
			want: map[string]any{"msemr_actorlocation@odata.bind": "/msemr_locations(location-1)", "msemr_actorpatient@odata.bind": nil,
				"msemr_actorphysician@odata.bind": nil, "msemr_participantactortype": 935000005, "msemr_name": "South Wing"},
			wantAsked: []string{"location Location/1"},
		},
		{
			name: "Reference.type agreeing with the reference",
			m:    appt, res: `{"resourceType":"Appointment","participant":[{"actor":{"type":"Patient","reference":"Patient/p1","display":"P"}}]}`,
			want:      map[string]any{"msemr_actorpatient@odata.bind": "/contacts(patient-p1)", "msemr_participantactortype": 935000000},
			wantAsked: []string{"patient-contact Patient/p1"},
		},
		{
			name: "Reference.type contradicting the reference",
			m:    appt, res: `{"resourceType":"Appointment","participant":[{"actor":{"type":"Patient","reference":"Practitioner/dr1","display":"P"}}]}`,
			wantErr: `attribute map "actor": the reference's Reference.type Patient and the type in its reference, Practitioner, differ`,
		},
		{
			name: "a type the lookup does not list is a mapping error naming the types, not the id",
			m:    appt, res: `{"resourceType":"Appointment","participant":[{"actor":{"reference":"Device/secret-id-7","display":"D"}}]}`,
			wantErr: `expansion map "participants" / attribute map "actor": the reference is to a Device, which this lookup by type does not map (it maps Patient, Practitioner, Location)`,
		},
		{
			name: "a reference that names no type",
			m:    appt, res: `{"resourceType":"Appointment","participant":[{"actor":{"reference":"#contained1","display":"C"}}]}`,
			wantErr: "the reference names no resource type, and a lookup by type needs one",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newTypedResolver(set)
			out, err := tc.m.ToCRM(ctx, obj(t, tc.res), nil, r)
			if tc.wantErr != "" {
				var me *MappingError
				if !errors.As(err, &me) || me.Attribute != "actor" || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want a mapping error on actor containing %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "secret-id-7") {
					t.Errorf("the error names the reference's id: %v", err)
				}
				if len(r.asked) != 0 {
					t.Errorf("looked up %v for a reference it cannot map", r.asked)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			rec := out.Record
			if tc.m == appt {
				rec = out.Children[0].Record
			}
			for k, v := range tc.want {
				if got, ok := rec[k]; !ok || got != v {
					t.Errorf("%s = %v (set %v), want %v", k, got, ok, v)
				}
			}
			if !slices.Equal(r.asked, tc.wantAsked) {
				t.Errorf("looked up %v, want %v", r.asked, tc.wantAsked)
			}
		})
	}
}

// TestLookupByTypeToFHIR: write-back rebuilds the reference from the one
// column that is set, keeps a reference of a skipped type when no column
// is set, and refuses a record with several columns set.
func TestLookupByTypeToFHIR(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	set := byTypeSet(t)
	sched, _ := set.Map("schedule")
	r := newTypedResolver(set)
	r.crmTo["practitioner-dr1"] = "Practitioner/dr1"
	r.crmTo["location-1"] = "Location/1"
	tests := []struct {
		name, base string
		rec        map[string]any
		want       any // actor[0].reference; nil: absent
		// wantActor is actor[0] when set; wantNoActor, that there is none.
		wantActor   map[string]any
		wantNoActor bool
		wantErr     string
	}{
		{name: "the practitioner column", rec: map[string]any{"_msemr_actorpractitioner_value": "practitioner-dr1"}, want: "Practitioner/dr1"},
		{name: "the location column, written as bound", rec: map[string]any{"msemr_ActorLocation@odata.bind": "/msemr_locations(location-1)"}, want: "Location/1"},
		{name: "no column set removes a reference of a listed type", base: `{"resourceType":"Schedule","actor":[{"reference":"Patient/p1"}]}`,
			rec: map[string]any{}, want: nil},
		{name: "no column set keeps a reference of a skipped type", base: `{"resourceType":"Schedule","actor":[{"reference":"HealthcareService/hs1"}]}`,
			rec: map[string]any{}, want: "HealthcareService/hs1"},
		{name: "no column set removes the reference and its Reference.type", base: `{"resourceType":"Schedule","actor":[{"type":"Patient","reference":"Patient/p1","display":"Pat"}]}`,
			rec: map[string]any{}, want: nil, wantActor: map[string]any{"display": "Pat"}},
		{name: "no column set removes a typed reference that held nothing else", base: `{"resourceType":"Schedule","active":true,"actor":[{"type":"Practitioner","reference":"Practitioner/dr1"}]}`,
			rec: map[string]any{}, want: nil, wantNoActor: true},
		{name: "a stale Reference.type follows the new reference", base: `{"resourceType":"Schedule","actor":[{"type":"Patient","reference":"Patient/p1"}]}`,
			rec: map[string]any{"_msemr_actorpractitioner_value": "practitioner-dr1"}, want: "Practitioner/dr1"},
		{name: "two columns set", rec: map[string]any{"_msemr_actorpractitioner_value": "practitioner-dr1", "_msemr_actorlocation_value": "location-1"},
			wantErr: "lookup columns msemr_actorpractitioner, msemr_actorlocation are all set; a reference names one record"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var base map[string]any
			if tc.base != "" {
				base = obj(t, tc.base)
			}
			out, err := sched.ToFHIR(ctx, CRMState{Record: tc.rec}, base, r)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), `attribute map "actor"`) {
					t.Fatalf("error = %v, want %q on attribute map actor", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, _ := sched.attrs[0].path.Get(out.Resource)
			if got != tc.want {
				t.Fatalf("actor[0].reference = %v, want %v", got, tc.want)
			}
			actors, hasActor := out.Resource["actor"].([]any)
			if tc.wantNoActor && hasActor {
				t.Errorf("actor = %v, want none", out.Resource["actor"])
			}
			if tc.wantActor != nil && (len(actors) == 0 || !reflect.DeepEqual(actors[0], tc.wantActor)) {
				t.Errorf("actor = %v, want [%v]", out.Resource["actor"], tc.wantActor)
			}
			if tc.name == "a stale Reference.type follows the new reference" {
				if typ, _ := sched.attrs[0].refType.Get(out.Resource); typ != "Practitioner" {
					t.Errorf("actor[0].type = %v, want Practitioner", typ)
				}
			}
		})
	}
}

// TestLookupByTypeRoundTrip: an appointment with a patient, a practitioner
// and a location maps to rows with one column each and comes back the
// same; mapped again against those rows, nothing changes.
func TestLookupByTypeRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	set := byTypeSet(t)
	appt, _ := set.Map("appointment")
	r := newTypedResolver(set)
	res := func() map[string]any {
		return obj(t, `{"resourceType":"Appointment","id":"a1","participant":[
			{"actor":{"reference":"Patient/p1","display":"Pat"}},
			{"actor":{"reference":"Practitioner/dr1","display":"Doc"}},
			{"actor":{"reference":"Location/1","display":"Room"}}]}`)
	}
	loss, err := roundTripHL7(ctx, appt, res, r)
	if err != nil || loss != "" {
		t.Fatalf("round trip: loss %q, error %v", loss, err)
	}
	if sel := appt.ChildQueries()[0].Select; !slices.Contains(sel, "_msemr_actorphysician_value") || !slices.Contains(sel, "msemr_participantactortype") {
		t.Errorf("child rows are read with %v, which misses the lookup-by-type columns", sel)
	}
}

// TestLookupChecksTheReferenceType: a lookup through one entity map given
// a reference of another type fails with a mapping error naming the
// attribute map and both types, and looks nothing up.
func TestLookupChecksTheReferenceType(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m, ok := loadStarter(t).Map("care-team")
	if !ok {
		t.Fatal("no care-team map")
	}
	r := newFakeResolver()
	_, err := m.ToCRM(ctx, obj(t, `{"resourceType":"CareTeam","id":"ct1","subject":{"reference":"Group/g-secret-1"}}`), nil, r)
	var me *MappingError
	if !errors.As(err, &me) || me.Attribute != "patient" || !errors.Is(err, ErrReferenceType) {
		t.Fatalf("error = %v, want a reference type mismatch on attribute map patient", err)
	}
	want := `attribute map "patient": the reference is to a Group, but the lookup's entity map "patient-contact" syncs Patient`
	if !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "g-secret-1") {
		t.Errorf("error = %q, want it to contain %q and no id", err, want)
	}
	if r.calls != 0 {
		t.Errorf("%d look-ups made for a Group reference, want none", r.calls)
	}
	// Reference.type is read too: a typed logical reference to a Group.
	_, err = m.ToCRM(ctx, obj(t, `{"resourceType":"CareTeam","id":"ct1","subject":{"type":"Group","reference":"urn:uuid:0b7f5f5e-0000-4000-8000-000000000001"}}`), nil, r)
	if !errors.Is(err, ErrReferenceType) {
		t.Errorf("a reference typed Group by Reference.type: error = %v, want a reference type mismatch", err)
	}
}

// TestLookupByTypeValidation: every mistake in a lookup by type is named
// where it is.
func TestLookupByTypeValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, from, to, want string
	}{
		{"an entity map of another type", "{type: Practitioner, entityMap: practitioner-contact, crmAttribute: msemr_actorpractitioner}",
			"{type: Practitioner, entityMap: patient-contact, crmAttribute: msemr_actorpractitioner}",
			`lookup.byType[1].entityMap: entity map "patient-contact" syncs Patient, not Practitioner`},
		{"a type listed twice", "{type: Practitioner, entityMap: practitioner-contact, crmAttribute: msemr_actorpractitioner}",
			"{type: Patient, entityMap: patient-contact, crmAttribute: msemr_actorpractitioner}", "type Patient is listed twice"},
		{"a column listed twice", "{type: Practitioner, entityMap: practitioner-contact, crmAttribute: msemr_actorpractitioner}",
			"{type: Practitioner, entityMap: practitioner-contact, crmAttribute: msemr_actorpatient}", "column msemr_actorpatient is listed twice"},
		{"an unknown type", "{type: Practitioner, entityMap: practitioner-contact, crmAttribute: msemr_actorpractitioner}",
			"{type: Practicioner, entityMap: practitioner-contact, crmAttribute: msemr_actorpractitioner}", `unknown FHIR R4 resource type "Practicioner"`},
		{"an unknown entity map", "{type: Practitioner, entityMap: practitioner-contact, crmAttribute: msemr_actorpractitioner}",
			"{type: Practitioner, entityMap: practitioner-contacts, crmAttribute: msemr_actorpractitioner}", `unknown entity map "practitioner-contacts"`},
		{"a crmAttribute beside byType", "      - name: actor\n        crmType: lookup\n        fhirPath: \"actor[0].reference\"",
			"      - name: actor\n        crmAttribute: msemr_actorpatient\n        crmType: lookup\n        fhirPath: \"actor[0].reference\"",
			"a lookup by type names its columns in lookup.byType; leave crmAttribute empty"},
		{"a navigation property listed twice", "{type: Practitioner, entityMap: practitioner-contact, crmAttribute: msemr_actorpractitioner}",
			"{type: Practitioner, entityMap: practitioner-contact, crmAttribute: msemr_actorpractitioner, navigation: msemr_actorpatient}",
			"navigation property msemr_actorpatient is listed twice"},
		{"an unknown policy", "otherTypes: skip", "otherTypes: ignore", `lookup.otherTypes must be error or skip, got "ignore"`},
		{"a type column without its value map", "              typeValueMap: actor-type\n", "",
			"lookup.typeAttribute and lookup.typeValueMap go together"},
		{"a value map without a listed type", "      - {crm: 935000005, fhir: Location}\n", "",
			`value map "actor-type" has no option value for Location`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			text := strings.Replace(byTypeYAML, tc.from, tc.to, 1)
			if text == byTypeYAML {
				t.Fatalf("the edit %q found nothing to replace", tc.from)
			}
			_, _, err := Import([]byte(text), CompileOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestLookupByTypeExportImport: YAML export keeps a lookup by type, and
// reading it back gives the same document.
func TestLookupByTypeExportImport(t *testing.T) {
	t.Parallel()
	doc, err := Parse([]byte(byTypeYAML))
	if err != nil {
		t.Fatal(err)
	}
	out, err := Export(doc)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"byType:", "typeAttribute: msemr_participantactortype", "typeValueMap: actor-type", "otherTypes: skip",
		"navigation: msemr_ActorLocation", "entityMap: practitioner-contact"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("export lacks %q", want)
		}
	}
	back, err := Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Export(back)
	if string(again) != string(out) {
		t.Errorf("export → import → export differs:\n%s\n---\n%s", out, again)
	}
	l := back.EntityMaps[3].Attributes[0].Lookup
	if len(l.ByType) != 3 || l.ByType[2] != (LookupTarget{Type: "Location", EntityMap: "location", CRMAttribute: "msemr_actorlocation", Navigation: "msemr_ActorLocation"}) {
		t.Errorf("the schedule's lookup read back = %+v", l)
	}
}

// TestLookupByTypeFieldsOnAPlainLookup: typeAttribute, typeValueMap and
// otherTypes on a lookup through one entity map are refused, not ignored.
func TestLookupByTypeFieldsOnAPlainLookup(t *testing.T) {
	t.Parallel()
	plain := "      - {name: description, crmAttribute: msemr_description, crmType: string, fhirPath: description}\n" +
		"      - {name: first-patient, crmAttribute: msemr_patient, crmType: lookup, fhirPath: \"participant[0].actor.reference\", action: lookup, lookup: {entityMap: patient-contact%s}}"
	if _, _, err := Import([]byte(strings.Replace(byTypeYAML, "      - {name: description, crmAttribute: msemr_description, crmType: string, fhirPath: description}", fmt.Sprintf(plain, ""), 1)), CompileOptions{}); err != nil {
		t.Fatalf("the plain lookup alone: %v", err)
	}
	for _, extra := range []string{
		", typeAttribute: msemr_participantactortype, typeValueMap: actor-type",
		", otherTypes: skip",
	} {
		text := strings.Replace(byTypeYAML, "      - {name: description, crmAttribute: msemr_description, crmType: string, fhirPath: description}", fmt.Sprintf(plain, extra), 1)
		_, _, err := Import([]byte(text), CompileOptions{})
		if err == nil || !strings.Contains(err.Error(), "is only used by a lookup by type") {
			t.Errorf("lookup {entityMap: patient-contact%s}: error = %v, want the field refused", extra, err)
		}
	}
}

// TestLookupByTypeContainedReference: a reference to a contained resource
// ("#loc1") names no record of an entity map, even with a Reference.type
// of a listed type: with otherTypes skip it sets no column and asks
// nothing FHIR→CRM, and write-back keeps it; with otherTypes error it is a
// mapping error before any look-up.
func TestLookupByTypeContainedReference(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	set := byTypeSet(t)
	sched, _ := set.Map("schedule")
	appt, _ := set.Map("appointment")
	res := `{"resourceType":"Schedule","contained":[{"resourceType":"Location","id":"loc1","name":"Van"}],"actor":[{"reference":"#loc1","type":"Location"}]}`

	r := newTypedResolver(set)
	out, err := sched.ToCRM(ctx, obj(t, res), nil, r)
	if err != nil {
		t.Fatalf("ToCRM: %v", err)
	}
	for _, k := range []string{"msemr_actorpatient@odata.bind", "msemr_actorpractitioner@odata.bind", "msemr_ActorLocation@odata.bind"} {
		if v, ok := out.Record[k]; !ok || v != nil {
			t.Errorf("%s = %v (set %v), want cleared", k, v, ok)
		}
	}
	if len(r.asked) != 0 {
		t.Errorf("looked up %v for a contained reference", r.asked)
	}

	back, err := sched.ToFHIR(ctx, CRMState{Record: map[string]any{}}, obj(t, res), r)
	if err != nil {
		t.Fatalf("ToFHIR: %v", err)
	}
	if got, _ := sched.attrs[0].path.Get(back.Resource); got != "#loc1" {
		t.Errorf("write-back: actor[0].reference = %v, want #loc1 kept", got)
	}

	_, err = appt.ToCRM(ctx, obj(t, `{"resourceType":"Appointment","participant":[{"actor":{"reference":"#p1","type":"Patient","display":"P"}}]}`), nil, r)
	if err == nil || !strings.Contains(err.Error(), "contained resource") || len(r.asked) != 0 {
		t.Errorf("otherTypes error: %v (asked %v), want a mapping error about the contained resource and no look-up", err, r.asked)
	}
}
