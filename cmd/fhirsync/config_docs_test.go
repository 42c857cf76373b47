package main

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// configKeys lists every key the configuration knows, as dotted YAML
// paths: sections (database, crm.users) as well as leaves. A list of
// entries (crm.users) contributes its entries' keys under its own path.
func configKeys() []string {
	var keys []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			key := name
			if prefix != "" {
				key = prefix + "." + name
			}
			keys = append(keys, key)
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			switch {
			case ft.Kind() == reflect.Struct && ft.String() != "time.Time":
				walk(ft, key)
			case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
				walk(ft.Elem(), key)
			}
		}
	}
	walk(reflect.TypeFor[Config](), "")
	return keys
}

// knownKey reports whether key (which may hold * for any one or more
// path segments, as in *.auth.client_id or admin.oidc.*) names a key of
// keys.
func knownKey(keys []string, key string) bool {
	if !strings.Contains(key, "*") {
		return slices.Contains(keys, key)
	}
	pat := regexp.MustCompile("^" + strings.ReplaceAll(regexp.QuoteMeta(key), `\*`, `[a-z0-9_.]+`) + "$")
	return slices.ContainsFunc(keys, pat.MatchString)
}

// backticked finds `code` spans.
var backticked = regexp.MustCompile("`([^`\n]+)`")

// docKeys reads the configuration keys a Markdown text names: every
// first-column key of a configuration table (one headed "| key |") (with the short
// names that follow a full key in the same cell, e.g. `logs.capture.enabled`,
// `key_id`, read as siblings of the first), and every code span elsewhere
// that is a dotted path starting with a configuration section, optionally
// followed by ": value" (e.g. `admin.oidc.issuer`, `queue.kind: servicebus`).
func docKeys(text string, sections []string) []string {
	var out []string
	path := regexp.MustCompile(`^(` + strings.Join(sections, "|") + `)(\.[a-z0-9_*]+)+$`)
	inTable := false
	for _, line := range proseLines(text) {
		switch {
		case strings.HasPrefix(line, "| key |"):
			inTable = true
			continue
		case !strings.HasPrefix(line, "|"):
			inTable = false
		}
		if inTable && strings.HasPrefix(line, "| `") {
			cell := strings.Split(line, "|")[1]
			parent := ""
			for i, m := range backticked.FindAllStringSubmatch(cell, -1) {
				k := m[1]
				switch {
				case i == 0:
					if j := strings.LastIndex(k, "."); j > 0 {
						parent = k[:j+1]
					}
				case !strings.Contains(k, "."):
					k = parent + k
				}
				out = append(out, k)
			}
			line = strings.Join(strings.Split(line, "|")[2:], "|")
		}
		spans := backticked.FindAllStringSubmatch(line, -1)
		for i, m := range spans {
			k, _, _ := strings.Cut(m[1], ":")
			k = strings.TrimSpace(k)
			if !path.MatchString(k) {
				continue
			}
			out = append(out, k)
			// `admin.oidc.issuer`, `client_id` and `redirect_url`: short
			// names right after a full key in prose are its siblings.
			prev := m[0]
			for _, n := range spans[i+1:] {
				short := n[1]
				if !regexp.MustCompile(`^[a-z][a-z0-9_]*$`).MatchString(short) {
					break
				}
				from := strings.Index(line, prev) + len(prev)
				to := strings.Index(line[from:], n[0])
				if to < 0 || strings.TrimSpace(strings.NewReplacer(",", "", " and ", "", " or ", "", "/", "").Replace(" "+line[from:from+to]+" ")) != "" {
					break
				}
				prev = n[0]
				out = append(out, k[:strings.LastIndex(k, ".")+1]+short)
			}
		}
	}
	return out
}

// notConfig are names in the documents that look like configuration keys
// and are not: the admin app's permissions.
var notConfig = map[string]bool{"logs.read": true, "logs.export": true, "maps.read": true, "maps.edit": true}

// TestDocumentedConfigKeysExist fails when the README or a document
// under docs/ names a configuration key the configuration does not know:
// a key that does not exist is silently ignored in the environment, and
// refused in a YAML file only at start.
func TestDocumentedConfigKeysExist(t *testing.T) {
	t.Parallel()
	keys := configKeys()
	var sections []string
	for _, k := range keys {
		if !strings.Contains(k, ".") && slices.ContainsFunc(keys, func(s string) bool { return strings.HasPrefix(s, k+".") }) {
			sections = append(sections, k)
		}
	}
	files, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append([]string{"../../README.md"}, files...)
	tableKeys := 0
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range docKeys(string(b), sections) {
			if file == "../../README.md" {
				tableKeys++
			}
			if !knownKey(keys, k) && !notConfig[k] {
				t.Errorf("%s names configuration key %q, which the configuration does not know", filepath.Base(file), k)
			}
		}
	}
	if tableKeys < 50 {
		t.Fatalf("read %d keys from the README; the configuration table was not found", tableKeys)
	}
}

// proseLines splits text into table rows and paragraphs: the lines of a
// paragraph are joined, so a key and the short names after it may wrap.
// Code blocks are left out (yamlBlocks reads the YAML ones).
func proseLines(text string) []string {
	var out []string
	para := ""
	flush := func() {
		if para != "" {
			out = append(out, para)
			para = ""
		}
	}
	inCode := false
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, "```"):
			flush()
			inCode = !inCode
		case inCode:
		case strings.HasPrefix(line, "|"), strings.TrimSpace(line) == "", strings.HasPrefix(line, "#"):
			flush()
			if strings.TrimSpace(line) != "" {
				out = append(out, line)
			}
		default:
			if strings.HasPrefix(strings.TrimSpace(line), "- ") {
				flush()
			}
			para = strings.TrimSpace(para + " " + strings.TrimSpace(line))
		}
	}
	flush()
	return out
}

// yamlBlocks returns the ```yaml blocks of a Markdown text.
func yamlBlocks(text string) []string {
	var out []string
	for _, part := range strings.Split(text, "```yaml\n")[1:] {
		block, _, _ := strings.Cut(part, "```")
		out = append(out, block)
	}
	return out
}

// TestDocumentedConfigExamplesLoad decodes every YAML example of the
// README and docs/ that is a configuration (not a map set) strictly, as
// serve reads its file: an unknown key fails.
func TestDocumentedConfigExamplesLoad(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	examples := 0
	for _, file := range append([]string{"../../README.md"}, files...) {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, block := range yamlBlocks(string(b)) {
			var top map[string]any
			if err := yaml.Unmarshal([]byte(block), &top); err != nil {
				t.Errorf("%s: a YAML example does not parse: %v", filepath.Base(file), err)
				continue
			}
			if _, isMaps := top["entityMaps"]; isMaps {
				continue
			}
			examples++
			dec := yaml.NewDecoder(strings.NewReader(block))
			dec.KnownFields(true)
			var cfg Config
			if err := dec.Decode(&cfg); err != nil {
				t.Errorf("%s: configuration example does not load: %v\n%s", filepath.Base(file), err, block)
			}
		}
	}
	if examples < 2 {
		t.Fatalf("found %d configuration examples; want the README's and docs/conflicts.md's at least", examples)
	}
}

// TestDocKeysReadsTheTableAndProse keeps the reader honest: it must find
// both real and made-up keys, so that the test above can fail.
func TestDocKeysReadsTheTableAndProse(t *testing.T) {
	t.Parallel()
	text := "| key | default | meaning |\n|---|---|---|\n| `logs.capture.enabled`, `key_id`, `nope` (secret) | off | x `not.a.key` |\n" +
		"Set `admin.oidc.issuer`, `client_id`\nand `redirect_url` for OIDC; `queue.kind: servicebus`; `agent.Config` is Go.\n"
	got := docKeys(text, []string{"logs", "admin", "queue", "agent"})
	want := []string{"logs.capture.enabled", "logs.capture.key_id", "logs.capture.nope",
		"admin.oidc.issuer", "admin.oidc.client_id", "admin.oidc.redirect_url", "queue.kind"}
	if !slices.Equal(got, want) {
		t.Fatalf("docKeys = %q, want %q", got, want)
	}
	keys := configKeys()
	for _, k := range []string{"logs.capture.enabled", "crm.users.client_secret", "admin.oidc.issuer", "queue.service_bus.auth.method"} {
		if !knownKey(keys, k) {
			t.Errorf("configKeys lacks %q", k)
		}
	}
	if knownKey(keys, "logs.capture.nope") || !knownKey(keys, "*.auth.client_id") || !knownKey(keys, "admin.oidc.*") || knownKey(keys, "*.auth.nope") {
		t.Error("knownKey matches wrongly")
	}
}
