package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
)

func runSandbox(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("sandbox", "sandbox [--fhir ADDR] [--crm ADDR] [--patients N] [--fhir-db FILE]", `
Run the sandbox FHIR R4 server and the sandbox Dataverse-style CRM on their
own, seeded with synthetic data, for trying clients and maps by hand. Each
server knows two identities, printed at start: fhirsync's own (give its token
to the agent) and a care coordinator's (edit with it by hand, and the agent
syncs the change). The FHIR server also takes requests without a token, as a
person's. Ctrl-C stops.`)
	fhirAddr := fs.String("fhir", "127.0.0.1:8081", "sandbox FHIR server address")
	crmAddr := fs.String("crm", "127.0.0.1:8082", "sandbox CRM address")
	patients := fs.Int("patients", 100, "synthetic patients to seed")
	fhirDB := fs.String("fhir-db", "", "SQLite file for the FHIR sandbox (default: in memory)")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	log := e.logger()
	fs1, err := fhirserver.New(fhirserver.Options{Path: *fhirDB, Seed: 1, Patients: *patients, Encounters: 1, Observations: 2,
		Clients: fhirserver.SandboxClients(), Logger: log})
	if err != nil {
		return fmt.Errorf("starting the sandbox FHIR server: %w", err)
	}
	defer fs1.Close()
	cs, err := crmserver.New(crmserver.Options{Tokens: crmserver.SandboxTokens(), Logger: log})
	if err != nil {
		return fmt.Errorf("starting the sandbox CRM: %w", err)
	}
	errc := make(chan error, 2)
	var srvs []*http.Server
	for _, s := range []struct {
		addr string
		h    http.Handler
		what string
		path string
	}{{*fhirAddr, fs1, "FHIR R4", ""}, {*crmAddr, cs, "CRM (Dataverse Web API)", "/api/data/v9.2/"}} {
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", s.addr, err)
		}
		hs := newHTTPServer(s.h, defaultTimeouts)
		srvs = append(srvs, hs)
		go func() { errc <- hs.Serve(ln) }()
		fmt.Fprintf(e.stdout, "%-24s http://%s%s\n", s.what, ln.Addr(), s.path)
	}
	printSandboxIdentities(e.stdout)
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	for _, hs := range srvs {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = hs.Shutdown(sctx)
		cancel()
	}
	return err
}

// sandboxIdentity is one identity the sandboxes know, with the same bearer
// token on both.
type sandboxIdentity struct {
	who        string
	token      string // bearer token on both sandboxes
	crmUserID  string // systemuserid in the sandbox CRM
	fhirClient string // client identity in the sandbox FHIR server
}

// sandboxIdentities are fhirsync's own identity and the care coordinator's.
var sandboxIdentities = [...]sandboxIdentity{
	{who: "fhirsync (the agent)", token: crmserver.AgentToken, crmUserID: crmserver.AgentUserID, fhirClient: fhirserver.AgentClient},
	{who: "care coordinator", token: crmserver.CoordinatorToken, crmUserID: crmserver.CoordinatorUserID, fhirClient: fhirserver.CoordinatorClient},
}

// useSandboxAgent makes cfg's agent call the sandboxes as fhirsync's own
// identity: the CRM application user, whose changes are its own writes,
// and the FHIR client. People edit with the coordinator's token.
func useSandboxAgent(cfg *Config) {
	cfg.CRM.Auth = CredentialConfig{Method: "bearer", Token: crmserver.AgentToken}
	cfg.Agent.CRMUserID = crmserver.AgentUserID
	cfg.FHIR.Auth = CredentialConfig{Method: "bearer", Token: fhirserver.AgentToken}
}

func printSandboxIdentities(w io.Writer) {
	fmt.Fprintf(w, "\nBearer tokens (the same on both servers):\n")
	for _, id := range sandboxIdentities {
		fmt.Fprintf(w, "  %-18s %-22s CRM systemuserid %s\n", id.token, id.who, id.crmUserID)
	}
}
