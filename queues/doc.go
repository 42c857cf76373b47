// Package queues owns the queue contract every transport implements, the
// change-notice envelope that travels on it, and the contract test suite
// (queues/queuetest). Implementations live in subpackages: queues/embedded
// (the project database, SQLite or PostgreSQL) and queues/servicebus (Azure
// Service Bus through azservicebus and azidentity).
//
// It does not own what a notice means to the sync pipeline; that is agent's.
// Bodies are change notices (DESIGN.md §1), never resources.
package queues
