package crmserver

import (
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// This file holds the OData subset: $filter (eq ne gt ge lt le, and or not,
// parentheses, contains/startswith/endswith, the query function
// Microsoft.Dynamics.CRM.In), $orderby, $select and key segments such as
// contacts(msemr_azurefhirid='p1').

type token struct {
	kind string // ident, string, literal, (, ), ",", eof
	text string
}

func tokenize(s string) ([]token, error) {
	var out []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			i++
		case c == '(' || c == ')' || c == ',' || c == '[' || c == ']' || c == '=':
			out = append(out, token{kind: string(c)})
			i++
		case c == '"':
			// A double-quoted string: only in a collection of
			// PropertyValues, as JSON writes it.
			j := strings.IndexByte(s[i+1:], '"')
			if j < 0 {
				return nil, fmt.Errorf("unterminated string literal")
			}
			out = append(out, token{kind: "string", text: s[i+1 : i+1+j]})
			i += j + 2
		case c == '\'':
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(s) {
					return nil, fmt.Errorf("unterminated string literal")
				}
				if s[j] == '\'' {
					if j+1 < len(s) && s[j+1] == '\'' {
						b.WriteByte('\'')
						j += 2
						continue
					}
					break
				}
				b.WriteByte(s[j])
				j++
			}
			out = append(out, token{kind: "string", text: b.String()})
			i = j + 1
		case c == '_' || unicode.IsLetter(rune(c)) || c >= '0' && c <= '9' || c == '-':
			j := i
			for j < len(s) && (s[j] == '_' || s[j] == '.' || s[j] == ':' || s[j] == '-' || s[j] == '+' ||
				unicode.IsLetter(rune(s[j])) || s[j] >= '0' && s[j] <= '9') {
				j++
			}
			w := s[i:j]
			kind := "ident"
			if c >= '0' && c <= '9' || c == '-' {
				kind = "literal"
			}
			out = append(out, token{kind: kind, text: w})
			i = j
		default:
			return nil, fmt.Errorf("unexpected character %q", c)
		}
	}
	return append(out, token{kind: "eof"}), nil
}

type filterNode interface {
	eval(get func(string) any) bool
}

type andNode struct{ l, r filterNode }
type orNode struct{ l, r filterNode }
type notNode struct{ x filterNode }
type cmpNode struct {
	attr string
	op   string
	lit  any // string, json.Number, bool, nil
}
type funcNode struct {
	fn, attr, arg string
}

// inNode is Microsoft.Dynamics.CRM.In: the attribute equals one of vals.
type inNode struct {
	attr string
	vals []any
}

func (n inNode) eval(g func(string) any) bool {
	v := g(n.attr)
	for _, lit := range n.vals {
		// The values are strings whatever the column's type:
		// PropertyValues=['100000000'] matches a choice column's 100000000.
		if s, ok := lit.(string); ok {
			if _, num := v.(json.Number); num {
				lit = json.Number(s)
			}
		}
		if cmpNode(cmpNode{attr: n.attr, op: "eq", lit: lit}).eval(func(string) any { return v }) {
			return true
		}
	}
	return false
}

func (n andNode) eval(g func(string) any) bool { return n.l.eval(g) && n.r.eval(g) }
func (n orNode) eval(g func(string) any) bool  { return n.l.eval(g) || n.r.eval(g) }
func (n notNode) eval(g func(string) any) bool { return !n.x.eval(g) }
func (n funcNode) eval(g func(string) any) bool {
	s, ok := g(n.attr).(string)
	if !ok {
		return false
	}
	s, arg := collate(s), collate(n.arg)
	switch n.fn {
	case "contains":
		return strings.Contains(s, arg)
	case "startswith":
		return strings.HasPrefix(s, arg)
	default:
		return strings.HasSuffix(s, arg)
	}
}

func (n cmpNode) eval(g func(string) any) bool {
	c, ok := compare(g(n.attr), n.lit)
	switch n.op {
	case "eq":
		return ok && c == 0
	case "ne":
		return !ok || c != 0
	case "gt":
		return ok && c > 0
	case "ge":
		return ok && c >= 0
	case "lt":
		return ok && c < 0
	case "le":
		return ok && c <= 0
	}
	return false
}

// compare orders a stored value against a literal; ok is false when they
// are not comparable (null against a value, mismatched types).
func compare(v, lit any) (int, bool) {
	if v == nil || lit == nil {
		if v == nil && lit == nil {
			return 0, true
		}
		return 0, false
	}
	if lv, isLookup := v.(lookupValue); isLookup {
		v = lv.ID
	}
	switch l := lit.(type) {
	case json.Number:
		n, ok := v.(json.Number)
		if !ok {
			return 0, false
		}
		a, err1 := n.Float64()
		b, err2 := l.Float64()
		if err1 != nil || err2 != nil {
			return 0, false
		}
		return cmpFloat(a, b), true
	case bool:
		b, ok := v.(bool)
		if !ok {
			return 0, false
		}
		if b == l {
			return 0, true
		}
		if !b {
			return -1, true
		}
		return 1, true
	case string:
		s, ok := v.(string)
		if !ok {
			return 0, false
		}
		if ta, ok := parseTime(s); ok {
			if tb, ok := parseTime(l); ok {
				return ta.Compare(tb), true
			}
		}
		return strings.Compare(collate(s), collate(l)), true
	}
	return 0, false
}

func parseTime(s string) (time.Time, bool) {
	if len(s) < 10 || s[4] != '-' {
		return time.Time{}, false
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, true
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t, true
	}
	return time.Time{}, false
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

type filterParser struct {
	toks  []token
	pos   int
	known func(string) bool
}

// parseFilter parses a $filter expression; known reports whether an
// attribute name (or _lookup_value) exists.
func parseFilter(s string, known func(string) bool) (filterNode, error) {
	toks, err := tokenize(s)
	if err != nil {
		return nil, err
	}
	p := &filterParser{toks: toks, known: known}
	n, err := p.or(0)
	if err != nil {
		return nil, err
	}
	if p.peek().kind != "eof" {
		return nil, fmt.Errorf("unexpected %q after expression", p.peek().text)
	}
	return n, nil
}

func (p *filterParser) peek() token { return p.toks[p.pos] }
func (p *filterParser) next() token { t := p.toks[p.pos]; p.pos++; return t }

func (p *filterParser) or(depth int) (filterNode, error) {
	if depth > 50 {
		return nil, fmt.Errorf("expression nested too deeply")
	}
	l, err := p.and(depth)
	if err != nil {
		return nil, err
	}
	for p.peek().kind == "ident" && p.peek().text == "or" {
		p.next()
		r, err := p.and(depth)
		if err != nil {
			return nil, err
		}
		l = orNode{l, r}
	}
	return l, nil
}

func (p *filterParser) and(depth int) (filterNode, error) {
	l, err := p.unary(depth)
	if err != nil {
		return nil, err
	}
	for p.peek().kind == "ident" && p.peek().text == "and" {
		p.next()
		r, err := p.unary(depth)
		if err != nil {
			return nil, err
		}
		l = andNode{l, r}
	}
	return l, nil
}

func (p *filterParser) unary(depth int) (filterNode, error) {
	t := p.next()
	switch {
	case t.kind == "(":
		n, err := p.or(depth + 1)
		if err != nil {
			return nil, err
		}
		if p.next().kind != ")" {
			return nil, fmt.Errorf("missing )")
		}
		return n, nil
	case t.kind == "ident" && t.text == "not":
		x, err := p.unary(depth + 1)
		if err != nil {
			return nil, err
		}
		return notNode{x}, nil
	case t.kind == "ident" && (t.text == "contains" || t.text == "startswith" || t.text == "endswith"):
		if p.next().kind != "(" {
			return nil, fmt.Errorf("%s: missing (", t.text)
		}
		a := p.next()
		if a.kind != "ident" || !p.known(a.text) {
			return nil, unknownProperty(a.text)
		}
		if p.next().kind != "," {
			return nil, fmt.Errorf("%s: missing ,", t.text)
		}
		s := p.next()
		if s.kind != "string" {
			return nil, fmt.Errorf("%s: second argument must be a string", t.text)
		}
		if p.next().kind != ")" {
			return nil, fmt.Errorf("%s: missing )", t.text)
		}
		return funcNode{fn: t.text, attr: a.text, arg: s.text}, nil
	case t.kind == "ident" && t.text == queryFunctionIn:
		return p.in()
	case t.kind == "ident":
		if !p.known(t.text) {
			return nil, unknownProperty(t.text)
		}
		op := p.next()
		switch op.text {
		case "eq", "ne", "gt", "ge", "lt", "le":
		default:
			return nil, fmt.Errorf("expected a comparison operator after %s", t.text)
		}
		lit, err := literal(p.next())
		if err != nil {
			return nil, err
		}
		return cmpNode{attr: t.text, op: op.text, lit: lit}, nil
	}
	return nil, fmt.Errorf("unexpected %q", t.text+t.kind)
}

// queryFunctionIn is the Dataverse query function "In" ("Filter rows",
// Query functions, learn.microsoft.com/power-apps/developer/data-platform/webapi/query/filter-rows#query-functions;
// reference: learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/in):
// Microsoft.Dynamics.CRM.In(PropertyName='name',PropertyValues=['a','b']).
const queryFunctionIn = "Microsoft.Dynamics.CRM.In"

// in parses the arguments of Microsoft.Dynamics.CRM.In, named and in
// either order.
func (p *filterParser) in() (filterNode, error) {
	if p.next().kind != "(" {
		return nil, fmt.Errorf("%s: missing (", queryFunctionIn)
	}
	var n inNode
	seenName, seenValues := false, false
	for {
		name := p.next()
		if name.kind != "ident" || p.next().kind != "=" {
			return nil, fmt.Errorf("%s: expected PropertyName= or PropertyValues=", queryFunctionIn)
		}
		switch name.text {
		case "PropertyName":
			v := p.next()
			if v.kind != "string" {
				return nil, fmt.Errorf("%s: PropertyName must be a string", queryFunctionIn)
			}
			// In names columns by their logical names, lookups too
			// (parentcustomerid, not _parentcustomerid_value, which
			// Dataverse refuses: the entity "doesn't contain attribute
			// with Name = '_parentcustomerid_value'").
			lookupValue := strings.HasPrefix(v.text, "_") && strings.HasSuffix(v.text, "_value")
			if lookupValue || (!p.known(v.text) && !p.known("_"+v.text+"_value")) {
				return nil, unknownProperty(v.text)
			}
			n.attr, seenName = v.text, true
		case "PropertyValues":
			if p.next().kind != "[" {
				return nil, fmt.Errorf("%s: PropertyValues must be a collection [...]", queryFunctionIn)
			}
			for {
				v := p.next()
				if v.kind == "]" && len(n.vals) == 0 {
					break
				}
				if v.kind != "string" {
					return nil, fmt.Errorf("%s: PropertyValues must hold strings", queryFunctionIn)
				}
				lit := any(v.text)
				if len(v.text) == 36 && strings.Count(v.text, "-") == 4 {
					lit = strings.ToLower(v.text)
				}
				n.vals = append(n.vals, lit)
				if sep := p.next(); sep.kind == "]" {
					break
				} else if sep.kind != "," {
					return nil, fmt.Errorf("%s: expected , or ] in PropertyValues", queryFunctionIn)
				}
			}
			seenValues = true
		default:
			return nil, fmt.Errorf("%s: unknown parameter %s", queryFunctionIn, name.text)
		}
		sep := p.next()
		if sep.kind == ")" {
			break
		}
		if sep.kind != "," {
			return nil, fmt.Errorf("%s: missing )", queryFunctionIn)
		}
	}
	if !seenName || !seenValues {
		return nil, fmt.Errorf("%s needs PropertyName and PropertyValues", queryFunctionIn)
	}
	return n, nil
}

// withAliases replaces the parameter aliases of a $filter (@p1) by the
// values the query string gives them (&@p1='name'), as Dataverse accepts
// for function parameters ("Use parameter aliases with system query
// options").
func withAliases(filter string, q url.Values) string {
	if !strings.Contains(filter, "@") {
		return filter
	}
	var b strings.Builder
	for i := 0; i < len(filter); {
		if filter[i] != '@' {
			b.WriteByte(filter[i])
			i++
			continue
		}
		j := i + 1
		for j < len(filter) && (filter[j] == '_' || unicode.IsLetter(rune(filter[j])) || filter[j] >= '0' && filter[j] <= '9') {
			j++
		}
		if v, ok := q[filter[i:j]]; ok && len(v) > 0 {
			b.WriteString(v[0])
		} else {
			b.WriteString(filter[i:j])
		}
		i = j
	}
	return b.String()
}

type propertyError string

func (e propertyError) Error() string { return string(e) }

func unknownProperty(name string) error {
	return propertyError(fmt.Sprintf("Could not find a property named '%s'.", name))
}

func literal(t token) (any, error) {
	switch t.kind {
	case "string":
		return t.text, nil
	case "ident":
		switch t.text {
		case "true":
			return true, nil
		case "false":
			return false, nil
		case "null":
			return nil, nil
		}
		if len(t.text) == 36 && strings.Count(t.text, "-") == 4 {
			return strings.ToLower(t.text), nil
		}
	case "literal":
		if _, err := strconv.ParseFloat(t.text, 64); err == nil {
			return json.Number(t.text), nil
		}
		if _, ok := parseTime(t.text); ok {
			return t.text, nil
		}
		if len(t.text) == 36 && strings.Count(t.text, "-") == 4 {
			return strings.ToLower(t.text), nil
		}
	}
	return nil, fmt.Errorf("unsupported literal %q", t.text)
}

type orderTerm struct {
	attr string
	desc bool
}

func parseOrderBy(s string, known func(string) bool) ([]orderTerm, error) {
	var out []orderTerm
	for _, part := range strings.Split(s, ",") {
		f := strings.Fields(part)
		if len(f) == 0 || len(f) > 2 || !known(f[0]) {
			return nil, fmt.Errorf("invalid $orderby term %q", strings.TrimSpace(part))
		}
		t := orderTerm{attr: f[0]}
		if len(f) == 2 {
			switch f[1] {
			case "asc":
			case "desc":
				t.desc = true
			default:
				return nil, fmt.Errorf("invalid $orderby direction %q", f[1])
			}
		}
		out = append(out, t)
	}
	return out, nil
}

func sortRows(rows []*row, terms []orderTerm, get func(*row, string) any, primary string) {
	sort.SliceStable(rows, func(i, j int) bool {
		for _, t := range terms {
			a, b := get(rows[i], t.attr), get(rows[j], t.attr)
			if a == nil && b == nil {
				continue
			}
			if a == nil || b == nil {
				// nulls sort first ascending, as in SQL Server
				return (a == nil) != t.desc
			}
			c, ok := compare(a, b)
			if !ok || c == 0 {
				continue
			}
			return (c < 0) != t.desc
		}
		return rows[i].id < rows[j].id
	})
}

// parseKeySegment parses the inside of "set(...)": a bare GUID, or
// comma-separated name=literal pairs.
func parseKeySegment(s string) (id string, key map[string]any, err error) {
	if !strings.Contains(s, "=") {
		if len(s) != 36 || strings.Count(s, "-") != 4 {
			return "", nil, fmt.Errorf("invalid key %q", s)
		}
		return strings.ToLower(s), nil, nil
	}
	key = map[string]any{}
	for _, pair := range splitOutsideQuotes(s, ',') {
		eq := strings.IndexByte(pair, '=')
		if eq <= 0 {
			return "", nil, fmt.Errorf("invalid key segment")
		}
		name := strings.TrimSpace(pair[:eq])
		vt, err := tokenize(strings.TrimSpace(pair[eq+1:]))
		if err != nil || len(vt) != 2 {
			return "", nil, fmt.Errorf("invalid key value for %s", name)
		}
		v, err := literal(vt[0])
		if err != nil || v == nil {
			return "", nil, fmt.Errorf("invalid key value for %s", name)
		}
		key[name] = v
	}
	return "", key, nil
}

func splitOutsideQuotes(s string, sep byte) []string {
	var out []string
	in := false
	start := 0
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\'':
			in = !in
		case s[i] == sep && !in:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// maxCount is the most rows $count reports: Dataverse counts up to 5,000.
const maxCount = 5000

// annotations is the odata.include-annotations preference of a request:
// the annotation names or patterns ("*", "Microsoft.Dynamics.CRM.*") the
// client asked for. Exclusions ("-name") are ignored.
type annotations struct {
	raw      string
	patterns []string
}

func wantAnnotations(h map[string]string) annotations {
	raw, ok := h["odata.include-annotations"]
	if !ok || raw == "" {
		return annotations{}
	}
	a := annotations{raw: raw}
	for _, p := range strings.Split(raw, ",") {
		if p = strings.TrimSpace(p); p != "" && !strings.HasPrefix(p, "-") {
			a.patterns = append(a.patterns, p)
		}
	}
	return a
}

// any reports whether any annotation was asked for.
func (a annotations) any() bool { return len(a.patterns) > 0 }

func (a annotations) wants(name string) bool {
	for _, p := range a.patterns {
		if p == "*" || p == name {
			return true
		}
		if prefix, ok := strings.CutSuffix(p, "*"); ok && strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// applied is the Preference-Applied value for the preference.
func (a annotations) applied() string { return `odata.include-annotations="` + a.raw + `"` }

const (
	annFormatted  = "OData.Community.Display.V1.FormattedValue"
	annLogical    = "Microsoft.Dynamics.CRM.lookuplogicalname"
	annNavigation = "Microsoft.Dynamics.CRM.associatednavigationproperty"
)

// annotate adds the annotations asked for to out, a row as rowJSON made
// it: formatted values (choice labels, Yes/No, numbers with group
// separators and the column's precision, money with a currency symbol,
// dates as en-US in UTC, the primary name of a lookup's row) and, for
// lookups, the referenced table and navigation property.
func (s *Server) annotate(tb *table, r *row, out map[string]any, ann annotations) {
	if !ann.any() {
		return
	}
	for _, a := range tb.def.Attributes {
		if a.isLookup() {
			key := "_" + a.LogicalName + "_value"
			if _, selected := out[key]; !selected {
				continue
			}
			lv, ok := attrValue(tb.def, r, a.LogicalName).(lookupValue)
			if !ok || lv.ID == "" || lv.Target == "" {
				continue
			}
			id, target := lv.ID, lv.Target
			if ann.wants(annLogical) {
				out[key+"@"+annLogical] = target
			}
			if ann.wants(annNavigation) {
				out[key+"@"+annNavigation] = navigationFor(tb.def, a, target)
			}
			if ann.wants(annFormatted) {
				if name, ok := s.primaryName(target, id); ok {
					out[key+"@"+annFormatted] = name
				}
			}
			continue
		}
		v, ok := out[a.LogicalName]
		if !ok || v == nil || !ann.wants(annFormatted) {
			continue
		}
		if f, ok := formatValue(a, v); ok {
			out[a.LogicalName+"@"+annFormatted] = f
		}
	}
}

func navigationFor(e *Entity, a *Attribute, target string) string {
	for _, r := range e.ManyToOne {
		if r.Attribute == a.LogicalName && r.Target == target {
			return r.NavigationProperty
		}
	}
	return a.LogicalName
}

func (s *Server) primaryName(entity, id string) (string, bool) {
	tb := s.st.tables[entity]
	if tb == nil || tb.def.PrimaryName == "" {
		return "", false
	}
	r := tb.rows[id]
	if r == nil {
		return "", false
	}
	name, ok := r.attrs.get(tb.def.PrimaryName).(string)
	return name, ok
}

// formatValue is the formatted value of a stored value, for an en-US
// user in UTC.
func formatValue(a *Attribute, v any) (string, bool) {
	switch a.Type {
	case TypePicklist, TypeState, TypeStatus:
		n, ok := v.(json.Number)
		if !ok {
			return "", false
		}
		i, err := n.Int64()
		if err != nil {
			return "", false
		}
		return optionLabel(a, int(i))
	case TypeMultiSelect:
		str, ok := v.(string)
		if !ok {
			return "", false
		}
		var labels []string
		for _, p := range strings.Split(str, ",") {
			i, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil {
				return "", false
			}
			l, ok := optionLabel(a, i)
			if !ok {
				return "", false
			}
			labels = append(labels, l)
		}
		return strings.Join(labels, "; "), true
	case TypeBoolean:
		b, ok := v.(bool)
		if !ok {
			return "", false
		}
		if b {
			return "Yes", true
		}
		return "No", true
	case TypeInteger, TypeBigInt:
		n, ok := v.(json.Number)
		if !ok {
			return "", false
		}
		return groupDigits(n.String()), true
	case TypeDecimal, TypeMoney:
		n, ok := v.(json.Number)
		if !ok {
			return "", false
		}
		r, ok := new(big.Rat).SetString(n.String())
		if !ok {
			return "", false
		}
		f := groupDigits(r.FloatString(a.Precision))
		if a.Type == TypeMoney {
			if neg, ok := strings.CutPrefix(f, "-"); ok {
				return "-$" + neg, true
			}
			return "$" + f, true
		}
		return f, true
	case TypeDouble:
		n, ok := v.(json.Number)
		if !ok {
			return "", false
		}
		return groupDigits(n.String()), true
	case TypeDateTime:
		str, ok := v.(string)
		if !ok {
			return "", false
		}
		if a.DateOnly {
			t, err := time.Parse("2006-01-02", str)
			if err != nil {
				return "", false
			}
			return t.Format("1/2/2006"), true
		}
		t, err := time.Parse(time.RFC3339, str)
		if err != nil {
			return "", false
		}
		return t.UTC().Format("1/2/2006 3:04 PM"), true
	}
	return "", false
}

func optionLabel(a *Attribute, v int) (string, bool) {
	for _, o := range a.Options {
		if o.Value == v {
			return o.Label, true
		}
	}
	return "", false
}

// groupDigits puts en-US group separators into a plain decimal number.
func groupDigits(n string) string {
	sign := ""
	if strings.HasPrefix(n, "-") {
		sign, n = "-", n[1:]
	}
	whole, frac, hasFrac := strings.Cut(n, ".")
	if strings.ContainsAny(whole, "eE") {
		return sign + n
	}
	var b strings.Builder
	for i, c := range whole {
		if i > 0 && (len(whole)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if hasFrac {
		return sign + b.String() + "." + frac
	}
	return sign + b.String()
}

// countRows answers <set>/$count: the number of rows matching $filter,
// as plain text, at most 5,000.
func (s *Server) countRows(tb *table, req *request) response {
	if req.method != http.MethodGet {
		return errMethod()
	}
	n := 0
	if f := req.query.Get("$filter"); f != "" {
		node, err := parseFilter(withAliases(f, req.query), knownFilterName(tb.def))
		if err != nil {
			return errBadRequest("0x80060888", "Invalid $filter: "+err.Error()).response()
		}
		for _, r := range tb.rows {
			if node.eval(func(name string) any { return filterValue(tb.def, r, name) }) {
				n++
			}
		}
	} else {
		n = len(tb.rows)
	}
	h := newHeader()
	h.Set("Content-Type", "text/plain")
	return response{status: http.StatusOK, header: h, body: []byte(strconv.Itoa(min(n, maxCount)))}
}

// addCount adds @odata.count (for $count=true) and the total record count
// annotations (when asked for) to a collection answer; matched is how
// many rows the filter matched before $top and paging.
func addCount(out map[string]any, q url.Values, ann annotations, matched int) {
	counted := strings.EqualFold(q.Get("$count"), "true")
	if counted {
		out["@odata.count"] = min(matched, maxCount)
	}
	if ann.wants("Microsoft.Dynamics.CRM.totalrecordcount") {
		total := -1
		if counted {
			total = min(matched, maxCount)
		}
		out["@Microsoft.Dynamics.CRM.totalrecordcount"] = total
	}
	if ann.wants("Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded") {
		out["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] = counted && matched > maxCount
	}
}

// splitPreferences splits a Prefer header at the commas outside double
// quotes: odata.include-annotations="a,b" is one preference.
func splitPreferences(line string) []string {
	var out []string
	in := false
	start := 0
	for i := 0; i < len(line); i++ {
		switch {
		case line[i] == '"':
			in = !in
		case line[i] == ',' && !in:
			out = append(out, line[start:i])
			start = i + 1
		}
	}
	return append(out, line[start:])
}
