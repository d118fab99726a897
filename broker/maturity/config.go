package maturity

import (
	"fmt"
	"time"

	"github.com/agentictrust/atf/authz"
)

// Config holds the promotion and demotion criteria. Get one from
// DefaultConfig, which is safe to modify, and tighten it as needed.
type Config struct {
	// MinTimeAtLevel is how long an agent must hold a level before it
	// leaves it, for intern, junior and senior.
	MinTimeAtLevel map[authz.Level]time.Duration
	// MinSuccessRate is the success rate an agent must exceed (strictly) to
	// leave a level; a level without an entry has no such requirement.
	MinSuccessRate map[authz.Level]float64
	// MinAvailability is the least availability accepted, once measured.
	MinAvailability float64
	// MinOutcomes is how many outcome reports there must be before the
	// rates count; a required success rate fails until there are.
	MinOutcomes int
	// Authorities are the people (their verified identities) whose
	// sign-off counts; if empty, anyone's but the agent's and its owner's.
	Authorities []string
	// SelfReportedWeight is what an agent's report of its own success
	// counts for, from 0 (nothing, the default) to 1 (as much as one by
	// someone else). Above 0, an agent that lies raises its own rates.
	SelfReportedWeight float64

	// DemoteOnSeverity is, per level, the incident severity at or above
	// which an agent at that level is demoted. A level without an entry is
	// not demoted by incidents.
	DemoteOnSeverity map[authz.Level]Severity
	// DemoteOnAnomaly is the anomaly severity at or above which an agent is
	// demoted; anomalies below it only alert.
	DemoteOnAnomaly Severity
	// DemoteOnBreakerTrip makes every circuit-breaker trip demote.
	DemoteOnBreakerTrip bool
	// DemotionSteps is how many levels one demotion goes down.
	DemotionSteps int
}

// DefaultConfig returns ATF's defaults (docs/design.md §1): 2, 4 and 8 weeks at
// intern, junior and senior; over 95% success to leave junior and over 99%
// to leave senior; a critical incident demotes, and at principal any
// significant (high) one does.
func DefaultConfig() Config {
	const day = 24 * time.Hour
	return Config{
		MinTimeAtLevel:  map[authz.Level]time.Duration{authz.Intern: 14 * day, authz.Junior: 28 * day, authz.Senior: 56 * day},
		MinSuccessRate:  map[authz.Level]float64{authz.Junior: 0.95, authz.Senior: 0.99},
		MinAvailability: 0.99,
		MinOutcomes:     20,
		DemoteOnSeverity: map[authz.Level]Severity{
			authz.Junior: Critical, authz.Senior: Critical, authz.Principal: High,
		},
		DemoteOnAnomaly: Critical,
		DemotionSteps:   1,
	}
}

// Validate reports the first setting that makes c unusable.
func (c Config) Validate() error {
	for l := authz.Intern; l < authz.Principal; l++ {
		d, ok := c.MinTimeAtLevel[l]
		if !ok {
			return fmt.Errorf("maturity: MinTimeAtLevel has no entry for %s", l)
		}
		if d < 0 {
			return fmt.Errorf("maturity: MinTimeAtLevel[%s] is negative (%s)", l, d)
		}
	}
	for l := range c.MinTimeAtLevel {
		if !l.Valid() || l == authz.Principal {
			return fmt.Errorf("maturity: MinTimeAtLevel has an entry for %s, which is never left by promotion", l)
		}
	}
	for l, r := range c.MinSuccessRate {
		if !l.Valid() || l == authz.Principal {
			return fmt.Errorf("maturity: MinSuccessRate has an entry for %s, which is never left by promotion", l)
		}
		if !(r > 0 && r < 1) {
			return fmt.Errorf("maturity: MinSuccessRate[%s] is %v; want a fraction strictly between 0 and 1 (omit the level for no requirement)", l, r)
		}
	}
	if !(c.MinAvailability >= 0 && c.MinAvailability <= 1) {
		return fmt.Errorf("maturity: MinAvailability is %v; want a fraction between 0 and 1", c.MinAvailability)
	}
	if !(c.SelfReportedWeight >= 0 && c.SelfReportedWeight <= 1) {
		return fmt.Errorf("maturity: SelfReportedWeight is %v; want a fraction between 0 and 1", c.SelfReportedWeight)
	}
	if c.MinOutcomes < 1 {
		return fmt.Errorf("maturity: MinOutcomes is %d; want at least 1", c.MinOutcomes)
	}
	for i, a := range c.Authorities {
		if a == "" {
			return fmt.Errorf("maturity: Authorities[%d] is empty", i)
		}
	}
	for l, s := range c.DemoteOnSeverity {
		if !l.Valid() {
			return fmt.Errorf("maturity: DemoteOnSeverity has an entry for %s", l)
		}
		if !s.Valid() {
			return fmt.Errorf("maturity: DemoteOnSeverity[%s] is %s", l, s)
		}
	}
	if !c.DemoteOnAnomaly.Valid() {
		return fmt.Errorf("maturity: DemoteOnAnomaly is %s", c.DemoteOnAnomaly)
	}
	if c.DemotionSteps < 1 {
		return fmt.Errorf("maturity: DemotionSteps is %d; want at least 1", c.DemotionSteps)
	}
	return nil
}

// TriggerKind is what happened to make a demotion worth considering.
type TriggerKind string

// Trigger kinds.
const (
	TriggerIncident TriggerKind = "incident"
	TriggerAnomaly  TriggerKind = "anomaly"
	TriggerBreaker  TriggerKind = "breaker"
	TriggerManual   TriggerKind = "manual"
)

// Trigger is an event that may demote an agent.
type Trigger struct {
	Kind     TriggerKind
	Severity Severity // for incidents and anomalies
	Reason   string   // for the audit record; Demotion does not read it
}

// Demotion says whether t demotes an agent at level, and to which level. An
// incident or anomaly demotes at or above its configured severity, a breaker
// trip if DemoteOnBreakerTrip is set, and a manual trigger always; each
// demotion goes down DemotionSteps levels but never below Intern. An Intern,
// an invalid level and an unknown trigger kind are not demoted.
func (c Config) Demotion(level authz.Level, t Trigger) (to authz.Level, demote bool) {
	if !level.Valid() || level == authz.Intern {
		return level, false
	}
	switch t.Kind {
	case TriggerIncident:
		threshold, ok := c.DemoteOnSeverity[level]
		demote = ok && t.Severity.Valid() && t.Severity >= threshold
	case TriggerAnomaly:
		demote = t.Severity.Valid() && t.Severity >= c.DemoteOnAnomaly
	case TriggerBreaker:
		demote = c.DemoteOnBreakerTrip
	case TriggerManual:
		demote = true
	}
	if !demote {
		return level, false
	}
	// max(1, ...) so that a Config that skipped Validate still demotes.
	return max(level-authz.Level(max(1, c.DemotionSteps)), authz.Intern), true
}
