package agent

import (
	"strings"

	"github.com/fhirsync/fhirsync/queues"
)

// crmUsers are fhirsync's own application users in the CRM (a CRM client
// may sign in as several to share Dataverse's per-user limits): a change
// any of them initiated is the agent's own.
type crmUsers []string

func newCRMUsers(id string, more []string) crmUsers {
	var u crmUsers
	for _, x := range append([]string{id}, more...) {
		if x != "" {
			u = append(u, x)
		}
	}
	return u
}

// has reports whether id is one of the users (systemuserids compare
// without regard to case); never for "".
func (u crmUsers) has(id string) bool {
	for _, x := range u {
		if id != "" && strings.EqualFold(x, id) {
			return true
		}
	}
	return false
}

// initiated reports whether one of the users initiated the noticed change.
func (u crmUsers) initiated(n queues.Notice) bool { return u.has(n.Initiator) }
