// Package conformance assesses a running broker against the 25 core
// requirements of the ATF conformance specification. It is pure: it reads
// only the Evidence the caller gathered from the running broker (counts,
// probes of its dependencies, the policy and gate in force) and the
// configuration, so the same evidence gives the same statement. Each
// verdict rests on that evidence and says so; a verdict that only the code
// can back says "by construction" and names the test that checks it
// (docs/conformance.md).
package conformance

import (
	"fmt"
	"strings"
	"time"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/breaker"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/monitor"
	"github.com/agentictrust/atf/broker/notify"
	"github.com/agentictrust/atf/broker/protoconv"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/vault"
	"github.com/agentictrust/atf/delegation"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// The ATF conformance specification the statement follows (CONFORMANCE.md
// of github.com/massivescale-ai/agentic-trust-framework), and what it
// assesses.
const (
	atfVersion     = "0.9.0"
	implementation = "ATF Broker (atfd)"
)

// StaleRevocation is how long a revocation may wait in the durable queue
// before R-3 is not met: the queue retries with a backoff of at most a
// minute, so an entry this old has failed several retries.
const StaleRevocation = 5 * time.Minute

// Facts are counts from the registry and the store.
type Facts struct {
	// Agents counts the active (not deregistered) agents by level.
	Agents map[authz.Level]int
	// Active agents without an owner, without a purpose, with an empty
	// capability manifest, with a manifest role the roles file lacks, and
	// with both a version and a config digest recorded.
	NoOwner, NoPurpose, EmptyManifest, UnknownRoles, Bound int
	// Killed counts the agents the kill switch holds; GlobalKill is set
	// while the global switch holds every agent.
	Killed     int
	GlobalKill bool
	// PolicyVersion is the newest stored segmentation policy (0: none).
	PolicyVersion uint64
	// RoleClasses and RoleClassifications count the roles file's roles by
	// class (read, write, privileged) and data classification.
	RoleClasses         map[string]int
	RoleClassifications map[string]int
	// AuditHead is the sequence number of the newest audit record.
	AuditHead uint64
	// BaselinesFormed counts active agents whose behaviour baseline has
	// formed.
	BaselinesFormed int
	// MaxRequestBytes is the largest request the broker reads.
	MaxRequestBytes int
}

// Evidence is what the running broker shows: the registry's counts and
// live checks of its parts, gathered by the caller (broker/adminapi).
type Evidence struct {
	Facts
	// Now is when the evidence was gathered.
	Now time.Time
	// Policy is the segmentation policy in force (nil: none) and Gate the
	// maturity gate in force; Roles the roles file loaded.
	Policy *authz.Policy
	Gate   *authz.Gate
	Roles  map[string]config.Role
	// AuditTail is the newest part of the audit chain, verified now.
	AuditTail AuditTail
	// AuditFile is the audit.file copy's newest record, if configured.
	AuditFile Check
	// Webhook is the notification sinks' delivery outcomes.
	Webhook notify.Deliveries
	// Queue is the durable revocation queue.
	Queue store.QueueState
	// Vault is Vault's answer to the broker's token now, and VaultBreaker
	// the state of the breaker towards it.
	Vault        Check
	VaultBreaker VaultBreaker
	// Identity is the broker's own SVID and trust bundles, from SPIRE.
	Identity Identity
}

// Check is the outcome of one live check: Err empty when it passed; Detail
// says what it saw.
type Check struct {
	Checked     bool
	Err, Detail string
}

// AuditTail is the range of audit records whose hash chain was verified
// (From..To), or the error that stopped it.
type AuditTail struct {
	From, To uint64
	Err      string
}

// VaultBreaker is the breaker towards Vault.
type VaultBreaker struct {
	Open  bool
	Trips uint64
}

// Identity is what SPIRE gives the broker now.
type Identity struct {
	// SVIDNotBefore and SVIDNotAfter bound the broker's own X.509-SVID.
	SVIDNotBefore, SVIDNotAfter time.Time
	// WorkloadAPI is whether SPIRE's Workload API answers now.
	WorkloadAPI Check
	// Authorities counts the X.509 authorities of each configured trust
	// domain's bundle (0: no bundle).
	Authorities map[string]int
}

func (f Facts) active() int {
	n := 0
	for _, c := range f.Agents {
		n += c
	}
	return n
}

// Short names for the statuses and obligations.
const (
	met     = adminv1.ConformanceStatus_CONFORMANCE_STATUS_MET
	partial = adminv1.ConformanceStatus_CONFORMANCE_STATUS_PARTIAL
	notMet  = adminv1.ConformanceStatus_CONFORMANCE_STATUS_NOT_MET
	must    = adminv1.Obligation_OBLIGATION_MUST
	should  = adminv1.Obligation_OBLIGATION_SHOULD
	may     = adminv1.Obligation_OBLIGATION_MAY
)

var allLevels = []authz.Level{authz.Intern, authz.Junior, authz.Senior, authz.Principal}

// assessment is what a requirement's check reads.
type assessment struct {
	cfg    config.Config
	f      Facts
	ev     Evidence
	target authz.Level
}

// verdict is a requirement's check result: met unless a gap is found.
type verdict struct {
	evidence, gaps []string
	notMet         bool // not addressed at all, rather than partly
}

func (v *verdict) add(format string, args ...any) {
	v.evidence = append(v.evidence, fmt.Sprintf(format, args...))
}

func (v *verdict) gap(format string, args ...any) {
	v.gaps = append(v.gaps, fmt.Sprintf(format, args...))
}

// requirement is one of the spec's 25 core requirements: its text, its
// obligation at each level (CONFORMANCE.md, "Maturity Level
// Requirements"), what stays with the operator, and the check.
type requirement struct {
	id, name, description string
	// obligation by level: intern, junior, senior, principal.
	obligation [4]adminv1.Obligation
	operator   string
	check      func(a assessment) verdict
}

type element struct {
	name, question string
	reqs           []requirement
}

// Evaluate assesses a broker with configuration cfg (validated:
// defaults filled in) and the evidence ev gathered from it against the 25
// core requirements of the ATF conformance specification, for agents up to
// target. An invalid target (0) means the highest level of any active
// agent, Intern if there is none. It reads nothing else, so the same inputs
// give the same statement; the caller fills in the organization and the
// assessment time.
func Evaluate(cfg config.Config, ev Evidence, target authz.Level) *adminv1.ConformanceStatement {
	f := ev.Facts
	st := &adminv1.ConformanceStatement{Implementation: implementation, AtfVersion: atfVersion}
	if !target.Valid() {
		st.TargetLevelDerived = true
		target = authz.Intern
		for _, l := range allLevels {
			if f.Agents[l] > 0 {
				target = l
			}
		}
	}
	st.TargetLevel = protoconv.LevelToProto(target)
	a := assessment{cfg: cfg, f: f, ev: ev, target: target}
	for _, el := range conformanceElements {
		e := &adminv1.ConformanceElement{Name: el.name, Question: el.question}
		for _, r := range el.reqs {
			v := r.check(a)
			req := &adminv1.ConformanceRequirement{
				Id: r.id, Name: r.name, Description: r.description,
				Status: met, Obligation: r.obligation[target-authz.Intern],
				Evidence: v.evidence, Gaps: v.gaps, OperatorScope: r.operator,
			}
			switch {
			case v.notMet:
				req.Status = notMet
			case len(v.gaps) > 0:
				req.Status = partial
				e.Partial++
			default:
				e.Met++
			}
			if req.Obligation == must && req.Status != met {
				st.UnmetMust = append(st.UnmetMust, r.id)
			}
			e.Total++
			e.Requirements = append(e.Requirements, req)
		}
		st.Met += e.Met
		st.Partial += e.Partial
		st.Total += e.Total
		st.Elements = append(st.Elements, e)
	}
	st.Notes = append(st.Notes,
		"Assessed by atfd from live evidence: its registry, the policy and gate in force, probes of Vault, SPIRE, the audit chain, the revocation queue and the webhook. The broker governs agents' identities and credentials: "+
			"where a requirement's substance is the agent's own inputs, outputs or actions, it is partial or not met here, "+
			"and each requirement says what stays the operator's job.",
		"A self-assessment (ATF Compatible). ATF Certified needs all 25 requirements fully met, 90 days in production at "+
			"the declared level and an independent audit.")
	if f.GlobalKill {
		st.Notes = append(st.Notes, "The global kill switch is set: no agent gets anything until a security operator releases it.")
	}
	return st
}

var conformanceElements = []element{
	{"Identity", "Who are you?", []requirement{
		{"I-1", "Unique Identifier", "Globally unique, immutable identifier for each agent instance",
			[4]adminv1.Obligation{must, must, must, must},
			"Give each agent instance its own SPIFFE ID in SPIRE if instances must be told apart: replicas sharing one registration entry share an ID.",
			checkI1},
		{"I-2", "Credential Binding", "Agent identity bound to cryptographic credentials",
			[4]adminv1.Obligation{should, must, must, must},
			"The broker records an agent's version and config digest but does not compare them with the running agent: bind an ID to its code with SPIRE's workload attestation selectors (e.g. an image digest).",
			checkI2},
		{"I-3", "Ownership Chain", "Clear documentation of ownership and operational responsibility",
			[4]adminv1.Obligation{must, must, must, must},
			"Keep owners current when people move (atfctl agent update --owner): the broker does not check that an owner still exists.",
			func(a assessment) (v verdict) {
				v.add("registration requires an accountable owner; active agents: %d, without an owner: %d", a.f.active(), a.f.NoOwner)
				v.add("every registry change records the admin who made it (atfctl agent history); admins configured: %d", len(a.cfg.Admins))
				if a.f.NoOwner > 0 {
					v.gap("active agents without an owner: %d (atfctl agent update ID --owner)", a.f.NoOwner)
				}
				return v
			}},
		{"I-4", "Purpose Declaration", "Documented intended use and operational scope",
			[4]adminv1.Obligation{must, must, must, must},
			"The purpose is free text: beyond the capability manifest, the broker cannot tell whether an agent keeps to it.",
			func(a assessment) (v verdict) {
				v.add("registration requires a purpose (PII redacted); active agents without one: %d", a.f.NoPurpose)
				if a.f.NoPurpose > 0 {
					v.gap("active agents without a purpose: %d (atfctl agent update ID --purpose)", a.f.NoPurpose)
				}
				return v
			}},
		{"I-5", "Capability Manifest", "Machine-readable list of claimed agent capabilities",
			[4]adminv1.Obligation{should, should, must, must},
			"The manifest lists the credentials (roles) an agent may hold, not its tools or skills that need no credential.",
			func(a assessment) (v verdict) {
				v.add("each agent's capability manifest is the list of roles it may be issued, machine-readable (atfctl agent get -o json); by construction nothing outside it is ever issued, and asking outside it is a high anomaly (tested by TestFetchCredentialGating)")
				v.add("roles file loaded: %s", countsText(a.f.RoleClasses, "read", "write", "privileged"))
				v.add("active agents with an empty manifest (they get nothing): %d", a.f.EmptyManifest)
				if total(a.f.RoleClasses) == 0 {
					v.gap("the roles file defines no role: no manifest can name anything")
					v.notMet = true
				}
				if a.f.UnknownRoles > 0 {
					v.gap("active agents whose manifest names a role the roles file lacks: %d (atfctl agent update ID --roles)", a.f.UnknownRoles)
				}
				return v
			}},
	}},
	{"Behavior", "What are you doing?", []requirement{
		{"B-1", "Structured Logging", "All agent actions logged in machine-parseable format",
			[4]adminv1.Obligation{must, must, must, must},
			"The broker logs credential requests and its decisions. What an agent does with a credential is logged by Vault's audit device and the target systems: enable Vault's audit device and keep both.",
			func(a assessment) (v verdict) {
				v.add("every decision (allow, deny, pending, limited), issuance, revocation, delegation, registry and policy change, approval, anomaly and kill is a record of the store's hash-chained audit trail, records: %d (atfctl audit query -o json, atfctl audit verify)", a.f.AuditHead)
				auditTail(a, &v)
				if a.cfg.Audit.File != "" {
					if fc := a.ev.AuditFile; fc.Err != "" {
						v.gap("audit.file %s: %s", a.cfg.Audit.File, fc.Err)
					} else {
						v.add("audit.file: a JSON-lines copy of the trail, %s", fc.Detail)
					}
				}
				if a.cfg.Audit.Stdout {
					v.add("audit.stdout: the trail as JSON lines on atfd's standard output, for a log shipper")
				}
				if a.cfg.LogFormat == "json" {
					v.add("log_format json: atfd's own logs are structured")
				}
				if a.cfg.Audit.File == "" && !a.cfg.Audit.Stdout {
					v.gap("the audit trail is kept only in the store: set audit.file or audit.stdout so a copy leaves the broker (a log pipeline, a second witness)")
				}
				return v
			}},
		{"B-2", "Action Attribution", "Every action tied to agent identity and session context",
			[4]adminv1.Obligation{must, must, must, must},
			"Attribution ends at the credential: have the agent log the decision id it was given with the actions it takes.",
			func(a assessment) (v verdict) {
				v.add("by construction (tested by TestFetchCredentialIssuesScopedVaultToken, TestAuditTrail): every decision and credential is tied to one agent's SPIFFE ID, a decision id and the request id (x-request-id), in the audit trail and in the Vault token's metadata (agent, role, level, decision)")
				v.add("by construction (tested by TestDelegationChainCredentials): under delegation the whole chain of SPIFFE IDs is recorded with the credential and in the token's metadata")
				return v
			}},
		{"B-3", "Behavioral Baseline", "Established patterns of normal operation for anomaly detection",
			[4]adminv1.Obligation{should, must, must, must},
			"The broker sees credential requests only: token usage, latency, compute and the agent's inputs and outputs (spec 4.2.1) belong to the agent's own telemetry.",
			func(a assessment) (v verdict) {
				d := monitor.DefaultConfig()
				window, ops := a.cfg.Monitor.BaselineWindow, a.cfg.Monitor.BaselineOps
				if window <= 0 {
					window = d.BaselineWindow
				}
				if ops <= 0 {
					ops = d.BaselineOps
				}
				v.add("a baseline per agent (request rate, roles used, denial ratio, hour-of-day profile, delegations) from every request, issuance, denial, limit hit, delegation and outcome report, kept across restarts")
				v.add("monitor.baseline_window %s, monitor.baseline_ops %d; active agents with a formed baseline: %d of %d", span(window), ops, a.f.BaselinesFormed, a.f.active())
				if window < 7*24*time.Hour || ops < 1000 {
					v.gap("a baseline forms after %s or %d events, sooner than the spec's 7 days or 1000 operations (monitor.baseline_window, monitor.baseline_ops)", span(window), ops)
				}
				return v
			}},
		{"B-4", "Anomaly Detection", "Identification of deviations from expected behavior",
			[4]adminv1.Obligation{should, should, must, must},
			"Route the webhook to on-call. Detection covers what the broker sees (B-3); deviations inside the agent need the agent's own monitoring.",
			func(a assessment) (v verdict) {
				v.add("rules on every event: role outside the manifest (high), first use of a role (medium), burst of denials (high), request-rate spike (z-score, medium or high), unusual hour (low); anomalies of one lineage within 5 minutes raise the later one a step")
				v.add("monitor.actions: %s", actionsText(a.cfg.Monitor.Actions))
				v.add("each anomaly is audited and sent to admins' event streams (atfctl events watch) in the request that raised it")
				webhookDeliveries(a, &v)
				return v
			}},
		{"B-5", "Explainability", "Ability to retrieve rationale for agent decisions",
			[4]adminv1.Obligation{may, should, must, must},
			"Record the agent's own reasoning (its trace, prompts, tool choices) with the decision id the broker returns.",
			func(a assessment) (v verdict) {
				v.add("by construction (tested by TestPolicyTestExplains, TestAuditTrail): every decision records its id, reason code, the policy lines that matched, the maturity rule and the policy version (atfctl audit query); atfctl policy test explains any request without issuing")
				if p := a.ev.Policy; p != nil {
					v.add("policy in force that decisions cite: version %d, digest %.12s", p.Version(), p.Digest())
				}
				v.add("the purpose an agent states with a request is kept in its decision record, and the justification of a write that waits for approval with the approval (PII redacted)")
				v.gap("the rationale behind the agent's own decisions is not visible to the broker: only why it asked for a credential and why the broker decided")
				return v
			}},
	}},
	{"Data Governance", "What are you eating? What are you serving?", []requirement{
		{"D-1", "Schema Validation", "Inputs conform to expected structure and types",
			[4]adminv1.Obligation{should, must, must, must},
			"Validate the agent's inputs (prompts, retrieved documents, tool results) in the agent or a gateway in front of it.",
			func(a assessment) (v verdict) {
				v.add("by construction (tested by TestMalformedRequests, TestAdversarialMalformedMessages): every request to the broker is validated against its schema (protovalidate rules) and bounded to %d KiB; role names must be canonical; the configuration and roles files refuse unknown keys", a.f.MaxRequestBytes>>10)
				v.gap("the agent's own inputs never pass through the broker")
				return v
			}},
		{"D-2", "Injection Prevention", "Detection of prompt injection and adversarial inputs",
			[4]adminv1.Obligation{should, must, must, must},
			"Put prompt-injection detection in front of the model; the broker limits what an injected agent can reach.",
			func(a assessment) (v verdict) {
				v.add("by construction (tested by TestCanonicalRoleNames, TestAdversarialMalformedMessages): adversarial input to the broker is refused: non-canonical role names (dot segments, encodings, look-alikes, Casbin tokens), policies that use eval() or fields the broker cannot fill, a request body naming another agent")
				v.add("an agent asking outside its manifest, as a hijacked one would, gets nothing and raises a high anomaly; least privilege and short TTLs bound what a successful injection reaches")
				v.gap("prompt injection in the agent's inputs is not detected: the broker never sees them")
				return v
			}},
		{"D-3", "PII/PHI Protection", "Automated detection and masking of sensitive data",
			[4]adminv1.Obligation{must, must, must, must},
			"Mask or block sensitive data on the data paths themselves (DLP, Vault's transform engine, database views, a proxy).",
			func(a assessment) (v verdict) {
				v.add("by construction (tested by TestRedaction): free text (purposes, justifications, reasons, comments) is scanned and redacted for PII and secrets before it is stored, logged or sent")
				v.add("roles file loaded, by classification: %s; the default policy model gives pii and secret roles to Senior agents and above only", countsText(a.f.RoleClassifications, "public", "internal", "pii", "secret"))
				v.add("no token or secret is stored: credentials are recorded by accessor")
				v.gap("the data an agent reads or writes with its credential is neither inspected nor masked by the broker")
				return v
			}},
		{"D-4", "Output Validation", "Outputs conform to expected structure and content policies",
			[4]adminv1.Obligation{may, should, must, must},
			"Validate outputs in the agent or an output gateway before they leave it.",
			func(a assessment) (v verdict) {
				v.add("related: outcome reports (atfctl outcome report) record whether an agent's actions were accepted, rejected or failed and feed promotion; a Junior agent's writes wait for a human approver")
				v.gap("the broker never sees an agent's outputs, so it cannot validate their structure or content")
				v.notMet = true
				return v
			}},
		{"D-5", "Data Lineage", "Tracking of data provenance through the agent pipeline",
			[4]adminv1.Obligation{may, should, should, must},
			"Record data provenance (sources, transformations) in the agent's pipeline, keyed by the decision id.",
			func(a assessment) (v verdict) {
				v.add("by construction (tested by TestDelegationChainCredentials): lineage of authority: every credential records its agent, role, decision and policy version and, under delegation, the chain of grants it came through (atfctl lineage show)")
				v.gap("the provenance of the data itself through the agent's pipeline is not tracked by the broker")
				return v
			}},
	}},
	{"Segmentation", "Where can you go?", []requirement{
		{"S-1", "Resource Allowlist", "Explicit enumeration of permitted resources",
			[4]adminv1.Obligation{must, must, must, must},
			"Keep the Vault policies behind each role least-privilege: Vault enforces them. Network segmentation (spec 4.4.2) is outside the broker.",
			checkS1},
		{"S-2", "Action Boundaries", "Explicit enumeration of permitted actions",
			[4]adminv1.Obligation{must, must, must, must},
			"What one credential allows inside a target system is bounded by the Vault policy behind its role.",
			func(a assessment) (v verdict) {
				v.add("each role has a class (read, write, privileged) gated by level: Intern read, Junior read and write after a human's approval, Senior read and write (notified), Principal also privileged; an Intern never writes, whatever the policy")
				gateProbes(a, &v)
				v.add("approvals.approvers: %d", len(a.cfg.Approvals.Approvers))
				if len(a.cfg.Approvals.Approvers) == 0 && a.target >= authz.Junior {
					v.gap("approvals.approvers is empty: a Junior agent's write can never be approved (it waits until it expires), so the Junior level cannot act as the spec describes")
				}
				return v
			}},
		{"S-3", "Rate Limiting", "Maximum operations per time period",
			[4]adminv1.Obligation{should, must, must, must},
			"The broker limits credential requests; the rate of an agent's calls to other systems with a credential is for those systems or a gateway to limit.",
			func(a assessment) (v verdict) {
				var set, unset []string
				for _, l := range allLevels {
					if r, ok := a.cfg.Limits.Rate[l.String()]; ok {
						set = append(set, fmt.Sprintf("%s %g/s burst %d", l, r.PerSecond, r.Burst))
					} else {
						unset = append(unset, l.String())
					}
				}
				if len(set) == 0 {
					set = []string{"no level"}
				}
				v.add("limits.rate (token bucket per agent): %s", strings.Join(set, ", "))
				switch {
				case len(unset) == len(allLevels):
					v.gap("limits.rate is empty: no agent is rate limited (leave it out for the defaults)")
					v.notMet = true
				case len(unset) > 0:
					v.gap("limits.rate has no entry for %s: those agents are not rate limited", strings.Join(unset, ", "))
				}
				return v
			}},
		{"S-4", "Transaction Limits", "Maximum impact per individual action",
			[4]adminv1.Obligation{may, should, must, must},
			"The size of one operation made with a credential (an amount, a number of rows) is for the Vault policy and the target system to bound.",
			func(a assessment) (v verdict) {
				if a.ev.Gate == nil {
					v.gap("no maturity gate in force: the broker's per-level limits cannot be shown")
					v.notMet = true
					return v
				}
				var ttl, uses []string
				for _, l := range allLevels {
					lim := a.ev.Gate.Limits(l)
					ttl = append(ttl, fmt.Sprintf("%s %s", l, span(lim.MaxTTL)))
					if lim.MaxUses > 0 {
						uses = append(uses, fmt.Sprintf("%s %d", l, lim.MaxUses))
					}
				}
				v.add("the gate in force: every credential carries exactly one role's policies, is non-renewable and lives at most min(role max_ttl, level, requested): %s (limits.max_ttl)", strings.Join(ttl, ", "))
				if len(uses) > 0 {
					v.add("use-limited tokens (limits.max_uses): %s", strings.Join(uses, ", "))
				}
				v.add("by construction (tested by TestVaultFaults): a token Vault granted wider or longer than decided is revoked at once and nothing is handed out")
				return v
			}},
		{"S-5", "Blast Radius Containment", "Limits on cumulative impact and cascade effects",
			[4]adminv1.Obligation{may, should, must, must},
			"Limit what the systems behind the roles can do to each other (network segmentation, separate accounts); the broker bounds credentials.",
			func(a assessment) (v verdict) {
				lim := a.cfg.Limits
				v.add("live credentials at once: limits.max_live_per_agent %s, max_live_per_lineage %s, max_live_per_role %s",
					limitText(lim.MaxLivePerAgent), limitText(lim.MaxLivePerLineage), limitText(lim.MaxLivePerRole))
				r := delegation.DefaultRules()
				v.add("delegation attenuates: scope is the intersection along the chain, level its minimum, depth at most %d below a Senior and %d below a Principal, %d live grants per delegator; one call revokes a whole lineage",
					r.MaxDepth[delegation.Senior], r.MaxDepth[delegation.Principal], r.MaxFanOut)
				var off []string
				for _, l := range []struct {
					name string
					v    int
				}{{"max_live_per_agent", lim.MaxLivePerAgent}, {"max_live_per_lineage", lim.MaxLivePerLineage}, {"max_live_per_role", lim.MaxLivePerRole}} {
					if l.v < 0 {
						off = append(off, "limits."+l.name)
					}
				}
				if len(off) > 0 {
					v.gap("%s set to -1: no limit on cumulative live credentials there", strings.Join(off, ", "))
				}
				return v
			}},
	}},
	{"Incident Response", "What if you go rogue?", []requirement{
		{"R-1", "Circuit Breaker", "Automatic halt on repeated failures",
			[4]adminv1.Obligation{should, must, must, must},
			"An open breaker halts new credentials; credentials already issued live until they expire unless revoked (R-3).",
			func(a assessment) (v verdict) {
				b := a.cfg.Monitor.Breaker.WithDefaults(breaker.DefaultConfig())
				v.add("a circuit breaker per agent on every request: %d failures or denials within %s open it for %s, then %d successful probes close it (monitor.breaker)",
					b.Failures, dur(b.Window), dur(b.OpenFor), b.Probes)
				if sev := severities(a.cfg.Monitor.Actions, "breaker"); sev != "" {
					v.add("anomalies of severity %s trip it (monitor.actions)", sev)
				}
				vb := a.cfg.Vault.Breaker.WithDefaults(vault.DefaultBreakerConfig())
				v.add("a circuit breaker towards Vault: %d unavailability failures in a row within %s stop issuance for %s (fail fast, Unavailable with the time to retry), then one probe; revocations never wait on it (vault.breaker)",
					vb.Failures, dur(vb.Window), dur(vb.OpenFor))
				state := "closed"
				if a.ev.VaultBreaker.Open {
					state = "open (issuance is halted until Vault answers)"
				}
				v.add("the breaker towards Vault now: %s, trips since start: %d", state, a.ev.VaultBreaker.Trips)
				return v
			}},
		{"R-2", "Kill Switch", "Immediate manual termination capability (<1 second)",
			[4]adminv1.Obligation{must, must, must, must},
			"The kill switch stops an agent's credentials and authority, not its process: stop the process through its orchestrator too.",
			func(a assessment) (v verdict) {
				v.add("atfctl kill (an agent, its lineage, or --all) commits the stop in one store transaction before answering, refuses requests already in flight, revokes its credentials and grants in Vault through its anchor tokens, and survives restarts; --forced answers at the commit; every activation is audited")
				v.add("may stop agents: admins (%d) and security operators (%d, security_operators); only security operators may release", len(a.cfg.Admins), len(a.cfg.SecurityOperators))
				v.add("agents held by the kill switch now: %d", a.f.Killed)
				killProbe(a, &v)
				if sev := severities(a.cfg.Monitor.Actions, "kill"); sev != "" {
					v.add("anomalies of severity %s stop the agent automatically (monitor.actions)", sev)
				}
				if len(a.cfg.SecurityOperators) == 0 {
					v.add("security_operators is empty: a stopped agent cannot be released")
				}
				if len(a.cfg.Admins) == 0 && len(a.cfg.SecurityOperators) == 0 {
					v.gap("neither admins nor security_operators are configured: nobody can pull the kill switch")
				}
				return v
			}},
		{"R-3", "Session Revocation", "Ability to invalidate all agent sessions",
			[4]adminv1.Obligation{may, should, must, must},
			"Sessions an agent opened in other systems with a credential (a database connection) may outlive the token: make those systems re-check it.",
			checkR3},
		{"R-4", "State Rollback", "Ability to undo agent actions where possible",
			[4]adminv1.Obligation{may, may, should, must},
			"Undo what agents did in other systems: compensating actions, backups and point-in-time recovery of those systems.",
			func(a assessment) (v verdict) {
				if a.f.PolicyVersion > 1 {
					v.add("stored policy versions an admin can roll back to: %d", a.f.PolicyVersion-1)
				}
				v.add("by construction (tested by TestPolicyLifecycle, TestBackup): the broker's own state rolls back: the segmentation policy to any earlier version (atfctl policy rollback), an agent's level to an earlier revision (atfctl agent rollback), the store from an online backup (atfctl admin backup)")
				v.gap("the broker cannot undo what an agent did with its credentials in other systems")
				return v
			}},
		{"R-5", "Graceful Degradation", "Fallback to lower autonomy level on issues",
			[4]adminv1.Obligation{may, should, must, must},
			"Have the agent fall back by itself (read-only, or asking a human) when a credential is refused.",
			func(a assessment) (v verdict) {
				v.add("a demotion revokes at once every credential and grant the lower level does not back; a critical incident (high at Principal) demotes")
				sev := severities(a.cfg.Monitor.Actions, "demote")
				if sev != "" {
					v.add("anomalies of severity %s demote the agent (monitor.actions)", sev)
				}
				v.add("maturity.demote_on_breaker_trip: %t", a.cfg.Maturity.DemoteOnBreakerTrip)
				v.add("by construction (tested by TestVaultOutage, TestSPIREAgentStopped, TestStoreFullRefusesIssuanceNotRevocation): when Vault, the Workload API or the store cannot serve, nothing is issued (fail closed) while revocations go on: queued durably, with room kept in a full store (store_max_size)")
				if sev == "" && !a.cfg.Maturity.DemoteOnBreakerTrip {
					v.gap("nothing lowers autonomy automatically: no monitor.actions severity is demote and maturity.demote_on_breaker_trip is false; only a person does (atfctl agent demote, a critical incident)")
				}
				return v
			}},
	}},
}

var severityOrder = []string{"low", "medium", "high", "critical"}

// actionsText writes monitor.actions in severity order.
func actionsText(m map[string]string) string {
	var out []string
	for _, s := range severityOrder {
		if act, ok := m[s]; ok {
			out = append(out, s+"="+act)
		}
	}
	return strings.Join(out, ", ")
}

// severities lists the severities whose configured action is act.
func severities(m map[string]string, act string) string {
	var out []string
	for _, s := range severityOrder {
		if m[s] == act {
			out = append(out, s)
		}
	}
	return strings.Join(out, ", ")
}

// countsText writes "n key" for each key, in the order given.
func countsText(m map[string]int, keys ...string) string {
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%d %s", m[k], k))
	}
	return strings.Join(out, ", ")
}

// total adds up the counts of m.
func total(m map[string]int) int {
	n := 0
	for _, c := range m {
		n += c
	}
	return n
}

// limitText writes a count limit, -1 being none.
func limitText(n int) string {
	if n < 0 {
		return "unlimited"
	}
	return fmt.Sprint(n)
}

// span writes a duration of hours or more in days and hours.
func span(d time.Duration) string {
	const day = 24 * time.Hour
	if d >= day && d%time.Hour == 0 {
		if d%day == 0 {
			return fmt.Sprintf("%dd", d/day)
		}
		return fmt.Sprintf("%dd%dh", d/day, d%day/time.Hour)
	}
	return dur(d)
}

// dur writes d without zero units: 1m, not 1m0s.
func dur(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
