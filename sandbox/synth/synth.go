package synth

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/google/uuid"
)

// Identifier systems used by the generated resources.
const (
	// MRNSystem is the system of generated medical record numbers.
	MRNSystem = "urn:oid:2.16.840.1.113883.19.5.99999.1"
	// SSNSystem is the system of generated (invalid, 999-prefixed) US SSNs.
	SSNSystem = "http://hl7.org/fhir/sid/us-ssn"
	// PassportSystem is the system of generated passport numbers.
	PassportSystem = "urn:oid:2.16.840.1.113883.4.330.840"
	// NPISystem is the system of generated practitioner NPIs.
	NPISystem = "http://hl7.org/fhir/sid/us-npi"
	// WeightExtension is a custom extension carrying a decimal body weight.
	WeightExtension = "http://example.org/fhir/StructureDefinition/registration-weight"
	// BirthTimeExtension is the core extension on Patient._birthDate.
	BirthTimeExtension = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
)

// Generator produces deterministic synthetic records. Its zero value is not
// usable; create one with New. Counts used for cross-references can be
// changed before use.
type Generator struct {
	seed int64
	// Patients is how many patients encounters and observations refer to.
	Patients int
	// Practitioners is how many practitioners patients and encounters refer to.
	Practitioners int
	// Organizations is how many organizations resources refer to.
	Organizations int
}

// New returns a generator for seed with default reference counts
// (1,000 patients, 50 practitioners, 20 organizations).
func New(seed int64) *Generator {
	return &Generator{seed: seed, Patients: 1000, Practitioners: 50, Organizations: 20}
}

// Seed returns the generator's seed.
func (g *Generator) Seed() int64 { return g.seed }

// kinds keep the random streams of different record types apart.
const (
	kindPatient = iota + 1
	kindPractitioner
	kindOrganization
	kindEncounter
	kindObservation
	kindContact
	kindAccount
)

func (g *Generator) rng(kind, i int) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(g.seed), uint64(kind)<<48^uint64(i)))
}

// PatientID is the resource id of patient i.
func PatientID(i int) string { return fmt.Sprintf("pat-%06d", i) }

// PractitionerID is the resource id of practitioner i.
func PractitionerID(i int) string { return fmt.Sprintf("prac-%04d", i) }

// OrganizationID is the resource id of organization i.
func OrganizationID(i int) string { return fmt.Sprintf("org-%04d", i) }

// EncounterID is the resource id of encounter i.
func EncounterID(i int) string { return fmt.Sprintf("enc-%06d", i) }

// ObservationID is the resource id of observation i.
func ObservationID(i int) string { return fmt.Sprintf("obs-%06d", i) }

var crmNamespace = uuid.MustParse("7d0c1f0e-5b8e-4c7a-9a52-0f3f4c1c2d11")

// ContactID is the CRM contactid (a GUID) of contact i for this seed.
func (g *Generator) ContactID(i int) string {
	return uuid.NewSHA1(crmNamespace, fmt.Appendf(nil, "contact/%d/%d", g.seed, i)).String()
}

// AccountID is the CRM accountid (a GUID) of account i for this seed.
func (g *Generator) AccountID(i int) string {
	return uuid.NewSHA1(crmNamespace, fmt.Appendf(nil, "account/%d/%d", g.seed, i)).String()
}

var (
	givenFemale = []string{"Anna", "María", "Zoë", "Chloé", "Aoife", "Siobhán", "Ingrid", "Björk", "Amélie", "Fatima", "Yuki", "Olga", "Grace", "Emily", "Þórunn", "Łucja", "Nguyệt", "Sarah", "Leilani", "Ayşe"}
	givenMale   = []string{"John", "José", "Jürgen", "Łukasz", "Søren", "Ahmed", "Kenji", "Pierre", "Noah", "Liam", "Mateo", "Dmitri", "Ólafur", "Oisín", "Thomas", "Raúl", "Wei", "Kwame", "Björn", "Ömer"}
	family      = []string{"Smith", "Müller", "García", "Nguyễn", "O'Brien", "Kowalski", "Jónsdóttir", "Dubois", "Rossi", "Øvergaard", "Fernández", "Tanaka", "Ivanova", "Brown", "van der Berg", "Şahin", "Ní Bhriain", "Johnson", "Δημητρίου", "Lefèvre"}
	streets     = []string{"Main Street", "Rue de la Paix", "Königstraße", "Calle Mayor", "Elm Avenue", "Høgdaveien", "Via Roma", "Ulica Długa", "Station Road", "Oak Lane"}
	cities      = []string{"Springfield", "Zürich", "München", "São Paulo", "Kraków", "Reykjavík", "Montréal", "Århus", "Dublin", "Seattle"}
	states      = []string{"WA", "OR", "CA", "NY", "TX", "MA", "IL", "ZH", "BY", "QC"}
	countries   = []string{"US", "US", "US", "CH", "DE", "BR", "PL", "IS", "CA", "DK"}
	langs       = []string{"en-US", "es", "de", "fr", "pl", "is", "ja", "vi", "pt-BR", "tr"}
	marital     = []struct{ code, display string }{{"M", "Married"}, {"S", "Never Married"}, {"D", "Divorced"}, {"W", "Widowed"}, {"U", "unmarried"}}
	genders     = []string{"female", "male", "female", "male", "other", "unknown"}
	orgNames    = []string{"Northwind Clinic", "Contoso Hospital", "Fabrikam Health", "Clínica São Lucas", "Universitätsklinikum Süd", "Hôpital Saint-Éloi", "Lakeside Family Practice", "Adatum Medical Group"}
	specialties = []struct{ code, display string }{{"394814009", "General practice"}, {"394579002", "Cardiology"}, {"394582007", "Dermatology"}, {"394537008", "Pediatric specialty"}}
	vitals      = []struct {
		code, display, unit, ucum string
		lo, hi                    int // value range in hundredths
		scale                     int
	}{
		{"8867-4", "Heart rate", "beats/minute", "/min", 4500, 14000, 0},
		{"29463-7", "Body weight", "kg", "kg", 300000, 1400000, 2},
		{"8310-5", "Body temperature", "Cel", "Cel", 35500, 40500, 1},
		{"8302-2", "Body height", "cm", "cm", 4500000, 20500000, 1},
		{"59408-5", "Oxygen saturation", "%", "%", 8500, 10000, 0},
	}
)

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

func chance(r *rand.Rand, p float64) bool { return r.Float64() < p }

func digits(r *rand.Rand, n int) string {
	var b strings.Builder
	for range n {
		b.WriteByte(byte('0' + r.IntN(10)))
	}
	return b.String()
}

// decimal renders hundredths-scaled v with the given number of fraction
// digits, keeping trailing zeros so that text fidelity can be tested.
func decimal(v, scale int) json.Number {
	whole, frac := v/100, v%100
	switch scale {
	case 0:
		return json.Number(fmt.Sprint(whole))
	case 1:
		return json.Number(fmt.Sprintf("%d.%d", whole, frac/10))
	default:
		return json.Number(fmt.Sprintf("%d.%02d", whole, frac))
	}
}

func date(r *rand.Rand, fromYear, toYear int) string {
	return fmt.Sprintf("%04d-%02d-%02d", fromYear+r.IntN(toYear-fromYear+1), 1+r.IntN(12), 1+r.IntN(28))
}

func dateTime(r *rand.Rand, year int) string {
	offsets := []string{"Z", "+01:00", "-05:00", "+05:30", "Z"}
	return fmt.Sprintf("%04d-%02d-%02dT%02d:%02d:%02d%s", year, 1+r.IntN(12), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60), pick(r, offsets))
}

func meta(r *rand.Rand) map[string]any {
	return map[string]any{"versionId": fmt.Sprint(1 + r.IntN(5)), "lastUpdated": fmt.Sprintf("2026-%02d-%02dT%02d:%02d:%02d.%03dZ", 1+r.IntN(10), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60), r.IntN(1000))}
}

func address(r *rand.Rand, use string) map[string]any {
	k := r.IntN(len(cities))
	a := map[string]any{
		"use":  use,
		"type": pick(r, []string{"both", "physical", "postal"}),
		"line": []any{fmt.Sprintf("%d %s", 1+r.IntN(999), pick(r, streets))},
		"city": cities[k],
	}
	if chance(r, 0.4) {
		a["line"] = append(a["line"].([]any), fmt.Sprintf("Apt %d", 1+r.IntN(120)))
	}
	if chance(r, 0.9) {
		a["state"] = states[k]
	}
	if chance(r, 0.95) {
		a["postalCode"] = digits(r, 5)
	}
	if chance(r, 0.8) {
		a["country"] = countries[k]
	}
	if chance(r, 0.1) {
		a["period"] = map[string]any{"start": date(r, 2000, 2020)}
	}
	return a
}

func humanName(r *rand.Rand, female bool) (given []any, fam string) {
	pool := givenMale
	if female {
		pool = givenFemale
	}
	given = []any{pick(r, pool)}
	if chance(r, 0.35) {
		given = append(given, pick(r, pool))
	}
	return given, pick(r, family)
}

// Patient returns synthetic Patient i.
func (g *Generator) Patient(i int) map[string]any {
	r := g.rng(kindPatient, i)
	gender := pick(r, genders)
	female := gender == "female" || (gender != "male" && chance(r, 0.5))
	p := map[string]any{
		"resourceType": "Patient",
		"id":           PatientID(i),
		"meta":         meta(r),
	}
	if chance(r, 0.7) {
		p["active"] = !chance(r, 0.1)
	}

	ids := []any{map[string]any{
		"use":    "usual",
		"type":   map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR", "display": "Medical record number"}}, "text": "MRN"},
		"system": MRNSystem,
		"value":  "MRN" + digits(r, 8),
	}}
	if chance(r, 0.5) {
		ids = append(ids, map[string]any{
			"use":    "official",
			"type":   map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}}},
			"system": SSNSystem,
			"value":  "999-" + digits(r, 2) + "-" + digits(r, 4),
		})
	}
	if chance(r, 0.15) {
		ids = append(ids, map[string]any{
			"type":   map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PPN"}}},
			"system": PassportSystem,
			"value":  strings.ToUpper(fmt.Sprintf("%c%c", 'A'+rune(r.IntN(26)), 'A'+rune(r.IntN(26)))) + digits(r, 7),
			"period": map[string]any{"start": date(r, 2015, 2024), "end": date(r, 2025, 2034)},
		})
	}
	p["identifier"] = ids

	if chance(r, 0.97) {
		given, fam := humanName(r, female)
		official := map[string]any{"use": "official", "family": fam, "given": given}
		if chance(r, 0.2) {
			official["prefix"] = []any{pick(r, []string{"Dr.", "Mx.", "Ms.", "Mr.", "Prof."})}
		}
		if chance(r, 0.05) {
			official["suffix"] = []any{pick(r, []string{"Jr.", "III", "PhD"})}
		}
		names := []any{official}
		if chance(r, 0.25) {
			names = append(names, map[string]any{"use": "nickname", "given": []any{pick(r, []string{"Bob", "Lulu", "Mimi", "Jo", "Sasha", "Kiki"})}})
		}
		if female && chance(r, 0.2) {
			names = append(names, map[string]any{"use": "maiden", "family": pick(r, family), "period": map[string]any{"end": date(r, 1990, 2020)}})
		}
		p["name"] = names
	}

	var telecom []any
	if chance(r, 0.8) {
		telecom = append(telecom, map[string]any{"system": "phone", "value": "+1-555-" + digits(r, 3) + "-" + digits(r, 4), "use": "home"})
	}
	if chance(r, 0.6) {
		telecom = append(telecom, map[string]any{"system": "phone", "value": "+1 (555) " + digits(r, 3) + " " + digits(r, 4), "use": "mobile", "rank": json.Number("1")})
	}
	if chance(r, 0.25) {
		telecom = append(telecom, map[string]any{"system": "phone", "value": "555" + digits(r, 7), "use": "work"})
	}
	if chance(r, 0.7) {
		telecom = append(telecom, map[string]any{"system": "email", "value": fmt.Sprintf("patient%d.%s@example.org", i, digits(r, 3)), "use": "home"})
	}
	if chance(r, 0.05) {
		telecom = append(telecom, map[string]any{"system": "fax", "value": "555" + digits(r, 7)})
	}
	if telecom != nil {
		p["telecom"] = telecom
	}
	if chance(r, 0.95) {
		p["gender"] = gender
	}
	if chance(r, 0.93) {
		p["birthDate"] = date(r, 1930, 2024)
		if chance(r, 0.1) {
			p["_birthDate"] = map[string]any{"extension": []any{map[string]any{"url": BirthTimeExtension, "valueDateTime": p["birthDate"].(string) + "T06:30:00+01:00"}}}
		}
	}
	if chance(r, 0.03) {
		p["deceasedDateTime"] = dateTime(r, 2025)
	} else if chance(r, 0.3) {
		p["deceasedBoolean"] = false
	}
	if chance(r, 0.9) {
		addrs := []any{address(r, "home")}
		if chance(r, 0.2) {
			addrs = append(addrs, address(r, "work"))
		}
		p["address"] = addrs
	}
	if chance(r, 0.75) {
		m := pick(r, marital)
		p["maritalStatus"] = map[string]any{
			"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": m.code, "display": m.display}},
			"text":   m.display,
		}
	}
	if chance(r, 0.8) {
		p["communication"] = []any{map[string]any{
			"language":  map[string]any{"coding": []any{map[string]any{"system": "urn:ietf:bcp:47", "code": pick(r, langs)}}},
			"preferred": true,
		}}
	}
	if chance(r, 0.7) {
		p["generalPractitioner"] = []any{map[string]any{"reference": "Practitioner/" + PractitionerID(r.IntN(max(g.Practitioners, 1)))}}
	}
	if chance(r, 0.6) {
		p["managingOrganization"] = map[string]any{"reference": "Organization/" + OrganizationID(r.IntN(max(g.Organizations, 1))), "display": pick(r, orgNames)}
	}
	var ext []any
	if chance(r, 0.4) {
		ext = append(ext, map[string]any{"url": WeightExtension, "valueDecimal": decimal(300000+r.IntN(1000000), 2)})
	}
	if chance(r, 0.3) {
		ext = append(ext, map[string]any{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": map[string]any{"city": pick(r, cities), "country": pick(r, countries)}})
	}
	if chance(r, 0.2) {
		ext = append(ext, map[string]any{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": pick(r, []string{"F", "M", "UNK"})})
	}
	if ext != nil {
		p["extension"] = ext
	}
	if chance(r, 0.15) {
		p["contained"] = []any{map[string]any{"resourceType": "Organization", "id": "emp1", "name": pick(r, orgNames)}}
		given, fam := humanName(r, chance(r, 0.5))
		p["contact"] = []any{map[string]any{
			"relationship": []any{map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "E"}}}},
			"name":         map[string]any{"family": fam, "given": given},
			"organization": map[string]any{"reference": "#emp1"},
		}}
	}
	return p
}

// Practitioner returns synthetic Practitioner i.
func (g *Generator) Practitioner(i int) map[string]any {
	r := g.rng(kindPractitioner, i)
	female := chance(r, 0.5)
	given, fam := humanName(r, female)
	p := map[string]any{
		"resourceType": "Practitioner",
		"id":           PractitionerID(i),
		"meta":         meta(r),
		"active":       true,
		"identifier":   []any{map[string]any{"system": NPISystem, "value": "9" + digits(r, 9)}},
		"name":         []any{map[string]any{"use": "official", "family": fam, "given": given, "prefix": []any{"Dr."}}},
		"telecom": []any{
			map[string]any{"system": "phone", "value": "+1-555-" + digits(r, 3) + "-" + digits(r, 4), "use": "work"},
			map[string]any{"system": "email", "value": fmt.Sprintf("dr.%d@example.org", i), "use": "work"},
		},
		"address": []any{address(r, "work")},
	}
	if female {
		p["gender"] = "female"
	} else {
		p["gender"] = "male"
	}
	if chance(r, 0.7) {
		p["birthDate"] = date(r, 1950, 1995)
	}
	s := pick(r, specialties)
	p["qualification"] = []any{map[string]any{"code": map[string]any{"coding": []any{map[string]any{"system": "http://snomed.info/sct", "code": s.code, "display": s.display}}}}}
	return p
}

// Organization returns synthetic Organization i.
func (g *Generator) Organization(i int) map[string]any {
	r := g.rng(kindOrganization, i)
	o := map[string]any{
		"resourceType": "Organization",
		"id":           OrganizationID(i),
		"meta":         meta(r),
		"active":       true,
		"identifier":   []any{map[string]any{"system": NPISystem, "value": "1" + digits(r, 9)}},
		"type":         []any{map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov", "display": "Healthcare Provider"}}}},
		"name":         fmt.Sprintf("%s %d", orgNames[i%len(orgNames)], i),
		"telecom": []any{
			map[string]any{"system": "phone", "value": "+1-555-" + digits(r, 3) + "-" + digits(r, 4), "use": "work"},
			map[string]any{"system": "url", "value": fmt.Sprintf("https://org%d.example.org", i)},
		},
		"address": []any{address(r, "work")},
	}
	if chance(r, 0.5) {
		o["alias"] = []any{strings.ToUpper(orgNames[i%len(orgNames)][:3])}
	}
	if i > 0 && chance(r, 0.3) {
		o["partOf"] = map[string]any{"reference": "Organization/" + OrganizationID(r.IntN(i))}
	}
	return o
}

// Encounter returns synthetic Encounter i; it refers to a patient,
// a practitioner and an organization of this generator.
func (g *Generator) Encounter(i int) map[string]any {
	r := g.rng(kindEncounter, i)
	classes := []struct{ code, display string }{{"AMB", "ambulatory"}, {"IMP", "inpatient encounter"}, {"EMER", "emergency"}, {"VR", "virtual"}}
	c := pick(r, classes)
	year := 2020 + r.IntN(6)
	start := dateTime(r, year)
	e := map[string]any{
		"resourceType": "Encounter",
		"id":           EncounterID(i),
		"meta":         meta(r),
		"status":       pick(r, []string{"finished", "finished", "in-progress", "planned", "cancelled"}),
		"class":        map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": c.code, "display": c.display},
		"subject":      map[string]any{"reference": "Patient/" + PatientID(r.IntN(max(g.Patients, 1)))},
		"participant": []any{map[string]any{
			"type":       []any{map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PPRF"}}}},
			"individual": map[string]any{"reference": "Practitioner/" + PractitionerID(r.IntN(max(g.Practitioners, 1)))},
		}},
		"serviceProvider": map[string]any{"reference": "Organization/" + OrganizationID(r.IntN(max(g.Organizations, 1)))},
		"identifier":      []any{map[string]any{"system": "urn:oid:2.16.840.1.113883.19.5.99999.2", "value": "V" + digits(r, 9)}},
	}
	period := map[string]any{"start": start}
	if e["status"] == "finished" {
		period["end"] = fmt.Sprintf("%04d-12-31T23:59:00Z", year)
	}
	e["period"] = period
	if chance(r, 0.5) {
		e["reasonCode"] = []any{map[string]any{"text": pick(r, []string{"Routine check-up", "Chest pain", "Fiebre y tos", "Kopfschmerzen", "Follow-up"})}}
	}
	if chance(r, 0.3) {
		e["length"] = map[string]any{"value": decimal(1500+r.IntN(20000), 1), "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}
	}
	return e
}

// Observation returns synthetic vital-sign Observation i.
func (g *Generator) Observation(i int) map[string]any {
	r := g.rng(kindObservation, i)
	v := vitals[r.IntN(len(vitals))]
	o := map[string]any{
		"resourceType": "Observation",
		"id":           ObservationID(i),
		"meta":         meta(r),
		"status":       pick(r, []string{"final", "final", "amended", "preliminary"}),
		"category": []any{map[string]any{"coding": []any{map[string]any{
			"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}}}},
		"code":              map[string]any{"coding": []any{map[string]any{"system": "http://loinc.org", "code": v.code, "display": v.display}}, "text": v.display},
		"subject":           map[string]any{"reference": "Patient/" + PatientID(r.IntN(max(g.Patients, 1)))},
		"effectiveDateTime": dateTime(r, 2020+r.IntN(6)),
		"valueQuantity": map[string]any{
			"value":  decimal(v.lo+r.IntN(v.hi-v.lo), v.scale),
			"unit":   v.unit,
			"system": "http://unitsofmeasure.org",
			"code":   v.ucum,
		},
	}
	if chance(r, 0.5) {
		o["encounter"] = map[string]any{"reference": "Encounter/" + EncounterID(r.IntN(max(g.Patients, 1)))}
	}
	if chance(r, 0.2) {
		o["note"] = []any{map[string]any{"text": pick(r, []string{"Patient was resting.", "Mesure prise après l'effort.", "Nach dem Essen gemessen.", "測定は朝"})}}
	}
	return o
}

// Contact returns CRM contact i as the Dataverse Web API would return it
// (a patient contact created in the CRM, not yet linked to FHIR).
func (g *Generator) Contact(i int) map[string]any {
	r := g.rng(kindContact, i)
	female := chance(r, 0.5)
	given, fam := humanName(r, female)
	c := map[string]any{
		"contactid":         g.ContactID(i),
		"firstname":         given[0],
		"lastname":          fam,
		"msemr_contacttype": json.Number("935000000"),
		"statecode":         json.Number("0"),
		"modifiedon":        fmt.Sprintf("2026-%02d-%02dT%02d:%02d:%02dZ", 1+r.IntN(10), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60)),
	}
	if len(given) > 1 {
		c["middlename"] = given[1]
	}
	if female {
		c["gendercode"] = json.Number("2")
	} else {
		c["gendercode"] = json.Number("1")
	}
	if chance(r, 0.9) {
		c["birthdate"] = date(r, 1930, 2024)
	}
	if chance(r, 0.8) {
		c["telephone2"] = "+1-555-" + digits(r, 3) + "-" + digits(r, 4)
	}
	if chance(r, 0.6) {
		c["mobilephone"] = "+1 (555) " + digits(r, 3) + " " + digits(r, 4)
	}
	if chance(r, 0.7) {
		c["emailaddress1"] = fmt.Sprintf("contact%d@example.org", i)
	}
	if chance(r, 0.9) {
		k := r.IntN(len(cities))
		c["address1_line1"] = fmt.Sprintf("%d %s", 1+r.IntN(999), pick(r, streets))
		c["address1_city"] = cities[k]
		c["address1_stateorprovince"] = states[k]
		c["address1_postalcode"] = digits(r, 5)
		c["address1_country"] = countries[k]
	}
	if chance(r, 0.7) {
		c["familystatuscode"] = json.Number(fmt.Sprint(1 + r.IntN(4)))
	}
	if chance(r, 0.6) {
		c["msemr_preferredlanguage"] = pick(r, langs)
	}
	return c
}

// Account returns CRM account i as the Dataverse Web API would return it.
func (g *Generator) Account(i int) map[string]any {
	r := g.rng(kindAccount, i)
	k := r.IntN(len(cities))
	return map[string]any{
		"accountid":                g.AccountID(i),
		"name":                     fmt.Sprintf("%s %d", orgNames[i%len(orgNames)], i),
		"telephone1":               "+1-555-" + digits(r, 3) + "-" + digits(r, 4),
		"websiteurl":               fmt.Sprintf("https://account%d.example.org", i),
		"address1_line1":           fmt.Sprintf("%d %s", 1+r.IntN(999), pick(r, streets)),
		"address1_city":            cities[k],
		"address1_stateorprovince": states[k],
		"address1_postalcode":      digits(r, 5),
		"address1_country":         countries[k],
		"statecode":                json.Number("0"),
	}
}
