package crmserver

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"unicode"

	"github.com/google/uuid"
)

// Security privileges, as Dataverse describes them:
//
//   - Each table has one privilege per access right, named prv<Right><SchemaName>
//     (prvCreateContact), listed in its definition's Privileges property
//     (EntityMetadata.Privileges, SecurityPrivilegeMetadata: Name,
//     PrivilegeId, PrivilegeType, CanBeBasic/Local/Deep/Global; PrivilegeType
//     EnumType Create 1, Read 2, Write 3, Delete 4, Assign 5, Share 6,
//     Append 7, AppendTo 8). Web API reference:
//     learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/securityprivilegemetadata
//     and …/privilegetype.
//   - systemusers(<id>)/Microsoft.Dynamics.CRM.RetrieveUserPrivileges() is a
//     function bound to systemuser that answers a RetrieveUserPrivilegesResponse
//     whose RolePrivileges are RolePrivilege values (BusinessUnitId, Depth,
//     PrivilegeId, PrivilegeName; Depth a PrivilegeDepth: Basic, Local,
//     Deep, Global, RecordFilter). Web API reference: …/retrieveuserprivileges,
//     …/retrieveuserprivilegesresponse, …/roleprivilege, …/privilegedepth
//     (MicrosoftDocs/powerapps-docs, developer/data-platform/webapi/reference).
//
// The sandbox has no security roles: every user holds every privilege of
// every table at Global depth unless a test took it away (RevokePrivilege)
// or lowered its depth (SetPrivilegeDepth; reported, not enforced).
// A request that needs a privilege its (effective, impersonated) user lacks
// is refused as Dataverse refuses it: 403, code 0x80040220, "Principal user
// (Id=<user>, type=8) is missing prvCreateContact privilege (Id=<id>)" (the
// form quoted in "Permission error 80040220 when importing or deleting
// solution", Microsoft Dynamics 365 troubleshooting, KB 4456770). Read for
// retrieve, list and $count; Create for a create or an upsert that creates;
// Write for an update; Delete; CreateMultiple Create, UpdateMultiple Write,
// UpsertMultiple both. Append and AppendTo (binding lookups) are reported
// but not enforced.

// privilegeRights are the access rights of a user-owned table, in
// PrivilegeType order.
var privilegeRights = []string{"Create", "Read", "Write", "Delete", "Assign", "Share", "Append", "AppendTo"}

// sandboxBusinessUnit is the one business unit (WhoAmI's BusinessUnitId).
const sandboxBusinessUnit = "00000000-0000-0000-0000-0000000000b1"

// schemaName is the table's schema name as privilege names carry it:
// Contact and Account for the system tables; the logical name for tables
// with a publisher prefix (msemr_medicalidentifier), whose schema names
// the sandbox does not model.
func schemaName(e *Entity) string {
	if strings.Contains(e.LogicalName, "_") || e.LogicalName == "" {
		return e.LogicalName
	}
	r := []rune(e.LogicalName)
	r[0] = unicode.ToUpper(r[0])
	return string(r)
}

// PrivilegeName is the name of the privilege for right (Create, Read,
// Write, Delete, Assign, Share, Append or AppendTo) on the table with
// logical name entity, e.g. prvCreateContact.
func PrivilegeName(right, entity string) string {
	return "prv" + right + schemaName(&Entity{LogicalName: entity})
}

func privilegeID(name string) string {
	if strings.EqualFold(name, privBypassCustomBusinessLogic) {
		return privBypassCustomBusinessLogicID
	}
	return uuid.NewSHA1(privilegeSpace, []byte(strings.ToLower(name))).String()
}

var privilegeSpace = uuid.MustParse("0b7e3f52-8c1d-4e2a-9f60-3d5c7a1b9e84")

// privilegesJSON is the table definition's Privileges property.
func privilegesJSON(e *Entity) []any {
	out := make([]any, 0, len(privilegeRights))
	for _, right := range privilegeRights {
		name := PrivilegeName(right, e.LogicalName)
		out = append(out, map[string]any{
			"CanBeBasic": true, "CanBeLocal": true, "CanBeDeep": true, "CanBeGlobal": true,
			"CanBeEntityReference": false, "CanBeParentEntityReference": false,
			"Name": name, "PrivilegeId": privilegeID(name), "PrivilegeType": right,
		})
	}
	return out
}

// RevokePrivilege takes the named privilege (prvWriteContact) away from
// the user with systemuserid userID: RetrieveUserPrivileges no longer
// lists it for that user.
func (s *Server) RevokePrivilege(userID, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.revoked == nil {
		s.revoked = map[string][]string{}
	}
	userID = strings.ToLower(userID)
	if !slices.Contains(s.revoked[userID], strings.ToLower(name)) {
		s.revoked[userID] = append(s.revoked[userID], strings.ToLower(name))
	}
}

// SetPrivilegeDepth sets the depth at which the user holds the named
// privilege: Basic (the user's own rows), Local (its business unit), Deep
// (and the units below) or Global (the organization, the default).
// RetrieveUserPrivileges reports it; requests are not limited by it.
func (s *Server) SetPrivilegeDepth(userID, name, depth string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.depths == nil {
		s.depths = map[string]string{}
	}
	s.depths[strings.ToLower(userID)+"/"+strings.ToLower(name)] = depth
}

// GrantPrivilege gives back a privilege RevokePrivilege took.
func (s *Server) GrantPrivilege(userID, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	userID = strings.ToLower(userID)
	s.revoked[userID] = slices.DeleteFunc(s.revoked[userID], func(n string) bool { return n == strings.ToLower(name) })
}

// userPrivileges answers systemusers(<id>)/Microsoft.Dynamics.CRM.RetrieveUserPrivileges().
func (s *Server) userPrivileges(c *call, req *request, idSeg string) response {
	if req.method != http.MethodGet {
		return errMethod()
	}
	id, err := uuid.Parse(idSeg)
	if err != nil {
		return errBadRequest("0x80060888", "Bad Request - Error in query syntax: the key of systemusers must be a GUID.").response()
	}
	user := id.String()
	s.mu.Lock()
	revoked := slices.Clone(s.revoked[user])
	depths := map[string]string{}
	for k, v := range s.depths {
		if u, name, _ := strings.Cut(k, "/"); u == user {
			depths[name] = v
		}
	}
	s.mu.Unlock()
	var names []string
	for _, tb := range s.st.tables {
		for _, right := range privilegeRights {
			names = append(names, PrivilegeName(right, tb.def.LogicalName))
		}
	}
	names = append(names, privBypassCustomBusinessLogic)
	slices.Sort(names)
	privs := make([]any, 0, len(names))
	for _, n := range names {
		if slices.Contains(revoked, strings.ToLower(n)) {
			continue
		}
		depth := "Global"
		if d, ok := depths[strings.ToLower(n)]; ok {
			depth = d
		}
		privs = append(privs, map[string]any{
			"BusinessUnitId": sandboxBusinessUnit, "Depth": depth, "PrivilegeId": privilegeID(n), "PrivilegeName": n,
			"RecordFilterId": nil, "RecordFilterUniqueName": nil,
		})
	}
	resp := jsonResponse(200, map[string]any{
		"@odata.context": c.base + "$metadata#Microsoft.Dynamics.CRM.RetrieveUserPrivilegesResponse",
		"RolePrivileges": privs,
	})
	resp.rows = len(privs)
	return resp
}

// bulkRights are the rights each bulk message needs.
var bulkRights = map[string][]string{
	"CreateMultiple": {"Create"},
	"UpdateMultiple": {"Write"},
	"UpsertMultiple": {"Create", "Write"},
}

// denied is the error for user lacking any of rights on table e, nil when
// it holds them all.
func (s *Server) denied(user string, e *Entity, rights ...string) *apiError {
	revoked := s.revokedFrom(user)
	if len(revoked) == 0 {
		return nil
	}
	for _, right := range rights {
		name := PrivilegeName(right, e.LogicalName)
		if slices.Contains(revoked, strings.ToLower(name)) {
			return missingPrivilege(user, name)
		}
	}
	return nil
}

// revokedFrom is the privileges (lower-case names) taken from user.
func (s *Server) revokedFrom(user string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.revoked[strings.ToLower(user)])
}

// missingPrivilege is Dataverse's refusal of a request by user, who lacks
// the privilege name.
func missingPrivilege(user, name string) *apiError {
	return &apiError{status: http.StatusForbidden, code: "0x80040220",
		message: fmt.Sprintf("Principal user (Id=%s, type=8) is missing %s privilege (Id=%s)", strings.ToLower(user), name, privilegeID(name))}
}
