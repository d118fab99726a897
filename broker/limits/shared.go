package limits

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/store"
)

// Shared counts live credentials in a store several replicas share (etcd),
// so that the limits on them (ATF S-4, S-5) hold across every replica
// exactly: a reservation is committed in the store, in a transaction that
// reads the counts it checks, before the credential is handed out: in a
// batch credential's record (InRecord), or before Vault is asked
// (Reserve, store.ReserveLive).
// A count may be too high for a while (a replica that died with a
// reservation in flight, a credential whose record was lost: each is
// counted until the expiry it was reserved for), never too low.
type Shared struct {
	store                         *store.Store
	maxAgent, maxLineage, maxRole int // -1: no limit
	log                           *slog.Logger
	// total is the count Run last read (-1: unread).
	total atomic.Int64
}

// NewShared returns the limits of cfg counted in st.
func NewShared(st *store.Store, cfg config.LimitsConfig, log *slog.Logger) *Shared {
	s := &Shared{store: st, maxAgent: cfg.MaxLivePerAgent, maxLineage: cfg.MaxLivePerLineage, maxRole: cfg.MaxLivePerRole, log: log}
	s.total.Store(-1)
	return s
}

// sharedTotalEvery is how often Run reads the total of live credentials.
const sharedTotalEvery = 5 * time.Second

// Run reads the total of live credentials every sharedTotalEvery until
// ctx ends, so that a metrics scrape does not wait on the store.
func (s *Shared) Run(ctx context.Context) {
	for {
		n, err := s.store.LiveTotal()
		if err != nil {
			n = -1
		}
		s.total.Store(int64(n))
		select {
		case <-ctx.Done():
			return
		case <-time.After(sharedTotalEvery):
		}
	}
}

// sharedLimits names each counted key's limit, for refusals.
var sharedLimits = map[string]string{store.LiveAgent: "live_per_agent", store.LiveLineage: "live_per_lineage", store.LiveRole: "live_per_role"}

// Reserve counts one more credential for agent in lineage and role until
// expires, committed in the store.
func (s *Shared) Reserve(agent, lineage, role string, expires time.Time) (*Reservation, error) {
	id, err := s.store.ReserveLive(s.InRecord(agent, lineage, role, expires).Limits, expires)
	if fe, ok := Refused(err); ok {
		return nil, fe
	}
	if err != nil {
		// The edge answers a store that does not answer as such, without
		// the store's own words (addresses, keys).
		return nil, fmt.Errorf("limits: counting live credentials: %w", err)
	}
	return &Reservation{id: id}, nil
}

// InRecord is the reservation of one more credential for agent in lineage
// and role until expires, for its record to make in the store.
func (s *Shared) InRecord(agent, lineage, role string, expires time.Time) *store.LiveReserve {
	return &store.LiveReserve{Expires: expires, Limits: []store.LiveLimit{
		{Key: store.LiveKey(store.LiveAgent, agent), Max: s.maxAgent},
		{Key: store.LiveKey(store.LiveLineage, lineage), Max: s.maxLineage},
		{Key: store.LiveKey(store.LiveRole, role), Max: s.maxRole},
	}}
}

// Refused is the refusal of a live-credential limit err reports
// (store.LiveLimitError), as Reserve gives it; false if err is not one.
func Refused(err error) (*fault.Error, bool) {
	le, ok := store.IsLiveLimit(err)
	if !ok {
		return nil, false
	}
	kind, name, _ := strings.Cut(le.Key, "\x00")
	what := map[string]string{store.LiveAgent: "agent " + name, store.LiveLineage: "the lineage of " + name, store.LiveRole: "role " + name}[kind]
	retry := time.Minute
	if !le.Soonest.IsZero() {
		retry = max(time.Until(le.Soonest), time.Second)
	}
	return fault.Limited(sharedLimits[kind], retry, "limit %s: %s already holds %d live credentials, the most allowed", sharedLimits[kind], what, le.Count), true
}

// Commit does nothing: the credential's record names its reservation
// (store.Credential's LiveReservation), by which its revocation releases
// it, and a refused record gives it back in the same transaction.
func (s *Shared) Commit(*Reservation, string, time.Time) {}

// Cancel gives a reservation back.
func (s *Shared) Cancel(lc *Reservation) {
	if err := s.store.CancelLive(lc.id); err != nil {
		s.log.Warn("giving back a live-credential reservation failed; it counts against its limits until its expiry",
			slog.String("error", err.Error()))
	}
}

// Remove stops counting revoked credentials.
func (s *Shared) Remove(agent string, accessors ...string) {
	if err := s.store.ReleaseLive(agent, accessors...); err != nil {
		s.log.Warn("releasing revoked credentials from the live counts failed; they count against their limits until they expire",
			slog.String("error", err.Error()), slog.Int("count", len(accessors)))
	}
}

// Total is the number of live credentials counted, as Run last read it
// (-1 if the store could not be read).
func (s *Shared) Total() int { return int(s.total.Load()) }
