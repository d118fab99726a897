package console

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/store"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// A sign-in or a form never sends the browser off the console: an open
// redirect would let a link to the console forward a signed-in person
// anywhere.
func TestLocalPath(t *testing.T) {
	for in, want := range map[string]string{
		"/approvals":                "/approvals",
		"/agent?id=spiffe%3A%2F%2F": "/agent?id=spiffe%3A%2F%2F",
		"":                          "/",
		"https://evil.example/":     "/",
		"//evil.example/x":          "/",
		"/\\evil.example":           "/",
		"approvals":                 "/",
		"javascript:alert(1)":       "/",
	} {
		if got := localPath(in); got != want {
			t.Errorf("localPath(%q) = %q, want %q", in, got, want)
		}
	}
	c := &Console{origin: "https://atf.example"}
	for in, want := range map[string]string{
		"https://atf.example/kill?x=1": "/kill?x=1",
		"https://evil.example/kill":    "/",
		"http://atf.example/kill":      "/",
		"":                             "/",
	} {
		if got := c.samePage(in); got != want {
			t.Errorf("samePage(%q) = %q, want %q", in, got, want)
		}
	}
}

// A sealed cookie opens only under its own name and unaltered.
func TestSealer(t *testing.T) {
	s, err := newSealer("")
	if err != nil {
		t.Fatal(err)
	}
	in := session{ID: "id", Subject: "sub", Roles: []string{"auditor"}, CSRF: "tok"}
	v, err := s.seal(sessionCookie, in)
	if err != nil {
		t.Fatal(err)
	}
	var out session
	if err := s.open(sessionCookie, v, &out); err != nil || out.Subject != "sub" || out.CSRF != "tok" {
		t.Fatalf("open = %+v, %v", out, err)
	}
	if err := s.open(loginCookie, v, &out); err == nil {
		t.Error("a session cookie's value opened as a login cookie")
	}
	b := []byte(v)
	b[len(b)/2] ^= 1
	if err := s.open(sessionCookie, string(b), &out); err == nil {
		t.Error("an altered cookie opened")
	}
	other, _ := newSealer("")
	if err := other.open(sessionCookie, v, &out); err == nil {
		t.Error("a cookie sealed under another key opened")
	}
}

// The roles claim maps to console roles through the configuration only.
func TestRoles(t *testing.T) {
	p := NewPeople(config.ConsoleConfig{Roles: map[string][]string{
		config.ConsoleApprover: {"approvers"}, config.ConsoleAuditor: {"audit", "approvers"},
	}}, nil, nil)
	for name, tt := range map[string]struct {
		claim any
		want  []string
	}{
		"list":            {[]any{"approvers", "other"}, []string{config.ConsoleApprover, config.ConsoleAuditor}},
		"space-separated": {"audit other", []string{config.ConsoleAuditor}},
		"no match":        {[]any{"admins"}, nil},
		"not strings":     {[]any{1, true}, nil},
		"absent":          {nil, nil},
	} {
		if got := p.roles(tt.claim); !slices.Equal(got, tt.want) {
			t.Errorf("%s: roles = %v, want %v", name, got, tt.want)
		}
	}
}

func TestDiffLines(t *testing.T) {
	got := diffLines("a\nb\nc", "a\nc\nd")
	want := []diffLine{{" ", "a"}, {"-", "b"}, {" ", "c"}, {"+", "d"}}
	if !slices.Equal(got, want) {
		t.Errorf("diff = %v, want %v", got, want)
	}
}

// Signing out on one replica ends the session on every replica sharing
// the store (a real bbolt store here; on etcd, the store's own
// TestEndedSessions shows another replica reads it): a copy of the
// cookie is refused by both. If whether it ended cannot be read, nobody
// is signed in.
func TestSignOutEveryReplica(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "session-key")
	if err := os.WriteFile(key, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "atf.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	replica := func(sessions Sessions) *Console {
		c, err := New(Config{ConsoleConfig: config.ConsoleConfig{URL: "http://127.0.0.1:8444", SessionKeyFile: key, SessionTTL: time.Hour},
			Sessions: sessions})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	one, two := replica(st), replica(st)
	s := session{ID: randomToken(), Issuer: "https://op.example", Subject: "u-1", Name: "Ann", Roles: []string{config.ConsoleAuditor},
		Expires: time.Now().Add(time.Hour), CSRF: randomToken()}
	sealed, err := one.sealer.seal(sessionCookie, s)
	if err != nil {
		t.Fatal(err)
	}
	req := func(method, path string, body url.Values) *http.Request {
		r := httptest.NewRequest(method, path, strings.NewReader(body.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.AddCookie(&http.Cookie{Name: sessionCookie, Value: sealed})
		return r
	}
	if got, err := two.session(req(http.MethodGet, "/", nil)); err != nil || got == nil || got.Subject != "u-1" {
		t.Fatalf("the other replica before sign-out: %+v, %v", got, err)
	}
	w := httptest.NewRecorder()
	one.ServeHTTP(w, req(http.MethodPost, "/logout", url.Values{"csrf": {s.CSRF}}))
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "Signed out") {
		t.Fatalf("sign-out: %d\n%.500s", w.Code, w.Body.String())
	}
	for name, c := range map[string]*Console{"the replica signed out on": one, "another replica": two} {
		w := httptest.NewRecorder()
		c.ServeHTTP(w, req(http.MethodGet, "/approvals", nil))
		if w.Code != http.StatusFound || !strings.HasPrefix(w.Header().Get("Location"), "/login") {
			t.Errorf("%s after sign-out: %d %s, want a redirect to the sign-in", name, w.Code, w.Header().Get("Location"))
		}
	}

	// A live events stream opened with the cookie ends too, on another
	// replica: at its next event, or its next check while quiet.
	sessionCheck = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ended := make(chan struct{})
	go func() { two.untilSignedOut(ctx, cancel, s.ID); close(ended) }()
	select {
	case <-ended:
		if ctx.Err() == nil {
			t.Error("the quiet events stream's check returned without ending it")
		}
	case <-time.After(2 * time.Second):
		t.Error("a quiet events stream of a signed-out session was not ended")
	}
	live := &sseStream{ctx: t.Context(), live: func() bool { e, err := two.ended.has(s.ID); return err == nil && !e }}
	if err := live.Send(&adminv1.WatchEventsResponse{}); !errors.Is(err, errSignedOut) {
		t.Errorf("an event for a signed-out session: %v, want errSignedOut", err)
	}

	down := replica(failingSessions{})
	w = httptest.NewRecorder()
	down.ServeHTTP(w, req(http.MethodGet, "/approvals", nil))
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "cannot check your session") {
		t.Fatalf("with the store down: %d\n%.500s", w.Code, w.Body.String())
	}
}

// failingSessions is a store that does not answer (a fault injected; the
// real path is TestSignOutEveryReplica's store).
type failingSessions struct{}

func (failingSessions) EndSession(string, time.Time) error { return errors.New("etcd: no leader") }
func (failingSessions) SessionEnded(string) (bool, error) {
	return false, errors.New("etcd: no leader")
}

// A re-authentication counts only if the provider says it authenticated
// the person again: auth_time within a minute of the token, by its own
// clock; a token that does not say when is refused.
func TestFreshSignIn(t *testing.T) {
	for _, tt := range []struct {
		name  string
		age   time.Duration
		known bool
		want  string
	}{
		{"fresh", 10 * time.Second, true, ""},
		{"stale", 10 * time.Minute, true, "did not authenticate the person again"},
		{"no auth_time", 0, false, "no auth_time"},
	} {
		err := freshSignIn(tt.age, tt.known)
		if (tt.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}
