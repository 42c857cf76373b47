package main

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/maps"
)

// The Dataverse checks beyond sign-in and table definitions: the
// application users' privileges on the mapped tables, and the service
// endpoint steps that post the changes the CRM→FHIR direction reads.

// Access rights, as Dataverse's PrivilegeType names them.
const (
	rightCreate   = "Create"
	rightRead     = "Read"
	rightWrite    = "Write"
	rightDelete   = "Delete"
	rightAppend   = "Append"
	rightAppendTo = "AppendTo"
)

var rightOrder = []string{rightRead, rightCreate, rightWrite, rightDelete, rightAppend, rightAppendTo}

// neededRights lists, per CRM table, the access rights the enabled maps
// use: Read everywhere; FHIR→CRM Create, Write, Delete as its operations
// and delete policy need (deactivating is a Write); CRM→FHIR creates write
// the new FHIR id back (Write); lookups set Append on the table and
// AppendTo on the table referred to; expansion rows are written with their
// parent (Create, Write, Delete or Write for removed items, Append, and
// AppendTo on the parent).
func neededRights(set *maps.Set) map[string][]string {
	out := map[string][]string{}
	add := func(entity string, rights ...string) {
		for _, r := range rights {
			if entity != "" && !slices.Contains(out[entity], r) {
				out[entity] = append(out[entity], r)
			}
		}
	}
	enabled := func(b *bool) bool { return b == nil || *b }
	lookups := func(entity string, attrs []maps.AttributeMap) {
		for _, a := range attrs {
			if !enabled(a.Enabled) || a.Action != maps.ActionLookup || a.Direction == maps.CRMToFHIR || a.Lookup == nil {
				continue
			}
			add(entity, rightAppend)
			if target, ok := set.Map(a.Lookup.EntityMap); ok {
				add(target.Def().CRMEntity, rightAppendTo)
			}
			for _, bt := range a.Lookup.ByType {
				if target, ok := set.Map(bt.EntityMap); ok {
					add(target.Def().CRMEntity, rightAppendTo)
				}
			}
		}
	}
	for _, m := range set.Maps() {
		def := m.Def()
		if !enabled(def.Enabled) {
			continue
		}
		e := def.CRMEntity
		add(e, rightRead)
		if def.CRMToFHIR.Allows(maps.OpCreate) && def.Correlation.CRMAttribute != "" {
			add(e, rightWrite)
		}
		toCRM := def.FHIRToCRM
		if !toCRM.Enabled {
			def.EachExpansion(func(x *maps.ExpansionMap, _ string) {
				if enabled(x.Enabled) && x.Direction != maps.FHIRToCRM {
					add(x.CRMEntity, rightRead)
				}
			})
			continue
		}
		if toCRM.Allows(maps.OpCreate) {
			add(e, rightCreate)
		}
		if toCRM.Allows(maps.OpUpdate) {
			add(e, rightWrite)
		}
		if toCRM.Allows(maps.OpDelete) {
			switch def.DeletePolicy.OrDefault() {
			case maps.DeletePropagate:
				add(e, rightDelete)
			case maps.DeleteDeactivate:
				add(e, rightWrite)
			}
		}
		lookups(e, def.Attributes)
		def.EachExpansion(func(x *maps.ExpansionMap, parent string) {
			if !enabled(x.Enabled) {
				return
			}
			add(x.CRMEntity, rightRead)
			if x.Direction == maps.CRMToFHIR {
				return
			}
			add(x.CRMEntity, rightCreate, rightWrite, rightAppend)
			if x.OnRemove == maps.RemoveDelete {
				add(x.CRMEntity, rightDelete)
			}
			add(parent, rightAppendTo)
			lookups(x.CRMEntity, x.Attributes)
		})
	}
	for e := range out {
		slices.SortFunc(out[e], func(a, b string) int { return slices.Index(rightOrder, a) - slices.Index(rightOrder, b) })
	}
	return out
}

// crmPrivileges checks that every application user holds, at
// Organization (Global) depth, the privileges the maps use on each table:
// with less, Dataverse refuses the agent's requests with 403 and the rows
// of other owners stay out of its reach.
func (d *doctor) crmPrivileges(ctx context.Context, c *crm.Client) {
	need := neededRights(d.set)
	tables := make([]string, 0, len(need))
	for t := range need {
		tables = append(tables, t)
	}
	slices.SortFunc(tables, func(a, b string) int {
		// The mapped tables in map order, then expansion tables by name.
		ia, ib := slices.Index(mappedEntities(d.set), a), slices.Index(mappedEntities(d.set), b)
		if ia < 0 {
			ia = 1 << 20
		}
		if ib < 0 {
			ib = 1 << 20
		}
		if ia != ib {
			return ia - ib
		}
		return strings.Compare(a, b)
	})
	users, err := c.UserPrivileges(ctx)
	if err != nil {
		d.check("crm privileges", "", fail("give the application user's security role Read on System User (prvReadUser), or check the CRM connection",
			"reading the application users' privileges (RetrieveUserPrivileges) failed: %s", shortCause(err)))
		return
	}
	for _, table := range tables {
		area := "crm privileges " + table
		defs, err := c.TablePrivileges(ctx, table)
		if err != nil {
			d.check(area, "", fail("check that table "+table+" exists and the application user may read table definitions", "reading the privileges of %s failed: %s", table, shortCause(err)))
			continue
		}
		byType := map[string]crm.Privilege{}
		for _, p := range defs {
			byType[p.Type] = p
		}
		var missing, shallow []string
		var rolesMissing []string
		for _, u := range users {
			var um, us []string
			for _, right := range need[table] {
				p, ok := byType[right]
				if !ok {
					continue // the table has no such privilege (organization-owned tables have no Append…)
				}
				depth, held := u.Depth[p.ID]
				switch {
				case !held:
					um = append(um, p.Name)
				case right != rightCreate && depth != "Global":
					us = append(us, fmt.Sprintf("%s (%s)", p.Name, depth))
				}
			}
			if len(um) > 0 || len(us) > 0 {
				rolesMissing = append(rolesMissing, u.Label)
			}
			missing = append(missing, um...)
			shallow = append(shallow, us...)
		}
		missing, shallow = uniq(missing), uniq(shallow)
		who := "the application user " + strings.Join(rolesMissing, ", ")
		switch {
		case len(missing) > 0:
			d.check(area, "", fail(fmt.Sprintf("add %s to %s's security role at Organization level (Power Platform admin center → environment → Settings → Users + permissions → Security roles), or turn those operations off in the maps",
				rightsOf(missing), who),
				"%s lacks %s on %s", who, strings.Join(missing, ", "), table))
		case len(shallow) > 0:
			d.check(area, "", fail(fmt.Sprintf("raise %s to Organization level in %s's security role: below it the agent cannot reach rows owned by others", strings.Join(shallow, ", "), who),
				"%s holds %s on %s below Organization level", who, strings.Join(shallow, ", "), table))
		default:
			d.check(area, fmt.Sprintf("%s at Organization level, %d application user(s)", strings.Join(need[table], ", "), len(users)), nil)
		}
	}
}

// rightsOf names the access rights of privilege names (prvWriteContact →
// Write) for the fix line.
func rightsOf(names []string) string {
	var out []string
	for _, n := range names {
		for _, r := range []string{rightAppendTo, rightAppend, rightCreate, rightRead, rightWrite, rightDelete} {
			if strings.HasPrefix(n, "prv"+r) {
				out = append(out, r+" ("+n+")")
				break
			}
		}
	}
	return strings.Join(out, ", ")
}

func uniq(s []string) []string {
	var out []string
	for _, v := range s {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// neededSteps lists, per CRM table of an enabled entity map, the messages
// the CRM→FHIR direction carries (Create, Update, Delete as its operations
// allow). Expansion rows travel with their parent, so their tables need
// no step.
func neededSteps(set *maps.Set) map[string][]string {
	out := map[string][]string{}
	for _, m := range set.Maps() {
		def := m.Def()
		if def.Enabled != nil && !*def.Enabled {
			continue
		}
		for _, op := range []struct {
			op  maps.Operation
			msg string
		}{{maps.OpCreate, "Create"}, {maps.OpUpdate, "Update"}, {maps.OpDelete, "Delete"}} {
			if def.CRMToFHIR.Allows(op.op) && !slices.Contains(out[def.CRMEntity], op.msg) {
				out[def.CRMEntity] = append(out[def.CRMEntity], op.msg)
			}
		}
	}
	return out
}

// crmSteps checks the service endpoint that delivers the CRM's changes —
// the webhook behind feeds.dataverse_webhook, or the Service Bus queue
// queue.crm_changes — and its steps: an enabled asynchronous
// post-operation step for each message the CRM→FHIR direction carries on
// each table. Without one the change reaches fhirsync only through change
// tracking, if at all.
func (d *doctor) crmSteps(ctx context.Context, c *crm.Client) {
	wh := d.cfg.Feeds.DataverseWebhook.Path
	if wh == "" && d.cfg.Queue.Kind != "servicebus" {
		d.check("crm steps", "no service endpoint feed configured (feeds.dataverse_webhook, or Service Bus queue.crm_changes): CRM changes come from change tracking only", nil)
		return
	}
	need := neededSteps(d.set)
	if len(need) == 0 {
		d.check("crm steps", "no map carries CRM changes to FHIR: no steps needed", nil)
		return
	}
	eps, err := c.ServiceEndpoints(ctx)
	if err != nil {
		d.check("crm steps", "", fail("give the application user's security role Read on Service Endpoint and SDK Message Processing Step, or check the CRM connection",
			"listing service endpoints failed: %s", shortCause(err)))
		return
	}
	ep, want := ownEndpoint(d.cfg, eps)
	if ns := d.serviceBusHost(); wh == "" && ns != "the namespace" {
		want += " in namespace " + ns
	}
	if ep == nil {
		fix := "register a Service Bus endpoint for queue " + d.cfg.Queue.CRMChanges + " (Plug-in Registration tool → Register New Service Endpoint, message format JSON), then a step per table and message"
		if wh != "" {
			fix = "register a webhook whose Endpoint URL is this service's address followed by " + wh + " (Plug-in Registration tool → Register New WebHook, authentication as feeds.dataverse_webhook says), then a step per table and message"
		}
		d.check("crm steps", "", fail(fix, "no service endpoint found: want %s (%d endpoint(s) registered)", want, len(eps)))
		return
	}
	steps, err := c.EndpointSteps(ctx, ep.ID)
	if err != nil {
		d.check("crm steps", "", fail("give the application user's security role Read on SDK Message Processing Step",
			"listing the steps of service endpoint %q failed: %s", ep.Name, shortCause(err)))
		return
	}
	for _, table := range mappedEntities(d.set) {
		msgs := need[table]
		if len(msgs) == 0 {
			continue
		}
		area := "crm steps " + table
		var have, missing, wrong []string
		for _, msg := range msgs {
			i := slices.IndexFunc(steps, func(s crm.Step) bool { return s.Entity == table && strings.EqualFold(s.Message, msg) })
			switch {
			case i < 0:
				missing = append(missing, msg)
			case !steps[i].Enabled:
				wrong = append(wrong, msg+" (disabled)")
			case steps[i].Stage != 40:
				wrong = append(wrong, fmt.Sprintf("%s (stage %d, not 40 post-operation: the row is read before it is saved)", msg, steps[i].Stage))
			default:
				have = append(have, msg)
			}
		}
		var others, bulk []string
		for _, s := range steps {
			if s.Entity == table && !slices.ContainsFunc(msgs, func(m string) bool { return strings.EqualFold(m, s.Message) }) {
				others = append(others, s.Message)
				if s.Enabled && crm.IsBulkMessage(s.Message) {
					bulk = append(bulk, s.Message)
				}
			}
		}
		switch {
		case len(missing) > 0:
			extra := ""
			if len(others) > 0 {
				extra = fmt.Sprintf(" (registered for %s instead)", strings.Join(uniq(others), ", "))
			}
			d.check(area, "", fail(fmt.Sprintf("register an asynchronous post-operation step on service endpoint %q for message %s, primary entity %s (Plug-in Registration tool → Register New Step)", ep.Name, strings.Join(missing, " and "), table),
				"no %s step for %s on service endpoint %q%s", strings.Join(missing, ", "), table, ep.Name, extra))
		case len(wrong) > 0:
			d.check(area, "", fail(fmt.Sprintf("enable the steps and register them at stage 40 (post-operation) on service endpoint %q", ep.Name),
				"steps for %s on service endpoint %q: %s", table, ep.Name, strings.Join(wrong, ", ")))
		case len(bulk) > 0:
			d.check(area, "", fail(fmt.Sprintf("unregister the %s step(s) of %s from service endpoint %q (Plug-in Registration tool → Unregister); fhirsync needs the Create, Update and Delete steps only", strings.Join(uniq(bulk), ", "), table, ep.Name),
				"steps for %s on service endpoint %q are registered on %s: Dataverse runs a bulk message's steps for every single write too and the single messages' for every bulk write (merged pipelines), so the changes they cover are posted twice",
				table, ep.Name, strings.Join(uniq(bulk), ", ")))
		default:
			d.check(area, fmt.Sprintf("%s steps on service endpoint %q", strings.Join(have, ", "), ep.Name), nil)
		}
	}
}

// ownEndpoint is the service endpoint among eps that delivers the CRM's
// changes to this service — the webhook behind feeds.dataverse_webhook,
// or the Service Bus queue queue.crm_changes in the configured namespace —
// or nil, with what was looked for.
func ownEndpoint(cfg *Config, eps []crm.ServiceEndpoint) (*crm.ServiceEndpoint, string) {
	wh := cfg.Feeds.DataverseWebhook.Path
	if wh != "" {
		for i, e := range eps {
			if u, err := url.Parse(e.URL); e.Contract == crm.ContractWebhook && err == nil && strings.TrimSuffix(u.Path, "/") == strings.TrimSuffix(wh, "/") {
				return &eps[i], ""
			}
		}
		return nil, "a webhook (contract 8) whose URL ends in " + wh
	}
	for i, e := range eps {
		if (e.Contract == crm.ContractQueue || e.Contract == crm.ContractPersistentQueue) && strings.EqualFold(strings.Trim(e.Path, "/"), cfg.Queue.CRMChanges) && sameNamespace(cfg, e.NamespaceAddress) {
			return &eps[i], ""
		}
	}
	return nil, "a Service Bus queue endpoint (contract Queue) with path " + cfg.Queue.CRMChanges
}

// sameNamespace reports whether a service endpoint's namespaceaddress
// (sb://contoso.servicebus.windows.net/) is the configured namespace; true
// when the configuration does not say which.
func sameNamespace(cfg *Config, addr string) bool {
	want := cfg.Queue.ServiceBus.Namespace
	if want == "" {
		for _, part := range strings.Split(cfg.Queue.ServiceBus.ConnectionString, ";") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(part), "Endpoint="); ok {
				want = v
			}
		}
	}
	host := func(s string) string {
		if u, err := url.Parse(s); err == nil && u.Host != "" {
			return strings.ToLower(u.Host)
		}
		return strings.ToLower(strings.Trim(s, "/"))
	}
	return want == "" || addr == "" || host(want) == host(addr)
}
