-- Admin app: user accounts, server-side sessions, sign-in throttling and
-- pending OIDC sign-ins. Session ids and OIDC states are stored hashed.
CREATE TABLE admin_users (
	id                   INTEGER PRIMARY KEY AUTOINCREMENT,
	email                TEXT NOT NULL CHECK (email <> '' AND email = lower(email)),
	name                 TEXT NOT NULL DEFAULT '',
	role                 TEXT NOT NULL CHECK (role IN ('admin', 'editor', 'operator', 'auditor', 'viewer')),
	phi                  BOOLEAN NOT NULL DEFAULT FALSE,
	disabled             BOOLEAN NOT NULL DEFAULT FALSE,
	password_hash        TEXT NOT NULL DEFAULT '',
	must_change_password BOOLEAN NOT NULL DEFAULT FALSE,
	oidc_subject         TEXT,
	created_at           TIMESTAMP NOT NULL,
	updated_at           TIMESTAMP NOT NULL,
	last_login_at        TIMESTAMP
);

CREATE UNIQUE INDEX admin_users_email ON admin_users (email);
CREATE UNIQUE INDEX admin_users_oidc_subject ON admin_users (oidc_subject);

CREATE TABLE admin_sessions (
	id_hash      TEXT PRIMARY KEY,
	user_id      INTEGER NOT NULL REFERENCES admin_users (id) ON DELETE CASCADE,
	created_at   TIMESTAMP NOT NULL,
	last_seen_at TIMESTAMP NOT NULL,
	expires_at   TIMESTAMP NOT NULL
);

CREATE INDEX admin_sessions_user ON admin_sessions (user_id);
CREATE INDEX admin_sessions_expires ON admin_sessions (expires_at);

-- One row per throttled key: "account:<email>" or "ip:<address>".
CREATE TABLE admin_login_throttle (
	throttle_key    TEXT PRIMARY KEY,
	failures        INTEGER NOT NULL CHECK (failures >= 0),
	last_failure_at TIMESTAMP NOT NULL,
	locked_until    TIMESTAMP NOT NULL
);

CREATE TABLE admin_oidc_flows (
	state_hash TEXT PRIMARY KEY,
	nonce      TEXT NOT NULL,
	verifier   TEXT NOT NULL,
	return_to  TEXT NOT NULL DEFAULT '',
	expires_at TIMESTAMP NOT NULL
);

CREATE INDEX admin_oidc_flows_expires ON admin_oidc_flows (expires_at);
