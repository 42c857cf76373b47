package msaimport

import (
	"archive/zip"
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// The app's Export to Excel writes an Office Open XML workbook (.xlsx).
// readXLSX reads the cell text of its first worksheet, following the
// SpreadsheetML parts of ECMA-376 Part 1 (§18.2.27 workbook sheets, §18.3.1.73
// row, §18.3.1.4 c with its t attribute, §18.4.9 sst shared strings) and the
// package relationships of Part 2. Formulas are not evaluated: a cell's
// cached value is read, as any export holds.

// maxXLSXPart bounds one decompressed part; map exports are a few hundred
// kilobytes.
const maxXLSXPart = 64 << 20

func isZip(data []byte) bool { return bytes.HasPrefix(data, []byte("PK\x03\x04")) }

func readXLSX(data []byte) (rows [][]string, lines []int, err error) {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, nil, fmt.Errorf("reading the workbook: %w", err)
	}
	part := func(name string) ([]byte, error) {
		f, err := zr.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxXLSXPart+1))
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", name, err)
		}
		if len(b) > maxXLSXPart {
			return nil, fmt.Errorf("%s is larger than %d bytes", name, maxXLSXPart)
		}
		return b, nil
	}
	sheet, err := firstSheet(part)
	if err != nil {
		return nil, nil, err
	}
	var shared []string
	if b, err := part(sharedStringsPart(part)); err == nil {
		if shared, err = sharedStrings(b); err != nil {
			return nil, nil, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	b, err := part(sheet)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the first worksheet: %w", err)
	}
	return sheetRows(b, shared)
}

type rel struct {
	ID     string `xml:"Id,attr"`
	Type   string `xml:"Type,attr"`
	Target string `xml:"Target,attr"`
}

func workbookRels(part func(string) ([]byte, error)) ([]rel, error) {
	b, err := part("xl/_rels/workbook.xml.rels")
	if err != nil {
		return nil, fmt.Errorf("reading the workbook's relationships: %w", err)
	}
	var rels struct {
		Rels []rel `xml:"Relationship"`
	}
	if err := xml.Unmarshal(b, &rels); err != nil {
		return nil, fmt.Errorf("reading the workbook's relationships: %w", err)
	}
	return rels.Rels, nil
}

func target(t string) string {
	if strings.HasPrefix(t, "/") {
		return strings.TrimPrefix(t, "/")
	}
	return path.Clean("xl/" + t)
}

// firstSheet returns the part name of the workbook's first sheet.
func firstSheet(part func(string) ([]byte, error)) (string, error) {
	b, err := part("xl/workbook.xml")
	if err != nil {
		return "", fmt.Errorf("not an Excel workbook: %w", err)
	}
	var wb struct {
		Sheets []struct {
			RID string `xml:"http://schemas.openxmlformats.org/officeDocument/2006/relationships id,attr"`
		} `xml:"sheets>sheet"`
	}
	if err := xml.Unmarshal(b, &wb); err != nil {
		return "", fmt.Errorf("reading the workbook: %w", err)
	}
	if len(wb.Sheets) == 0 {
		return "", errors.New("the workbook has no sheet")
	}
	rels, err := workbookRels(part)
	if err != nil {
		return "", err
	}
	for _, r := range rels {
		if r.ID == wb.Sheets[0].RID {
			return target(r.Target), nil
		}
	}
	return "", fmt.Errorf("the workbook's first sheet (%s) has no part", wb.Sheets[0].RID)
}

func sharedStringsPart(part func(string) ([]byte, error)) string {
	if rels, err := workbookRels(part); err == nil {
		for _, r := range rels {
			if strings.HasSuffix(r.Type, "/sharedStrings") {
				return target(r.Target)
			}
		}
	}
	return "xl/sharedStrings.xml"
}

// richText is a string item: plain text, or runs of rich text.
type richText struct {
	T    string `xml:"t"`
	Runs []struct {
		T string `xml:"t"`
	} `xml:"r"`
}

func (r richText) String() string {
	if len(r.Runs) == 0 {
		return r.T
	}
	var b strings.Builder
	b.WriteString(r.T)
	for _, run := range r.Runs {
		b.WriteString(run.T)
	}
	return b.String()
}

func sharedStrings(b []byte) ([]string, error) {
	var sst struct {
		Items []richText `xml:"si"`
	}
	if err := xml.Unmarshal(b, &sst); err != nil {
		return nil, fmt.Errorf("reading the shared strings: %w", err)
	}
	out := make([]string, len(sst.Items))
	for i, it := range sst.Items {
		out[i] = it.String()
	}
	return out, nil
}

// maxColumns bounds a row's width (Excel's own limit is 16,384).
const maxColumns = 16384

func sheetRows(b []byte, shared []string) ([][]string, []int, error) {
	var ws struct {
		Rows []struct {
			R     int `xml:"r,attr"`
			Cells []struct {
				Ref    string   `xml:"r,attr"`
				Type   string   `xml:"t,attr"`
				V      string   `xml:"v"`
				Inline richText `xml:"is"`
			} `xml:"c"`
		} `xml:"sheetData>row"`
	}
	if err := xml.Unmarshal(b, &ws); err != nil {
		return nil, nil, fmt.Errorf("reading the worksheet: %w", err)
	}
	var rows [][]string
	var lines []int
	for i, r := range ws.Rows {
		var row []string
		for j, c := range r.Cells {
			col := j
			if c.Ref != "" {
				n, err := columnIndex(c.Ref)
				if err != nil {
					return nil, nil, err
				}
				col = n
			}
			if col >= maxColumns {
				return nil, nil, fmt.Errorf("cell %s is beyond column %d", c.Ref, maxColumns)
			}
			var text string
			switch c.Type {
			case "s":
				k, err := strconv.Atoi(strings.TrimSpace(c.V))
				if err != nil || k < 0 || k >= len(shared) {
					return nil, nil, fmt.Errorf("cell %s refers to shared string %q, which the workbook does not have", c.Ref, c.V)
				}
				text = shared[k]
			case "inlineStr":
				text = c.Inline.String()
			default: // n, str, b (0/1), e, d: the cached value's text
				text = c.V
			}
			for len(row) <= col {
				row = append(row, "")
			}
			row[col] = text
		}
		line := r.R
		if line == 0 {
			line = i + 1
		}
		rows = append(rows, row)
		lines = append(lines, line)
	}
	return rows, lines, nil
}

// columnIndex turns a cell reference's letters into a zero-based column.
func columnIndex(ref string) (int, error) {
	n := 0
	i := 0
	for ; i < len(ref) && ref[i] >= 'A' && ref[i] <= 'Z'; i++ {
		n = n*26 + int(ref[i]-'A'+1)
		if n > maxColumns {
			return 0, fmt.Errorf("cell reference %q is beyond column %d", ref, maxColumns)
		}
	}
	if i == 0 {
		return 0, fmt.Errorf("cell reference %q has no column", ref)
	}
	return n - 1, nil
}
