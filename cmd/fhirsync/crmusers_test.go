package main

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

// TestCRMUsersFromFileAndEnvironment: crm.users comes from the YAML file,
// each entry's keys from FHIRSYNC_CRM_USERS_<n>_… (secrets from _FILE too),
// and the environment may add entries.
func TestCRMUsersFromFileAndEnvironment(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	file := write("crm.yaml", `crm:
  base_url: https://org.crm.dynamics.com
  max_concurrency: 20
  users:
    - name: sync-1
      method: client_secret
      tenant_id: 00000000-0000-0000-0000-000000000000
      client_id: 11111111-1111-1111-1111-111111111111
    - method: client_secret
      tenant_id: 00000000-0000-0000-0000-000000000000
      client_id: 22222222-2222-2222-2222-222222222222
      client_secret: from-the-file
`)
	secret := write("secret", "first-secret\n")
	token := write("token", "third-token\n")
	cfg, err := loadConfig(file, envFrom(map[string]string{
		"FHIRSYNC_CRM_USERS_0_CLIENT_SECRET_FILE": secret,
		"FHIRSYNC_CRM_USERS_2_METHOD":             "bearer",
		"FHIRSYNC_CRM_USERS_2_TOKEN_FILE":         token,
		"FHIRSYNC_CRM_USERS_2_USER_ID":            "33333333-3333-3333-3333-333333333333",
	}))
	if err != nil {
		t.Fatal(err)
	}
	u := cfg.CRM.Users
	if len(u) != 3 || u[0].ClientSecret != "first-secret" || u[1].ClientSecret != "from-the-file" ||
		u[2].Method != "bearer" || u[2].Token != "third-token" || u[2].UserID == "" || cfg.CRM.MaxConcurrency != 20 {
		t.Fatalf("crm = %+v", cfg.CRM)
	}
	c, err := crm.New(crmConfig(cfg.CRM, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.UserLabels(), ","); got != "sync-1,22222222-2222-2222-2222-222222222222,user3" {
		t.Fatalf("labels %s", got)
	}
	// an entry past a gap is not read
	cfg, err = loadConfig("", envFrom(map[string]string{"FHIRSYNC_CRM_USERS_1_METHOD": "bearer"}))
	if err != nil || len(cfg.CRM.Users) != 0 {
		t.Fatalf("users %+v, %v", cfg.CRM.Users, err)
	}
}

func TestCRMUsersValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{name: "users and auth", env: map[string]string{"FHIRSYNC_CRM_AUTH_METHOD": "bearer", "FHIRSYNC_CRM_AUTH_TOKEN": "t",
			"FHIRSYNC_CRM_USERS_0_METHOD": "bearer", "FHIRSYNC_CRM_USERS_0_TOKEN": "u"}, wantErr: "crm.auth: set crm.auth or crm.users, not both"},
		{name: "a user without method", env: map[string]string{"FHIRSYNC_CRM_USERS_0_NAME": "a"}, wantErr: "crm.users[0].method: required"},
		{name: "a user's credential", env: map[string]string{"FHIRSYNC_CRM_USERS_0_METHOD": "client_secret"},
			wantErr: "crm.users[0]: client_secret needs tenant_id"},
		{name: "one label twice", env: map[string]string{"FHIRSYNC_CRM_USERS_0_METHOD": "bearer", "FHIRSYNC_CRM_USERS_0_TOKEN": "a", "FHIRSYNC_CRM_USERS_0_NAME": "x",
			"FHIRSYNC_CRM_USERS_1_METHOD": "bearer", "FHIRSYNC_CRM_USERS_1_TOKEN": "b", "FHIRSYNC_CRM_USERS_1_NAME": "x"}, wantErr: `crm.users[1].name: "x" labels another user`},
		{name: "one agent user id for several", env: map[string]string{"FHIRSYNC_AGENT_CRM_USER_ID": "33333333-3333-3333-3333-333333333333",
			"FHIRSYNC_CRM_USERS_0_METHOD": "bearer", "FHIRSYNC_CRM_USERS_0_TOKEN": "a", "FHIRSYNC_CRM_USERS_1_METHOD": "bearer", "FHIRSYNC_CRM_USERS_1_TOKEN": "b"},
			wantErr: "agent.crm_user_id: names one user"},
		{name: "concurrency over the limit", env: map[string]string{"FHIRSYNC_CRM_MAX_CONCURRENCY": "53"}, wantErr: "crm.max_concurrency: must be between 1 and 52"},
		{name: "negative concurrency", env: map[string]string{"FHIRSYNC_CRM_MAX_CONCURRENCY": "-1"}, wantErr: "crm.max_concurrency"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := loadConfig("", envFrom(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			for k, v := range tt.env {
				if strings.HasSuffix(k, "_TOKEN") && strings.Contains(err.Error(), "\""+v+"\"") {
					t.Errorf("the error quotes a token: %v", err)
				}
			}
		})
	}
}

// TestCRMAuthIsOneUser: crm.auth alone still configures the client, as its
// only user; with crm.users every user's id comes back from the CRM and
// each has its metrics under its label.
func TestCRMAuthIsOneUser(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, err := crmserver.New(crmserver.Options{Tokens: map[string]string{"t1": "aaaaaaaa-0000-0000-0000-000000000001",
		"t2": "aaaaaaaa-0000-0000-0000-000000000002", "t3": "aaaaaaaa-0000-0000-0000-000000000003"}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)

	one, err := crm.New(crmConfig(CRMConfig{BaseURL: hs.URL, Auth: CredentialConfig{Method: "bearer", Token: "t2"}}, nil))
	if err != nil {
		t.Fatal(err)
	}
	if ids, err := one.UserIDs(ctx); err != nil || strings.Join(ids, ",") != "aaaaaaaa-0000-0000-0000-000000000002" {
		t.Fatalf("crm.auth: ids %v, %v", ids, err)
	}

	reg := prometheus.NewRegistry()
	three, err := crm.New(crmConfig(CRMConfig{BaseURL: hs.URL, Users: []CRMUserConfig{{Name: "a", Method: "bearer", Token: "t1"},
		{Name: "b", Method: "bearer", Token: "t2"}, {Name: "c", Method: "bearer", Token: "t3"}}}, reg))
	if err != nil {
		t.Fatal(err)
	}
	ids, err := three.UserIDs(ctx)
	if err != nil || strings.Join(ids, ",") != "aaaaaaaa-0000-0000-0000-000000000001,aaaaaaaa-0000-0000-0000-000000000002,aaaaaaaa-0000-0000-0000-000000000003" {
		t.Fatalf("crm.users: ids %v, %v", ids, err)
	}
	if n := testutil.CollectAndCount(reg, "fhirsync_crm_requests_total"); n != 3 {
		t.Fatalf("%d request series, want one per user", n)
	}
	got, err := testutil.GatherAndCount(reg, "fhirsync_crm_concurrency_limit")
	if err != nil || got != 3 {
		t.Fatalf("%d concurrency-limit series, %v", got, err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.HasPrefix(l.GetValue(), "t") {
					t.Errorf("%s carries a token as label %s", mf.GetName(), l.GetValue())
				}
			}
		}
	}
}
