// Package storage owns the project database: opening it (SQLite by default,
// PostgreSQL from a URL), the versioned schema migrations embedded in the
// binary, and the readiness check that says the schema is current.
//
// It does not own any table's meaning. Each domain package (maps, queues,
// logs, agent, admin) owns its tables and ships their DDL as a numbered file
// in migrations/; storage only applies them in order and records each one in
// schema_migrations.
//
// Migration files are named NNNN_name.sql and apply to both dialects, or
// NNNN_name.sqlite.sql / NNNN_name.postgres.sql when the dialects differ. A
// released migration is never edited; a change is a new, higher number.
package storage
