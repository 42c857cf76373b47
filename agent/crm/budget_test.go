package crm

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestBudgetHeadersSetGauges: the x-ms-ratelimit-* headers Dataverse sends
// set the user's budget gauges; a user it has not reported on has no
// series, so it does not read as exhausted.
func TestBudgetHeadersSetGauges(t *testing.T) {
	t.Parallel()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer tok-a" {
			w.Header().Set(RequestsRemainingHeader, "5990")
			w.Header().Set(TimeRemainingHeader, "1,199.46")
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"UserId":"aaaaaaaa-0000-0000-0000-000000000001"}`))
	}))
	defer hs.Close()
	reg := prometheus.NewRegistry()
	c, err := New(Config{URL: hs.URL, Users: bearerUsers("a", "b"), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.UserIDs(context.Background()); err != nil { // one request per user
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(reg, "fhirsync_crm_budget_requests_remaining"); n != 1 {
		t.Errorf("%d requests-remaining series, want one (user a only)", n)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if g := m.GetGauge(); g != nil && m.GetLabel()[0].GetValue() == "a" {
				got[mf.GetName()] = g.GetValue()
			}
		}
	}
	if v := got["fhirsync_crm_budget_requests_remaining"]; v != 5990 {
		t.Errorf("requests remaining = %v, want 5990", v)
	}
	if v := got["fhirsync_crm_budget_time_remaining_seconds"]; v != 1199.46 {
		t.Errorf("time remaining = %v, want 1199.46", v)
	}
}
