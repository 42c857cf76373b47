package crmserver

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"time"

	"github.com/google/uuid"
)

// MaxBatchRequests is the Dataverse limit on requests in one $batch.
const MaxBatchRequests = 1000

type batchOp struct {
	contentID string
	req       *request
}

type batchItem struct {
	changeSet bool
	ops       []batchOp
}

// serveBatch executes a multipart/mixed $batch, as Microsoft documents
// it ("Execute batch operations using the Web API", Handling errors):
// requests run in order; a change set is atomic, stops at its first failed
// request and is answered with that request's answer alone, under its
// Content-ID, inside the change set's multipart (as Dataverse answers;
// MicrosoftDocs/powerapps-docs issue 2843). Without
// Prefer: odata.continue-on-error the batch stops at the first failure and
// is answered with the failing request's status, the answers so far and
// the failed one; with it, the batch goes on to the next item and is
// answered 200 with every answer, failures included. The preference never
// applies inside a change set.
func (s *Server) serveBatch(c *call, req *request) response {
	items, err := parseBatch(req.header.Get("Content-Type"), req.body)
	if err != nil {
		return errBadRequest("0x80048d19", "The batch request is malformed: "+err.Error()).response()
	}
	total := 0
	for _, it := range items {
		total += len(it.ops)
	}
	if total > MaxBatchRequests {
		return errBadRequest("0x8005f103", fmt.Sprintf("The number of requests in the batch (%d) exceeds the limit of %d.", total, MaxBatchRequests)).response()
	}
	tk, e := s.admit(c.initiating)
	if e != nil {
		return e.response()
	}
	// Every operation that ran is charged, the failed one included; those
	// after a stop are not.
	lim := s.Limits()
	ops, spent := 0, time.Duration(0)
	charge := func(r *request, resp response) {
		n, d := costOf(lim, r, resp)
		ops, spent = ops+n, spent+d
	}
	defer func() { tk.end(ops, spent) }()
	_, continueOnError := prefer(req.header)["odata.continue-on-error"]
	status := http.StatusOK

	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	_ = mw.SetBoundary("batchresponse_" + uuid.NewString())
	for _, it := range items {
		if !it.changeSet {
			op := it.ops[0]
			resp := s.runOne(c, op.req)
			charge(op.req, resp)
			resp = withErrorAnnotations(req.header, op.req.header, resp)
			writePart(mw, op.contentID, resp)
			if resp.status >= 400 && !continueOnError {
				status = resp.status
				break
			}
			continue
		}
		cc := *c
		cc.contentIDs = map[string]string{}
		s.st.mu.Lock()
		t := &tx{s: s.st}
		var resps []response
		var failed *response
		failedID := ""
		for _, op := range it.ops {
			if op.req.method == http.MethodGet {
				r := errBadRequest("0x80048d19", "GET requests are not allowed inside a change set.").response()
				failed, failedID = &r, op.contentID
				break
			}
			resp := s.exec(&cc, op.req, t)
			charge(op.req, resp)
			if resp.status >= 400 {
				failed, failedID = &resp, op.contentID
				break
			}
			if op.contentID != "" {
				if loc := resp.header.Get("OData-EntityId"); loc != "" {
					cc.contentIDs["$"+op.contentID] = strings.TrimPrefix(loc, c.base)
				}
			}
			resps = append(resps, resp)
		}
		if failed != nil {
			t.rollback()
		}
		events := t.events
		s.st.mu.Unlock()
		if failed != nil {
			var cs bytes.Buffer
			cw := multipart.NewWriter(&cs)
			_ = cw.SetBoundary("changesetresponse_" + uuid.NewString())
			writePart(cw, failedID, withErrorAnnotations(req.header, nil, *failed))
			_ = cw.Close()
			h := textproto.MIMEHeader{}
			h.Set("Content-Type", "multipart/mixed; boundary="+cw.Boundary())
			pw, _ := mw.CreatePart(h)
			_, _ = pw.Write(cs.Bytes())
			if !continueOnError {
				status = failed.status
				break
			}
			continue
		}
		s.publish(c.ctx, events)
		var cs bytes.Buffer
		cw := multipart.NewWriter(&cs)
		_ = cw.SetBoundary("changesetresponse_" + uuid.NewString())
		for i, resp := range resps {
			writePart(cw, it.ops[i].contentID, resp)
		}
		_ = cw.Close()
		h := textproto.MIMEHeader{}
		h.Set("Content-Type", "multipart/mixed; boundary="+cw.Boundary())
		pw, _ := mw.CreatePart(h)
		_, _ = pw.Write(cs.Bytes())
	}
	_ = mw.Close()
	h := newHeader()
	h.Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
	return response{status: status, header: h, body: body.Bytes()}
}

// Error annotations Dataverse adds to its error JSON when the request
// prefers them (Prefer: odata.include-annotations="*" or a list naming
// them; "Compose HTTP requests and handle errors", Include more details
// with errors). OperationStatus, SubErrorCode and TraceText come from
// plug-ins, which the sandbox does not run, so only these two are written.
const (
	annotationHelpLink     = "Microsoft.PowerApps.CDS.HelpLink"
	annotationInnerMessage = "Microsoft.PowerApps.CDS.InnerError.Message"
)

// withErrorAnnotations adds the documented error annotations a request
// asked for to an error answer; other answers pass unchanged. The
// preference is read from the request's own headers, then from the
// enclosing batch's.
func withErrorAnnotations(outer, own http.Header, resp response) response {
	if resp.status < 400 || len(resp.body) == 0 {
		return resp
	}
	want := includeAnnotations(own)
	if want == "" {
		want = includeAnnotations(outer)
	}
	if want == "" {
		return resp
	}
	var env struct {
		Error map[string]any `json:"error"`
	}
	if json.Unmarshal(resp.body, &env) != nil || env.Error == nil {
		return resp
	}
	added := false
	if annotationWanted(want, annotationHelpLink) {
		code, _ := env.Error["code"].(string)
		env.Error["@"+annotationHelpLink] = "http://go.microsoft.com/fwlink/?LinkID=398563&error=Microsoft.Crm.CrmException%3a" +
			strings.TrimPrefix(code, "0x") + "&client=platform"
		added = true
	}
	if annotationWanted(want, annotationInnerMessage) {
		env.Error["@"+annotationInnerMessage] = env.Error["message"]
		added = true
	}
	if !added {
		return resp
	}
	b, err := json.Marshal(env)
	if err != nil {
		return resp
	}
	resp.body = b
	return resp
}

// includeAnnotations returns the value of the odata.include-annotations
// preference, reading quoted values whole (the list inside the quotes is
// itself comma-separated).
func includeAnnotations(h http.Header) string {
	const key = "odata.include-annotations="
	for _, line := range h.Values("Prefer") {
		i := strings.Index(strings.ToLower(line), key)
		if i < 0 {
			continue
		}
		v := strings.TrimSpace(line[i+len(key):])
		if rest, ok := strings.CutPrefix(v, `"`); ok {
			v, _, _ = strings.Cut(rest, `"`)
			return v
		}
		v, _, _ = strings.Cut(v, ",")
		return strings.TrimSpace(v)
	}
	return ""
}

// annotationWanted matches an annotation name against the comma-separated
// names of odata.include-annotations, where "*" and a trailing "*" are
// wildcards.
func annotationWanted(list, name string) bool {
	for _, p := range strings.Split(list, ",") {
		p = strings.Trim(strings.TrimSpace(p), `"`)
		switch {
		case p == "*" || p == name:
			return true
		case strings.HasSuffix(p, "*") && strings.HasPrefix(name, strings.TrimSuffix(p, "*")):
			return true
		}
	}
	return false
}

func writePart(mw *multipart.Writer, contentID string, resp response) {
	h := textproto.MIMEHeader{}
	h.Set("Content-Type", "application/http")
	h.Set("Content-Transfer-Encoding", "binary")
	if contentID != "" {
		h.Set("Content-ID", contentID)
	}
	pw, _ := mw.CreatePart(h)
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", resp.status, http.StatusText(resp.status))
	_ = resp.header.Write(&b)
	b.WriteString("\r\n")
	b.Write(resp.body)
	_, _ = pw.Write(b.Bytes())
}

func parseBatch(contentType string, body []byte) ([]batchItem, error) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/mixed" || params["boundary"] == "" {
		return nil, fmt.Errorf("Content-Type must be multipart/mixed with a boundary")
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	var items []batchItem
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		pmt, pparams, err := mime.ParseMediaType(p.Header.Get("Content-Type"))
		if err != nil {
			return nil, fmt.Errorf("part without a valid Content-Type")
		}
		switch pmt {
		case "application/http":
			op, err := parseOp(p)
			if err != nil {
				return nil, err
			}
			items = append(items, batchItem{ops: []batchOp{op}})
		case "multipart/mixed":
			cr := multipart.NewReader(p, pparams["boundary"])
			it := batchItem{changeSet: true}
			for {
				cp, err := cr.NextPart()
				if err == io.EOF {
					break
				}
				if err != nil {
					return nil, err
				}
				op, err := parseOp(cp)
				if err != nil {
					return nil, err
				}
				it.ops = append(it.ops, op)
			}
			items = append(items, it)
		default:
			return nil, fmt.Errorf("unsupported part type %q", pmt)
		}
	}
	return items, nil
}

// parseOp reads an application/http part: a request line, headers and a body.
func parseOp(p *multipart.Part) (batchOp, error) {
	op := batchOp{contentID: p.Header.Get("Content-ID")}
	br := bufio.NewReader(io.LimitReader(p, 16<<20))
	tr := textproto.NewReader(br)
	line, err := tr.ReadLine()
	for err == nil && strings.TrimSpace(line) == "" {
		line, err = tr.ReadLine()
	}
	if err != nil {
		return op, fmt.Errorf("part without a request line")
	}
	f := strings.Fields(line)
	if len(f) != 3 || !strings.HasPrefix(f[2], "HTTP/") {
		return op, fmt.Errorf("malformed request line")
	}
	hdr, err := tr.ReadMIMEHeader()
	if err != nil && err != io.EOF {
		return op, fmt.Errorf("malformed part headers")
	}
	rest, _ := io.ReadAll(br)
	target := f[1]
	if i := strings.Index(target, APIPath); i >= 0 {
		target = target[i+len(APIPath):]
	}
	target = strings.TrimPrefix(target, "/")
	u, err := url.Parse(target)
	if err != nil {
		return op, fmt.Errorf("malformed request URL")
	}
	if op.contentID == "" {
		op.contentID = hdr.Get("Content-ID")
	}
	op.req = &request{method: f[0], path: u.Path, query: u.Query(), header: http.Header(hdr),
		body: bytes.TrimRight(rest, "\r\n")}
	return op, nil
}
