package fhirpath

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
)

func readResource(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/resources/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEval(t *testing.T) {
	t.Parallel()
	pat := readResource(t, "patient-full.json")
	tests := []struct {
		name    string
		expr    string
		want    string // JSON of the result
		wantErr bool
	}{
		{name: "strings", expr: "name.where(use = 'official').given", want: `["Jöhanna","Maria"]`},
		{name: "decimal keeps its text", expr: "extension.where(url = 'http://example.org/ext/score').value", want: `[1.50]`},
		{name: "integer", expr: "multipleBirthInteger + 1", want: `[3]`},
		{name: "boolean", expr: "active", want: `[true]`},
		{name: "date as text", expr: "birthDate", want: `["1974-12-25"]`},
		{name: "object", expr: "maritalStatus.coding", want: `[{"code":"M","display":"Married","system":"http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"}]`},
		{name: "empty", expr: "deceasedDateTime", want: `[]`},
		{name: "choice with the R4 model", expr: "deceased.ofType(boolean)", want: `[false]`},
		{name: "evaluation error", expr: "name.given.single()", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, err := Compile(tt.expr)
			if err != nil {
				t.Fatal(err)
			}
			got, err := e.Eval(pat)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Eval(%s) error = %v, wantErr %v", tt.expr, err, tt.wantErr)
			}
			if tt.wantErr {
				var ee *EvalError
				if !errors.As(err, &ee) || ee.Kind == "" {
					t.Fatalf("error %v is not an *EvalError with a kind", err)
				}
				if strings.Contains(err.Error(), "Jöhanna") {
					t.Errorf("error text %q quotes resource values", err)
				}
				return
			}
			b, _ := json.Marshal(got)
			if string(b) != tt.want {
				t.Errorf("Eval(%s) = %s, want %s", tt.expr, b, tt.want)
			}
		})
	}
}

func TestEvalBool(t *testing.T) {
	t.Parallel()
	pat := readResource(t, "patient-full.json")
	tests := []struct {
		name    string
		expr    string
		want    bool
		wantErr error
	}{
		{name: "true", expr: "gender = 'female'", want: true},
		{name: "false", expr: "gender = 'male'", want: false},
		{name: "empty is false", expr: "deceasedDateTime > @2000-01-01", want: false},
		{name: "exists", expr: "identifier.where(system = 'urn:x').exists()", want: true},
		{name: "a string is not a boolean", expr: "gender", wantErr: ErrNotBoolean},
		{name: "several booleans", expr: "name.exists() | telecom.empty()", wantErr: ErrNotBoolean},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := MustCompile(tt.expr)
			got, err := e.EvalBool(pat)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("EvalBool(%s) error = %v, want %v", tt.expr, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("EvalBool(%s) = %v, %v; want %v", tt.expr, got, err, tt.want)
			}
			var res map[string]any
			if err := json.Unmarshal(pat, &res); err != nil {
				t.Fatal(err)
			}
			if got2, err := e.EvalResourceBool(res); err != nil || got2 != got {
				t.Errorf("EvalResourceBool = %v, %v; want %v like EvalBool", got2, err, got)
			}
		})
	}
}

func TestCompile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		expr    string
		wantErr string
	}{
		{expr: "name.given.first()"},
		{expr: "name.where(text = 'length(')"},
		{expr: "name.`length`"},
		{expr: "name.given /* length() */ .first() // substring("},
		{expr: "lengthy.exists()"},
		{expr: "", wantErr: "empty expression"},
		{expr: "name.(", wantErr: "compiling FHIRPath"},
		{expr: "name.given.first().length()", wantErr: "length() is not allowed"},
		{expr: "name.family.substring (0, 1)", wantErr: "substring() is not allowed"},
		{expr: "name.family.exists(indexOf('a') > 0)", wantErr: "indexOf() is not allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			t.Parallel()
			e, err := Compile(tt.expr)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Compile(%q): %v", tt.expr, err)
				}
				if e.String() != tt.expr {
					t.Errorf("String() = %q, want %q", e.String(), tt.expr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Compile(%q) error = %v, want one containing %q", tt.expr, err, tt.wantErr)
			}
		})
	}
}

func TestEvalNotAnObject(t *testing.T) {
	t.Parallel()
	if _, err := MustCompile("id").Eval([]byte(`["resourceType"]`)); err == nil {
		t.Fatal("Eval on a JSON array: no error")
	}
}
