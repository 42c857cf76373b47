package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fhirsync/fhirsync/queues"
)

// deadLetterLimit bounds how many dead letters per queue the list reads.
const deadLetterLimit = 1000

// deadLetterView is a dead letter's metadata: what every role may see.
type deadLetterView struct {
	Queue          string    `json:"queue"`
	SequenceNumber int64     `json:"sequence_number"`
	MessageID      string    `json:"message_id"`
	EnqueuedAt     time.Time `json:"enqueued_at"`
	DeliveryCount  int       `json:"delivery_count"`
	RedriveCount   int       `json:"redrive_count"`
	Reason         string    `json:"reason"`
	Description    string    `json:"description,omitempty"`
	// Record names the notice's record (side:Type/id), or is empty when
	// the body is not a fhirsync notice. Ids only, never content.
	Record string `json:"record,omitempty"`
	// Body and Properties are filled only for holders of the PHI permission.
	Body       string            `json:"body,omitempty"`
	Properties map[string]string `json:"properties,omitempty"`
}

// Key names the dead letter in forms: queue:sequence.
func (d deadLetterView) Key() string { return fmt.Sprintf("%s:%d", d.Queue, d.SequenceNumber) }

func viewOf(queue string, d queues.DeadLetter) deadLetterView {
	v := deadLetterView{Queue: queue, SequenceNumber: d.SequenceNumber, MessageID: d.ID, EnqueuedAt: d.EnqueuedAt,
		DeliveryCount: d.DeliveryCount, RedriveCount: d.RedriveCount, Reason: d.Reason, Description: d.Description}
	if n, err := queues.DecodeNotice(d.Body); err == nil {
		v.Record = n.Ref()
	}
	return v
}

// deadLetterFilter narrows the dead-letter list; the zero value lists all.
type deadLetterFilter struct {
	Queue  string // a queue name, exactly
	Reason string // the dead-letter reason, exactly
	// Record matches the notice's record reference (side:Type/id) by
	// case-insensitive substring: "Patient/12", "contact".
	Record string
	// From and To bound the time the message was enqueued, as typed.
	From, To string

	from, to time.Time
}

// readDeadLetterFilter reads the filter from form or query values.
func readDeadLetterFilter(v url.Values) (deadLetterFilter, error) {
	f := deadLetterFilter{Queue: strings.TrimSpace(v.Get("queue")), Reason: strings.TrimSpace(v.Get("reason")),
		Record: strings.TrimSpace(v.Get("record")), From: strings.TrimSpace(v.Get("from")), To: strings.TrimSpace(v.Get("to"))}
	var errs []error
	var err error
	if f.From != "" {
		if f.from, err = parseTime(f.From); err != nil {
			errs = append(errs, fmt.Errorf("From: %w", err))
		}
	}
	if f.To != "" {
		if f.to, err = parseTime(f.To); err != nil {
			errs = append(errs, fmt.Errorf("To: %w", err))
		}
	}
	return f, errors.Join(errs...)
}

// IsZero reports whether the filter lets every dead letter through.
func (f deadLetterFilter) IsZero() bool {
	return f.Queue == "" && f.Reason == "" && f.Record == "" && f.From == "" && f.To == ""
}

// values renders the filter for links and hidden fields.
func (f deadLetterFilter) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"queue": f.Queue, "reason": f.Reason, "record": f.Record, "from": f.From, "to": f.To} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

// Link is the list filtered by f, with extra name/value pairs.
func (f deadLetterFilter) Link(extra ...string) string {
	v := f.values()
	for i := 0; i+1 < len(extra); i += 2 {
		v.Set(extra[i], extra[i+1])
	}
	if len(v) == 0 {
		return "/deadletters"
	}
	return "/deadletters?" + v.Encode()
}

func (f deadLetterFilter) match(v deadLetterView) bool {
	switch {
	case f.Reason != "" && v.Reason != f.Reason:
		return false
	case f.Record != "" && !strings.Contains(strings.ToLower(v.Record), strings.ToLower(f.Record)):
		return false
	case !f.from.IsZero() && v.EnqueuedAt.Before(f.from):
		return false
	case !f.to.IsZero() && !v.EnqueuedAt.Before(f.to):
		return false
	}
	return true
}

// deadLetterGroup is the dead letters sharing one reason.
type deadLetterGroup struct {
	Reason  string           `json:"reason"`
	Count   int              `json:"count"`
	Letters []deadLetterView `json:"dead_letters"`
}

// deadLetters reads up to deadLetterLimit dead letters per queue, keeps
// those f matches, and groups them by reason (largest group first).
// truncated names queues with more.
func (a *app) deadLetters(ctx context.Context, f deadLetterFilter) (groups []deadLetterGroup, truncated []string, err error) {
	byReason := map[string]*deadLetterGroup{}
	for _, name := range a.data.queueNames {
		if f.Queue != "" && f.Queue != name {
			continue
		}
		q := a.data.queues[name]
		var after int64
		read := 0
		for read < deadLetterLimit {
			batch, err := q.PeekDeadLetters(ctx, after, min(200, deadLetterLimit-read))
			if err != nil {
				return nil, nil, fmt.Errorf("listing dead letters of %s: %w", name, err)
			}
			for _, d := range batch {
				after = d.SequenceNumber
				v := viewOf(name, d)
				if !f.match(v) {
					continue
				}
				g := byReason[d.Reason]
				if g == nil {
					g = &deadLetterGroup{Reason: d.Reason}
					byReason[d.Reason] = g
				}
				g.Letters = append(g.Letters, v)
				g.Count++
			}
			read += len(batch)
			if len(batch) == 0 {
				break
			}
		}
		if read >= deadLetterLimit {
			truncated = append(truncated, name)
		}
	}
	for _, g := range byReason {
		groups = append(groups, *g)
	}
	slices.SortFunc(groups, func(x, y deadLetterGroup) int {
		if x.Count != y.Count {
			return y.Count - x.Count
		}
		return strings.Compare(x.Reason, y.Reason)
	})
	return groups, truncated, nil
}

type deadLettersData struct {
	Groups     []deadLetterGroup
	Truncated  []string
	Total      int
	CanRedrive bool
	Notice     string
	Error      string
	Filter     deadLetterFilter
	Queues     []string
	// Reasons are the reasons of the dead letters the filter's queue
	// holds, for the reason filter.
	Reasons []string
}

func (a *app) deadLettersPage(w http.ResponseWriter, r *http.Request) {
	f, ferr := readDeadLetterFilter(r.URL.Query())
	groups, truncated, err := a.deadLetters(r.Context(), f)
	if err != nil {
		a.serverError(w, r, "listing dead letters", err)
		return
	}
	u, _ := currentUser(r)
	d := deadLettersData{Groups: groups, Truncated: truncated, CanRedrive: u.can(permDLRedrive), Filter: f, Queues: a.data.queueNames}
	for _, g := range groups {
		d.Total += g.Count
	}
	if all, _, err := a.deadLetters(r.Context(), deadLetterFilter{Queue: f.Queue}); err == nil {
		for _, g := range all {
			d.Reasons = append(d.Reasons, g.Reason)
		}
		slices.Sort(d.Reasons)
	}
	if ferr != nil {
		d.Error = ferr.Error()
	}
	q := r.URL.Query()
	switch q.Get("ok") {
	case "redriven":
		d.Notice = fmt.Sprintf("%s message(s) sent back to their queue.", q.Get("n"))
		if held := q.Get("held"); held != "" && held != "0" {
			d.Error = fmt.Sprintf("%s message(s) were held back: they reached the redrive limit of %d, which usually means a loop. Inspect them before going further.", held, maxRedrives)
		}
	case "discarded":
		d.Notice = fmt.Sprintf("%s message(s) discarded. The reason is in the audit trail.", q.Get("n"))
	}
	a.render(w, r, http.StatusOK, "deadletters", "Dead letters", d)
}

// findDeadLetter reads one dead letter by queue and sequence number.
func (a *app) findDeadLetter(ctx context.Context, queue, seqText string) (deadLetterView, queues.DeadLetter, error) {
	q, ok := a.data.queues[queue]
	seq, err := strconv.ParseInt(seqText, 10, 64)
	if !ok || err != nil || seq <= 0 {
		return deadLetterView{}, queues.DeadLetter{}, queues.ErrNotFound
	}
	batch, err := q.PeekDeadLetters(ctx, seq-1, 1)
	if err != nil {
		return deadLetterView{}, queues.DeadLetter{}, fmt.Errorf("reading dead letter %s:%d: %w", queue, seq, err)
	}
	if len(batch) == 0 || batch[0].SequenceNumber != seq {
		return deadLetterView{}, queues.DeadLetter{}, queues.ErrNotFound
	}
	return viewOf(queue, batch[0]), batch[0], nil
}

// loadDeadLetter reads the {queue}/{seq} dead letter, its body only for
// holders of the PHI permission (every such view is recorded), and says
// whether the body is shown. It answers 404 or 500 itself when it cannot.
func (a *app) loadDeadLetter(w http.ResponseWriter, r *http.Request) (v deadLetterView, shown, ok bool) {
	v, d, err := a.findDeadLetter(r.Context(), r.PathValue("queue"), r.PathValue("seq"))
	if errors.Is(err, queues.ErrNotFound) {
		a.renderError(w, r, http.StatusNotFound, "No such dead letter (it may have been redriven).")
		return v, false, false
	}
	if err != nil {
		a.serverError(w, r, "reading a dead letter", err)
		return v, false, false
	}
	u, _ := currentUser(r)
	if !u.can(permPHI) {
		return v, false, true
	}
	v.Body, v.Properties = prettyJSON(d.Body), d.Properties
	a.record(r, "deadletter.view", "dead_letter", v.Key(), "", "body shown")
	return v, true, true
}

type deadLetterData struct {
	D          deadLetterView
	Shown      bool
	CanRedrive bool
}

func (a *app) deadLetterPage(w http.ResponseWriter, r *http.Request) {
	v, shown, ok := a.loadDeadLetter(w, r)
	if !ok {
		return
	}
	u, _ := currentUser(r)
	a.render(w, r, http.StatusOK, "deadletter", fmt.Sprintf("Dead letter %s", v.Key()), deadLetterData{D: v, Shown: shown, CanRedrive: u.can(permDLRedrive)})
}

// selection parses "queue:seq" keys into sequence numbers per queue.
func (a *app) selection(keys []string) (map[string][]int64, int, error) {
	out := map[string][]int64{}
	n := 0
	for _, k := range keys {
		name, seqText, ok := strings.Cut(k, ":")
		seq, err := strconv.ParseInt(seqText, 10, 64)
		if _, known := a.data.queues[name]; !ok || err != nil || !known || seq <= 0 {
			return nil, 0, fmt.Errorf("%q does not name a dead letter", k)
		}
		if !slices.Contains(out[name], seq) {
			out[name] = append(out[name], seq)
			n++
		}
	}
	return out, n, nil
}

type redriveConfirmData struct {
	Keys  []string
	Count int
	// Action is "redrive" or "discard".
	Action string
	// Records are the first records of the selection, by id, to show
	// what is about to happen.
	Records []deadLetterView
	More    int
	Reason  string
	Problem string
}

// selectedKeys reads a bulk form: the "sel" keys ticked one by one, or,
// with all=1, every dead letter the form's filter matches (as listed).
func (a *app) selectedKeys(r *http.Request) ([]string, error) {
	if r.PostFormValue("all") != "1" {
		return r.PostForm["sel"], nil
	}
	f, err := readDeadLetterFilter(r.PostForm)
	if err != nil {
		return nil, err
	}
	groups, _, err := a.deadLetters(r.Context(), f)
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, g := range groups {
		for _, l := range g.Letters {
			keys = append(keys, l.Key())
		}
	}
	return keys, nil
}

// confirmRedrive shows what a redrive or a discard would do — how many
// dead letters, and which records — before anything happens. A discard
// asks for its reason here.
func (a *app) confirmRedrive(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		a.renderError(w, r, http.StatusBadRequest, "The form could not be read.")
		return
	}
	action := r.PostFormValue("action")
	if action == "" {
		action = "redrive"
	}
	if action != "redrive" && action != "discard" {
		a.renderError(w, r, http.StatusBadRequest, "Choose redrive or discard.")
		return
	}
	keys, err := a.selectedKeys(r)
	if err != nil {
		a.renderError(w, r, http.StatusBadRequest, "The filter could not be read: "+err.Error())
		return
	}
	sel, n, err := a.selection(keys)
	if err != nil || n == 0 {
		a.renderError(w, r, http.StatusBadRequest, "Select at least one dead letter to "+action+".")
		return
	}
	a.renderConfirm(w, r, http.StatusOK, sel, n, action, "", "")
}

// renderConfirm shows the confirmation of action on sel.
func (a *app) renderConfirm(w http.ResponseWriter, r *http.Request, status int, sel map[string][]int64, n int, action, reason, problem string) {
	d := redriveConfirmData{Count: n, Action: action, Reason: reason, Problem: problem}
	for _, name := range a.data.queueNames {
		for _, seq := range sel[name] {
			d.Keys = append(d.Keys, fmt.Sprintf("%s:%d", name, seq))
			if len(d.Records) < 20 {
				if v, _, err := a.findDeadLetter(r.Context(), name, strconv.FormatInt(seq, 10)); err == nil {
					d.Records = append(d.Records, v)
				}
			}
		}
	}
	d.More = n - len(d.Records)
	title := "Confirm redrive"
	if action == "discard" {
		title = "Confirm discard"
	}
	a.render(w, r, status, "redrive_confirm", title, d)
}

// redrive sends the selected dead letters back to their queues; count is
// what was sent back, held what the redrive limit kept.
func (a *app) redrive(r *http.Request, sel map[string][]int64) (count, held int, err error) {
	for _, name := range a.data.queueNames {
		seqs := sel[name]
		if len(seqs) == 0 {
			continue
		}
		n, rerr := a.data.queues[name].Redrive(r.Context(), seqs, maxRedrives)
		count += n
		if rerr != nil && !errors.Is(rerr, queues.ErrRedriveLimit) {
			return count, held, fmt.Errorf("redriving dead letters of %s: %w", name, rerr)
		}
		if rerr != nil {
			held += len(seqs) - n
		}
		a.record(r, "deadletter.redrive", "queue", name, fmt.Sprintf("%d selected", len(seqs)),
			fmt.Sprintf("%d redriven, %d held at the redrive limit; sequence numbers %s", n, len(seqs)-n, joinSeqs(seqs)))
	}
	return count, held, nil
}

func joinSeqs(seqs []int64) string {
	parts := make([]string, 0, len(seqs))
	for i, s := range seqs {
		if i == 50 {
			parts = append(parts, fmt.Sprintf("and %d more", len(seqs)-50))
			break
		}
		parts = append(parts, strconv.FormatInt(s, 10))
	}
	return strings.Join(parts, ",")
}

func (a *app) redrivePost(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		a.renderError(w, r, http.StatusBadRequest, "The form could not be read.")
		return
	}
	sel, n, err := a.selection(r.PostForm["sel"])
	if err != nil || n == 0 {
		a.renderError(w, r, http.StatusBadRequest, "Select at least one dead letter to redrive.")
		return
	}
	if r.PostFormValue("confirm") != "yes" {
		a.renderError(w, r, http.StatusBadRequest, "Confirm the redrive first.")
		return
	}
	count, held, err := a.redrive(r, sel)
	if err != nil {
		a.serverError(w, r, "redriving dead letters", err)
		return
	}
	http.Redirect(w, r, fmt.Sprintf("/deadletters?ok=redriven&n=%d&held=%d", count, held), http.StatusSeeOther)
}

// minDiscardReason is the shortest reason a discard accepts: a word or
// two that says why the messages are not wanted.
const minDiscardReason = 5

// discardPost deletes the selected dead letters for good, with the
// operator's written reason in the audit trail.
func (a *app) discardPost(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		a.renderError(w, r, http.StatusBadRequest, "The form could not be read.")
		return
	}
	sel, n, err := a.selection(r.PostForm["sel"])
	if err != nil || n == 0 {
		a.renderError(w, r, http.StatusBadRequest, "Select at least one dead letter to discard.")
		return
	}
	reason := strings.Join(strings.Fields(r.PostFormValue("reason")), " ")
	if len(reason) < minDiscardReason || len(reason) > 500 {
		a.renderConfirm(w, r, http.StatusBadRequest, sel, n, "discard", reason,
			fmt.Sprintf("Say why these messages are discarded (%d to 500 characters): the reason goes into the audit trail.", minDiscardReason))
		return
	}
	if r.PostFormValue("confirm") != "yes" {
		a.renderError(w, r, http.StatusBadRequest, "Confirm the discard first.")
		return
	}
	count := 0
	for _, name := range a.data.queueNames {
		seqs := sel[name]
		if len(seqs) == 0 {
			continue
		}
		k, derr := a.data.queues[name].Discard(r.Context(), seqs)
		count += k
		a.record(r, "deadletter.discard", "queue", name, fmt.Sprintf("%d selected; reason: %s", len(seqs), reason),
			fmt.Sprintf("%d discarded; sequence numbers %s", k, joinSeqs(seqs)))
		if derr != nil && !errors.Is(derr, queues.ErrNotFound) {
			a.serverError(w, r, "discarding dead letters", derr)
			return
		}
	}
	http.Redirect(w, r, fmt.Sprintf("/deadletters?ok=discarded&n=%d", count), http.StatusSeeOther)
}

func (a *app) apiDeadLetters(w http.ResponseWriter, r *http.Request) {
	f, err := readDeadLetterFilter(r.URL.Query())
	if err != nil {
		a.renderError(w, r, http.StatusBadRequest, err.Error())
		return
	}
	groups, truncated, err := a.deadLetters(r.Context(), f)
	if err != nil {
		a.serverError(w, r, "listing dead letters", err)
		return
	}
	if groups == nil {
		groups = []deadLetterGroup{}
	}
	if truncated == nil {
		truncated = []string{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"groups": groups, "truncated": truncated})
}

func (a *app) apiDeadLetter(w http.ResponseWriter, r *http.Request) {
	v, shown, ok := a.loadDeadLetter(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"dead_letter": v, "body_shown": shown})
}

// redriveRequest is the body of POST /api/v1/deadletters/redrive.
type redriveRequest struct {
	Queue           string  `json:"queue"`
	SequenceNumbers []int64 `json:"sequence_numbers"`
}

func (a *app) apiRedrive(w http.ResponseWriter, r *http.Request) {
	var req redriveRequest
	if !a.decodeJSON(w, r, &req) {
		return
	}
	if _, ok := a.data.queues[req.Queue]; !ok || len(req.SequenceNumbers) == 0 {
		a.renderError(w, r, http.StatusBadRequest, "Name a queue ("+strings.Join(a.data.queueNames, ", ")+") and at least one sequence number.")
		return
	}
	count, held, err := a.redrive(r, map[string][]int64{req.Queue: req.SequenceNumbers})
	if err != nil {
		a.serverError(w, r, "redriving dead letters", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"redriven": count, "held": held})
}

// discardRequest is the body of POST /api/v1/deadletters/discard.
type discardRequest struct {
	Queue           string  `json:"queue"`
	SequenceNumbers []int64 `json:"sequence_numbers"`
	Reason          string  `json:"reason"`
}

func (a *app) apiDiscard(w http.ResponseWriter, r *http.Request) {
	var req discardRequest
	if !a.decodeJSON(w, r, &req) {
		return
	}
	q, ok := a.data.queues[req.Queue]
	if !ok || len(req.SequenceNumbers) == 0 {
		a.renderError(w, r, http.StatusBadRequest, "Name a queue ("+strings.Join(a.data.queueNames, ", ")+") and at least one sequence number.")
		return
	}
	reason := strings.Join(strings.Fields(req.Reason), " ")
	if len(reason) < minDiscardReason || len(reason) > 500 {
		a.renderError(w, r, http.StatusBadRequest, fmt.Sprintf("Say why the messages are discarded: a reason of %d to 500 characters.", minDiscardReason))
		return
	}
	n, err := q.Discard(r.Context(), req.SequenceNumbers)
	a.record(r, "deadletter.discard", "queue", req.Queue, fmt.Sprintf("%d selected; reason: %s", len(req.SequenceNumbers), reason),
		fmt.Sprintf("%d discarded; sequence numbers %s", n, joinSeqs(req.SequenceNumbers)))
	if err != nil && !errors.Is(err, queues.ErrNotFound) {
		a.serverError(w, r, "discarding dead letters", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"discarded": n, "not_found": len(req.SequenceNumbers) - n})
}
