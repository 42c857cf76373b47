package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	fsmaps "github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func TestBaseEncodingRoundTrips(t *testing.T) {
	t.Parallel()
	h := func(b byte) [baseHashSize]byte { return [baseHashSize]byte{b, b + 1, 15: b} }
	tests := []struct {
		name  string
		attrs map[string]attrHash
	}{
		{name: "no attributes", attrs: map[string]attrHash{}},
		{name: "one attribute", attrs: map[string]attrHash{"last-name": {FHIR: h(1), CRM: h(2)}}},
		{name: "several attributes", attrs: map[string]attrHash{"b": {FHIR: h(3), CRM: h(4)}, "a": {FHIR: h(5), CRM: h(6)}, "c": {}}},
		{name: "a name longer than one varint byte", attrs: map[string]attrHash{strings.Repeat("x", 300): {FHIR: h(7), CRM: h(8)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enc := encodeBase(tt.attrs)
			got, err := decodeBase(enc)
			if err != nil {
				t.Fatalf("decoding: %v", err)
			}
			if !maps.Equal(got, tt.attrs) {
				t.Errorf("round trip gave %v, want %v", got, tt.attrs)
			}
			// The encoding does not depend on the map's iteration order.
			if again := encodeBase(tt.attrs); !bytes.Equal(again, enc) {
				t.Error("encoding the same attributes twice gave different bytes")
			}
			if len(enc) > 1 {
				if _, err := decodeBase(enc[:len(enc)-1]); err == nil {
					t.Error("a truncated base decoded without an error")
				}
			}
		})
	}
	if _, err := decodeBase([]byte{9}); err == nil {
		t.Error("an unknown encoding decoded without an error")
	}
}

// baseTestMap maps a Patient's family name, birth date and managing
// organization (a lookup) onto a contact.
func baseTestMap(t *testing.T) *fsmaps.Mapping {
	t.Helper()
	all := []fsmaps.Operation{fsmaps.OpCreate, fsmaps.OpUpdate, fsmaps.OpDelete}
	doc := &fsmaps.Document{Format: 1, EntityMaps: []fsmaps.EntityMap{
		{Name: "organization-account", FHIRType: "Organization", CRMEntity: "account", CRMEntitySet: "accounts",
			FHIRToCRM: fsmaps.Flow{Enabled: true, Operations: all}, CRMToFHIR: fsmaps.Flow{Enabled: true, Operations: all},
			Correlation: fsmaps.Correlation{CRMAttribute: "msemr_azurefhirid", FHIRIdentifierSystem: "urn:fhirsync:crm:accountid"},
			Attributes:  []fsmaps.AttributeMap{{Name: "name", CRMAttribute: "name", CRMType: fsmaps.TypeString, FHIRPath: "name"}}},
		{Name: "patient-contact", FHIRType: "Patient", CRMEntity: "contact", CRMEntitySet: "contacts",
			FHIRToCRM: fsmaps.Flow{Enabled: true, Operations: all}, CRMToFHIR: fsmaps.Flow{Enabled: true, Operations: all},
			Correlation: fsmaps.Correlation{CRMAttribute: "msemr_azurefhirid", FHIRIdentifierSystem: "urn:fhirsync:crm:contactid"},
			Attributes: []fsmaps.AttributeMap{
				{Name: "family", CRMAttribute: "lastname", CRMType: fsmaps.TypeString, FHIRPath: "name[0].family"},
				{Name: "birth-date", CRMAttribute: "birthdate", CRMType: fsmaps.TypeDateOnly, FHIRPath: "birthDate"},
				{Name: "organization", CRMAttribute: "parentcustomerid", CRMType: fsmaps.TypeLookup, FHIRPath: "managingOrganization.reference",
					Action: fsmaps.ActionLookup, Lookup: &fsmaps.Lookup{EntityMap: "organization-account", Navigation: "parentcustomerid_account"}},
			}},
	}}
	set, err := fsmaps.Compile(doc, fsmaps.CompileOptions{})
	if err != nil {
		t.Fatalf("compiling the test map: %v", err)
	}
	m, _ := set.Map("patient-contact")
	return m
}

// orgResolver resolves every organization to one account.
type orgResolver struct{}

func (orgResolver) CRMID(context.Context, string, string) (string, bool, error) {
	return "4B1A0000-0000-0000-0000-000000000001", true, nil
}
func (orgResolver) FHIRRef(context.Context, string, string) (string, bool, error) {
	return "Organization/o1", true, nil
}

// The base of a synced pair holds, per attribute map, the keyed hash of
// the source value and of the value written, in both directions; a lookup
// hashes the same whether read ("_x_value") or written ("nav@odata.bind").
func TestBaseAfterASyncHashesEachAttributeOnBothSides(t *testing.T) {
	t.Parallel()
	m := baseTestMap(t)
	key := []byte("an installation's sixteen-byte+ secret")
	p := &pipeline{base: newBaseHasher(key)}
	bh := newBaseHasher(key)
	pat := map[string]any{"resourceType": "Patient", "id": "p1", "name": []any{map[string]any{"family": "Basewright"}},
		"birthDate": "1980-01-02", "managingOrganization": map[string]any{"reference": "Organization/o1"}}
	const account = "4b1a0000-0000-0000-0000-000000000001"
	l := link{EntityMap: "patient-contact", FHIRID: "p1", CRMID: "c1"}
	want := map[string]attrHash{
		"family":       {FHIR: bh.hash(l, "family", "fhir", []any{"Basewright"}), CRM: bh.hash(l, "family", "crm", "Basewright")},
		"birth-date":   {FHIR: bh.hash(l, "birth-date", "fhir", []any{"1980-01-02"}), CRM: bh.hash(l, "birth-date", "crm", "1980-01-02")},
		"organization": {FHIR: bh.hash(l, "organization", "fhir", []any{"Organization/o1"}), CRM: bh.hash(l, "organization", "crm", account)},
	}

	tests := []struct {
		name string
		base func(t *testing.T) *linkBase
	}{
		{name: "FHIR to CRM", base: func(t *testing.T) *linkBase {
			src := record{Type: "Patient", ID: "p1", Version: "1", Data: pat}
			out, err := mapToCRM(context.Background(), m, src, nil, orgResolver{}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			f := &flow{side: "fhir", targetOf: "crm"}
			return p.baseAfter(f, m, src, nil, out, written{ID: "c1", Version: "7", Created: true}, nil)
		}},
		{name: "CRM to FHIR", base: func(t *testing.T) *linkBase {
			st := fsmaps.CRMState{Record: map[string]any{"contactid": "c1", "msemr_azurefhirid": "p1", "lastname": "Basewright",
				"birthdate": "1980-01-02", "_parentcustomerid_value": strings.ToUpper(account)}}
			src := record{Type: "contact", ID: "c1", Version: "7", Data: map[string]any{"state": st}}
			cur := record{Type: "Patient", ID: "p1", Version: "1", Data: map[string]any{"resourceType": "Patient", "id": "p1"}}
			out, err := mapToFHIR(context.Background(), m, src, &cur, orgResolver{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			f := &flow{side: "crm", targetOf: "fhir"}
			return p.baseAfter(f, m, src, &cur, out, written{ID: "p1", Version: "2"}, nil)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.base(t)
			if b == nil {
				t.Fatal("no base after a sent sync")
			}
			if b.EntityMap != l.EntityMap || b.FHIRID != l.FHIRID || b.CRMID != l.CRMID || b.MapVersion != m.Version() {
				t.Errorf("base is for %s %s/%s v%d, want %s %s/%s v%d", b.EntityMap, b.FHIRID, b.CRMID, b.MapVersion, l.EntityMap, l.FHIRID, l.CRMID, m.Version())
			}
			for name, w := range want {
				got, ok := b.Attrs[name]
				switch {
				case !ok:
					t.Errorf("%s: no hashes", name)
				case got.FHIR != w.FHIR:
					t.Errorf("%s: the FHIR hash is not that of the synced value", name)
				case got.CRM != w.CRM:
					t.Errorf("%s: the CRM hash is not that of the synced value", name)
				}
			}
			if len(b.Attrs) != len(want) {
				t.Errorf("base has %d attributes, want %d", len(b.Attrs), len(want))
			}
		})
	}

	// Another record with the same values hashes differently; another key too.
	other := link{EntityMap: "patient-contact", FHIRID: "p2", CRMID: "c2"}
	if bh.hash(other, "family", "fhir", []any{"Basewright"}) == want["family"].FHIR {
		t.Error("two records with the same family name have the same hash")
	}
	if newBaseHasher([]byte("another installation's secret!!")).hash(l, "family", "fhir", []any{"Basewright"}) == want["family"].FHIR {
		t.Error("the hash does not depend on the installation's key")
	}
	if newBaseHasher(nil) != nil {
		t.Error("without a key the base state is not off")
	}
}

func testBase(fhirID, crmID string, b byte) *linkBase {
	return &linkBase{EntityMap: "patient", FHIRID: fhirID, CRMID: crmID, MapVersion: 4,
		Attrs: map[string]attrHash{"family": {FHIR: [baseHashSize]byte{b}, CRM: [baseHashSize]byte{b, b}}}}
}

// The base is part of the unit: it commits with the decision or not at
// all.
func TestBaseCommitsWithItsDecision(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		lk := links{db: db}
		e := newEffectsEnv(t, db, time.Minute)
		tests := []struct {
			name string
			// badDecision makes the decision one the schema refuses;
			// badEffects makes an effect beside the base fail.
			badDecision, badEffects bool
			wantDecision, wantBase  bool
		}{
			{name: "sent decision with its base", wantDecision: true, wantBase: true},
			{name: "the decision fails to commit", badDecision: true},
			{name: "the effects fail: the decision is kept alone", badEffects: true, wantDecision: true},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ms := e.receive(t, 1)
				l := link{EntityMap: "patient", FHIRType: "Patient", FHIRID: fmt.Sprintf("p%d", i), CRMEntity: "contact", CRMID: fmt.Sprintf("c%d", i), FHIRVersion: "1"}
				b := testBase(l.FHIRID, l.CRMID, byte(i+1))
				u := &unit{d: decisionFor(ms[0]), complete: ms[0], q: e.q, link: &l, base: b}
				if tt.badDecision {
					u.d.Outcome = logs.Outcome("lost") // outside the outcome CHECK
				}
				if tt.badEffects {
					// side must be fhir or crm: the schema refuses this own write.
					u.own = &ownWrite{Side: "elsewhere", RType: "contact", RID: l.CRMID, Version: "1", WrittenAt: time.Now().UTC()}
				}
				err := e.b.commit(ctx, u)
				if tt.wantDecision && err != nil {
					t.Fatalf("commit: %v", err)
				}
				if !tt.wantDecision && err == nil {
					t.Fatal("a decision the schema refuses was committed")
				}
				if got := e.decided(t, ms[0]); got != tt.wantDecision {
					t.Errorf("decision recorded %v, want %v", got, tt.wantDecision)
				}
				got, err := lk.base(ctx, l)
				switch {
				case tt.wantBase && err != nil:
					t.Fatalf("no base after the commit: %v", err)
				case tt.wantBase && (!maps.Equal(got.Attrs, b.Attrs) || got.MapVersion != 4 || got.CRMID != l.CRMID):
					t.Errorf("base read back as %+v, want %+v", got, b)
				case !tt.wantBase && !errors.Is(err, errNoBase):
					t.Errorf("a base without its effects committed: %+v, %v", got, err)
				}
			})
		}
	})
}

func TestBaseFollowsItsLink(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		lk := links{db: db}
		save := func(l link, b *linkBase) {
			t.Helper()
			if err := db.Transaction(func(tx *gorm.DB) error {
				if err := saveLinksTx(tx, []link{l}); err != nil {
					return err
				}
				return saveBasesTx(tx, []*linkBase{b})
			}); err != nil {
				t.Fatal(err)
			}
		}
		l := func(fhirID, crmID string) link {
			return link{EntityMap: "patient", FHIRType: "Patient", FHIRID: fhirID, CRMEntity: "contact", CRMID: crmID}
		}
		save(l("a", "x"), testBase("a", "x", 1))
		// A later sync replaces the base.
		save(l("a", "x"), testBase("a", "x", 2))
		if got, err := lk.base(ctx, l("a", "x")); err != nil || got.Attrs["family"].FHIR[0] != 2 {
			t.Fatalf("the base was not replaced: %+v, %v", got, err)
		}
		// x is re-paired with FHIR c: a's base goes with a's link.
		save(l("c", "x"), testBase("c", "x", 3))
		if _, err := lk.base(ctx, l("a", "x")); !errors.Is(err, errNoBase) {
			t.Errorf("the base of the old pairing survived: %v", err)
		}
		var n int64
		if err := db.Raw(`SELECT COUNT(*) FROM agent_link_base WHERE fhir_id = 'a'`).Scan(&n).Error; err != nil || n != 0 {
			t.Errorf("%d rows of the old pairing's base remain (%v)", n, err)
		}
		// A base read for another pairing of the same FHIR id is none.
		if _, err := lk.base(ctx, l("c", "y")); !errors.Is(err, errNoBase) {
			t.Errorf("the base of c/x was served for c/y: %v", err)
		}
		// Deleting the link deletes its base.
		if err := lk.remove(ctx, "patient", "c"); err != nil {
			t.Fatal(err)
		}
		if _, err := lk.base(ctx, l("c", "x")); !errors.Is(err, errNoBase) {
			t.Errorf("the base outlived its link: %v", err)
		}
	})
}

// One batch of bases, as a group commit saves them: refreshes of pairs that
// have a base, new pairs, a FHIR record paired with another CRM record and
// a CRM record paired with another FHIR record each leave one base per pair,
// holding what the batch saved.
func TestSavingBasesInABatchLeavesOneBasePerPair(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		lk := links{db: db}
		save := func(bs ...*linkBase) {
			t.Helper()
			if err := db.Transaction(func(tx *gorm.DB) error { return saveBasesTx(tx, bs) }); err != nil {
				t.Fatal(err)
			}
		}
		save(testBase("a", "x", 1), testBase("b", "y", 1), testBase("c", "z", 1), testBase("d", "w", 1))
		edited := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
		refreshed := testBase("a", "x", 2)
		refreshed.MapVersion, refreshed.CRMEditedAt = 5, edited
		// a: refreshed; b: now paired with CRM v; z: now paired with FHIR e;
		// f: new; d keeps its base from before.
		save(refreshed, testBase("b", "v", 3), testBase("e", "z", 4), testBase("f", "u", 5))
		l := func(fhirID, crmID string) link { return link{EntityMap: "patient", FHIRID: fhirID, CRMID: crmID} }
		for _, tc := range []struct {
			pair    link
			want    byte
			version int
		}{
			{l("a", "x"), 2, 5}, {l("b", "v"), 3, 4}, {l("e", "z"), 4, 4}, {l("f", "u"), 5, 4}, {l("d", "w"), 1, 4},
		} {
			got, err := lk.base(ctx, tc.pair)
			if err != nil {
				t.Errorf("%s/%s: %v", tc.pair.FHIRID, tc.pair.CRMID, err)
				continue
			}
			if got.Attrs["family"].FHIR[0] != tc.want || got.Attrs["family"].CRM[1] != tc.want || got.MapVersion != tc.version {
				t.Errorf("%s/%s: base %+v, want hashes of %d and map version %d", tc.pair.FHIRID, tc.pair.CRMID, got, tc.want, tc.version)
			}
		}
		if got, err := lk.base(ctx, l("a", "x")); err != nil || !got.CRMEditedAt.Equal(edited) || !got.FHIREditedAt.IsZero() {
			t.Errorf("refreshed base's edit times: %+v, %v", got, err)
		}
		for _, gone := range []link{l("b", "y"), l("c", "z")} {
			if _, err := lk.base(ctx, gone); !errors.Is(err, errNoBase) {
				t.Errorf("the base of the old pairing %s/%s survived: %v", gone.FHIRID, gone.CRMID, err)
			}
		}
		var n int64
		if err := db.Raw(`SELECT COUNT(*) FROM agent_link_base`).Scan(&n).Error; err != nil || n != 5 {
			t.Errorf("%d bases after the batch, want 5 (%v)", n, err)
		}
	})
}

// A CRM→FHIR message reads its link and the pair's base in one statement
// before it locks the pair; what that read serves must be what links.base
// reads on its own, for the pair asked about only.
func TestBaseReadWithTheLinkServesWhatBaseReads(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		lk := links{db: db}
		l := func(fhirID, crmID string) link {
			return link{EntityMap: "patient", FHIRType: "Patient", FHIRID: fhirID, CRMEntity: "contact", CRMID: crmID, FHIRVersion: "3", CRMVersion: "7"}
		}
		edited := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
		withTimes := testBase("a", "x", 1)
		withTimes.FHIREditedAt = edited
		if err := db.Transaction(func(tx *gorm.DB) error {
			if err := saveLinksTx(tx, []link{l("a", "x"), l("b", "y"), l("c", "z")}); err != nil {
				return err
			}
			// b's base was written for another CRM record; c has none.
			return saveBasesTx(tx, []*linkBase{withTimes, testBase("b", "w", 2)})
		}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name, crmID string
			ask         link
			wantErr     error
		}{
			{name: "linked with a base", crmID: "x", ask: l("a", "x")},
			{name: "base of another CRM record", crmID: "y", ask: l("b", "y"), wantErr: errNoBase},
			{name: "no base", crmID: "z", ask: l("c", "z"), wantErr: errNoBase},
			{name: "another FHIR record than the link's", crmID: "x", ask: l("q", "x"), wantErr: errBaseNotRead},
			{name: "another map", crmID: "x", ask: link{EntityMap: "other", FHIRID: "a", CRMID: "x"}, wantErr: errBaseNotRead},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, pb, err := lk.byCRMWithBase(ctx, "patient", tc.crmID)
				if err != nil {
					t.Fatal(err)
				}
				want, err := lk.byCRM(ctx, "patient", tc.crmID)
				if err != nil || !got.UpdatedAt.Equal(want.UpdatedAt) {
					t.Fatalf("link %+v, byCRM gives %+v (%v)", got, want, err)
				}
				got.UpdatedAt, want.UpdatedAt = time.Time{}, time.Time{}
				if got != want {
					t.Errorf("link %+v, byCRM gives %+v", got, want)
				}
				b, err := pb.of(tc.ask)
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("of(%s/%s): %v, want %v", tc.ask.FHIRID, tc.ask.CRMID, err, tc.wantErr)
				}
				if tc.wantErr != nil {
					return
				}
				alone, err := lk.base(ctx, tc.ask)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(b, alone) {
					t.Errorf("read with the link: %+v\nread alone: %+v", b, alone)
				}
				if !b.FHIREditedAt.Equal(edited) || !b.CRMEditedAt.IsZero() || b.MapVersion != 4 || b.Attrs["family"].CRM[1] != 1 {
					t.Errorf("base read with the link lost a field: %+v", b)
				}
			})
		}
		if _, _, err := lk.byCRMWithBase(ctx, "patient", "nobody"); !errors.Is(err, errNoLink) {
			t.Errorf("no link: %v, want errNoLink", err)
		}
		var nothing *baseRead
		if _, err := nothing.of(l("a", "x")); !errors.Is(err, errBaseNotRead) {
			t.Errorf("nil read: %v, want errBaseNotRead", err)
		}
	})
}

// The schema refuses a base that is not one.
func TestBaseSchemaChecks(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		tests := []struct {
			name, fhirID, crmID string
			version             int
			hashes              []byte
		}{
			{name: "empty hashes", fhirID: "a", crmID: "x", version: 1, hashes: []byte{}},
			{name: "negative map version", fhirID: "b", crmID: "x", version: -1, hashes: []byte{1}},
			{name: "empty CRM id", fhirID: "c", crmID: "", version: 1, hashes: []byte{1}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				err := db.Exec(`INSERT INTO agent_link_base (entity_map, fhir_id, crm_id, map_version, hashes, updated_at) VALUES (?, ?, ?, ?, ?, ?)`,
					"patient", tt.fhirID, tt.crmID, tt.version, tt.hashes, time.Now().UTC()).Error
				if err == nil {
					t.Error("the schema accepted it")
				}
			})
		}
	})
}

// Concurrent units each commit their own base in the group commit.
func TestGroupCommitRecordsEachUnitsBase(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newEffectsEnv(t, db, time.Minute)
		ms := e.receive(t, 4)
		ctx := context.Background()
		var wg sync.WaitGroup
		errs := make([]error, len(ms))
		for i, m := range ms {
			l := link{EntityMap: "patient", FHIRType: "Patient", FHIRID: fmt.Sprintf("g%d", i), CRMEntity: "contact", CRMID: fmt.Sprintf("k%d", i)}
			u := &unit{d: decisionFor(m), complete: m, q: e.q, link: &l, base: testBase(l.FHIRID, l.CRMID, byte(10+i))}
			wg.Go(func() { errs[i] = e.b.commit(ctx, u) })
		}
		wg.Wait()
		lk := links{db: db}
		for i := range ms {
			if errs[i] != nil {
				t.Fatalf("unit %d: %v", i, errs[i])
			}
			got, err := lk.base(ctx, link{EntityMap: "patient", FHIRID: fmt.Sprintf("g%d", i), CRMID: fmt.Sprintf("k%d", i)})
			if err != nil || got.Attrs["family"].FHIR[0] != byte(10+i) {
				t.Errorf("unit %d: base %+v, %v", i, got, err)
			}
		}
	})
}

// BenchmarkBaseAfterASync is the CPU the base state adds to a sent
// FHIR→CRM record under the starter patient map: hashing every attribute
// on both sides.
func BenchmarkBaseAfterASync(b *testing.B) {
	doc, _, err := fsmaps.Import(starter.YAML(), fsmaps.CompileOptions{})
	if err != nil {
		b.Fatal(err)
	}
	set, err := fsmaps.Compile(doc, fsmaps.CompileOptions{})
	if err != nil {
		b.Fatal(err)
	}
	m, _ := set.Map("patient-contact")
	pat := synth.New(1).Patient(0)
	delete(pat, "generalPractitioner")
	delete(pat, "managingOrganization")
	src := record{Type: "Patient", ID: "p1", Version: "1", Data: pat}
	out, err := mapToCRM(context.Background(), m, src, nil, orgResolver{}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	p := &pipeline{base: newBaseHasher([]byte("an installation's sixteen-byte+ secret"))}
	f := &flow{side: "fhir", targetOf: "crm"}
	w := written{ID: "c1", Version: "7", Created: true}
	var enc []byte
	b.ReportAllocs()
	for b.Loop() {
		enc = encodeBase(p.baseAfter(f, m, src, nil, out, w, nil).Attrs)
	}
	b.ReportMetric(float64(len(enc)), "hash-bytes/record")
}

// BenchmarkSaveBase is the database cost of recording one pair's base
// (22 attributes, as the starter patient map has) on SQLite, in batches of
// 64 as the group commit writes them.
func BenchmarkSaveBase(b *testing.B) {
	db := storagetest.Open(b, storage.SQLite)
	attrs := map[string]attrHash{}
	for i := range 22 {
		attrs[fmt.Sprintf("attribute-%02d", i)] = attrHash{FHIR: [baseHashSize]byte{byte(i)}, CRM: [baseHashSize]byte{byte(i), 1}}
	}
	n := 0
	for b.Loop() {
		bs := make([]*linkBase, 64)
		for i := range bs {
			n++
			bs[i] = &linkBase{EntityMap: "patient-contact", FHIRID: fmt.Sprintf("p-%08d", n), CRMID: fmt.Sprintf("c-%08d", n), MapVersion: 1, Attrs: attrs}
		}
		if err := db.Transaction(func(tx *gorm.DB) error { return saveBasesTx(tx, bs) }); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/record")
}

// TestBaseAfterTakesTheUnwrittenSideFromTheMerge: after a write, the base
// takes the hashes of the side that was not written (the source) from the
// merge's reading of the pair instead of computing them again, and comes
// out the same as when it computes both sides; on the written side, a value
// the write left as it was read keeps the hash it was read with; a reading
// of another pair is not used.
func TestBaseAfterTakesTheUnwrittenSideFromTheMerge(t *testing.T) {
	t.Parallel()
	m := baseTestMap(t)
	p := &pipeline{base: newBaseHasher([]byte("an installation's sixteen-byte+ secret"))}
	const account = "4b1a0000-0000-0000-0000-000000000001"
	pat := map[string]any{"resourceType": "Patient", "id": "p1", "name": []any{map[string]any{"family": "Basewright"}},
		"birthDate": "1980-01-02", "managingOrganization": map[string]any{"reference": "Organization/o1"}}
	st := fsmaps.CRMState{Record: map[string]any{"contactid": "c1", "msemr_azurefhirid": "p1", "lastname": "Baseworth",
		"birthdate": "1980-01-03", "_parentcustomerid_value": account}}
	contact := record{Type: "contact", ID: "c1", Version: "7", Data: map[string]any{"state": st}}
	patient := record{Type: "Patient", ID: "p1", Version: "1", Data: pat}
	var marker [baseHashSize]byte
	for i := range marker {
		marker[i] = 0xab
	}
	for _, tc := range []struct {
		name     string
		f        *flow
		src, cur record
		w        written
	}{
		{"FHIR to CRM", &flow{side: "fhir", targetOf: "crm"}, patient, contact, written{ID: "c1", Version: "8"}},
		{"CRM to FHIR", &flow{side: "crm", targetOf: "fhir"}, contact, patient, written{ID: "p1", Version: "2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out mapped
			var err error
			if tc.f.side == "fhir" {
				out, err = mapToCRM(context.Background(), m, tc.src, &tc.cur, orgResolver{}, nil, nil)
			} else {
				out, err = mapToFHIR(context.Background(), m, tc.src, &tc.cur, orgResolver{}, nil)
			}
			if err != nil {
				t.Fatal(err)
			}
			// The pair as the merge read it, before the write.
			l := pairOf(tc.f, m.Def(), tc.src, tc.cur)
			res, rec, kids := sidesOf(tc.f, tc.src, tc.cur)
			read := p.base.of(m, l, res, rec, kids, nil, "", nil)

			both := p.baseAfter(tc.f, m, tc.src, &tc.cur, out, tc.w, nil)
			reused := p.baseAfter(tc.f, m, tc.src, &tc.cur, out, tc.w, &pairMerge{now: read})
			if !reflect.DeepEqual(reused.Attrs, both.Attrs) {
				t.Errorf("with the merge's reading the base differs:\n got %v\nwant %v", reused.Attrs, both.Attrs)
			}

			// The source side's hashes come from the reading, the
			// written side's are computed.
			marked := *read
			marked.Attrs = map[string]attrHash{}
			for name, h := range read.Attrs {
				if tc.f.side == "fhir" {
					h.FHIR = marker
				} else {
					h.CRM = marker
				}
				marked.Attrs[name] = h
			}
			got := p.baseAfter(tc.f, m, tc.src, &tc.cur, out, tc.w, &pairMerge{now: &marked})
			for name, h := range got.Attrs {
				src, written := h.FHIR, h.CRM
				wantWritten := both.Attrs[name].CRM
				if tc.f.side == "crm" {
					src, written, wantWritten = h.CRM, h.FHIR, both.Attrs[name].FHIR
				}
				if src != marker || written != wantWritten {
					t.Errorf("%s: the source side's hash was computed again or the written side's taken from the reading", name)
				}
			}

			// A reading of another pair is left alone.
			other := marked
			other.FHIRID = "p2"
			if got := p.baseAfter(tc.f, m, tc.src, &tc.cur, out, tc.w, &pairMerge{now: &other}); !reflect.DeepEqual(got.Attrs, both.Attrs) {
				t.Errorf("another pair's reading was used")
			}

			// With the values the merge read, a written value the same as
			// it was read keeps the hash it was read with; a changed one is
			// hashed again.
			vals := p.base.read(m, l, res, rec, kids)
			prior := slices.Clone(vals)
			p.base.done(vals)
			for i := range prior {
				if tc.f.side == "fhir" {
					prior[i].h.CRM = marker
				} else {
					prior[i].h.FHIR = marker
				}
			}
			got = p.baseAfter(tc.f, m, tc.src, &tc.cur, out, tc.w, &pairMerge{now: read, read: prior})
			var kept, hashed int
			for name, h := range got.Attrs {
				written, before, after := h.FHIR, read.Attrs[name].FHIR, both.Attrs[name].FHIR
				if tc.f.side == "fhir" {
					written, before, after = h.CRM, read.Attrs[name].CRM, both.Attrs[name].CRM
				}
				switch {
				case before == after && written == marker:
					kept++
				case before != after && written == after:
					hashed++
				default:
					t.Errorf("%s: written side's hash %x; read %x, after the write %x", name, written[:4], before[:4], after[:4])
				}
			}
			if kept == 0 || hashed == 0 {
				t.Errorf("%d hashes kept, %d computed: the case needs both", kept, hashed)
			}
			other = *read
			other.FHIRID = "p2"
			if got := p.baseAfter(tc.f, m, tc.src, &tc.cur, out, tc.w, &pairMerge{now: &other, read: prior}); !reflect.DeepEqual(got.Attrs, both.Attrs) {
				t.Errorf("another pair's values were used")
			}
		})
	}
}

// TestSameValueMeansTheSameBytes: values sameValue takes for the same are
// written the same by appendValue (so they hash the same), and values that
// are written differently, or whose types differ, are not taken for the
// same.
func TestSameValueMeansTheSameBytes(t *testing.T) {
	t.Parallel()
	vals := []any{
		nil, "", "a", "b", true, false, 0.0, math.Copysign(0, -1), 1.5, json.Number("1.5"), json.Number("1.50"), 2, int64(2),
		[]any(nil), []any{}, []any{"a"}, []any{"a", "b"}, []any{"b", "a"}, []any{1.5}, []any{json.Number("1.5")},
		[]string(nil), []string{}, []string{"a"},
		map[string]any(nil), map[string]any{}, map[string]any{"a": "x"}, map[string]any{"a": "y"}, map[string]any{"b": "x"},
		map[string]any{"a": []any{map[string]any{"system": "s", "value": "v"}}},
		map[string]any{"a": []any{map[string]any{"system": "s", "value": "w"}}},
		map[string]any{"a": "x", "b": nil},
	}
	var same int
	for i, a := range vals {
		for j, b := range vals {
			// A copy of b, so equal values never share memory.
			c := cloneValue(b)
			got := sameValue(a, c)
			if i == j && !got {
				t.Errorf("%#v is not the same as a copy of itself", a)
			}
			if i != j && got {
				t.Errorf("%#v and %#v taken for the same", a, b)
			}
			if got {
				same++
				if x, y := appendValue(nil, a), appendValue(nil, c); !bytes.Equal(x, y) {
					t.Errorf("%#v and %#v taken for the same, written %q and %q", a, c, x, y)
				}
			}
		}
	}
	if same != len(vals) {
		t.Errorf("%d pairs the same, want %d", same, len(vals))
	}
}

// cloneValue copies v all the way down, nil lists and maps staying nil.
func cloneValue(v any) any {
	switch x := v.(type) {
	case []any:
		if x == nil {
			return x
		}
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = cloneValue(e)
		}
		return out
	case []string:
		return slices.Clone(x)
	case map[string]any:
		if x == nil {
			return x
		}
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = cloneValue(e)
		}
		return out
	}
	return v
}
