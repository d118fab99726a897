package limits

import (
	"strconv"
	"sync"
	"time"

	"github.com/agentictrust/atf/broker/store"
)

// Others is the caller an aggregated record names when more distinct
// callers were refused in a window than Refusals keeps apart.
const Others = "*others*"

// MaxRefusalKeys bounds the callers, kinds and reasons Refusals keeps
// apart at once; past it, new callers are counted together as Others.
const MaxRefusalKeys = 10_000

// Refusals keeps the audit trail from growing with refusals that need no
// record each: those of an unregistered caller, of a rate limit and of the
// kill switch (docs/security.md). The first refusal of a caller, kind and
// reason (and subject) in a window is written as usual; the ones after it are counted,
// and when the window ends one aggregated record (kind + "_suppressed")
// says how many there were, from when to when. Memory is bounded:
// MaxRefusalKeys windows at most.
type Refusals struct {
	window time.Duration
	now    func() time.Time

	mu      sync.Mutex
	windows map[refusalKey]*refusalWindow
}

// refusalKey is what one window counts: subject is what the refusals were
// about (the role asked for, one of the roles file's).
type refusalKey struct{ caller, kind, reason, subject string }

type refusalWindow struct {
	start, last time.Time
	suppressed  int
}

// NewRefusals returns an empty count with windows of window.
func NewRefusals(window time.Duration, now func() time.Time) *Refusals {
	return &Refusals{window: window, now: now, windows: map[refusalKey]*refusalWindow{}}
}

// Note counts one refusal of caller by kind (the audit record's kind) and
// reason, about subject. write says whether its own record is to be
// written (the first of its window); prior is the aggregated record of
// the window it ended, if that one counted refusals, to be written with
// it.
func (r *Refusals) Note(caller, kind, reason, subject string) (write bool, prior *store.AuditRecord) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	k := refusalKey{caller, kind, reason, subject}
	w := r.windows[k]
	if w == nil && len(r.windows) >= MaxRefusalKeys {
		k.caller = Others
		w = r.windows[k]
	}
	switch {
	case w == nil:
		r.windows[k] = &refusalWindow{start: now, last: now}
		return true, nil
	case now.Sub(w.start) < r.window:
		w.suppressed++
		w.last = now
		return false, nil
	}
	if w.suppressed > 0 {
		rec := aggregated(k, w)
		prior = &rec
	}
	*w = refusalWindow{start: now, last: now}
	return true, prior
}

// Flush returns the aggregated records of the windows that ended (all of
// them if all, at shutdown) and forgets those windows.
func (r *Refusals) Flush(all bool) []store.AuditRecord {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []store.AuditRecord
	for k, w := range r.windows {
		if !all && now.Sub(w.start) < r.window {
			continue
		}
		if w.suppressed > 0 {
			out = append(out, aggregated(k, w))
		}
		delete(r.windows, k)
	}
	return out
}

// Window is the length of a window.
func (r *Refusals) Window() time.Duration { return r.window }

// aggregated is the record of the refusals a window counted.
func aggregated(k refusalKey, w *refusalWindow) store.AuditRecord {
	return store.AuditRecord{Time: w.last, Kind: k.kind + "_suppressed", Actor: k.caller, Subject: k.subject, Detail: map[string]string{
		"count": strconv.Itoa(w.suppressed), "reason": k.reason,
		"since": w.start.UTC().Format(time.RFC3339Nano), "until": w.last.UTC().Format(time.RFC3339Nano),
		"message": "refusals of this caller, kind and reason after the first of the window, counted and not written one by one (docs/security.md)",
	}}
}
