package admin

import (
	"errors"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func TestPasswordHash(t *testing.T) {
	t.Parallel()
	strong := argonParams{memoryKiB: 128, time: 2, threads: 2}
	h := hashPassword("a long enough password", testArgon)
	h2 := hashPassword("a long enough password", strong)
	if !strings.HasPrefix(h, "$argon2id$v=19$m=64,t=1,p=1$") || !strings.HasPrefix(h2, "$argon2id$v=19$m=128,t=2,p=2$") {
		t.Fatalf("hashes do not carry their parameters: %s, %s", h, h2)
	}
	if h == hashPassword("a long enough password", testArgon) {
		t.Error("two hashes of one password are equal; the salt is not random")
	}
	tests := []struct {
		name    string
		hash    string
		pw      string
		want    bool
		wantErr bool
	}{
		{name: "right", hash: h, pw: "a long enough password", want: true},
		{name: "right, other parameters", hash: h2, pw: "a long enough password", want: true},
		{name: "wrong", hash: h, pw: "a long enough passwore"},
		{name: "empty", hash: h, pw: ""},
		{name: "bcrypt is not argon2id", hash: "$2a$10$abcdefghijklmnopqrstuv", pw: "x", wantErr: true},
		{name: "truncated", hash: h[:30], pw: "x", wantErr: true},
		{name: "absurd memory", hash: strings.Replace(h, "m=64", "m=99999999", 1), pw: "x", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := verifyPassword(tt.hash, tt.pw)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("verify = %t, %v; want %t, error %t", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestUsersStore(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		us, err := NewUsers(db)
		if err != nil {
			t.Fatal(err)
		}
		us.argon = testArgon
		ctx := t.Context()
		first, err := us.Create(ctx, "cli", NewUser{Email: "Root@Example.org", Role: RoleAdmin, Password: testPassword})
		if err != nil || first.Email != "root@example.org" || !first.Local {
			t.Fatalf("Create = %+v, %v", first, err)
		}

		creates := []struct {
			name    string
			in      NewUser
			wantErr error
		}{
			{name: "viewer without password", in: NewUser{Email: "v@example.org", Role: RoleViewer}},
			{name: "same email, other case", in: NewUser{Email: "ROOT@example.org", Role: RoleViewer}, wantErr: ErrEmailTaken},
			{name: "not an email", in: NewUser{Email: "root", Role: RoleViewer}, wantErr: ErrInvalidUser},
			{name: "display name form", in: NewUser{Email: "Root <r@example.org>", Role: RoleViewer}, wantErr: ErrInvalidUser},
			{name: "unknown role", in: NewUser{Email: "x@example.org", Role: "owner"}, wantErr: ErrInvalidUser},
			{name: "short password", in: NewUser{Email: "y@example.org", Role: RoleViewer, Password: "short"}, wantErr: ErrInvalidUser},
		}
		for _, tt := range creates {
			t.Run(tt.name, func(t *testing.T) {
				_, err := us.Create(ctx, "cli", tt.in)
				if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
					t.Errorf("Create = %v, want %v", err, tt.wantErr)
				}
			})
		}

		// The last enabled admin stays.
		if err := us.SetRole(ctx, "cli", first.ID, RoleViewer); !errors.Is(err, ErrLastAdmin) {
			t.Errorf("demoting the last admin: %v, want ErrLastAdmin", err)
		}
		if err := us.SetDisabled(ctx, "cli", first.ID, true); !errors.Is(err, ErrLastAdmin) {
			t.Errorf("disabling the last admin: %v, want ErrLastAdmin", err)
		}
		second, _ := us.Create(ctx, "cli", NewUser{Email: "two@example.org", Role: RoleAdmin})
		if err := us.SetRole(ctx, "cli", first.ID, RoleViewer); err != nil {
			t.Errorf("demoting one of two admins: %v", err)
		}
		if err := us.SetRole(ctx, "cli", 424242, RoleViewer); !errors.Is(err, ErrUserNotFound) {
			t.Errorf("unknown id: %v, want ErrUserNotFound", err)
		}
		if err := us.SetPassword(ctx, "cli", second.ID, "short", false); !errors.Is(err, ErrInvalidUser) {
			t.Errorf("short password: %v", err)
		}

		// The schema refuses what the store would never write.
		bad := []struct {
			name string
			sql  string
		}{
			{"unknown role", "INSERT INTO admin_users (email, role, created_at, updated_at) VALUES ('q@example.org', 'owner', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"},
			{"upper-case email", "INSERT INTO admin_users (email, role, created_at, updated_at) VALUES ('Q@example.org', 'viewer', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"},
		}
		for _, b := range bad {
			if err := db.Exec(b.sql).Error; err == nil {
				t.Errorf("schema accepted %s", b.name)
			}
		}

		p, err := us.audit.Audit(ctx, logsFilterObject("user"), "", 100)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range p.Entries {
			got = append(got, e.Actor+" "+e.Action+" "+e.After)
		}
		joined := strings.Join(got, "\n")
		for _, want := range []string{"cli user.create role admin, phi false", "cli user.role role viewer"} {
			if !strings.Contains(joined, want) {
				t.Errorf("audit trail lacks %q:\n%s", want, joined)
			}
		}
		if strings.Count(joined, "user.role") != 1 {
			t.Errorf("refused changes reached the audit trail:\n%s", joined)
		}
	})
}
