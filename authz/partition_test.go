package authz

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
)

// The partitioned evaluation must decide exactly as Casbin does over the
// whole policy: random policies with groups, nested groups, member patterns,
// deny lines and every class, level and classification, against random
// requests.
func TestPartitionAgreesWithCasbin(t *testing.T) {
	modelText, err := os.ReadFile("../deploy/policy/model.conf")
	if err != nil {
		t.Fatal(err)
	}
	outcomes := map[string]int{}
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 7))
		text := randomPolicy(r)
		p, err := NewPolicy(1, string(modelText), text)
		if err != nil {
			t.Fatalf("seed %d: %v\n%s", seed, err, text)
		}
		if p.part == nil {
			t.Fatal("the default model is not partitioned")
		}
		for range 300 {
			q := Query{
				Subject:        fmt.Sprintf("spiffe://td/agents/t%d/a%d", r.IntN(3), r.IntN(8)),
				Role:           fmt.Sprintf("kv/t%d/r%d", r.IntN(3), r.IntN(3)),
				Class:          Class(1 + r.IntN(3)),
				Level:          Level(1 + r.IntN(4)),
				Classification: Classification(1 + r.IntN(4)),
			}
			got, err := p.DecideUncached(q)
			if err != nil {
				t.Fatal(err)
			}
			full := &Policy{fields: p.fields, enforcer: p.enforcer, deny: p.deny}
			want, err := full.DecideUncached(q)
			if err != nil {
				t.Fatal(err)
			}
			outcomes[fmt.Sprint(got.Allow, got.Denied)]++
			if got != want {
				t.Fatalf("seed %d: %+v: partitioned %+v, whole policy %+v\npolicy:\n%s", seed, q, got, want, text)
			}
		}
	}
	// allowed, denied by a deny line, and matched by nothing.
	if outcomes["true false"] == 0 || outcomes["false true"] == 0 || outcomes["false false"] == 0 {
		t.Errorf("outcomes %v: the random policies do not exercise every kind of answer", outcomes)
	}
}

func randomPolicy(r *rand.Rand) string {
	var b strings.Builder
	levels := []string{"intern", "junior", "senior", "principal"}
	acts := []string{"read", "write", "privileged", "*"}
	subject := func() string {
		if r.IntN(2) == 0 {
			return fmt.Sprintf("group:g%d", r.IntN(5))
		}
		return fmt.Sprintf("spiffe://td/agents/t%d/a%d", r.IntN(3), r.IntN(8))
	}
	for range 12 {
		switch r.IntN(3) {
		case 0:
			fmt.Fprintf(&b, "g, spiffe://td/agents/t%d/a%d, group:g%d\n", r.IntN(3), r.IntN(8), r.IntN(5))
		case 1:
			fmt.Fprintf(&b, "g, spiffe://td/agents/t%d/*, group:g%d\n", r.IntN(3), r.IntN(5))
		default:
			fmt.Fprintf(&b, "g, group:g%d, group:g%d\n", r.IntN(5), r.IntN(5))
		}
	}
	for range 25 {
		obj := fmt.Sprintf("kv/t%d/r%d", r.IntN(3), r.IntN(3))
		switch r.IntN(3) {
		case 0:
			obj = fmt.Sprintf("kv/t%d/*", r.IntN(3))
		case 1:
			obj = "*"
		}
		eft := "allow"
		if r.IntN(5) == 0 {
			eft = "deny"
		}
		fmt.Fprintf(&b, "p, %s, %s, %s, %s, %s\n", subject(), obj, acts[r.IntN(4)], levels[r.IntN(4)], eft)
	}
	return b.String()
}
