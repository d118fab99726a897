package main

import (
	"strings"
	"testing"
	"time"
)

const sample = `goos: linux
pkg: github.com/agentictrust/atf/broker
BenchmarkIssuance-2   	       1	  97085359 c32-p50-ns	         3.220 c32-p50-ratio	   5522015 p50-ns	         2.387 p50-ratio	   2313515 raw-p50-ns
BenchmarkDecision/lines=10-2         	       1	      1843 p50-ns	         0.09215 p50-vs-target
BenchmarkDynamicSecret-2   	       1	  18637700 p50-ns	         1.788 p50-ratio	  54812146 p99-ns	         1.348 p99-ratio	  10422570 raw-p50-ns	  40654366 raw-p99-ns
pkg: github.com/agentictrust/atf/authz
BenchmarkDecision/lines=10/uncached-2         	  100000	     10634 ns/op	     400 B/op
ok  	github.com/agentictrust/atf/authz	3.1s
pkg: github.com/agentictrust/atf/oauth/verify
BenchmarkMiddleware/repeat-token-2         	  258391	      8712 ns/op	         0.1742 vs-50µs-target	         8.712 µs/request	    7664 B/op	      18 allocs/op
BenchmarkMiddleware/new-token-2            	   10000	    228442 ns/op	         4.644 vs-50µs-target	       232.2 µs/request	   12583 B/op	      89 allocs/op
BenchmarkMiddleware/baseline-ecdsa-p256-verify-2         	   10000	    261154 ns/op	         5.223 vs-50µs-target	       261.2 µs/request	    1088 B/op	      19 allocs/op
`

// The report reads go test -bench output by package and sub-benchmark, and
// its rows say "not measured" for what the run did not produce.
func TestReport(t *testing.T) {
	res := results{}
	parse(strings.NewReader(sample), res)
	for _, tt := range []struct {
		key, unit string
		want      float64
	}{
		{"broker/Issuance", "p50-ratio", 2.387},
		{"broker/Issuance", "c32-p50-ns", 97085359},
		{"broker/Decision/lines=10", "p50-ns", 1843},
		{"authz/Decision/lines=10/uncached", "ns/op", 10634},
	} {
		if got, ok := res.get(tt.key, tt.unit); !ok || got != tt.want {
			t.Errorf("%s %s = %v (%t), want %v", tt.key, tt.unit, got, ok, tt.want)
		}
	}
	var sb strings.Builder
	writeReport(&sb, res, provenance{full: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)})
	report := sb.String()
	for _, want := range []string{
		"| issuance p50, concurrency 1 | 5.52 ms | raw Vault service child-token create, under an anchor with the agent's Vault entity as the broker's 2.31 ms | 2.39× | ≤ 1.2× |",
		"| full decision (chain of 4, Casbin + maturity), 10 policy lines, p50 | 1.8 µs | target 20 µs | 0.09× | ≤ 1× |",
		"| Casbin decision alone, uncached, 10 lines | 10.6 µs | target 20 µs | 0.53× | ≤ 1× |",
		"| dynamic secret (a PostgreSQL user) through the broker, p50 | 18.64 ms | raw Vault read with a plain token 10.42 ms | 1.79× |  |",
		"| kill switch p99 | not measured |",
		"| resource server's token verifier per request, token seen before (cached JWK Set, push revocation on) | 8.7 µs | target 50 µs | 0.17× | ≤ 1× |",
		"| the same, token seen for the first time (signature verified) | 228.4 µs | one ECDSA P-256 verification 261.2 µs | 0.87× |  |",
		"2026-11-26 12:00 UTC",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
}

// A run of some benchmarks alone (-bench) keeps the other figures of the
// report it rewrites, read back from its table of all results as go test
// printed them, and the date of the full run, and notes the run, in place
// of an older run of the same benchmarks.
func TestRerunKeepsOtherFigures(t *testing.T) {
	res := results{}
	parse(strings.NewReader(sample), res)
	full := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	var sb strings.Builder
	writeReport(&sb, res, provenance{full: full})

	kept, prov, err := readReport(sb.String())
	if err != nil {
		t.Fatal(err)
	}
	if !prov.full.Equal(full) || len(prov.reruns) != 0 {
		t.Fatalf("read back %+v, want the full run of %s and no re-run", prov, full)
	}
	const rerun = `pkg: github.com/agentictrust/atf/broker
BenchmarkHAIssuance-2   	       1	  27820056 p50-ns	         7.528 p50-ratio	   3695447 bolt-p50-ns
`
	parse(strings.NewReader(rerun), kept)
	prov = prov.rerun(time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC), "^BenchmarkHA").rerun(time.Date(2026, 12, 7, 13, 0, 0, 0, time.UTC), "^BenchmarkHA")
	sb.Reset()
	writeReport(&sb, kept, prov)
	report := sb.String()
	for _, want := range []string{
		"| issuance p50, concurrency 1 | 5.52 ms | raw Vault service child-token create, under an anchor with the agent's Vault entity as the broker's 2.31 ms | 2.39× | ≤ 1.2× |",
		"| HA: issuance p50 on etcd (3 members), concurrency 1 | 27.82 ms | bbolt 3.70 ms | 7.53× | ≤ 1.3× |",
		"on 2026-11-26 12:00 UTC.",
		"\n- 2026-12-07 13:00 UTC: `^BenchmarkHA`\n",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	again, prov, err := readReport(report)
	if err != nil || len(prov.reruns) != 1 {
		t.Errorf("read back the re-runs %q (%v), want the last note of the pattern alone", prov.reruns, err)
	}
	if v, _ := again.get("broker/Issuance", "c32-p50-ns"); v != 97085359 {
		t.Errorf("c32-p50-ns read back as %v, want 97085359 as go test printed it", v)
	}
}

// -bench replaces each suite's pattern and nothing else.
func TestWithBench(t *testing.T) {
	got := withBench([]string{"test", "-run", "^$", "-bench", ".", "-benchtime", "1x", "./broker/"}, "^BenchmarkHA")
	want := "test -run ^$ -bench ^BenchmarkHA -benchtime 1x ./broker/"
	if strings.Join(got, " ") != want || suites[0][4] != "." {
		t.Errorf("withBench = %q, want %q, the suite itself unchanged", got, want)
	}
}
