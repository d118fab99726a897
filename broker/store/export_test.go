package store

// FailCommits makes every group commit of s fail with err (nil: commit
// again), as a full disk or an I/O error would: a fault the tests cannot
// cause for real.
func FailCommits(s *Store, err error) {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if err == nil {
		s.commitFault = nil
		return
	}
	s.commitFault = func() error { return err }
}
