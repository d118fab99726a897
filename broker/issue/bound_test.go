package issue

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/decide"
	"github.com/agentictrust/atf/broker/store"
)

// A redemption gets what the approver saw, never more: the approved
// lifetime, and of an access token's scopes only the approved ones (all
// of them when it asks for none), refused when none is left.
func TestBoundByApproval(t *testing.T) {
	role := config.Role{Name: "tools-admin", Kind: config.KindJWT, Scopes: []string{"tools.admin", "tools.delete", "tools.list"}}
	plan := func(ttl time.Duration, scopes ...string) decide.Plan {
		return decide.Plan{Request: decide.Request{Role: role, TTL: ttl, Scopes: scopes}, TTL: 5 * time.Minute}
	}
	ap := store.Approval{ID: "ap", TTL: 2 * time.Minute, Scopes: []string{"tools.admin", "tools.list"}}
	for _, tt := range []struct {
		name   string
		p      decide.Plan
		want   []string
		refuse string
	}{
		{"no scope asked: the approved ones", plan(0), []string{"tools.admin", "tools.list"}, ""},
		{"fewer than approved", plan(0, "tools.list"), []string{"tools.list"}, ""},
		{"wider than approved: cut to them", plan(0, "tools.delete", "tools.list"), []string{"tools.list"}, ""},
		{"none approved", plan(0, "tools.delete"), nil, "none of which this redemption may have"},
		{"another lifetime", plan(time.Minute), nil, "was given for a lifetime"},
	} {
		got, err := boundBy(tt.p, ap)
		switch {
		case tt.refuse != "":
			if err == nil || !strings.Contains(err.Error(), tt.refuse) {
				t.Errorf("%s: %v, want a refusal saying %q", tt.name, err, tt.refuse)
			}
		case err != nil || !slices.Equal(got.Request.Scopes, tt.want) || got.TTL != 2*time.Minute:
			t.Errorf("%s: scopes %v, TTL %s, %v; want %v, 2m", tt.name, got.Request.Scopes, got.TTL, err, tt.want)
		}
	}
	// An approval of every scope (none named) binds none.
	if got, err := boundBy(plan(0, "tools.delete"), store.Approval{ID: "all"}); err != nil || !slices.Equal(got.Request.Scopes, []string{"tools.delete"}) {
		t.Errorf("an approval without scopes: %v, %v", got.Request.Scopes, err)
	}
}
