package agent

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/queues"
)

// decodeMessage reads the notices a message carries. Three shapes arrive:
// fhirsync's own notice envelope (feeds, backfill, replay); a
// RemoteExecutionContext posted by a Dataverse service endpoint; and Azure
// Health Data Services FHIR events routed from Event Grid (one event, or an
// array). The first notice is processed; any others are re-queued.
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

func decodeEvents(body []byte, fhirAccount string) ([]queues.Notice, error) {
	ns, err := fhir.DecodeEvents(body, fhirAccount)
	if err != nil {
		return nil, err
	}
	if len(ns) == 0 {
		return nil, errors.New("the event batch is empty")
	}
	return ns, nil
}

// shape guesses which producer wrote body from its top-level keys, so the
// error for a bad message comes from the decoder that understands it.
func shape(body []byte) string {
	head := body
	if len(head) > 4096 {
		head = head[:4096]
	}
	switch {
	case bytes.Contains(head, []byte(`"MessageName"`)) || bytes.Contains(head, []byte(`"PrimaryEntityName"`)):
		return "remote-execution-context"
	case bytes.Contains(head, []byte(`"eventType"`)) || bytes.Contains(head, []byte(`"specversion"`)) ||
		bytes.Contains(head, []byte(`"resourceFhirId"`)):
		return "fhir-event"
	}
	return "notice"
}

// describeDecodeError is the decision sentence for an undecodable message.
// Decoder errors name fields and positions, never values.
func describeDecodeError(err error) string {
	return fmt.Sprintf("The message is not a change notice, a RemoteExecutionContext or a FHIR event: %v", err)
}
