package issue

import (
	"errors"
	"fmt"
	"testing"

	"github.com/agentictrust/atf/broker/decide"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/store/kv"
)

// A batch token Vault did not make voids its record unless the store
// refused the record (then it is absent, or kept as refused): a store
// that did not answer may have committed it, so it is voided then too.
func TestRefusedByStore(t *testing.T) {
	for _, c := range []struct {
		err     error
		refused bool
	}{
		{fault.New(fault.Denied, "the lineage this credential belongs to was revoked"), true},
		{decide.Limit(decide.Reasons{}, fault.Limited("live_per_agent", 0, "limit")), true},
		{fmt.Errorf("store: record credential: %w", kv.ErrEtcd), false},
		{fmt.Errorf("store: record credential: %w", store.ErrFull), false},
		{errors.New("anything else"), false},
		{nil, false},
	} {
		if got := refusedByStore(c.err); got != c.refused {
			t.Errorf("refusedByStore(%v) = %t, want %t", c.err, got, c.refused)
		}
	}
}
