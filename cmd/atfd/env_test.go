package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentictrust/atf/broker/client"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// atfdEnv is one atfd process, started and restarted on one store.
type atfdEnv struct {
	t    testing.TB
	s    *dev.Stack
	bin  string
	cfg  string
	addr string
	// storePath is the store file the config names.
	storePath string
	logs      *bytes.Buffer
	proc      *exec.Cmd
	exited    chan error
}

func newAtfdEnv(t testing.TB, s *dev.Stack, bin string) *atfdEnv {
	addr, dir := freeAddr(t), t.TempDir()
	cfg := writeConfig(t, s, dir, addr, testAdmin(s), brokertest.OpenPolicy(s.TrustDomain), "")
	return &atfdEnv{t: t, s: s, bin: bin, cfg: cfg, addr: addr, storePath: filepath.Join(dir, "atf.db"), logs: &bytes.Buffer{}}
}

func testAdmin(s *dev.Stack) spiffeid.ID {
	return spiffeid.RequireFromPath(s.TrustDomain, "/ops/admin")
}

// start starts atfd with env added to the test's environment and waits
// until it serves.
func (e *atfdEnv) start(env ...string) {
	e.t.Helper()
	e.proc = exec.Command(e.bin, "-config", e.cfg)
	e.proc.Env = append(os.Environ(), env...)
	e.proc.Stdout, e.proc.Stderr = e.logs, e.logs
	if err := e.proc.Start(); err != nil {
		e.t.Fatal(err)
	}
	exited := make(chan error, 1)
	e.exited = exited
	go func() { exited <- e.proc.Wait() }()
	p := e.proc
	e.t.Cleanup(func() {
		p.Process.Kill()
		<-exited
		exited <- nil
		if e.t.Failed() {
			e.t.Logf("atfd output:\n%s", e.logs.String())
		}
	})
	c := e.dial(testAdmin(e.s))
	devtest.WaitFor(e.t, 30*time.Second, "atfd to serve", func() bool {
		_, err := c.Broker.WhoAmI(e.t.Context(), &brokerv1.WhoAmIRequest{})
		return err == nil
	})
}

// awaitKilled waits for atfd to die by SIGKILL: the failpoint was hit.
func (e *atfdEnv) awaitKilled(point string) {
	e.t.Helper()
	select {
	case err := <-e.exited:
		e.exited <- err
		var ee *exec.ExitError
		if !errors.As(err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			e.t.Fatalf("atfd ended with %v, not SIGKILL at failpoint %s", err, point)
		}
	case <-time.After(30 * time.Second):
		e.t.Fatalf("failpoint %s was not hit", point)
	}
}

func (e *atfdEnv) dial(id spiffeid.ID) *client.Conn {
	e.t.Helper()
	files, err := e.s.MintX509(e.t.Context(), id, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := client.Dial(e.t.Context(), client.Config{Addr: e.addr, BrokerID: e.s.BrokerID.String(), SVIDFile: files.CertPath, SVIDKeyFile: files.KeyPath, BundleFile: files.BundlePath})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// liveAnchorsOf lists the nodes of the live Vault anchors agents'
// credentials hang on.
func liveAnchorsOf(t *testing.T, s *dev.Stack, agents ...string) []string {
	t.Helper()
	live, err := s.LiveAnchors(t.Context(), agents...)
	if err != nil {
		t.Fatal(err)
	}
	return live
}

// liveTokensOf lists the live Vault credentials of agents, by accessor.
func liveTokensOf(t *testing.T, s *dev.Stack, agents ...string) []string {
	t.Helper()
	live, err := s.LiveCredentials(t.Context(), agents...)
	if err != nil {
		t.Fatal(err)
	}
	return live
}
