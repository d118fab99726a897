// Package monitor owns the broker's view of how each agent behaves: it learns
// a baseline per agent from the events of its credential requests (ATF B-3),
// raises anomalies against that baseline and against fixed rules (B-4), and
// keeps a circuit breaker per agent.
//
// # Basics
//
// The broker calls Monitor.Observe with every event of an agent: each
// credential request, the broker's answer to it, each delegation and each
// outcome the agent reports. Observe is synchronous and cheap, so it runs on
// the request path, and the anomalies an event raises are returned by the
// call that observed it. Rules that need a baseline (new_role, rate_spike,
// unusual_hour) wait until the agent has been observed for
// Config.BaselineWindow or for Config.BaselineOps events, and unusual_hour
// also until the baseline spans a day; outside_manifest and denial_burst
// apply from the first event. An anomaly that follows one of
// another agent of the same delegation lineage within
// Config.CorrelationWindow is raised one severity higher.
//
// Snapshot and Restore carry baselines across restarts as plain,
// JSON-serialisable Baseline values.
//
// Anomalies are graded on maturity.Severity, the scale incidents share, so
// that the broker can act on both alike.
//
// Breakers hold a circuit breaker (package breaker) per agent: failures (or
// denials) within a window open it, it refuses the agent for a while, then
// lets probes through one at a time until enough succeed to close it again.
//
// Both types are safe for concurrent use. State is split into shards by
// agent, so calls for different agents seldom wait for one another.
//
// # Caveats
//
// Everything is in memory. Snapshot keeps the learnt baselines, not the short
// windows (the minute being counted, recent denials, lineage correlation) nor
// the breakers, which start afresh after a restart.
//
// Times come from the events. An event earlier than the latest one seen for
// its agent counts as happening at that latest time. Hours of day are UTC.
//
// The request rate is learnt over the minutes in which the agent made at
// least one request, so idle time neither lowers it nor counts against a
// burst. Baselines keep learning after they form: the count of one minute is
// capped before it is learnt, so a single burst barely moves the baseline, but
// an agent that raises its rate slowly over days shifts its baseline with it.
package monitor
