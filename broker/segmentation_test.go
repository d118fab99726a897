package broker_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/policy"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// The Casbin segmentation policy and the audit trail through the API:
// policy versions set, refused, rolled back and kept across restarts, the
// shipped model's maturity and classification gating, canonical role names
// at the edge, delegators checked by the policy, and the redacted,
// hash-chained audit trail and its JSON-lines copy.

// onlyReportsRead lets every agent of e's trust domain hold reports-read
// and nothing else.
func onlyReportsRead(e *delegEnv) string {
	return "g, " + e.f.Stack.TrustDomain.IDString() + "/*, group:all\np, group:all, reports-read, read, intern, allow\n"
}

// setPolicy stores text, under the current model, as the newest version.
func (e *delegEnv) setPolicy(t *testing.T, text, comment string) *adminv1.PolicyVersion {
	t.Helper()
	r, err := e.admin.SetPolicy(t.Context(), &adminv1.SetPolicyRequest{Policy: text, Comment: comment})
	if err != nil {
		t.Fatalf("SetPolicy(%q): %v", comment, err)
	}
	return r.GetVersion()
}

// versions lists the stored policy versions' numbers, newest first, and the
// current one.
func (e *delegEnv) versions(t *testing.T) (all []uint64, current uint64) {
	t.Helper()
	r, err := e.admin.ListPolicies(t.Context(), &adminv1.ListPoliciesRequest{})
	if err != nil {
		t.Fatalf("ListPolicies: %v", err)
	}
	for _, v := range r.GetVersions() {
		all = append(all, v.GetVersion())
		if v.GetCurrent() {
			if current != 0 {
				t.Errorf("versions %d and %d are both current", current, v.GetVersion())
			}
			current = v.GetVersion()
		}
	}
	return all, current
}

// auditOf returns every record q selects, following next_after_seq.
func auditOf(t *testing.T, admin adminv1.AdminServiceClient, q *adminv1.QueryAuditRequest) []*adminv1.AuditRecord {
	t.Helper()
	q = proto.Clone(q).(*adminv1.QueryAuditRequest)
	var out []*adminv1.AuditRecord
	for {
		r, err := admin.QueryAudit(t.Context(), q)
		if err != nil {
			t.Fatalf("QueryAudit(%v): %v", q, err)
		}
		out = append(out, r.GetRecords()...)
		if r.GetNextAfterSeq() == 0 {
			return out
		}
		q.AfterSeq = r.GetNextAfterSeq()
	}
}

// oneRecord returns the one record q selects.
func oneRecord(t *testing.T, admin adminv1.AdminServiceClient, q *adminv1.QueryAuditRequest) *adminv1.AuditRecord {
	t.Helper()
	recs := auditOf(t, admin, q)
	if len(recs) != 1 {
		t.Fatalf("QueryAudit(%v) = %d records, want one: %v", q, len(recs), recs)
	}
	return recs[0]
}

// wantDetail reports every detail of rec that differs from want.
func wantDetail(t *testing.T, rec *adminv1.AuditRecord, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got, ok := rec.GetDetail()[k]; !ok || got != v {
			t.Errorf("%s record %d: detail %s = %q, want %q", rec.GetKind(), rec.GetSeq(), k, got, v)
		}
	}
}

// wantDecisionAudited checks that the refusal err names the decision whose
// audit record is rec.
func wantDecisionAudited(t *testing.T, err error, rec *adminv1.AuditRecord) {
	t.Helper()
	if id := rec.GetDetail()["decision_id"]; id == "" || !strings.Contains(status.Convert(err).Message(), "(decision "+id+")") {
		t.Errorf("refusal %q does not name the audited decision %q", status.Convert(err).Message(), id)
	}
}

// wantAuditFile waits until the JSON-lines copy at path holds, verified on
// its own, the whole trail the store verified as v.
func wantAuditFile(t *testing.T, path string, v *adminv1.VerifyAuditResponse) {
	t.Helper()
	// The streamer writes after the commit: poll until it has caught up.
	var n uint64
	var last store.AuditRecord
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var raw []byte
		if raw, err = os.ReadFile(path); err != nil {
			continue
		}
		if n, last, err = audit.VerifyLines(bytes.NewReader(raw)); err == nil && n == v.GetRecords() {
			break
		}
	}
	if err != nil || n != v.GetRecords() || last.Seq != v.GetHeadSeq() || last.Hash != v.GetHeadHash() {
		t.Errorf("audit file: %d records ending %d:%s (%v); store: %d ending %d:%s", n, last.Seq, last.Hash, err, v.GetRecords(), v.GetHeadSeq(), v.GetHeadHash())
	}
}

// A policy's whole life through AdminService: seeded from the files as
// version 1, changed and in force at once, refused without effect, dry-run,
// rolled back, guarded by expected_version, audited, and kept by the store
// across restarts whatever the configured files say.
func TestPolicyLifecycle(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	ctx := t.Context()
	writer := e.register(t, "writer", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	open := brokertest.OpenPolicy(f.Stack.TrustDomain)

	// 1. Seeded from the configured files.
	seed, err := e.admin.GetPolicy(ctx, &adminv1.GetPolicyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if v := seed.GetVersion(); v.GetVersion() != 1 || v.GetAuthor() != "atfd" || v.GetComment() != "seeded from "+e.cfg.Policy.PolicyFile ||
		!v.GetCurrent() || v.GetPolicyLines() != 1 || len(v.GetDigest()) != 64 || v.GetRolledBackFrom() != 0 {
		t.Errorf("seeded version = %v", v)
	}
	if seed.GetModel() != policy.Model || seed.GetPolicy() != open {
		t.Errorf("seeded text differs from the files: model %q, policy %q", seed.GetModel(), seed.GetPolicy())
	}
	seeded := oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Kind: "policy_updated"})
	if seeded.GetActor() != "atfd" || seeded.GetSubject() != "policy" {
		t.Errorf("seed record = %v", seeded)
	}
	wantDetail(t, seeded, map[string]string{"version": "1", "previous": "0", "lines": "1", "digest": seed.GetVersion().GetDigest()})
	// A decision under version 1, cached by it.
	writer.mustFetch(t, "reports-write", "")

	// 2. A narrower policy is in force at once: reports-write has no rule.
	set, err := e.admin.SetPolicy(ctx, &adminv1.SetPolicyRequest{Policy: onlyReportsRead(e), Comment: "reports are read-only", ExpectedVersion: 1})
	if err != nil {
		t.Fatal(err)
	}
	if v := set.GetVersion(); v.GetVersion() != 2 || v.GetAuthor() != f.Admin.String() || v.GetComment() != "reports are read-only" || !v.GetCurrent() {
		t.Errorf("SetPolicy = %v", v)
	}
	_, err = writer.fetch(ctx, "reports-write", "")
	brokertest.WantCode(t, err, codes.PermissionDenied,
		"no segmentation rule lets agent "+writer.id.String()+` hold the write role "reports-write" at level senior`)
	denied := oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Decision: "deny", Agent: writer.id.String()})
	if denied.GetKind() != "credential_denied" || denied.GetActor() != writer.id.String() || denied.GetSubject() != "reports-write" {
		t.Errorf("denial record = %v", denied)
	}
	wantDetail(t, denied, map[string]string{"reason": "no_policy_match", "policy_version": "2", "role": "reports-write", "level": "senior", "policy": ""})
	wantDecisionAudited(t, err, denied)
	writer.mustFetch(t, "reports-read", "")
	changed := oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Kind: "policy_updated", Agent: f.Admin.String()})
	wantDetail(t, changed, map[string]string{"version": "2", "previous": "1", "comment": "reports are read-only", "digest": set.GetVersion().GetDigest()})

	// 3. A dry run reports and changes nothing, even with a policy that would
	// deny everything.
	dry, err := e.admin.SetPolicy(ctx, &adminv1.SetPolicyRequest{Policy: "", Comment: "dry run", DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if dry.GetVersion() != nil || !slices.Contains(dry.GetWarnings(), "the policy has no p lines: every request will be denied") {
		t.Errorf("dry run = %v", dry)
	}
	dup, err := e.admin.SetPolicy(ctx, &adminv1.SetPolicyRequest{Policy: open + "p, group:all, *, *, intern, allow\n", Comment: "dry run", DryRun: true})
	if err != nil || !slices.Contains(dup.GetWarnings(), "policy line 3 repeats an earlier line") {
		t.Errorf("dry run with a repeated line = %v, %v", dup, err)
	}
	if all, cur := e.versions(t); !slices.Equal(all, []uint64{2, 1}) || cur != 2 {
		t.Errorf("after dry runs: versions %v, current %d; want [2 1], 2", all, cur)
	}
	writer.mustFetch(t, "reports-read", "")
	_, err = writer.fetch(ctx, "reports-write", "")
	brokertest.WantCode(t, err, codes.PermissionDenied, "no segmentation rule")

	// 4. ListPolicies pages newest first, without the text.
	for _, tt := range []struct {
		req  *adminv1.ListPoliciesRequest
		want []uint64
	}{
		{&adminv1.ListPoliciesRequest{PageSize: 1}, []uint64{2}},
		{&adminv1.ListPoliciesRequest{PageSize: 1, Before: 2}, []uint64{1}},
		{&adminv1.ListPoliciesRequest{Before: 1}, nil},
		{&adminv1.ListPoliciesRequest{Before: 99}, []uint64{2, 1}},
	} {
		r, err := e.admin.ListPolicies(ctx, tt.req)
		if err != nil {
			t.Fatalf("ListPolicies(%v): %v", tt.req, err)
		}
		var got []uint64
		for _, v := range r.GetVersions() {
			got = append(got, v.GetVersion())
			if v.GetCurrent() != (v.GetVersion() == 2) {
				t.Errorf("ListPolicies(%v): version %d current = %t", tt.req, v.GetVersion(), v.GetCurrent())
			}
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("ListPolicies(%v) = versions %v, want %v", tt.req, got, tt.want)
		}
	}

	// 5. Rolling back to version 1 is version 3, and the role works again.
	_, err = e.admin.RollbackPolicy(ctx, &adminv1.RollbackPolicyRequest{Version: 99, Comment: "no such version"})
	brokertest.WantCode(t, err, codes.NotFound, "policy version 99")
	rb, err := e.admin.RollbackPolicy(ctx, &adminv1.RollbackPolicyRequest{Version: 1, Comment: "writes are back", ExpectedVersion: 2})
	if err != nil {
		t.Fatal(err)
	}
	if v := rb.GetVersion(); v.GetVersion() != 3 || v.GetRolledBackFrom() != 1 || !v.GetCurrent() || v.GetDigest() != seed.GetVersion().GetDigest() {
		t.Errorf("RollbackPolicy = %v", v)
	}
	writer.mustFetch(t, "reports-write", "")
	rolled := oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Kind: "policy_rolled_back"})
	wantDetail(t, rolled, map[string]string{"version": "3", "previous": "2", "restored": "1", "comment": "writes are back"})
	if all, cur := e.versions(t); !slices.Equal(all, []uint64{3, 2, 1}) || cur != 3 {
		t.Errorf("after rollback: versions %v, current %d; want [3 2 1], 3", all, cur)
	}

	// 6. A policy that does not load is refused, and the current one keeps
	// serving.
	withRequest := func(r string) string {
		m := strings.Replace(policy.Model, "r = sub, obj, act, lvl, cls", r, 1)
		if m == policy.Model {
			t.Fatal("the shipped model no longer has the request line this test edits")
		}
		return m
	}
	minimal := func(matcher string) string {
		return "[request_definition]\nr = sub, obj, act\n[policy_definition]\np = sub, obj, act\n" +
			"[policy_effect]\ne = some(where (p.eft == allow))\n[matchers]\nm = " + matcher + "\n"
	}
	for _, tt := range []struct {
		name, model, policy string
		dryRun              bool
		parts               []string
	}{
		{name: "request without obj", model: withRequest("r = sub, act"), policy: open,
			parts: []string{`model: the request must have the field "obj" (it has sub, act)`}},
		{name: "request field the broker cannot fill", model: withRequest("r = sub, obj, act, lvl, cls, tenant"), policy: open,
			parts: []string{`request field "tenant" is not one the broker provides`}},
		{name: "matcher ignores r.act", model: minimal("r.sub == p.sub && r.obj == p.obj"), policy: "p, group:all, reports-read, read",
			parts: []string{"the matcher never looks at r.act"}},
		{name: "eval in the matcher", model: minimal("r.sub == p.sub && r.obj == p.obj && r.act == p.act && eval(p.act)"), policy: "p, group:all, reports-read, read",
			parts: []string{"eval() is not allowed in the matcher"}},
		{name: "star inside a role pattern", policy: open + "p, group:all, kv/*/read, read, intern, allow\n",
			parts: []string{`policy line 3: pattern "kv/*/read": '*' is allowed only as the whole last segment`}},
		{name: "star inside a role pattern, dry run", policy: open + "p, group:all, kv/*/read, read, intern, allow\n", dryRun: true,
			parts: []string{`pattern "kv/*/read": '*' is allowed only as the whole last segment`}},
		{name: "subject neither SPIFFE ID nor group", policy: "p, alice, reports-read, read, intern, allow",
			parts: []string{`policy line 1: subject "alice": want a SPIFFE ID (spiffe://trust-domain/path) or group:<name>`}},
		{name: "unknown level", policy: "p, group:all, reports-read, read, expert, allow",
			parts: []string{`policy line 1: unknown level "expert"`}},
		{name: "unknown effect", policy: "p, group:all, reports-read, read, intern, permit",
			parts: []string{`policy line 1: effect must be allow or deny, not "permit"`}},
		{name: "missing field", policy: "p, group:all, reports-read, read, allow",
			parts: []string{"policy line 1: p lines have 5 fields, this one has 4"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.admin.SetPolicy(t.Context(), &adminv1.SetPolicyRequest{Model: tt.model, Policy: tt.policy, Comment: tt.name, DryRun: tt.dryRun})
			brokertest.WantCode(t, err, codes.InvalidArgument, append([]string{"policy refused, the current one keeps serving: "}, tt.parts...)...)
		})
	}
	if all, cur := e.versions(t); !slices.Equal(all, []uint64{3, 2, 1}) || cur != 3 {
		t.Errorf("after refusals: versions %v, current %d; want [3 2 1], 3", all, cur)
	}
	writer.mustFetch(t, "reports-write", "")

	// 7. An update based on a stale version is refused.
	_, err = e.admin.SetPolicy(ctx, &adminv1.SetPolicyRequest{Policy: onlyReportsRead(e), Comment: "stale", ExpectedVersion: 1})
	brokertest.WantCode(t, err, codes.FailedPrecondition, "the policy is at version 3, not 1")
	_, err = e.admin.RollbackPolicy(ctx, &adminv1.RollbackPolicyRequest{Version: 2, Comment: "stale", ExpectedVersion: 2})
	brokertest.WantCode(t, err, codes.FailedPrecondition, "the policy is at version 3, not 2")
	writer.mustFetch(t, "reports-write", "")

	// 8. The store's version survives restarts: with the same files, with
	// files saying something else, and with no files at all. (On t: a
	// broker started in a subtest would stop with it.)
	restart := func(how string) {
		t.Helper()
		e.b.Stop()
		e.start(t)
		e.redial(t, &writer)
		got, err := e.admin.GetPolicy(ctx, &adminv1.GetPolicyRequest{})
		if err != nil {
			t.Fatalf("%s: %v", how, err)
		}
		if got.GetVersion().GetVersion() != 3 || got.GetPolicy() != open || !got.GetVersion().GetCurrent() {
			t.Errorf("%s: serving %v with policy %q; want version 3 with the open policy", how, got.GetVersion(), got.GetPolicy())
		}
		if all, _ := e.versions(t); !slices.Equal(all, []uint64{3, 2, 1}) {
			t.Errorf("%s: versions %v, want [3 2 1]", how, all)
		}
		if _, err := writer.fetch(ctx, "reports-write", ""); err != nil {
			t.Errorf("%s: fetching reports-write: %v", how, err)
		}
	}
	restart("restart")
	if err := os.WriteFile(e.cfg.Policy.PolicyFile, []byte(onlyReportsRead(e)), 0o600); err != nil {
		t.Fatal(err)
	}
	restart("restart with other policy files")
	gone := t.TempDir()
	e.cfg.Policy = config.PolicyConfig{ModelFile: filepath.Join(gone, "model.conf"), PolicyFile: filepath.Join(gone, "policy.csv")}
	restart("restart without the policy files")

	// 9. Of concurrent updates expecting the same version, one wins.
	const racers = 8
	errs := make(chan error, racers)
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			_, err := e.admin.SetPolicy(ctx, &adminv1.SetPolicyRequest{Policy: open, Comment: fmt.Sprint("racer ", i), ExpectedVersion: 3})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	won := 0
	for err := range errs {
		if err == nil {
			won++
			continue
		}
		brokertest.WantCode(t, err, codes.FailedPrecondition, "the policy is at version 4, not 3")
	}
	if all, cur := e.versions(t); won != 1 || !slices.Equal(all, []uint64{4, 3, 2, 1}) || cur != 4 {
		t.Errorf("%d of %d racers won; versions %v, current %d; want one, [4 3 2 1], 4", won, racers, all, cur)
	}
}

// The configured files seed an empty store once: brokers started and
// stopped in quick succession, with the files changed in between, leave one
// version, the first files'.
func TestPolicySeededOnceAcrossQuickRestarts(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	open := brokertest.OpenPolicy(f.Stack.TrustDomain)
	narrow := "g, " + f.Stack.TrustDomain.IDString() + "/*, group:all\np, group:all, reports-read, read, intern, allow\n"
	for i := range 8 {
		if err := os.WriteFile(cfg.Policy.PolicyFile, []byte([]string{open, narrow}[i%2]), 0o600); err != nil {
			t.Fatal(err)
		}
		f.Start(t, cfg).Stop()
	}
	b := f.Start(t, cfg)
	admin := b.Dial(t, f.Admin).Admin
	got, err := admin.GetPolicy(t.Context(), &adminv1.GetPolicyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetVersion().GetVersion() != 1 || got.GetVersion().GetAuthor() != "atfd" || got.GetPolicy() != open {
		t.Errorf("serving %v with policy %q; want the seeded version 1 with the first files' policy", got.GetVersion(), got.GetPolicy())
	}
	if l, err := admin.ListPolicies(t.Context(), &adminv1.ListPoliciesRequest{}); err != nil || len(l.GetVersions()) != 1 {
		t.Errorf("ListPolicies = %v, %v; want one version", l, err)
	}
}

// A stored policy that no longer loads (a downgrade, a hand-edited store)
// stops the start, saying what to do, rather than serving a guess; the
// files do not stand in for it.
func TestPolicyStoredButBrokenStopsTheStart(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	b := f.Start(t, cfg)
	if r, err := b.Dial(t, f.Admin).Admin.GetPolicy(t.Context(), &adminv1.GetPolicyRequest{}); err != nil || r.GetVersion().GetVersion() != 1 {
		t.Fatalf("seeded policy = %v, %v", r, err)
	}
	b.Stop()
	st, err := store.Open(cfg.StorePath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = st.PutPolicy(store.PolicyVersion{Author: "someone", Comment: "hand-edited", Model: "[request_definition]\nr = sub\n", Policy: ""}, 1)
	if cerr := st.Close(); err != nil || cerr != nil {
		t.Fatalf("storing a broken policy: %v, %v", err, cerr)
	}
	if _, err := f.TryStart(t, cfg); err == nil || !strings.Contains(err.Error(), "stored policy version 2 does not load (roll back with an older atfd, or restore a backup)") {
		t.Fatalf("start with a broken stored policy: %v", err)
	}
}

// With no policy stored or configured every request is denied, until an
// admin sets one.
func TestSegmentationWithoutPolicy(t *testing.T) {
	f := brokertest.Setup(t)
	cfg := f.Config(t, t.TempDir())
	cfg.Policy = config.PolicyConfig{}
	e := newDelegEnv(t, f, cfg)
	ctx := t.Context()
	reader := e.register(t, "reader", brokerv1.Level_LEVEL_SENIOR, "reports-read")

	_, err := reader.fetch(ctx, "reports-read", "")
	brokertest.WantCode(t, err, codes.PermissionDenied, "no segmentation policy is loaded, so the broker denies every request")
	rec := oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Agent: reader.id.String(), Kind: "credential_denied"})
	wantDetail(t, rec, map[string]string{"decision": "deny", "reason": "no_policy", "policy_version": "0"})
	wantDecisionAudited(t, err, rec)

	_, err = e.admin.GetPolicy(ctx, &adminv1.GetPolicyRequest{})
	brokertest.WantCode(t, err, codes.NotFound, "no policy has been set")
	if all, cur := e.versions(t); len(all) != 0 || cur != 0 {
		t.Errorf("versions %v, current %d; want none", all, cur)
	}
	tp, err := e.admin.TestPolicy(ctx, &adminv1.TestPolicyRequest{SpiffeId: reader.id.String(), Role: "reports-read"})
	if err != nil || tp.GetDecision().GetOutcome() != adminv1.Outcome_OUTCOME_DENY || tp.GetDecision().GetReason() != "no_policy" {
		t.Errorf("TestPolicy = %v, %v; want a no_policy denial", tp, err)
	}
	// Without a model there is none to keep.
	_, err = e.admin.SetPolicy(ctx, &adminv1.SetPolicyRequest{Policy: brokertest.OpenPolicy(f.Stack.TrustDomain), Comment: "no model"})
	brokertest.WantCode(t, err, codes.FailedPrecondition, "no policy has been set yet: send a model with the first policy")

	set, err := e.admin.SetPolicy(ctx, &adminv1.SetPolicyRequest{Model: policy.Model, Policy: brokertest.OpenPolicy(f.Stack.TrustDomain), Comment: "first policy"})
	if err != nil {
		t.Fatal(err)
	}
	if v := set.GetVersion(); v.GetVersion() != 1 || v.GetAuthor() != f.Admin.String() || !v.GetCurrent() {
		t.Errorf("SetPolicy = %v", v)
	}
	reader.mustFetch(t, "reports-read", "")
}

// The shipped model's maturity table and data classification, under the
// open policy: pii needs Senior, an Intern reads only; what is issued reads
// its secret in Vault and nothing else.
func TestSegmentationMaturityAndClassification(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	all := []string{"reports-read", "reports-write", "payroll-read"}
	intern := e.register(t, "intern", brokerv1.Level_LEVEL_INTERN, all...)
	junior := e.register(t, "junior", brokerv1.Level_LEVEL_JUNIOR, all...)
	senior := e.register(t, "senior", brokerv1.Level_LEVEL_SENIOR, all...)
	principal := e.register(t, "principal", brokerv1.Level_LEVEL_PRINCIPAL, all...)

	for _, tt := range []struct {
		name  string
		agent delegAgent
		role  string
		// parts of the refusal; none: issued, reading path (its key, with
		// value if set) and not other.
		parts                 []string
		path, key, val, other string
	}{
		{name: "intern pii read", agent: intern, role: "payroll-read",
			parts: []string{`role "payroll-read" (read, pii data) needs maturity level senior or above; agent ` + intern.id.String() + " is intern"}},
		{name: "junior pii read", agent: junior, role: "payroll-read",
			parts: []string{`role "payroll-read" (read, pii data) needs maturity level senior or above; agent ` + junior.id.String() + " is junior"}},
		{name: "intern write", agent: intern, role: "reports-write",
			parts: []string{`intern agents may hold only read credentials (role "reports-write" is write)`}},
		{name: "senior pii read", agent: senior, role: "payroll-read",
			path: "secret/data/demo/payroll", key: "total", val: "1,234,567", other: "secret/data/demo/reports"},
		{name: "principal pii read", agent: principal, role: "payroll-read",
			path: "secret/data/demo/payroll", key: "total", val: "1,234,567", other: "secret/data/demo/reports"},
		// Other tests rewrite the reports secret: its value varies.
		{name: "intern internal read", agent: intern, role: "reports-read",
			path: "secret/data/demo/reports", key: "summary", other: "secret/data/demo/payroll"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.agent.fetch(t.Context(), tt.role, "")
			if len(tt.parts) > 0 {
				brokertest.WantCode(t, err, codes.PermissionDenied, tt.parts...)
				return
			}
			if err != nil {
				t.Fatalf("fetch %s: %v", tt.role, err)
			}
			v := f.VaultAs(t, c.GetToken())
			s, err := v.Logical().ReadWithContext(t.Context(), tt.path)
			if err != nil || s == nil {
				t.Fatalf("reading %s: %v", tt.path, err)
			}
			data, _ := s.Data["data"].(map[string]any)
			if got, _ := data[tt.key].(string); got == "" || (tt.val != "" && got != tt.val) {
				t.Errorf("reading %s: %s = %q in %v, want %q", tt.path, tt.key, got, s.Data, tt.val)
			}
			if _, err := v.Logical().ReadWithContext(t.Context(), tt.other); err == nil || !strings.Contains(err.Error(), "permission denied") {
				t.Errorf("reading %s: err = %v, want permission denied", tt.other, err)
			}
		})
	}
}

// TestPolicy explains a decision without issuing anything, against the
// current policy or a candidate, which it never puts in force.
func TestPolicyTestExplains(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	junior := e.register(t, "junior", brokerv1.Level_LEVEL_JUNIOR, "reports-read", "reports-write", "payroll-read")
	senior := e.register(t, "senior", brokerv1.Level_LEVEL_SENIOR, "reports-read", "reports-write", "payroll-read")
	intern := e.register(t, "intern", brokerv1.Level_LEVEL_INTERN, "reports-read", "reports-write")
	unregistered := f.ID(t, "unregistered")
	td := f.Stack.TrustDomain.IDString()
	openLine := "p, group:all, *, *, intern, allow"
	denySenior := "p, " + senior.id.String() + ", reports-read, read, intern, deny"

	type want struct {
		outcome        adminv1.Outcome
		reason         string
		message        string
		matched        []string
		rule           string
		ttl            time.Duration
		maxUses        int32
		notify         bool
		version        uint64
		class, classif string
		level          brokerv1.Level
	}
	for _, tt := range []struct {
		name string
		req  *adminv1.TestPolicyRequest
		want want
	}{
		{"level too low for pii", &adminv1.TestPolicyRequest{SpiffeId: junior.id.String(), Role: "payroll-read"}, want{
			outcome: adminv1.Outcome_OUTCOME_DENY, reason: "level_too_low", message: "needs maturity level senior or above; agent " + junior.id.String() + " is junior",
			version: 1, class: "read", classif: "pii", level: brokerv1.Level_LEVEL_JUNIOR}},
		{"allowed read", &adminv1.TestPolicyRequest{SpiffeId: senior.id.String(), Role: "reports-read"}, want{
			outcome: adminv1.Outcome_OUTCOME_ALLOW, reason: "allowed", message: `senior agent may hold read role "reports-read"`,
			matched: []string{openLine}, rule: "senior: read allowed", ttl: 15 * time.Minute,
			version: 1, class: "read", classif: "internal", level: brokerv1.Level_LEVEL_SENIOR}},
		{"senior write notifies", &adminv1.TestPolicyRequest{SpiffeId: senior.id.String(), Role: "reports-write"}, want{
			outcome: adminv1.Outcome_OUTCOME_ALLOW, reason: "allowed", message: `senior agent may hold write role "reports-write"`,
			matched: []string{openLine}, rule: "senior: write allowed, notify", ttl: 10 * time.Minute, notify: true,
			version: 1, class: "write", classif: "internal", level: brokerv1.Level_LEVEL_SENIOR}},
		{"junior write waits for approval", &adminv1.TestPolicyRequest{SpiffeId: junior.id.String(), Role: "reports-write"}, want{
			outcome: adminv1.Outcome_OUTCOME_PENDING_APPROVAL, reason: "approval_required", message: "need a human's approval",
			matched: []string{openLine}, rule: "junior: write needs human approval", ttl: 10 * time.Minute,
			version: 1, class: "write", classif: "internal", level: brokerv1.Level_LEVEL_JUNIOR}},
		{"intern write is an invariant", &adminv1.TestPolicyRequest{SpiffeId: intern.id.String(), Role: "reports-write"}, want{
			outcome: adminv1.Outcome_OUTCOME_DENY, reason: "class_not_allowed", message: "intern agents may hold only read credentials",
			rule: "intern: read only (invariant)", class: "write", classif: "internal", level: brokerv1.Level_LEVEL_INTERN}},
		{"role outside the manifest", &adminv1.TestPolicyRequest{SpiffeId: intern.id.String(), Role: "payroll-read"}, want{
			outcome: adminv1.Outcome_OUTCOME_DENY, reason: "not_in_manifest", message: `role "payroll-read" is not in agent`,
			class: "read", classif: "pii", level: brokerv1.Level_LEVEL_INTERN}},
		{"level override", &adminv1.TestPolicyRequest{SpiffeId: junior.id.String(), Role: "payroll-read", Level: brokerv1.Level_LEVEL_SENIOR}, want{
			outcome: adminv1.Outcome_OUTCOME_ALLOW, reason: "allowed", matched: []string{openLine}, rule: "senior: read allowed", ttl: 2 * time.Minute,
			version: 1, class: "read", classif: "pii", level: brokerv1.Level_LEVEL_SENIOR}},
		{"unregistered agent at a level", &adminv1.TestPolicyRequest{SpiffeId: unregistered.String(), Role: "reports-read", Level: brokerv1.Level_LEVEL_PRINCIPAL}, want{
			outcome: adminv1.Outcome_OUTCOME_ALLOW, reason: "allowed", matched: []string{openLine}, rule: "principal: read allowed", ttl: 5 * time.Minute, maxUses: 100,
			version: 1, class: "read", classif: "internal", level: brokerv1.Level_LEVEL_PRINCIPAL}},
		{"unregistered agent decides as an intern", &adminv1.TestPolicyRequest{SpiffeId: unregistered.String(), Role: "reports-read"}, want{
			outcome: adminv1.Outcome_OUTCOME_ALLOW, reason: "allowed", matched: []string{openLine}, rule: "intern: read allowed", ttl: 30 * time.Minute,
			version: 1, class: "read", classif: "internal", level: brokerv1.Level_LEVEL_INTERN}},
		{"candidate with a deny line", &adminv1.TestPolicyRequest{SpiffeId: senior.id.String(), Role: "reports-read",
			Policy: brokertest.OpenPolicy(f.Stack.TrustDomain) + denySenior}, want{
			outcome: adminv1.Outcome_OUTCOME_DENY, reason: "policy_denied", message: "a segmentation rule denies agent " + senior.id.String() + ` the read role "reports-read"`,
			matched: []string{denySenior}, class: "read", classif: "internal", level: brokerv1.Level_LEVEL_SENIOR}},
		{"candidate raising the level", &adminv1.TestPolicyRequest{SpiffeId: senior.id.String(), Role: "payroll-read",
			Policy: "g, " + td + "/*, group:all\np, group:all, payroll-read, read, principal, allow\n"}, want{
			outcome: adminv1.Outcome_OUTCOME_DENY, reason: "level_too_low", message: "needs maturity level principal or above; agent " + senior.id.String() + " is senior",
			class: "read", classif: "pii", level: brokerv1.Level_LEVEL_SENIOR}},
		{"candidate with nested groups", &adminv1.TestPolicyRequest{SpiffeId: senior.id.String(), Role: "reports-read",
			Policy: "g, " + td + "/*, group:agents\ng, group:agents, group:all\np, group:all, reports-read, read, intern, allow\n"}, want{
			outcome: adminv1.Outcome_OUTCOME_ALLOW, reason: "allowed", matched: []string{"p, group:all, reports-read, read, intern, allow"},
			rule: "senior: read allowed", ttl: 15 * time.Minute, class: "read", classif: "internal", level: brokerv1.Level_LEVEL_SENIOR}},
		{"candidate denying through a group", &adminv1.TestPolicyRequest{SpiffeId: senior.id.String(), Role: "reports-write",
			Policy: brokertest.OpenPolicy(f.Stack.TrustDomain) + "g, " + senior.id.String() + ", group:frozen\np, group:frozen, *, write, intern, deny\n"}, want{
			outcome: adminv1.Outcome_OUTCOME_DENY, reason: "policy_denied", message: "a segmentation rule denies agent " + senior.id.String(),
			matched: []string{"p, group:frozen, *, write, intern, deny"}, class: "write", classif: "internal", level: brokerv1.Level_LEVEL_SENIOR}},
		{"candidate without a rule", &adminv1.TestPolicyRequest{SpiffeId: senior.id.String(), Role: "reports-write", Policy: onlyReportsRead(e)}, want{
			outcome: adminv1.Outcome_OUTCOME_DENY, reason: "no_policy_match", message: "no segmentation rule lets agent " + senior.id.String(),
			class: "write", classif: "internal", level: brokerv1.Level_LEVEL_SENIOR}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := e.admin.TestPolicy(t.Context(), tt.req)
			if err != nil {
				t.Fatalf("TestPolicy: %v", err)
			}
			d, w := r.GetDecision(), tt.want
			if d.GetOutcome() != w.outcome || d.GetReason() != w.reason || !strings.Contains(d.GetMessage(), w.message) ||
				!slices.Equal(d.GetMatchedPolicy(), w.matched) || d.GetMaturityRule() != w.rule || d.GetTtl().AsDuration() != w.ttl ||
				d.GetMaxUses() != w.maxUses || d.GetNotify() != w.notify || d.GetPolicyVersion() != w.version ||
				d.GetClass() != w.class || d.GetClassification() != w.classif || d.GetLevel() != w.level {
				t.Errorf("decision = %v\nwant %+v", d, w)
			}
		})
	}
	for _, tt := range []struct {
		name  string
		req   *adminv1.TestPolicyRequest
		code  codes.Code
		parts []string
	}{
		{"candidate that does not load", &adminv1.TestPolicyRequest{SpiffeId: senior.id.String(), Role: "reports-read", Policy: "p, group:all, kv/*/read, read, intern, allow"},
			codes.InvalidArgument, []string{"candidate policy does not load", "'*' is allowed only as the whole last segment"}},
		{"non-canonical role", &adminv1.TestPolicyRequest{SpiffeId: senior.id.String(), Role: "Reports-read"},
			codes.InvalidArgument, []string{`uppercase letters are not allowed; use lowercase: "reports-read"`}},
		{"undefined role", &adminv1.TestPolicyRequest{SpiffeId: senior.id.String(), Role: "no-such-role"},
			codes.NotFound, []string{`role "no-such-role" is not defined in the broker's roles file`}},
		{"untrusted trust domain", &adminv1.TestPolicyRequest{SpiffeId: "spiffe://elsewhere.test/agents/x", Role: "reports-read"},
			codes.InvalidArgument, []string{"spiffe://elsewhere.test/agents/x can never authenticate here"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.admin.TestPolicy(t.Context(), tt.req)
			brokertest.WantCode(t, err, tt.code, tt.parts...)
		})
	}

	// The candidates changed nothing: version 1 serves, the senior reads.
	if all, cur := e.versions(t); !slices.Equal(all, []uint64{1}) || cur != 1 {
		t.Errorf("versions %v, current %d; want [1], 1", all, cur)
	}
	senior.mustFetch(t, "reports-read", "")
	// Its registration and placement at Junior are the junior's records:
	// TestPolicy wrote none.
	for _, r := range auditOf(t, e.admin, &adminv1.QueryAuditRequest{Agent: junior.id.String()}) {
		if k := r.GetKind(); k != "agent_registered" && k != "promotion_signed_off" && k != "agent_migrate" {
			t.Errorf("TestPolicy left an audit record: %v", r)
		}
	}
}

// Role names are checked at the edge, never rewritten: each spelling that
// could mean something else after cleaning is refused saying why, by both
// FetchCredential and TestPolicy.
func TestCanonicalRoleNames(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	agent := e.register(t, "agent", brokerv1.Level_LEVEL_SENIOR, "reports-read")

	for _, tt := range []struct {
		name, role string
		code       codes.Code
		parts      []string
	}{
		{"dot segment", "reports-read/../x", codes.InvalidArgument, []string{`role "reports-read/../x": dot segments are not allowed: ".." at byte 13`}},
		{"uppercase", "Reports-read", codes.InvalidArgument, []string{`role "Reports-read": uppercase letters are not allowed; use lowercase: "reports-read"`}},
		{"percent-encoding", "reports%2dread", codes.InvalidArgument, []string{"percent-encoding is not allowed; write the name decoded"}},
		{"trailing space", "reports-read ", codes.InvalidArgument, []string{"whitespace or control character U+0020 at byte 12 is not allowed"}},
		{"fullwidth letter", "ｒeports-read", codes.InvalidArgument, []string{"non-ASCII character U+FF52 at byte 0 is not allowed"}},
		{"zero-width space", "reports-read\u200b", codes.InvalidArgument, []string{"non-ASCII character U+200B at byte 12 is not allowed"}},
		{"Casbin token", "p.sub", codes.InvalidArgument, []string{`segment "p.sub" looks like a Casbin matcher token (r., p., g., e., m.)`}},
		{"pattern character", "reports-*", codes.InvalidArgument, []string{"'*' at byte 8 is a pattern or expression character and is not allowed"}},
		{"leading slash", "/reports-read", codes.InvalidArgument, []string{`leading '/' is not allowed; use "reports-read"`}},
		{"empty segment", "reports//read", codes.InvalidArgument, []string{`empty segment ("//") at byte 7`}},
		{"doubled separator", "reports--read", codes.InvalidArgument, []string{`segment "reports--read": '.', '_' and '-' must each stand between two letters or digits`}},
		{"backslash", `reports\read`, codes.InvalidArgument, []string{"backslash at byte 7 is not allowed; segments are separated by '/'"}},
		{"quote", `reports"read`, codes.InvalidArgument, []string{`quote character " at byte 7 is not allowed`}},
		{"canonical but undefined", "reports-admin", codes.NotFound, []string{`role "reports-admin" is not defined in the broker's roles file`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := agent.fetch(t.Context(), tt.role, "")
			brokertest.WantCode(t, err, tt.code, tt.parts...)
			_, err = e.admin.TestPolicy(t.Context(), &adminv1.TestPolicyRequest{SpiffeId: agent.id.String(), Role: tt.role})
			brokertest.WantCode(t, err, tt.code, tt.parts...)
		})
	}
	agent.mustFetch(t, "reports-read", "")
}

// Under a grant every delegator up the chain must be allowed the role by
// the policy too: a deny line for the delegator revokes its grant at once
// (and stops any fetch under it), not the delegatee's own authority. (The
// decision's own check of every delegator, for what a policy change has
// not revoked, is decide's: broker/decide/decide_test.go.)
func TestSegmentationDelegatorDenied(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	a := e.register(t, "a", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	b := e.register(t, "b", brokerv1.Level_LEVEL_SENIOR, "reports-read")
	g := a.mustDelegate(t, b.id, "", time.Hour, 0, "reports-read")
	b.mustFetch(t, "reports-read", g.GetId())

	denyA := "p, " + a.id.String() + ", reports-read, read, intern, deny"
	set, err := e.admin.SetPolicy(t.Context(), &adminv1.SetPolicyRequest{Policy: brokertest.OpenPolicy(f.Stack.TrustDomain) + denyA + "\n", Comment: "a may not read reports"})
	if err != nil || set.GetVersion().GetVersion() != 2 {
		t.Fatalf("SetPolicy = %v, %v; want version 2", set, err)
	}
	if s := set.GetSummary(); s.GetGrantsRevoked() != 1 || s.GetCredentialsRevoked() != 1 {
		t.Errorf("SetPolicy summary = %v, want A's grant and B's credential under it revoked", s)
	}
	_, err = b.fetch(t.Context(), "reports-read", g.GetId())
	brokertest.WantCode(t, err, codes.PermissionDenied, "grant "+g.GetId())
	rec := oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Agent: b.id.String(), Decision: "deny"})
	wantDetail(t, rec, map[string]string{"reason": "grant", "grant_id": g.GetId()})
	wantDecisionAudited(t, err, rec)

	_, err = a.fetch(t.Context(), "reports-read", "")
	brokertest.WantCode(t, err, codes.PermissionDenied, "a segmentation rule denies agent "+a.id.String())
	// B's own authority is untouched, and A's other roles too.
	b.mustFetch(t, "reports-read", "")
	a.mustFetch(t, "reports-write", "")
}

// The audit trail: an issuance's record explains the decision; the chain
// verifies; the JSON-lines copy catches up with the store and verifies on
// its own; queries filter and page.
func TestAuditTrail(t *testing.T) {
	f := brokertest.Setup(t)
	dir := t.TempDir()
	cfg := f.Config(t, dir)
	cfg.Audit.File = filepath.Join(dir, "audit.jsonl")
	e := newDelegEnv(t, f, cfg)
	senior := e.register(t, "senior", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	intern := e.register(t, "intern", brokerv1.Level_LEVEL_INTERN, reportsRW...)

	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-request-id", "seg-audit-1")
	r, err := senior.bc.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-read"})
	if err != nil {
		t.Fatal(err)
	}
	senior.mustFetch(t, "reports-write", "")
	_, err = intern.fetch(t.Context(), "reports-write", "")
	brokertest.WantCode(t, err, codes.PermissionDenied, "intern agents may hold only read credentials")
	intern.mustFetch(t, "reports-read", "")

	issued := oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Kind: "credential_issued", Agent: senior.id.String(), Role: "reports-read"})
	c := r.GetCredential()
	if issued.GetActor() != senior.id.String() || issued.GetSubject() != c.GetAccessor() {
		t.Errorf("issuance record = %v", issued)
	}
	wantDetail(t, issued, map[string]string{
		"decision": "allow", "reason": "allowed", "policy": "p, group:all, *, *, intern, allow", "rule": "senior: read allowed",
		"policy_version": "1", "classification": "internal", "class": "read", "level": "senior", "role": "reports-read",
		"request_id": "seg-audit-1", "decision_id": c.GetDecisionId(), "chain": senior.id.String(), "policies": "demo-reports-read",
	})
	if issued.GetDetail()["expires_at"] == "" {
		t.Errorf("issuance record has no expires_at: %v", issued.GetDetail())
	}
	denied := oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Kind: "credential_denied", Agent: intern.id.String()})
	wantDetail(t, denied, map[string]string{"decision": "deny", "reason": "class_not_allowed", "rule": "intern: read only (invariant)", "level": "intern"})
	if denied.GetDetail()["request_id"] == "" {
		t.Errorf("denial record has no request_id: %v", denied.GetDetail())
	}
	// Without the header the broker makes up a request id.
	if rid := oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Kind: "credential_issued", Role: "reports-write"}).GetDetail()["request_id"]; rid == "" || rid == "seg-audit-1" {
		t.Errorf("request_id = %q, want one made up", rid)
	}

	v, err := e.admin.VerifyAudit(t.Context(), &adminv1.VerifyAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	all := auditOf(t, e.admin, &adminv1.QueryAuditRequest{})
	if !v.GetOk() || v.GetError() != "" || v.GetHeadSeq() != v.GetRecords() || v.GetRecords() != uint64(len(all)) ||
		v.GetHeadHash() != all[len(all)-1].GetHash() {
		t.Errorf("VerifyAudit = %v with %d records queried", v, len(all))
	}
	// Every record a request wrote carries its id; only atfd's own (the
	// policy seeded at start) have none.
	for _, r := range all {
		if r.GetDetail()["request_id"] == "" && r.GetActor() != "atfd" {
			t.Errorf("record %d (%s by %s) has no request_id", r.GetSeq(), r.GetKind(), r.GetActor())
		}
	}

	t.Run("JSON-lines copy", func(t *testing.T) { wantAuditFile(t, cfg.Audit.File, v) })

	// The copy resumes after a restart (on t: a broker started in a subtest
	// would stop with it).
	e.b.Stop()
	e.start(t)
	e.redial(t, &senior)
	senior.mustFetch(t, "reports-read", "")
	v, err = e.admin.VerifyAudit(t.Context(), &adminv1.VerifyAuditRequest{})
	if err != nil || !v.GetOk() {
		t.Fatalf("VerifyAudit after restart = %v, %v", v, err)
	}
	t.Run("JSON-lines copy across a restart", func(t *testing.T) { wantAuditFile(t, cfg.Audit.File, v) })
	all = auditOf(t, e.admin, &adminv1.QueryAuditRequest{})

	t.Run("filters", func(t *testing.T) {
		mid := denied.GetTime()
		for _, tt := range []struct {
			name  string
			q     *adminv1.QueryAuditRequest
			match func(*adminv1.AuditRecord) bool
		}{
			{"role", &adminv1.QueryAuditRequest{Role: "reports-write"}, func(r *adminv1.AuditRecord) bool { return r.GetDetail()["role"] == "reports-write" }},
			{"kind", &adminv1.QueryAuditRequest{Kind: "credential_issued"}, func(r *adminv1.AuditRecord) bool { return r.GetKind() == "credential_issued" }},
			{"decision", &adminv1.QueryAuditRequest{Decision: "deny"}, func(r *adminv1.AuditRecord) bool { return r.GetDetail()["decision"] == "deny" }},
			{"agent", &adminv1.QueryAuditRequest{Agent: intern.id.String()}, func(r *adminv1.AuditRecord) bool {
				return r.GetActor() == intern.id.String() || r.GetDetail()["agent"] == intern.id.String()
			}},
			{"since, inclusive", &adminv1.QueryAuditRequest{Since: mid}, func(r *adminv1.AuditRecord) bool { return !r.GetTime().AsTime().Before(mid.AsTime()) }},
			{"until, exclusive", &adminv1.QueryAuditRequest{Until: mid}, func(r *adminv1.AuditRecord) bool { return r.GetTime().AsTime().Before(mid.AsTime()) }},
			{"since and until", &adminv1.QueryAuditRequest{Since: all[1].GetTime(), Until: mid}, func(r *adminv1.AuditRecord) bool {
				return !r.GetTime().AsTime().Before(all[1].GetTime().AsTime()) && r.GetTime().AsTime().Before(mid.AsTime())
			}},
			{"agent and role", &adminv1.QueryAuditRequest{Agent: senior.id.String(), Role: "reports-write"}, func(r *adminv1.AuditRecord) bool {
				return (r.GetActor() == senior.id.String() || r.GetDetail()["agent"] == senior.id.String()) && r.GetDetail()["role"] == "reports-write"
			}},
			{"nothing", &adminv1.QueryAuditRequest{Until: timestamppb.New(all[0].GetTime().AsTime().Add(-time.Hour))}, func(*adminv1.AuditRecord) bool { return false }},
		} {
			t.Run(tt.name, func(t *testing.T) {
				var want []uint64
				for _, r := range all {
					if tt.match(r) {
						want = append(want, r.GetSeq())
					}
				}
				if tt.name != "nothing" && (len(want) == 0 || len(want) == len(all)) {
					t.Fatalf("%d of %d records match: the case does not test the filter", len(want), len(all))
				}
				seqs := func(recs []*adminv1.AuditRecord) []uint64 {
					var out []uint64
					for _, r := range recs {
						out = append(out, r.GetSeq())
					}
					return out
				}
				if got := seqs(auditOf(t, e.admin, tt.q)); !slices.Equal(got, want) {
					t.Errorf("records %v, want %v", got, want)
				}
				// Pages of one give the same records, each once.
				paged := proto.Clone(tt.q).(*adminv1.QueryAuditRequest)
				paged.PageSize = 1
				if got := seqs(auditOf(t, e.admin, paged)); !slices.Equal(got, want) {
					t.Errorf("pages of one: records %v, want %v", got, want)
				}
			})
		}
	})
	t.Run("pages", func(t *testing.T) {
		r, err := e.admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{PageSize: 2})
		if err != nil || len(r.GetRecords()) != 2 || r.GetNextAfterSeq() != r.GetRecords()[1].GetSeq() {
			t.Fatalf("first page = %v, %v", r, err)
		}
		r, err = e.admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{PageSize: 2, AfterSeq: r.GetNextAfterSeq()})
		if err != nil || len(r.GetRecords()) == 0 || r.GetRecords()[0].GetSeq() != 3 {
			t.Fatalf("second page = %v, %v", r, err)
		}
		r, err = e.admin.QueryAudit(t.Context(), &adminv1.QueryAuditRequest{AfterSeq: all[len(all)-1].GetSeq()})
		if err != nil || len(r.GetRecords()) != 0 || r.GetNextAfterSeq() != 0 {
			t.Errorf("after the head = %v, %v; want nothing and no next page", r, err)
		}
	})
}

// Free text is redacted before it is stored: a purpose, a revocation's
// reason, a policy comment. The raw text appears in no audit record.
func TestRedaction(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	a := e.register(t, "a", brokerv1.Level_LEVEL_SENIOR, reportsRW...)
	b := e.register(t, "b", brokerv1.Level_LEVEL_SENIOR, "reports-read")
	intern := e.register(t, "intern", brokerv1.Level_LEVEL_INTERN, reportsRW...)
	const (
		email       = "alice@example.com"
		vaultToken  = "hvs.CAESIJ0123456789abcdefghij"
		purpose     = "ping " + email + " token " + vaultToken
		reasonMail  = "carol@example.com"
		reason      = "leaked, reported by " + reasonMail
		commentMail = "dave@example.com"
	)
	raws := []string{email, vaultToken, reasonMail, commentMail}
	wantRedacted := func(t *testing.T, what, got string, kinds ...string) {
		t.Helper()
		for _, k := range kinds {
			if !strings.Contains(got, "[REDACTED:"+k+"]") {
				t.Errorf("%s = %q, want [REDACTED:%s]", what, got, k)
			}
		}
		for _, raw := range raws {
			if strings.Contains(got, raw) {
				t.Errorf("%s = %q holds %q", what, got, raw)
			}
		}
	}

	t.Run("purpose", func(t *testing.T) {
		if _, err := a.bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read", Purpose: purpose}); err != nil {
			t.Fatal(err)
		}
		rec := oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Kind: "credential_issued", Agent: a.id.String()})
		wantRedacted(t, "issuance purpose", rec.GetDetail()["purpose"], "email", "vault-token")
		if p := rec.GetDetail()["purpose"]; !strings.HasPrefix(p, "ping ") {
			t.Errorf("issuance purpose = %q, want the plain words kept", p)
		}
		_, err := intern.bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-write", Purpose: purpose})
		brokertest.WantCode(t, err, codes.PermissionDenied, "intern agents may hold only read credentials")
		rec = oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Kind: "credential_denied", Agent: intern.id.String()})
		wantRedacted(t, "denial purpose", rec.GetDetail()["purpose"], "email", "vault-token")
	})
	t.Run("revocation reason", func(t *testing.T) {
		g := a.mustDelegate(t, b.id, "", time.Hour, 0, "reports-read")
		b.mustFetch(t, "reports-read", g.GetId())
		if sum := e.revokeLineage(t, g.GetId(), reason); sum.GetGrantsRevoked() != 1 || sum.GetCredentialsRevoked() != 1 {
			t.Errorf("revocation summary = %v", sum)
		}
		rec := oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Kind: "grant_revoked", Agent: f.Admin.String()})
		if rec.GetSubject() != g.GetId() {
			t.Errorf("grant_revoked record = %v", rec)
		}
		wantDetail(t, rec, map[string]string{"delegator": a.id.String(), "delegatee": b.id.String(), "root": "grant " + g.GetId()})
		wantRedacted(t, "grant_revoked reason", rec.GetDetail()["reason"], "email")
		rec = oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Kind: "lineage_revoked", Agent: f.Admin.String()})
		wantDetail(t, rec, map[string]string{"grants_revoked": "1", "credentials_revoked": "1"})
		wantRedacted(t, "lineage_revoked reason", rec.GetDetail()["reason"], "email")
	})
	t.Run("policy comment", func(t *testing.T) {
		v := e.setPolicy(t, brokertest.OpenPolicy(f.Stack.TrustDomain), "per ticket from "+commentMail)
		wantRedacted(t, "version comment", v.GetComment(), "email")
		rec := oneRecord(t, e.admin, &adminv1.QueryAuditRequest{Kind: "policy_updated", Agent: f.Admin.String()})
		wantRedacted(t, "policy_updated comment", rec.GetDetail()["comment"], "email")
	})

	for _, rec := range auditOf(t, e.admin, &adminv1.QueryAuditRequest{}) {
		for k, v := range rec.GetDetail() {
			for _, raw := range raws {
				if strings.Contains(v, raw) {
					t.Errorf("%s record %d: detail %s holds %q", rec.GetKind(), rec.GetSeq(), k, raw)
				}
			}
		}
	}
}

// A query with an upper time bound finds every record before it, also
// when records are appended concurrently: Junior writes (approval requests)
// racing issuances.
func TestAuditQueryUntilUnderConcurrentWrites(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	const agents, requests = 6, 8
	var wg sync.WaitGroup
	for i := range agents {
		junior := e.register(t, fmt.Sprint("junior-", i), brokerv1.Level_LEVEL_JUNIOR, reportsRW...)
		senior := e.register(t, fmt.Sprint("senior-", i), brokerv1.Level_LEVEL_SENIOR, reportsRW...)
		wg.Go(func() {
			for range requests {
				if _, err := junior.bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-write", Justification: "monthly report"}); err != nil {
					t.Errorf("junior write: %v", err)
				}
			}
		})
		wg.Go(func() {
			for range requests {
				if _, err := senior.fetch(t.Context(), "reports-read", ""); err != nil {
					t.Errorf("senior read: %v", err)
				}
			}
		})
	}
	wg.Wait()

	all := auditOf(t, e.admin, &adminv1.QueryAuditRequest{})
	for i := 1; i < len(all); i++ {
		if prev, r := all[i-1], all[i]; r.GetTime().AsTime().Before(prev.GetTime().AsTime()) {
			t.Logf("record %d (%s) is timed %s, before record %d (%s) at %s", r.GetSeq(), r.GetKind(), r.GetTime().AsTime().Format(time.RFC3339Nano),
				prev.GetSeq(), prev.GetKind(), prev.GetTime().AsTime().Format(time.RFC3339Nano))
		}
	}
	for _, r := range all {
		at := r.GetTime().AsTime()
		found := auditOf(t, e.admin, &adminv1.QueryAuditRequest{Since: r.GetTime(), Until: timestamppb.New(at.Add(time.Nanosecond))})
		if !slices.ContainsFunc(found, func(x *adminv1.AuditRecord) bool { return x.GetSeq() == r.GetSeq() }) {
			t.Errorf("record %d (%s, %s) is not found by a query for [%s, +1ns)", r.GetSeq(), r.GetKind(), at.Format(time.RFC3339Nano), at.Format(time.RFC3339Nano))
		}
	}
}

// A policy line that denies a Principal a role at its level is not escaped
// by delegating the role to an Intern, whose level the line does not reach:
// the delegation is refused, and a grant made before the line was set no
// longer issues, since every delegator is checked at its own level as well
// as at the chain's.
func TestDelegationDoesNotLaunderAPolicyDeny(t *testing.T) {
	f := brokertest.Setup(t)
	e := newDelegEnv(t, f, f.Config(t, t.TempDir()))
	ctx := t.Context()
	p := e.register(t, "launder-principal", brokerv1.Level_LEVEL_PRINCIPAL, "reports-read")
	in := e.register(t, "launder-intern", brokerv1.Level_LEVEL_INTERN, "reports-read")
	g, err := p.delegate(ctx, in.id, "", time.Hour, 0, "reports-read")
	if err != nil {
		t.Fatal(err)
	}
	in.mustFetch(t, "reports-read", g.GetId())

	e.setPolicy(t, brokertest.OpenPolicy(f.Stack.TrustDomain)+"p, "+p.id.String()+", reports-read, read, senior, deny\n", "no reports for P")
	_, err = p.fetch(ctx, "reports-read", "")
	brokertest.WantCode(t, err, codes.PermissionDenied)
	_, err = p.delegate(ctx, in.id, "", time.Hour, 0, "reports-read")
	brokertest.WantCode(t, err, codes.PermissionDenied, p.id.String()+` may not hold role "reports-read" itself`)
	// The policy change revoked P's grant at once.
	_, err = in.fetch(ctx, "reports-read", g.GetId())
	brokertest.WantCode(t, err, codes.PermissionDenied, "grant "+g.GetId(), "was revoked")
	// The Intern's own authority is untouched.
	in.mustFetch(t, "reports-read", "")
}
