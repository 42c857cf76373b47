package admin

import (
	"fmt"
	"slices"
)

// Role is what a user may do in the admin app. PHI access is not a role: it
// is a separate per-user flag (see User.PHI).
type Role string

// The roles, from most to least powerful.
const (
	// RoleAdmin may do everything, including managing users.
	RoleAdmin Role = "admin"
	// RoleEditor edits and publishes maps.
	RoleEditor Role = "editor"
	// RoleOperator replays and redrives messages and resolves held
	// conflicts.
	RoleOperator Role = "operator"
	// RoleAuditor reads and exports sync logs and the audit trail.
	RoleAuditor Role = "auditor"
	// RoleViewer only looks.
	RoleViewer Role = "viewer"
)

// Roles lists every role, most powerful first.
var Roles = []Role{RoleAdmin, RoleEditor, RoleOperator, RoleAuditor, RoleViewer}

// ParseRole checks that s names a role.
func ParseRole(s string) (Role, error) {
	if r := Role(s); slices.Contains(Roles, r) {
		return r, nil
	}
	return "", fmt.Errorf("%q is not a role (admin, editor, operator, auditor or viewer)", s)
}

// perm is one thing a route may require.
type perm string

const (
	// permPublic routes need no session (sign-in, static files).
	permPublic perm = ""
	// permSignedIn routes need a session and nothing more.
	permSignedIn perm = "signed_in"

	permDashboard  perm = "dashboard.read"
	permMapsRead   perm = "maps.read"
	permMapsEdit   perm = "maps.edit"
	permLogsRead   perm = "logs.read"
	permLogsExport perm = "logs.export"
	permDLRead     perm = "deadletters.read"
	permDLRedrive  perm = "deadletters.redrive"
	permUsers      perm = "users.manage"
	permAudit      perm = "audit.read"
	// permConflictsResolve resolves held conflicts (take a side's value,
	// apply or refuse a delete). Reading them needs logs.read.
	permConflictsResolve perm = "conflicts.resolve"
	// permReplay sends records through the agent again (by record, by
	// log filter or time range), after a dry run.
	permReplay perm = "replay.send"
	// permAlerts adds, changes and deletes alert rules made in the app.
	// Reading them needs dashboard.read.
	permAlerts perm = "alerts.manage"
	// permPHI is granted by the user's PHI flag, never by a role.
	permPHI perm = "phi.view"
)

// rolePerms is the role → permissions table.
var rolePerms = map[Role][]perm{
	RoleAdmin: {permDashboard, permMapsRead, permMapsEdit, permLogsRead, permLogsExport,
		permDLRead, permDLRedrive, permReplay, permUsers, permAudit, permConflictsResolve, permAlerts},
	RoleEditor:   {permDashboard, permMapsRead, permMapsEdit, permLogsRead, permDLRead},
	RoleOperator: {permDashboard, permMapsRead, permLogsRead, permDLRead, permDLRedrive, permReplay, permConflictsResolve},
	RoleAuditor:  {permDashboard, permMapsRead, permLogsRead, permLogsExport, permDLRead, permAudit},
	RoleViewer:   {permDashboard, permMapsRead, permLogsRead, permDLRead},
}

// can reports whether u holds p.
func (u User) can(p perm) bool {
	switch p {
	case permPublic, permSignedIn:
		return true
	case permPHI:
		return u.PHI
	}
	return slices.Contains(rolePerms[u.Role], p)
}
