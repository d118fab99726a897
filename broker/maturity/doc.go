// Package maturity owns the Agentic Trust Framework's maturity lifecycle:
// whether an agent may be promoted to the next level through the five gates
// (performance, security, business, incidents, governance), and whether an
// incident, anomaly or circuit-breaker trip demotes it.
//
// # Basics
//
// It is pure logic. The broker reads an agent's records (outcome reports,
// evidence, incidents, sign-offs) into an Input and calls Evaluate, which
// returns a Report: every gate, every check in it with the numbers behind it,
// and whether the agent is promotable. Report.Failing lists what is missing,
// one line a check, for a person to act on. Config.Demotion says whether a
// Trigger demotes an agent and to which level.
//
// Severity is the one scale of incidents and anomalies: package monitor
// grades the anomalies it raises with it, and configurations name its
// values as String writes them (low, medium, high, critical).
//
// The time is Input.Now, never the clock, so a report can be reproduced.
//
// # Caveats
//
// Only records made for this promotion count: evidence and sign-offs must
// name the target level and be dated at or after the agent reached its
// current level, so a stale review or an approval for an earlier promotion
// does not carry over. A sign-off counts only if its signer recorded it
// (SignOff.Signer == RecordedBy), and an agent's own outcome reports
// (Input.SelfReported) count against it in full but for it only at
// Config.SelfReportedWeight. Beyond that the package trusts the records it
// is given; who may record them, and checking that nobody records their own
// promotion, is the broker's job. An Intern is never demoted (there is no lower level); the
// caller may still kill it.
package maturity
