package monitor

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"time"

	"github.com/agentictrust/atf/broker/breaker"
	"github.com/agentictrust/atf/broker/maturity"
)

const (
	// minRateStd is the least standard deviation of the per-minute request
	// count that a z-score divides by, so that an agent with a perfectly
	// steady rate is not flagged for one request more than usual.
	minRateStd = 1.0
	// unusualShare is the share of an agent's requests below which an hour
	// of day is unusual for it.
	unusualShare = 0.01
	// hourProfileSpan is how long a baseline must span before its hours of
	// day mean anything: a busy agent's baseline may form within hours.
	hourProfileSpan = 24 * time.Hour
)

// Baseline is an agent's profile, learnt from its events.
type Baseline struct {
	Agent       string         `json:"agent"`
	Since       time.Time      `json:"since"` // first event
	Last        time.Time      `json:"last"`  // latest event
	Formed      bool           `json:"formed"`
	Events      int            `json:"events"`
	Requests    int            `json:"requests"`
	Denials     int            `json:"denials"`
	Delegations int            `json:"delegations"`
	Roles       map[string]int `json:"roles"` // requests per role
	Hours       [24]int        `json:"hours"` // requests per hour of day, UTC
	// RateMean and RateVar are the exponentially weighted mean and variance
	// of the number of requests in a minute, over the Minutes in which the
	// agent made any.
	RateMean float64 `json:"rate_mean"`
	RateVar  float64 `json:"rate_var"`
	Minutes  int     `json:"minutes"`
}

// DenialRatio returns the share of the agent's requests that were denied.
func (b Baseline) DenialRatio() float64 {
	if b.Requests == 0 {
		return 0
	}
	return float64(b.Denials) / float64(b.Requests)
}

// clone returns a copy of b that shares nothing with it.
func (b Baseline) clone() Baseline {
	b.Roles = maps.Clone(b.Roles)
	if b.Roles == nil {
		b.Roles = make(map[string]int)
	}
	return b
}

// validate reports what makes b unfit to restore.
func (b Baseline) validate() error {
	if b.Agent == "" {
		return errors.New("no agent")
	}
	counts := []int{b.Events, b.Requests, b.Denials, b.Delegations, b.Minutes}
	counts = append(counts, b.Hours[:]...)
	for _, n := range b.Roles {
		counts = append(counts, n)
	}
	for _, n := range counts {
		if n < 0 {
			return errors.New("negative count")
		}
	}
	if !(b.RateMean >= 0 && b.RateVar >= 0) || math.IsInf(b.RateMean, 0) || math.IsInf(b.RateVar, 0) {
		return fmt.Errorf("rate %v±%v out of range", b.RateMean, b.RateVar)
	}
	return nil
}

// agent is what a Monitor holds about one agent: its baseline and the short
// windows the rules look at.
type agent struct {
	b Baseline

	minute    time.Time // start of the minute being counted
	count     int       // requests in it so far
	rateLevel int       // 1 or 2 once rate_spike was raised this minute at RateZ or twice it
	denials   breaker.Burst
	inBurst   bool      // denial_burst was raised and the burst has not cleared
	oddHour   time.Time // clock hour of the latest unusual_hour
}

// observe learns from ev and returns the anomalies it raises.
func (a *agent) observe(c *Config, ev Event) []Anomaly {
	b := &a.b
	t := ev.Time
	if b.Events == 0 {
		b.Since = t
	} else if t.Before(b.Last) {
		t = b.Last
	}
	b.Last = t
	if !b.Formed && t.Sub(b.Since) >= c.BaselineWindow {
		b.Formed = true
	}

	var found []Anomaly
	switch ev.Kind {
	case Request:
		found = a.request(c, ev, t)
	case Denied:
		b.Denials++
		if !a.denials.Add(t, c.DenialBurst, c.DenialWindow) {
			a.inBurst = false
		} else if !a.inBurst {
			a.inBurst = true
			found = append(found, anomaly(ev, RuleDenialBurst, maturity.High, float64(c.DenialBurst),
				fmt.Sprintf("%d denials within %s", c.DenialBurst, c.DenialWindow)))
		}
	case Delegated:
		b.Delegations++
	}

	b.Events++
	if b.Events >= c.BaselineOps {
		b.Formed = true
	}
	return found
}

// request learns from a request at t and returns the anomalies it raises.
func (a *agent) request(c *Config, ev Event, t time.Time) []Anomaly {
	var found []Anomaly
	b := &a.b
	if !ev.InManifest {
		found = append(found, anomaly(ev, RuleOutsideManifest, maturity.High, 1,
			fmt.Sprintf("role %q is not in the agent's manifest", ev.Role)))
	}
	if b.Formed && b.Roles[ev.Role] == 0 {
		found = append(found, anomaly(ev, RuleNewRole, maturity.Medium, 1,
			fmt.Sprintf("first request for role %q", ev.Role)))
	}

	if m := t.Truncate(time.Minute); m.After(a.minute) {
		if a.count > 0 {
			a.learnRate(c, a.count)
		}
		a.minute, a.count, a.rateLevel = m, 0, 0
	}
	a.count++
	if b.Formed && b.Minutes > 0 {
		sd := max(math.Sqrt(b.RateVar), minRateStd)
		z := (float64(a.count) - b.RateMean) / sd
		level := 0
		if z >= 2*c.RateZ {
			level = 2
		} else if z >= c.RateZ {
			level = 1
		}
		if level > a.rateLevel {
			a.rateLevel = level
			sev := maturity.Medium
			if level == 2 {
				sev = maturity.High
			}
			found = append(found, anomaly(ev, RuleRateSpike, sev, z,
				fmt.Sprintf("%d requests this minute against a usual %.1f±%.1f (z %.1f)", a.count, b.RateMean, sd, z)))
		}
	}

	h := t.UTC().Hour()
	if b.Formed && b.Requests > 0 && t.Sub(b.Since) >= hourProfileSpan {
		share := float64(b.Hours[h]) / float64(b.Requests)
		if hour := t.Truncate(time.Hour); share < unusualShare && !hour.Equal(a.oddHour) {
			a.oddHour = hour
			found = append(found, anomaly(ev, RuleUnusualHour, maturity.Low, share,
				fmt.Sprintf("request at %02d h UTC, an hour with %.1f%% of %d requests", h, 100*share, b.Requests)))
		}
	}

	b.Requests++
	b.Hours[h]++
	b.Roles[ev.Role]++
	return found
}

// learnRate folds the request count of a finished minute into the rate.
func (a *agent) learnRate(c *Config, count int) {
	b := &a.b
	x := float64(count)
	if b.Minutes == 0 {
		b.RateMean, b.RateVar = x, 0
	} else {
		// Capped so that one burst barely moves the baseline.
		x = min(x, b.RateMean+2*c.RateZ*max(math.Sqrt(b.RateVar), minRateStd))
		d := x - b.RateMean
		inc := c.EWMAAlpha * d
		b.RateMean += inc
		b.RateVar = (1 - c.EWMAAlpha) * (b.RateVar + d*inc)
	}
	b.Minutes++
}

func anomaly(ev Event, rule string, sev maturity.Severity, score float64, detail string) Anomaly {
	return Anomaly{Agent: ev.Agent, Lineage: ev.lineage(), Rule: rule, Severity: sev, Score: score, Detail: detail, Time: ev.Time}
}
