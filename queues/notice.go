package queues

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// NoticeVersion is the envelope version this binary writes.
const NoticeVersion = 1

// MaxNoticeBytes bounds an encoded notice; notices name records, they never
// carry them.
const MaxNoticeBytes = 16 << 10

// Side says which system a change happened in.
type Side string

const (
	// SideFHIR is a change in the FHIR server, to be sent to the CRM.
	SideFHIR Side = "fhir"
	// SideCRM is a change in the CRM, to be sent to the FHIR server.
	SideCRM Side = "crm"
)

// Event says what happened to the record, as far as the feed knows.
type Event string

const (
	EventCreated Event = "created" // the record was created
	EventUpdated Event = "updated" // the record was changed
	EventDeleted Event = "deleted" // the record was deleted
	EventChanged Event = "changed" // something happened; read to find out (backfill, reconcile, replay)
)

// ErrInvalidNotice wraps every decoding failure.
var ErrInvalidNotice = errors.New("invalid change notice")

// Notice says "record X may have changed". The agent re-reads the record, so
// duplicate and out-of-order notices are harmless.
type Notice struct {
	V    int    `json:"v"`
	Side Side   `json:"side"`
	Type string `json:"type"` // FHIR resource type or CRM entity logical name
	ID   string `json:"id"`
	// Version is the versionId (FHIR) or row version / etag (CRM), when known.
	Version string `json:"version,omitempty"`
	Event   Event  `json:"event"`
	// Origin names the feed: history-poll, ahds-event, rest-hook,
	// crm-tracking, crm-endpoint, backfill, reconcile, replay.
	Origin string `json:"origin"`
	// ChangedAt is when the source changed, for end-to-end latency.
	ChangedAt time.Time `json:"changed_at,omitzero"`
	// CorrelationID ties the notice to an upstream request when known.
	CorrelationID string `json:"correlation_id,omitempty"`
	// Initiator is the CRM user (or FHIR meta.source) that made the change,
	// used to recognise the agent's own writes.
	Initiator string `json:"initiator,omitempty"`
}

// Ref renders the record reference, e.g. "fhir:Patient/123".
func (n Notice) Ref() string { return string(n.Side) + ":" + n.Type + "/" + n.ID }

// SessionKey orders notices per record.
func (n Notice) SessionKey() string { return n.Ref() }

// MessageID is stable for the same change, so a feed that sees a change
// twice enqueues it once. Without a version, backfills and replays pass a
// distinguishing origin token.
func (n Notice) MessageID() string {
	v := n.Version
	if v == "" {
		v = n.Origin + "@" + n.ChangedAt.UTC().Format(time.RFC3339Nano)
	}
	return n.Ref() + "|" + string(n.Event) + "|" + v
}

// Message wraps the notice for sending.
func (n Notice) Message() (Message, error) {
	body, err := EncodeNotice(n)
	if err != nil {
		return Message{}, err
	}
	return Message{ID: n.MessageID(), SessionKey: n.SessionKey(), Body: body,
		Properties: map[string]string{"side": string(n.Side), "type": n.Type, "event": string(n.Event)}}, nil
}

// Validate reports what is wrong with n.
func (n Notice) Validate() error {
	var probs []string
	if n.V != NoticeVersion {
		probs = append(probs, fmt.Sprintf("unsupported envelope version %d", n.V))
	}
	if n.Side != SideFHIR && n.Side != SideCRM {
		probs = append(probs, fmt.Sprintf("unknown side %q", n.Side))
	}
	if !validToken(n.Type, 64) {
		probs = append(probs, "type missing or malformed")
	}
	if !validToken(n.ID, 128) {
		probs = append(probs, "id missing or malformed")
	}
	switch n.Event {
	case EventCreated, EventUpdated, EventDeleted, EventChanged:
	default:
		probs = append(probs, fmt.Sprintf("unknown event %q", n.Event))
	}
	if len(n.Version) > 128 || !utf8.ValidString(n.Version) {
		probs = append(probs, "version malformed")
	}
	if len(probs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidNotice, strings.Join(probs, "; "))
	}
	return nil
}

func validToken(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '.' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// EncodeNotice validates and encodes n.
func EncodeNotice(n Notice) ([]byte, error) {
	if n.V == 0 {
		n.V = NoticeVersion
	}
	if err := n.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(n)
}

// DecodeNotice parses and validates an envelope. Unknown fields are
// rejected so a message meant for another consumer is not half-understood.
func DecodeNotice(b []byte) (Notice, error) {
	var n Notice
	if len(b) > MaxNoticeBytes {
		return n, fmt.Errorf("%w: %d bytes exceeds the %d-byte limit", ErrInvalidNotice, len(b), MaxNoticeBytes)
	}
	if !utf8.Valid(b) {
		return n, fmt.Errorf("%w: body is not valid UTF-8", ErrInvalidNotice)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&n); err != nil {
		return Notice{}, fmt.Errorf("%w: %v", ErrInvalidNotice, err)
	}
	if dec.More() {
		return Notice{}, fmt.Errorf("%w: trailing data after the envelope", ErrInvalidNotice)
	}
	if err := n.Validate(); err != nil {
		return Notice{}, err
	}
	return n, nil
}
