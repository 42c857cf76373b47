package agent

import (
	"fmt"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/maps"
)

// TestLookupCache remembers a resolved reference both ways, forgets it when
// a notice names either record or when it is too old, and stays bounded.
func TestLookupCache(t *testing.T) {
	t.Parallel()
	em := &maps.EntityMap{FHIRType: "Organization", CRMEntity: "account"}
	const crmID = "2A000000-0000-4000-8000-000000000001"
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fresh := func() *lookupCache {
		c := newLookupCache()
		c.now = func() time.Time { return now }
		c.put(em, "o1", crmID)
		return c
	}
	tests := []struct {
		name     string
		do       func(c *lookupCache)
		wantCRM  string // what the FHIR id resolves to; "" for a miss
		wantFHIR string // what the CRM id resolves to
	}{
		{name: "both ways", do: func(*lookupCache) {}, wantCRM: crmID, wantFHIR: "o1"},
		{name: "a FHIR notice for the organization", do: func(c *lookupCache) { c.forget("fhir", "Organization", "o1") }},
		{name: "a CRM notice for the account, id in another case", do: func(c *lookupCache) { c.forget("crm", "account", crmID) }},
		{name: "a notice for another record", do: func(c *lookupCache) { c.forget("fhir", "Organization", "o2") }, wantCRM: crmID, wantFHIR: "o1"},
		{name: "a notice for another type with the same id", do: func(c *lookupCache) { c.forget("fhir", "Patient", "o1") }, wantCRM: crmID, wantFHIR: "o1"},
		{name: "older than the TTL", do: func(c *lookupCache) {
			c.now = func() time.Time { return now.Add(lookupCacheTTL + time.Second) }
		}},
		{name: "the account re-linked to another organization", do: func(c *lookupCache) { c.put(em, "o9", crmID) }, wantFHIR: "o9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := fresh()
			tt.do(c)
			got, _ := c.get(lookupKey("fhir", "Organization", "o1"))
			if got != tt.wantCRM {
				t.Errorf("Organization/o1 resolves to %q, want %q", got, tt.wantCRM)
			}
			got, _ = c.get(lookupKey("crm", "account", "2a000000-0000-4000-8000-000000000001"))
			if got != tt.wantFHIR {
				t.Errorf("the account resolves to %q, want %q", got, tt.wantFHIR)
			}
		})
	}

	t.Run("bounded", func(t *testing.T) {
		t.Parallel()
		c := newLookupCache()
		for i := range lookupCacheSize + 1000 {
			c.put(em, fmt.Sprintf("o%d", i), fmt.Sprintf("%08d-0000-4000-8000-000000000000", i))
		}
		if n := len(c.byKey); n > 2*lookupCacheSize {
			t.Errorf("%d keys held, want at most %d", n, 2*lookupCacheSize)
		}
		if _, ok := c.get(lookupKey("fhir", "Organization", "o0")); ok {
			t.Error("the oldest pair is still held")
		}
		if _, ok := c.get(lookupKey("fhir", "Organization", fmt.Sprintf("o%d", lookupCacheSize+999))); !ok {
			t.Error("the newest pair is not held")
		}
	})

	var nilCache *lookupCache
	nilCache.forget("fhir", "Organization", "o1")
	if _, ok := nilCache.get("x"); ok {
		t.Error("a nil cache answered")
	}
}
