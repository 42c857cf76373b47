package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/fhirsync/fhirsync/maps"
)

// sampleFailure is one of a map set's own sample tests that fails.
type sampleFailure struct {
	Map    string `json:"map"`
	Sample string `json:"sample"`
	Detail string `json:"detail"`
}

// failingSamples runs the samples the entity maps of doc carry (the runner
// of `fhirsync maps test`) and lists those that fail, with the number run.
// A document that does not compile runs none: publishing refuses it with
// its problems anyway.
func failingSamples(ctx context.Context, doc *maps.Document) ([]sampleFailure, int) {
	set, err := maps.Compile(doc, maps.CompileOptions{})
	if err != nil {
		return nil, 0
	}
	res := maps.RunSamples(ctx, set)
	var out []sampleFailure
	for _, r := range res {
		if r.Passed() {
			continue
		}
		var why []string
		if r.ParseError != nil {
			why = append(why, "the sample cannot be read: "+r.ParseError.Error())
		}
		if r.EvalError != nil {
			why = append(why, "the engine failed: "+r.EvalError.Error())
		}
		why = append(why, r.Mismatches...)
		out = append(out, sampleFailure{Map: r.Map, Sample: r.Sample, Detail: strings.Join(why, "; ")})
	}
	return out, len(res)
}

// currentDoc is the published map set now current, or nil with none.
func (a *app) currentDoc(ctx context.Context) (*maps.Document, int, error) {
	vs, err := a.data.maps.Versions(ctx)
	if err != nil {
		return nil, 0, err
	}
	for _, v := range vs {
		if v.Current {
			doc, _, err := a.data.maps.Version(ctx, v.Number)
			return doc, v.Number, err
		}
	}
	return nil, 0, nil
}

// confirmData is the publish confirmation page: what changes against the
// current publication, the samples that fail, the note and the override.
type confirmData struct {
	Info       maps.VersionInfo
	Current    int
	Changes    []semChange
	Failures   []sampleFailure
	SampleRuns int
	Note       string
	Override   string
	Error      string
	Problems   []problemView
}

// publishConfirm shows what publishing draft {id} changes, asking for a
// note (and, when its samples fail, a reason to publish anyway).
func (a *app) publishConfirm(w http.ResponseWriter, r *http.Request) {
	a.renderPublishConfirm(w, r, http.StatusOK, func(d *confirmData) { d.Note = r.FormValue("note") })
}

func (a *app) renderPublishConfirm(w http.ResponseWriter, r *http.Request, status int, edit func(*confirmData)) {
	_, doc, info, ok := a.loadVersion(w, r)
	if !ok {
		return
	}
	if info.Status != maps.StatusDraft {
		a.renderError(w, r, http.StatusConflict, fmt.Sprintf("Version %d is not a draft; only drafts are published from here (roll back to publish an earlier version again).", info.Number))
		return
	}
	cur, curN, err := a.currentDoc(r.Context())
	if err != nil {
		a.serverError(w, r, "reading the current map set", err)
		return
	}
	d := confirmData{Info: info, Current: curN, Changes: semanticDiff(cur, doc)}
	d.Failures, d.SampleRuns = failingSamples(r.Context(), doc)
	if edit != nil {
		edit(&d)
	}
	a.render(w, r, status, "map_publish", fmt.Sprintf("Publish map set version %d", info.Number), d)
}

// discardDraft deletes a draft version and records it.
func (a *app) discardDraft(w http.ResponseWriter, r *http.Request) {
	n, _, info, ok := a.loadVersion(w, r)
	if !ok {
		return
	}
	if info.Status != maps.StatusDraft {
		a.renderError(w, r, http.StatusConflict, "Only drafts can be discarded; published versions stay in the history.")
		return
	}
	err := a.data.maps.DeleteDraft(r.Context(), n)
	switch {
	case errors.Is(err, maps.ErrNotFound):
		a.renderError(w, r, http.StatusNotFound, "No such map version.")
		return
	case errors.Is(err, maps.ErrImmutable):
		a.renderError(w, r, http.StatusConflict, "Only drafts can be discarded; published versions stay in the history.")
		return
	case err != nil:
		a.serverError(w, r, "discarding a draft", err)
		return
	}
	a.record(r, "map.discard", "map_version", strconv.Itoa(n), fmt.Sprintf("draft %d, checksum %s", n, info.Checksum), "discarded")
	http.Redirect(w, r, "/maps?ok=discarded", http.StatusSeeOther)
}
