package limits

import (
	"fmt"
	"testing"
	"time"
)

// The first refusal of a caller, kind, reason and subject in a window is
// written, the rest counted; the window's end (by the next refusal, or a
// flush) gives one aggregated record with the count. Past MaxRefusalKeys
// windows, new callers are counted together.
func TestRefusals(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := NewRefusals(time.Minute, func() time.Time { return now })
	if w, p := r.Note("a", "credential_denied", "not_registered", "role"); !w || p != nil {
		t.Fatalf("first refusal: write %v, prior %v; want written alone", w, p)
	}
	for range 5 {
		if w, _ := r.Note("a", "credential_denied", "not_registered", "role"); w {
			t.Fatal("a refusal within the window was to be written")
		}
	}
	if w, _ := r.Note("a", "credential_limited", "rate", "role"); !w {
		t.Fatal("the first refusal of another kind was not to be written")
	}
	if recs := r.Flush(false); len(recs) != 0 {
		t.Fatalf("flush within the window = %v, want nothing", recs)
	}
	now = now.Add(time.Minute)
	w, prior := r.Note("a", "credential_denied", "not_registered", "role")
	if !w || prior == nil || prior.Kind != "credential_denied_suppressed" || prior.Actor != "a" || prior.Subject != "role" ||
		prior.Detail["count"] != "5" || prior.Detail["reason"] != "not_registered" {
		t.Fatalf("first refusal of the next window: write %v, prior %+v; want written with the last window's count, 5", w, prior)
	}
	// The limited window counted nothing: it ends without a record.
	if recs := r.Flush(false); len(recs) != 0 {
		t.Fatalf("flush = %v, want nothing", recs)
	}
	r.Note("a", "credential_denied", "not_registered", "role")
	if recs := r.Flush(true); len(recs) != 1 || recs[0].Detail["count"] != "1" {
		t.Fatalf("flush at shutdown = %+v, want the open window's count, 1", recs)
	}

	for i := range MaxRefusalKeys {
		r.Note(fmt.Sprint(i), "credential_denied", "not_registered", "role")
	}
	if w, _ := r.Note("one more", "credential_denied", "not_registered", "role"); !w {
		t.Fatal("the first caller past the cap was not written (the first of the others' window)")
	}
	if w, _ := r.Note("and another", "credential_denied", "not_registered", "role"); w {
		t.Fatal("a second caller past the cap was written")
	}
	if len(r.windows) != MaxRefusalKeys+1 {
		t.Errorf("%d windows, want the cap and the others' one", len(r.windows))
	}
	recs := r.Flush(true)
	if len(recs) != 1 || recs[0].Actor != Others || recs[0].Detail["count"] != "1" {
		t.Errorf("flush = %d records (%+v...), want the others' count", len(recs), recs[:min(len(recs), 1)])
	}
}
