package store

import "github.com/agentictrust/atf/broker/store/kv"

// Room for revocations: a tenth of the size limit, at least 1 MiB, at most
// 64 MiB. A lineage revocation rewrites its live credentials (bounded by
// the live-credential limits) and queues them.
const (
	minReserve = 1 << 20
	maxReserve = 64 << 20
)

func reserveFor(maxSize int64) int64 {
	return min(max(maxSize/10, minReserve), maxReserve, maxSize)
}

// room refuses, with ErrFull, a write that records something new once the
// data in use leaves less than the reserve below the size limit. Writes
// that revoke, kill or deregister do not call it.
func (s *Store) room(tx kv.Tx) error {
	if s.maxSize == 0 {
		return nil
	}
	btx, ok := kv.BoltTx(tx)
	if !ok {
		return nil
	}
	used := btx.Size() - int64(s.db.Stats().FreeAlloc)
	if used > s.maxSize-s.reserve {
		return refuse(ErrFull, "%d of %d bytes in use and the last %d are kept for revocations; raise store_max_size or free disk space", used, s.maxSize, s.reserve)
	}
	return nil
}

// Full reports ErrFull if a write that records something new would be
// refused now, so that callers can refuse before doing work elsewhere.
func (s *Store) Full() error {
	if s.maxSize == 0 {
		return nil // no transaction on every request when there is no limit
	}
	return s.read(s.room)
}
