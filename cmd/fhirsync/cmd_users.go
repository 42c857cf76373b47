package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/fhirsync/fhirsync/admin"
)

// usersActor names the command line in the audit trail.
const usersActor = "cli"

func runUsers(ctx context.Context, e *env, args []string) error {
	subs := map[string]func(context.Context, *env, *admin.Users, []string) error{
		"create":   usersCreate,
		"list":     usersList,
		"set-role": usersSetRole,
		"set-phi":  usersSetPHI,
		"disable": func(ctx context.Context, e *env, u *admin.Users, a []string) error {
			return usersSetDisabled(ctx, e, u, a, true)
		},
		"enable": func(ctx context.Context, e *env, u *admin.Users, a []string) error {
			return usersSetDisabled(ctx, e, u, a, false)
		},
		"reset-password": usersResetPassword,
	}
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" {
		fmt.Fprint(e.stdout, `Usage: fhirsync users <command> [flags]

Manage admin app accounts. Every change is recorded in the audit trail.

Commands:
  create --email E --role R [--name N] [--phi] [--password-file F]
  list
  set-role EMAIL ROLE          roles: admin, editor, operator, auditor, viewer
  set-phi EMAIL true|false     grant or withdraw the PHI permission
  disable EMAIL                also ends the user's sessions
  enable EMAIL
  reset-password EMAIL [--password-file F]

Without --password-file a one-time password is generated and printed once;
it must be changed at first sign-in. --password-file - reads standard input.
`)
		if len(args) == 0 {
			return usageErrorf("users needs a command (see fhirsync users --help)")
		}
		return nil
	}
	sub, ok := subs[args[0]]
	if !ok {
		return usageErrorf("unknown users command %q (see fhirsync users --help)", args[0])
	}
	defer e.close()
	db, err := e.openDB(ctx)
	if err != nil {
		return err
	}
	users, err := admin.NewUsers(db)
	if err != nil {
		return err
	}
	return sub(ctx, e, users, args[1:])
}

// passwordFrom reads a password file ("-" is standard input), or makes a
// one-time password when path is empty.
func passwordFrom(path string) (pw string, oneTime bool, err error) {
	if path == "" {
		return rand.Text(), true, nil
	}
	var b []byte
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, 4096))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return "", false, fmt.Errorf("reading the password: %w", err)
	}
	return strings.TrimRight(string(b), "\r\n"), false, nil
}

func usersCreate(ctx context.Context, e *env, users *admin.Users, args []string) error {
	fs := e.newFlagSet("users create", "users create --email E --role R [--name N] [--phi] [--password-file F]",
		"Create a local account. Without --password-file a one-time password is printed once.")
	email := fs.String("email", "", "the user's email, used to sign in (required)")
	role := fs.String("role", "", "admin, editor, operator, auditor or viewer (required)")
	name := fs.String("name", "", "display name")
	phi := fs.Bool("phi", false, "grant the PHI permission")
	pwFile := fs.String("password-file", "", "read the password from `file` (- for standard input)")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if *email == "" || *role == "" || fs.NArg() > 0 {
		return usageErrorf("users create needs --email and --role and no arguments")
	}
	r, err := admin.ParseRole(*role)
	if err != nil {
		return usageErrorf("users create: %v", err)
	}
	pw, oneTime, err := passwordFrom(*pwFile)
	if err != nil {
		return err
	}
	u, err := users.Create(ctx, usersActor, admin.NewUser{Email: *email, Name: *name, Role: r, PHI: *phi,
		Password: pw, MustChangePassword: oneTime})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "created %s (%s, id %d)\n", u.Email, u.Role, u.ID)
	if oneTime {
		fmt.Fprintf(e.stdout, "one-time password: %s\n(it must be changed at first sign-in)\n", pw)
	}
	return nil
}

func usersList(ctx context.Context, e *env, users *admin.Users, args []string) error {
	if len(args) > 0 {
		return usageErrorf("users list takes no arguments")
	}
	list, err := users.List(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tEMAIL\tROLE\tPHI\tSTATUS\tSIGN-IN\tLAST SIGN-IN")
	for _, u := range list {
		status, signIn, last := "active", "password", "never"
		if u.Disabled {
			status = "disabled"
		}
		if !u.Local {
			signIn = "oidc"
		}
		if u.LastLoginAt != nil {
			last = u.LastLoginAt.Format("2006-01-02 15:04Z")
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%t\t%s\t%s\t%s\n", u.ID, u.Email, u.Role, u.PHI, status, signIn, last)
	}
	return tw.Flush()
}

// userArg resolves the EMAIL argument of a subcommand.
func userArg(ctx context.Context, users *admin.Users, cmd string, args []string, n int) (admin.User, error) {
	if len(args) != n {
		return admin.User{}, usageErrorf("users %s takes %d argument(s) (see fhirsync users --help)", cmd, n)
	}
	return users.ByEmail(ctx, args[0])
}

func usersSetRole(ctx context.Context, e *env, users *admin.Users, args []string) error {
	u, err := userArg(ctx, users, "set-role", args, 2)
	if err != nil {
		return err
	}
	r, err := admin.ParseRole(args[1])
	if err != nil {
		return usageErrorf("users set-role: %v", err)
	}
	if err := users.SetRole(ctx, usersActor, u.ID, r); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s is now %s\n", u.Email, r)
	return nil
}

func usersSetPHI(ctx context.Context, e *env, users *admin.Users, args []string) error {
	u, err := userArg(ctx, users, "set-phi", args, 2)
	if err != nil {
		return err
	}
	phi, err := strconv.ParseBool(args[1])
	if err != nil {
		return usageErrorf("users set-phi: %q is not true or false", args[1])
	}
	if err := users.SetPHI(ctx, usersActor, u.ID, phi); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s PHI permission: %t\n", u.Email, phi)
	return nil
}

func usersSetDisabled(ctx context.Context, e *env, users *admin.Users, args []string, disabled bool) error {
	cmd := "enable"
	if disabled {
		cmd = "disable"
	}
	u, err := userArg(ctx, users, cmd, args, 1)
	if err != nil {
		return err
	}
	if err := users.SetDisabled(ctx, usersActor, u.ID, disabled); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s %sd\n", u.Email, cmd)
	return nil
}

func usersResetPassword(ctx context.Context, e *env, users *admin.Users, args []string) error {
	fs := e.newFlagSet("users reset-password", "users reset-password EMAIL [--password-file F]",
		"Set a new password and end the user's sessions. Without --password-file a one-time password is printed once.")
	pwFile := fs.String("password-file", "", "read the password from `file` (- for standard input)")
	var email string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		email, args = args[0], args[1:]
	}
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if email == "" && fs.NArg() == 1 {
		email = fs.Arg(0)
	} else if email == "" || fs.NArg() > 0 {
		return usageErrorf("users reset-password takes one EMAIL (see fhirsync users --help)")
	}
	u, err := users.ByEmail(ctx, email)
	if err != nil {
		return err
	}
	pw, oneTime, err := passwordFrom(*pwFile)
	if err != nil {
		return err
	}
	if err := users.SetPassword(ctx, usersActor, u.ID, pw, oneTime); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "password of %s reset; sessions ended\n", u.Email)
	if oneTime {
		fmt.Fprintf(e.stdout, "one-time password: %s\n(it must be changed at first sign-in)\n", pw)
	}
	return nil
}
