package store

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/agentictrust/atf/broker/store/kv"
)

// Live credentials counted in the store, for replicas that share it
// (etcd): the limits on live credentials per agent, lineage and role
// (limits.max_live_*) then hold across every replica exactly, since a
// reservation is committed in the store before the credential is handed
// out, in a transaction that reads the counts it checks: a batch
// credential's own record (Credential.Reserve), a service token's
// ReserveLive before Vault is asked (docs/operations.md). One
// process on a bbolt file counts in memory instead (limits.Live).
//
// A reservation lives until the expiry it was made for (the credential's
// lifetime and a margin), until its credential is revoked (ReleaseLive,
// by the reservation the credential's record names) or until it is
// cancelled, its record refused or voided;
// expired ones are swept by the next reservation. A replica that dies
// with a reservation in flight leaves it counted until that expiry: a
// count may be briefly too high, never too low.
var (
	// bucketLiveCounts holds a count (8 bytes, big-endian) per counted
	// key: LiveKey's, and a total per replica (liveTotal + the replica),
	// so that replicas do not all write one key.
	bucketLiveCounts = []byte("live_counts")
	// bucketLive holds the reservations by id (liveEntry).
	bucketLive = []byte("live")
	// bucketLiveExpiry indexes them by expiry: 8 bytes of Unix
	// nanoseconds, big-endian, then the id; no value.
	bucketLiveExpiry = []byte("live_expiry")

	liveTotal = "total\x00"
)

// liveSweepSlack is how long past its expiry a reservation is still
// counted: another replica made it by its own clock, and one whose clock
// runs ahead must not sweep it early (a count too low), while a count too
// high for this long is only a brief early refusal.
const liveSweepSlack = time.Minute

// liveSweepMax bounds how many expired reservations one reservation
// sweeps, so that its transaction stays small.
const liveSweepMax = 64

// LiveLimit is one limit a reservation must respect: at most Max live
// credentials under Key.
type LiveLimit struct {
	Key string
	Max int
}

// LiveReserve is a reservation in the live counts made with a
// credential's record (Credential.Reserve).
type LiveReserve struct {
	Limits  []LiveLimit
	Expires time.Time
}

// The kinds of counted keys: what a live-credential limit counts by.
const (
	LiveAgent   = "agent"
	LiveLineage = "lineage"
	LiveRole    = "role"
)

// LiveKey is the counted key of a limit: kind (LiveAgent, LiveLineage,
// LiveRole) and the name counted.
func LiveKey(kind, name string) string { return kind + "\x00" + name }

// LiveLimitError says which limit a reservation would break.
type LiveLimitError struct {
	Key   string
	Count int
	// Soonest is the soonest expiry among the live reservations (zero if
	// none), a lower bound on when the count can drop.
	Soonest time.Time
}

func (e *LiveLimitError) Error() string {
	return fmt.Sprintf("store: %d live credentials under %q, the most allowed", e.Count, e.Key)
}

type liveEntry struct {
	Keys    []string  `json:"keys"`
	Expires time.Time `json:"expires"`
}

// ReserveLive counts one more live credential under every limit's key,
// until expires, or returns a *LiveLimitError naming the first limit it
// would break (no reservation is then written). It returns the
// reservation's id.
func (s *Store) ReserveLive(limits []LiveLimit, expires time.Time) (string, error) {
	var id string
	var refused *LiveLimitError
	err := s.group(func(tx kv.Tx) error {
		var err error // the group may run this more than once
		id, refused, err = s.reserveLive(tx, limits, expires)
		return err
	})
	if err == nil && refused != nil {
		err = refused
	}
	return id, err
}

// reserveLive is ReserveLive in tx: the reservation's id, or the limit it
// would break (nothing is then reserved, and tx is still good: an agent at
// its limit that keeps asking would otherwise roll back, and run again,
// every group its requests land in; the sweep is kept).
func (s *Store) reserveLive(tx kv.Tx, limits []LiveLimit, expires time.Time) (string, *LiveLimitError, error) {
	kv.Prefetch(tx, liveReads(s.replica, limits)...)
	if err := sweepLive(tx, s.now().Add(-liveSweepSlack), liveSweepMax); err != nil {
		return "", nil, err
	}
	counts := tx.Bucket(bucketLiveCounts)
	// Only limits in force are counted: a key every replica raises is a
	// point where their transactions conflict.
	e := liveEntry{Expires: expires.UTC(), Keys: []string{liveTotal + s.replica}}
	for _, l := range limits {
		if l.Max < 0 {
			continue
		}
		if n := liveCount(counts, l.Key); n >= l.Max {
			return "", &LiveLimitError{Key: l.Key, Count: n, Soonest: soonestLive(tx)}, nil
		}
		e.Keys = append(e.Keys, l.Key)
	}
	id := rand.Text() // not a sequence: one key every replica writes
	return id, nil, putLive(tx, id, e, 1)
}

// liveReads are what a reservation under limits reads: the sweep's first
// expiries, replica's total and the counts of the limits in force.
func liveReads(replica string, limits []LiveLimit) []kv.Key {
	read := []kv.Key{{Bucket: bucketLiveExpiry, Edge: kv.First}, {Bucket: bucketLiveCounts, Key: []byte(liveTotal + replica)}}
	for _, l := range limits {
		if l.Max >= 0 {
			read = append(read, kv.Key{Bucket: bucketLiveCounts, Key: []byte(l.Key)})
		}
	}
	return read
}

// CancelLive gives reservation id back.
func (s *Store) CancelLive(id string) error {
	return s.group(func(tx kv.Tx) error { return releaseLive(tx, id) })
}

// liveReleaseChunk bounds the revoked credentials released per
// transaction.
const liveReleaseChunk = 256

// ReleaseLive stops counting agent's revoked credentials with these
// accessors, by the reservation their records name (those without one are
// skipped).
func (s *Store) ReleaseLive(agent string, accessors ...string) error {
	for len(accessors) > 0 {
		chunk := accessors[:min(len(accessors), liveReleaseChunk)]
		accessors = accessors[len(chunk):]
		if err := s.group(func(tx kv.Tx) error {
			for _, acc := range chunk {
				v := tx.Bucket(bucketCredentials).Get(credentialKey(agent, acc))
				var c Credential
				if v == nil || json.Unmarshal(v, &c) != nil || c.LiveReservation == "" {
					continue
				}
				if err := releaseLive(tx, c.LiveReservation); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// LiveTotal is the number of live credentials counted (and reservations
// in flight).
func (s *Store) LiveTotal() (int, error) {
	var n int
	err := s.view(func(tx kv.Tx) error {
		c := tx.Bucket(bucketLiveCounts).Cursor()
		for k, v := c.Seek([]byte(liveTotal)); k != nil && strings.HasPrefix(string(k), liveTotal); k, v = c.Next() {
			n += decodeLiveCount(v)
		}
		return nil
	})
	return n, err
}

// putLive writes reservation id, adding delta to the counts of its keys.
func putLive(tx kv.Tx, id string, e liveEntry, delta int) error {
	v, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketLive).Put([]byte(id), v); err != nil {
		return err
	}
	if err := tx.Bucket(bucketLiveExpiry).Put(liveExpiryKey(e.Expires, id), nil); err != nil {
		return err
	}
	return addLive(tx, e.Keys, delta)
}

// releaseLive deletes reservation id (if it is still there) and its
// indexes, and takes it off the counts.
func releaseLive(tx kv.Tx, id string) error {
	e, ok, err := getLive(tx, id)
	if err != nil || !ok {
		return err
	}
	if err := tx.Bucket(bucketLive).Delete([]byte(id)); err != nil {
		return err
	}
	if err := tx.Bucket(bucketLiveExpiry).Delete(liveExpiryKey(e.Expires, id)); err != nil {
		return err
	}
	return addLive(tx, e.Keys, -1)
}

func getLive(tx kv.Tx, id string) (liveEntry, bool, error) {
	var e liveEntry
	v := tx.Bucket(bucketLive).Get([]byte(id))
	if v == nil {
		return e, false, nil
	}
	if err := json.Unmarshal(v, &e); err != nil {
		return e, false, fmt.Errorf("store: decode live credential %s: %w", id, err)
	}
	return e, true, nil
}

// addLive adds delta to the counts of keys.
func addLive(tx kv.Tx, keys []string, delta int) error {
	if delta == 0 {
		return nil
	}
	counts := tx.Bucket(bucketLiveCounts)
	for _, k := range keys {
		n := max(liveCount(counts, k)+delta, 0)
		var err error
		if n == 0 {
			err = counts.Delete([]byte(k))
		} else {
			err = counts.Put([]byte(k), binary.BigEndian.AppendUint64(nil, uint64(n)))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func liveCount(counts kv.Bucket, key string) int { return decodeLiveCount(counts.Get([]byte(key))) }

// decodeLiveCount is a count's value (0 if absent).
func decodeLiveCount(v []byte) int {
	if len(v) != 8 {
		return 0
	}
	return int(binary.BigEndian.Uint64(v))
}

func liveExpiryKey(at time.Time, id string) []byte {
	return append(binary.BigEndian.AppendUint64(nil, uint64(at.UnixNano())), id...)
}

// sweepLive releases up to limit reservations expired at now.
func sweepLive(tx kv.Tx, now time.Time, limit int) error {
	end := binary.BigEndian.AppendUint64(nil, uint64(now.UnixNano()))
	var expired []string
	c := tx.Bucket(bucketLiveExpiry).Cursor()
	for k, _ := c.First(); k != nil && len(expired) < limit; k, _ = c.Next() {
		if len(k) < 8 || string(k[:8]) >= string(end) {
			break
		}
		expired = append(expired, string(k[8:]))
	}
	for _, id := range expired {
		if err := releaseLive(tx, id); err != nil {
			return err
		}
	}
	return nil
}

// soonestLive is the soonest expiry of a live reservation (zero if none).
func soonestLive(tx kv.Tx) time.Time {
	k, _ := tx.Bucket(bucketLiveExpiry).Cursor().First()
	if len(k) < 8 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(k[:8])))
}

// IsLiveLimit reports whether err is a refusal by a live-credential
// limit, and which.
func IsLiveLimit(err error) (*LiveLimitError, bool) {
	var le *LiveLimitError
	ok := errors.As(err, &le)
	return le, ok
}

// seedChunk bounds the credentials seedLive counts per transaction.
const seedChunk = 200

// seedLive counts, in a copy just migrated from a bbolt file (where live
// credentials are counted in memory), every credential not yet expired
// nor marked revoked under the kinds of limits in force, each with a
// reservation its record names until its expiry. A credential revoked
// with its lineage node is counted too: too high until it expires, never
// too low. It returns how many it counted. Each transaction has timeout,
// as the copy's.
func seedLive(ctx context.Context, dst *kv.Etcd, kinds LiveKinds, now time.Time, timeout time.Duration) (int, error) {
	var after []byte
	total := 0
	for {
		n, last, err := seedLiveChunk(ctx, dst, kinds, now, after, timeout)
		total += n
		if err != nil || last == nil {
			return total, err
		}
		after = last
	}
}

// seedLiveChunk counts up to seedChunk credentials after key after, and
// returns how many it counted and the last key it read (nil at the end).
func seedLiveChunk(ctx context.Context, dst *kv.Etcd, kinds LiveKinds, now time.Time, after []byte, timeout time.Duration) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var counted int
	var last []byte
	err := dst.Update(ctx, func(tx kv.Tx) error {
		counted, last = 0, nil
		c := tx.Bucket(bucketCredentials).Cursor()
		var k, v []byte
		if after == nil {
			k, v = c.First()
		} else {
			k, v = c.Seek([]byte(string(after) + "\x00")) // the first key past after
		}
		for read := 0; k != nil && read < seedChunk; k, v = c.Next() {
			read++
			last = append([]byte(nil), k...)
			var cr Credential
			if err := json.Unmarshal(v, &cr); err != nil {
				return fmt.Errorf("store: decode credential: %w", err)
			}
			if !cr.RevokedAt.IsZero() || !cr.ExpiresAt.After(now) || cr.LiveReservation != "" {
				continue
			}
			if err := seedOne(tx, k, cr, kinds); err != nil {
				return err
			}
			counted++
		}
		if k == nil {
			last = nil
		}
		return nil
	})
	return counted, last, err
}

// seedOne counts credential cr, whose record is at key k.
func seedOne(tx kv.Tx, k []byte, cr Credential, kinds LiveKinds) error {
	e := liveEntry{Expires: cr.ExpiresAt.UTC(), Keys: []string{liveTotal + "migrated"}}
	for _, c := range []struct {
		on         bool
		kind, name string
	}{{kinds.Agent, LiveAgent, cr.AgentID}, {kinds.Lineage, LiveLineage, cr.LineageRoot()}, {kinds.Role, LiveRole, cr.Role}} {
		if c.on {
			e.Keys = append(e.Keys, LiveKey(c.kind, c.name))
		}
	}
	cr.LiveReservation = rand.Text()
	if err := putLive(tx, cr.LiveReservation, e, 1); err != nil {
		return err
	}
	v, err := json.Marshal(cr)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketCredentials).Put(k, v)
}
