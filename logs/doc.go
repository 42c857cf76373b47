// Package logs is the sync log: the decision every message ends in
// (DESIGN.md §4, §5), the closed registry of reason codes, the queries the
// admin app and auditors run, export, retention, opt-in encrypted payload
// capture, and the audit trail.
//
// It owns the tables sync_decisions, sync_decision_keys,
// sync_decision_captures and audit_trail (migration 0004), and
// held_conflicts (migration 0012). It does not own
// process logging (slog is for operators, not auditors), the decision of
// which outcome a message gets (package agent builds the Decision value),
// users and roles (the admin app passes a Principal), or metrics about
// decisions per outcome (the agent counts those as it decides).
//
// # Using it
//
//	store, err := logs.New(db, cfg, registerer)   // one per process
//	err = store.Write(ctx, &logs.Decision{          // or WriteBatch
//		MessageID: m.ID, Direction: logs.FHIRToCRM,
//		EntityMap: "patient-contact", MapVersion: 3,
//		Source: logs.Ref{Type: "Patient", ID: "p1", Version: "7"},
//		Target: logs.Ref{Type: "contact", ID: "c1"},
//		BusinessKeys: []logs.BusinessKey{{Name: "mrn", Value: mrn}},
//		Outcome: logs.OutcomeSent, Reason: logs.ReasonUpdated,
//		Message: "Updated 2 field(s) of contact c1.", ChangedFields: []string{"firstname", "birthdate"},
//	})
//	page, err := store.Search(ctx, logs.Filter{Record: "p1"}, "", 50) // a record's timeline
//	page, err = store.Search(ctx, logs.Filter{Outcome: logs.OutcomeFailed}, page.Next, 50)
//	counts, err := store.Counts(ctx, logs.Filter{From: dayAgo}, time.Hour)
//	go store.RunRetention(ctx)
//
// A decision with an unregistered reason code, or a code its outcome does
// not allow, is refused by Write (ErrInvalidDecision) and, should it get
// past Go, by the schema's CHECK constraint.
//
// # No PHI by default
//
// A decision stores references (type, id, version), codes, field names,
// error classes, counts and one human sentence that its writer must keep
// free of PHI. It never stores a field value of a resource.
//
// Business keys such as an MRN are identifiers, and so PHI. They are
// stored only as HMAC-SHA256(secret, name || 0x00 || value) with the
// secret from logs.key_secret, which lives in the configuration and not in
// the database: a database copy alone cannot be used to test guesses of
// an MRN, while Search can still find a record's timeline from a key the
// user types in. Decisions read back carry the key names, never values.
// Without a secret, business keys are not recorded at all. Changing the
// secret makes earlier decisions unfindable by business key (they remain
// findable by record id).
//
// # Payload capture
//
// Off by default. When on, Decision.Snapshots (the source and target
// payloads) are sealed with AES-256-GCM under logs.capture.key (base64 of
// 32 bytes) and stored beside the decision with logs.capture.key_id and a
// short key fingerprint. The GCM additional data binds each
// ciphertext to its decision id and part, so a ciphertext moved to another
// row is refused. Keys are rotated by moving the current key to
// logs.capture.old_keys under its id, and setting a new key and key_id;
// old keys only open captures, and can go once their captures expired.
// Reading a capture goes through ReadCapture, which requires Principal.CanViewPHI,
// writes an audit entry for every attempt (allowed or refused), and tells
// apart a key that is not configured (ErrUnknownKey), a configured key
// that is not the sealing key (ErrWrongKey), and altered bytes
// (ErrTampered). Captures have their own, shorter retention.
//
// # Conflicts
//
// A decision's Conflicts name the attributes changed on both sides and how
// the decision settled each (the policy, the side overwritten, held or
// deferred); never a value. Outcome held with reason conflict_held or
// delete_held means part of the change waits for a person. The agent
// records what waits with HoldTx, in the transaction that writes the
// decision: one pending row per entity map, FHIR id and attribute ("" for a
// delete met by an edit), holding each side's keyed value hash and whether
// each side changed since the last sync. The values themselves are kept
// only when a payload capture key is configured, sealed like captures and
// bound to the row and side; ConflictValues opens them under the same
// rules as ReadCapture (PHI permission, audit entry for every read). A
// person resolves an open conflict with ResolveConflict (audited); the
// agent picks up ResolvedConflicts, writes the chosen side and marks the
// row applied with SettleConflictTx, which drops the sealed values. A
// conflict held again after its values changed goes back to open.
//
// # Queries
//
// Every list is ordered newest first by (decided_at, id) and paginated by
// an opaque keyset cursor, which each filter's index serves directly: a
// deep page costs what the first does, on millions of rows.
//
// # Retention
//
// RunRetention prunes on a cron schedule (robfig/cron, UTC), holding the
// database lease "logs:retention" so one process among several runs it.
// Deletes go in bounded batches, each its own statement. Metrics:
// fhirsync_logs_retention_runs_total{result}, _deleted_total{kind},
// _duration_seconds and _last_success_timestamp_seconds.
//
// # Audit trail
//
// AppendAudit records who did what to which object, when, with a
// before/after summary. There is no update or delete; on both dialects
// database triggers refuse them too. Audit lists and ExportAudit serve
// auditors.
package logs
