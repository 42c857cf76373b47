// Package admin owns the web admin app and its JSON API (maps, sync logs,
// dead letters, users, audit trail) and the operational endpoints served on
// the same listener: /healthz (the process is up), /readyz (the database
// answers and its schema is current) and /metrics (Prometheus text).
//
// It does not own the data it shows: maps, logs and queues own their stores
// and admin reads them through the small interfaces it declares.
package admin
