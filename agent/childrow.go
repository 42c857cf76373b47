package agent

import (
	"fmt"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
)

// allMaps is what a map set offers when it can list every entity map.
type allMaps interface {
	all() []*maps.Mapping
}

// childRow decides a CRM change to a child row of an expansion map — a
// row the agent writes together with its parent record, so its own
// writes of child rows come back this way: skipped as child_row, naming
// the expansion map, instead of no_entity_map, whose advice (create an
// entity map) would be wrong. It returns the parent's entity map name
// too; nil when no expansion map writes rows of the notice's type.
func childRow(set mapSet, n queues.Notice) (*step, string) {
	if n.Side != queues.SideCRM {
		return nil, ""
	}
	all, ok := set.(allMaps)
	if !ok {
		return nil, ""
	}
	for _, m := range all.all() {
		em := m.Def()
		if x, parent := findExpansion(em.Expansions, em.CRMEntity, n.Type); x != nil {
			st := stop(logs.OutcomeSkipped, logs.ReasonChildRow,
				fmt.Sprintf("%s rows are written with their parent %s by expansion map %s of entity map %s; they travel with the parent record.", n.Type, parent, x.Name, em.Name))
			st.subject = x.Name
			return st, em.Name
		}
	}
	return nil, ""
}

// findExpansion finds the expansion map, nested ones included, that
// writes rows of entity, and the CRM entity of its parent rows (parent
// for the top level).
func findExpansion(xs []maps.ExpansionMap, parent, entity string) (*maps.ExpansionMap, string) {
	for i := range xs {
		if xs[i].CRMEntity == entity {
			return &xs[i], parent
		}
		if x, p := findExpansion(xs[i].Expansions, xs[i].CRMEntity, entity); x != nil {
			return x, p
		}
	}
	return nil, ""
}
