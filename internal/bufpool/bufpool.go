// Package bufpool keeps byte buffers for reuse by the code that needs a
// scratch buffer on every message: reading an HTTP answer, encoding a
// request body. A slice grown by doubling (io.ReadAll, append from a small
// start) allocates up to twice its final size each time; a buffer from the
// pool has already grown. sync.Pool does the keeping; this package adds the
// size bound and the two ways the buffers are used.
package bufpool

import (
	"io"
	"sync"
)

// MaxKept is the largest buffer taken back: a rare huge one (a page of
// thousands of entries) is left to the collector rather than held.
const MaxKept = 4 << 20

var pool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// Get returns an empty buffer. Give it back with Put once nothing holds
// what was written into it.
func Get() *[]byte {
	p := pool.Get().(*[]byte)
	*p = (*p)[:0]
	return p
}

// Put takes back p, with b the buffer as its user grew it (appending to
// *p); b is kept in place of p's own when it is at most MaxKept.
func Put(p *[]byte, b []byte) {
	if cap(b) <= MaxKept {
		*p = b[:0]
	}
	pool.Put(p)
}

// ReadFrom appends what r holds to b until io.EOF and returns it, growing
// it as append does; like io.ReadAll, it reports io.EOF as no error, and
// on another error returns what it read before it.
func ReadFrom(b []byte, r io.Reader) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// Clone returns a copy of b whose capacity is its length, never nil.
func Clone(b []byte) []byte {
	out := make([]byte, len(b))
	copy(out, b)
	return out
}

// ReadAll is io.ReadAll read in a pooled buffer: what r holds, in a slice
// of its size that is the caller's to keep.
func ReadAll(r io.Reader) ([]byte, error) {
	p := Get()
	b, err := ReadFrom(*p, r)
	out := Clone(b)
	Put(p, b)
	return out, err
}
