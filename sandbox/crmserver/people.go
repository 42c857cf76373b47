package crmserver

// The sandbox's two users. fhirsync signs in as its application user, so
// every change that user initiates is taken for fhirsync's own write; a
// care coordinator editing contacts by hand is a second, licensed user
// with its own systemuserid, whose changes are edits to be synced. Tokens
// are opaque strings, not Entra ID tokens: the sandbox is for trying
// fhirsync on one machine.
const (
	// AgentUserID is the systemuserid of fhirsync's application user.
	AgentUserID = "00000000-0000-0000-0000-00000000a6e7"
	// AgentToken is the bearer token of fhirsync's application user.
	AgentToken = "fhirsync-agent"
	// CoordinatorUserID is the systemuserid of the care coordinator.
	CoordinatorUserID = "00000000-0000-0000-0000-0000000c00d1"
	// CoordinatorToken is the bearer token of the care coordinator.
	CoordinatorToken = "care-coordinator"
)

// SandboxTokens returns Options.Tokens for the sandbox's two users:
// AgentToken is AgentUserID and CoordinatorToken is CoordinatorUserID. A
// request with neither token is answered 401.
func SandboxTokens() map[string]string {
	return map[string]string{AgentToken: AgentUserID, CoordinatorToken: CoordinatorUserID}
}
