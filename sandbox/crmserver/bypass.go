package crmserver

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/google/uuid"
)

// The optional parameter BypassBusinessLogicExecutionStepIds, as
// MicrosoftDocs/powerapps-docs describes it
// (developer/data-platform/bypass-custom-business-logic.md):
//
//   - The Web API request header MSCRM.BypassBusinessLogicExecutionStepIds
//     carries a comma-separated list of sdkmessageprocessingstep ids (the
//     page shows it both bare and in double quotes with a space after the
//     comma; both are read). The named steps do not run for the request; an
//     id whose step does not run for it is ignored.
//   - At most three ids a request by default (the organization setting
//     BypassBusinessLogicExecutionStepIdsLimit; Options.BypassStepLimit).
//   - The caller needs prvBypassCustomBusinessLogic, id
//     0ea552b0-a491-4470-9a1b-82068deccf66 in every environment.
//
// A service-endpoint step that does not run posts nothing: the change is
// not sent (Stats.EndpointBypassed counts it). With a Service Bus endpoint
// and a webhook both registered, the sandbox posts each change to both
// together, so a change is left out only when every step it would run is
// bypassed.
//
// The page shows the header on single requests only. That a $batch part
// carrying it is bypassed as that request alone is inferred: a $batch is
// ExecuteMultiple (webapi/execute-batch-operations-using-web-api.md), whose
// requests each carry their own optional parameters (optional-parameters.md,
// "How to use"). The header on the $batch request itself is not read, as
// nothing documents it applying to the parts; the agent puts it on each
// part.
//
// Not documented, so assumed: a request naming more ids than the limit,
// or a value that is not a list of GUIDs, is refused with 400 and code
// 0x80040203 (Dataverse's "invalid argument"), before anything runs; the
// privilege is checked on the effective user (MSCRMCallerID), as for the
// table privileges, and a missing one is refused as they are (403,
// 0x80040220, privileges.go).

const headerBypassStepIDs = "MSCRM.BypassBusinessLogicExecutionStepIds"

// privBypassCustomBusinessLogic is the privilege's name; its id is
// documented (privilegeID).
const privBypassCustomBusinessLogic = "prvBypassCustomBusinessLogic"

const privBypassCustomBusinessLogicID = "0ea552b0-a491-4470-9a1b-82068deccf66"

// bypassSteps parses the header value v for the request of c, checking the
// limit and the privilege.
func (s *Server) bypassSteps(c *call, v string) ([]string, *apiError) {
	var ids []string
	for _, f := range strings.Split(strings.Trim(strings.TrimSpace(v), `"`), ",") {
		f = strings.Trim(strings.TrimSpace(f), `"`)
		if f == "" {
			continue
		}
		u, err := uuid.Parse(f)
		if err != nil {
			return nil, &apiError{status: http.StatusBadRequest, code: "0x80040203",
				message: "BypassBusinessLogicExecutionStepIds must be a comma-separated list of sdkmessageprocessingstep ids."}
		}
		if id := u.String(); !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	limit := s.opts.BypassStepLimit
	if limit <= 0 {
		limit = 3
	}
	if len(ids) > limit {
		return nil, &apiError{status: http.StatusBadRequest, code: "0x80040203",
			message: fmt.Sprintf("BypassBusinessLogicExecutionStepIds names %d steps; the limit is %d (BypassBusinessLogicExecutionStepIdsLimit).", len(ids), limit)}
	}
	if slices.Contains(s.revokedFrom(c.user), strings.ToLower(privBypassCustomBusinessLogic)) {
		return nil, missingPrivilege(c.user, privBypassCustomBusinessLogic)
	}
	return ids, nil
}

// bypassesAll reports whether skip names every one of ids.
func bypassesAll(skip, ids []string) bool {
	if len(skip) == 0 {
		return false
	}
	for _, id := range ids {
		if !slices.Contains(skip, strings.ToLower(id)) {
			return false
		}
	}
	return true
}
