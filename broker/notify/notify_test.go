package notify_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/notify"
)

func event(i int) notify.Event {
	return notify.Event{ID: fmt.Sprintf("ev-%d", i), Time: t0, Kind: "write_issued", Summary: fmt.Sprintf("write %d issued", i)}
}

// hanging is a webhook receiver that answers nothing until the client gives
// up or release is closed.
func hanging(t *testing.T) (h *hook, release func()) {
	ch := make(chan struct{})
	h = newHook(t, func(_ int, _ http.ResponseWriter, r *http.Request) {
		select {
		case <-ch:
		case <-r.Context().Done():
		}
	})
	return h, func() { close(ch) }
}

// within fails the test if f has not returned after 10 s.
func within(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return", what)
	}
}

func recv(t *testing.T, ch <-chan notify.Event) (notify.Event, bool) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		return ev, ok
	case <-time.After(10 * time.Second):
		t.Fatalf("no event after 10s")
		return notify.Event{}, false
	}
}

func idOf(t *testing.T, r received) string {
	t.Helper()
	var ev notify.Event
	if err := json.Unmarshal(r.body, &ev); err != nil {
		t.Fatalf("body %q: %v", r.body, err)
	}
	return ev.ID
}

// A webhook that hangs holds up neither Publish nor other sinks; what its
// full queue cannot take is dropped, counted and logged once.
func TestPublishNeverBlocks(t *testing.T) {
	h, release := hanging(t)
	log := &syncBuffer{}
	n := notify.New(slog.New(slog.NewTextHandler(log, nil)), &notify.Webhook{URL: h.URL, Timeout: time.Minute})
	n.Publish(event(0))
	h.next(t) // the worker is now stuck delivering event 0

	within(t, "Publish", func() {
		for i := 1; i <= 1024+10; i++ {
			n.Publish(event(i))
		}
	})
	if got := n.Dropped(); got != 10 {
		t.Errorf("Dropped() = %d, want 10", got)
	}
	if got := strings.Count(log.String(), "notification queue full"); got != 1 {
		t.Errorf("the full queue was logged %d times, want once: %s", got, log)
	}

	release()
	n.Close(t.Context())
	if got := h.count.Load(); got != 1025 {
		t.Errorf("the webhook got %d events, want the one in flight and a full queue, 1025", got)
	}
}

func TestSinksAreIndependent(t *testing.T) {
	stuck, release := hanging(t)
	defer release()
	ok := newHook(t, nil)
	n := notify.New(nil, &notify.Webhook{URL: stuck.URL}, &notify.Webhook{URL: ok.URL})
	for i := range 5 {
		n.Publish(event(i))
	}
	for i := range 5 {
		if got := idOf(t, ok.next(t)); got != event(i).ID {
			t.Fatalf("the healthy sink got %s, want %s", got, event(i).ID)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	within(t, "Close", func() { n.Close(ctx) })
}

func TestSubscribe(t *testing.T) {
	n := notify.New(nil)
	defer n.Close(t.Context())
	a, unsubA := n.Subscribe()
	b, unsubB := n.Subscribe()
	defer unsubB()
	for i := range 3 {
		n.Publish(event(i))
	}
	for _, ch := range []<-chan notify.Event{a, b} {
		for i := range 3 {
			if ev, _ := recv(t, ch); ev.ID != event(i).ID {
				t.Fatalf("got %s, want %s", ev.ID, event(i).ID)
			}
		}
	}

	unsubA()
	unsubA() // twice is harmless
	if _, ok := recv(t, a); ok {
		t.Fatalf("the channel is open after unsubscribing")
	}
	n.Publish(event(3))
	if ev, _ := recv(t, b); ev.ID != event(3).ID {
		t.Fatalf("got %s, want %s", ev.ID, event(3).ID)
	}
}

// A subscriber that falls 256 events behind is cut off; one that keeps up
// is not.
func TestSlowSubscriber(t *testing.T) {
	log := &syncBuffer{}
	n := notify.New(slog.New(slog.NewTextHandler(log, nil)))
	defer n.Close(t.Context())
	slow, unsubSlow := n.Subscribe()
	fast, unsubFast := n.Subscribe()
	defer unsubFast()
	for i := range 256 {
		n.Publish(event(i))
	}
	for range 256 {
		recv(t, fast)
	}

	n.Publish(event(256))
	if ev, _ := recv(t, fast); ev.ID != event(256).ID {
		t.Fatalf("the subscriber keeping up got %s, want %s", ev.ID, event(256).ID)
	}
	for i := range 256 {
		if ev, ok := recv(t, slow); !ok || ev.ID != event(i).ID {
			t.Fatalf("the slow subscriber got %s (open %v), want %s", ev.ID, ok, event(i).ID)
		}
	}
	if _, ok := recv(t, slow); ok {
		t.Fatalf("the slow subscriber's channel is still open")
	}
	unsubSlow() // after the cut-off is harmless
	if !strings.Contains(log.String(), "event watcher fell behind") {
		t.Errorf("log = %s, want the cut-off", log)
	}
}

func TestClose(t *testing.T) {
	t.Run("drains", func(t *testing.T) {
		h := newHook(t, nil)
		n := notify.New(nil, &notify.Webhook{URL: h.URL})
		sub, _ := n.Subscribe()
		for i := range 50 {
			n.Publish(event(i))
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		n.Close(ctx)
		if got := h.count.Load(); got != 50 {
			t.Fatalf("the webhook got %d events by the time Close returned, want 50", got)
		}
		for i := range 50 {
			if got := idOf(t, h.next(t)); got != event(i).ID {
				t.Fatalf("delivery %d was %s, want %s", i, got, event(i).ID)
			}
		}
		for range 50 {
			recv(t, sub)
		}
		if _, ok := recv(t, sub); ok {
			t.Errorf("a subscriber's channel is open after Close")
		}

		n.Publish(event(50))
		if got := n.Dropped(); got != 1 {
			t.Errorf("Dropped() after publishing to a closed Notifier = %d, want 1", got)
		}
		if _, ok := recv(t, must(n.Subscribe())); ok {
			t.Errorf("Subscribe after Close gave an open channel")
		}
		n.Close(ctx) // twice is harmless
	})

	t.Run("gives up when ctx is done", func(t *testing.T) {
		h, release := hanging(t)
		defer release()
		log := &syncBuffer{}
		n := notify.New(slog.New(slog.NewTextHandler(log, nil)), &notify.Webhook{URL: h.URL, Timeout: time.Minute})
		for i := range 5 {
			n.Publish(event(i))
		}
		h.next(t)
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		within(t, "Close", func() { n.Close(ctx) })
		if got := n.Dropped(); got != 4 {
			t.Errorf("Dropped() = %d, want the 4 still queued", got)
		}
		for _, want := range []string{
			`msg="notification not delivered" sink=0 event=ev-0 kind=write_issued error="notify: webhook ` + h.URL +
				`: context canceled (stopped after 1 attempts: context canceled)"`,
			`msg="notifications dropped at shutdown" sink=0 count=4`,
		} {
			if !strings.Contains(log.String(), want) {
				t.Errorf("log = %s\nwant %s", log, want)
			}
		}
	})
}

func must(ch <-chan notify.Event, _ func()) <-chan notify.Event { return ch }
