package store_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store"
)

// t0 is deliberately not UTC: the store must record times in UTC.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.FixedZone("CET", 60*60))

// clock is a manual clock for Options.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// openAt opens the store at path and closes it when the test ends.
func openAt(t *testing.T, path string, opts store.Options) *store.Store {
	t.Helper()
	s, err := openStore(path, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// rawUpdate edits the closed store file at path directly, as a bug or an
// intruder could, bypassing the store.
func rawUpdate(t *testing.T, path string, edit func(*bolt.Tx) error) {
	t.Helper()
	boltOnly(t)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("bolt.Open(%s): %v", path, err)
	}
	if err := db.Update(edit); err != nil {
		db.Close()
		t.Fatalf("editing %s: %v", path, err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("closing %s: %v", path, err)
	}
}

// pair is the store's two-part key, "<a>\x00<b>".
func pair(a, b string) []byte { return append(append([]byte(a), 0), b...) }

// open opens a fresh store with a manual clock.
func open(t *testing.T) (*store.Store, *clock) {
	t.Helper()
	c := newClock()
	return openAt(t, filepath.Join(t.TempDir(), "atf.db"), store.Options{Now: c.Now}), c
}

func agent(id string) store.Agent {
	return store.Agent{
		ID:           id,
		Owner:        "team-payments",
		Purpose:      "reconcile invoices",
		Roles:        []string{"db-read", "db-write"},
		Level:        authz.Junior,
		Version:      "1.4.2",
		ConfigDigest: "sha256:0123",
	}
}

func mustRegister(t *testing.T, s *store.Store, id, actor string) store.Agent {
	t.Helper()
	a, err := s.RegisterAgent(agent(id), actor)
	if err != nil {
		t.Fatalf("RegisterAgent(%s): %v", id, err)
	}
	return a
}

func mustGet(t *testing.T, s *store.Store, id string) store.Agent {
	t.Helper()
	a, err := s.GetAgent(id)
	if err != nil {
		t.Fatalf("GetAgent(%s): %v", id, err)
	}
	return a
}

func mustHistory(t *testing.T, s *store.Store, id string) []store.AgentChange {
	t.Helper()
	h, err := s.AgentHistory(id)
	if err != nil {
		t.Fatalf("AgentHistory(%s): %v", id, err)
	}
	return h
}

func mustCredentials(t *testing.T, s *store.Store, id string) []store.Credential {
	t.Helper()
	cs, err := s.Credentials(id)
	if err != nil {
		t.Fatalf("Credentials(%s): %v", id, err)
	}
	return cs
}

func credential(agentID, accessor string) store.Credential {
	issued := time.Date(2025, 3, 1, 11, 0, 0, 0, time.UTC)
	return store.Credential{
		Accessor:   accessor,
		AgentID:    agentID,
		Role:       "db-read",
		Level:      authz.Senior,
		Policies:   []string{"db-read", "default"},
		DecisionID: "dec-" + accessor,
		IssuedAt:   issued,
		ExpiresAt:  issued.Add(15 * time.Minute),
	}
}

func accessors(cs []store.Credential) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Accessor
	}
	return out
}

func mustRecord(t *testing.T, s *store.Store, cs ...store.Credential) {
	t.Helper()
	for _, c := range cs {
		if err := s.RecordCredential(c); err != nil {
			t.Fatalf("RecordCredential(%s): %v", c.Accessor, err)
		}
	}
}

func mustPending(t *testing.T, s *store.Store) []string {
	t.Helper()
	accs, err := s.PendingRevocations()
	if err != nil {
		t.Fatalf("PendingRevocations: %v", err)
	}
	return accs
}

func mustDeregister(t *testing.T, s *store.Store, id, actor, reason string) (store.Agent, store.Revocation) {
	t.Helper()
	a, rev, err := s.DeregisterAgent(id, actor, reason)
	if err != nil {
		t.Fatalf("DeregisterAgent(%s): %v", id, err)
	}
	return a, rev
}

func TestStatusString(t *testing.T) {
	for s, want := range map[store.Status]string{
		store.Active:       "active",
		store.Deregistered: "deregistered",
		0:                  "status(0)",
		7:                  "status(7)",
	} {
		if got := s.String(); got != want {
			t.Errorf("Status(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}

func TestRegisterAgent(t *testing.T) {
	s, _ := open(t)
	in := agent("spiffe://td/agent/reconciler")
	// Bookkeeping fields are the store's to set, whatever the caller passes.
	in.Status, in.Revision, in.UpdatedBy = store.Deregistered, 9, "mallory"
	in.CreatedAt = t0.Add(-time.Hour)

	got, err := s.RegisterAgent(in, "alice")
	if err != nil {
		t.Fatalf("RegisterAgent: %v", err)
	}
	want := agent("spiffe://td/agent/reconciler")
	want.Status, want.Revision, want.UpdatedBy = store.Active, 1, "alice"
	want.CreatedAt, want.UpdatedAt, want.LevelSince = t0.UTC(), t0.UTC(), t0.UTC()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("RegisterAgent returned\n %+v\nwant\n %+v", got, want)
	}
	if stored := mustGet(t, s, want.ID); !reflect.DeepEqual(stored, want) {
		t.Errorf("GetAgent returned\n %+v\nwant\n %+v", stored, want)
	}
}

func TestRegisterAgentExists(t *testing.T) {
	s, _ := open(t)
	const id = "spiffe://td/agent/a"
	first := mustRegister(t, s, id, "alice")

	dup := agent(id)
	dup.Owner = "team-other"
	_, err := s.RegisterAgent(dup, "bob")
	if !errors.Is(err, store.ErrExists) {
		t.Fatalf("second RegisterAgent: err = %v, want ErrExists", err)
	}
	if want := "store: already exists: agent " + id; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	if got := mustGet(t, s, id); !reflect.DeepEqual(got, first) {
		t.Errorf("agent changed by a failed register:\n %+v\nwant\n %+v", got, first)
	}
	if h := mustHistory(t, s, id); len(h) != 1 {
		t.Errorf("history has %d entries, want 1", len(h))
	}

	// A deregistered agent keeps its record, so its ID cannot be reused.
	mustDeregister(t, s, id, "alice", "retired")
	if _, err := s.RegisterAgent(agent(id), "bob"); !errors.Is(err, store.ErrExists) {
		t.Errorf("RegisterAgent after deregistration: err = %v, want ErrExists", err)
	}
}

func TestRegisterAgentInvalid(t *testing.T) {
	s, _ := open(t)
	const valid = "spiffe://td/agent/a"
	mustRegister(t, s, valid, "alice")

	tests := []struct {
		name  string
		id    string
		level authz.Level
	}{
		{"empty ID", "", authz.Junior},
		// Stored, this one's history would sit under the valid agent's prefix.
		{"NUL inside ID", valid + "\x00x", authz.Junior},
		{"NUL at end of ID", valid + "\x00", authz.Junior},
		{"ID is NUL", "\x00", authz.Junior},
		{"zero level", "spiffe://td/agent/b", 0},
		{"negative level", "spiffe://td/agent/b", -1},
		{"level above principal", "spiffe://td/agent/b", authz.Principal + 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := agent(tt.id)
			in.Level = tt.level
			got, err := s.RegisterAgent(in, "bob")
			if !errors.Is(err, store.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if want := "store: invalid record: agent needs an ID without NUL and a valid level"; err.Error() != want {
				t.Errorf("err = %q, want %q", err, want)
			}
			if !reflect.DeepEqual(got, store.Agent{}) {
				t.Errorf("RegisterAgent returned %+v along with its error, want the zero Agent", got)
			}
			if _, err := s.GetAgent(tt.id); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("GetAgent: err = %v, want ErrNotFound", err)
			}
			list, _, err := s.ListAgents("", 0, true)
			if err != nil {
				t.Fatalf("ListAgents: %v", err)
			}
			if len(list) != 1 || list[0].ID != valid {
				t.Errorf("ListAgents lists %d agents, want only %s", len(list), valid)
			}
			if h := mustHistory(t, s, valid); len(h) != 1 {
				t.Errorf("history of %s has %d entries, want 1", valid, len(h))
			}
		})
	}
}

func TestUnknownAgent(t *testing.T) {
	s, _ := open(t)
	mustRegister(t, s, "spiffe://td/a", "alice")

	ops := []struct {
		name   string
		prefix string
		call   func(id string) error
	}{
		{"GetAgent", "", func(id string) error {
			_, err := s.GetAgent(id)
			return err
		}},
		{"UpdateAgent", "", func(id string) error {
			_, err := s.UpdateAgent(id, "bob", 0, func(*store.Agent) {
				t.Errorf("UpdateAgent(%s) called change on an unknown agent", id)
			})
			return err
		}},
		{"DeregisterAgent", "", func(id string) error {
			a, rev, err := s.DeregisterAgent(id, "bob", "gone")
			if !reflect.DeepEqual(a, store.Agent{}) || !reflect.DeepEqual(rev, store.Revocation{}) {
				t.Errorf("DeregisterAgent(%s) returned %+v and %+v along with its error", id, a, rev)
			}
			return err
		}},
		{"AgentHistory", "", func(id string) error {
			_, err := s.AgentHistory(id)
			return err
		}},
		{"RecordCredential", "store: record credential: ", func(id string) error {
			return s.RecordCredential(credential(id, "acc-1"))
		}},
	}
	// Besides a plain unknown ID, IDs that are prefixes or extensions of a
	// registered one must not find it.
	ids := []string{"spiffe://td/nobody", "spiffe://td/a/b", "spiffe://td/", "spiffe://td/ab", ""}
	for _, op := range ops {
		for _, id := range ids {
			t.Run(fmt.Sprintf("%s/%q", op.name, id), func(t *testing.T) {
				err := op.call(id)
				if !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("err = %v, want ErrNotFound", err)
				}
				if want := op.prefix + "store: not found: agent " + id; err.Error() != want {
					t.Errorf("err = %q, want %q", err, want)
				}
				if got := mustCredentials(t, s, id); len(got) != 0 {
					t.Errorf("Credentials(%q) = %q, want none", id, accessors(got))
				}
				if got := mustPending(t, s); len(got) != 0 {
					t.Errorf("PendingRevocations = %q, want none", got)
				}
			})
		}
	}
}

func TestUpdateAgent(t *testing.T) {
	tests := []struct {
		name     string
		expected uint64
	}{
		{"at expected revision", 1},
		{"unconditional", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := open(t)
			const id = "spiffe://td/agent/a"
			before := mustRegister(t, s, id, "alice")
			c.Advance(90 * time.Second)

			got, err := s.UpdateAgent(id, "bob", tt.expected, func(a *store.Agent) {
				a.Level = authz.Senior
				a.Roles = append(a.Roles, "db-admin")
			})
			if err != nil {
				t.Fatalf("UpdateAgent: %v", err)
			}
			want := before
			want.Level = authz.Senior
			want.Roles = []string{"db-read", "db-write", "db-admin"}
			want.UpdatedAt, want.UpdatedBy, want.Revision = t0.Add(90*time.Second).UTC(), "bob", 2
			want.LevelSince = want.UpdatedAt // a new level starts its clock
			if !reflect.DeepEqual(got, want) {
				t.Errorf("UpdateAgent returned\n %+v\nwant\n %+v", got, want)
			}
			if stored := mustGet(t, s, id); !reflect.DeepEqual(stored, want) {
				t.Errorf("GetAgent returned\n %+v\nwant\n %+v", stored, want)
			}
		})
	}
}

// An update changes the agent's description only: identity, creation,
// standing and the bookkeeping are the store's, whatever change does.
func TestUpdateAgentKeepsBookkeeping(t *testing.T) {
	const id, renamed = "spiffe://td/agent/a", "spiffe://td/agent/renamed"
	tests := []struct {
		name   string
		change func(*store.Agent)
	}{
		{"ID", func(a *store.Agent) { a.ID = renamed }},
		{"empty ID", func(a *store.Agent) { a.ID = "" }},
		{"CreatedAt", func(a *store.Agent) { a.CreatedAt = t0.Add(-48 * time.Hour) }},
		{"zero CreatedAt", func(a *store.Agent) { a.CreatedAt = time.Time{} }},
		{"Status deregistered", func(a *store.Agent) { a.Status = store.Deregistered }},
		{"zero Status", func(a *store.Agent) { a.Status = 0 }},
		{"UpdatedAt and UpdatedBy", func(a *store.Agent) { a.UpdatedAt, a.UpdatedBy = t0.Add(time.Hour), "mallory" }},
		// Revision 0 would make this change overwrite history entry 1.
		{"zero Revision", func(a *store.Agent) { a.Revision = 0 }},
		{"Revision ahead", func(a *store.Agent) { a.Revision = 41 }},
		{"all at once", func(a *store.Agent) {
			a.ID, a.CreatedAt, a.Status, a.Revision = renamed, time.Time{}, store.Deregistered, 0
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := open(t)
			before := mustRegister(t, s, id, "alice")
			mustRecord(t, s, credential(id, "acc-1"))
			c.Advance(time.Minute)

			got, err := s.UpdateAgent(id, "bob", 1, func(a *store.Agent) {
				a.Purpose = "v2"
				tt.change(a)
			})
			if err != nil {
				t.Fatalf("UpdateAgent: %v", err)
			}
			want := before
			want.Purpose = "v2"
			want.UpdatedAt, want.UpdatedBy, want.Revision = t0.Add(time.Minute).UTC(), "bob", 2
			if !reflect.DeepEqual(got, want) {
				t.Errorf("UpdateAgent returned\n %+v\nwant\n %+v", got, want)
			}
			if stored := mustGet(t, s, id); !reflect.DeepEqual(stored, want) {
				t.Errorf("GetAgent returned\n %+v\nwant\n %+v", stored, want)
			}
			h := mustHistory(t, s, id)
			if len(h) != 2 || !reflect.DeepEqual(h[0].Agent, before) || !reflect.DeepEqual(h[1].Agent, want) {
				t.Errorf("history =\n %+v\nwant revisions 1 and 2 holding\n %+v\n %+v", h, before, want)
			}
			if _, err := s.GetAgent(renamed); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("GetAgent(%s): err = %v, want ErrNotFound", renamed, err)
			}
			// Only DeregisterAgent queues revocations.
			if got := mustPending(t, s); len(got) != 0 {
				t.Errorf("PendingRevocations = %q, want none", got)
			}
		})
	}
}

func TestUpdateAgentInvalidLevel(t *testing.T) {
	for _, level := range []authz.Level{0, -1, authz.Principal + 1} {
		t.Run(level.String(), func(t *testing.T) {
			s, c := open(t)
			const id = "spiffe://td/agent/a"
			before := mustRegister(t, s, id, "alice")
			c.Advance(time.Minute)

			got, err := s.UpdateAgent(id, "bob", 0, func(a *store.Agent) {
				a.Purpose = "v2"
				a.Level = level
			})
			if !errors.Is(err, store.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if want := fmt.Sprintf("store: invalid record: invalid level %d", int(level)); err.Error() != want {
				t.Errorf("err = %q, want %q", err, want)
			}
			if !reflect.DeepEqual(got, store.Agent{}) {
				t.Errorf("UpdateAgent returned %+v along with its error, want the zero Agent", got)
			}
			if stored := mustGet(t, s, id); !reflect.DeepEqual(stored, before) {
				t.Errorf("agent changed by an invalid update:\n %+v\nwant\n %+v", stored, before)
			}
			if h := mustHistory(t, s, id); len(h) != 1 {
				t.Errorf("history has %d entries, want 1", len(h))
			}
		})
	}
}

func TestUpdateAgentConflict(t *testing.T) {
	tests := []struct {
		name     string
		expected uint64
	}{
		{"stale", 1},
		{"ahead", 3},
		{"far ahead", 1 << 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := open(t)
			const id = "spiffe://td/agent/a"
			mustRegister(t, s, id, "alice")
			if _, err := s.UpdateAgent(id, "alice", 1, func(a *store.Agent) { a.Purpose = "v2" }); err != nil {
				t.Fatalf("UpdateAgent: %v", err)
			}
			before, history := mustGet(t, s, id), mustHistory(t, s, id)
			c.Advance(time.Minute)

			_, err := s.UpdateAgent(id, "bob", tt.expected, func(*store.Agent) {
				t.Error("change called despite a revision conflict")
			})
			if !errors.Is(err, store.ErrConflict) {
				t.Fatalf("err = %v, want ErrConflict", err)
			}
			want := fmt.Sprintf("store: revision conflict: agent %s is at revision 2, not %d", id, tt.expected)
			if err.Error() != want {
				t.Errorf("err = %q, want %q", err, want)
			}
			if got := mustGet(t, s, id); !reflect.DeepEqual(got, before) {
				t.Errorf("agent changed by a conflicting update:\n %+v\nwant\n %+v", got, before)
			}
			if got := mustHistory(t, s, id); !reflect.DeepEqual(got, history) {
				t.Errorf("history changed by a conflicting update: %d entries, want %d", len(got), len(history))
			}
		})
	}
}

func TestDeregisteredAgentIsFrozen(t *testing.T) {
	s, _ := open(t)
	const id = "spiffe://td/agent/a"
	mustRegister(t, s, id, "alice")
	dereg, rev := mustDeregister(t, s, id, "alice", "retired")
	if dereg.Status != store.Deregistered || dereg.Revision != 2 {
		t.Fatalf("after DeregisterAgent: status %v revision %d, want deregistered 2", dereg.Status, dereg.Revision)
	}
	if len(rev.Grants) != 0 || rev.CredentialCount() != 0 || len(rev.Queued) != 0 {
		t.Errorf("DeregisterAgent of an agent without grants or credentials revoked %+v", rev)
	}

	tests := []struct {
		name string
		call func() (store.Agent, error)
	}{
		{"UpdateAgent", func() (store.Agent, error) {
			return s.UpdateAgent(id, "bob", 0, func(*store.Agent) {
				t.Error("change called on a deregistered agent")
			})
		}},
		{"UpdateAgent at current revision", func() (store.Agent, error) {
			return s.UpdateAgent(id, "bob", 2, func(*store.Agent) {
				t.Error("change called on a deregistered agent")
			})
		}},
		{"DeregisterAgent", func() (store.Agent, error) {
			a, rev, err := s.DeregisterAgent(id, "bob", "again")
			if !reflect.DeepEqual(rev, store.Revocation{}) {
				t.Errorf("failed DeregisterAgent revoked %+v", rev)
			}
			return a, err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.call()
			if !errors.Is(err, store.ErrDeregistered) {
				t.Fatalf("err = %v, want ErrDeregistered", err)
			}
			if !reflect.DeepEqual(got, store.Agent{}) {
				t.Errorf("returned %+v along with its error, want the zero Agent", got)
			}
			if want := "store: agent is deregistered: " + id; err.Error() != want {
				t.Errorf("err = %q, want %q", err, want)
			}
			if got := mustGet(t, s, id); !reflect.DeepEqual(got, dereg) {
				t.Errorf("agent changed:\n %+v\nwant\n %+v", got, dereg)
			}
			if h := mustHistory(t, s, id); len(h) != 2 {
				t.Errorf("history has %d entries, want 2", len(h))
			}
		})
	}
}

func TestAgentHistory(t *testing.T) {
	s, c := open(t)
	const id = "spiffe://td/agent/a"

	// Each step advances the clock one minute, makes one change and says
	// how the agent looks afterwards.
	steps := []struct {
		actor, action, reason string
		do                    func(actor string) (store.Agent, error)
		after                 func(*store.Agent)
	}{
		{
			actor: "alice", action: store.ActionRegister,
			do:    func(actor string) (store.Agent, error) { return s.RegisterAgent(agent(id), actor) },
			after: func(*store.Agent) {},
		},
		{
			actor: "bob", action: store.ActionUpdate,
			do: func(actor string) (store.Agent, error) {
				return s.UpdateAgent(id, actor, 0, func(a *store.Agent) { a.Level = authz.Senior })
			},
			after: func(a *store.Agent) { a.Level = authz.Senior },
		},
		{
			actor: "carol", action: store.ActionUpdate,
			do: func(actor string) (store.Agent, error) {
				return s.UpdateAgent(id, actor, 2, func(a *store.Agent) { a.Version = "1.5.0" })
			},
			after: func(a *store.Agent) { a.Version = "1.5.0" },
		},
		{
			actor: "dave", action: store.ActionDeregister, reason: "retired with the v1 pipeline",
			do: func(actor string) (store.Agent, error) {
				a, _, err := s.DeregisterAgent(id, actor, "retired with the v1 pipeline")
				return a, err
			},
			after: func(a *store.Agent) { a.Status = store.Deregistered },
		},
	}

	var want []store.AgentChange
	cur := agent(id)
	cur.Status, cur.CreatedAt = store.Active, t0.Add(time.Minute).UTC()
	for i, st := range steps {
		c.Advance(time.Minute)
		got, err := st.do(st.actor)
		if err != nil {
			t.Fatalf("step %d (%s by %s): %v", i+1, st.action, st.actor, err)
		}
		now := c.Now().UTC()
		level := cur.Level
		st.after(&cur)
		cur.UpdatedAt, cur.UpdatedBy, cur.Revision = now, st.actor, uint64(i+1)
		if i == 0 || cur.Level != level {
			cur.LevelSince = now
		}
		if !reflect.DeepEqual(got, cur) {
			t.Fatalf("step %d returned\n %+v\nwant\n %+v", i+1, got, cur)
		}
		want = append(want, store.AgentChange{
			Revision: uint64(i + 1),
			Time:     now,
			Actor:    st.actor,
			Action:   st.action,
			Reason:   st.reason,
			Agent:    cur,
		})
	}

	got := mustHistory(t, s, id)
	if len(got) != len(want) {
		t.Fatalf("history has %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("history[%d] =\n %+v\nwant\n %+v", i, got[i], want[i])
		}
	}
}

func TestTimestampsComeFromClock(t *testing.T) {
	s, c := open(t)
	const id = "spiffe://td/agent/a"
	reg := mustRegister(t, s, id, "alice")
	c.Advance(36 * time.Hour)
	upd, err := s.UpdateAgent(id, "bob", 0, func(a *store.Agent) { a.Purpose = "v2" })
	if err != nil {
		t.Fatalf("UpdateAgent: %v", err)
	}

	checks := []struct {
		name      string
		got, want time.Time
	}{
		{"registered CreatedAt", reg.CreatedAt, t0},
		{"registered UpdatedAt", reg.UpdatedAt, t0},
		{"updated CreatedAt", upd.CreatedAt, t0},
		{"updated UpdatedAt", upd.UpdatedAt, t0.Add(36 * time.Hour)},
		{"stored UpdatedAt", mustGet(t, s, id).UpdatedAt, t0.Add(36 * time.Hour)},
		{"history[1].Time", mustHistory(t, s, id)[1].Time, t0.Add(36 * time.Hour)},
	}
	for _, ch := range checks {
		if !ch.got.Equal(ch.want) {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
		if ch.got.Location() != time.UTC {
			t.Errorf("%s is in %v, want UTC", ch.name, ch.got.Location())
		}
	}
}

func TestListAgents(t *testing.T) {
	s, _ := open(t)
	if got, next, err := s.ListAgents("", 10, true); err != nil || len(got) != 0 || next != "" {
		t.Fatalf("ListAgents on an empty store = %d agents, next %q, err %v; want none", len(got), next, err)
	}

	// 25 agents registered out of order; every fifth is deregistered, which
	// leaves 20 active: a whole number of pages, so the last page must not
	// promise a further one.
	var all, active []string
	for i := range 25 {
		all = append(all, fmt.Sprintf("spiffe://td/agent/%02d", i))
	}
	for _, i := range rand.Perm(len(all)) {
		mustRegister(t, s, all[i], "alice")
	}
	for i, id := range all {
		if i%5 == 0 {
			mustDeregister(t, s, id, "alice", "test")
			continue
		}
		active = append(active, id)
	}

	tests := []struct {
		name                string
		includeDeregistered bool
		pageSize            int
		want                []string
		wantPages           int
	}{
		{"all by 10", true, 10, all, 3},
		{"active by 10", false, 10, active, 2},
		{"all by 1", true, 1, all, 25},
		{"all by 25", true, 25, all, 1},
		{"all by 100", true, 100, all, 1},
		{"active by 7", false, 7, active, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			pages := 0
			for after := ""; ; {
				page, next, err := s.ListAgents(after, tt.pageSize, tt.includeDeregistered)
				if err != nil {
					t.Fatalf("ListAgents(%q): %v", after, err)
				}
				pages++
				if len(page) == 0 || len(page) > tt.pageSize {
					t.Fatalf("page %d has %d agents, want 1 to %d", pages, len(page), tt.pageSize)
				}
				for _, a := range page {
					if a.Status == store.Deregistered && !tt.includeDeregistered {
						t.Errorf("page %d lists deregistered agent %s", pages, a.ID)
					}
					got = append(got, a.ID)
				}
				if next == "" {
					break
				}
				if last := page[len(page)-1].ID; next != last {
					t.Fatalf("page %d: next = %q, want its last ID %q", pages, next, last)
				}
				if pages > len(all) {
					t.Fatal("pagination does not end")
				}
				after = next
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("listed\n %q\nwant\n %q", got, tt.want)
			}
			if pages != tt.wantPages {
				t.Errorf("took %d pages, want %d", pages, tt.wantPages)
			}
		})
	}
}

func TestListAgentsAfter(t *testing.T) {
	s, _ := open(t)
	for _, id := range []string{"spiffe://td/b", "spiffe://td/d", "spiffe://td/f"} {
		mustRegister(t, s, id, "alice")
	}
	tests := []struct {
		after    string
		want     []string
		wantNext string
	}{
		{"", []string{"spiffe://td/b", "spiffe://td/d"}, "spiffe://td/d"},
		{"spiffe://td/a", []string{"spiffe://td/b", "spiffe://td/d"}, "spiffe://td/d"},
		{"spiffe://td/b", []string{"spiffe://td/d", "spiffe://td/f"}, ""},
		{"spiffe://td/c", []string{"spiffe://td/d", "spiffe://td/f"}, ""},
		{"spiffe://td/d", []string{"spiffe://td/f"}, ""},
		{"spiffe://td/f", nil, ""},
		{"spiffe://td/z", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.after, func(t *testing.T) {
			page, next, err := s.ListAgents(tt.after, 2, false)
			if err != nil {
				t.Fatalf("ListAgents: %v", err)
			}
			var got []string
			for _, a := range page {
				got = append(got, a.ID)
			}
			if !slices.Equal(got, tt.want) || next != tt.wantNext {
				t.Errorf("ListAgents(%q, 2) = %q, next %q; want %q, next %q", tt.after, got, next, tt.want, tt.wantNext)
			}
		})
	}
}

func TestListAgentsDefaultLimit(t *testing.T) {
	s, _ := open(t)
	var ids []string
	for i := range 101 {
		ids = append(ids, fmt.Sprintf("spiffe://td/agent/%03d", i))
		mustRegister(t, s, ids[i], "alice")
	}
	for _, limit := range []int{0, -1, math.MinInt} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			page, next, err := s.ListAgents("", limit, false)
			if err != nil {
				t.Fatalf("ListAgents: %v", err)
			}
			if got := len(page); got != 100 || page[0].ID != ids[0] || next != ids[99] {
				t.Fatalf("ListAgents(\"\", %d) = %d agents, next %q; want 100 from %s, next %q", limit, got, next, ids[0], ids[99])
			}
			page, next, err = s.ListAgents(next, limit, false)
			if err != nil {
				t.Fatalf("ListAgents: %v", err)
			}
			if len(page) != 1 || page[0].ID != ids[100] || next != "" {
				t.Errorf("second page = %d agents, next %q; want only %s", len(page), next, ids[100])
			}
		})
	}
}

func TestPrefixIDsAreIsolated(t *testing.T) {
	s, _ := open(t)
	const parent, child = "spiffe://td/a", "spiffe://td/a/b"
	mustRegister(t, s, parent, "alice")
	mustRegister(t, s, child, "alice")
	for range 2 {
		if _, err := s.UpdateAgent(child, "bob", 0, func(a *store.Agent) { a.Purpose += "!" }); err != nil {
			t.Fatalf("UpdateAgent(%s): %v", child, err)
		}
	}
	mustRecord(t, s, credential(parent, "acc-p1"), credential(child, "acc-c1"), credential(child, "acc-c2"))
	mustDeregister(t, s, parent, "carol", "split")
	if got := mustPending(t, s); !slices.Equal(got, []string{"acc-p1"}) {
		t.Errorf("PendingRevocations = %q, want only the parent's", got)
	}

	tests := []struct {
		id            string
		wantRevisions []uint64
		wantStatus    store.Status
		wantAccessors []string
		wantRevoked   bool
	}{
		{parent, []uint64{1, 2}, store.Deregistered, []string{"acc-p1"}, true},
		{child, []uint64{1, 2, 3}, store.Active, []string{"acc-c1", "acc-c2"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			var revs []uint64
			for _, ch := range mustHistory(t, s, tt.id) {
				if ch.Agent.ID != tt.id {
					t.Errorf("history holds a change to %s", ch.Agent.ID)
				}
				revs = append(revs, ch.Revision)
			}
			if !slices.Equal(revs, tt.wantRevisions) {
				t.Errorf("history revisions = %v, want %v", revs, tt.wantRevisions)
			}
			if got := mustGet(t, s, tt.id).Status; got != tt.wantStatus {
				t.Errorf("status = %v, want %v", got, tt.wantStatus)
			}
			creds := mustCredentials(t, s, tt.id)
			if got := accessors(creds); !slices.Equal(got, tt.wantAccessors) {
				t.Errorf("credentials = %q, want %q", got, tt.wantAccessors)
			}
			for _, cr := range creds {
				if revoked := !cr.RevokedAt.IsZero(); revoked != tt.wantRevoked {
					t.Errorf("%s: revoked = %v, want %v", cr.Accessor, revoked, tt.wantRevoked)
				}
			}
		})
	}
	if got := mustCredentials(t, s, "spiffe://td"); len(got) != 0 {
		t.Errorf("Credentials(spiffe://td) = %q, want none", accessors(got))
	}
}

func TestRecordCredential(t *testing.T) {
	s, _ := open(t)
	const id, idle = "spiffe://td/agent/a", "spiffe://td/agent/idle"
	mustRegister(t, s, id, "alice")
	mustRegister(t, s, idle, "alice")
	// Recorded out of order; listed in accessor order.
	want := []store.Credential{credential(id, "acc-1"), credential(id, "acc-2"), credential(id, "acc-3")}
	mustRecord(t, s, want[2], want[0], want[1])
	if got := mustCredentials(t, s, id); !reflect.DeepEqual(got, want) {
		t.Errorf("Credentials =\n %+v\nwant\n %+v", got, want)
	}
	if got := mustCredentials(t, s, idle); len(got) != 0 {
		t.Errorf("Credentials of an agent with none = %q, want none", accessors(got))
	}
	if got := mustPending(t, s); len(got) != 0 {
		t.Errorf("PendingRevocations = %q, want none while the agent is active", got)
	}
}

// A credential issued while its agent was being deregistered is recorded as
// revoked, so that it is accounted for, and queued for revocation at once.
func TestRecordCredentialAfterDeregistration(t *testing.T) {
	s, _ := open(t)
	const id, other = "spiffe://td/agent/a", "spiffe://td/agent/a/b"
	mustRegister(t, s, id, "alice")
	mustRegister(t, s, other, "alice")
	mustRecord(t, s, credential(other, "acc-other"))
	mustDeregister(t, s, id, "alice", "retired")

	late := credential(id, "acc-late")
	err := s.RecordCredential(late)
	if !errors.Is(err, store.ErrDeregistered) {
		t.Fatalf("err = %v, want ErrDeregistered", err)
	}
	if want := "store: agent is deregistered: " + id + "; credential queued for revocation"; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	late.RevokedAt = t0.UTC()
	if got, want := mustCredentials(t, s, id), []store.Credential{late}; !reflect.DeepEqual(got, want) {
		t.Errorf("Credentials =\n %+v\nwant\n %+v", got, want)
	}
	if got, want := mustPending(t, s), []string{"acc-late"}; !slices.Equal(got, want) {
		t.Errorf("PendingRevocations = %q, want %q", got, want)
	}
	if got, want := mustCredentials(t, s, other), []store.Credential{credential(other, "acc-other")}; !reflect.DeepEqual(got, want) {
		t.Errorf("Credentials(%s) =\n %+v\nwant\n %+v", other, got, want)
	}
}

func TestDeregisterAgentQueuesRevocations(t *testing.T) {
	s, c := open(t)
	const id = "spiffe://td/agent/a"
	// IDs whose keys sort next to id's: a prefix of it, an extension of it,
	// and one that shares its prefix without a separator.
	neighbours := []string{"spiffe://td/agent", "spiffe://td/agent/a/b", "spiffe://td/agent/ab"}
	mustRegister(t, s, id, "alice")
	for _, n := range neighbours {
		mustRegister(t, s, n, "alice")
		mustRecord(t, s, credential(n, "acc-"+n))
	}
	c.Advance(10 * time.Minute)
	now := c.Now()

	creds := []struct {
		accessor string
		expires  time.Time
		revoked  bool
		queued   bool
	}{
		{"acc-1-live", now.Add(5 * time.Minute), false, true},
		{"acc-2-live-elsewhere", now.Add(time.Nanosecond).In(time.FixedZone("PST", -8*60*60)), false, true},
		{"acc-3-expires-now", now, false, false},
		{"acc-4-expired", now.Add(-time.Minute), false, false},
		{"acc-5-revoked", now.Add(time.Hour), true, false},
		{"acc-6-live", now.Add(time.Hour), false, true},
	}
	for _, cr := range creds {
		rec := credential(id, cr.accessor)
		rec.ExpiresAt = cr.expires
		if cr.revoked {
			rec.RevokedAt = now.Add(-time.Minute).UTC()
		}
		mustRecord(t, s, rec)
	}
	// Compare with the records as stored, which hold times as JSON does:
	// the live ones are revoked at the deregistration, the others untouched.
	want := mustCredentials(t, s, id)
	var wantQueued []string
	for i, cr := range creds {
		if cr.queued {
			want[i].RevokedAt = now.UTC()
			wantQueued = append(wantQueued, cr.accessor)
		}
	}
	before := map[string][]store.Credential{}
	for _, n := range neighbours {
		before[n] = mustCredentials(t, s, n)
	}

	a, rev := mustDeregister(t, s, id, "bob", "compromised")
	if a.Status != store.Deregistered {
		t.Errorf("DeregisterAgent returned status %v, want deregistered", a.Status)
	}
	if !slices.Equal(rev.Queued, wantQueued) {
		t.Errorf("DeregisterAgent queued %q, want %q", rev.Queued, wantQueued)
	}
	if wantRevoked := map[string][]string{id: wantQueued}; !reflect.DeepEqual(rev.Credentials, wantRevoked) || len(rev.Grants) != 0 {
		t.Errorf("DeregisterAgent revoked grants %v and credentials %q, want no grants and %q", rev.Grants, rev.Credentials, wantRevoked)
	}
	if got := mustPending(t, s); !slices.Equal(got, wantQueued) {
		t.Errorf("PendingRevocations = %q, want %q", got, wantQueued)
	}
	if got := mustCredentials(t, s, id); !reflect.DeepEqual(got, want) {
		t.Errorf("credential records after deregistration:\n %+v\nwant\n %+v", got, want)
	}
	for _, n := range neighbours {
		if got := mustGet(t, s, n).Status; got != store.Active {
			t.Errorf("%s: status = %v, want active", n, got)
		}
		if got := mustCredentials(t, s, n); !reflect.DeepEqual(got, before[n]) {
			t.Errorf("%s: credentials changed:\n %+v\nwant\n %+v", n, got, before[n])
		}
	}
}

// However a deregistration and recordings interleave, every credential ends
// up revoked and queued exactly once: by the deregistration if recorded
// before it, by RecordCredential (which then says so) if after. Workers
// record in sequence and the deregistration starts once the first record is
// in, so that both cases occur.
func TestRecordCredentialRacesDeregistration(t *testing.T) {
	s, _ := open(t)
	const id, workers, each = "spiffe://td/agent/racing", 4, 10
	mustRegister(t, s, id, "alice")

	var all []string
	for w := range workers {
		for i := range each {
			all = append(all, fmt.Sprintf("acc-%d-%02d", w, i))
		}
	}
	errs := make([]error, len(all))
	var (
		rev       store.Revocation
		deregErr  error
		wg        sync.WaitGroup
		firstIn   = make(chan struct{})
		closeOnce sync.Once
	)
	for w := range workers {
		wg.Go(func() {
			for i := w * each; i < (w+1)*each; i++ {
				errs[i] = s.RecordCredential(credential(id, all[i]))
				closeOnce.Do(func() { close(firstIn) })
			}
		})
	}
	wg.Go(func() {
		<-firstIn
		_, rev, deregErr = s.DeregisterAgent(id, "bob", "compromised")
	})
	wg.Wait()

	if deregErr != nil {
		t.Fatalf("DeregisterAgent: %v", deregErr)
	}
	byDereg := rev.Credentials[id]
	if !slices.Equal(rev.Queued, byDereg) {
		t.Errorf("DeregisterAgent revoked %q but queued %q", byDereg, rev.Queued)
	}
	t.Logf("%d of %d credentials recorded before the deregistration", len(byDereg), len(all))
	for i, acc := range all {
		inDereg := slices.Contains(byDereg, acc)
		switch {
		case errs[i] == nil && !inDereg:
			t.Errorf("%s recorded before the deregistration but not queued by it", acc)
		case errors.Is(errs[i], store.ErrDeregistered) && inDereg:
			t.Errorf("%s recorded after the deregistration yet queued by it", acc)
		case errs[i] != nil && !errors.Is(errs[i], store.ErrDeregistered):
			t.Errorf("RecordCredential(%s): %v", acc, errs[i])
		}
	}
	recorded := mustCredentials(t, s, id)
	if got := accessors(recorded); !slices.Equal(got, all) {
		t.Errorf("recorded %q, want %q", got, all)
	}
	for _, cr := range recorded {
		if !cr.RevokedAt.Equal(t0) {
			t.Errorf("%s: RevokedAt = %v, want %v", cr.Accessor, cr.RevokedAt, t0)
		}
	}
	if got := mustPending(t, s); !slices.Equal(got, all) {
		t.Errorf("PendingRevocations = %q, want %q", got, all)
	}
}

// CompleteRevocation only takes an accessor off the queue: the records keep
// the time the broker revoked them, and completing an accessor that is not
// queued is a no-op.
func TestCompleteRevocation(t *testing.T) {
	s, c := open(t)
	const gone, live = "spiffe://td/agent/gone", "spiffe://td/agent/live"
	mustRegister(t, s, gone, "alice")
	mustRegister(t, s, live, "alice")
	mustRecord(t, s, credential(gone, "acc-1"), credential(gone, "acc-2"), credential(live, "acc-3"))
	mustDeregister(t, s, gone, "alice", "retired")
	recorded := append(mustCredentials(t, s, gone), mustCredentials(t, s, live)...)
	for _, cr := range recorded {
		if revoked := !cr.RevokedAt.IsZero(); revoked != (cr.AgentID == gone) {
			t.Fatalf("%s: revoked = %v after deregistering %s", cr.Accessor, revoked, gone)
		}
	}

	// Each step advances the clock one minute, then completes accessor.
	steps := []struct {
		accessor    string
		wantPending []string
	}{
		{"acc-1", []string{"acc-2"}},
		{"acc-1", []string{"acc-2"}},
		{"acc-3", []string{"acc-2"}}, // recorded, never queued
		{"acc-unknown", []string{"acc-2"}},
		{"", []string{"acc-2"}},
		{"acc-2", nil},
		{"acc-2", nil},
	}
	for i, st := range steps {
		c.Advance(time.Minute)
		if err := s.CompleteRevocation(st.accessor); err != nil {
			t.Fatalf("step %d: CompleteRevocation(%q): %v", i+1, st.accessor, err)
		}
		if got := mustPending(t, s); !slices.Equal(got, st.wantPending) {
			t.Errorf("step %d: PendingRevocations = %q, want %q", i+1, got, st.wantPending)
		}
		got := append(mustCredentials(t, s, gone), mustCredentials(t, s, live)...)
		if !reflect.DeepEqual(got, recorded) {
			t.Errorf("step %d: credentials =\n %+v\nwant\n %+v", i+1, got, recorded)
		}
	}
}

func TestRecordCredentialConcurrent(t *testing.T) {
	s, _ := open(t)
	const id, n = "spiffe://td/agent/busy", 50
	mustRegister(t, s, id, "alice")
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("acc-%02d", i))
	}

	var wg sync.WaitGroup
	for _, acc := range want {
		wg.Go(func() {
			if err := s.RecordCredential(credential(id, acc)); err != nil {
				t.Errorf("RecordCredential(%s): %v", acc, err)
			}
		})
	}
	wg.Wait()

	if got := accessors(mustCredentials(t, s, id)); !slices.Equal(got, want) {
		t.Errorf("recorded %d credentials %q, want %d %q", len(got), got, len(want), want)
	}
}

func TestReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atf.db")
	c := newClock()
	s, err := openStore(path, store.Options{Now: c.Now})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() }) // a second Close is a no-op
	const a, b = "spiffe://td/agent/a", "spiffe://td/agent/b"
	mustRegister(t, s, a, "alice")
	mustRegister(t, s, b, "alice")
	if _, err := s.UpdateAgent(a, "bob", 1, func(x *store.Agent) { x.Level = authz.Principal }); err != nil {
		t.Fatalf("UpdateAgent: %v", err)
	}
	mustRecord(t, s, credential(a, "acc-1"), credential(b, "acc-2"), credential(b, "acc-3"))
	mustDeregister(t, s, b, "bob", "retired")
	type snapshot struct {
		agents  []store.Agent
		history map[string][]store.AgentChange
		creds   map[string][]store.Credential
		pending []string
	}
	take := func(s *store.Store) snapshot {
		agents, _, err := s.ListAgents("", 10, true)
		if err != nil {
			t.Fatalf("ListAgents: %v", err)
		}
		return snapshot{
			agents:  agents,
			history: map[string][]store.AgentChange{a: mustHistory(t, s, a), b: mustHistory(t, s, b)},
			creds:   map[string][]store.Credential{a: mustCredentials(t, s, a), b: mustCredentials(t, s, b)},
			pending: mustPending(t, s),
		}
	}
	before := take(s)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	reopened := openAt(t, path, store.Options{Now: c.Now})
	after := take(reopened)
	if !reflect.DeepEqual(after, before) {
		t.Errorf("after reopen:\n %+v\nwant\n %+v", after, before)
	}
	if len(before.agents) != 2 || len(before.history[a]) != 2 || len(before.creds[a]) != 1 ||
		len(before.creds[b]) != 2 || len(before.pending) != 2 {
		t.Errorf("snapshot is missing data: %+v", before)
	}

	// The queue carried over can be worked off.
	for _, acc := range after.pending {
		if err := reopened.CompleteRevocation(acc); err != nil {
			t.Fatalf("CompleteRevocation(%s): %v", acc, err)
		}
	}
	if got := mustPending(t, reopened); len(got) != 0 {
		t.Errorf("PendingRevocations after completing all = %q, want none", got)
	}
	for _, cr := range mustCredentials(t, reopened, b) {
		if !cr.RevokedAt.Equal(t0) {
			t.Errorf("%s: RevokedAt = %v, want %v", cr.Accessor, cr.RevokedAt, t0)
		}
	}
}

func TestOpenLocked(t *testing.T) {
	boltOnly(t)
	path := filepath.Join(t.TempDir(), "atf.db")
	first, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { first.Close() }) // a second Close is a no-op
	mustRegister(t, first, "spiffe://td/agent/a", "alice")

	const timeout = 100 * time.Millisecond
	start := time.Now()
	second, err := store.Open(path, store.Options{LockTimeout: timeout})
	elapsed := time.Since(start)
	if !errors.Is(err, store.ErrLocked) {
		if second != nil {
			second.Close()
		}
		t.Fatalf("second Open: err = %v, want ErrLocked", err)
	}
	if second != nil {
		t.Error("second Open returned a store along with its error")
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("err = %q, want it to name %s", err, path)
	}
	// bbolt retries the lock every 50 ms, so it gives up between half the
	// timeout and a little after it; the upper bound leaves room for -race.
	if elapsed < timeout/2 || elapsed > timeout+time.Second {
		t.Errorf("second Open gave up after %v, want about %v", elapsed, timeout)
	}

	// Once the holder lets go, the file opens with its data intact.
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	third := openAt(t, path, store.Options{LockTimeout: timeout})
	mustGet(t, third, "spiffe://td/agent/a")
}

func TestOpenCorrupt(t *testing.T) {
	tests := []struct {
		name    string
		garbage func(size int) []byte
	}{
		{"garbage over the whole file", func(size int) []byte {
			return []byte(strings.Repeat("not a bbolt page ", size/17+1))[:size]
		}},
		{"random bytes over the whole file", func(size int) []byte {
			b := make([]byte, size)
			r := rand.New(rand.NewPCG(1, 2))
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			return b
		}},
		{"short garbage file", func(int) []byte { return []byte("not a bbolt file") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "atf.db")
			s, err := store.Open(path, store.Options{})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			mustRegister(t, s, "spiffe://td/agent/a", "alice")
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tt.garbage(int(fi.Size())), 0o600); err != nil {
				t.Fatal(err)
			}

			s, err = store.Open(path, store.Options{LockTimeout: 100 * time.Millisecond})
			if err == nil {
				s.Close()
				t.Fatal("Open of a corrupted file succeeded")
			}
			if s != nil {
				t.Error("Open returned a store along with its error")
			}
			var de *store.DamagedError
			if !errors.As(err, &de) || de.Path != path || !strings.Contains(err.Error(), "atfd will not start on it. Restore the latest backup") {
				t.Errorf("err = %q, want a DamagedError for %s saying how to restore", err, path)
			}
		})
	}
}

func TestOpenFileModes(t *testing.T) {
	boltOnly(t)
	dir := filepath.Join(t.TempDir(), "state", "atf")
	path := filepath.Join(dir, "atf.db")
	openAt(t, path, store.Options{})

	for _, tt := range []struct {
		path string
		want os.FileMode
	}{
		{path, 0o600},
		{dir, 0o700 | os.ModeDir},
	} {
		fi, err := os.Stat(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode(); got != tt.want {
			t.Errorf("mode of %s = %v, want %v", tt.path, got, tt.want)
		}
	}
}

// A credential decided on one revision of the agent's record is refused,
// and queued for revocation, if the record changed before it was recorded:
// a demotion's revocation of what the new level does not back could not
// have seen it.
func TestRecordCredentialRefusesStaleDecision(t *testing.T) {
	s, _ := open(t)
	const id = "spiffe://td/agent/a"
	a := mustRegister(t, s, id, "alice")

	fresh := credential(id, "acc-fresh")
	fresh.AgentRevision = a.Revision
	mustRecord(t, s, fresh)

	if _, err := s.SetLevel(id, "bob", store.ActionDemote, "incident", authz.Intern, 0); err != nil {
		t.Fatal(err)
	}
	stale := credential(id, "acc-stale")
	stale.AgentRevision = a.Revision
	err := s.RecordCredential(stale)
	if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "changed (revision 2, decided at 1)") {
		t.Fatalf("RecordCredential(stale) = %v, want ErrConflict naming both revisions", err)
	}
	pending, err := s.PendingRevocations()
	if err != nil || !slices.Contains(pending, "acc-stale") || slices.Contains(pending, "acc-fresh") {
		t.Fatalf("pending revocations = %v, %v; want the stale credential only", pending, err)
	}
}
