package main

import (
	"strings"
	"testing"
	"time"
)

// oauthDemoTimeout bounds the OAuth part's run (about 15 s on 2 cores,
// building mcp-tools included).
const oauthDemoTimeout = 3 * time.Minute

// The OAuth part of `make demo` end to end, alone (-oauth): atfd,
// atfctl and the demo built as `make build` builds them, mcp-tools built
// by the demo. It exits 0 (every check held), the tool server saw the
// chain A → B → C, and after the lineage was revoked refused C's next
// call within the push latency while A's own token still worked.
func TestOAuthDemo(t *testing.T) {
	out, took := runDemo(t, "-oauth", oauthDemoTimeout)
	find := matcher(t, out)
	find(`agents/planner → \S+/agents/researcher → \S+/agents/summarizer \(level junior`)
	find(`✔ the tool server saw C acting for B acting for A`)
	refused := find(`✔ refused \(401\), \S+ after .atfctl revoke. started, (\S+) after it returned`)
	latency := find(`the tool server's log: revocation reason=.* latency=(\S+)`)
	find(`✔ A's own token still works`)
	if strings.Contains(out, "✘") {
		t.Errorf("a check failed:\n%s", out)
	}
	t.Logf("demo -oauth passed in %s: refused %s after the revocation returned, push latency %s",
		took.Round(time.Second), refused[1], latency[1])
}
