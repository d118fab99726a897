package store_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/delegation"
)

// A credential decided under one policy version is refused, and queued for
// revocation, if a newer version was committed before it was recorded: the
// change's revocation of what the new version forbids could not have seen
// it (docs/security.md, "A policy change").
func TestRecordCredentialRefusesAnOlderPolicy(t *testing.T) {
	s, _ := open(t)
	const id = "spiffe://td/agent/a"
	mustRegister(t, s, id, "alice")
	v1, err := s.PutPolicy(store.PolicyVersion{Author: "alice", Comment: "first", Model: "m", Policy: "p"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	fresh := credential(id, "acc-fresh")
	fresh.PolicyVersion = v1.Version
	mustRecord(t, s, fresh)

	v2, rev, err := s.CommitPolicy(store.PolicyVersion{Author: "alice", Comment: "second", Model: "m", Policy: "p2"}, 0, keepAll{})
	if err != nil || v2.Version != 2 || rev.CredentialCount() != 0 {
		t.Fatalf("CommitPolicy = %v, %d revoked, %v; want version 2 revoking nothing", v2, rev.CredentialCount(), err)
	}
	stale := credential(id, "acc-stale")
	stale.PolicyVersion = v1.Version
	err = s.RecordCredential(stale)
	if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "policy changed (version 2, decided under 1)") {
		t.Fatalf("RecordCredential(stale) = %v, want ErrConflict naming both versions", err)
	}
	pending, err := s.PendingRevocations()
	if err != nil || !slices.Contains(pending, "acc-stale") || slices.Contains(pending, "acc-fresh") {
		t.Fatalf("pending revocations = %v, %v; want the stale credential only", pending, err)
	}
}

// keepAll is a PolicyJudge that revokes nothing.
type keepAll struct{}

func (keepAll) KeepGrant(delegation.Grant, store.Reader) (bool, error)      { return true, nil }
func (keepAll) KeepCredential(store.Credential, store.Reader) (bool, error) { return true, nil }
