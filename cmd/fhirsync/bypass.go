package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fhirsync/fhirsync/agent/crm"
)

// bypassOwnSteps sets up crm.bypass_own_steps: it finds the service
// endpoint that delivers the CRM's changes to this service (as doctor
// does), lists its steps and has c name them on every write, so the
// agent's own changes are not posted back. The bypass is an optimisation:
// when the endpoint cannot be found, its steps cannot be read, or a user
// lacks prvBypassCustomBusinessLogic, the agent runs without it (its own
// writes come back and are told apart, as always) and the log says why.
//
// reg, when set, receives fhirsync_crm_bypass_active: 1 while the writes
// bypass the steps, 0 when they do not (never set up, or turned off).
func bypassOwnSteps(ctx context.Context, cfg *Config, c *crm.Client, log *slog.Logger, reg prometheus.Registerer) {
	active := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fhirsync_crm_bypass_active",
		Help: "1 while the agent's CRM writes bypass its service endpoint's steps (crm.bypass_own_steps), 0 when they do not."},
		func() float64 {
			if c.Bypassing() {
				return 1
			}
			return 0
		})
	if reg != nil {
		if err := reg.Register(active); err != nil {
			log.Warn("registering fhirsync_crm_bypass_active", "err", err)
		}
	}
	p := planBypass(ctx, cfg, c)
	if p.why == "" {
		off := func(e *crm.Error) {
			log.Warn("the CRM refused the agent's step bypass for a missing privilege; its writes go on without it, and their changes come back as echoes",
				"privilege", "prvBypassCustomBusinessLogic", "status", e.Status, "code", e.Code)
		}
		if err := c.BypassSteps(ctx, p.steps, cfg.CRM.BypassStepLimit, off); err != nil {
			p.why, p.err = "reading the steps' tables failed", err
		}
	}
	if p.why != "" {
		attrs := []any{"why", p.why}
		if p.err != nil {
			attrs = append(attrs, "err", p.err)
		}
		log.Warn("crm.bypass_own_steps is on but the agent's writes will not bypass its service endpoint's steps", attrs...)
		return
	}
	log.Info("the agent's writes bypass its service endpoint's steps", "endpoint", p.endpoint.Name, "steps", p.names())
}

// bypassPlan is what the bypass needs, or why it cannot be had.
type bypassPlan struct {
	endpoint *crm.ServiceEndpoint
	steps    []crm.Step
	// why says what is missing ("" when nothing); err is the failure
	// behind it, if any; fix what to do.
	why, fix string
	err      error
}

// names lists the enabled steps as "table Message".
func (p bypassPlan) names() string {
	var out []string
	for _, s := range p.steps {
		if s.Enabled {
			out = append(out, s.Entity+" "+s.Message)
		}
	}
	return strings.Join(out, ", ")
}

// planBypass checks that every application user holds
// prvBypassCustomBusinessLogic and finds this service's endpoint and its
// steps.
func planBypass(ctx context.Context, cfg *Config, c *crm.Client) bypassPlan {
	privs, err := c.UserPrivileges(ctx)
	if err != nil {
		return bypassPlan{why: "reading the application users' privileges failed", fix: "check the CRM connection", err: err}
	}
	for _, p := range privs {
		if _, ok := p.Depth[crm.PrivilegeBypassCustomBusinessLogic]; !ok {
			return bypassPlan{why: "CRM user " + p.Label + " lacks prvBypassCustomBusinessLogic",
				fix: "add privilege " + crm.PrivilegeBypassCustomBusinessLogic + " to the user's security role (AddPrivilegesRole, depth Global), or set crm.bypass_own_steps to false"}
		}
	}
	eps, err := c.ServiceEndpoints(ctx)
	if err != nil {
		return bypassPlan{why: "listing service endpoints failed", fix: "give the application user's security role Read on Service Endpoint", err: err}
	}
	ep, want := ownEndpoint(cfg, eps)
	if ep == nil {
		return bypassPlan{why: "no service endpoint found: want " + want, fix: "register the endpoint (see the crm steps check), or set crm.bypass_own_steps to false"}
	}
	steps, err := c.EndpointSteps(ctx, ep.ID)
	if err != nil {
		return bypassPlan{endpoint: ep, why: "listing the steps of service endpoint " + ep.Name + " failed", fix: "give the application user's security role Read on SDK Message Processing Step", err: err}
	}
	return bypassPlan{endpoint: ep, steps: steps}
}

// crmBypass is doctor's check of crm.bypass_own_steps.
func (d *doctor) crmBypass(ctx context.Context, c *crm.Client) {
	if !d.cfg.CRM.BypassOwnSteps {
		return
	}
	p := planBypass(ctx, d.cfg, c)
	if p.why != "" {
		why := p.why
		if p.err != nil {
			why += ": " + shortCause(p.err)
		}
		d.check("crm bypass", "", fail(p.fix, "crm.bypass_own_steps is on but the agent's writes will not bypass its endpoint's steps: %s", why))
		return
	}
	d.check("crm bypass", fmt.Sprintf("the agent's writes bypass the steps of service endpoint %q (%s); every application user holds prvBypassCustomBusinessLogic",
		p.endpoint.Name, p.names()), nil)
}
