// Package agentbench measures the sync agent end to end: the agent and the
// embedded queue in this process, the sandbox FHIR server and CRM over
// loopback HTTP, either in this process or in one of their own
// (Config.SandboxCommand, ServeSandboxes), driven the way production feeds
// drive them (FHIR event notices, the CRM's RemoteExecutionContext
// messages).
//
// Run measures four things: sustained records per second in each
// direction, source-write-to-target-write latency at a fixed offered rate,
// the agent process's peak resident memory, and how much of the CRM's
// service-protection budget the agent uses when limits are on — with every
// record still ending sent. With the sandboxes in their own process the
// memory figure is the agent's alone: the sandbox CRM keeps every row in
// memory and would otherwise dominate it.
//
// It owns no production code path: it only assembles agent.New with the
// same parts `fhirsync serve` uses and watches from outside (the agent's
// Prometheus series, the sandboxes' state and the HTTP traffic reaching
// them). It does not own the command line; `fhirsync bench` prints its
// Result.
package agentbench
