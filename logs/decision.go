package logs

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// ErrInvalidDecision wraps every reason a decision is refused before it
// reaches the database.
var ErrInvalidDecision = errors.New("invalid decision")

// ErrNotFound means no decision (or capture) has the requested id.
var ErrNotFound = errors.New("not found")

// Decision is the one record every message ends in (DESIGN.md §5).
//
// It holds no field values of a resource: references, codes, field names
// and counts only. Business key values are hashed before they are stored,
// and Snapshots are kept only when payload capture is on, sealed.
type Decision struct {
	// ID is assigned when the decision is written.
	ID int64 `json:"id"`
	// Time is when the decision was made; Write fills in the current time
	// when it is zero. Stored in UTC at microsecond precision.
	Time time.Time `json:"time"`
	// CorrelationID ties together the decisions caused by one change.
	CorrelationID string `json:"correlation_id,omitempty"`
	// MessageID is the queue message's stable id.
	MessageID string `json:"message_id,omitempty"`
	// Direction is which way the message travelled. Required.
	Direction Direction `json:"direction"`
	// EntityMap names the entity map used, empty when none applied.
	EntityMap string `json:"entity_map,omitempty"`
	// MapVersion is the published map version used.
	MapVersion int `json:"map_version,omitempty"`
	// Source is the record the change came from.
	Source Ref `json:"source"`
	// Target is the record written or that would have been written.
	Target Ref `json:"target"`
	// BusinessKeys identify the record across systems (an MRN, a CRM
	// number). Values are only read on write, to compute keyed hashes; a
	// decision read back carries the key names with empty values.
	BusinessKeys []BusinessKey `json:"business_keys,omitempty"`
	// Outcome is how the message ended. Required.
	Outcome Outcome `json:"outcome"`
	// Reason is a registered code that Outcome allows. Required.
	Reason ReasonCode `json:"reason"`
	// ReasonSubject names what the reason refers to: the filter for
	// filtered, the attribute map for mapping_error. Never a field value.
	ReasonSubject string `json:"reason_subject,omitempty"`
	// Message is one human sentence about the decision. It must not contain
	// PHI: name records by reference, fields by name.
	Message string `json:"message,omitempty"`
	// ChangedFields names the target fields whose values changed.
	ChangedFields []string `json:"changed_fields,omitempty"`
	// Conflicts lists the attributes changed on both sides and how this
	// decision settled each. Never values.
	Conflicts []Conflict `json:"conflicts,omitempty"`
	// Attempts lists each try at the message, oldest first. Retries fold
	// into the message's one decision: each delivery's decision carries
	// the attempts of those before it and replaces the failed decision
	// of the delivery before (see Supersedes).
	Attempts []Attempt `json:"attempts,omitempty"`
	// Supersedes is the id of the failed decision an earlier delivery of
	// the same message recorded; writing this decision deletes it in the
	// same transaction, its attempts being in Attempts. Zero: none.
	Supersedes int64 `json:"-"`
	// Duration is how long the message took from receipt to decision.
	Duration time.Duration `json:"duration_ns"`
	// Latency is the time from the source change to the target write, on
	// a sent decision whose notice said when the source changed; zero
	// when unknown. The dashboard's percentiles read it.
	Latency time.Duration `json:"latency_ns,omitempty"`
	// Readings, on the decision of a device-stream window, says what
	// became of the window's readings (one decision per window and key,
	// never one per reading); nil on every other decision.
	Readings *Readings `json:"readings,omitempty"`
	// Snapshots are the source and target payloads. They are stored,
	// encrypted, only when payload capture is on; otherwise dropped. They
	// are never returned by queries; see Store.ReadCapture.
	Snapshots *Snapshots `json:"-"`
	// Captured reports, on a decision returned by Get, that an encrypted
	// capture of its payloads is stored.
	Captured bool `json:"captured,omitempty"`
	// TraceID is the OpenTelemetry trace the message was processed in (32
	// lowercase hex digits), when tracing was on and the trace sampled;
	// empty otherwise. The admin app links it to the tracing backend.
	TraceID string `json:"trace_id,omitempty"`
}

// Readings summarises the readings of one device-stream window of one
// key (a patient and a code): counts, never values.
type Readings struct {
	// Subject is the patient's reference (Patient/123) and Code the
	// reading's code (system|code): the window's key.
	Subject string `json:"subject"`
	Code    string `json:"code"`
	// Start and End bound the window.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Counts are the readings taken by what became of them: aggregated
	// (part of an aggregate that was sent), within_range, rate_limited,
	// duplicate_reading; the decision's own reason says what became of
	// the window's aggregate.
	Counts map[ReasonCode]int `json:"counts"`
}

// Total is the number of readings the window took.
func (r *Readings) Total() int {
	n := 0
	for _, c := range r.Counts {
		n += c
	}
	return n
}

// Ref names a record on one side.
type Ref struct {
	// Type is the FHIR resource type or the CRM entity logical name.
	Type string `json:"type,omitempty"`
	// ID is the record's id on its side.
	ID string `json:"id,omitempty"`
	// Version is the FHIR versionId or the CRM ETag, when known.
	Version string `json:"version,omitempty"`
}

// String renders the reference as Type/ID, with _history/Version when set.
func (r Ref) String() string {
	s := r.Type + "/" + r.ID
	if r.Version != "" {
		s += "/_history/" + r.Version
	}
	return s
}

// BusinessKey is a named identifier of a record, such as "mrn".
type BusinessKey struct {
	// Name is the kind of key ("mrn", "crm_id"); stored in clear.
	Name string `json:"name"`
	// Value is the identifier itself; hashed, never stored.
	Value string `json:"value,omitempty"`
}

// Attempt is one try at processing the message.
type Attempt struct {
	// At is when the attempt ended.
	At time.Time `json:"at"`
	// ErrorClass is a short class such as "http_429" or "timeout", empty on
	// success. Never raw error text.
	ErrorClass string `json:"error_class,omitempty"`
	// Retryable reports whether the error was worth retrying.
	Retryable bool `json:"retryable"`
	// TargetError is what the endpoint said when it refused the attempt,
	// when it answered with an error body; nil otherwise.
	*TargetError
}

// TargetError is an endpoint's own account of why it refused a request
// (the Dataverse error JSON, a FHIR OperationOutcome).
type TargetError struct {
	// Status is the HTTP status of the answer.
	Status int `json:"status,omitempty"`
	// Code is the endpoint's error code: a Dataverse code
	// ("0x80040237") or an OperationOutcome issue code ("invalid").
	Code string `json:"code,omitempty"`
	// Message is the endpoint's message with the values it quotes elided
	// ("…"), so that it may be shown without the PHI permission. The full
	// message is kept only in the payload capture (Snapshots.Error).
	Message string `json:"message,omitempty"`
}

// LastError is what the endpoint said on the decision's last attempt,
// when that attempt failed with an error body; nil otherwise (a decision
// sent after failed attempts has none).
func (d Decision) LastError() *TargetError {
	if len(d.Attempts) == 0 {
		return nil
	}
	return d.Attempts[len(d.Attempts)-1].TargetError
}

// Conflict is one attribute changed on both sides, as a decision settled it. It never carries a value.
type Conflict struct {
	Attribute   string `json:"attribute"`             // attribute map name; empty: the whole record (a delete met an edit)
	Policy      string `json:"policy"`                // what decided: fhir-wins, crm-wins, last-writer-wins, hold, person
	Tie         bool   `json:"tie,omitempty"`         // last-writer-wins could not order the edits; Policy is the tie-breaker
	Overwritten string `json:"overwritten,omitempty"` // "fhir" or "crm": the side whose value this decision replaced
	Held        bool   `json:"held,omitempty"`
	Deferred    bool   `json:"deferred,omitempty"` // the other side won; its own change writes the value
}

// Conflict policies, as Conflict.Policy names them. PolicyPerson marks a
// held conflict a person resolved.
const (
	PolicyFHIRWins       = "fhir-wins"
	PolicyCRMWins        = "crm-wins"
	PolicyLastWriterWins = "last-writer-wins"
	PolicyHold           = "hold"
	PolicyPerson         = "person"
)

// The two sides, as Conflict.Overwritten, HeldConflict.DeletedSide and a
// resolution name them.
const (
	SideFHIR = "fhir"
	SideCRM  = "crm"
)

// ConflictPolicies lists the values Conflict.Policy may take.
func ConflictPolicies() []string {
	return []string{PolicyFHIRWins, PolicyCRMWins, PolicyLastWriterWins, PolicyHold, PolicyPerson}
}

// validate reports what is wrong with c, naming fields, never values.
func (c Conflict) validate() error {
	var errs []error
	if len(c.Attribute) > maxShortText || !utf8.ValidString(c.Attribute) {
		errs = append(errs, fmt.Errorf("attribute is longer than %d bytes or not UTF-8", maxShortText))
	}
	if !slices.Contains(ConflictPolicies(), c.Policy) {
		errs = append(errs, fmt.Errorf("policy %q is not one of %s", short(c.Policy), strings.Join(ConflictPolicies(), ", ")))
	}
	if c.Overwritten != "" && c.Overwritten != SideFHIR && c.Overwritten != SideCRM {
		errs = append(errs, fmt.Errorf("overwritten %q is not fhir, crm or empty", short(c.Overwritten)))
	}
	// A conflict is settled one way: a side overwritten, held, or deferred
	// to the other side's own change.
	n := 0
	for _, b := range []bool{c.Overwritten != "", c.Held, c.Deferred} {
		if b {
			n++
		}
	}
	if n > 1 {
		errs = append(errs, errors.New("more than one of overwritten, held and deferred is set"))
	}
	return errors.Join(errs...)
}

// Snapshots are the payloads behind a decision, as raw bytes (normally
// JSON). They contain PHI.
type Snapshots struct {
	// Source is the record as read from the source side.
	Source []byte
	// Target is what was (or would have been) written to the target.
	Target []byte
	// Error is the endpoint's full error message, values included
	// (TargetError.Message is its redacted form).
	Error []byte
}

// Length limits keep one decision row small and stop a payload from being
// smuggled into a free-text column.
const (
	maxShortText = 256
	maxMessage   = 1000
	maxFields    = 500
	maxAttempts  = 100
	maxKeys      = 16
	maxConflicts = 500
)

// validate checks d and fills defaults. Its errors name fields, never
// values.
func (d *Decision) validate(now time.Time) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	if !d.Direction.valid() {
		bad("direction %q is not fhir_to_crm or crm_to_fhir", short(string(d.Direction)))
	}
	if !d.Outcome.valid() {
		bad("outcome %q is not one of sent, skipped, held, failed, dead_lettered", short(string(d.Outcome)))
	}
	if r, ok := LookupReason(d.Reason); !ok {
		bad("reason %q is not a registered reason code", short(string(d.Reason)))
	} else if d.Outcome.valid() && !r.Allows(d.Outcome) {
		bad("reason %s is not allowed with outcome %s", d.Reason, d.Outcome)
	}
	for _, f := range []struct{ name, value string }{
		{"correlation id", d.CorrelationID}, {"message id", d.MessageID}, {"entity map", d.EntityMap},
		{"source type", d.Source.Type}, {"source id", d.Source.ID}, {"source version", d.Source.Version},
		{"target type", d.Target.Type}, {"target id", d.Target.ID}, {"target version", d.Target.Version},
		{"reason subject", d.ReasonSubject},
	} {
		if len(f.value) > maxShortText || !utf8.ValidString(f.value) {
			bad("%s is longer than %d bytes or not UTF-8", f.name, maxShortText)
		}
	}
	if len(d.Message) > maxMessage || !utf8.ValidString(d.Message) {
		bad("message is longer than %d bytes or not UTF-8", maxMessage)
	}
	if len(d.ChangedFields) > maxFields {
		bad("%d changed fields, at most %d", len(d.ChangedFields), maxFields)
	}
	for i, f := range d.ChangedFields {
		if f == "" || len(f) > maxShortText {
			bad("changed field %d is empty or longer than %d bytes", i, maxShortText)
		}
	}
	if len(d.Attempts) > maxAttempts {
		bad("%d attempts, at most %d", len(d.Attempts), maxAttempts)
	}
	for i, a := range d.Attempts {
		if len(a.ErrorClass) > 64 {
			bad("attempt %d: error class is longer than 64 bytes", i+1)
		}
		if te := a.TargetError; te != nil {
			if len(te.Code) > 64 || !utf8.ValidString(te.Code) {
				bad("attempt %d: target error code is longer than 64 bytes or not UTF-8", i+1)
			}
			if len(te.Message) > maxMessage || !utf8.ValidString(te.Message) {
				bad("attempt %d: target error message is longer than %d bytes or not UTF-8", i+1, maxMessage)
			}
			if te.Status < 0 || te.Status > 999 {
				bad("attempt %d: target error status %d is not an HTTP status", i+1, te.Status)
			}
		}
	}
	if d.Supersedes < 0 {
		bad("supersedes %d is negative", d.Supersedes)
	}
	if d.TraceID != "" && !validTraceID(d.TraceID) {
		bad("trace id is not 32 lowercase hexadecimal digits")
	}
	if len(d.Conflicts) > maxConflicts {
		bad("%d conflicts, at most %d", len(d.Conflicts), maxConflicts)
	}
	for i, c := range d.Conflicts {
		if err := c.validate(); err != nil {
			bad("conflict %d: %w", i+1, err)
		}
	}
	if len(d.BusinessKeys) > maxKeys {
		bad("%d business keys, at most %d", len(d.BusinessKeys), maxKeys)
	}
	seen := map[string]bool{}
	for i, k := range d.BusinessKeys {
		switch {
		case k.Name == "" || len(k.Name) > 64:
			bad("business key %d: name is empty or longer than 64 bytes", i+1)
		case seen[k.Name]:
			bad("business key %q appears twice", k.Name)
		case k.Value == "":
			bad("business key %q has no value", k.Name)
		}
		seen[k.Name] = true
	}
	if d.MapVersion < 0 {
		bad("map version %d is negative", d.MapVersion)
	}
	if d.Duration < 0 {
		bad("duration %s is negative", d.Duration)
	}
	if d.Latency < 0 {
		bad("latency %s is negative", d.Latency)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidDecision, errors.Join(errs...))
	}
	if d.Time.IsZero() {
		d.Time = now
	}
	d.Time = d.Time.UTC().Truncate(time.Microsecond)
	return nil
}

// short keeps an invalid enum value from flooding an error message.
func short(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// validTraceID reports whether s is a W3C trace id as the trace_id column
// holds it: 32 lowercase hexadecimal digits, not all zero.
func validTraceID(s string) bool {
	if len(s) != 32 || strings.Trim(s, "0") == "" {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
