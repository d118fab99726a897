package maturity_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/maturity"
)

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		edit func(*maturity.Config)
		want string // "" if valid
	}{
		{"default", func(*maturity.Config) {}, ""},
		{"no success rate anywhere", func(c *maturity.Config) { c.MinSuccessRate = nil }, ""},
		{"no incident demotion", func(c *maturity.Config) { c.DemoteOnSeverity = nil }, ""},
		{"missing time", func(c *maturity.Config) { delete(c.MinTimeAtLevel, authz.Junior) },
			"maturity: MinTimeAtLevel has no entry for junior"},
		{"negative time", func(c *maturity.Config) { c.MinTimeAtLevel[authz.Intern] = -1 },
			"maturity: MinTimeAtLevel[intern] is negative (-1ns)"},
		{"time at principal", func(c *maturity.Config) { c.MinTimeAtLevel[authz.Principal] = 1 },
			"maturity: MinTimeAtLevel has an entry for principal, which is never left by promotion"},
		{"success rate for no level", func(c *maturity.Config) { c.MinSuccessRate[0] = 0.5 },
			"maturity: MinSuccessRate has an entry for level(0), which is never left by promotion"},
		{"success rate of 1", func(c *maturity.Config) { c.MinSuccessRate[authz.Senior] = 1 },
			"maturity: MinSuccessRate[senior] is 1; want a fraction strictly between 0 and 1 (omit the level for no requirement)"},
		{"success rate of 0", func(c *maturity.Config) { c.MinSuccessRate[authz.Intern] = 0 },
			"maturity: MinSuccessRate[intern] is 0; want a fraction strictly between 0 and 1 (omit the level for no requirement)"},
		{"success rate in percent", func(c *maturity.Config) { c.MinSuccessRate[authz.Junior] = 95 },
			"maturity: MinSuccessRate[junior] is 95; want a fraction strictly between 0 and 1 (omit the level for no requirement)"},
		{"availability over 1", func(c *maturity.Config) { c.MinAvailability = 1.5 },
			"maturity: MinAvailability is 1.5; want a fraction between 0 and 1"},
		{"availability NaN", func(c *maturity.Config) { c.MinAvailability = math.NaN() },
			"maturity: MinAvailability is NaN; want a fraction between 0 and 1"},
		{"no outcomes needed", func(c *maturity.Config) { c.MinOutcomes = 0 },
			"maturity: MinOutcomes is 0; want at least 1"},
		{"self-reported weight above one", func(c *maturity.Config) { c.SelfReportedWeight = 1.5 },
			"maturity: SelfReportedWeight is 1.5; want a fraction between 0 and 1"},
		{"empty authority", func(c *maturity.Config) { c.Authorities = []string{"carol", ""} },
			"maturity: Authorities[1] is empty"},
		{"incident severity for no level", func(c *maturity.Config) { c.DemoteOnSeverity[7] = maturity.High },
			"maturity: DemoteOnSeverity has an entry for level(7)"},
		{"no incident severity", func(c *maturity.Config) { c.DemoteOnSeverity[authz.Senior] = 0 },
			"maturity: DemoteOnSeverity[senior] is severity(0)"},
		{"no anomaly severity", func(c *maturity.Config) { c.DemoteOnAnomaly = 0 },
			"maturity: DemoteOnAnomaly is severity(0)"},
		{"no demotion steps", func(c *maturity.Config) { c.DemotionSteps = 0 },
			"maturity: DemotionSteps is 0; want at least 1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := maturity.DefaultConfig()
			tt.edit(&c)
			err := c.Validate()
			if got := errString(err); got != tt.want {
				t.Errorf("Validate() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestDefaultConfigIsFresh(t *testing.T) {
	c := maturity.DefaultConfig()
	c.MinTimeAtLevel[authz.Intern] = 0
	c.MinSuccessRate[authz.Junior] = 0.5
	c.DemoteOnSeverity[authz.Principal] = maturity.Low
	d := maturity.DefaultConfig()
	if d.MinTimeAtLevel[authz.Intern] == 0 || d.MinSuccessRate[authz.Junior] != 0.95 || d.DemoteOnSeverity[authz.Principal] != maturity.High {
		t.Errorf("changing one DefaultConfig changed the next: %+v", d)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestDemotion(t *testing.T) {
	incident := func(s maturity.Severity) maturity.Trigger {
		return maturity.Trigger{Kind: maturity.TriggerIncident, Severity: s, Reason: "INC-1"}
	}
	anomaly := func(s maturity.Severity) maturity.Trigger {
		return maturity.Trigger{Kind: maturity.TriggerAnomaly, Severity: s}
	}
	breaker := maturity.Trigger{Kind: maturity.TriggerBreaker}
	manual := maturity.Trigger{Kind: maturity.TriggerManual, Reason: "owner's request"}
	steps := func(n int) func(*maturity.Config) { return func(c *maturity.Config) { c.DemotionSteps = n } }

	for _, tt := range []struct {
		name   string
		edit   func(*maturity.Config)
		level  authz.Level
		t      maturity.Trigger
		to     authz.Level
		demote bool
	}{
		{"critical incident at junior", nil, authz.Junior, incident(maturity.Critical), authz.Intern, true},
		{"critical incident at senior", nil, authz.Senior, incident(maturity.Critical), authz.Junior, true},
		{"high incident at senior", nil, authz.Senior, incident(maturity.High), authz.Senior, false},
		{"high incident at principal", nil, authz.Principal, incident(maturity.High), authz.Senior, true},
		{"medium incident at principal", nil, authz.Principal, incident(maturity.Medium), authz.Principal, false},
		{"incident without severity", nil, authz.Principal, incident(0), authz.Principal, false},
		{"critical incident at intern", nil, authz.Intern, incident(maturity.Critical), authz.Intern, false},
		{"level without incident threshold", func(c *maturity.Config) { delete(c.DemoteOnSeverity, authz.Senior) },
			authz.Senior, incident(maturity.Critical), authz.Senior, false},
		{"lowered incident threshold", func(c *maturity.Config) { c.DemoteOnSeverity[authz.Junior] = maturity.Medium },
			authz.Junior, incident(maturity.Medium), authz.Intern, true},
		{"high anomaly", nil, authz.Senior, anomaly(maturity.High), authz.Senior, false},
		{"critical anomaly", nil, authz.Senior, anomaly(maturity.Critical), authz.Junior, true},
		{"high anomaly, threshold high", func(c *maturity.Config) { c.DemoteOnAnomaly = maturity.High },
			authz.Principal, anomaly(maturity.High), authz.Senior, true},
		{"breaker trip by default", nil, authz.Senior, breaker, authz.Senior, false},
		{"breaker trip when set", func(c *maturity.Config) { c.DemoteOnBreakerTrip = true }, authz.Senior, breaker, authz.Junior, true},
		{"manual", nil, authz.Principal, manual, authz.Senior, true},
		{"manual, two steps", steps(2), authz.Principal, manual, authz.Junior, true},
		{"manual, two steps from junior", steps(2), authz.Junior, manual, authz.Intern, true},
		{"manual, three steps from senior", steps(3), authz.Senior, manual, authz.Intern, true},
		{"manual at intern", nil, authz.Intern, manual, authz.Intern, false},
		{"unknown kind", nil, authz.Senior, maturity.Trigger{Kind: "weather", Severity: maturity.Critical}, authz.Senior, false},
		{"invalid level", nil, 0, manual, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := maturity.DefaultConfig()
			if tt.edit != nil {
				tt.edit(&c)
			}
			to, demote := c.Demotion(tt.level, tt.t)
			if to != tt.to || demote != tt.demote {
				t.Errorf("Demotion(%s, %+v) = %s, %v; want %s, %v", tt.level, tt.t, to, demote, tt.to, tt.demote)
			}
		})
	}
}

func TestParseSeverity(t *testing.T) {
	for s := maturity.Low; s <= maturity.Critical; s++ {
		got, err := maturity.ParseSeverity(s.String())
		if err != nil || got != s {
			t.Errorf("ParseSeverity(%q) = %s, %v", s, got, err)
		}
	}
	// Exactly as String writes them: a configuration keyed by "High" would
	// never match an anomaly's "high".
	for _, in := range []string{"Critical", "HIGH", "urgent", ""} {
		_, err := maturity.ParseSeverity(in)
		if want := fmt.Sprintf("maturity: unknown severity %q (want low, medium, high or critical)", in); errString(err) != want {
			t.Errorf("ParseSeverity(%q): error %v, want %s", in, err, want)
		}
	}
	for _, s := range []maturity.Severity{0, 5} {
		if got, want := s.String(), fmt.Sprintf("severity(%d)", int(s)); got != want {
			t.Errorf("Severity(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}

func TestSeverityText(t *testing.T) {
	type doc struct {
		Severity maturity.Severity `json:"severity"`
	}
	data, err := json.Marshal(doc{maturity.High})
	if err != nil || string(data) != `{"severity":"high"}` {
		t.Fatalf("json.Marshal = %s, %v; want {\"severity\":\"high\"}", data, err)
	}
	var back doc
	if err := json.Unmarshal(data, &back); err != nil || back.Severity != maturity.High {
		t.Fatalf("json.Unmarshal = %+v, %v; want high", back, err)
	}
	if _, err := json.Marshal(doc{}); errString(errors.Unwrap(err)) != "maturity: cannot encode severity(0)" {
		t.Errorf("json.Marshal of severity 0: %v, want maturity: cannot encode severity(0)", err)
	}
	err = json.Unmarshal([]byte(`{"severity":"dire"}`), &back)
	if want := `maturity: unknown severity "dire" (want low, medium, high or critical)`; errString(err) != want {
		t.Errorf("json.Unmarshal of severity dire: %v, want %s", err, want)
	}
}

func TestParseEvidenceKind(t *testing.T) {
	for _, k := range allKinds {
		got, err := maturity.ParseEvidenceKind(string(k))
		if err != nil || got != k {
			t.Errorf("ParseEvidenceKind(%q) = %s, %v", k, got, err)
		}
	}
	_, err := maturity.ParseEvidenceKind("pentest")
	want := `maturity: unknown evidence kind "pentest" (want one of vulnerability_assessment, code_review, configuration_audit, pen_test, adversarial_test, metrics_baseline, improvement, roi, stakeholder_signoff)`
	if errString(err) != want {
		t.Errorf("error %v, want %s", err, want)
	}
}
