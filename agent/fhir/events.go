package fhir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fhirsync/fhirsync/queues"
)

// ErrInvalidEvent wraps every reason an Azure Health Data Services event
// message is refused.
var ErrInvalidEvent = errors.New("invalid FHIR event")

// ErrUnsupportedEvent marks a well-formed Azure Health Data Services event
// that is not a FHIR resource change, such as a DICOM event from the same
// workspace (Microsoft.HealthcareApis.DicomImageCreated). It wraps
// ErrInvalidEvent, so callers that only know that class keep refusing it;
// a caller that can skip such events tells them apart with errors.Is.
var ErrUnsupportedEvent = fmt.Errorf("%w: not a FHIR resource change", ErrInvalidEvent)

// MaxEventBytes bounds an event message. Event Grid events are at most
// 1 MB; FHIR events are a few hundred bytes.
const MaxEventBytes = 1 << 20

// maxEventsPerMessage bounds an array of events in one message.
const maxEventsPerMessage = 5000

// AHDS FHIR event types.
const (
	EventTypeCreated = "Microsoft.HealthcareApis.FhirResourceCreated"
	EventTypeUpdated = "Microsoft.HealthcareApis.FhirResourceUpdated"
	EventTypeDeleted = "Microsoft.HealthcareApis.FhirResourceDeleted"
)

// rawEvent holds both schemas' fields: Event Grid (eventType, eventTime)
// and CloudEvents 1.0 (specversion, type, time).
type rawEvent struct {
	ID          string          `json:"id"`
	EventType   string          `json:"eventType"`
	EventTime   string          `json:"eventTime"`
	SpecVersion string          `json:"specversion"`
	Type        string          `json:"type"`
	Time        string          `json:"time"`
	Data        json.RawMessage `json:"data"`
}

type eventData struct {
	ResourceType      string          `json:"resourceType"`
	ResourceFhirAcct  string          `json:"resourceFhirAccount"`
	ResourceFhirID    string          `json:"resourceFhirId"`
	ResourceVersionID json.RawMessage `json:"resourceVersionId"`
}

// DecodeEvents turns one queue message carrying Azure Health Data Services
// FHIR events — Event Grid or CloudEvents schema, a single event or an
// array — into change notices (origin "ahds-event"). When account is not
// empty, events from another FHIR service (data.resourceFhirAccount) are
// refused. Events carry no body and no order guarantee; the agent re-reads
// the resource.
func DecodeEvents(body []byte, account string) ([]queues.Notice, error) {
	if len(body) > MaxEventBytes {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrInvalidEvent, len(body), MaxEventBytes)
	}
	if !utf8.Valid(body) {
		return nil, fmt.Errorf("%w: not UTF-8", ErrInvalidEvent)
	}
	trimmed := bytes.TrimSpace(body)
	var raws []rawEvent
	switch {
	case len(trimmed) > 0 && trimmed[0] == '[':
		if err := json.Unmarshal(trimmed, &raws); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidEvent, err)
		}
		if len(raws) == 0 {
			return nil, fmt.Errorf("%w: empty event array", ErrInvalidEvent)
		}
		if len(raws) > maxEventsPerMessage {
			return nil, fmt.Errorf("%w: %d events in one message", ErrInvalidEvent, len(raws))
		}
	case len(trimmed) > 0 && trimmed[0] == '{':
		var r rawEvent
		if err := json.Unmarshal(trimmed, &r); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidEvent, err)
		}
		raws = []rawEvent{r}
	default:
		return nil, fmt.Errorf("%w: not a JSON object or array", ErrInvalidEvent)
	}
	out := make([]queues.Notice, 0, len(raws))
	var unsupported error
	for i, r := range raws {
		n, err := decodeEvent(r, account)
		if len(raws) > 1 && errors.Is(err, ErrUnsupportedEvent) {
			// One subscription can carry the workspace's DICOM events
			// beside its FHIR events: they are no one's business here,
			// and do not spoil the FHIR changes delivered with them.
			unsupported = fmt.Errorf("event %d: %w", i, err)
			continue
		}
		if err != nil {
			if len(raws) > 1 {
				return nil, fmt.Errorf("event %d: %w", i, err)
			}
			return nil, err
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, unsupported
	}
	return out, nil
}

func decodeEvent(r rawEvent, account string) (queues.Notice, error) {
	kind, when := r.EventType, r.EventTime
	if r.SpecVersion != "" {
		if r.SpecVersion != "1.0" {
			return queues.Notice{}, fmt.Errorf("%w: CloudEvents specversion %q", ErrInvalidEvent, truncate(r.SpecVersion, 16))
		}
		kind, when = r.Type, r.Time
	}
	n := queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Origin: "ahds-event"}
	switch kind {
	case EventTypeCreated:
		n.Event = queues.EventCreated
	case EventTypeUpdated:
		n.Event = queues.EventUpdated
	case EventTypeDeleted:
		n.Event = queues.EventDeleted
	case "":
		return n, fmt.Errorf("%w: no event type", ErrInvalidEvent)
	default:
		return n, fmt.Errorf("%w: event type %q", ErrUnsupportedEvent, truncate(kind, 80))
	}
	if len(r.Data) == 0 {
		return n, fmt.Errorf("%w: no data", ErrInvalidEvent)
	}
	var d eventData
	if err := json.Unmarshal(r.Data, &d); err != nil {
		return n, fmt.Errorf("%w: data: %v", ErrInvalidEvent, err)
	}
	if !isTypeName(d.ResourceType) {
		return n, fmt.Errorf("%w: data.resourceType missing or malformed", ErrInvalidEvent)
	}
	if !isID(d.ResourceFhirID) {
		return n, fmt.Errorf("%w: data.resourceFhirId missing or malformed", ErrInvalidEvent)
	}
	if d.ResourceFhirAcct == "" {
		return n, fmt.Errorf("%w: data.resourceFhirAccount missing", ErrInvalidEvent)
	}
	if account != "" && !strings.EqualFold(d.ResourceFhirAcct, account) {
		return n, fmt.Errorf("%w: event for another FHIR service", ErrInvalidEvent)
	}
	v, err := versionText(d.ResourceVersionID)
	if err != nil {
		return n, err
	}
	n.Type, n.ID, n.Version = d.ResourceType, d.ResourceFhirID, v
	if when != "" {
		t, err := time.Parse(time.RFC3339Nano, when)
		if err != nil {
			return n, fmt.Errorf("%w: event time is not RFC 3339", ErrInvalidEvent)
		}
		n.ChangedAt = t.UTC()
	}
	if isID(r.ID) {
		n.CorrelationID = r.ID
	}
	if err := n.Validate(); err != nil {
		return n, fmt.Errorf("%w: %v", ErrInvalidEvent, err)
	}
	return n, nil
}

// versionText reads resourceVersionId, a number in Azure's events (1, 2,
// ...) but accepted as a string too.
func versionText(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", fmt.Errorf("%w: data.resourceVersionId missing", ErrInvalidEvent)
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil || !isID(s) {
			return "", fmt.Errorf("%w: data.resourceVersionId malformed", ErrInvalidEvent)
		}
		return s, nil
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil || n < 1 {
		return "", fmt.Errorf("%w: data.resourceVersionId is not a positive integer", ErrInvalidEvent)
	}
	return strconv.FormatInt(n, 10), nil
}
