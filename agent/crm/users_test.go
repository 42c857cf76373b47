package crm

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

// org is a loopback Dataverse that knows its callers by bearer token: it
// counts each user's requests and requests in flight, answers 429 to the
// users told to, sends x-ms-dop-hint, and can hold requests until released.
type org struct {
	mu          sync.Mutex
	ids         map[string]string // token → systemuserid
	hint        string
	retryAfter  string
	throttle    map[string]int // token → 429s still to answer
	requests    map[string]int
	whoAmI      map[string]int
	inFlight    map[string]int
	maxInFlight map[string]int
	hold        chan struct{} // non-nil: requests wait until it is closed
}

func newOrg(t *testing.T, tokens ...string) (*org, string) {
	t.Helper()
	o := &org{ids: map[string]string{}, throttle: map[string]int{}, requests: map[string]int{}, whoAmI: map[string]int{},
		inFlight: map[string]int{}, maxInFlight: map[string]int{}}
	for i, tok := range tokens {
		o.ids[tok] = fmt.Sprintf("aaaaaaaa-0000-0000-0000-%012d", i+1)
	}
	hs := httptest.NewServer(o)
	t.Cleanup(hs.Close)
	return o, hs.URL
}

func (o *org) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	o.mu.Lock()
	id, known := o.ids[tok]
	if o.hint != "" {
		w.Header().Set(DOPHintHeader, o.hint)
	}
	if !known {
		o.mu.Unlock()
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	o.requests[tok]++
	if o.throttle[tok] > 0 {
		o.throttle[tok]--
		o.mu.Unlock()
		w.Header().Set("Retry-After", o.retryAfter)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = w.Write([]byte(`{"error":{"code":"0x80072322","message":"Number of requests exceeded the limit of 6000 over time window of 300 seconds."}}`))
		return
	}
	o.inFlight[tok]++
	o.maxInFlight[tok] = max(o.maxInFlight[tok], o.inFlight[tok])
	hold := o.hold
	if strings.HasSuffix(r.URL.Path, "/WhoAmI") {
		o.whoAmI[tok]++
	}
	o.mu.Unlock()
	if hold != nil {
		<-hold
	}
	o.mu.Lock()
	o.inFlight[tok]--
	o.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"UserId": id, "contactid": "c0000000-0000-0000-0000-000000000001"})
}

func (o *org) count(m map[string]int, tok string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return m[tok]
}

func (o *org) totalInFlight() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, v := range o.inFlight {
		n += v
	}
	return n
}

// waitFor polls cond for up to ten seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func bearerUsers(names ...string) []User {
	us := make([]User, len(names))
	for i, n := range names {
		us[i] = User{Name: n, Auth: AuthBearer, Token: "tok-" + n}
	}
	return us
}

func TestUsersConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		cfg        Config
		wantLabels []string
		wantErr    string
	}{
		{name: "one user from Auth", cfg: Config{Auth: AuthBearer, Token: "t"}, wantLabels: []string{"user1"}},
		{name: "labels from names, client ids, positions", cfg: Config{Users: []User{{Name: "sync-a", Auth: AuthBearer, Token: "a"},
			{Auth: AuthClientSecret, TenantID: "t", ClientID: "11111111-1111-1111-1111-111111111111", ClientSecret: "s"}, {Auth: AuthBearer, Token: "c"}}},
			wantLabels: []string{"sync-a", "11111111-1111-1111-1111-111111111111", "user3"}},
		{name: "users and auth", cfg: Config{Auth: AuthBearer, Token: "t", Users: bearerUsers("a")}, wantErr: "set Users or Auth"},
		{name: "a user's problem names the user", cfg: Config{Users: []User{{Name: "a", Auth: AuthBearer}}}, wantErr: "user a: auth bearer needs Token"},
		{name: "two users with one label", cfg: Config{Users: bearerUsers("a", "a")}, wantErr: `two users are labelled "a"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.cfg.URL = "https://org.crm.dynamics.com"
			c, err := New(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(c.UserLabels(), ","); got != strings.Join(tt.wantLabels, ",") {
				t.Fatalf("labels %s, want %v", got, tt.wantLabels)
			}
			for i, l := range c.UserLabels() {
				if u := tt.cfg.Users; len(u) > 0 && (l == u[i].Token || l == u[i].ClientSecret) {
					t.Fatalf("label %q is a secret", l)
				}
			}
		})
	}
}

// TestLoadSpreadsOverUsers: requests take turns among three users, and
// under load each user holds its own concurrency budget.
func TestLoadSpreadsOverUsers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	o, url := newOrg(t, "tok-a", "tok-b", "tok-c")
	reg := prometheus.NewRegistry()
	c, err := New(Config{URL: url, Users: bearerUsers("a", "b", "c"), MaxConcurrency: 4, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	for range 30 {
		if _, err := c.Retrieve(ctx, ByID("contacts", "c0000000-0000-0000-0000-000000000001")); err != nil {
			t.Fatal(err)
		}
	}
	for i, u := range []string{"a", "b", "c"} {
		if n := o.count(o.requests, "tok-"+u); n != 10 {
			t.Errorf("user %s got %d of 30 requests, want 10", u, n)
		}
		if n := testutil.ToFloat64(c.users.list[i].m.requests); n != 10 {
			t.Errorf("fhirsync_crm_requests_total{user=%s} = %v, want 10", u, n)
		}
	}

	// 14 requests at once against three users of four slots each: twelve
	// go out, four per user, and two wait for a slot.
	o.mu.Lock()
	o.hold = make(chan struct{})
	o.mu.Unlock()
	var wg sync.WaitGroup
	errs := make(chan error, 14)
	for range 14 {
		wg.Go(func() {
			_, err := c.Retrieve(ctx, ByID("contacts", "c0000000-0000-0000-0000-000000000001"))
			errs <- err
		})
	}
	waitFor(t, "twelve requests are in flight", func() bool { return o.totalInFlight() == 12 })
	time.Sleep(50 * time.Millisecond) // room for a thirteenth, which must not come
	for _, u := range []string{"a", "b", "c"} {
		if n := o.count(o.inFlight, "tok-"+u); n != 4 {
			t.Errorf("user %s has %d requests in flight, want 4", u, n)
		}
	}
	o.mu.Lock()
	close(o.hold)
	o.hold = nil
	o.mu.Unlock()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []string{"a", "b", "c"} {
		if n := o.count(o.maxInFlight, "tok-"+u); n != 4 {
			t.Errorf("user %s had at most %d requests in flight, want 4", u, n)
		}
	}
	if got := testutil.CollectAndCount(reg, "fhirsync_crm_requests_total"); got != 3 {
		t.Errorf("%d request series, want one per user", got)
	}
}

// TestThrottledUserHandsItsRequestsToTheOthers: a 429 pauses only the user
// that got it, for its Retry-After; the request goes out again at once as
// another user, and the paused user gets nothing until its pause ends.
func TestThrottledUserHandsItsRequestsToTheOthers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	o, url := newOrg(t, "tok-a", "tok-b", "tok-c")
	o.retryAfter = "120"
	o.throttle["tok-a"] = 1
	reg := prometheus.NewRegistry()
	c, err := New(Config{URL: url, Users: bearerUsers("a", "b", "c"), Registerer: reg, MaxRetryWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if _, err := c.Retrieve(ctx, ByID("contacts", "c0000000-0000-0000-0000-000000000001")); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if a := o.count(o.requests, "tok-a"); a != 1 {
		t.Errorf("the paused user got %d requests, want only the one refused", a)
	}
	if b, cc := o.count(o.requests, "tok-b"), o.count(o.requests, "tok-c"); b+cc != 30 || b < 14 || cc < 14 {
		t.Errorf("the other users got %d and %d requests, want 30 between them, evenly", b, cc)
	}
	a := c.users.list[0]
	if n := testutil.ToFloat64(a.m.throttled); n != 1 {
		t.Errorf("fhirsync_crm_throttled_total{user=a} = %v, want 1", n)
	}
	if s := testutil.ToFloat64(a.m.paused); s != 120 {
		t.Errorf("fhirsync_crm_paused_seconds_total{user=a} = %v, want 120", s)
	}
	if n := testutil.ToFloat64(c.users.list[1].m.throttled); n != 0 {
		t.Errorf("user b throttled %v times, want 0", n)
	}

	// With every user paused beyond what the client waits, the request
	// fails throttled, naming when the first user resumes.
	o.mu.Lock()
	o.throttle["tok-b"], o.throttle["tok-c"] = 1, 1
	o.retryAfter = "60"
	o.mu.Unlock()
	_, err = c.Retrieve(ctx, ByID("contacts", "c0000000-0000-0000-0000-000000000001"))
	e := wantClass(t, err, ClassThrottled)
	if e.RetryAfter < 50*time.Second || e.RetryAfter > 60*time.Second {
		t.Errorf("RetryAfter %v, want the 60 s until the first user resumes", e.RetryAfter)
	}
}

// TestAllUsersPausedWaitsForTheFirst: when every user is paused the
// request waits for the earliest to resume, then goes out as that user.
func TestAllUsersPausedWaitsForTheFirst(t *testing.T) {
	t.Parallel()
	o, url := newOrg(t, "tok-a", "tok-b", "tok-c")
	o.retryAfter = "1"
	for _, tok := range []string{"tok-a", "tok-b", "tok-c"} {
		o.throttle[tok] = 1
	}
	c, err := New(Config{URL: url, Users: bearerUsers("a", "b", "c")})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Retrieve(context.Background(), ByID("contacts", "c0000000-0000-0000-0000-000000000001")); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 900*time.Millisecond {
		t.Errorf("the request went out again after %v, before any user's Retry-After of 1 s ended", waited)
	}
	total := 0
	for _, tok := range []string{"tok-a", "tok-b", "tok-c"} {
		if n := o.count(o.requests, tok); n < 1 {
			t.Errorf("%s was never tried", tok)
		}
		total += o.count(o.requests, tok)
	}
	if total != 4 {
		t.Errorf("%d requests, want three refused and one answered", total)
	}
}

// TestDOPHintSetsConcurrency: each user's concurrency follows the latest
// x-ms-dop-hint, within the configured cap.
func TestDOPHintSetsConcurrency(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	o, url := newOrg(t, "tok-a")
	c, err := New(Config{URL: url, Users: bearerUsers("a")})
	if err != nil {
		t.Fatal(err)
	}
	u := c.users.list[0]
	if l := testutil.ToFloat64(u.m.limit); l != defaultConcurrency {
		t.Fatalf("limit before any hint %v, want %d", l, defaultConcurrency)
	}
	load := func(n int) {
		t.Helper()
		o.mu.Lock()
		o.hold = make(chan struct{})
		o.maxInFlight = map[string]int{}
		o.mu.Unlock()
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				if _, err := c.Retrieve(ctx, ByID("contacts", "c0000000-0000-0000-0000-000000000001")); err != nil {
					t.Error(err)
				}
			})
		}
		waitFor(t, "requests are in flight", func() bool { return o.totalInFlight() > 0 })
		time.Sleep(100 * time.Millisecond) // room for more than the limit, which must not come
		o.mu.Lock()
		close(o.hold)
		o.hold = nil
		o.mu.Unlock()
		wg.Wait()
	}
	for _, hint := range []int{2, 5, 1} {
		o.mu.Lock()
		o.hint = fmt.Sprint(hint)
		o.mu.Unlock()
		if _, err := c.WhoAmI(ctx); err != nil { // carries the new hint back
			t.Fatal(err)
		}
		if l := testutil.ToFloat64(u.m.limit); l != float64(hint) {
			t.Fatalf("hint %d: limit %v", hint, l)
		}
		load(10)
		if m := o.count(o.maxInFlight, "tok-a"); m != hint {
			t.Errorf("hint %d: %d requests were in flight at once", hint, m)
		}
	}

	// A configured cap bounds the hint; a hint below it still lowers.
	capped, err := New(Config{URL: url, Users: bearerUsers("a"), MaxConcurrency: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ hint, want int }{{50, 3}, {2, 2}, {0, 2}, {60, 3}} {
		o.mu.Lock()
		o.hint = fmt.Sprint(tt.hint)
		o.mu.Unlock()
		if _, err := capped.WhoAmI(ctx); err != nil {
			t.Fatal(err)
		}
		if l := testutil.ToFloat64(capped.users.list[0].m.limit); l != float64(tt.want) {
			t.Errorf("cap 3, hint %d: limit %v, want %d", tt.hint, l, tt.want)
		}
	}
	// With no cap a hint beyond the documented 52 is held to 52.
	o.mu.Lock()
	o.hint = "200"
	o.mu.Unlock()
	if _, err := c.WhoAmI(ctx); err != nil {
		t.Fatal(err)
	}
	if l := testutil.ToFloat64(u.m.limit); l != MaxConcurrency {
		t.Errorf("hint 200: limit %v, want %d", l, MaxConcurrency)
	}
}

// TestUserIDsNamesEveryUser: UserIDs asks WhoAmI as each user (the agent
// takes a change by any of them for its own), except a user whose id is
// configured.
func TestUserIDsNamesEveryUser(t *testing.T) {
	t.Parallel()
	o, url := newOrg(t, "tok-a", "tok-b", "tok-c")
	users := bearerUsers("a", "b", "c")
	users[1].UserID = "BBBBBBBB-0000-0000-0000-000000000002"
	c, err := New(Config{URL: url, Users: users})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := c.UserIDs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{o.ids["tok-a"], "bbbbbbbb-0000-0000-0000-000000000002", o.ids["tok-c"]}
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Fatalf("UserIDs = %v, want %v", ids, want)
	}
	if o.count(o.whoAmI, "tok-a") != 1 || o.count(o.whoAmI, "tok-b") != 0 || o.count(o.whoAmI, "tok-c") != 1 {
		t.Fatalf("WhoAmI calls a %d, b %d, c %d; want 1, 0, 1", o.count(o.whoAmI, "tok-a"), o.count(o.whoAmI, "tok-b"), o.count(o.whoAmI, "tok-c"))
	}
}

// TestBatchesShareUsers: a $batch is one request of one user, chosen like
// any other; against the sandbox's per-user request limit, three users
// carry three times the batches one could.
func TestBatchesShareUsers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tokens := map[string]string{"tok-a": "aaaaaaaa-0000-0000-0000-000000000001", "tok-b": "aaaaaaaa-0000-0000-0000-000000000002",
		"tok-c": "aaaaaaaa-0000-0000-0000-000000000003", "tok-reader": "aaaaaaaa-0000-0000-0000-000000000004"}
	srv, c := sandbox(t, crmserver.Options{Tokens: tokens, Limits: crmserver.Limits{Requests: 2, Window: time.Minute}},
		Config{Users: bearerUsers("a", "b", "c"), MaxRetryWait: time.Second})
	for i := range 6 {
		op, err := CreateOp("contacts", Record{"lastname": fmt.Sprint(i)})
		if err != nil {
			t.Fatal(err)
		}
		res, err := c.ExecuteBatch(ctx, Batch{Items: []BatchItem{{Op: &op}}})
		if err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
		if res[0].Err != nil {
			t.Fatalf("batch %d: %v", i, res[0].Err)
		}
	}
	reader, err := New(Config{URL: strings.TrimSuffix(c.Root(), APIPath), Auth: AuthBearer, Token: "tok-reader"})
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]int{}
	if err := reader.RetrieveMultiple(ctx, "contacts", Query{Select: []string{"_createdby_value"}}, func(r Record) error {
		by[r.String("_createdby_value")]++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for tok, id := range tokens {
		if want := map[bool]int{true: 0, false: 2}[tok == "tok-reader"]; by[id] != want {
			t.Errorf("%s created %d contacts, want %d (%v)", tok, by[id], want, by)
		}
	}
	if th := srv.Stats().Throttled; th != 0 {
		t.Errorf("the sandbox throttled %d requests; each user had two to spend", th)
	}

	// A seventh batch finds every user spent: the whole-batch 429 comes
	// back (the request limit's Retry-After is beyond MaxRetryWait).
	op, _ := CreateOp("contacts", Record{"lastname": "7"})
	_, err = c.ExecuteBatch(ctx, Batch{Items: []BatchItem{{Op: &op}}})
	wantClass(t, err, ClassThrottled)
	if th := srv.Stats().Throttled; th != 3 {
		t.Errorf("the sandbox throttled %d requests, want one per user before giving up", th)
	}
}

// TestThrottledBatchMovesToAnotherUser: a $batch refused with 429 as a
// whole ran nothing, so the client sends it again at once as a free user
// even for a caller that handles throttling itself (UpsertMany, the
// coalescer): that caller never sees the 429 while a user is free.
func TestThrottledBatchMovesToAnotherUser(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tokens := map[string]string{"tok-a": "aaaaaaaa-0000-0000-0000-000000000001", "tok-b": "aaaaaaaa-0000-0000-0000-000000000002",
		"tok-c": "aaaaaaaa-0000-0000-0000-000000000003"}
	srv, c := sandbox(t, crmserver.Options{Tokens: tokens, Limits: crmserver.Limits{Requests: 1, Window: time.Minute}},
		Config{Users: bearerUsers("a", "b", "c"), BatchSize: 100})
	// user a spends its one request elsewhere; the client's first request
	// goes to a all the same (nothing told it)
	req, err := http.NewRequest(http.MethodGet, c.Root()+"WhoAmI", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer tok-a")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	items := make([]UpsertItem, 10)
	for i := range items {
		items[i] = UpsertItem{Target: ByKey("contacts", "msemr_azurefhirid", fmt.Sprintf("p%d", i)), Record: Record{"lastname": "L"}}
	}
	out, err := c.UpsertMany(ctx, items)
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range out {
		if o.Err != nil {
			t.Fatalf("row %d: %v", i, o.Err)
		}
	}
	if th := srv.Stats().Throttled; th != 1 {
		t.Fatalf("the sandbox throttled %d requests, want the one batch sent as user a", th)
	}
	if c.BatchSize() != 100 {
		t.Errorf("batch size %d: UpsertMany saw the 429 and shrank", c.BatchSize())
	}
	if n := testutil.ToFloat64(c.users.list[0].m.throttled); n != 1 {
		t.Errorf("user a throttled %v times, want 1", n)
	}
}
