package servicebus

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"go.opentelemetry.io/otel/trace"
)

// Credential names how the adapter authenticates when Config.Namespace is
// used instead of a connection string.
type Credential string

const (
	// CredentialDefault uses azidentity's DefaultAzureCredential chain
	// (environment, workload identity, managed identity, Azure CLI, ...).
	CredentialDefault Credential = "default"
	// CredentialManagedIdentity uses a managed identity; ClientID selects a
	// user-assigned identity, empty means the system-assigned one.
	CredentialManagedIdentity Credential = "managed-identity"
	// CredentialClientSecret uses an Entra ID application's client secret
	// (TenantID, ClientID and ClientSecret are required).
	CredentialClientSecret Credential = "client-secret"
)

// StandardMaxMessageBytes is the Service Bus Standard tier message limit.
const StandardMaxMessageBytes = 256 << 10

// Config says how to reach one Service Bus namespace. Set either
// ConnectionString or Namespace (with a Credential).
type Config struct {
	// ConnectionString is a SAS connection string. A string with
	// UseDevelopmentEmulator=true connects over plain TCP (the emulator or
	// the fake in fakesb).
	ConnectionString string
	// Namespace is the fully qualified namespace, e.g.
	// "contoso.servicebus.windows.net", used with Credential.
	Namespace string
	// Credential picks the azidentity credential for Namespace; empty
	// means CredentialDefault.
	Credential Credential
	// TenantID, ClientID and ClientSecret feed CredentialClientSecret;
	// ClientID also selects a user-assigned managed identity.
	TenantID     string
	ClientID     string
	ClientSecret string
	// TokenCredential, when set, is used for Namespace instead of building
	// one from Credential (for callers that already hold a credential).
	TokenCredential azcore.TokenCredential
	// ClientOptions are passed to the azservicebus client (TLS, a custom
	// WebSocket dialer, retries). Zero RetryOptions become 3 retries from
	// 200 ms to 2 s apart instead of the client's minute-long backoff.
	ClientOptions *azservicebus.ClientOptions

	// Sessions says the queue is session-enabled: every message is sent
	// with a SessionID (its SessionKey, or its ID when it has none) and
	// received through session receivers, which gives per-key order.
	Sessions bool
	// MaxMessageBytes is the per-message limit checked before sending;
	// zero means StandardMaxMessageBytes (Premium allows up to 100 MB).
	MaxMessageBytes int
	// MaxDeliveryCount must match the queue's setting; the adapter uses it
	// for retries it schedules itself (Abandon with a delay), whose
	// deliveries Service Bus cannot count. Zero means 10, the default.
	MaxDeliveryCount int
	// AutoRenewFor bounds automatic lock renewal: while a received message
	// is unsettled its lock is renewed in the background for up to this long
	// after it was received. Zero means 5 minutes; negative turns automatic
	// renewal off (locks then lapse after the queue's lock duration).
	AutoRenewFor time.Duration
	// Tracer, when set, starts a "notice" span for each message sent and
	// carries its trace context in the message's application properties
	// (queues.TraceSend); nil: tracing off.
	Tracer trace.TracerProvider
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	switch {
	case c.ConnectionString != "" && c.Namespace != "":
		errs = append(errs, errors.New("set either a connection string or a namespace, not both"))
	case c.ConnectionString == "" && c.Namespace == "":
		errs = append(errs, errors.New("a connection string or a namespace is required"))
	}
	if c.Namespace != "" && strings.Contains(c.Namespace, "://") {
		errs = append(errs, fmt.Errorf("namespace %q must be a host name such as contoso.servicebus.windows.net, not a URL", c.Namespace))
	}
	if c.Namespace != "" && c.TokenCredential == nil {
		switch c.Credential {
		case "", CredentialDefault, CredentialManagedIdentity:
		case CredentialClientSecret:
			if c.TenantID == "" {
				errs = append(errs, errors.New("client-secret credential needs a tenant id"))
			}
			if c.ClientID == "" {
				errs = append(errs, errors.New("client-secret credential needs a client id"))
			}
			if c.ClientSecret == "" {
				errs = append(errs, errors.New("client-secret credential needs a client secret"))
			}
		default:
			errs = append(errs, fmt.Errorf("unknown credential %q (want %s, %s or %s)",
				c.Credential, CredentialDefault, CredentialManagedIdentity, CredentialClientSecret))
		}
	}
	if c.MaxMessageBytes < 0 {
		errs = append(errs, fmt.Errorf("max message bytes %d is negative", c.MaxMessageBytes))
	}
	if c.MaxDeliveryCount < 0 {
		errs = append(errs, fmt.Errorf("max delivery count %d is negative", c.MaxDeliveryCount))
	}
	return errors.Join(errs...)
}

func (c Config) maxMessageBytes() int {
	if c.MaxMessageBytes == 0 {
		return StandardMaxMessageBytes
	}
	return c.MaxMessageBytes
}

func (c Config) maxDeliveryCount() int {
	if c.MaxDeliveryCount == 0 {
		return 10
	}
	return c.MaxDeliveryCount
}

func (c Config) autoRenewFor() time.Duration {
	if c.AutoRenewFor == 0 {
		return 5 * time.Minute
	}
	return c.AutoRenewFor
}

// emulator reports whether the connection string targets a development
// emulator, which has no HTTPS management endpoint.
func (c Config) emulator() bool {
	for _, part := range strings.Split(c.ConnectionString, ";") {
		k, v, _ := strings.Cut(part, "=")
		if strings.EqualFold(strings.TrimSpace(k), "UseDevelopmentEmulator") && strings.EqualFold(strings.TrimSpace(v), "true") {
			return true
		}
	}
	return false
}

// credential builds the azidentity credential the config names.
func (c Config) credential() (azcore.TokenCredential, error) {
	if c.TokenCredential != nil {
		return c.TokenCredential, nil
	}
	switch c.Credential {
	case "", CredentialDefault:
		return azidentity.NewDefaultAzureCredential(nil)
	case CredentialManagedIdentity:
		opts := &azidentity.ManagedIdentityCredentialOptions{}
		if c.ClientID != "" {
			opts.ID = azidentity.ClientID(c.ClientID)
		}
		return azidentity.NewManagedIdentityCredential(opts)
	case CredentialClientSecret:
		return azidentity.NewClientSecretCredential(c.TenantID, c.ClientID, c.ClientSecret, nil)
	}
	return nil, fmt.Errorf("unknown credential %q", c.Credential)
}
