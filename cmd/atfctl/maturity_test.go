package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/breaker"
	"github.com/agentictrust/atf/broker/config"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentictrust/atf/deploy/dev/brokertest"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// The maturity lifecycle from the command line, against a real broker on
// the shared SPIRE and Vault.

// mustMatch fails t unless out matches every regexp in want.
func mustMatch(t *testing.T, what, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !regexp.MustCompile(w).MatchString(out) {
			t.Fatalf("%s: output does not match %s:\n%s", what, w, out)
		}
	}
}

// A fresh intern under ATF's default criteria: the gate report, the
// refusal, the breaker, and the exit codes of the maturity commands.
func TestCLIPromotionGates(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Monitor.Breaker = breaker.Config{Failures: 2, OpenFor: time.Hour}
	b := f.Start(t, cfg)
	agent, flaky := f.ID(t, "agent"), f.ID(t, "flaky")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read")
	b.Register(t, flaky, brokerv1.Level_LEVEL_INTERN, "reports-read")

	out, code := run(t, b, f.Admin, "agent", "promote", agent.String(), "--dry-run")
	if code != 0 {
		t.Fatalf("promote --dry-run: exit %d\n%s", code, out)
	}
	mustMatch(t, "promote --dry-run", out,
		`Promotion:\s+intern → junior\n\n`,
		`(?m)^GATE\s+CHECK\s+RESULT\s+DETAIL$`,
		`(?m)^performance\s+time at level\s+FAIL\s+0m at intern, needs 14d \(14d to go\)$`,
		`(?m)^performance\s+availability\s+pass\s+not measured: 0 outcome reports, counts from 20$`,
		`(?m)^security\s+vulnerability_assessment\s+FAIL\s+none for junior since `,
		`(?m)^security\s+code_review\s+FAIL\s`,
		`(?m)^security\s+configuration_audit\s+FAIL\s`,
		`(?m)^business\s+metrics_baseline\s+FAIL\s`,
		`(?m)^business\s+stakeholder_signoff\s+FAIL\s`,
		`(?m)^incidents\s+critical incidents\s+pass\s+none at intern since `,
		`(?m)^governance\s+sign-off\s+FAIL\s+0 approvers for junior, needs 1 other than the owner$`,
		`\n\nPromotable:\s+no\n$`)
	if strings.Contains(out, "pen_test") {
		t.Fatalf("promote --dry-run: a junior needs no pen test:\n%s", out)
	}

	out, code = run(t, b, f.Admin, "agent", "promote", agent.String(), "--dry-run", "-o", "json")
	var report struct {
		Report struct {
			From, To   string
			Promotable bool
			Gates      []struct {
				Name   string
				Pass   bool
				Checks []struct {
					Name   string
					Pass   bool
					Detail string
				}
			}
		}
	}
	if code != 0 || json.Unmarshal([]byte(out), &report) != nil || report.Report.From != "LEVEL_INTERN" || report.Report.To != "LEVEL_JUNIOR" ||
		report.Report.Promotable || len(report.Report.Gates) != 5 {
		t.Fatalf("promote --dry-run -o json: exit %d\n%s", code, out)
	}
	for i, name := range []string{"performance", "security", "business", "incidents", "governance"} {
		if g := report.Report.Gates[i]; g.Name != name || g.Pass != (name == "incidents") || len(g.Checks) == 0 {
			t.Fatalf("promote --dry-run -o json: gate %d is %+v, want %s (passing only if incidents)", i, g, name)
		}
	}

	out, code = run(t, b, f.Admin, "agent", "promote", agent.String(), "--reason", "eager")
	if code != 6 || !strings.Contains(out, "FailedPrecondition: "+agent.String()+" cannot be promoted to junior yet: ") ||
		!strings.Contains(out, "performance: time at level: 0m at intern, needs 14d (14d to go); security: vulnerability_assessment: none for junior") ||
		!strings.Contains(out, "; governance: sign-off: 0 approvers for junior, needs 1 other than the owner") {
		t.Fatalf("promote without evidence: exit %d, want 6 with the failing checks\n%s", code, out)
	}
	if out, code = run(t, b, f.Admin, "agent", "get", agent.String()); code != 0 || !regexp.MustCompile(`Level:\s+intern\n`).MatchString(out) || strings.Contains(out, "Breaker:") {
		t.Fatalf("agent get after a refused promotion: exit %d, want an intern with a closed breaker\n%s", code, out)
	}

	// Failures reported by the agent open its breaker, which agent get and
	// agent maturity show.
	for range 2 {
		if out, code := run(t, b, flaky, "outcome", "report", "--outcome", "failure", "--role", "reports-read", "--detail", "timed out"); code != 0 ||
			!regexp.MustCompile(`^Recorded:\s+failure\n$`).MatchString(out) {
			t.Fatalf("outcome report: exit %d\n%s", code, out)
		}
	}
	breakerOpen := `Breaker:\s+open until \d{4}-\d\d-\d\dT\S+\n`
	if out, code = run(t, b, f.Admin, "agent", "get", flaky.String()); code != 0 {
		t.Fatalf("agent get: exit %d\n%s", code, out)
	}
	mustMatch(t, "agent get with an open breaker", out, `Status:\s+active\n`+breakerOpen+`Level:\s+intern\n`)
	if out, code = run(t, b, f.Admin, "agent", "maturity", flaky.String()); code != 0 {
		t.Fatalf("agent maturity: exit %d\n%s", code, out)
	}
	mustMatch(t, "agent maturity", out,
		`SPIFFE ID:\s+`+regexp.QuoteMeta(flaky.String())+`\n`,
		`Level:\s+intern since \S+\n`,
		`Outcomes:\s+0 success, 0 failure, 0 rejected, 0 errors \(reported by others, at this level\)\n`,
		`Self-reported:\s+0 success, 2 failure, 0 rejected, 0 errors \(by the agent, at this level\)\n`,
		breakerOpen,
		`Baseline:\s+forming: \d+ events since \S+\n`,
		`Evidence:\s+0\nSign-offs:\s+0\nIncidents:\s+0\n$`)

	stranger := f.ID(t, "stranger")
	for _, tt := range []struct {
		name string
		as   spiffeid.ID
		args []string
		code int
		want string
	}{
		{"non-admin dry run", agent, []string{"agent", "promote", agent.String(), "--dry-run"}, 3, "not a broker admin"},
		{"non-admin promote", agent, []string{"agent", "promote", agent.String(), "--reason", "me"}, 3, "not a broker admin"},
		{"non-admin demote", agent, []string{"agent", "demote", flaky.String(), "--reason", "r"}, 3, "not a broker admin"},
		{"non-admin maturity", agent, []string{"agent", "maturity", agent.String()}, 3, "not a broker admin"},
		{"non-admin evidence", agent, []string{"evidence", "add", agent.String(), "--kind", "code_review", "--reference", "PR-1"}, 3, "not a broker admin"},
		{"non-admin sign-off", agent, []string{"signoff", "add", agent.String(), "--risk", "none"}, 3, "not a broker admin"},
		{"an agent reporting on another", agent, []string{"outcome", "report", "--agent", flaky.String(), "--outcome", "success"}, 3, "may not report on another agent's work"},
		{"migrate without sign-off", f.Admin, []string{"agent", "migrate", agent.String(), "--level", "senior", "--reason", "r"}, 6,
			"cannot be placed at senior without the sign-offs a promotion there needs: 0 approvers for senior"},
		{"migrate without level", f.Admin, []string{"agent", "migrate", agent.String(), "--reason", "r"}, 2, `--level must be junior, senior or principal, not ""`},
		{"non-admin incident", agent, []string{"incident", "open", flaky.String(), "--severity", "low", "--summary", "s"}, 3, "not a broker admin"},
		{"non-admin incident list", agent, []string{"incident", "list"}, 3, "not a broker admin"},
		{"unknown agent", f.Admin, []string{"agent", "promote", stranger.String(), "--dry-run"}, 4, "NotFound"},
		{"unknown incident", f.Admin, []string{"incident", "close", strings.Repeat("0", 32), "--rca", "r"}, 4, "NotFound"},
		{"malformed incident", f.Admin, []string{"incident", "close", "INC-1", "--rca", "r"}, 6, "InvalidArgument"},
		{"unknown evidence kind", f.Admin, []string{"evidence", "add", agent.String(), "--kind", "vibes", "--reference", "r"}, 6,
			`unknown evidence kind "vibes" (want one of vulnerability_assessment, code_review,`},
		{"malformed decision", agent, []string{"outcome", "report", "--outcome", "success", "--decision", "D-1"}, 6, "InvalidArgument"},
		{"promote without reason", f.Admin, []string{"agent", "promote", agent.String()}, 2, "--reason is required (or --dry-run)"},
		{"demote without reason", f.Admin, []string{"agent", "demote", agent.String()}, 2, "--reason is required"},
		{"demote too far", f.Admin, []string{"agent", "demote", agent.String(), "--reason", "r", "--levels", "4"}, 2, "--levels must be 1, 2 or 3, not 4"},
		{"rollback without revision", f.Admin, []string{"agent", "rollback", agent.String(), "--reason", "r"}, 2, "--revision and --reason are required"},
		{"evidence without reference", f.Admin, []string{"evidence", "add", agent.String(), "--kind", "code_review"}, 2, "--kind and --reference are required"},
		{"bad target", f.Admin, []string{"evidence", "add", agent.String(), "--kind", "code_review", "--reference", "r", "--target", "intern"}, 2,
			`--target must be junior, senior or principal, not "intern"`},
		{"sign-off without risk", f.Admin, []string{"signoff", "add", agent.String()}, 2, "--risk is required"},
		{"sign-off for someone else", f.Admin, []string{"signoff", "add", agent.String(), "--signer", "bob", "--risk", "r"}, 2, "unknown flag: --signer"},
		{"bad severity", f.Admin, []string{"incident", "open", agent.String(), "--severity", "sev1", "--summary", "s"}, 2, `--severity must be low, medium, high or critical, not "sev1"`},
		{"incident without summary", f.Admin, []string{"incident", "open", agent.String(), "--severity", "low"}, 2, "--summary is required"},
		{"close without rca", f.Admin, []string{"incident", "close", strings.Repeat("0", 32)}, 2, "--rca is required"},
		{"bad outcome", agent, []string{"outcome", "report", "--outcome", "meh"}, 2, `--outcome must be success, failure, rejected or error, not "meh"`},
		{"no outcome", agent, []string{"outcome", "report"}, 2, `--outcome must be`},
		{"maturity without agent", f.Admin, []string{"agent", "maturity"}, 2, "takes 1 argument"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, code := run(t, b, tt.as, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, want %d; output:\n%s", code, tt.code, out)
			}
		})
	}
	if out, code = run(t, b, f.Admin, "incident", "list"); code != 0 || strings.Count(out, "\n") != 1 {
		t.Fatalf("incident list after refused opens: exit %d, want only the header\n%s", code, out)
	}
}

// An intern earns junior from the command line (outcomes, evidence, a
// sign-off), loses it to a critical incident, cannot roll the demotion
// back up, and gets junior back on a new sign-off and a migration.
func TestCLIPromotion(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Maturity = config.MaturityConfig{MinTimeAtLevel: map[string]time.Duration{"intern": 0}, MinOutcomes: 3}
	b := f.Start(t, cfg)
	agent := f.ID(t, "agent")
	id := agent.String()
	// Its owner is the fixture's second admin.
	if out, code := run(t, b, f.Admin, "agent", "register", id, "--owner", f.Signer.String(), "--purpose", "maturity", "--role", "reports-read"); code != 0 {
		t.Fatalf("register: exit %d\n%s", code, out)
	}

	// Its own reports are self-reported; the admin's, on its work, count.
	for _, args := range [][]string{
		{"--outcome", "success"},
		{"--outcome", "success", "--role", "reports-read"},
		{"--outcome", "success", "--role", "reports-read", "--detail", "weekly report sent"},
	} {
		if out, code := run(t, b, agent, append([]string{"outcome", "report"}, args...)...); code != 0 {
			t.Fatalf("outcome report %v: exit %d\n%s", args, code, out)
		}
		if out, code := run(t, b, f.Admin, append([]string{"outcome", "report", "--agent", id}, args...)...); code != 0 {
			t.Fatalf("outcome report --agent %v: exit %d\n%s", args, code, out)
		}
	}

	for _, kind := range []string{"vulnerability_assessment", "code_review", "configuration_audit", "metrics_baseline", "stakeholder_signoff"} {
		out, code := run(t, b, f.Admin, "evidence", "add", id, "--kind", kind, "--reference", "SEC-"+kind)
		if code != 0 {
			t.Fatalf("evidence add --kind %s: exit %d\n%s", kind, code, out)
		}
		mustMatch(t, "evidence add", out, `^Evidence:\s+`+kind+` for junior\nReference:\s+SEC-`+kind+`\nRecorded:\s+\S+ by `+regexp.QuoteMeta(f.Admin.String())+`\n$`)
	}
	// The owner may not sign off.
	out, code := run(t, b, f.Signer, "signoff", "add", id, "--risk", "mine", "--target", "junior")
	if code != 3 || !strings.Contains(out, f.Signer.String()+" owns "+id) {
		t.Fatalf("signoff add by the owner: exit %d, want 3\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "agent", "promote", id, "--reason", "early")
	if code != 6 || !strings.HasSuffix(out, "cannot be promoted to junior yet: governance: sign-off: 0 approvers for junior, needs 1 other than the owner") {
		t.Fatalf("promote without a sign-off: exit %d, want 6 naming only the sign-off\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "signoff", "add", id, "--risk", "reports may go out unreviewed", "-o", "json")
	var so struct {
		SignOff struct {
			Signer, Target string
			RecordedBy     string `json:"recorded_by"`
		} `json:"sign_off"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &so) != nil || so.SignOff.Signer != f.Admin.String() || so.SignOff.RecordedBy != f.Admin.String() || so.SignOff.Target != "LEVEL_JUNIOR" {
		t.Fatalf("signoff add -o json: exit %d\n%s", code, out)
	}

	out, code = run(t, b, f.Admin, "agent", "promote", id, "--dry-run")
	if code != 0 || strings.Contains(out, "FAIL") {
		t.Fatalf("promote --dry-run with every gate met: exit %d\n%s", code, out)
	}
	mustMatch(t, "promote --dry-run with every gate met", out,
		`(?m)^performance\s+time at level\s+pass\s+0m at intern, needs 0m$`,
		`(?m)^performance\s+availability\s+pass\s+availability 100\.0% \(0 errors in 3 reports\), needs >= 99%$`,
		`(?m)^security\s+code_review\s+pass\s+SEC-code_review by `,
		`(?m)^governance\s+sign-off\s+pass\s+1 approver \(`+regexp.QuoteMeta(f.Admin.String())+`\) for junior, needs 1 other than the owner$`,
		`Promotable:\s+yes\n$`)
	out, code = run(t, b, f.Admin, "agent", "promote", id, "--reason", "gates met, CAB-42")
	if code != 0 {
		t.Fatalf("promote: exit %d\n%s", code, out)
	}
	mustMatch(t, "promote", out, `Promotable:\s+yes\nPromoted:\s+`+regexp.QuoteMeta(id)+` is now junior \(revision 2\)\n$`)
	if out, code = run(t, b, f.Admin, "agent", "get", id); code != 0 || !regexp.MustCompile(`Level:\s+junior\n`).MatchString(out) {
		t.Fatalf("agent get after promote: exit %d\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "agent", "history", id)
	if code != 0 || !regexp.MustCompile(`(?m)^2\s+\S+\s+`+regexp.QuoteMeta(f.Admin.String())+`\s+promote\s+junior\s+gates met, CAB-42$`).MatchString(out) {
		t.Fatalf("agent history after promote: exit %d\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "agent", "maturity", id)
	if code != 0 {
		t.Fatalf("agent maturity: exit %d\n%s", code, out)
	}
	mustMatch(t, "agent maturity after promote", out,
		`Level:\s+junior since \S+\n`,
		`Outcomes:\s+0 success, 0 failure, 0 rejected, 0 errors \(reported by others, at this level\)\n`,
		`Breaker:\s+closed\n`,
		`Evidence:\s+5\nSign-offs:\s+1\nIncidents:\s+0\n`,
		`(?m)^EVIDENCE\s+TARGET\s+REFERENCE\s+RECORDED BY\s+AT$`,
		`(?m)^stakeholder_signoff\s+junior\s+SEC-stakeholder_signoff\s`,
		`(?m)^`+regexp.QuoteMeta(f.Admin.String())+`\s+junior\s+reports may go out unreviewed\s`)

	// A critical incident demotes a junior at once.
	out, code = run(t, b, f.Admin, "incident", "open", id, "--severity", "critical", "--summary", "published draft numbers")
	inc := regexp.MustCompile(`Incident:\s+([0-9a-f]{32})\n`).FindStringSubmatch(out)
	if code != 0 || inc == nil {
		t.Fatalf("incident open: exit %d\n%s", code, out)
	}
	mustMatch(t, "incident open", out,
		`Agent:\s+`+regexp.QuoteMeta(id)+` \(junior when opened\)\n`,
		`Severity:\s+critical\n`,
		`Demoted to:\s+intern \(revision 3\)\n$`)
	if out, code = run(t, b, f.Admin, "agent", "get", id); code != 0 || !regexp.MustCompile(`Level:\s+intern\n`).MatchString(out) {
		t.Fatalf("agent get after a critical incident: exit %d\n%s", code, out)
	}
	// A low one on the intern only records.
	out, code = run(t, b, f.Admin, "incident", "open", id, "--severity", "low", "--summary", "typo in a report")
	low := regexp.MustCompile(`Incident:\s+([0-9a-f]{32})\n`).FindStringSubmatch(out)
	if code != 0 || low == nil || strings.Contains(out, "Demoted") {
		t.Fatalf("incident open --severity low: exit %d\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "incident", "list", "--open", "--agent", id)
	if code != 0 || strings.Count(out, "\n") != 3 ||
		!regexp.MustCompile(`(?m)^`+inc[1]+`\s+`+regexp.QuoteMeta(id)+`\s+critical\s+junior\s+\S+\s+-\s+published draft numbers$`).MatchString(out) {
		t.Fatalf("incident list --open: exit %d\n%s", code, out)
	}
	for _, i := range []string{inc[1], low[1]} {
		out, code = run(t, b, f.Admin, "incident", "close", i, "--rca", "prompt injection through a shared doc")
		if code != 0 {
			t.Fatalf("incident close: exit %d\n%s", code, out)
		}
		mustMatch(t, "incident close", out, `Closed:\s+\S+ by `+regexp.QuoteMeta(f.Admin.String())+`\nRCA:\s+prompt injection through a shared doc\n$`)
	}
	if out, code = run(t, b, f.Admin, "incident", "close", inc[1], "--rca", "again"); code != 6 || !strings.Contains(out, "already closed") {
		t.Fatalf("closing an incident twice: exit %d, want 6\n%s", code, out)
	}
	if out, code = run(t, b, f.Admin, "incident", "list", "--open"); code != 0 || strings.Count(out, "\n") != 1 {
		t.Fatalf("incident list --open after closing: exit %d, want only the header\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "incident", "list", "-o", "json")
	var incs struct {
		Incidents []struct {
			ID, Severity, Rca string
		}
	}
	if code != 0 || json.Unmarshal([]byte(out), &incs) != nil || len(incs.Incidents) != 2 || incs.Incidents[0].ID != inc[1] || incs.Incidents[0].Rca == "" {
		t.Fatalf("incident list -o json: exit %d\n%s", code, out)
	}

	// Demotion stops at intern; rollback does not raise it back to the
	// promotion's level: a new sign-off and a migration do.
	if out, code = run(t, b, f.Admin, "agent", "demote", id, "--reason", "more"); code != 6 || !strings.Contains(out, "is an intern already") {
		t.Fatalf("demoting an intern: exit %d, want 6\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "agent", "rollback", id, "--revision", "2", "--reason", "the incident was upstream's")
	if code != 6 || !strings.Contains(out, "a rollback only lowers a level: "+id+" is at intern and revision 2 had junior") {
		t.Fatalf("agent rollback up: exit %d, want 6\n%s", code, out)
	}
	if out, code = run(t, b, f.Admin, "signoff", "add", id, "--risk", "the incident was upstream's"); code != 0 {
		t.Fatalf("signoff add after the demotion: exit %d\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "agent", "migrate", id, "--level", "junior", "--reason", "the incident was upstream's")
	if code != 0 {
		t.Fatalf("agent migrate: exit %d\n%s", code, out)
	}
	mustMatch(t, "agent migrate", out, `Migrated:\s+`+regexp.QuoteMeta(id)+` is now junior \(revision 4\)\n$`)
	if out, code = run(t, b, f.Admin, "agent", "get", id); code != 0 || !regexp.MustCompile(`Level:\s+junior\n`).MatchString(out) {
		t.Fatalf("agent get after rollback: exit %d\n%s", code, out)
	}
	if out, code = run(t, b, f.Admin, "agent", "rollback", id, "--revision", "99", "--reason", "r"); code != 4 {
		t.Fatalf("rollback to no revision: exit %d, want 4\n%s", code, out)
	}

	// A junior's live credential survives a demotion that still backs it.
	if out, code = run(t, b, agent, "creds", "fetch", "--role", "reports-read"); code != 0 {
		t.Fatalf("creds fetch: exit %d\n%s", code, out)
	}
	out, code = run(t, b, f.Admin, "agent", "demote", id, "--reason", "back to supervised work", "--levels", "3")
	if code != 0 {
		t.Fatalf("agent demote: exit %d\n%s", code, out)
	}
	mustMatch(t, "agent demote", out, `^Level:\s+intern \(revision 5\)\nGrants revoked:\s+0\nCredentials revoked:\s+0\n`)
	out, code = run(t, b, f.Admin, "agent", "history", id)
	if code != 0 {
		t.Fatalf("agent history: exit %d\n%s", code, out)
	}
	mustMatch(t, "agent history", out,
		`(?m)^3\s+\S+\s+\S+\s+demote\s+intern\s+critical incident `+inc[1]+`$`,
		`(?m)^4\s+\S+\s+\S+\s+migrate\s+junior\s+migration from intern to junior: the incident was upstream's; sign-off: 1 approver `,
		`(?m)^5\s+\S+\s+\S+\s+demote\s+intern\s+back to supervised work$`)
}
