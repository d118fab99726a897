// Package store keeps the broker's state in one bbolt file (Open) or in
// etcd for several replicas (OpenEtcd): the agent registry with the
// history of every change, a record of every issued credential, and the
// hash-chained audit trail. Its code is written against the storage engine
// of package kv, so both hold the same records under the same rules;
// MigrateToEtcd moves a file's store into etcd and proves the copy equal.
//
// # Basics
//
// Open takes an exclusive lock on the file; a second process opening the same
// file fails after Options.LockTimeout with ErrLocked instead of waiting
// forever. Every method runs in one managed bbolt transaction, so a change is
// either wholly committed (and fsynced) or not at all. A method that makes
// an audited change (to an agent, a grant, a credential, an approval request
// or decision, an incident, an outcome count, the policy, the kill switch)
// appends its audit record in that same transaction, so the trail never
// misses a committed change nor records one that rolled back. AppendAudit
// is for what changes nothing here: refused decisions, anomalies, work done
// elsewhere.
//
// # Caveats
//
// Credential records hold the Vault token's accessor, never the token: an
// accessor can revoke or look up a token but not use it. Records are encoded
// as JSON so that the file can be inspected with bbolt's own tools.
package store
