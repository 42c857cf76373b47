package crm

import (
	"bytes"
	"io"
	"sync"
)

// readAll reads r to its end, as io.ReadAll does, and returns what it read
// in a slice of its size: the reading is done in a reused buffer, where
// io.ReadAll's slice, grown by doubling, would cost up to twice an answer's
// size for every answer and every part of a $batch answer. The slice is
// the caller's to keep.
func readAll(r io.Reader) ([]byte, error) {
	buf := readBuffers.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= maxPooledRead {
			buf.Reset()
			readBuffers.Put(buf)
		}
	}()
	buf.Reset()
	_, err := buf.ReadFrom(r)
	out := make([]byte, buf.Len())
	copy(out, buf.Bytes())
	return out, err
}

// readBuffers are readAll's buffers; one that grew past maxPooledRead is
// left to the collector.
var readBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

const maxPooledRead = 4 << 20
