package agent

import (
	"encoding/json"

	"github.com/fhirsync/fhirsync/logs"
)

// CapturePayloads is the Deps.Capture of an agent whose sync log keeps
// payload captures (logs.capture.enabled): the source record as read and
// the target-shaped output as written, as JSON. The sync log seals them
// with the capture key and drops them when capture is off, so they never
// reach the log in the clear. A value that cannot be encoded is left out
// rather than failing the write.
func CapturePayloads(src, out any) *logs.Snapshots {
	s := &logs.Snapshots{}
	if src != nil {
		if b, err := json.Marshal(src); err == nil {
			s.Source = b
		}
	}
	if out != nil {
		if b, err := json.Marshal(out); err == nil {
			s.Target = b
		}
	}
	if s.Source == nil && s.Target == nil {
		return nil
	}
	return s
}
