package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
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
	// Body and Properties are filled only for holders of the PHI permission.
	Body       string            `json:"body,omitempty"`
	Properties map[string]string `json:"properties,omitempty"`
}

// Key names the dead letter in forms: queue:sequence.
func (d deadLetterView) Key() string { return fmt.Sprintf("%s:%d", d.Queue, d.SequenceNumber) }

func viewOf(queue string, d queues.DeadLetter) deadLetterView {
	return deadLetterView{Queue: queue, SequenceNumber: d.SequenceNumber, MessageID: d.ID, EnqueuedAt: d.EnqueuedAt,
		DeliveryCount: d.DeliveryCount, RedriveCount: d.RedriveCount, Reason: d.Reason, Description: d.Description}
}

// deadLetterGroup is the dead letters sharing one reason.
type deadLetterGroup struct {
	Reason  string           `json:"reason"`
	Count   int              `json:"count"`
	Letters []deadLetterView `json:"dead_letters"`
}

// deadLetters reads up to deadLetterLimit dead letters per queue, grouped
// by reason (largest group first). truncated names queues with more.
func (a *app) deadLetters(ctx context.Context) (groups []deadLetterGroup, truncated []string, err error) {
	byReason := map[string]*deadLetterGroup{}
	for _, name := range a.data.queueNames {
		q := a.data.queues[name]
		var after int64
		read := 0
		for read < deadLetterLimit {
			batch, err := q.PeekDeadLetters(ctx, after, min(200, deadLetterLimit-read))
			if err != nil {
				return nil, nil, fmt.Errorf("listing dead letters of %s: %w", name, err)
			}
			for _, d := range batch {
				g := byReason[d.Reason]
				if g == nil {
					g = &deadLetterGroup{Reason: d.Reason}
					byReason[d.Reason] = g
				}
				g.Letters = append(g.Letters, viewOf(name, d))
				g.Count++
				after = d.SequenceNumber
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
}

func (a *app) deadLettersPage(w http.ResponseWriter, r *http.Request) {
	groups, truncated, err := a.deadLetters(r.Context())
	if err != nil {
		a.serverError(w, r, "listing dead letters", err)
		return
	}
	u, _ := currentUser(r)
	d := deadLettersData{Groups: groups, Truncated: truncated, CanRedrive: u.can(permDLRedrive)}
	for _, g := range groups {
		d.Total += g.Count
	}
	q := r.URL.Query()
	if q.Get("ok") == "redriven" {
		d.Notice = fmt.Sprintf("%s message(s) sent back to their queue.", q.Get("n"))
		if held := q.Get("held"); held != "" && held != "0" {
			d.Error = fmt.Sprintf("%s message(s) were held back: they reached the redrive limit of %d, which usually means a loop. Inspect them before going further.", held, maxRedrives)
		}
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
}

// confirmRedrive shows how many dead letters a redrive would send back,
// before anything happens.
func (a *app) confirmRedrive(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		a.renderError(w, r, http.StatusBadRequest, "The form could not be read.")
		return
	}
	keys := r.PostForm["sel"]
	sel, n, err := a.selection(keys)
	if err != nil || n == 0 {
		a.renderError(w, r, http.StatusBadRequest, "Select at least one dead letter to redrive.")
		return
	}
	var clean []string
	for _, name := range a.data.queueNames {
		for _, seq := range sel[name] {
			clean = append(clean, fmt.Sprintf("%s:%d", name, seq))
		}
	}
	a.render(w, r, http.StatusOK, "redrive_confirm", "Confirm redrive", redriveConfirmData{Keys: clean, Count: n})
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

func (a *app) apiDeadLetters(w http.ResponseWriter, r *http.Request) {
	groups, truncated, err := a.deadLetters(r.Context())
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
