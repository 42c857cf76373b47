package agentbench

import (
	"bufio"
	"bytes"
	"io"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
)

// kindCounter counts the agent's CRM requests and the operations they
// carry by kind, as the agent sent them: what the sandbox's accounting
// counts, broken down (a $batch is one request; each request inside it is
// an operation of its own kind).
type kindCounter struct {
	next http.RoundTripper
	mu   sync.Mutex
	n    map[string]int64
}

func newKindCounter(next http.RoundTripper) *kindCounter {
	return &kindCounter{next: next, n: map[string]int64{}}
}

// snapshot copies the counts so far.
func (k *kindCounter) snapshot() map[string]int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return maps.Clone(k.n)
}

// innerRequests calls f with the method and target of each request line
// of a $batch body read from r ("PATCH contacts(…) HTTP/1.1"), a line at a
// time in r's buffer; a line longer than the buffer (a grouped In query
// names up to a hundred ids) is gathered in long first, which it returns
// as it grew it for the next call. It scans without a regular expression:
// the counter runs in the agent's process, whose CPU per record the bench
// reports.
func innerRequests(r *bufio.Reader, long []byte, f func(method, target string)) []byte {
	long = long[:0]
	gathering := false
	for {
		chunk, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			long, gathering = append(long, chunk...), true
			continue
		}
		line := chunk
		if gathering {
			long = append(long, chunk...)
			line, gathering = long, false
		}
		requestLine(bytes.TrimSuffix(line, []byte("\n")), f)
		long = long[:0]
		if err != nil {
			return long
		}
	}
}

// requestLine calls f with the method and target of line if it is a
// request line.
func requestLine(line []byte, f func(method, target string)) {
	line = bytes.TrimSuffix(line, []byte("\r"))
	rest, ok := bytes.CutSuffix(line, []byte(" HTTP/1.1"))
	if !ok {
		return
	}
	method, target, ok := bytes.Cut(rest, []byte(" "))
	if !ok || len(target) == 0 || bytes.IndexByte(target, ' ') >= 0 {
		return
	}
	switch string(method) {
	case "GET", "POST", "PATCH", "PUT", "DELETE":
		f(string(method), string(target))
	}
}

// lineScanner is a reader and the buffer its long lines are gathered in.
type lineScanner struct {
	r    *bufio.Reader
	long []byte
}

// lineScanners are the buffers RoundTrip scans $batch bodies in.
var lineScanners = sync.Pool{New: func() any { return &lineScanner{r: bufio.NewReaderSize(nil, 4096)} }}

func (k *kindCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	var counts []string
	if strings.HasSuffix(r.URL.Path, "/$batch") && r.Body != nil {
		counts = append(counts, "request: $batch")
		count := func(method, target string) { counts = append(counts, "op: "+opKind(method, target)) }
		body, err := getBody(r)
		if err != nil || body == nil {
			// No second reader of the body (the client's requests have
			// one): read it, and give the request a copy.
			b, err := io.ReadAll(r.Body)
			_ = r.Body.Close()
			if err != nil {
				return nil, err
			}
			r.Body, body = io.NopCloser(bytes.NewReader(b)), io.NopCloser(bytes.NewReader(b))
		}
		sc := lineScanners.Get().(*lineScanner)
		sc.r.Reset(body)
		sc.long = innerRequests(sc.r, sc.long, count)
		sc.r.Reset(nil)
		lineScanners.Put(sc)
		_ = body.Close()
	} else {
		kind := opKind(r.Method, r.URL.String())
		counts = append(counts, "request: "+kind, "op: "+kind)
	}
	k.mu.Lock()
	for _, c := range counts {
		k.n[c]++
	}
	k.mu.Unlock()
	return k.next.RoundTrip(r)
}

// getBody is a new reader of r's body when r can make one; nil otherwise.
func getBody(r *http.Request) (io.ReadCloser, error) {
	if r.GetBody == nil {
		return nil, nil
	}
	return r.GetBody()
}

// guidKey matches a primary key in a path: contacts(<guid>).
var guidKey = regexp.MustCompile(`\([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\)`)

// opKind names what one request does: a read by primary id, by alternate
// key, a query of child rows, a grouped (In) query, another query, a
// write or a bulk message.
func opKind(method, target string) string {
	u, err := url.Parse(target)
	if err != nil {
		return strings.ToLower(method) + " (unparsed)"
	}
	path := u.Path
	if i := strings.LastIndex(path, "/"); i >= 0 {
		path = path[i+1:]
	}
	set, _, _ := strings.Cut(path, "(")
	filter := u.Query().Get("$filter")
	switch method {
	case http.MethodGet:
		switch {
		case guidKey.MatchString(path):
			return "read by primary id, " + set
		case strings.Contains(path, "("):
			return "read by alternate key, " + set
		case strings.Contains(filter, "Microsoft.Dynamics.CRM.In("):
			return "In query, " + set
		case strings.HasPrefix(filter, "_") && strings.Contains(filter, "_value eq "):
			return "child-row query, " + set
		case strings.Contains(target, "deltatoken"):
			return "change-tracking page, " + set
		case strings.HasPrefix(path, "EntityDefinitions") || strings.HasPrefix(path, "$metadata"):
			return "metadata"
		}
		return "other query, " + set
	case http.MethodPost:
		if strings.HasSuffix(path, "Multiple") {
			parts := strings.Split(strings.TrimSuffix(u.Path, "/"+path), "/")
			return path[strings.LastIndex(path, ".")+1:] + ", " + parts[len(parts)-1]
		}
		return "create, " + set
	case http.MethodPatch:
		return "upsert or update, " + set
	case http.MethodDelete:
		return "delete, " + set
	}
	return strings.ToLower(method) + ", " + set
}

// kindsPerRecord is the counts between two snapshots per record.
func kindsPerRecord(before, after map[string]int64, records int) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			out[k] = float64(d) / float64(max(records, 1))
		}
	}
	return out
}
