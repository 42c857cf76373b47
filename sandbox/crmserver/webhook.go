package crmserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/fhirsync/fhirsync/queues"
)

// WebhookTarget is a webhook service endpoint (a serviceendpoint of
// contract 8): the emulation POSTs each RemoteExecutionContext it builds
// for the Service Bus endpoint, the same bytes, to URL with the headers
// use-webhooks.md documents.
type WebhookTarget struct {
	// URL receives the posts; empty turns the webhook off.
	URL string
	// Header and Key are the authentication: with Header set, HttpHeader
	// (a request header Header: Key); with Header empty and Key set,
	// WebhookKey (the query parameter code=Key).
	Header, Key string
	// Organization is the x-ms-dynamics-organization value, "the domain
	// name of the environment"; empty means "sandbox".
	Organization string
	// Client posts; nil means a client with Dataverse's 60-second timeout.
	Client *http.Client
}

// webhookPoster is the sender that posts to a WebhookTarget.
type webhookPoster struct {
	t   WebhookTarget
	url string
}

func newWebhookPoster(t WebhookTarget) (*webhookPoster, error) {
	u, err := url.Parse(t.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("webhook URL %q is not an http(s) URL", t.URL)
	}
	if t.Header == "" && t.Key != "" {
		q := u.Query()
		q.Set("code", t.Key)
		u.RawQuery = q.Encode()
	}
	if t.Organization == "" {
		t.Organization = "sandbox"
	}
	if t.Client == nil {
		t.Client = &http.Client{Timeout: 60 * time.Second}
	}
	return &webhookPoster{t: t, url: u.String()}, nil
}

// Send posts each message in turn and stops at the first failure. The
// headers come from the application properties the endpoint sets on the
// Service Bus message and from the context's CorrelationId. As Dataverse
// does, a 502, 503 or 504 is attempted once more; any other answer outside
// 2xx is a failure.
func (p *webhookPoster) Send(ctx context.Context, msgs ...queues.Message) error {
	for _, m := range msgs {
		var err error
		for attempt := 0; attempt < 2; attempt++ {
			var retry bool
			if retry, err = p.post(ctx, m); !retry {
				break
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (p *webhookPoster) post(ctx context.Context, m queues.Message) (retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(m.Body))
	if err != nil {
		return false, fmt.Errorf("posting to the webhook: %w", err)
	}
	h := req.Header
	h.Set("Content-Type", "application/json")
	h.Set("x-ms-dynamics-organization", p.t.Organization)
	h.Set("x-ms-dynamics-entity-name", m.Properties[propEntityLogicalName])
	h.Set("x-ms-dynamics-request-name", m.Properties[propRequestName])
	var corr struct {
		CorrelationID string `json:"CorrelationId"`
	}
	if json.Unmarshal(m.Body, &corr) == nil && corr.CorrelationID != "" {
		h.Set("x-ms-correlation-request-id", corr.CorrelationID)
	}
	if m.Properties[propMaxSizeExceeded] != "" {
		// The page says when the header is sent, not what it holds.
		h.Set("x-ms-dynamics-msg-size-exceeded", "true")
	}
	if p.t.Header != "" {
		h.Set(p.t.Header, p.t.Key)
	}
	resp, err := p.t.Client.Do(req)
	if err != nil {
		// No answer within the timeout is a failure, not retried.
		return false, fmt.Errorf("posting to the webhook: %w", err)
	}
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return false, nil
	case resp.StatusCode == http.StatusBadGateway, resp.StatusCode == http.StatusServiceUnavailable, resp.StatusCode == http.StatusGatewayTimeout:
		return true, fmt.Errorf("the webhook answered %d", resp.StatusCode)
	}
	return false, fmt.Errorf("the webhook answered %d", resp.StatusCode)
}

// fanOut posts to every service endpoint and joins their errors.
type fanOut []sender

func (f fanOut) Send(ctx context.Context, msgs ...queues.Message) error {
	var errs []error
	for _, s := range f {
		if err := s.Send(ctx, msgs...); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// withWebhook adds the webhook to the service endpoint of opts.
func withWebhook(opts Options) (Options, error) {
	if opts.Webhook.URL == "" {
		return opts, nil
	}
	p, err := newWebhookPoster(opts.Webhook)
	if err != nil {
		return opts, fmt.Errorf("crmserver: %w", err)
	}
	if opts.Endpoint == nil {
		opts.Endpoint = p
	} else {
		opts.Endpoint = fanOut{opts.Endpoint, p}
	}
	return opts, nil
}
