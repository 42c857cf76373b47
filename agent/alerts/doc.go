// Package alerts watches a running fhirsync and tells people when it needs
// them: rules (dead-letter rate, lag above a threshold, authentication
// failures, CRM budget exhausted, a feed that stopped) set in the
// configuration file or in the admin app, evaluated periodically by one
// process among replicas (a database lease), delivered once when a rule
// starts firing and once when it resolves, by webhook, as JSON that Slack
// and Microsoft Teams incoming webhooks accept.
//
// It also owns the operational signals the rules and the dashboard share:
// the age of the oldest unprocessed change per feed (read from the
// embedded queue), when each feed last polled, and what the CRM users
// have left of their service-protection budget (read from the process's
// metrics, which the CRM client sets from Dataverse's x-ms-ratelimit-*
// headers).
//
// Alerts never carry patient data: a summary names a rule, a count, a
// feed (origin and resource type) or a CRM user label, never a record.
// It does not own the sync log (package logs) or the queues.
package alerts
