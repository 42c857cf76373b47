package bufpool

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// TestReadAllReadsAsIoReadAll: ReadAll gives what io.ReadAll gives, at its
// size, in a slice the next read does not touch, and passes on a read
// error with what came before it.
func TestReadAllReadsAsIoReadAll(t *testing.T) {
	t.Parallel()
	var pool Pool
	var kept [][]byte
	var want []string
	for _, n := range []int{0, 1, 511, 512, 4097, 100_000, 5 << 20} {
		s := strings.Repeat(string(rune('a'+n%26)), n)
		got, err := pool.ReadAll(iotest.HalfReader(strings.NewReader(s)))
		if err != nil || string(got) != s || len(got) != cap(got) || got == nil {
			t.Fatalf("%d bytes: got %d (cap %d, nil %t), %v", n, len(got), cap(got), got == nil, err)
		}
		kept, want = append(kept, got), append(want, s)
	}
	for i := range kept {
		if string(kept[i]) != want[i] {
			t.Errorf("answer %d changed after the reads that followed it", i)
		}
	}
	boom := errors.New("connection reset")
	got, err := pool.ReadAll(io.MultiReader(strings.NewReader("partial"), iotest.ErrReader(boom)))
	if !errors.Is(err, boom) || !bytes.Equal(got, []byte("partial")) {
		t.Errorf("got %q, %v", got, err)
	}
}
