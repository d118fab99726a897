// Package devtest gives tests a running ATF dev stack (package dev): real
// SPIRE and Vault on loopback.
//
// Starting the stack takes a few seconds, so a test package normally shares
// one:
//
//	func TestMain(m *testing.M) { devtest.Main(m) }
//
//	func TestIssue(t *testing.T) {
//		s := devtest.Shared(t) // started by the first test that asks
//		...
//	}
//
// Tests that share a stack must not step on each other: use distinct SPIFFE
// IDs and Vault paths. Start gives a test a stack of its own.
//
// A missing tool build is a failure, never a skip: the error says to run
// `make dev-tools`.
package devtest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentictrust/atf/deploy/dev"
)

// StartTimeout bounds the start of a stack.
const StartTimeout = 90 * time.Second

// Start starts a stack for t alone and stops it when t ends. If t failed, the
// components' logs are logged first.
func Start(t testing.TB) *dev.Stack {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), StartTimeout)
	defer cancel()
	s, err := dev.Start(ctx, dev.Options{Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatalf("devtest: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.Logs())
		}
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// shared is the stack of the test binary, started by the first Shared call
// and stopped by Main.
var shared struct {
	mu      sync.Mutex
	inMain  bool
	started bool
	stack   *dev.Stack
	err     error
}

// Main runs the tests of a package that uses Shared, then stops the shared
// stack (printing its logs first if a test failed), and exits. Call it from
// TestMain.
func Main(m *testing.M) {
	shared.mu.Lock()
	shared.inMain = true
	shared.mu.Unlock()

	code := m.Run()

	shared.mu.Lock()
	s := shared.stack
	shared.mu.Unlock()
	if s != nil {
		if code != 0 {
			fmt.Fprint(os.Stderr, s.Logs())
		}
		if err := s.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = max(code, 1)
		}
	}
	os.Exit(code)
}

// Shared returns the test binary's shared stack, starting it on first use.
// The package's TestMain must call Main, which stops it. If the start failed,
// every test that asks for the stack fails with that error.
func Shared(t testing.TB) *dev.Stack {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.inMain {
		t.Fatal("devtest: Shared needs TestMain to call devtest.Main, which stops the stack")
	}
	if !shared.started {
		shared.started = true
		logger := slog.New(slog.DiscardHandler)
		if testing.Verbose() {
			logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		}
		ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
		defer cancel()
		shared.stack, shared.err = dev.Start(ctx, dev.Options{Logger: logger})
	}
	if shared.err != nil {
		t.Fatalf("devtest: shared stack: %v", shared.err)
	}
	return shared.stack
}

// testWriter sends a slog text handler's lines to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// WaitFor polls cond every 100 ms until it holds, failing t after d.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s", d, what)
		case <-tick.C:
		}
	}
}
