package crmserver

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Activities and ownership, as the care-coordination signals use them
// (docs/signals.md, docs/sandbox-crm.md).
//
//   - The task table's regardingobjectid is a polymorphic lookup; a task
//     regarding a contact is bound through the single-valued navigation
//     property regardingobjectid_contact_task (Web API reference, "task
//     EntityType", Single-valued navigation properties).
//   - ownerid is the owner of a user- or team-owned table, bound with
//     "ownerid@odata.bind": "/systemusers(<id>)" or "/teams(<id>)"; when a
//     create leaves it out, the calling user owns the row (Dataverse
//     table/column reference for ownerid: "Owner Id", "Lookup": systemuser,
//     team; "Assign a table row").
//   - owninguser and owningteam are read-only lookups that say which of
//     the two owns the row (table reference: "owninguser", "owningteam"),
//     for a reader that has no lookuplogicalname annotation at hand.
//   - statecode and statuscode of a task come in documented pairs (Power
//     Apps table reference "Task": StateCode 0 Open, 1 Completed, 2
//     Canceled; StatusCode 2 Not Started, 3 In Progress, 4 Waiting on
//     someone else and 7 Deferred belong to Open, 5 Completed to
//     Completed, 6 Canceled to Canceled). A write naming a pair that does
//     not belong together is refused; a state set without a status takes
//     the state's default status (Not Started, Completed, Canceled); a new
//     task opens as Not Started.
//
// systemuser and team are the platform's tables of users and teams
// (systemusers, teams), here with their primary id and name only.

// stateStatus lists, per table, each statecode's statuscodes; the first
// is the state's default.
var stateStatus = map[string]map[int][]int{
	"task": {0: {2, 3, 4, 7}, 1: {5}, 2: {6}},
}

func ownershipEntities() []*Entity {
	user := &Entity{LogicalName: "systemuser", EntitySetName: "systemusers", PrimaryID: "systemuserid", PrimaryName: "fullname",
		Attributes: []*Attribute{{LogicalName: "systemuserid", Type: TypeUniqueidentifier}, str("fullname", 200)}}
	team := &Entity{LogicalName: "team", EntitySetName: "teams", PrimaryID: "teamid", PrimaryName: "name",
		Attributes: []*Attribute{{LogicalName: "teamid", Type: TypeUniqueidentifier}, str("name", 160)}}
	return []*Entity{user, team}
}

// withActivities adds the ownership tables, and ownerid and the task's
// regarding lookup to the tables that have them.
func withActivities(es []*Entity) []*Entity {
	for _, e := range es {
		switch e.LogicalName {
		case "contact", "task":
			e.Attributes = append(e.Attributes, &Attribute{LogicalName: "ownerid", Type: TypeOwner, Targets: []string{"systemuser", "team"}},
				&Attribute{LogicalName: "owninguser", Type: TypeLookup, Targets: []string{"systemuser"}, ReadOnly: true},
				&Attribute{LogicalName: "owningteam", Type: TypeLookup, Targets: []string{"team"}, ReadOnly: true})
			e.ManyToOne = append(e.ManyToOne,
				Relationship{SchemaName: "owner_" + e.LogicalName + "s", Attribute: "ownerid", Target: "systemuser", NavigationProperty: "ownerid"},
				Relationship{SchemaName: "team_" + e.LogicalName, Attribute: "ownerid", Target: "team", NavigationProperty: "ownerid"})
		}
		if e.LogicalName == "task" {
			// fhirsync_signalsource is the custom column an administrator
			// adds for signal maps (docs/signals.md; maps/starter/SOURCES.md,
			// "Custom tables fhirsync documents", for the starter risk-signal
			// and flag-signal maps): the source resource's Type_id, a single
			// line of text of 100 characters with an alternate key on it, as
			// Microsoft Learn's "Define alternate keys to reference rows"
			// describes keys.
			e.Attributes = append(e.Attributes, str("fhirsync_signalsource", 100))
			e.Keys = append(e.Keys, Key{LogicalName: "fhirsync_signalsource_key", Attributes: []string{"fhirsync_signalsource"}})
			e.Attributes = append(e.Attributes, &Attribute{LogicalName: "regardingobjectid", Type: TypeLookup, Targets: []string{"contact", "account"}})
			e.ManyToOne = append(e.ManyToOne,
				Relationship{SchemaName: "Contact_Tasks", Attribute: "regardingobjectid", Target: "contact", NavigationProperty: "regardingobjectid_contact_task"},
				Relationship{SchemaName: "Account_Tasks", Attribute: "regardingobjectid", Target: "account", NavigationProperty: "regardingobjectid_account_task"})
		}
	}
	return append(es, ownershipEntities()...)
}

// navigationFor is the relationship a "nav@odata.bind" names: when
// several share the navigation property (ownerid: systemuser or team),
// the one whose target is the referenced entity set's table.
func (s *Server) navigationFor(def *Entity, nav string, v any) *Relationship {
	rel := def.navigation(nav)
	ref, ok := v.(string)
	if rel == nil || !ok {
		return rel
	}
	if i := strings.Index(ref, APIPath); i >= 0 {
		ref = ref[i+len(APIPath):]
	}
	ref = strings.TrimPrefix(ref, "/")
	set, _, _ := strings.Cut(ref, "(")
	target := s.st.bySet[set]
	if target == nil || target.def.LogicalName == rel.Target {
		return rel
	}
	for i := range def.ManyToOne {
		if r := &def.ManyToOne[i]; r.NavigationProperty == nav && r.Target == target.def.LogicalName {
			return r
		}
	}
	return rel
}

// activityWrite applies the ownership and state rules to a write's
// changes (existing is nil on create): the caller owns what it creates
// without an owner, and a table with documented state/status pairs
// refuses a pair that does not belong together.
func (s *Server) activityWrite(c *call, tb *table, existing *row, changes map[string]any) *apiError {
	if existing == nil && tb.def.Attribute("ownerid") != nil && changes["ownerid"] == nil && c.user != "" {
		changes["ownerid"] = lookupValue{ID: c.user, Target: "systemuser"}
	}
	if o, ok := changes["ownerid"].(lookupValue); ok && tb.def.Attribute("owninguser") != nil {
		changes["owninguser"], changes["owningteam"] = nil, nil
		if o.Target == "team" {
			changes["owningteam"] = lookupValue{ID: o.ID, Target: "team"}
		} else {
			changes["owninguser"] = lookupValue{ID: o.ID, Target: "systemuser"}
		}
	}
	pairs := stateStatus[tb.def.LogicalName]
	if pairs == nil {
		return nil
	}
	intOf := func(v any) (int, bool) {
		switch x := v.(type) {
		case json.Number:
			n, err := strconv.Atoi(x.String())
			return n, err == nil
		case int:
			return x, true
		case float64:
			return int(x), true
		}
		return 0, false
	}
	state, status := 0, 0
	if existing != nil {
		state, _ = intOf(existing.attrs.get("statecode"))
		status, _ = intOf(existing.attrs.get("statuscode"))
	}
	sv, setState := changes["statecode"]
	tv, setStatus := changes["statuscode"]
	if setState {
		n, ok := intOf(sv)
		if !ok {
			return errBadRequest("0x80040203", "statecode must be a number.")
		}
		state = n
	}
	if setStatus {
		n, ok := intOf(tv)
		if !ok {
			return errBadRequest("0x80040203", "statuscode must be a number.")
		}
		status = n
	}
	if _, ok := pairs[state]; !ok {
		return errBadRequest("0x80040203", fmt.Sprintf("%d is not a valid state code on %s.", state, tb.def.LogicalName))
	}
	if !setStatus && (setState || existing == nil) {
		status = pairs[state][0]
	}
	if !slices.Contains(pairs[state], status) {
		return errBadRequest("0x80040203", fmt.Sprintf("%d is not a valid status code for state code %s.State %d on %s.", status, tb.def.LogicalName, state, tb.def.LogicalName))
	}
	if existing == nil || setState || setStatus {
		changes["statecode"], changes["statuscode"] = json.Number(strconv.Itoa(state)), json.Number(strconv.Itoa(status))
	}
	return nil
}
