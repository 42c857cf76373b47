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

// Pool keeps the buffers of one use. Each use keeps its own: the uses'
// sizes differ by orders of magnitude (an encoded identifier row, a
// Bundle of a hundred resources), and a buffer one use grew would be
// taken by another that needs a tenth of it, while the first grew a new
// one again. The zero Pool is ready to use.
type Pool struct{ p sync.Pool }

// Get returns an empty buffer. Give it back with Put once nothing holds
// what was written into it.
func (p *Pool) Get() *[]byte {
	b, _ := p.p.Get().(*[]byte)
	if b == nil {
		s := make([]byte, 0, 4096)
		return &s
	}
	*b = (*b)[:0]
	return b
}

// Put takes back b, with grown the buffer as its user grew it (appending
// to *b); grown is kept in place of b's own when it is at most MaxKept.
func (p *Pool) Put(b *[]byte, grown []byte) {
	if cap(grown) <= MaxKept {
		*b = grown[:0]
	}
	p.p.Put(b)
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

// ReadAll is io.ReadAll read in a buffer of p: what r holds, in a slice
// of its size that is the caller's to keep.
func (p *Pool) ReadAll(r io.Reader) ([]byte, error) {
	buf := p.Get()
	b, err := ReadFrom(*buf, r)
	out := Clone(b)
	p.Put(buf, b)
	return out, err
}
