package agentapi

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/decide"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/metrics"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/vault"
)

// A refusal is audited before the caller hears it; when the audit record
// cannot be written (here: the real store, closed), the caller is told the
// broker is unavailable instead of being refused silently. The path where
// the record is written is covered by every refusal test against the real
// stack (package broker).
func TestRefusalNotAuditedIsUnavailable(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "atf.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{Store: st, Metrics: metrics.New(metrics.State{
		LiveCredentials:    func() int { return 0 },
		PendingRevocations: func() (int, error) { return 0, nil },
		PolicyVersion:      func() uint64 { return 0 },
		Vault:              func() vault.Stats { return vault.Stats{} },
		GlobalKill:         func() bool { return false },
		LeadingQueue:       func() bool { return true },
		Replicas:           func() int { return 1 },
	})})
	r := decide.Request{Caller: "spiffe://td/agent", Role: config.Role{Name: "reports-read"}}
	ref := decide.Deny(decide.NewReasons("d-1", "r-1", r), authz.Decision{Reason: authz.NotRegistered, Message: "not registered"})

	if err := s.refuse(t.Context(), r, ref, false); err != ref {
		t.Fatalf("refuse with a working store = %v, want the refusal itself", err)
	}
	recs, _, err := st.QueryAudit(store.AuditFilter{Kind: "credential_denied"}, 0, 10)
	if err != nil || len(recs) != 1 || recs[0].Detail["decision_id"] != "d-1" || recs[0].Actor != r.Caller {
		t.Fatalf("audit after the refusal: %v, %v; want one credential_denied record of decision d-1", recs, err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	err = s.refuse(t.Context(), r, ref, false)
	if k, ok := fault.KindOf(err); !ok || k != fault.Unavailable || errors.Is(err, ref) ||
		!strings.Contains(err.Error(), "could not record its decision d-1") {
		t.Fatalf("refuse with the audit trail unwritable = %v (kind %v), want Unavailable naming the decision", err, k)
	}
}
