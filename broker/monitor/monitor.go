package monitor

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/agentictrust/atf/broker/maturity"
)

// Kind is what an Event records.
type Kind int

const (
	Request   Kind = iota // the agent asked for a credential
	Issued                // the broker issued one
	Denied                // the broker refused one
	Limited               // the broker rate-limited the agent
	Delegated             // the agent delegated to another agent
	Failure               // the agent reported that an action failed
	Success               // the agent reported that an action succeeded
)

// Event is one thing an agent did or had done to it.
type Event struct {
	Agent      string
	Lineage    string // root agent of the delegation chain; "" means Agent
	Role       string
	InManifest bool // Role is in the agent's capability manifest
	Kind       Kind
	Time       time.Time
}

// lineage returns the root of ev's delegation chain.
func (ev Event) lineage() string {
	if ev.Lineage == "" {
		return ev.Agent
	}
	return ev.Lineage
}

// Rules, as named in Anomaly.Rule.
const (
	RuleOutsideManifest = "outside_manifest" // a request for a role outside the manifest
	RuleNewRole         = "new_role"         // a request for a role the agent never asked for before
	RuleDenialBurst     = "denial_burst"     // Config.DenialBurst denials within Config.DenialWindow
	RuleRateSpike       = "rate_spike"       // a minute with far more requests than usual
	RuleUnusualHour     = "unusual_hour"     // a request in an hour of day the agent seldom works
)

// Anomaly is a departure from an agent's baseline or from a rule.
type Anomaly struct {
	Agent    string            `json:"agent"`
	Lineage  string            `json:"lineage"`
	Rule     string            `json:"rule"`
	Severity maturity.Severity `json:"severity"`
	Score    float64           `json:"score"` // how strong, by rule; see Observe
	Detail   string            `json:"detail"`
	Time     time.Time         `json:"time"`
}

// Config tunes a Monitor. A zero field takes its default (see DefaultConfig).
type Config struct {
	// A baseline forms after BaselineWindow of observation or BaselineOps
	// events, whichever comes first.
	BaselineWindow time.Duration
	BaselineOps    int
	// DenialBurst denials within DenialWindow raise denial_burst.
	DenialBurst  int
	DenialWindow time.Duration
	// RateZ is the z-score of a minute's request count against the learnt
	// rate that raises rate_spike: medium at RateZ, high at twice it.
	RateZ float64
	// EWMAAlpha is the weight of each new minute in the learnt rate, in (0, 1].
	EWMAAlpha float64
	// Anomalies of two agents of one lineage no more than CorrelationWindow
	// apart raise the later one's severity a step.
	CorrelationWindow time.Duration
}

// DefaultConfig returns the defaults. The result is the caller's to modify.
func DefaultConfig() Config {
	return Config{
		BaselineWindow:    7 * 24 * time.Hour,
		BaselineOps:       1000,
		DenialBurst:       5,
		DenialWindow:      time.Minute,
		RateZ:             4,
		EWMAAlpha:         0.1,
		CorrelationWindow: 5 * time.Minute,
	}
}

// withDefaults returns c with its zero fields set to their defaults, or an
// error naming every field out of range.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	err := errors.Join(
		orDefault("BaselineWindow", &c.BaselineWindow, d.BaselineWindow),
		orDefault("BaselineOps", &c.BaselineOps, d.BaselineOps),
		orDefault("DenialBurst", &c.DenialBurst, d.DenialBurst),
		orDefault("DenialWindow", &c.DenialWindow, d.DenialWindow),
		orDefault("RateZ", &c.RateZ, d.RateZ),
		orDefault("EWMAAlpha", &c.EWMAAlpha, d.EWMAAlpha),
		orDefault("CorrelationWindow", &c.CorrelationWindow, d.CorrelationWindow),
	)
	if c.EWMAAlpha > 1 {
		err = errors.Join(err, fmt.Errorf("monitor: EWMAAlpha is %v; want 1 or less", c.EWMAAlpha))
	}
	return c, err
}

// orDefault sets *v to def if it is zero, and fails if it is negative or NaN.
func orDefault[T int | float64 | time.Duration](name string, v *T, def T) error {
	if *v < 0 || *v != *v {
		return fmt.Errorf("monitor: %s is %v; want 0 or more", name, *v)
	}
	if *v == 0 {
		*v = def
	}
	return nil
}

// Monitor learns agents' baselines and raises anomalies. It is safe for
// concurrent use.
type Monitor struct {
	cfg      Config
	agents   table[agent]
	lineages table[lineage]
}

// New returns a Monitor that knows no agent yet.
func New(c Config) (*Monitor, error) {
	c, err := c.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Monitor{cfg: c}
	m.agents.init()
	m.lineages.init()
	return m, nil
}

// Observe records ev and returns the anomalies it raises, usually none.
// Event times should not go back for an agent (see the package Caveats).
//
// Each anomaly's Score says how strong it is: the z-score for rate_spike,
// the number of denials for denial_burst, the hour's share of the agent's
// requests for unusual_hour (lower is stranger), and 1 for the others.
func (m *Monitor) Observe(ev Event) []Anomaly {
	s := m.agents.shard(ev.Agent)
	s.mu.Lock()
	a := s.m[ev.Agent]
	if a == nil {
		a = &agent{b: Baseline{Agent: ev.Agent, Roles: make(map[string]int)}}
		s.m[ev.Agent] = a
	}
	found := a.observe(&m.cfg, ev)
	s.mu.Unlock()
	if found != nil {
		m.correlate(ev, found)
	}
	return found
}

// sighting is an agent's latest anomaly.
type sighting struct {
	agent string
	at    time.Time
}

// lineage remembers the latest anomalies of the two agents of a lineage that
// were last anomalous, which is enough to find, for any agent, the latest
// anomaly of another.
type lineage struct {
	last, prev sighting
}

// correlate raises the severity of found, just raised for ev, if another
// agent of ev's lineage raised one within the correlation window.
func (m *Monitor) correlate(ev Event, found []Anomaly) {
	name := ev.lineage()
	s := m.lineages.shard(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.m[name]
	if l == nil {
		l = &lineage{}
		s.m[name] = l
	}
	other := l.last
	if other.agent == ev.Agent {
		other = l.prev
	}
	if gap := ev.Time.Sub(other.at).Abs(); !other.at.IsZero() && gap <= m.cfg.CorrelationWindow {
		note := fmt.Sprintf("; lineage_correlation: agent %q of lineage %q anomalous %s apart", other.agent, name, gap)
		for i := range found {
			found[i].Severity = min(found[i].Severity+1, maturity.Critical)
			found[i].Detail += note
		}
	}
	if l.last.agent != ev.Agent {
		l.prev = l.last
	}
	l.last = sighting{agent: ev.Agent, at: ev.Time}
}

// Baseline returns a copy of agent's baseline, and whether the agent is known.
func (m *Monitor) Baseline(agent string) (Baseline, bool) {
	s := m.agents.shard(agent)
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.m[agent]
	if a == nil {
		return Baseline{}, false
	}
	return a.b.clone(), true
}

// Snapshot returns a copy of every agent's baseline, ordered by agent.
func (m *Monitor) Snapshot() []Baseline {
	var all []Baseline
	for i := range m.agents.shards {
		s := &m.agents.shards[i]
		s.mu.Lock()
		for _, a := range s.m {
			all = append(all, a.b.clone())
		}
		s.mu.Unlock()
	}
	slices.SortFunc(all, func(x, y Baseline) int { return cmp.Compare(x.Agent, y.Agent) })
	return all
}

// Restore replaces the state of the agents in bs with their baselines, as
// returned by Snapshot; other agents are left alone. It restores nothing if
// a baseline is invalid.
func (m *Monitor) Restore(bs []Baseline) error {
	seen := make(map[string]bool, len(bs))
	for i, b := range bs {
		if err := b.validate(); err != nil {
			return fmt.Errorf("monitor: restore: baseline %d (agent %q): %w", i, b.Agent, err)
		}
		if seen[b.Agent] {
			return fmt.Errorf("monitor: restore: baseline %d (agent %q): agent repeated", i, b.Agent)
		}
		seen[b.Agent] = true
	}
	for _, b := range bs {
		b = b.clone()
		s := m.agents.shard(b.Agent)
		s.mu.Lock()
		s.m[b.Agent] = &agent{b: b}
		s.mu.Unlock()
	}
	return nil
}

// Forget drops all that m holds about agent, including the anomaly memory of
// the lineage it is the root of.
func (m *Monitor) Forget(agent string) {
	s := m.agents.shard(agent)
	s.mu.Lock()
	delete(s.m, agent)
	s.mu.Unlock()
	l := m.lineages.shard(agent)
	l.mu.Lock()
	delete(l.m, agent)
	l.mu.Unlock()
}
