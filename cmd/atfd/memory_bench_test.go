package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// The store the memory benchmark loads atfd with.
const (
	memAgents       = 100_000
	memAuditRecords = 1_000_000
)

// BenchmarkResidentMemory measures atfd's resident memory (a real process,
// /proc/PID/status) serving a store of 100k registered agents and 1M audit
// records, against the same atfd on an empty store in the same run: the
// anonymous part (heap, stacks) and the file part (store pages mapped in).
func BenchmarkResidentMemory(b *testing.B) {
	s := devtest.Shared(b)
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	if err := s.RegisterWorkloadTTL(b.Context(), s.BrokerID, time.Hour, "unix:path:"+exe); err != nil {
		b.Fatal(err)
	}
	var empty, loaded memStatus
	var storeBytes int64
	for b.Loop() {
		e := newAtfdEnv(b, s, exe)
		empty = e.serveAndMeasure()
		e = newAtfdEnv(b, s, exe)
		storeBytes = fillStore(b, e.storePath, s.TrustDomain)
		loaded = e.serveAndMeasure()
	}
	mib := func(kb int64) float64 { return float64(kb) / 1024 }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(mib(empty.rss), "empty-rss-MiB")
	b.ReportMetric(mib(loaded.rss), "rss-MiB")
	b.ReportMetric(mib(loaded.anon), "anon-MiB")
	b.ReportMetric(mib(loaded.file), "file-MiB")
	b.ReportMetric(float64(storeBytes)/(1<<20), "store-MiB")
	b.ReportMetric(float64(loaded.rss)/float64(empty.rss), "rss-ratio")
	b.ReportMetric(float64(loaded.anon)/float64(empty.anon), "anon-ratio")
}

// memStatus is a process's resident memory, in KiB.
type memStatus struct{ rss, anon, file int64 }

// serveAndMeasure starts atfd, has it serve a few calls (an admin listing
// agents, an agent fetching a credential) and reads its resident memory.
func (e *atfdEnv) serveAndMeasure() memStatus {
	b := e.t
	b.Helper()
	e.start("ATF_TEST_RUN_ATFD=1")
	ctx := b.Context()
	admin := e.dial(testAdmin(e.s))
	if _, err := admin.Admin.ListAgents(ctx, &adminv1.ListAgentsRequest{PageSize: 1000}); err != nil {
		b.Fatal(err)
	}
	agent := spiffeid.RequireFromPath(e.s.TrustDomain, "/bench/mem/agent-0")
	if _, err := admin.Admin.GetAgent(ctx, &adminv1.GetAgentRequest{SpiffeId: agent.String()}); err != nil {
		if _, err := admin.Admin.RegisterAgent(ctx, &adminv1.RegisterAgentRequest{SpiffeId: agent.String(), Owner: "o@example.org", Purpose: "memory benchmark", Roles: []string{"reports-read"}}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := e.dial(agent).Broker.FetchCredential(ctx, &brokerv1.FetchCredentialRequest{Role: "reports-read"}); err != nil {
		b.Fatal(err)
	}
	m, err := readMemStatus(e.proc.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	e.proc.Process.Kill()
	return m
}

// fillStore registers memAgents agents and appends memAuditRecords audit
// records to the store at path, moving them to its audit segments as atfd
// does, and returns the store file's size.
func fillStore(b testing.TB, path string, td spiffeid.TrustDomain) int64 {
	// As atfd runs it: the audit trail moves to audit.dir (its default)
	// as it is written.
	st, err := store.Open(path, store.Options{AuditDir: path + ".audit"})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	const workers = 64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < memAgents; i += workers {
				_, err := st.RegisterAgent(store.Agent{ID: spiffeid.RequireFromPathf(td, "/bench/mem/agent-%d", i).String(), Owner: "owner@example.org",
					Purpose: "memory benchmark", Roles: []string{"reports-read"}, Level: authz.Intern}, "bench")
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	// atfd moves the trail out every second; registrations come faster.
	registered, shipped := make(chan struct{}), make(chan error, 1)
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-registered:
				shipped <- nil
				return
			case <-t.C:
			}
			if _, err := st.ShipAudit(); err != nil {
				shipped <- err
				return
			}
		}
	}()
	wg.Wait()
	close(registered)
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	if err := <-shipped; err != nil {
		b.Fatal(err)
	}
	batch := make([]store.AuditRecord, 1000)
	for i := 0; i < memAuditRecords; i += len(batch) {
		for j := range batch {
			batch[j] = store.AuditRecord{Kind: "credential_issued", Actor: spiffeid.RequireFromPathf(td, "/bench/mem/agent-%d", (i+j)%memAgents).String(),
				Subject: fmt.Sprintf("accessor-%d", i+j), Detail: map[string]string{"decision": "allow", "role": "reports-read", "decision_id": strconv.Itoa(i + j)}}
		}
		if err := st.AppendAudit(batch...); err != nil {
			b.Fatal(err)
		}
		if _, err := st.ShipAudit(); err != nil {
			b.Fatal(err)
		}
	}
	for n := 1; n > 0; {
		if n, err = st.ShipAudit(); err != nil {
			b.Fatal(err)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}

// readMemStatus reads VmRSS, RssAnon and RssFile of process pid.
func readMemStatus(pid int) (memStatus, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memStatus{}, err
	}
	defer f.Close()
	var m memStatus
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		switch key {
		case "VmRSS":
			m.rss = kb
		case "RssAnon":
			m.anon = kb
		case "RssFile":
			m.file = kb
		}
	}
	if m.rss == 0 {
		return m, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return m, sc.Err()
}
