package fhirserver

import (
	"net/http"
	"strings"
)

// The sandbox's client identities. fhirsync recognises its own FHIR writes
// by the versions it wrote, not by who wrote them, so the server marks
// nothing: a resource is stored as the client sent it (meta.source and
// meta.tag included) whoever sends it. The identities let a person edit
// the sandbox apart from fhirsync, and let tests count who wrote.
const (
	// AgentClient is fhirsync's identity; AgentToken its bearer token.
	AgentClient = "fhirsync"
	AgentToken  = "fhirsync-agent"
	// CoordinatorClient is a care coordinator editing by hand;
	// CoordinatorToken its bearer token.
	CoordinatorClient = "care-coordinator"
	CoordinatorToken  = "care-coordinator"
	// Anonymous is the identity of a request without a bearer token when
	// Clients is set: a person trying the sandbox with curl.
	Anonymous = "anonymous"
)

// SandboxClients returns Options.Clients for the sandbox's two identities.
func SandboxClients() map[string]string {
	return map[string]string{AgentToken: AgentClient, CoordinatorToken: CoordinatorClient}
}

// identify returns the client identity of r, or false for a bearer token
// that Clients does not know. Without Clients every request is Anonymous.
func (s *Server) identify(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if len(s.opts.Clients) == 0 || h == "" {
		return Anonymous, true
	}
	tok, found := strings.CutPrefix(h, "Bearer ")
	if !found {
		return "", false
	}
	id, known := s.opts.Clients[strings.TrimSpace(tok)]
	return id, known
}

func (s *Server) countWrite(client string) {
	s.writesMu.Lock()
	defer s.writesMu.Unlock()
	if s.writes == nil {
		s.writes = map[string]int64{}
	}
	s.writes[client]++
}

// Writes returns how many requests that changed or could change resources
// (create, update, delete, batch and transaction) client made and the
// server answered without error.
func (s *Server) Writes(client string) int64 {
	s.writesMu.Lock()
	defer s.writesMu.Unlock()
	return s.writes[client]
}
