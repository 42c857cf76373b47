package maps

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/fhirsync/fhirsync/maps/path"
)

// FHIRElement is one child element of an R4 element, as the map editor
// offers it while a path is typed.
type FHIRElement struct {
	// Name is the JSON element name (given, deceasedBoolean).
	Name string `json:"name"`
	// Type is the FHIR type code (string, HumanName, BackboneElement).
	Type string `json:"type"`
	// Many says the element repeats.
	Many bool `json:"many"`
	// Codes lists the allowed codes when the element has a required binding.
	Codes []string `json:"codes,omitempty"`
}

// FHIRElements lists, from the R4 definitions, the child elements of the
// element that parent reaches in resourceType ("" for the resource
// itself). within, when set, is an expansion map's array path: parent is
// then relative to one item of that array, as an expansion's attribute
// maps are. It returns the type of the element parent reaches, and an
// error naming the first step that reaches no element.
func FHIRElements(resourceType, within, parent string) (string, []FHIRElement, error) {
	rt, ok := resourceGoType(resourceType)
	if !ok || !knownResourceType(resourceType) {
		return "", nil, fmt.Errorf("%q is not an R4 resource type", resourceType)
	}
	ctx, t := resourceType, rt
	inItem := false
	if within != "" {
		p, err := path.Compile(within)
		if err != nil {
			return "", nil, err
		}
		if ctx, t, err = elementContext(resourceType, rt, p.Segments()); err != nil {
			return "", nil, err
		}
		inItem = true
	}
	typ := ctx
	if parent != "" {
		var p *path.Path
		var err error
		if inItem {
			p, err = path.CompileIn(ctx, parent)
		} else {
			p, err = path.Compile(parent)
		}
		if err != nil {
			return "", nil, err
		}
		if p.Type() != "" {
			return "", nil, fmt.Errorf("path %s is qualified with %s; paths are relative to %s", parent, p.Type(), describe(ctx))
		}
		el, err := resolveR4(ctx, t, p.Segments())
		if err != nil {
			return "", nil, err
		}
		typ = el.Type
		if ctx, t, err = elementContext(ctx, t, p.Segments()); err != nil {
			return "", nil, err
		}
	}
	var out []FHIRElement
	for name, f := range jsonFields(t) {
		if strings.HasPrefix(name, "_") || name == "resourceType" {
			continue
		}
		ft := f.Type
		many := ft.Kind() == reflect.Slice
		if many {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		et := r4Model.TypeOf(r4Model.ResolvePath(ctx + "." + name))
		if et == "" {
			continue
		}
		if strings.HasPrefix(et, "http://hl7.org/fhirpath/System.") {
			et = "string"
		}
		el := FHIRElement{Name: name, Type: et, Many: many}
		if ft.Kind() == reflect.String && ft.Name() != "string" {
			el.Codes = r4RequiredCodes[ft.Name()]
		}
		out = append(out, el)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return typ, out, nil
}

// elementContext walks segs from ctx and returns the context the last
// element's children are named in (its type, or its backbone path) and
// its Go type.
func elementContext(ctx string, t reflect.Type, segs []path.Segment) (string, reflect.Type, error) {
	if len(segs) == 0 {
		return ctx, t, nil
	}
	cur := ctx
	var last r4Element
	for i := range segs {
		el, err := resolveR4(ctx, t, segs[:i+1])
		if err != nil {
			return "", nil, err
		}
		name := segs[i].Name
		if segs[i].Extension != "" {
			name = "extension"
		}
		switch el.Type {
		case "BackboneElement", "Element":
			cur = cur + "." + name
		default:
			cur = el.Type
		}
		last = el
	}
	if last.goType == nil {
		return "", nil, errors.New("the element has no definition")
	}
	return cur, last.goType, nil
}
