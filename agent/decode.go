package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strings"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/queues"
)

// decodeMessage reads the notices a message carries. Three shapes arrive:
// fhirsync's own notice envelope (feeds, backfill, replay); a
// RemoteExecutionContext posted by a Dataverse service endpoint; and Azure
// Health Data Services FHIR events routed from Event Grid (one event, or an
// array). The first notice is processed; any others are re-queued.
//
// An AHDS event is taken only when fhirAccount names the FHIR service that
// may send it: with no account, an event from any workspace routed to the
// queue would steer the agent, so every event is refused (errNoFHIRAccount)
// while fhirsync's own notices still flow.
func decodeMessage(body []byte, fhirAccount string) ([]queues.Notice, error) {
	var ns []queues.Notice
	var err error
	switch shape(body) {
	case "remote-execution-context":
		ns, err = decodeContext(body)
	case "fhir-event":
		ns, err = decodeEvents(body, fhirAccount)
	default:
		n, nerr := queues.DecodeNotice(body)
		if nerr != nil {
			return nil, nerr
		}
		return []queues.Notice{n}, nil
	}
	if err != nil {
		// The guess may be wrong: a notice whose text mentions another
		// producer's keys is still a notice.
		if n, nerr := queues.DecodeNotice(body); nerr == nil {
			return []queues.Notice{n}, nil
		}
		return nil, err
	}
	return ns, nil
}

func decodeContext(body []byte) ([]queues.Notice, error) {
	x, err := crm.DecodeRemoteExecutionContext(body)
	if err != nil {
		return nil, err
	}
	n, err := x.Notice()
	if err != nil {
		return nil, err
	}
	return []queues.Notice{n}, nil
}

// errNoFHIRAccount refuses a well-formed AHDS event received while
// agent.fhir_account is unset.
var errNoFHIRAccount = errors.New("an Azure Health Data Services FHIR event arrived and agent.fhir_account is not set")

func decodeEvents(body []byte, fhirAccount string) ([]queues.Notice, error) {
	// Decoded first, so a malformed event is named as such whatever the
	// configuration; only a well-formed one is refused for the account.
	ns, err := fhir.DecodeEvents(body, fhirAccount)
	if err != nil {
		return nil, err
	}
	if len(ns) == 0 {
		return nil, errors.New("the event batch is empty")
	}
	if fhirAccount == "" {
		return nil, errNoFHIRAccount
	}
	return ns, nil
}

// shape tells which producer wrote body by the member names of its
// top-level object, or of the objects in a top-level array: a
// RemoteExecutionContext has MessageName and PrimaryEntityName, an Event
// Grid event eventType, a CloudEvent specversion. It reads the whole body,
// because Dataverse writes a context's members in alphabetical order, so
// MessageName comes after InputParameters, which can be hundreds of
// kilobytes; a member name is never taken from inside a value. The error
// for a bad message then comes from the decoder that understands it.
func shape(body []byte) string {
	event := false
	for name := range topLevelNames(body) {
		switch {
		case strings.EqualFold(name, "MessageName"), strings.EqualFold(name, "PrimaryEntityName"):
			return "remote-execution-context"
		case strings.EqualFold(name, "eventType"), strings.EqualFold(name, "specversion"),
			strings.EqualFold(name, "resourceFhirId"):
			event = true
		}
	}
	if event {
		return "fhir-event"
	}
	return "notice"
}

// topLevelNames yields the member names of the top-level JSON object in b,
// or, when b holds an array, of the objects that are its elements. It
// scans the bytes once without building values, and stops at the first
// thing that is not JSON it can step over (the decoders report that).
func topLevelNames(b []byte) iter.Seq[string] {
	return func(yield func(string) bool) {
		i := 0
		if bytes.HasPrefix(b, []byte("\xef\xbb\xbf")) {
			i = 3 // a byte-order mark, which the decoders skip too
		}
		for i < len(b) && isJSONSpace(b[i]) {
			i++
		}
		if i == len(b) || b[i] != '{' && b[i] != '[' {
			return
		}
		namesAt := 1 // the nesting depth of the objects whose names count
		if b[i] == '[' {
			namesAt = 2
		}
		depth, atName := 0, false // atName: the next string is a member name of an object at namesAt
		inObject := false         // the container at namesAt is an object
		for ; i < len(b); i++ {
			switch c := b[i]; c {
			case '"':
				end := stringEnd(b, i)
				if end < 0 {
					return
				}
				if atName {
					name := b[i+1 : end]
					if bytes.IndexByte(name, '\\') >= 0 {
						var s string
						if json.Unmarshal(b[i:end+1], &s) != nil {
							return
						}
						name = []byte(s)
					}
					if !yield(string(name)) {
						return
					}
					atName = false
				}
				i = end
			case '{', '[':
				depth++
				if depth == namesAt {
					inObject = c == '{'
				}
				atName = depth == namesAt && inObject
			case '}', ']':
				depth--
				atName = false
				if depth == 0 {
					return
				}
			case ',':
				atName = depth == namesAt && inObject
			case ':':
				atName = false
			}
		}
	}
}

// stringEnd returns the index of the quote closing the JSON string that
// opens at b[i], or -1.
func stringEnd(b []byte, i int) int {
	for j := i + 1; j < len(b); {
		k := bytes.IndexAny(b[j:], `"\`)
		if k < 0 {
			return -1
		}
		j += k
		if b[j] == '"' {
			return j
		}
		j += 2 // a backslash and the byte it escapes
	}
	return -1
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// describeDecodeError is the decision sentence for an undecodable message.
// Decoder errors name fields and positions, never values.
func describeDecodeError(err error) string {
	if errors.Is(err, errNoFHIRAccount) {
		return "The message is an Azure Health Data Services FHIR event; such events are refused until agent.fhir_account names the FHIR service that may send them."
	}
	if errors.Is(err, fhir.ErrUnsupportedEvent) {
		return fmt.Sprintf("The Azure Health Data Services event is well formed but is not a FHIR resource change (a DICOM event, say); limit the Event Grid subscription to FHIR resource events: %v", err)
	}
	return fmt.Sprintf("The message is not a change notice, a RemoteExecutionContext or a FHIR event: %v", err)
}
