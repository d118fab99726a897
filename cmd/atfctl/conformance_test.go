package main

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/agentictrust/atf/broker/config"

	"github.com/agentictrust/atf/deploy/dev/brokertest"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// atfctl conformance against real brokers: the statement in the spec's
// template as a table, JSON and markdown; a feature switched off in the
// configuration lowers its element's score; admins only.
func TestCLIConformance(t *testing.T) {
	f := brokertest.Setup(t)
	// The test defaults switch rate and live-credential limits off; the
	// broker's defaults switch them on.
	off := f.Config(t, t.TempDir())
	on := f.Config(t, t.TempDir())
	on.Limits = config.LimitsConfig{}
	agent := f.ID(t, "agent")
	// An allowlist, not the fixture's allow-all policy, which S-1's probe
	// refuses.
	for _, c := range []config.Config{off, on} {
		if err := os.WriteFile(c.Policy.PolicyFile, []byte("p, "+agent.String()+", reports-read, read, intern, allow\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bOff, bOn := f.Start(t, off), f.Start(t, on)
	for _, b := range []*brokertest.Broker{bOff, bOn} {
		b.Register(t, agent, brokerv1.Level_LEVEL_SENIOR, "reports-read")
	}

	out, code := run(t, bOn, f.Admin, "conformance", "--organization", "Example Corp")
	for _, want := range []string{
		`Organization:\s+Example Corp\n`,
		`Implementation:\s+ATF Broker \(atfd\)\n`,
		`ATF Version:\s+0\.9\.0\n`,
		`Target Maturity Level:\s+senior \(the highest level of any active agent; --level to choose\)\n`,
		`Element 1 - Identity:\s+5/5 requirements met\n`,
		`Element 3 - Data Governance:\s+0/5 requirements met \(4 partially\)\n`,
		`Element 4 - Segmentation:\s+4/5 requirements met \(1 partially\)\n`,
		`Overall:\s+\d+/25 requirements met \(\d+ partially\)\n`,
		`ID\s+REQUIREMENT\s+STATUS\s+SENIOR\s+EVIDENCE\n`,
		`\nS-3\s+Rate Limiting\s+met\s+MUST\s+limits\.rate \(token bucket per agent\): intern 1/s burst 10, `,
		`\nD-4\s+Output Validation\s+not met\s+MUST\s+related: `,
		`\s+gap: the broker never sees an agent's outputs`,
		`\s+operator: Validate outputs in the agent or an output gateway`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Fatalf("conformance: exit %d, output does not match %s:\n%s", code, want, out)
		}
	}

	// Rate and live-credential limits off: S-3 not met, S-5 partial.
	out, code = run(t, bOff, f.Admin, "conformance")
	if code != 0 || !regexp.MustCompile(`Element 4 - Segmentation:\s+2/5 requirements met \(2 partially\)\n`).MatchString(out) ||
		!regexp.MustCompile(`\nS-3\s+Rate Limiting\s+not met\s+MUST\s+limits\.rate \(token bucket per agent\): no level\n\s+gap: limits\.rate is empty`).MatchString(out) ||
		!regexp.MustCompile(`MUST at senior, not fully met:\s+[^\n]*S-3`).MatchString(out) {
		t.Fatalf("conformance with limits off: exit %d\n%s", code, out)
	}

	out, code = run(t, bOn, f.Admin, "conformance", "--level", "intern", "-o", "json")
	var got struct {
		Statement struct {
			TargetLevel string `json:"target_level"`
			Met, Total  int
			UnmetMust   []string `json:"unmet_must"`
			Elements    []struct {
				Name         string
				Met, Total   int
				Requirements []struct {
					ID, Status, Obligation string
					Evidence               []string
				}
			}
		}
	}
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil {
		t.Fatalf("conformance -o json: exit %d\n%s", code, out)
	}
	st := got.Statement
	if st.TargetLevel != "LEVEL_INTERN" || st.Total != 25 || len(st.Elements) != 5 || st.Elements[0].Met != 5 ||
		st.Elements[1].Requirements[0].ID != "B-1" || st.Elements[1].Requirements[0].Status != "CONFORMANCE_STATUS_PARTIAL" ||
		st.Elements[0].Requirements[1].Obligation != "OBLIGATION_SHOULD" || len(st.Elements[0].Requirements[0].Evidence) == 0 ||
		strings.Join(st.UnmetMust, ",") != "B-1,D-3" {
		t.Fatalf("conformance --level intern -o json: %+v\n%s", st, out)
	}

	out, code = run(t, bOn, f.Admin, "conformance", "-o", "markdown")
	for _, want := range []string{
		"# ATF conformance statement\n",
		"| Target Maturity Level | senior (the highest level of any active agent; --level to choose) |\n",
		"| Element | Requirements met | Partially met |\n|---|---|---|\n| 1 - Identity | 5/5 | 0 |\n",
		"## Element 4 - Segmentation (\"Where can you go?\")\n",
		"| # | Requirement | Status | Obligation (senior) | Evidence | Not met because | Operator's job |\n|---|---|---|---|---|---|---|\n",
		"| I-1 | Unique Identifier | met | MUST | by construction (tested by TestRefusedCallers, TestAdversarialX509Forgeries): every caller is identified by its SPIFFE ID",
		"| D-4 | Output Validation | not met | MUST | related: ",
		"\n## Notes\n\n- Assessed by atfd",
	} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("conformance -o markdown: exit %d, no %q in:\n%s", code, want, out)
		}
	}
	// Every table row has its seven cells: nothing in a cell breaks it.
	for _, line := range strings.Split(out, "\n") {
		if regexp.MustCompile(`^\| [IBDSR]-\d `).MatchString(line) {
			if n := len(regexp.MustCompile(`(^|[^\\])\|`).FindAllString(line, -1)); n != 8 {
				t.Errorf("markdown row with %d cell borders, want 8: %s", n, line)
			}
		}
	}

	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"non-admin", []string{"conformance"}, 3, "is not a broker admin"},
		{"bad output", []string{"conformance", "-o", "yaml"}, 2, "--output must be table, json or markdown"},
		{"bad level", []string{"conformance", "--level", "boss"}, 2, "--level must be"},
		{"argument", []string{"conformance", "now"}, 2, "takes 0 argument(s), got 1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			as := f.Admin
			if tt.name == "non-admin" {
				as = agent
			}
			out, code := run(t, bOn, as, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, want %d; output:\n%s", code, tt.code, out)
			}
		})
	}
}
