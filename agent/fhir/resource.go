package fhir

import (
	"strings"
	"time"

	fsmaps "github.com/fhirsync/fhirsync/maps"
)

// Resource is a FHIR resource as generic JSON. Numbers are json.Number, so
// decimals keep their exact text, and elements this program does not know
// survive a read-modify-write untouched.
type Resource map[string]any

// Type returns resourceType.
func (r Resource) Type() string { s, _ := r["resourceType"].(string); return s }

// ID returns id.
func (r Resource) ID() string { s, _ := r["id"].(string); return s }

// VersionID returns meta.versionId ("" when absent). FHIR version ids are
// opaque strings: integers on some servers, UUIDs on others.
func (r Resource) VersionID() string {
	m, _ := r["meta"].(map[string]any)
	s, _ := m["versionId"].(string)
	return s
}

// LastUpdated returns meta.lastUpdated, or the zero time when absent or
// malformed.
func (r Resource) LastUpdated() time.Time {
	m, _ := r["meta"].(map[string]any)
	s, _ := m["lastUpdated"].(string)
	t, _ := parseInstant(s)
	return t
}

// Ref renders "Type/id".
func (r Resource) Ref() string { return r.Type() + "/" + r.ID() }

// MarshalJSON encodes the resource; json.Number values are written as
// their original text.
func (r Resource) MarshalJSON() ([]byte, error) { return fsmaps.EncodeJSON(map[string]any(r)) }

// Entry is one Bundle entry, with the parts of request and response that
// history, search and transaction bundles carry.
type Entry struct {
	FullURL string
	// Resource is nil for deletions in a history bundle.
	Resource Resource
	// SearchMode is search.mode: "match", "include" or "outcome".
	SearchMode string
	// Method and URL are request.method and request.url (history and
	// transaction bundles).
	Method string
	URL    string
	// Status, Location, ETag and LastModified come from entry.response.
	Status       string
	Location     string
	ETag         string
	LastModified time.Time
	// Outcome is response.outcome, when a batch entry failed.
	Outcome Resource
}

// Ref identifies the resource an entry is about, from the resource if
// present, otherwise from request.url, response.location or fullUrl, with
// the version from meta, the URL's _history part or the ETag.
func (e Entry) Ref() (typ, id, version string) {
	if e.Resource != nil && e.Resource.Type() != "" && e.Resource.ID() != "" {
		return e.Resource.Type(), e.Resource.ID(), e.Resource.VersionID()
	}
	for _, u := range []string{e.URL, e.Location, e.FullURL} {
		if t, i, v := parseRef(u); t != "" && i != "" {
			if v == "" {
				v = etagVersion(e.ETag)
			}
			return t, i, v
		}
	}
	return "", "", ""
}

// Deleted reports whether a history entry records a deletion.
func (e Entry) Deleted() bool {
	return strings.EqualFold(e.Method, "DELETE") || (e.Resource == nil && strings.HasPrefix(e.Status, "204"))
}

// parseRef finds "Type/id[/_history/vid]" at the end of a reference or URL
// (query strings are ignored).
func parseRef(u string) (typ, id, version string) {
	if i := strings.IndexAny(u, "?#"); i >= 0 {
		u = u[:i]
	}
	parts := strings.Split(strings.Trim(u, "/"), "/")
	n := len(parts)
	if n >= 4 && parts[n-2] == "_history" {
		version = parts[n-1]
		parts = parts[:n-2]
		n -= 2
	}
	if n < 2 || !isTypeName(parts[n-2]) || !isID(parts[n-1]) {
		return "", "", ""
	}
	return parts[n-2], parts[n-1], version
}

// etagVersion extracts the version from W/"3" or "3".
func etagVersion(etag string) string {
	etag = strings.TrimPrefix(strings.TrimSpace(etag), "W/")
	return strings.Trim(etag, `"`)
}

// isTypeName reports whether s looks like a FHIR resource type name.
func isTypeName(s string) bool {
	if s == "" || len(s) > 64 || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// isID reports whether s is a valid FHIR id ([A-Za-z0-9\-\.]{1,64}).
func isID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c == '-' || c == '.' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// instantLayout is how _since and similar parameters are sent.
const instantLayout = "2006-01-02T15:04:05.000Z07:00"

// parseInstant reads a FHIR instant or dateTime.
func parseInstant(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	_, err := time.Parse(time.RFC3339Nano, s)
	return time.Time{}, err
}
