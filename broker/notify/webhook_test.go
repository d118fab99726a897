package notify_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/notify"
)

// received is one request a test server got.
type received struct {
	n      int
	at     time.Time
	method string
	path   string
	header http.Header
	body   []byte
}

// hook is a webhook receiver on loopback. answer says what to do with the
// n-th request (from 1); by default it answers 200.
type hook struct {
	*httptest.Server
	reqs  chan received
	count atomic.Int64
}

func newHook(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request)) *hook {
	t.Helper()
	h := &hook{reqs: make(chan received, 4096)}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(h.count.Add(1))
		body, _ := io.ReadAll(r.Body)
		h.reqs <- received{n: n, at: time.Now(), method: r.Method, path: r.URL.Path, header: r.Header.Clone(), body: body}
		if answer != nil {
			answer(n, w, r)
		}
	}))
	t.Cleanup(h.Close)
	return h
}

// next waits for the next request.
func (h *hook) next(t *testing.T) received {
	t.Helper()
	select {
	case r := <-h.reqs:
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("no request after 10s")
		return received{}
	}
}

// statuses answers the n-th request with codes[n-1], and 200 after them.
func statuses(codes ...int) func(int, http.ResponseWriter, *http.Request) {
	return func(n int, w http.ResponseWriter, _ *http.Request) {
		if n <= len(codes) {
			w.WriteHeader(codes[n-1])
		}
	}
}

// always answers every request with code.
func always(code int) func(int, http.ResponseWriter, *http.Request) {
	return func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }
}

var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

func TestWebhookDelivers(t *testing.T) {
	tests := []struct {
		name string
		ev   notify.Event
		want map[string]any
	}{
		{"every field", notify.Event{ID: "ev-1", Time: t0, Kind: "approval_requested", Agent: "spiffe://td/agent/a", Role: "db-write",
			Summary: "agent a asks for db-write", Detail: map[string]string{"ttl": "15m"}},
			map[string]any{"id": "ev-1", "time": "2026-11-26T10:00:00Z", "kind": "approval_requested", "agent": "spiffe://td/agent/a",
				"role": "db-write", "summary": "agent a asks for db-write", "text": "agent a asks for db-write",
				"detail": map[string]any{"ttl": "15m"}}},
		{"no agent, role or detail", notify.Event{ID: "ev-2", Time: t0, Kind: "anomaly", Summary: "odd"},
			map[string]any{"id": "ev-2", "time": "2026-11-26T10:00:00Z", "kind": "anomaly", "summary": "odd", "text": "odd"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHook(t, nil)
			w := &notify.Webhook{URL: h.URL + "/hooks/atf"}
			if err := w.Send(t.Context(), tt.ev); err != nil {
				t.Fatalf("Send: %v", err)
			}
			r := h.next(t)
			if r.method != http.MethodPost || r.path != "/hooks/atf" || r.header.Get("Content-Type") != "application/json" {
				t.Errorf("request = %s %s, Content-Type %q; want POST /hooks/atf, application/json", r.method, r.path, r.header.Get("Content-Type"))
			}
			if sig := r.header.Get(notify.SignatureHeader); sig != "" {
				t.Errorf("%s = %q without a secret", notify.SignatureHeader, sig)
			}
			var got map[string]any
			if err := json.Unmarshal(r.body, &got); err != nil {
				t.Fatalf("body %q: %v", r.body, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("body = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestWebhookSignature(t *testing.T) {
	h := newHook(t, nil)
	secret := []byte("shared secret")
	w := &notify.Webhook{URL: h.URL, Secret: secret}
	if err := w.Send(t.Context(), notify.Event{ID: "ev-1", Kind: "write_issued", Summary: "s"}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	r := h.next(t)
	verify := func(key []byte) bool {
		mac := hmac.New(sha256.New, key)
		mac.Write(r.body)
		return hmac.Equal([]byte(r.header.Get(notify.SignatureHeader)), []byte("sha256="+hex.EncodeToString(mac.Sum(nil))))
	}
	if !verify(secret) {
		t.Errorf("%s = %q does not verify", notify.SignatureHeader, r.header.Get(notify.SignatureHeader))
	}
	if verify([]byte("another secret")) {
		t.Errorf("the signature verifies under another secret")
	}
}

// dropConnection answers the first request by closing the connection.
func dropConnection(n int, w http.ResponseWriter, _ *http.Request) {
	if n == 1 {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}
}

func TestWebhookRetries(t *testing.T) {
	tests := []struct {
		name     string
		answer   func(int, http.ResponseWriter, *http.Request)
		attempts int
		err      string // after "notify: webhook <url>"
	}{
		{"500 then 200", statuses(500), 2, ""},
		{"429, 502 then 200", statuses(429, 502), 3, ""},
		{"connection dropped then 200", dropConnection, 2, ""},
		{"400 is final", statuses(400), 1, " answered 400 Bad Request"},
		{"404 is final", statuses(404), 1, " answered 404 Not Found"},
		{"503 until the attempts run out", statuses(503, 503, 503), 3, " answered 503 Service Unavailable (gave up after 3 attempts)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHook(t, tt.answer)
			w := &notify.Webhook{URL: h.URL + "/hook", MaxAttempts: 3, Backoff: time.Millisecond}
			err := w.Send(t.Context(), notify.Event{ID: "ev-1", Kind: "write_issued"})
			want := ""
			if tt.err != "" {
				want = "notify: webhook " + h.URL + tt.err
			}
			if got := errString(err); got != want {
				t.Errorf("Send error = %q, want %q", got, want)
			}
			if got := int(h.count.Load()); got != tt.attempts {
				t.Errorf("the webhook got %d requests, want %d", got, tt.attempts)
			}
			if se := (*notify.StatusError)(nil); tt.err != "" && !errors.As(err, &se) {
				t.Errorf("Send error %v is no *StatusError", err)
			}
		})
	}
}

// A Retry-After longer than the backoff is waited for; one longer than the
// caller will wait ends the Send when the caller's context does.
func TestWebhookRetryAfter(t *testing.T) {
	retryAfter := func(v string) func(int, http.ResponseWriter, *http.Request) {
		return func(n int, w http.ResponseWriter, _ *http.Request) {
			if n == 1 {
				w.Header().Set("Retry-After", v)
				w.WriteHeader(http.StatusTooManyRequests)
			}
		}
	}

	h := newHook(t, retryAfter("1"))
	w := &notify.Webhook{URL: h.URL, Backoff: time.Millisecond}
	if err := w.Send(t.Context(), notify.Event{ID: "ev-1"}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	first, second := h.next(t), h.next(t)
	if gap := second.at.Sub(first.at); gap < time.Second {
		t.Errorf("retried after %v, want at least the 1s Retry-After asked", gap)
	}

	h = newHook(t, retryAfter("3600"))
	w = &notify.Webhook{URL: h.URL, Backoff: time.Millisecond}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	err := w.Send(ctx, notify.Event{ID: "ev-1"})
	want := "notify: webhook " + h.URL + " answered 429 Too Many Requests (stopped after 1 attempts: context deadline exceeded)"
	if errString(err) != want || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Send error = %v, want %s", err, want)
	}
}

// The secrets a webhook URL carries in its userinfo and query appear in no
// error and no log line, whatever goes wrong.
func TestWebhookKeepsURLSecrets(t *testing.T) {
	closed := newHook(t, nil)
	closed.Close()
	tests := []struct {
		name    string
		hook    *hook
		timeout time.Duration
		err     string // after "notify: webhook <url>"
	}{
		{"final answer", newHook(t, always(400)), 0, " answered 400 Bad Request"},
		{"retries run out", newHook(t, always(500)), 0, " answered 500 Internal Server Error (gave up after 2 attempts)"},
		{"timeout", newHook(t, func(_ int, _ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }), 50 * time.Millisecond,
			": context deadline exceeded (gave up after 2 attempts)"},
		{"connection refused", closed, 0, ": dial tcp "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := tt.hook.URL + "/hooks/T0/B0"
			w := &notify.Webhook{URL: strings.Replace(base, "http://", "http://bot:hunter2@", 1) + "?token=xq7Secret&channel=ops",
				MaxAttempts: 2, Backoff: time.Millisecond, Timeout: tt.timeout}
			err := w.Send(t.Context(), notify.Event{ID: "ev-1", Kind: "anomaly"})
			// Chat webhooks keep their secret in the path: only the host shows.
			if err == nil || !strings.HasPrefix(err.Error(), "notify: webhook "+tt.hook.URL+tt.err) || strings.Contains(err.Error(), "T0/B0") {
				t.Errorf("Send error = %v, want it to start %q and not name the path", err, "notify: webhook "+tt.hook.URL+tt.err)
			}

			log := &syncBuffer{}
			n := notify.New(slog.New(slog.NewJSONHandler(log, nil)), w)
			n.Publish(notify.Event{ID: "ev-2", Kind: "anomaly"})
			n.Close(t.Context())
			if !strings.Contains(log.String(), "notification not delivered") {
				t.Errorf("log = %s, want the failure", log)
			}
			for _, secret := range []string{"hunter2", "xq7Secret", "channel"} {
				if strings.Contains(errString(err), secret) || strings.Contains(log.String(), secret) {
					t.Errorf("%q is in the error (%v) or the log (%s)", secret, err, log)
				}
			}
		})
	}
}

func TestWebhookBadURL(t *testing.T) {
	for _, u := range []string{"", "ftp://host/x?token=s3cret", "://bad?token=s3cret", "http:///nohost?token=s3cret"} {
		err := (&notify.Webhook{URL: u}).Send(t.Context(), notify.Event{ID: "ev-1"})
		if want := "notify: webhook URL is not an http or https URL"; errString(err) != want {
			t.Errorf("Send to %q: %v, want %s", u, err, want)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// syncBuffer is a bytes.Buffer a logger and a test may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
