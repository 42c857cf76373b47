package fhirserver

import "time"

// capabilityTypes are the resource types the CapabilityStatement lists.
// The server stores any resource type; these are the ones fhirsync maps.
var capabilityTypes = []string{"Patient", "Practitioner", "Organization", "Encounter", "Observation",
	"Condition", "Coverage", "RelatedPerson", "Location", "Appointment"}

func capabilityStatement(now time.Time) []byte {
	var resources []any
	for _, t := range capabilityTypes {
		resources = append(resources, map[string]any{
			"type": t,
			"interaction": []any{
				map[string]any{"code": "read"}, map[string]any{"code": "vread"},
				map[string]any{"code": "update"}, map[string]any{"code": "delete"},
				map[string]any{"code": "history-instance"}, map[string]any{"code": "history-type"},
				map[string]any{"code": "create"}, map[string]any{"code": "search-type"},
			},
			"versioning":        "versioned-update",
			"readHistory":       true,
			"updateCreate":      true,
			"conditionalCreate": true,
			"conditionalUpdate": true,
			"conditionalDelete": "not-supported",
			"searchParam": []any{
				map[string]any{"name": "_id", "type": "token"},
				map[string]any{"name": "identifier", "type": "token"},
				map[string]any{"name": "_lastUpdated", "type": "date"},
			},
		})
	}
	cs := map[string]any{
		"resourceType": "CapabilityStatement",
		"status":       "active",
		"date":         now.UTC().Format("2006-01-02"),
		"kind":         "instance",
		"software":     map[string]any{"name": "fhirsync sandbox FHIR server"},
		"fhirVersion":  "4.0.1",
		"format":       []any{"json"},
		"rest": []any{map[string]any{
			"mode":     "server",
			"resource": resources,
			"interaction": []any{
				map[string]any{"code": "transaction"}, map[string]any{"code": "batch"},
				map[string]any{"code": "history-system"},
			},
		}},
	}
	b, _ := encodeJSON(cs)
	return b
}
