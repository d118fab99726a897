package store

import (
	"crypto/sha256"
	"encoding/binary"
	"time"

	"github.com/agentictrust/atf/broker/store/kv"
)

// bucketEndedSessions holds the console sessions that people signed out
// of before they expire, so that every replica refuses a copy of the
// cookie: the SHA-256 of the session's id (never the id itself) → when
// it would have expired (Unix nanoseconds, big-endian). Prune drops the
// ones expired before its cutoff.
var bucketEndedSessions = []byte("ended_sessions")

func sessionKey(id string) []byte {
	sum := sha256.Sum256([]byte(id))
	return sum[:]
}

// EndSession records that the console session id ended (sign-out)
// before it expires at expires.
func (s *Store) EndSession(id string, expires time.Time) error {
	return s.update(func(tx kv.Tx) error {
		return tx.Bucket(bucketEndedSessions).Put(sessionKey(id), binary.BigEndian.AppendUint64(nil, uint64(expires.UnixNano())))
	})
}

// SessionEnded says whether the console session id was ended by
// EndSession, on any replica.
func (s *Store) SessionEnded(id string) (bool, error) {
	ended := false
	err := s.view(func(tx kv.Tx) error {
		ended = tx.Bucket(bucketEndedSessions).Get(sessionKey(id)) != nil
		return nil
	})
	return ended, err
}

func sessionExpiry(_ kv.Tx, v []byte) (time.Time, bool) {
	if len(v) != 8 {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v))), true
}
