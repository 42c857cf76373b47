package crmserver

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"

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

// serveBatch executes a multipart/mixed $batch. Change sets are atomic;
// without Prefer: odata.continue-on-error processing stops at the first
// failure.
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
	release, e := s.admit(c.initiating, max(total, 1))
	if e != nil {
		return e.response()
	}
	defer release()
	_, continueOnError := prefer(req.header)["odata.continue-on-error"]

	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	_ = mw.SetBoundary("batchresponse_" + uuid.NewString())
	for _, it := range items {
		if !it.changeSet {
			op := it.ops[0]
			resp := s.runOne(c, op.req)
			writePart(mw, op.contentID, resp)
			if resp.status >= 400 && !continueOnError {
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
			writePart(mw, failedID, *failed)
			if !continueOnError {
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
	return response{status: http.StatusOK, header: h, body: body.Bytes()}
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
