package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
)

func runSandbox(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("sandbox", "sandbox [--fhir ADDR] [--crm ADDR] [--patients N] [--fhir-db FILE]", `
Run the sandbox FHIR R4 server and the sandbox Dataverse-style CRM on their
own, seeded with synthetic data, for trying clients and maps by hand. The CRM
accepts any bearer token (or none). Ctrl-C stops.`)
	fhirAddr := fs.String("fhir", "127.0.0.1:8081", "sandbox FHIR server address")
	crmAddr := fs.String("crm", "127.0.0.1:8082", "sandbox CRM address")
	patients := fs.Int("patients", 100, "synthetic patients to seed")
	fhirDB := fs.String("fhir-db", "", "SQLite file for the FHIR sandbox (default: in memory)")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	log := e.logger()
	fs1, err := fhirserver.New(fhirserver.Options{Path: *fhirDB, Seed: 1, Patients: *patients, Encounters: 1, Observations: 2, Logger: log})
	if err != nil {
		return fmt.Errorf("starting the sandbox FHIR server: %w", err)
	}
	defer fs1.Close()
	cs, err := crmserver.New(crmserver.Options{Logger: log})
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
		hs := &http.Server{Handler: s.h, ReadHeaderTimeout: 10 * time.Second}
		srvs = append(srvs, hs)
		go func() { errc <- hs.Serve(ln) }()
		fmt.Fprintf(e.stdout, "%-24s http://%s%s\n", s.what, ln.Addr(), s.path)
	}
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
