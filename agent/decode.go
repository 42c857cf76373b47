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
	n, err := queues.DecodeNotice(body)
	if err == nil {
		return []queues.Notice{n}, nil
	}
	switch shape(body) {
	case "remote-execution-context":
		x, rerr := crm.DecodeRemoteExecutionContext(body)
		if rerr != nil {
			return nil, rerr
		}
		n, rerr := x.Notice()
		if rerr != nil {
			return nil, rerr
		}
		return []queues.Notice{n}, nil
	case "fhir-event":
		ns, eerr := fhir.DecodeEvents(body, fhirAccount)
		if eerr != nil {
			return nil, eerr
		}
		if len(ns) == 0 {
			return nil, errors.New("the event batch is empty")
		}
		return ns, nil
	}
	return nil, err
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
