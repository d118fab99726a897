package attest_test

import (
	"strings"
	"testing"

	"github.com/agentictrust/atf/attest"
)

// ParseID accepts only canonical workload IDs: whatever it accepts prints
// back to exactly the input, has a path, no dot segments, no percent
// encoding and a lower-case trust domain; it never panics.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"spiffe://example.org/agents/planner", "spiffe://example.org", "spiffe://example.org/",
		"spiffe://EXAMPLE.org/a", "spiffe://example.org/a/../b", "spiffe://example.org/a/%2e%2e/b",
		"spiffe://example.org//a", "spiffe://example.org/a/", "spiffe://example.org/a?x=1", "spiffe://example.org/a#f",
		"spiffe://user@example.org/a", "spiffe://example.org:8443/a", "https://example.org/a", "", "spiffe:///a",
		"spiffe://example.org/a b", "spiffe://example.org/\u00e9", "spiffe://ex\u0430mple.org/a",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := attest.ParseID(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("accepted %q but it prints as %q", s, id.String())
		}
		td, path := id.TrustDomain().Name(), id.Path()
		if path == "" || td != strings.ToLower(td) || strings.ContainsAny(s, "%?#@ ") {
			t.Fatalf("accepted a non-canonical ID %q", s)
		}
		for seg := range strings.SplitSeq(strings.TrimPrefix(path, "/"), "/") {
			if seg == "" || seg == "." || seg == ".." {
				t.Fatalf("accepted %q with segment %q", s, seg)
			}
		}
	})
}
