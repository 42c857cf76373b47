package crm

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
)

// Bypassing the agent's own service-endpoint steps.
//
// Every row the agent writes is posted back by the CRM's service endpoint,
// a second message the agent receives, decides (its own write) and logs:
// about a third of the agent's work in the FHIR→CRM direction. Dataverse
// lets a caller skip chosen plug-in steps for one request with the
// optional parameter BypassBusinessLogicExecutionStepIds, sent on the Web
// API as the request header MSCRM.BypassBusinessLogicExecutionStepIds: a
// comma-separated list of sdkmessageprocessingstep ids; an id whose step
// does not run for the request is ignored; the default limit is three ids
// a request (organization setting BypassBusinessLogicExecutionStepIdsLimit);
// the caller needs the privilege prvBypassCustomBusinessLogic, whose id is
// the same in every environment and which only the System Administrator
// role holds by default (MicrosoftDocs/powerapps-docs,
// developer/data-platform/bypass-custom-business-logic.md, "BypassBusinessLogicExecutionStepIds",
// "Limit to the number of steps", "Adding the required privileges to another role").
//
// With BypassSteps set, each write names only the steps of its own table
// and message (a create the Create step, an upsert Create and Update), so
// it stays within the limit; other endpoints' steps — other integrations —
// still run. Dataverse merges the pipelines of the single and the bulk
// messages: a CreateMultiple or UpdateMultiple raises the Create or Update
// event of each of its rows, and a single Create or Update raises the
// CreateMultiple or UpdateMultiple event with a collection of one row
// (developer/data-platform/bulk-operations.md, "Message pipelines merged").
// So a write also names the steps registered on the bulk counterparts of
// its messages (after the single messages' steps, within the limit);
// DeleteMultiple steps are not named, as that page says they do not run for
// a Delete. A refusal for the missing privilege turns the bypass off for
// the rest of the process: the agent's echo handling still tells its own
// writes apart, as it does without the bypass.

// PrivilegeBypassCustomBusinessLogic is the id of prvBypassCustomBusinessLogic.
const PrivilegeBypassCustomBusinessLogic = "0ea552b0-a491-4470-9a1b-82068deccf66"

// DefaultBypassStepLimit is Dataverse's default limit on the step ids of
// one request.
const DefaultBypassStepLimit = 3

// HeaderBypassStepIDs is the Web API header of the optional parameter.
const HeaderBypassStepIDs = "MSCRM.BypassBusinessLogicExecutionStepIds"

// bypass is the step ids to name, by entity set and message.
type bypass struct {
	on    atomic.Bool
	steps map[string]map[string][]string // entity set (lower case) → message → step ids
	limit int
	// off, when set, is told of the refusal that turned the bypass off.
	off func(*Error)
}

// BypassSteps makes the client's writes ask Dataverse to skip steps: each
// create, update, upsert or delete (alone, in a $batch, or as
// CreateMultiple, UpdateMultiple, UpsertMultiple) names the enabled steps
// among steps registered for its table and message or the message's bulk
// counterpart, at most limit of them
// (0: DefaultBypassStepLimit). The tables' entity sets are read from the
// CRM's metadata. No steps turns the bypass off. off, when not nil, is
// called once if a refusal for the missing privilege turns the bypass off
// later. Call it before the client's first write.
func (c *Client) BypassSteps(ctx context.Context, steps []Step, limit int, off func(*Error)) error {
	if limit <= 0 {
		limit = DefaultBypassStepLimit
	}
	b := &bypass{steps: map[string]map[string][]string{}, limit: limit, off: off}
	sets := map[string]string{}
	for _, s := range steps {
		if !s.Enabled || s.ID == "" || s.Entity == "" || s.Entity == "none" {
			continue
		}
		set, ok := sets[s.Entity]
		if !ok {
			md, err := c.EntityDefinition(ctx, s.Entity)
			if err != nil {
				return fmt.Errorf("bypassing the steps of %s: %w", s.Entity, err)
			}
			set = strings.ToLower(md.EntitySetName)
			sets[s.Entity] = set
		}
		if b.steps[set] == nil {
			b.steps[set] = map[string][]string{}
		}
		msg, id := canonicalMessage(s.Message), strings.ToLower(s.ID)
		if !slices.Contains(b.steps[set][msg], id) {
			b.steps[set][msg] = append(b.steps[set][msg], id)
		}
	}
	if len(b.steps) == 0 {
		c.bypass.Store(nil)
		return nil
	}
	b.on.Store(true)
	c.bypass.Store(b)
	return nil
}

// Bypassing reports whether writes currently name steps to skip.
func (c *Client) Bypassing() bool {
	b := c.bypass.Load()
	return b != nil && b.on.Load()
}

func canonicalMessage(m string) string {
	switch strings.ToLower(m) {
	case "create":
		return "Create"
	case "update":
		return "Update"
	case "delete":
		return "Delete"
	case "createmultiple":
		return "CreateMultiple"
	case "updatemultiple":
		return "UpdateMultiple"
	case "upsertmultiple":
		return "UpsertMultiple"
	}
	return m
}

// IsBulkMessage reports the bulk operation messages whose pipelines
// Dataverse merges with those of the single messages (CreateMultiple,
// UpdateMultiple, UpsertMultiple; any case), as the package doc says.
func IsBulkMessage(m string) bool {
	switch strings.ToLower(m) {
	case "createmultiple", "updatemultiple", "upsertmultiple":
		return true
	}
	return false
}

// withBulk is msgs (single messages) followed by the bulk messages whose
// events they raise or that raise theirs: CreateMultiple for Create,
// UpdateMultiple for Update; upsertMultiple adds UpsertMultiple.
func withBulk(msgs []string, upsertMultiple bool) []string {
	out := slices.Clone(msgs)
	if upsertMultiple {
		out = append(out, "UpsertMultiple")
	}
	for _, m := range msgs {
		switch m {
		case "Create":
			out = append(out, "CreateMultiple")
		case "Update":
			out = append(out, "UpdateMultiple")
		}
	}
	return out
}

// bypassHeader is the header value for a request with method on path
// (relative to the service root, query allowed) and headers h; "" when it
// names no step.
func (c *Client) bypassHeader(method, path string, h http.Header) string {
	b := c.bypass.Load()
	if b == nil || !b.on.Load() || method == http.MethodGet {
		return ""
	}
	path, _, _ = strings.Cut(strings.TrimPrefix(path, c.root), "?")
	seg, action, _ := strings.Cut(path, "/")
	set, _, keyed := strings.Cut(seg, "(")
	bySet := b.steps[strings.ToLower(set)]
	if bySet == nil {
		return ""
	}
	var msgs []string
	switch {
	case method == http.MethodPost && !keyed && action == "":
		msgs = []string{"Create"}
	case method == http.MethodPost && !keyed && action == "Microsoft.Dynamics.CRM.CreateMultiple":
		msgs = []string{"Create"}
	case method == http.MethodPost && !keyed && action == "Microsoft.Dynamics.CRM.UpdateMultiple":
		msgs = []string{"Update"}
	case method == http.MethodPost && !keyed && action == "Microsoft.Dynamics.CRM.UpsertMultiple":
		msgs = []string{"Create", "Update"}
	case method == http.MethodPatch && keyed && action == "":
		switch {
		case h.Get("If-Match") != "":
			msgs = []string{"Update"}
		case h.Get("If-None-Match") == "*":
			msgs = []string{"Create"}
		default:
			msgs = []string{"Create", "Update"}
		}
	case method == http.MethodDelete && keyed && action == "":
		msgs = []string{"Delete"}
	default:
		return ""
	}
	msgs = withBulk(msgs, action == "Microsoft.Dynamics.CRM.UpsertMultiple")
	var ids []string
	for _, m := range msgs {
		for _, id := range bySet[m] {
			if len(ids) < b.limit && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	return strings.Join(ids, ",")
}

// noteBypassRefusal turns the bypass off when e is Dataverse's refusal for
// the missing prvBypassCustomBusinessLogic privilege, and reports whether
// it was (the request is then worth sending again without the header).
func (c *Client) noteBypassRefusal(e *Error) bool {
	b := c.bypass.Load()
	if b == nil || e == nil || e.Status != http.StatusForbidden || !strings.Contains(strings.ToLower(e.Message), "prvbypasscustombusinesslogic") {
		return false
	}
	if !b.on.CompareAndSwap(true, false) {
		return false
	}
	if b.off != nil {
		b.off(e)
	}
	return true
}

// noteBatchBypassRefusal turns the bypass off when a request of a $batch
// was refused for the privilege; that request fails as answered (the
// caller retries it, then without the header).
func (c *Client) noteBatchBypassRefusal(parts []batchPart) {
	for _, p := range parts {
		if p.single != nil && p.single.Err != nil {
			c.noteBypassRefusal(p.single.Err)
		}
		c.noteBatchBypassRefusal(p.changeSet)
	}
}
