package agentbench

import (
	"fmt"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
)

// agentCRMUsers is the CRM client configuration of an agent signing in as
// n application users of the sandbox CRM, and the agent configuration
// naming them as its own.
func agentCRMUsers(url string, n int) (crm.Config, agent.Config, error) {
	if n < 1 || n > maxAgentUsers {
		return crm.Config{}, agent.Config{}, fmt.Errorf("agentbench: %d CRM users, want 1 to %d", n, maxAgentUsers)
	}
	if n == 1 {
		return crm.Config{URL: url, Auth: crm.AuthBearer, Token: agentToken(0)}, agent.Config{CRMUserID: agentUser(0)}, nil
	}
	cc := crm.Config{URL: url}
	ac := agent.Config{CRMUserID: agentUser(0)}
	for i := range n {
		cc.Users = append(cc.Users, crm.User{Name: fmt.Sprintf("user%d", i+1), Auth: crm.AuthBearer, Token: agentToken(i), UserID: agentUser(i)})
		if i > 0 {
			ac.CRMUserIDs = append(ac.CRMUserIDs, agentUser(i))
		}
	}
	return cc, ac, nil
}
