// Package failpoint names the points in issuance and revocation where a
// crash is most dangerous, so that tests can crash atfd exactly there.
//
// In normal builds Hit does nothing and compiles away. Built with the tag
// failpoints (go build -tags failpoints), Hit kills the process with
// SIGKILL when its name is in $ATF_FAILPOINT: no deferred call, no flush,
// no clean stop, like a power cut.
package failpoint

// The failpoints, in the order a request meets them.
const (
	// AnchorAfterVault: Vault created an anchor; the store has not
	// recorded it.
	AnchorAfterVault = "anchor-after-vault"
	// IssueAfterVault: Vault issued a credential; the store has not
	// recorded it and the agent has not received it.
	IssueAfterVault = "issue-after-vault"
	// RecordBeforeCommit: the agent was answered (Delayed gives the answer
	// time to arrive); the transaction holding its credential's record has
	// not committed.
	RecordBeforeCommit = "record-before-commit"
	// IssueAfterRecord: the store recorded the credential; the agent has
	// not received it.
	IssueAfterRecord = "issue-after-record"
	// RevokeAfterCommit: the store committed a revocation; Vault has not
	// been told.
	RevokeAfterCommit = "revoke-after-commit"
	// RevokeMidLineage: Vault revoked the first token of a revocation; the
	// rest are still queued.
	RevokeMidLineage = "revoke-mid-lineage"
)
