package agent

import (
	"hash/maphash"
	"strings"
	"sync"
)

// createdRows remembers the rows this process created on a side, with the
// version the create answered (up to maxCreated, oldest forgotten first).
// A row whose current version is still the one its create made holds what
// fhirsync wrote and nothing else — no edit can be carried along by a
// create — so the change notice of such a row, whatever it names, is the
// create's echo: told from the row's version alone (echo_park.go), without
// reading the row or its child rows. A row edited since has a version of
// its own and is read and synced; a row not remembered (created before a
// restart, or by another replica) is read and told as any other.
type createdRows struct {
	mu   sync.Mutex
	rows map[uint64]createdVersion // hash of side, type, id → created version
	fifo []uint64
	next int
}

// createdVersion is the hash of a created row's version (normalised).
type createdVersion uint64

// is reports whether v (as read, not yet normalised) is the version.
func (c createdVersion) is(v string) bool { return c == createdVersionOf(normVersion(v)) }

// createdSeed seeds the hashes of createdRows for this process.
var createdSeed = maphash.MakeSeed()

// createdVersionOf hashes a normalised version.
func createdVersionOf(v string) createdVersion {
	return createdVersion(maphash.String(createdSeed, v))
}

// maxCreated bounds the rows remembered as created by this process.
const maxCreated = 1 << 16

func newCreatedRows() *createdRows { return &createdRows{rows: map[uint64]createdVersion{}} }

func createdKey(side, rtype, id string) uint64 {
	var h maphash.Hash
	h.SetSeed(createdSeed)
	h.WriteString(side)
	h.WriteByte(0)
	h.WriteString(rtype)
	h.WriteByte(0)
	h.WriteString(strings.ToLower(id))
	return h.Sum64()
}

// note remembers that the agent created w's row, at w's version.
func (c *createdRows) note(w ownWrite) {
	nv := normVersion(w.Version)
	if c == nil || w.RID == "" || nv == "" {
		return
	}
	k, v := createdKey(w.Side, w.RType, w.RID), createdVersionOf(nv)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.rows[k]; ok {
		c.rows[k] = v
		return
	}
	if len(c.fifo) < maxCreated {
		c.fifo = append(c.fifo, k)
	} else {
		delete(c.rows, c.fifo[c.next])
		c.fifo[c.next] = k
		c.next = (c.next + 1) % maxCreated
	}
	c.rows[k] = v
}

// version returns the version the agent's create of the row made, if the
// row is one this process created and still remembers.
func (c *createdRows) version(side, rtype, id string) (createdVersion, bool) {
	if c == nil || id == "" {
		return 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.rows[createdKey(side, rtype, id)]
	return v, ok
}
