package conformance

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/decide"
	"github.com/agentictrust/atf/broker/store"
)

// The checks below turn Evidence into verdicts (docs/conformance.md, "Live
// evidence"). Each says what it saw; missing evidence is a gap, never a
// pass.

// probeSubjects are SPIFFE IDs no agent is registered under: one in each
// configured trust domain and one in a trust domain nobody trusts. A
// segmentation policy that allows any of them a role has an allow-all or
// wildcard line (S-1).
func probeSubjects(tds []string) []string {
	out := make([]string, 0, len(tds)+1)
	for _, td := range tds {
		out = append(out, "spiffe://"+td+"/atf-conformance-probe/unregistered")
	}
	return append(out, "spiffe://conformance-probe.invalid/unregistered")
}

// checkI1: every configured trust domain has a bundle the broker verifies
// callers against.
func checkI1(a assessment) (v verdict) {
	v.add("by construction (tested by TestRefusedCallers, TestAdversarialX509Forgeries): every caller is identified by its SPIFFE ID, verified on every call; the registry is keyed by it")
	var have, missing []string
	for _, td := range a.cfg.TrustDomains {
		if n := a.ev.Identity.Authorities[td]; n > 0 {
			have = append(have, fmt.Sprintf("%s (%d X.509 authorities)", td, n))
		} else {
			missing = append(missing, td)
		}
	}
	if len(have) > 0 {
		v.add("trust bundles the broker verifies callers against now: %s", strings.Join(have, ", "))
	}
	switch {
	case len(have) == 0:
		v.gap("no trust bundle for any configured trust domain (%s): no caller can be identified", strings.Join(a.cfg.TrustDomains, ", "))
		v.notMet = true
	case len(missing) > 0:
		v.gap("no trust bundle for trust domains %s: their agents cannot be identified (check SPIRE federation or the bundle files)", strings.Join(missing, ", "))
	}
	v.add("active agents registered: %d", a.f.active())
	return v
}

// checkI2: the broker's own SVID is current and SPIRE answers, so agents'
// SVIDs are verified against a live bundle.
func checkI2(a assessment) (v verdict) {
	aud := a.cfg.JWTAudience
	if aud == "" {
		aud = "atfd's own SPIFFE ID"
	}
	v.add("callers prove their identity with an X.509-SVID over mutual TLS or a JWT-SVID whose audience is %s, issued and rotated by SPIRE; no static secret", aud)
	id := a.ev.Identity
	switch {
	case id.SVIDNotAfter.IsZero():
		v.gap("the broker has no X.509-SVID to show")
		v.notMet = true
	case !a.ev.Now.Before(id.SVIDNotAfter):
		v.gap("the broker's own X.509-SVID expired at %s: SPIRE is not rotating it", id.SVIDNotAfter.UTC().Format(time.RFC3339))
		v.notMet = true
	default:
		v.add("the broker's own X.509-SVID: issued %s ago, valid for %s more", dur(a.ev.Now.Sub(id.SVIDNotBefore).Round(time.Second)),
			dur(id.SVIDNotAfter.Sub(a.ev.Now).Round(time.Second)))
		// SPIRE rotates at half of an SVID's life: past two thirds, it is late.
		if life := id.SVIDNotAfter.Sub(id.SVIDNotBefore); a.ev.Now.Sub(id.SVIDNotBefore) > life*2/3 {
			v.gap("the broker's X.509-SVID is past two thirds of its life: SPIRE's rotation is late")
		}
	}
	switch w := id.WorkloadAPI; {
	case !w.Checked:
		v.add("SVIDs and bundles come from files: no Workload API to probe")
	case w.Err != "":
		v.gap("SPIRE's Workload API does not answer now (%s): SVIDs and bundles are not rotated", w.Err)
	default:
		v.add("SPIRE's Workload API answered now")
	}
	v.add("active agents with a version and config digest recorded: %d of %d (atfctl agent update --version --config-digest)", a.f.Bound, a.f.active())
	return v
}

// auditTail adds the verification of the audit chain's newest records.
func auditTail(a assessment, v *verdict) {
	t := a.ev.AuditTail
	switch {
	case t.Err != "":
		v.gap("the audit chain does not verify: %s (atfctl audit verify)", t.Err)
		v.notMet = true
	case t.To == 0:
		v.gap("the audit trail has no record to verify")
	default:
		v.add("the hash chain of records %d to %d verified now", t.From, t.To)
	}
}

// webhookDeliveries judges B-4 by what the webhook did, not by its URL
// being set.
func webhookDeliveries(a assessment, v *verdict) {
	d := a.ev.Webhook
	if d.Sinks == 0 {
		v.gap("notifications.webhook is not set: anomalies reach only the audit trail and admins running atfctl events watch, so nobody is alerted (the spec asks for alerts within 60 s)")
		return
	}
	v.add("webhook since atfd started: %d delivered, %d failed, %d queued, %d dropped", d.Delivered, d.Failed, d.Queued, d.Dropped)
	if !d.LastDelivered.IsZero() {
		v.add("last delivered %s ago", dur(a.ev.Now.Sub(d.LastDelivered).Round(time.Second)))
	}
	switch {
	case d.Failed > 0 && !d.LastFailed.Before(d.LastDelivered):
		v.gap("the webhook's last delivery failed %s ago (%s): alerts are not reaching anyone", dur(a.ev.Now.Sub(d.LastFailed).Round(time.Second)), d.LastError)
		v.notMet = true
	case d.Dropped > 0:
		v.gap("%d notifications were dropped (queue full or shutdown)", d.Dropped)
	case d.Delivered == 0:
		v.gap("no notification has reached the webhook since atfd started: its delivery is unproven (any policy change or anomaly sends one)")
	}
}

// checkS1 runs the policy in force on subjects no agent is registered
// under: an allowlist denies them everything.
func checkS1(a assessment) (v verdict) {
	v.add("roles defined in the roles file: %d, each exactly its Vault policies (never root, no default policy)", total(a.f.RoleClasses))
	v.add("by construction (tested by TestSegmentationWithoutPolicy): an unregistered caller gets nothing, whatever the policy; deny by default")
	p := a.ev.Policy
	if p == nil {
		v.gap("no segmentation policy is in force: every credential request is denied until an admin sets one (atfctl policy set)")
		return v
	}
	v.add("segmentation policy in force: version %d, policy lines: %d, lint warnings: %d; every change is versioned, linted and audited", p.Version(), p.Lines(), len(p.Warnings()))
	names := make([]string, 0, len(a.ev.Roles))
	for n := range a.ev.Roles {
		names = append(names, n)
	}
	slices.Sort(names)
	subjects := probeSubjects(a.cfg.TrustDomains)
	probes := 0
	for _, sub := range subjects {
		for _, n := range names {
			r := a.ev.Roles[n].Authz()
			verdict, err := p.DecideUncached(authz.Query{Subject: sub, Role: r.Name, Class: r.Class, Level: authz.Principal, Classification: r.Classification})
			probes++
			switch {
			case err != nil:
				v.gap("the policy in force cannot be evaluated: %v", err)
				v.notMet = true
				return v
			case verdict.Allow:
				v.gap("the policy in force allows %s, which no agent is registered under, the %s role %q (line %q): an allow-all or wildcard line, not an allowlist",
					sub, r.Class, r.Name, verdict.Matched)
				v.notMet = true
				return v
			}
		}
	}
	v.add("probe: %d requests of unregistered subjects (%s) for every role at Principal level, all denied by the policy in force", probes, strings.Join(subjects, ", "))
	return v
}

// gateProbes asks the gate in force what Intern and Junior agents may do
// with write roles (S-2).
func gateProbes(a assessment, v *verdict) {
	g := a.ev.Gate
	if g == nil {
		v.gap("no maturity gate in force")
		v.notMet = true
		return
	}
	probe := authz.Role{Name: "atf-conformance-probe", Class: authz.Write, Classification: authz.Internal, MaxTTL: time.Minute}
	d := g.Decide(nil, &authz.Agent{ID: probeSubjects(nil)[0], Level: authz.Intern, Active: true, Roles: []string{probe.Name}}, probe, 0)
	if d.Outcome != authz.Deny {
		v.gap("the gate in force does not deny an Intern a write role (%s): the Intern invariant does not hold", d.Outcome)
		v.notMet = true
	} else {
		v.add("probe: the gate in force denies an Intern a write role (%s)", d.Rule)
	}
	for _, l := range allLevels[1:] {
		switch {
		case g.LevelMayHold(l, authz.Write):
			v.add("the gate in force: %s may hold write roles", l)
		case g.LevelMayRequest(l, authz.Write):
			v.add("the gate in force: %s writes wait for a human's approval", l)
		}
	}
}

// killProbe runs the admit decision with the global switch on: it must
// refuse, and without it admit.
func killProbe(a assessment, v *verdict) {
	on := decide.Admit(decide.Reasons{}, &store.Kill{At: a.ev.Now, By: "conformance probe"})
	off := decide.Admit(decide.Reasons{}, nil)
	if on == nil || off != nil {
		v.gap("probe: the admit decision does not follow the global kill switch (refused with it on: %t, admitted with it off: %t)", on != nil, off == nil)
		v.notMet = true
		return
	}
	v.add("probe: the admit decision refuses every request with the global switch on (reason %s) and admits with it off", on.Reasons.Reason)
	if a.f.GlobalKill {
		v.add("the global kill switch is on now")
	}
}

// checkR3 judges revocation by the durable queue: empty or draining.
func checkR3(a assessment) (v verdict) {
	v.add("by construction (tested by TestRevokeSessions, TestRevokeLineageKillsDescendants): atfctl revoke sessions revokes every live credential of an agent without blocking it; lineage revocation, deregistration and demotion revoke in one commit before answering, in Vault through the token tree")
	v.add("agents are told at once (BrokerService.WatchRevocations, tested by TestWatchRevocationsOnLineageRevocation) so they drop cached credentials")
	q := a.ev.Queue
	switch {
	case q.Pending == 0:
		v.add("revocations Vault has not confirmed, waiting in the durable queue: none")
	case q.Oldest.IsZero():
		v.add("revocations Vault has not confirmed, waiting in the durable queue: %d (queued before their time was recorded)", q.Pending)
		v.gap("%d revocations wait in the queue for an unknown time: Vault has not confirmed them", q.Pending)
	default:
		age := a.ev.Now.Sub(q.Oldest).Round(time.Second)
		v.add("revocations Vault has not confirmed, waiting in the durable queue: %d, the oldest for %s", q.Pending, dur(age))
		if age > StaleRevocation {
			v.gap("revocations have waited longer than %s (%d queued, the oldest for %s): revoked credentials may still work in Vault", dur(StaleRevocation), q.Pending, dur(age))
			v.notMet = true
		}
	}
	switch vc := a.ev.Vault; {
	case !vc.Checked:
		v.gap("Vault was not probed")
	case vc.Err != "":
		v.gap("Vault does not answer now (%s): revocations wait in the queue", vc.Err)
	default:
		v.add("Vault answered the broker's token now")
	}
	return v
}
