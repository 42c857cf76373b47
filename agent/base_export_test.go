package agent

import (
	"context"

	"gorm.io/gorm"
)

// BaseHashes is, for tests outside the package, the base state recorded
// for a pair: each attribute's FHIR and CRM hashes, and the map version.
func BaseHashes(ctx context.Context, db *gorm.DB, entityMap, fhirID, crmID string) (map[string][2][baseHashSize]byte, int, error) {
	b, err := links{db: db}.base(ctx, link{EntityMap: entityMap, FHIRID: fhirID, CRMID: crmID})
	if err != nil {
		return nil, 0, err
	}
	out := make(map[string][2][baseHashSize]byte, len(b.Attrs))
	for name, h := range b.Attrs {
		out[name] = [2][baseHashSize]byte{h.FHIR, h.CRM}
	}
	return out, b.MapVersion, nil
}

// BaseHash is the hash the base state keeps for one side's value of an
// attribute of a pair, under key.
func BaseHash(key []byte, entityMap, fhirID, attr, side string, v any) [baseHashSize]byte {
	return newBaseHasher(key).hash(link{EntityMap: entityMap, FHIRID: fhirID}, attr, side, v)
}

// ErrNoBase is errNoBase, for tests outside the package.
var ErrNoBase = errNoBase
