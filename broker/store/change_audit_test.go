package store_test

import (
	"errors"
	"maps"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store"
)

// registered is the detail of the agent_registered record of agent(id).
func registered(id string) map[string]string {
	return map[string]string{"agent": id, "level": "junior", "revision": "1", "changed": "owner,purpose,roles,level,version,config_digest",
		"owner": "team-payments", "purpose": "reconcile invoices", "roles": "db-read,db-write", "version": "1.4.2", "config_digest": "sha256:0123"}
}

// Every change to an agent's record appends its audit record to the chain
// as it commits: the record is there when the call returns, it says who
// changed what, and it carries the request id of the handle it was made
// through.
func TestAgentChangesAreAudited(t *testing.T) {
	s, c := open(t)
	h := s.ForRequest(store.Request{ID: "req-1"})
	const id = "spiffe://td/agent/a"
	steps := []struct {
		name   string
		change func() error
		kind   string
		actor  string
		action string
		detail map[string]string
	}{
		{
			name: "register",
			change: func() error {
				_, err := h.RegisterAgent(agent(id), "alice")
				return err
			},
			kind: "agent_registered", actor: "alice", action: store.ActionRegister, detail: registered(id),
		},
		{
			name: "update",
			change: func() error {
				_, err := h.UpdateAgent(id, "bob", 1, func(a *store.Agent) { a.Owner, a.Roles, a.Level = "team-ledger", []string{"db-read"}, authz.Intern })
				return err
			},
			kind: "agent_updated", actor: "bob", action: store.ActionUpdate,
			detail: map[string]string{"agent": id, "level": "intern", "revision": "2", "changed": "owner,roles,level",
				"owner": "team-ledger", "roles": "db-read", "from": "junior", "to": "intern"},
		},
		{
			name: "update changing nothing",
			change: func() error {
				_, err := h.UpdateAgent(id, "bob", 0, func(*store.Agent) {})
				return err
			},
			kind: "agent_updated", actor: "bob", action: store.ActionUpdate,
			detail: map[string]string{"agent": id, "level": "intern", "revision": "3", "changed": ""},
		},
		{
			name: "promote",
			change: func() error {
				_, err := h.SetLevel(id, "carol", store.ActionPromote, "gates passed", authz.Junior, 3)
				return err
			},
			kind: "agent_promote", actor: "carol", action: store.ActionPromote,
			detail: map[string]string{"agent": id, "level": "junior", "revision": "4", "reason": "gates passed", "changed": "level", "from": "intern", "to": "junior"},
		},
		{
			name: "demote",
			change: func() error {
				_, err := h.SetLevel(id, "atfd", store.ActionDemote, "incident", authz.Intern, 0)
				return err
			},
			kind: "agent_demote", actor: "atfd", action: store.ActionDemote,
			detail: map[string]string{"agent": id, "level": "intern", "revision": "5", "reason": "incident", "changed": "level", "from": "junior", "to": "intern"},
		},
		{
			name: "roll back",
			change: func() error {
				_, err := h.SetLevel(id, "carol", store.ActionRollback, "level of revision 4 restored", authz.Junior, 0)
				return err
			},
			kind: "agent_rollback", actor: "carol", action: store.ActionRollback,
			detail: map[string]string{"agent": id, "level": "junior", "revision": "6", "reason": "level of revision 4 restored", "changed": "level",
				"from": "intern", "to": "junior"},
		},
		{
			name: "kill",
			change: func() error {
				_, _, err := h.KillAgent(id, "ops", "anomaly", false)
				return err
			},
			kind: "agent_killed", actor: "ops", action: store.ActionKill,
			detail: map[string]string{"agent": id, "level": "junior", "revision": "7", "reason": "anomaly", "changed": "kill", "lineage_root": "", "decision": "deny"},
		},
		{
			name: "release",
			change: func() error {
				_, err := h.ReleaseAgent(id, "ops", "cleared")
				return err
			},
			kind: "agent_released", actor: "ops", action: store.ActionRelease,
			detail: map[string]string{"agent": id, "level": "junior", "revision": "8", "reason": "cleared", "changed": "kill"},
		},
		{
			name: "deregister",
			change: func() error {
				_, _, err := h.DeregisterAgent(id, "dave", "retired")
				return err
			},
			kind: "agent_deregistered", actor: "dave", action: store.ActionDeregister,
			detail: map[string]string{"agent": id, "level": "junior", "revision": "9", "reason": "retired", "changed": "status", "status": "deregistered"},
		},
	}
	for _, st := range steps {
		c.Advance(time.Minute)
		seq := lastSeq(t, s)
		if err := st.change(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		detail := maps.Clone(st.detail)
		detail["request_id"] = "req-1"
		want := []store.AuditRecord{{Seq: seq + 1, Time: c.Now().UTC(), Kind: st.kind, Actor: st.actor, Subject: id, Detail: detail}}
		got := mustAudit(t, s, seq)
		for i := range got {
			got[i].Prev, got[i].Hash = "", ""
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: audit records\n %+v\nwant\n %+v", st.name, got, want)
		}
		if n := mustVerifyAudit(t, s); n != seq+1 {
			t.Errorf("%s: VerifyAudit = %d records, want %d", st.name, n, seq+1)
		}
		// The record and the history entry describe the same revision.
		hist := mustHistory(t, s, id)
		last := hist[len(hist)-1]
		if last.Action != st.action || strconv.FormatUint(last.Revision, 10) != st.detail["revision"] || !last.Time.Equal(c.Now()) || last.Actor != st.actor {
			t.Errorf("%s: last history entry %+v; want %s at revision %s by %s", st.name, last, st.action, st.detail["revision"], st.actor)
		}
	}
}

// Killing a lineage audits each agent the kill switch stops, naming the
// root of the lineage.
func TestKillLineageAuditsEachAgent(t *testing.T) {
	s, c := newLineage(t)
	seq := lastSeq(t, s)
	if _, _, err := s.KillAgent(agentB, "ops", "compromised", true); err != nil {
		t.Fatalf("KillAgent: %v", err)
	}
	var got []store.AuditRecord
	for _, r := range mustAudit(t, s, seq) {
		if r.Kind == "agent_killed" {
			r.Seq, r.Prev, r.Hash = 0, "", ""
			got = append(got, r)
		}
	}
	killed := func(id, root string) store.AuditRecord {
		return store.AuditRecord{Time: c.Now().UTC(), Kind: "agent_killed", Actor: "ops", Subject: id, Detail: map[string]string{
			"agent": id, "level": "junior", "revision": "2", "reason": "compromised", "changed": "kill", "lineage_root": root, "decision": "deny"}}
	}
	if want := []store.AuditRecord{killed(agentB, ""), killed(agentC, agentB)}; !reflect.DeepEqual(got, want) {
		t.Errorf("agent_killed records\n %+v\nwant\n %+v", got, want)
	}
	mustVerifyAudit(t, s)
}

// A change the store refuses writes no audit record and leaves the agent
// and its history as they were.
func TestRefusedAgentChangesAreNotAudited(t *testing.T) {
	const a, gone = "spiffe://td/agent/a", "spiffe://td/agent/gone"
	tests := []struct {
		name   string
		change func(s *store.Store) error
		wantIs error
	}{
		{"register an existing agent", func(s *store.Store) error {
			_, err := s.RegisterAgent(agent(a), "alice")
			return err
		}, store.ErrExists},
		{"register without a level", func(s *store.Store) error {
			bad := agent("spiffe://td/agent/new")
			bad.Level = 0
			_, err := s.RegisterAgent(bad, "alice")
			return err
		}, store.ErrInvalid},
		{"update at a stale revision", func(s *store.Store) error {
			_, err := s.UpdateAgent(a, "bob", 7, func(ag *store.Agent) { ag.Owner = "someone" })
			return err
		}, store.ErrConflict},
		{"update to an invalid level", func(s *store.Store) error {
			_, err := s.UpdateAgent(a, "bob", 0, func(ag *store.Agent) { ag.Level = 99 })
			return err
		}, store.ErrInvalid},
		{"update an unknown agent", func(s *store.Store) error {
			_, err := s.UpdateAgent("spiffe://td/agent/nobody", "bob", 0, func(*store.Agent) {})
			return err
		}, store.ErrNotFound},
		{"update a deregistered agent", func(s *store.Store) error {
			_, err := s.UpdateAgent(gone, "bob", 0, func(ag *store.Agent) { ag.Owner = "someone" })
			return err
		}, store.ErrDeregistered},
		{"promote at a stale revision", func(s *store.Store) error {
			_, err := s.SetLevel(a, "carol", store.ActionPromote, "gates passed", authz.Senior, 7)
			return err
		}, store.ErrConflict},
		{"set a level as no level action", func(s *store.Store) error {
			_, err := s.SetLevel(a, "carol", store.ActionRegister, "", authz.Senior, 0)
			return err
		}, store.ErrInvalid},
		{"deregister again", func(s *store.Store) error {
			_, _, err := s.DeregisterAgent(gone, "dave", "again")
			return err
		}, store.ErrDeregistered},
		{"release an agent not killed", func(s *store.Store) error {
			_, err := s.ReleaseAgent(a, "ops", "not held")
			return err
		}, store.ErrConflict},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := open(t)
			mustRegister(t, s, a, "alice")
			mustRegister(t, s, gone, "alice")
			mustDeregister(t, s, gone, "dave", "retired")
			seq := lastSeq(t, s)
			before := map[string][]store.AgentChange{a: mustHistory(t, s, a), gone: mustHistory(t, s, gone)}

			if err := tt.change(s); !errors.Is(err, tt.wantIs) {
				t.Fatalf("err = %v, want %v", err, tt.wantIs)
			}
			if got := mustAudit(t, s, seq); len(got) != 0 {
				t.Errorf("the refused change wrote audit records %+v", got)
			}
			for id, hist := range before {
				if got := mustHistory(t, s, id); !reflect.DeepEqual(got, hist) {
					t.Errorf("history of %s after the refused change = %+v, want %+v", id, got, hist)
				}
			}
			mustVerifyAudit(t, s)
		})
	}
}

// The audit record of a change is written in the change's transaction: when
// the deregistration fails after writing the agent's record and its audit
// record (here, its lineage's revocation reads a damaged credential), both
// roll back.
func TestAgentChangeRollsBackWithItsRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atf.db")
	c := newClock()
	s, err := store.Open(path, store.Options{Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	const a = "spiffe://td/agent/a"
	mustRegister(t, s, a, "alice")
	mustRecord(t, s, credential(a, "acc-1"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("credentials")).Put(pair(a, "acc-1"), []byte("{damaged"))
	})
	s = openAt(t, path, store.Options{Now: c.Now})
	seq := lastSeq(t, s)

	_, _, err = s.DeregisterAgent(a, "dave", "retired")
	if err == nil || errors.Is(err, store.ErrDeregistered) {
		t.Fatalf("DeregisterAgent over a damaged credential: %v, want a decoding error", err)
	}
	if got := mustAudit(t, s, seq); len(got) != 0 {
		t.Errorf("the failed deregistration left audit records %+v", got)
	}
	if ag := mustGet(t, s, a); ag.Status != store.Active || ag.Revision != 1 {
		t.Errorf("agent after the failed deregistration: %s at revision %d, want active at 1", ag.Status, ag.Revision)
	}
	if hist := mustHistory(t, s, a); len(hist) != 1 {
		t.Errorf("history after the failed deregistration: %+v, want the registration only", hist)
	}
	mustVerifyAudit(t, s)
}

// An outcome report is counted at the agent's current level and audited in
// the same transaction; a report the store refuses is neither.
func TestRecordOutcome(t *testing.T) {
	s, c := open(t)
	h := s.ForRequest(store.Request{ID: "req-7"})
	const a = "spiffe://td/agent/a"
	mustRegister(t, s, a, "alice")
	report := store.OutcomeReport{Agent: a, Reporter: a, Outcome: "failure", Role: "db-read", DecisionID: "dec-1", Message: "timed out"}

	c.Advance(time.Minute)
	seq := lastSeq(t, s)
	if err := h.RecordOutcome(report); err != nil {
		t.Fatalf("RecordOutcome: %v", err)
	}
	want := []store.AuditRecord{{Seq: seq + 1, Time: c.Now().UTC(), Kind: "outcome_reported", Actor: a, Subject: "failure", Detail: map[string]string{
		"agent": a, "outcome": "failure", "role": "db-read", "decision_id": "dec-1", "message": "timed out", "level": "junior", "request_id": "req-7",
		"self_reported": "true",
	}}}
	got := mustAudit(t, s, seq)
	for i := range got {
		got[i].Prev, got[i].Hash = "", ""
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("audit records\n %+v\nwant\n %+v", got, want)
	}
	// A report by someone else is counted apart, under its reporter.
	const approver = "spiffe://td/people/approver"
	if err := h.RecordOutcome(store.OutcomeReport{Agent: a, Reporter: approver, Outcome: "success"}); err != nil {
		t.Fatal(err)
	}
	if got := mustAudit(t, s, seq+1); len(got) != 1 || got[0].Actor != approver || got[0].Detail["self_reported"] != "false" {
		t.Errorf("audit record of a report by another = %+v, want the approver as actor, not self-reported", got)
	}
	wantCounts := store.Outcomes{Level: authz.Junior, Self: store.OutcomeCounts{Failure: 1}, Attested: store.OutcomeCounts{Success: 1}}
	if o, err := s.AgentOutcomes(a); err != nil || o != wantCounts {
		t.Errorf("AgentOutcomes = %+v, %v; want %+v", o, err, wantCounts)
	}

	for _, tt := range []struct {
		name   string
		report store.OutcomeReport
		wantIs error
	}{
		{"unknown outcome", store.OutcomeReport{Agent: a, Outcome: "meh"}, store.ErrInvalid},
		{"unknown agent", store.OutcomeReport{Agent: "spiffe://td/agent/nobody", Outcome: "success"}, store.ErrNotFound},
	} {
		seq := lastSeq(t, s)
		if err := h.RecordOutcome(tt.report); !errors.Is(err, tt.wantIs) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.wantIs)
		}
		if got := mustAudit(t, s, seq); len(got) != 0 {
			t.Errorf("%s: the refused report wrote audit records %+v", tt.name, got)
		}
	}
	if o, err := s.AgentOutcomes(a); err != nil || o != wantCounts {
		t.Errorf("AgentOutcomes after refused reports = %+v, %v; want %+v", o, err, wantCounts)
	}
	mustVerifyAudit(t, s)
}
