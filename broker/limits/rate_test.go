package limits

import (
	"testing"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/config"
)

// allowed is how many requests agent gets at once.
func allowed(r *Rate, agent string) int {
	n := 0
	for r.Allow(agent, authz.Intern) == nil {
		n++
	}
	return n
}

// A rate shared by replicas: each allows its share of the burst and of
// the rate, buckets already made included, and the whole again once
// alone.
func TestRateShare(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { return now }
	r := NewRate(map[string]config.RateLimit{"intern": {PerSecond: 6, Burst: 6}}, clock)
	if n := allowed(r, "old"); n != 6 {
		t.Fatalf("alone: %d at once, want the burst of 6", n)
	}
	r.Share(3)
	if n := allowed(r, "new"); n != 2 {
		t.Fatalf("shared by 3: %d at once, want 2", n)
	}
	now = now.Add(time.Second)
	for _, agent := range []string{"old", "new"} {
		if n := allowed(r, agent); n != 2 {
			t.Errorf("shared by 3, a second later: %s got %d, want 2 (6/s split three ways)", agent, n)
		}
	}
	r.Share(1)
	now = now.Add(time.Second)
	if n := allowed(r, "new"); n != 6 {
		t.Errorf("alone again, a second later: %d, want 6", n)
	}
	r.Share(10)
	now = now.Add(10 * time.Second)
	if n := allowed(r, "new"); n != 1 {
		t.Errorf("shared by more replicas than the burst: %d at once, want at least one each", n)
	}
}
