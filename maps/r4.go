package maps

//go:generate go run gen_r4codes.go

import (
	"fmt"
	"reflect"
	"strings"
	"sync"

	"github.com/gofhir/models/r4"

	"github.com/fhirsync/fhirsync/maps/path"
)

// r4Element is what validation learns about the element a path reaches.
type r4Element struct {
	// Type is the FHIR type code (string, date, HumanName, BackboneElement).
	Type string
	// Many says the last element repeats.
	Many bool
	// Codes lists the allowed codes when the element has a required binding.
	Codes []string
	// goType is the Go type of the element in the R4 model.
	goType reflect.Type
}

var r4Model = r4.FHIRPathModel()

// r4Fields caches json-name → struct field per R4 Go type.
var r4Fields sync.Map // reflect.Type → map[string]reflect.StructField

func jsonFields(t reflect.Type) map[string]reflect.StructField {
	if v, ok := r4Fields.Load(t); ok {
		return v.(map[string]reflect.StructField)
	}
	m := map[string]reflect.StructField{}
	if t.Kind() == reflect.Struct {
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name != "" && name != "-" {
				m[name] = f
			}
		}
	}
	r4Fields.Store(t, m)
	return m
}

func knownResourceType(t string) bool { return r4.IsKnownResourceType(t) }

// resolveR4 walks segs from a context (a resource type, or the element an
// expansion iterates) through the R4 model. It returns the element reached,
// or an error naming the first segment that reaches no element.
func resolveR4(ctxPath string, ctxType reflect.Type, segs []path.Segment) (r4Element, error) {
	el := r4Element{Type: ctxPath, goType: ctxType}
	cur, t := ctxPath, ctxType
	for i, s := range segs {
		name := s.Name
		if s.Extension != "" {
			name = "extension"
		}
		f, ok := jsonFields(t)[name]
		if !ok || strings.HasPrefix(name, "_") {
			return el, fmt.Errorf("%s has no element %q", describe(cur), name)
		}
		ft := f.Type
		many := ft.Kind() == reflect.Slice
		if many {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		p := cur + "." + name
		typ := r4Model.TypeOf(r4Model.ResolvePath(p))
		if typ == "" {
			return el, fmt.Errorf("%s has no element %q", describe(cur), name)
		}
		if s.Index >= 0 && !many {
			return el, fmt.Errorf("%s does not repeat; [%d] cannot apply", p, s.Index)
		}
		for _, c := range s.Where {
			field, _, _ := strings.Cut(c.Field, ".")
			if _, ok := jsonFields(ft)[field]; !ok {
				return el, fmt.Errorf("where(): %s has no element %q", p, c.Field)
			}
		}
		el = r4Element{Type: typ, Many: many, goType: ft}
		if ft.Kind() == reflect.String && ft.Name() != "string" {
			el.Codes = r4RequiredCodes[ft.Name()]
		}
		if i < len(segs)-1 {
			switch typ {
			case "BackboneElement", "Element":
				cur = p
			default:
				if strings.HasPrefix(typ, "http://hl7.org/fhirpath/System.") {
					typ = "string"
				}
				cur = typ
			}
			t = ft
		}
	}
	if strings.HasPrefix(el.Type, "http://hl7.org/fhirpath/System.") {
		el.Type = "string"
	}
	return el, nil
}

func describe(ctx string) string {
	if r4Model.IsResource(ctx) {
		return "resource " + ctx
	}
	return ctx
}

// resourceGoType returns the R4 model's Go type for a resource type.
func resourceGoType(resourceType string) (reflect.Type, bool) {
	res, err := r4.NewResource(resourceType)
	if err != nil {
		return nil, false
	}
	t := reflect.TypeOf(res)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t, true
}

// compatible lists the FHIR element types each CRM type can carry.
var compatible = map[CRMType][]string{
	TypeString:      {"string", "code", "uri", "url", "id", "markdown", "canonical", "oid", "uuid"},
	TypeMemo:        {"string", "markdown"},
	TypeInt:         {"integer", "positiveInt", "unsignedInt"},
	TypeDecimal:     {"decimal"},
	TypeMoney:       {"decimal"},
	TypeBool:        {"boolean"},
	TypeDateOnly:    {"date"},
	TypeDateTimeUTC: {"dateTime", "instant"},
	TypeOptionSet:   {"code", "string", "uri", "boolean"},
	TypeMultiSelect: {"code", "string"},
	TypeLookup:      {"string"}, // Reference.reference
}
