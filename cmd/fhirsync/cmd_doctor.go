package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	sbadmin "github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/storage"
)

// doctorTimeout bounds each check, so one endpoint that does not answer
// does not hide the others.
const doctorTimeout = 20 * time.Second

func runDoctor(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("doctor", "doctor [--config FILE]", `
Check every dependency of the configuration before traffic flows: the
database is reachable and migrated; the queues exist (Service Bus: the
credentials are accepted, and each queue has sessions, a lock of at least
30s, max delivery count 10 and dead-lettering on expiry); maps are
published; the CRM accepts the credentials and has each mapped table with
the alternate keys the maps use (and change tracking where
feeds.crm_tracking polls it); every application user holds the privileges
the maps need on each table at Organization level; the webhook or Service
Bus endpoint has a step for each table and message the CRM->FHIR direction
carries; the FHIR server's CapabilityStatement supports _history and the
interactions the maps write with; the clocks agree. One line per check,
with what to do when it fails; the exit status is 1 when any check fails.
Secrets and records are never printed.`)
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("doctor takes no arguments")
	}
	cfg, err := e.config()
	if err != nil {
		return err
	}
	defer e.close()
	d := &doctor{cfg: cfg, out: e.stdout}
	d.run(ctx, e)
	if d.failed > 0 {
		return fmt.Errorf("doctor: %d of %d checks failed", d.failed, d.checks)
	}
	return nil
}

// doctor runs the checks in order, each later one using what the earlier
// ones opened (the database, the published maps).
type doctor struct {
	cfg            *Config
	out            io.Writer
	db             *gorm.DB
	set            *maps.Set
	checks, failed int
	// sbOptions configures the Service Bus administration client (tests
	// give it a transport that trusts their server).
	sbOptions *sbadmin.ClientOptions
}

// problem is a failed check: what is wrong and what to do about it.
type problem struct{ what, fix string }

func (p *problem) Error() string { return p.what + " — " + p.fix }

func fail(fix, format string, args ...any) *problem {
	return &problem{what: fmt.Sprintf(format, args...), fix: fix}
}

// check prints one line: "ok   area  detail" or "FAIL area  what — fix".
func (d *doctor) check(area string, detail string, p *problem) {
	d.checks++
	if p != nil {
		d.failed++
		fmt.Fprintf(d.out, "FAIL %s  %s\n", area, oneLine(p.Error()))
		return
	}
	fmt.Fprintf(d.out, "ok   %s  %s\n", area, oneLine(detail))
}

// skip prints a check that could not run because an earlier one failed;
// it is not counted again.
func (d *doctor) skip(area, why string) {
	fmt.Fprintf(d.out, "skip %s  %s\n", area, why)
}

func (d *doctor) run(ctx context.Context, e *env) {
	step := func(fn func(context.Context)) {
		c, cancel := context.WithTimeout(ctx, doctorTimeout)
		defer cancel()
		fn(c)
	}
	step(func(c context.Context) { d.database(c, e) })
	step(d.queue)
	step(d.maps)
	step(d.crm)
	step(d.fhir)
	step(d.clock)
}

// clock compares the FHIR server's and the CRM's clocks (their HTTP Date
// headers, to the second): last-writer-wins orders edits by the modified
// times each side stamps, and agent.conflict_skew is all the skew it
// allows for.
func (d *doctor) clock(ctx context.Context) {
	if d.cfg.FHIR.BaseURL == "" || d.cfg.CRM.BaseURL == "" {
		d.skip("clock", "needs both fhir.base_url and crm.base_url")
		return
	}
	fhirAt, err := serverDate(ctx, strings.TrimSuffix(d.cfg.FHIR.BaseURL, "/")+"/metadata")
	if err == nil {
		var crmAt time.Time
		if crmAt, err = serverDate(ctx, d.cfg.CRM.BaseURL); err == nil {
			allow := d.cfg.Agent.ConflictSkew
			if allow == 0 {
				allow = 2 * time.Second
			}
			skew := fhirAt.Sub(crmAt)
			// Date headers have whole seconds: one second of the difference
			// may be rounding.
			if skew.Abs() > allow+time.Second {
				ahead := "FHIR server"
				if skew < 0 {
					ahead = "CRM"
				}
				d.check("clock", "", fail("synchronise both servers' clocks (NTP), or raise agent.conflict_skew",
					"the FHIR server's and the CRM's clocks are %s apart (the %s ahead), more than agent.conflict_skew %s", skew.Abs().Round(time.Second), ahead, allow))
				return
			}
			d.check("clock", fmt.Sprintf("FHIR server and CRM %s apart (HTTP Date, to the second), within agent.conflict_skew %s", skew.Abs().Round(time.Second), allow), nil)
			return
		}
	}
	d.check("clock", "", fail("check that both servers are reachable from here", "reading the servers' time: %s", shortCause(err)))
}

// serverDate is the Date header of any answer to a GET of u, without
// credentials (an answer of 401 carries it too).
func serverDate(ctx context.Context, u string) (time.Time, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return time.Time{}, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return time.Time{}, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 1<<16))
	res.Body.Close()
	at, err := http.ParseTime(res.Header.Get("Date"))
	if err != nil {
		return time.Time{}, fmt.Errorf("%s answered without a Date header", res.Request.URL.Host)
	}
	return at, nil
}

func (d *doctor) database(ctx context.Context, e *env) {
	// Open's errors name the file or host (never the password); Describe
	// is called only once the database exists, as it would create it.
	db, err := storage.Open(ctx, d.cfg.Database.URL, storage.Options{DataDir: d.cfg.DataDir, MaxOpenConns: 2, MustExist: true})
	switch {
	case errors.Is(err, storage.ErrNoDatabase):
		d.check("database", "", fail("run fhirsync migrate --config FILE to create it, or check data_dir and database.url", "%s", oneLine(err.Error())))
		return
	case err != nil:
		d.check("database", "", fail("check database.url and that the database server is running and reachable from here", "%s", oneLine(err.Error())))
		return
	}
	desc := storage.Describe(d.cfg.Database.URL, storage.Options{DataDir: d.cfg.DataDir})
	e.closer = append(e.closer, func() error { return storage.Close(db) })
	if err := storage.Check(ctx, db); err != nil {
		fix := "run fhirsync migrate --config FILE"
		if errors.Is(err, storage.ErrSchemaTooNew) {
			fix = "upgrade fhirsync to the version that migrated this database"
		}
		d.check("database", "", fail(fix, "%s: schema %s", desc, shortCause(err)))
		return
	}
	d.db = db
	d.check("database", fmt.Sprintf("%s, schema %d", desc, storage.LatestVersion()), nil)
}

// shortCause is the last part of a wrapped error, where the cause is.
func shortCause(err error) string {
	s := oneLine(err.Error())
	if i := strings.LastIndex(s, ": "); i >= 0 && len(s)-i > 8 {
		return s[i+2:]
	}
	return s
}

func (d *doctor) queue(ctx context.Context) {
	q := d.cfg.Queue
	names := []string{q.FHIRChanges, q.CRMChanges}
	if q.Kind == "servicebus" {
		d.serviceBus(ctx, names)
		return
	}
	if d.db == nil {
		d.skip("queue", "embedded queue: needs the database")
		return
	}
	for _, table := range []string{"queue_messages"} {
		if !d.db.WithContext(ctx).Migrator().HasTable(table) {
			d.check("queue", "", fail("run fhirsync migrate --config FILE", "embedded queue: table %s missing", table))
			return
		}
	}
	d.check("queue", fmt.Sprintf("embedded in the database: %s, %s", q.FHIRChanges, q.CRMChanges), nil)
}

// serviceBus checks each queue through the administration (ATOM) API:
// it exists and requires sessions, which the agent's per-record ordering
// relies on.
func (d *doctor) serviceBus(ctx context.Context, names []string) {
	sb := d.cfg.Queue.ServiceBus
	var cred azcore.TokenCredential
	if sb.ConnectionString == "" {
		a := sb.Auth
		if a.Method == "" {
			a.Method = "default"
		}
		var err error
		if cred, err = credential(a); err != nil {
			d.check("servicebus", "", fail("set queue.service_bus.auth.method to default, managed_identity (client_id for a user-assigned identity) or client_secret (with tenant_id, client_id and client_secret)", "Service Bus credential: %v", err))
			return
		}
	}
	if isEmulator(sb.ConnectionString) {
		// The development emulator has no administration API.
		d.serviceBusDataPlane(ctx, names, cred, "the emulator has no administration API")
		return
	}
	var client *sbadmin.Client
	var err error
	if sb.ConnectionString != "" {
		client, err = sbadmin.NewClientFromConnectionString(sb.ConnectionString, d.sbOptions)
	} else {
		client, err = sbadmin.NewClient(sb.Namespace, cred, d.sbOptions)
	}
	if err != nil {
		d.check("servicebus", "", fail("set queue.service_bus.connection_string to the namespace's Endpoint=sb://…;SharedAccessKeyName=…;SharedAccessKey=… string, or queue.service_bus.namespace to its host name (contoso.servicebus.windows.net)", "Service Bus client: %s", shortCause(err)))
		return
	}
	queues := map[string]*sbadmin.GetQueueResponse{}
	for _, name := range names {
		resp, err := client.GetQueue(ctx, name, nil)
		if err != nil {
			var re *azcore.ResponseError
			if errors.As(err, &re) && re.StatusCode == http.StatusUnauthorized {
				d.check("servicebus", "", d.serviceBusAuth(err))
				return
			}
			// Refused (403: an identity with the data roles only) or no
			// answer: check what the agent itself does instead.
			why := "the administration API did not answer: " + shortCause(err)
			if errors.As(err, &re) && re.StatusCode == http.StatusForbidden {
				why = "the administration API refused to show queue properties (403); they need Manage rights or the Azure Service Bus Data Owner role"
			}
			d.serviceBusDataPlane(ctx, names, cred, why)
			return
		}
		queues[name] = resp
	}
	d.check("servicebus", d.serviceBusWho()+" accepted by "+d.serviceBusHost(), nil)
	for _, name := range names {
		area := "queue " + name
		resp := queues[name]
		switch {
		case resp == nil:
			d.check(area, "", fail("create it with sessions enabled, or fix queue.fhir_changes / queue.crm_changes", "queue %s does not exist", name))
		case resp.RequiresSession == nil || !*resp.RequiresSession:
			d.check(area, "", fail("sessions can only be set when a queue is created: delete and recreate it with sessions enabled (requiresSession)", "queue %s is not session-enabled", name))
		default:
			d.queueProperties(area, name, resp.QueueProperties)
		}
	}
}

// sbErrorIs reports whether err is the Service Bus error code, or the AMQP
// condition the client passes through untransformed when a link is
// refused at attach.
func sbErrorIs(err error, code azservicebus.Code, condition string) bool {
	var sbe *azservicebus.Error
	if errors.As(err, &sbe) && sbe.Code == code {
		return true
	}
	return err != nil && strings.Contains(err.Error(), "Condition: "+condition+",")
}

func isEmulator(connectionString string) bool {
	return strings.Contains(strings.ToLower(connectionString), "usedevelopmentemulator=true")
}

// serviceBusDataPlane checks what the agent does with the queues when
// their properties cannot be read (why): it opens a sender link to each
// queue, which authenticates over AMQP and needs the queue to exist and
// the Send right, and sends nothing. The properties are then reported as
// not checked.
func (d *doctor) serviceBusDataPlane(ctx context.Context, names []string, cred azcore.TokenCredential, why string) {
	sb := d.cfg.Queue.ServiceBus
	opts := &azservicebus.ClientOptions{RetryOptions: azservicebus.RetryOptions{MaxRetries: 1, RetryDelay: 200 * time.Millisecond, MaxRetryDelay: time.Second}}
	var client *azservicebus.Client
	var err error
	if sb.ConnectionString != "" {
		client, err = azservicebus.NewClientFromConnectionString(sb.ConnectionString, opts)
	} else {
		client, err = azservicebus.NewClient(sb.Namespace, cred, opts)
	}
	if err != nil {
		d.check("servicebus", "", fail("set queue.service_bus.connection_string to the namespace's Endpoint=sb://…;SharedAccessKeyName=…;SharedAccessKey=… string, or queue.service_bus.namespace to its host name (contoso.servicebus.windows.net)", "Service Bus client: %s", shortCause(err)))
		return
	}
	defer client.Close(context.WithoutCancel(ctx))
	errs := map[string]error{}
	var reached []string
	for _, name := range names {
		sender, err := client.NewSender(name, nil)
		if err == nil {
			_, err = sender.NewMessageBatch(ctx, nil)
			_ = sender.Close(context.WithoutCancel(ctx))
		}
		switch {
		case err == nil:
			reached = append(reached, name)
		case sbErrorIs(err, azservicebus.CodeUnauthorizedAccess, "amqp:unauthorized-access"):
			fix := "check queue.service_bus.connection_string: its policy needs the Send and Listen rights on the queues"
			if sb.ConnectionString == "" {
				fix = "assign the identity the Azure Service Bus Data Sender and Data Receiver roles on the namespace (or the queues)"
			}
			d.check("servicebus", "", fail(fix, "%s refused to let %s send to queue %s (%s)", d.serviceBusHost(), d.serviceBusWho(), name, why))
			return
		}
		errs[name] = err
	}
	if len(reached) == 0 {
		notFound := 0
		for _, err := range errs {
			if sbErrorIs(err, azservicebus.CodeNotFound, "amqp:not-found") {
				notFound++
			}
		}
		if notFound < len(names) {
			d.check("servicebus", "", fail("check that the namespace is reachable from here (AMQP port 5671, or 443 over WebSockets) and its name",
				"%s did not answer (%s): %s", d.serviceBusHost(), why, shortCause(errs[names[0]])))
			return
		}
	}
	d.check("servicebus", fmt.Sprintf("%s accepted by %s (may send to %s)", d.serviceBusWho(), d.serviceBusHost(), strings.Join(reached, ", ")), nil)
	for _, name := range names {
		area := "queue " + name
		switch err := errs[name]; {
		case err == nil:
			d.skip(area, "exists; sessions, lock duration, max deliveries and dead-lettering not checked: "+why)
		case sbErrorIs(err, azservicebus.CodeNotFound, "amqp:not-found"):
			d.check(area, "", fail("create it with sessions enabled, or fix queue.fhir_changes / queue.crm_changes", "queue %s does not exist", name))
		default:
			d.check(area, "", fail("check that the namespace is reachable from here and try again", "opening a sender to queue %s failed: %s", name, shortCause(err)))
		}
	}
}

// serviceBusAuth is the failure for a 401 from the administration API:
// the namespace refused the credentials.
func (d *doctor) serviceBusAuth(err error) *problem {
	fix := "check queue.service_bus.connection_string: its SharedAccessKeyName and SharedAccessKey must be a policy of this namespace"
	if d.cfg.Queue.ServiceBus.ConnectionString == "" {
		fix = "check queue.service_bus.auth (tenant_id, client_id, client_secret or the managed identity) and that the identity belongs to the namespace's tenant"
	}
	return fail(fix, "%s refused the credentials (401)", d.serviceBusHost())
}

func (d *doctor) serviceBusHost() string {
	sb := d.cfg.Queue.ServiceBus
	if sb.Namespace != "" {
		return sb.Namespace
	}
	for _, part := range strings.Split(sb.ConnectionString, ";") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(part), "Endpoint="); ok {
			return strings.TrimSuffix(strings.TrimPrefix(v, "sb://"), "/")
		}
	}
	return "the namespace"
}

// serviceBusWho names the credential, never its secret.
func (d *doctor) serviceBusWho() string {
	sb := d.cfg.Queue.ServiceBus
	if sb.ConnectionString != "" {
		for _, part := range strings.Split(sb.ConnectionString, ";") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(part), "SharedAccessKeyName="); ok {
				return "shared access policy " + v
			}
		}
		return "connection string"
	}
	m := sb.Auth.Method
	if m == "" {
		m = "default"
	}
	return "Entra ID credential (" + m + ")"
}

// Queue settings the agent relies on.
const (
	// minLockDuration: the adapter renews locks in the background; below
	// this a process paused for a few seconds (a busy host, a long
	// collection) loses the lock and the message is delivered again.
	minLockDuration = 30 * time.Second
	// sbAdapterMaxDeliveries is the MaxDeliveryCount the Service Bus
	// adapter assumes (queues/servicebus Config.MaxDeliveryCount, zero):
	// it counts the retries it schedules itself against it.
	sbAdapterMaxDeliveries = 10
)

// queueProperties checks a session queue's lock duration, maximum
// delivery count and dead-lettering against what the agent expects.
func (d *doctor) queueProperties(area, name string, qp sbadmin.QueueProperties) {
	lock, lockErr := isoDuration(derefStr(qp.LockDuration))
	maxDel := int(deref(qp.MaxDeliveryCount))
	attempts := d.cfg.Agent.MaxAttempts
	if attempts <= 0 {
		attempts = 10
	}
	switch {
	case lockErr == nil && lock < minLockDuration:
		d.check(area, "", fail(fmt.Sprintf("set the queue's lock duration (lockDuration) to at least %s; 1 minute is the default", minLockDuration),
			"queue %s locks messages for %s only", name, lock))
	case maxDel != sbAdapterMaxDeliveries:
		d.check(area, "", fail(fmt.Sprintf("set the queue's max delivery count (maxDeliveryCount) to %d, the count fhirsync's Service Bus adapter retries against", sbAdapterMaxDeliveries),
			"queue %s has max delivery count %d", name, maxDel))
	case attempts > maxDel:
		d.check(area, "", fail(fmt.Sprintf("lower agent.max_attempts to %d or less", maxDel),
			"agent.max_attempts %d exceeds the queue's max delivery count %d: Service Bus would dead-letter first, without a decision", attempts, maxDel))
	case qp.DeadLetteringOnMessageExpiration == nil || !*qp.DeadLetteringOnMessageExpiration:
		d.check(area, "", fail("turn on dead-lettering on message expiration (deadLetteringOnMessageExpiration) so an expired notice is kept in the dead-letter queue and can be redriven",
			"queue %s drops expired messages without dead-lettering them", name))
	case derefStr(qp.ForwardDeadLetteredMessagesTo) != "":
		d.check(area, "", fail("clear forwardDeadLetteredMessagesTo: fhirsync lists and redrives dead letters from the queue's own dead-letter queue",
			"queue %s forwards its dead letters to %s", name, derefStr(qp.ForwardDeadLetteredMessagesTo)))
	default:
		dup := "duplicate detection off"
		if qp.RequiresDuplicateDetection != nil && *qp.RequiresDuplicateDetection {
			dup = "duplicate detection " + derefStr(qp.DuplicateDetectionHistoryTimeWindow)
		}
		lockText := derefStr(qp.LockDuration)
		if lockErr == nil {
			lockText = lock.String()
		}
		d.check(area, fmt.Sprintf("sessions on, lock %s, max deliveries %d, dead-lettering on expiry, %s", lockText, maxDel, dup), nil)
	}
}

func derefStr(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// isoDuration parses the ISO 8601 durations the administration API
// writes (PT1M, PT30S, P14D, P10675199DT2H48M5.4775807S).
func isoDuration(s string) (time.Duration, error) {
	rest, ok := strings.CutPrefix(s, "P")
	if !ok {
		return 0, fmt.Errorf("duration %q does not start with P", s)
	}
	var total time.Duration
	inTime := false
	num := ""
	for _, r := range rest {
		switch {
		case r == 'T':
			inTime = true
		case r >= '0' && r <= '9' || r == '.':
			num += string(r)
		default:
			v, err := strconv.ParseFloat(num, 64)
			if err != nil {
				return 0, fmt.Errorf("duration %q: %w", s, err)
			}
			num = ""
			unit := map[bool]map[rune]time.Duration{
				false: {'D': 24 * time.Hour, 'W': 7 * 24 * time.Hour},
				true:  {'H': time.Hour, 'M': time.Minute, 'S': time.Second},
			}[inTime][r]
			if unit == 0 {
				return 0, fmt.Errorf("duration %q: unit %q not understood", s, r)
			}
			total += time.Duration(v * float64(unit))
		}
	}
	return total, nil
}

func deref(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}

func (d *doctor) maps(ctx context.Context) {
	if d.db == nil {
		d.skip("maps", "needs the database")
		return
	}
	ms, err := maps.New(d.db, maps.Options{Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		d.set, err = ms.Current(ctx)
	}
	switch {
	case errors.Is(err, maps.ErrNotFound):
		d.check("maps", "", fail("fhirsync maps import maps/starter/starter.yaml, then fhirsync maps publish (or publish in the admin app)", "nothing published yet"))
	case err != nil:
		d.check("maps", "", fail("run fhirsync migrate --config FILE, and check that database.url's user may read the maps tables", "reading the published maps: %s", shortCause(err)))
	default:
		on := 0
		for _, m := range d.set.Maps() {
			if m.Def().Enabled == nil || *m.Def().Enabled {
				on++
			}
		}
		d.check("maps", fmt.Sprintf("version %d published, %d entity maps (%d enabled)", d.set.Version(), len(d.set.Maps()), on), nil)
	}
}

// secretKey names the configuration key holding the CRM credential.
func (d *doctor) crmSecretKey() string {
	method, key := d.cfg.CRM.Auth.Method, "crm.auth"
	if len(d.cfg.CRM.Users) > 0 {
		method, key = d.cfg.CRM.Users[0].Method, "crm.users[…]"
	}
	switch method {
	case "bearer":
		return key + ".token"
	case "client_secret":
		return key + ".client_secret, tenant_id and client_id"
	}
	return key + " (method " + method + ")"
}

func (d *doctor) crm(ctx context.Context) {
	if d.cfg.CRM.BaseURL == "" {
		d.check("crm", "", fail("set crm.base_url (and crm.auth) to the Dataverse environment", "no CRM configured: the agent would stay idle"))
		return
	}
	c, err := crm.New(crmConfig(d.cfg.CRM, nil))
	if err != nil {
		d.check("crm", "", fail("set crm.base_url to the environment's URL (https://<org>.crm.dynamics.com) and crm.auth (or each crm.users entry) to method bearer, client_secret, managed_identity or default with its keys", "CRM client: %s", shortCause(err)))
		return
	}
	ids, err := c.UserIDs(ctx)
	if err != nil {
		var ce *crm.Error
		if errors.As(err, &ce) && (ce.Status == 401 || ce.Status == 403) {
			d.check("crm", "", fail("check "+d.crmSecretKey()+", and that the application user exists in the environment",
				"token refused (%d) by %s", ce.Status, d.cfg.CRM.BaseURL))
			return
		}
		d.check("crm", "", fail("check crm.base_url and that the environment is reachable from here", "WhoAmI at %s failed: %s", d.cfg.CRM.BaseURL, shortCause(err)))
		return
	}
	d.check("crm", fmt.Sprintf("%s, signed in as %d application user(s)", d.cfg.CRM.BaseURL, len(ids)), nil)
	if d.set == nil {
		d.skip("crm tables", "needs published maps")
		return
	}
	tracked := d.cfg.Feeds.CRMTracking.Entities
	for _, entity := range mappedEntities(d.set) {
		area := "crm table " + entity
		md, err := c.EntityDefinition(ctx, entity)
		if err != nil {
			var ce *crm.Error
			if errors.As(err, &ce) && ce.Status == 404 {
				d.check(area, "", fail("create the table (install the solution that defines it) or fix the map's crmEntity", "table %s does not exist", entity))
			} else {
				d.check(area, "", fail("check that the environment is reachable and the application user has a security role (reading table definitions needs one)", "reading the definition of %s failed: %s", entity, shortCause(err)))
			}
			continue
		}
		var keys []string
		var missing []string
		for _, attr := range keyAttributes(d.set, entity) {
			if hasSingleKey(md, attr) {
				keys = append(keys, attr)
			} else {
				missing = append(missing, attr)
			}
		}
		if len(missing) > 0 {
			d.check(area, "", fail("add an alternate key on "+strings.Join(missing, ", ")+" to table "+entity+" (the maps find records by it)",
				"no alternate key on %s", strings.Join(missing, ", ")))
			continue
		}
		track := "change tracking " + map[bool]string{true: "on", false: "off"}[md.ChangeTracking]
		if slices.Contains(tracked, entity) && !md.ChangeTracking {
			d.check(area, "", fail("enable Track changes on table "+entity+", or remove it from feeds.crm_tracking.entities", "change tracking is off but feeds.crm_tracking polls it"))
			continue
		}
		d.check(area, fmt.Sprintf("alternate keys %s, %s", strings.Join(keys, ", "), track), nil)
	}
	d.crmPrivileges(ctx, c)
	d.crmSteps(ctx, c)
	d.crmBypass(ctx, c)
}

// mappedEntities are the CRM tables of the set's enabled maps, in order.
func mappedEntities(set *maps.Set) []string {
	var out []string
	for _, m := range set.Maps() {
		def := m.Def()
		if def.Enabled != nil && !*def.Enabled {
			continue
		}
		if !slices.Contains(out, def.CRMEntity) {
			out = append(out, def.CRMEntity)
		}
	}
	return out
}

// keyAttributes are the attributes the entity's maps look records up by:
// the correlation attribute and the business key's.
func keyAttributes(set *maps.Set, entity string) []string {
	var out []string
	for _, m := range set.ForCRM(entity) {
		def := m.Def()
		if def.Enabled != nil && !*def.Enabled {
			continue
		}
		attrs := []string{def.Correlation.CRMAttribute}
		if bk := def.Correlation.BusinessKey; bk != nil {
			attrs = append(attrs, bk.CRMAttribute)
		}
		for _, a := range attrs {
			if a != "" && !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
}

func hasSingleKey(md *crm.EntityMetadata, attr string) bool {
	for _, k := range md.Keys {
		if len(k.Attributes) == 1 && strings.EqualFold(k.Attributes[0], attr) {
			return true
		}
	}
	return false
}

func (d *doctor) fhir(ctx context.Context) {
	if d.cfg.FHIR.BaseURL == "" {
		d.check("fhir", "", fail("set fhir.base_url (and fhir.auth) to the FHIR server", "no FHIR server configured: the agent would stay idle"))
		return
	}
	fc := fhir.Config{BaseURL: d.cfg.FHIR.BaseURL, Timeout: d.cfg.FHIR.Timeout, UserAgent: "fhirsync/" + buildVersion()}
	var err error
	switch d.cfg.FHIR.Auth.Method {
	case "bearer":
		fc.BearerToken = d.cfg.FHIR.Auth.Token
	case "none", "":
	default:
		if fc.Credential, err = credential(d.cfg.FHIR.Auth); err != nil {
			d.check("fhir", "", fail("set fhir.auth.method to none, bearer (with token), default, managed_identity or client_secret (with tenant_id, client_id and client_secret)", "FHIR credential: %v", err))
			return
		}
	}
	c, err := fhir.New(fc)
	if err != nil {
		d.check("fhir", "", fail("set fhir.base_url to the server's base URL, e.g. https://<workspace>-<service>.fhir.azurehealthcareapis.com", "FHIR client: %s", shortCause(err)))
		return
	}
	cs, err := c.Capabilities(ctx)
	if err != nil {
		d.check("fhir", "", fail("check fhir.base_url, fhir.auth and that the server is reachable from here", "reading the CapabilityStatement (GET /metadata) of %s failed: %s", d.cfg.FHIR.BaseURL, shortCause(err)))
		return
	}
	types := slices.Clone(d.cfg.Feeds.FHIRHistory.Types)
	if d.set != nil {
		for _, m := range d.set.Maps() {
			if def := m.Def(); (def.Enabled == nil || *def.Enabled) && !slices.Contains(types, def.FHIRType) {
				types = append(types, def.FHIRType)
			}
		}
	}
	supported := capabilityInteractions(cs)
	var absent, noHistory, noWrite []string
	for _, t := range types {
		in, ok := supported[t]
		switch {
		case !ok:
			absent = append(absent, t)
		case !in["history-type"]:
			noHistory = append(noHistory, t)
		}
		if ok {
			for _, need := range d.fhirWrites(t) {
				if !in[need] {
					noWrite = append(noWrite, t+" "+need)
				}
			}
		}
	}
	ver, _ := cs["fhirVersion"].(string)
	switch {
	case len(absent) > 0:
		d.check("fhir", "", fail("use a FHIR server that serves these types, or disable their maps", "the CapabilityStatement of %s lists no %s", d.cfg.FHIR.BaseURL, strings.Join(absent, ", ")))
	case len(noHistory) > 0:
		d.check("fhir", "", fail("the FHIR history feed reads _history: enable versioning and history on the server for these types, or use a rest-hook subscription and drop them from feeds.fhir_history.types",
			"%s does not support _history (history-type) for %s", d.cfg.FHIR.BaseURL, strings.Join(noHistory, ", ")))
	case len(noWrite) > 0:
		d.check("fhir", "", fail("enable these interactions on the server, or turn the operations off in the maps' crmToFHIR",
			"%s does not support what the maps write: %s", d.cfg.FHIR.BaseURL, strings.Join(noWrite, ", ")))
	case len(types) == 0:
		d.check("fhir", fmt.Sprintf("%s, FHIR %s (no published maps or feeds.fhir_history.types: _history not checked)", d.cfg.FHIR.BaseURL, ver), nil)
	default:
		d.check("fhir", fmt.Sprintf("%s, FHIR %s, _history for %s", d.cfg.FHIR.BaseURL, ver, strings.Join(types, ", ")), nil)
	}
}

// fhirWrites are the CapabilityStatement interactions the enabled maps of
// a resource type write with: create and update where crmToFHIR allows
// them, and conditional create (If-None-Exist) where a map with a business
// key creates.
func (d *doctor) fhirWrites(typ string) []string {
	if d.set == nil {
		return nil
	}
	var out []string
	add := func(code string) {
		if !slices.Contains(out, code) {
			out = append(out, code)
		}
	}
	for _, m := range d.set.ForFHIR(typ) {
		def := m.Def()
		if def.Enabled != nil && !*def.Enabled {
			continue
		}
		if def.CRMToFHIR.Allows(maps.OpCreate) {
			add("create")
			if def.Correlation.BusinessKey != nil {
				add("conditional-create")
			}
		}
		if def.CRMToFHIR.Allows(maps.OpUpdate) {
			add("update")
		}
	}
	return out
}

// capabilityInteractions reads rest[mode=server].resource[].interaction[]
// codes by resource type.
func capabilityInteractions(cs fhir.Resource) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	rests, _ := cs["rest"].([]any)
	for _, r := range rests {
		rest, _ := r.(map[string]any)
		if mode, _ := rest["mode"].(string); mode != "" && mode != "server" {
			continue
		}
		resources, _ := rest["resource"].([]any)
		for _, x := range resources {
			res, _ := x.(map[string]any)
			typ, _ := res["type"].(string)
			if typ == "" {
				continue
			}
			// conditionalCreate is a flag, not an interaction; it reads
			// here as the pseudo-interaction conditional-create.
			codes := map[string]bool{}
			if cc, _ := res["conditionalCreate"].(bool); cc {
				codes["conditional-create"] = true
			}
			inters, _ := res["interaction"].([]any)
			for _, i := range inters {
				in, _ := i.(map[string]any)
				if code, _ := in["code"].(string); code != "" {
					codes[code] = true
				}
			}
			out[typ] = codes
		}
	}
	return out
}
