// Package store keeps the broker's state in one bbolt file: the agent
// registry with the history of every change, and a record of every issued
// credential.
//
// # Basics
//
// Open takes an exclusive lock on the file; a second process opening the same
// file fails after Options.LockTimeout with ErrLocked instead of waiting
// forever. Every method runs in one managed bbolt transaction, so a change is
// either wholly committed (and fsynced) or not at all.
//
// # Caveats
//
// Credential records hold the Vault token's accessor, never the token: an
// accessor can revoke or look up a token but not use it. Records are encoded
// as JSON so that the file can be inspected with bbolt's own tools.
package store
