package crm

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/fhirsync/fhirsync/queues"
)

// The request headers Dataverse sends with a webhook post (use-webhooks.md,
// "Header Data"). x-ms-dynamics-msg-size-exceeded is sent only when the
// payload passed 256 KB and Dataverse removed ParentContext,
// InputParameters, PreEntityImages and PostEntityImages.
const (
	headerOrganization     = "x-ms-dynamics-organization"
	headerEntityName       = "x-ms-dynamics-entity-name"
	headerRequestName      = "x-ms-dynamics-request-name"
	headerCorrelationID    = "x-ms-correlation-request-id"
	headerMsgSizeExceeded  = "x-ms-dynamics-msg-size-exceeded"
	webhookKeyQueryParam   = "code"
	defaultWebhookMaxBytes = 256 << 10
	maxWebhookPropertyLen  = 256
)

// The application properties a Dataverse Service Bus endpoint puts on every
// message, set from the matching webhook headers so a webhook post is
// queued as the same message a Service Bus endpoint would have posted.
const (
	propOrganization    = "http://schemas.microsoft.com/xrm/2011/Claims/Organization"
	propEntityName      = "http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName"
	propRequestName     = "http://schemas.microsoft.com/xrm/2011/Claims/RequestName"
	propMaxSizeExceeded = "MessageMaxSizeExceeded"
)

// WebhookConfig configures the Dataverse webhook receiver.
type WebhookConfig struct {
	// Queue receives each context, unchanged; it is the crm-changes queue
	// a Dataverse Service Bus endpoint posts to. Required.
	Queue sender
	// Header names the request header that carries Key (the webhook
	// registered with HttpHeader authentication). Empty means the key
	// comes as the "code" query parameter (WebhookKey authentication, or
	// HttpQueryString with the key name code).
	Header string
	// Key is the value Dataverse must send. Required: a webhook post
	// carries record data.
	Key string
	// MaxBodyBytes bounds a post; default 256 KiB, the message limit of
	// the embedded queue and of a Service Bus Standard queue. Dataverse
	// cuts a context down to stay under 256 KB.
	MaxBodyBytes int64
	// Logger receives refusals and queue failures (status, reason and
	// entity name, never record content); default discards.
	Logger *slog.Logger
}

// NewWebhook returns the http.Handler for a Dataverse webhook service
// endpoint. Dataverse POSTs the RemoteExecutionContext of each registered
// step as JSON, the same data it posts to a Service Bus endpoint; the
// handler checks the key, decodes the body to refuse what the agent could
// not read, and queues the body unchanged, so the agent handles it exactly
// as a context that came through Service Bus.
//
// Answers: 202 once the queue has accepted the context; 401 without the
// key; 405 for anything but POST; 413 above MaxBodyBytes or when the queue
// refuses the message as too large; 400 for a body that is not a
// RemoteExecutionContext; 503 when the queue fails. Dataverse treats any
// answer outside 2xx as a failure, and makes one more attempt after a 502,
// 503 or 504 only (use-webhooks.md, "Troubleshoot WebHook registrations"),
// so only the queue failure, which may pass, is a 503.
func NewWebhook(cfg WebhookConfig) (http.Handler, error) {
	if cfg.Queue == nil {
		return nil, errors.New("dataverse webhook: a queue is required")
	}
	if cfg.Key == "" {
		return nil, errors.New("dataverse webhook: a key is required")
	}
	if cfg.Header != "" && !validHeaderName(cfg.Header) {
		return nil, fmt.Errorf("dataverse webhook: %q is not a valid header name", cfg.Header)
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = defaultWebhookMaxBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &webhook{cfg: cfg}, nil
}

type webhook struct{ cfg WebhookConfig }

func (h *webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !h.authorized(r) {
		h.refuse(w, r, http.StatusUnauthorized, "unauthorized", "the webhook key is missing or wrong")
		return
	}
	if r.ContentLength > h.cfg.MaxBodyBytes {
		h.refuse(w, r, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the context exceeds %d bytes", h.cfg.MaxBodyBytes))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, h.cfg.MaxBodyBytes+1))
	if err != nil {
		h.refuse(w, r, http.StatusBadRequest, "unreadable", "reading the body failed")
		return
	}
	if int64(len(body)) > h.cfg.MaxBodyBytes {
		h.refuse(w, r, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the context exceeds %d bytes", h.cfg.MaxBodyBytes))
		return
	}
	x, err := DecodeRemoteExecutionContext(body)
	if err != nil {
		// The decoder words its errors with member names and JSON
		// positions, never values, so the text is safe to answer.
		h.refuse(w, r, http.StatusBadRequest, "invalid_context", "the body is not a RemoteExecutionContext: "+err.Error())
		return
	}
	// The session key is the one the record's notices use, so changes to
	// one record are delivered in order whichever feed reported them.
	key := queues.Notice{Side: queues.SideCRM, Type: x.PrimaryEntityName, ID: x.PrimaryEntityID}.SessionKey()
	msg := queues.Message{ID: webhookMessageID(x, body), SessionKey: key, Body: body, Properties: webhookProperties(r, x)}
	if err := h.cfg.Queue.Send(r.Context(), msg); err != nil {
		if errors.Is(err, queues.ErrTooLarge) {
			h.refuse(w, r, http.StatusRequestEntityTooLarge, "too_large", "the context exceeds the queue's message limit")
			return
		}
		h.cfg.Logger.Error("dataverse webhook context not queued", "entity", x.PrimaryEntityName,
			"message", x.MessageName, "err", err)
		http.Error(w, "queue unavailable", http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// authorized compares the configured key with the header or the code
// query parameter in constant time.
func (h *webhook) authorized(r *http.Request) bool {
	var got string
	if h.cfg.Header != "" {
		got = r.Header.Get(h.cfg.Header)
	} else {
		got = r.URL.Query().Get(webhookKeyQueryParam)
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(h.cfg.Key)) == 1
}

// refuse answers status with msg and logs the refusal with the entity name
// Dataverse put in its header (a table name, not record data).
func (h *webhook) refuse(w http.ResponseWriter, r *http.Request, status int, reason, msg string) {
	h.cfg.Logger.Warn("dataverse webhook post refused", "status", status, "reason", reason,
		"entity", clip(r.Header.Get(headerEntityName)))
	http.Error(w, msg, status)
}

// webhookMessageID names the context for duplicate detection. Dataverse
// sends no documented request id, and the context's own ids cannot tell
// changes apart on their own: RequestId is null in Microsoft's sample,
// and CorrelationId with Depth is shared by every record one request
// touches (a cascade, an ExecuteMultiple). A hash of the body can: a
// repeated post of the same context carries the same bytes, and two
// changes differ at least in OperationId, OperationCreatedOn or their
// parameters. A change that is queued twice all the same is harmless: the
// agent re-reads the record before it maps. The ID leaves out the entity
// name (it is in the properties and the session key) to stay within
// Service Bus's 128-character MessageId whatever the table is called.
func webhookMessageID(x *ExecutionContext, body []byte) string {
	sum := sha256.Sum256(body)
	return "crm-webhook:" + x.PrimaryEntityID + ":" + hex.EncodeToString(sum[:16])
}

// webhookProperties carries the Dataverse headers over as the application
// properties a Service Bus endpoint sets.
func webhookProperties(r *http.Request, x *ExecutionContext) map[string]string {
	p := map[string]string{
		propEntityName:  x.PrimaryEntityName,
		propRequestName: x.MessageName,
		"origin":        "dataverse-webhook",
	}
	if org := clip(r.Header.Get(headerOrganization)); org != "" {
		p[propOrganization] = org
	}
	if r.Header.Get(headerMsgSizeExceeded) != "" {
		p[propMaxSizeExceeded] = "true"
	}
	return p
}

// clip bounds a header value copied into a property or a log line.
func clip(s string) string {
	if len(s) > maxWebhookPropertyLen {
		return s[:maxWebhookPropertyLen]
	}
	return s
}

// validHeaderName reports whether s is an HTTP header field name (an RFC
// 9110 token).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c >= 0x7f || c <= ' ' || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}
