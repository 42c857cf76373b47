package fhir

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/fhirsync/fhirsync/queues"
)

// RestHookConfig configures the rest-hook notification endpoint.
type RestHookConfig struct {
	// Queue receives the notices. Required.
	Queue sender
	// Authorization, when set, is the exact Authorization header value the
	// FHIR server sends (Subscription.channel.header); other requests get
	// 401.
	Authorization string
	// Ping is called for notifications that name no resource (an empty
	// body on the endpoint itself, a Subscription or SubscriptionStatus),
	// typically Poller.Trigger so the history poll runs early.
	Ping func()
	// MaxBodyBytes bounds a notification; default 4 MiB.
	MaxBodyBytes int64
	// Logger receives refusals (with references, never content); default
	// discards.
	Logger *slog.Logger
}

// NewRestHook returns the http.Handler for FHIR R4 rest-hook subscription
// notifications. It accepts POST or PUT to the endpoint itself or to
// endpoint/Type/id, with an empty body (id-only), the changed resource
// (full-resource payload), or a Bundle of changes, and answers 200 once the
// notices are queued, 503 when the queue fails (so the server retries), and
// 4xx for what it cannot use.
func NewRestHook(cfg RestHookConfig) (http.Handler, error) {
	if cfg.Queue == nil {
		return nil, errors.New("rest-hook endpoint: a queue is required")
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 4 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &restHook{cfg: cfg}, nil
}

type restHook struct{ cfg RestHookConfig }

// pingTypes are payloads that say "something matched" without naming it.
var pingTypes = map[string]bool{"Subscription": true, "SubscriptionStatus": true, "Parameters": true}

func (h *restHook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost && r.Method != http.MethodPut {
		w.Header().Set("Allow", "POST, PUT")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if h.cfg.Authorization != "" &&
		subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(h.cfg.Authorization)) != 1 {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, h.cfg.MaxBodyBytes+1))
	if err != nil {
		http.Error(w, "reading the body failed", http.StatusBadRequest)
		return
	}
	if int64(len(body)) > h.cfg.MaxBodyBytes {
		http.Error(w, "notification too large", http.StatusRequestEntityTooLarge)
		return
	}
	notices, ping, status, msg := h.decode(r, body)
	if status != 0 {
		h.cfg.Logger.Warn("rest-hook notification refused", "status", status, "reason", msg)
		http.Error(w, msg, status)
		return
	}
	if len(notices) > 0 {
		msgs := make([]queues.Message, 0, len(notices))
		for _, n := range notices {
			m, err := n.Message()
			if err != nil {
				http.Error(w, "notification names an invalid record", http.StatusBadRequest)
				return
			}
			msgs = append(msgs, m)
		}
		if err := h.cfg.Queue.Send(r.Context(), msgs...); err != nil {
			h.cfg.Logger.Error("rest-hook notices not queued", "count", len(msgs), "err", err)
			http.Error(w, "queue unavailable", http.StatusServiceUnavailable)
			return
		}
	}
	if ping && h.cfg.Ping != nil {
		h.cfg.Ping()
	}
	w.WriteHeader(http.StatusOK)
}

// decode works out which records a notification names. A non-zero status
// refuses it with msg.
func (h *restHook) decode(r *http.Request, body []byte) (ns []queues.Notice, ping bool, status int, msg string) {
	now := time.Now().UTC()
	notice := func(typ, id, version string, ev queues.Event) queues.Notice {
		return queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Type: typ, ID: id, Version: version,
			Event: ev, Origin: "rest-hook", ChangedAt: now}
	}
	pathType, pathID, _ := parseRef(r.URL.Path)
	if len(bytes.TrimSpace(body)) == 0 {
		if pathID != "" {
			return []queues.Notice{notice(pathType, pathID, "", queues.EventChanged)}, false, 0, ""
		}
		return nil, true, 0, ""
	}
	if !isJSONType(r.Header.Get("Content-Type")) {
		return nil, false, http.StatusUnsupportedMediaType, "notifications must be FHIR JSON"
	}
	res, err := decodeResource(body)
	if err != nil {
		return nil, false, http.StatusBadRequest, "body is not a FHIR resource: " + err.Error()
	}
	switch {
	case pingTypes[res.Type()]:
		return nil, true, 0, ""
	case res.Type() == "Bundle":
		p, err := parsePage("rest-hook", res)
		if err != nil {
			return nil, false, http.StatusBadRequest, "malformed Bundle"
		}
		for _, e := range p.Entries {
			if e.Resource != nil && pingTypes[e.Resource.Type()] {
				continue
			}
			typ, id, v := e.Ref()
			if id == "" {
				continue
			}
			ev := queues.EventChanged
			if e.Deleted() {
				ev = queues.EventDeleted
			}
			n := notice(typ, id, v, ev)
			if e.Resource != nil {
				if lu := e.Resource.LastUpdated(); !lu.IsZero() {
					n.ChangedAt = lu.UTC()
				}
			}
			ns = append(ns, n)
		}
		return ns, len(ns) == 0, 0, ""
	case res.Type() == "OperationOutcome":
		return nil, false, http.StatusBadRequest, "an OperationOutcome is not a notification"
	}
	if !isID(res.ID()) {
		return nil, false, http.StatusBadRequest, "the resource has no valid id"
	}
	if pathID != "" && (pathType != res.Type() || pathID != res.ID()) {
		return nil, false, http.StatusBadRequest, fmt.Sprintf("the URL names %s/%s but the body is %s", pathType, pathID, res.Ref())
	}
	n := notice(res.Type(), res.ID(), res.VersionID(), queues.EventChanged)
	if lu := res.LastUpdated(); !lu.IsZero() {
		n.ChangedAt = lu.UTC()
	}
	if m, ok := res["meta"].(map[string]any); ok {
		n.Initiator, _ = m["source"].(string)
	}
	return []queues.Notice{n}, false, 0, ""
}
