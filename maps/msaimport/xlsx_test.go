package msaimport

import (
	"archive/zip"
	"bytes"
	"encoding/csv"
	"encoding/xml"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/maps"
)

// writeXLSX builds a minimal SpreadsheetML workbook (ECMA-376) holding
// records in its first sheet: text in even columns as shared strings, in odd
// columns as inline strings, "Yes"/"No" of a Yes/No column as booleans
// where boolCols says, and the sheet after a second, unrelated one in the
// zip (the workbook names which is first).
func writeXLSX(t testing.TB, records [][]string, boolCols map[int]bool, mutate ...func(name, body string) string) []byte {
	t.Helper()
	esc := func(s string) string {
		var b strings.Builder
		if err := xml.EscapeText(&b, []byte(s)); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	var shared []string
	var sheet strings.Builder
	sheet.WriteString(`<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>`)
	for i, rec := range records {
		fmt.Fprintf(&sheet, `<row r="%d">`, i+1)
		for j, v := range rec {
			if v == "" {
				continue // Excel leaves empty cells out
			}
			ref := fmt.Sprintf("%c%d", 'A'+j, i+1)
			switch {
			case i > 0 && boolCols[j] && (v == "Yes" || v == "No"):
				b := "0"
				if v == "Yes" {
					b = "1"
				}
				fmt.Fprintf(&sheet, `<c r="%s" t="b"><v>%s</v></c>`, ref, b)
			case j%2 == 0:
				fmt.Fprintf(&sheet, `<c r="%s" t="s"><v>%d</v></c>`, ref, len(shared))
				shared = append(shared, v)
			default:
				fmt.Fprintf(&sheet, `<c r="%s" t="inlineStr"><is><t>%s</t></is></c>`, ref, esc(v))
			}
		}
		sheet.WriteString(`</row>`)
	}
	sheet.WriteString(`</sheetData></worksheet>`)
	var sst strings.Builder
	fmt.Fprintf(&sst, `<?xml version="1.0" encoding="UTF-8" standalone="yes"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="%d" uniqueCount="%d">`, len(shared), len(shared))
	for _, s := range shared {
		// Rich text runs, as Excel writes formatted text.
		if len(s) > 3 {
			fmt.Fprintf(&sst, `<si><r><t>%s</t></r><r><t xml:space="preserve">%s</t></r></si>`, esc(s[:2]), esc(s[2:]))
		} else {
			fmt.Fprintf(&sst, `<si><t>%s</t></si>`, esc(s))
		}
	}
	sst.WriteString(`</sst>`)
	parts := []struct{ name, body string }{
		{"[Content_Types].xml", `<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/></Types>`},
		{"xl/workbook.xml", `<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="Maps" sheetId="1" r:id="rId7"/><sheet name="Other" sheetId="2" r:id="rId1"/></sheets></workbook>`},
		{"xl/_rels/workbook.xml.rels", `<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/><Relationship Id="rId7" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet2.xml"/><Relationship Id="rId3" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" Target="sharedStrings.xml"/></Relationships>`},
		{"xl/worksheets/sheet1.xml", `<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>not this sheet</t></is></c></row></sheetData></worksheet>`},
		{"xl/worksheets/sheet2.xml", sheet.String()},
		{"xl/sharedStrings.xml", sst.String()},
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, p := range parts {
		for _, m := range mutate {
			p.body = m(p.name, p.body)
		}
		w, err := zw.Create(p.name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(p.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func csvRecords(t testing.TB, file string) [][]string {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(bytes.NewReader(raw)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestXLSXExportReadsAsCSV reads the fixtures as Excel workbooks and as
// CSV and wants the same rows and the same converted map set.
func TestXLSXExportReadsAsCSV(t *testing.T) {
	t.Parallel()
	ents, attrs := readFixtures(t)
	// Yes/No columns: entity maps 3-4 and 6, attribute maps 8-10.
	xe := writeXLSX(t, csvRecords(t, "testdata/msa/entity-maps.csv"), map[int]bool{3: true, 4: true, 6: true})
	xa := writeXLSX(t, csvRecords(t, "testdata/msa/attribute-maps.csv"), map[int]bool{8: true, 9: true, 10: true})
	gotE, err := ReadEntityMaps(xe)
	if err != nil {
		t.Fatal(err)
	}
	gotA, err := ReadAttributeMaps(xa)
	if err != nil {
		t.Fatal(err)
	}
	// Lines are rows in both; the CSV fixtures have one line per row.
	if !reflect.DeepEqual(gotE, ents) {
		t.Errorf("entity maps from the workbook differ from the CSV:\n%+v\n%+v", gotE, ents)
	}
	if !reflect.DeepEqual(gotA, attrs) {
		t.Errorf("attribute maps from the workbook differ from the CSV:\n%+v\n%+v", gotA, attrs)
	}
}

func TestReadErrors(t *testing.T) {
	t.Parallel()
	good := writeXLSX(t, [][]string{{"Entity Name", "Azure FHIR Resource"}, {"contact", "Patient"}}, nil)
	badShared := writeXLSX(t, [][]string{{"Entity Name", "Azure FHIR Resource"}, {"contact", "Patient"}}, nil, func(name, body string) string {
		return strings.Replace(body, `t="s"><v>0</v>`, `t="s"><v>9</v>`, 1)
	})
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{name: "workbook", data: good},
		{name: "empty", data: nil, wantErr: "empty"},
		{name: "not a workbook", data: []byte("PK\x03\x04garbage"), wantErr: "reading the workbook"},
		{name: "missing columns", data: []byte("Name,Other\nx,y\n"), wantErr: `no column for "entityname"`},
		{name: "bad yes/no", data: []byte("Entity Name,Azure FHIR Resource,Expand\ncontact,Patient,maybe\n"), wantErr: "is not Yes or No"},
		{name: "unterminated quote", data: []byte("Entity Name,Azure FHIR Resource\n\"contact,Patient\n"), wantErr: "entity maps"},
		{name: "semicolons", data: []byte("Entity Name;Azure FHIR Resource\ncontact;Patient\n")},
	}
	if bytes.Equal(badShared, good) {
		t.Fatal("the shared-string cell was not found to break")
	}
	tests = append(tests, struct {
		name    string
		data    []byte
		wantErr string
	}{name: "dangling shared string", data: badShared, wantErr: "shared string"})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rows, err := ReadEntityMaps(tc.data)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != 1 || rows[0].Entity != "contact" || rows[0].FHIRType != "Patient" || rows[0].Line != 2 {
				t.Errorf("rows = %+v", rows)
			}
		})
	}
}

// FuzzReadAttributeMaps feeds arbitrary exports (CSV text or workbooks) to
// the reader and what it reads to Convert, with the fixtures' entity maps:
// neither may panic, and a converted set must validate.
func FuzzReadAttributeMaps(f *testing.F) {
	raw, err := os.ReadFile("testdata/msa/attribute-maps.csv")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add(writeXLSX(f, csvRecords(f, "testdata/msa/attribute-maps.csv"), map[int]bool{8: true, 9: true, 10: true}))
	f.Add([]byte("Entity Name;Attribute Name;Action Type;FHIR Element JSON Path\ncontact;firstname;Copy Data;$.name[0].given[0]\n"))
	ents, _ := readFixtures(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		attrs, err := ReadAttributeMaps(data)
		if err != nil {
			return
		}
		doc, _, err := Convert(ents, attrs, Options{})
		if err != nil {
			return // a set validation could not settle is reported as an error
		}
		if _, err := maps.Compile(doc, maps.CompileOptions{}); err != nil {
			t.Fatalf("Convert returned a set that does not validate: %v", err)
		}
	})
}
