package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/oauth/verify"
	"github.com/agentictrust/atf/oauth/verify/verifytest"
)

// lockedBuffer collects the server's log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The demo in miniature: agent C calls the tools through A → B → C; the
// revocation of B's grant makes its next call fail.
func TestToolsThroughChainThenRevoked(t *testing.T) {
	is := verifytest.NewIssuer(t)
	revoked := make(chan verify.Revocation, 1)
	v, err := verify.New(verify.Config{Issuer: is.URL(), Audience: verifytest.Audience, Client: is.Client(),
		Logger: slog.New(slog.DiscardHandler), Push: &verify.Push{OnRevoked: func(r verify.Revocation) { revoked <- r }}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go v.Subscribe(ctx)
	is.NextConnect(t)
	var logs lockedBuffer
	srv := httptest.NewServer(newMux(v, slog.New(slog.NewTextHandler(&logs, nil))))
	t.Cleanup(srv.Close)

	token := is.MintAfter(2*time.Second, verifytest.Token{Act: []string{verifytest.AgentB, verifytest.AgentA}})
	deadline := time.Now().Add(5 * time.Second)
	for code, _ := rpc(t, srv.URL, token, "tools/list", nil); code != http.StatusOK; code, _ = rpc(t, srv.URL, token, "tools/list", nil) {
		if time.Now().After(deadline) {
			t.Fatalf("tools/list: %d", code)
		}
		time.Sleep(10 * time.Millisecond)
	}
	code, body := rpc(t, srv.URL, token, "tools/call", map[string]any{"name": "whoami"})
	want := verifytest.AgentA + " → " + verifytest.AgentB + " → " + verifytest.AgentC + " (level junior, decision d-123)"
	if code != http.StatusOK || !strings.Contains(body, want) {
		t.Errorf("whoami: %d %s, want %q", code, body, want)
	}
	if !strings.Contains(logs.String(), `msg="tool call" tool=whoami holder=`+verifytest.AgentC) || !strings.Contains(logs.String(), "depth=2") {
		t.Errorf("log: %s", logs.String())
	}
	listOnly := is.MintAfter(2*time.Second, verifytest.Token{Scope: "tools.list"})
	if code, _ := rpc(t, srv.URL, listOnly, "tools/call", map[string]any{"name": "echo", "arguments": map[string]string{"text": "hi"}}); code != http.StatusForbidden {
		t.Errorf("tools/call without tools.call: %d, want 403", code)
	}

	is.Send("revoked", "1", map[string]any{"nodes": []string{"grant:g-ab"}, "reason": "lineage revoked",
		"time": time.Now().Add(3 * time.Second).Format(time.RFC3339Nano)})
	<-revoked
	if code, _ := rpc(t, srv.URL, token, "tools/call", map[string]any{"name": "whoami"}); code != http.StatusUnauthorized {
		t.Errorf("after the revocation of B's grant: %d, want 401", code)
	}
}

func rpc(t *testing.T, url, token, method string, params any) (int, string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
	req, _ := http.NewRequest(http.MethodPost, url+"/mcp", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out bytes.Buffer
	_, _ = out.ReadFrom(resp.Body)
	return resp.StatusCode, out.String()
}
