// Command benchreport runs the benchmark suite against the dev stack (a
// real SPIRE and Vault, started by the benchmarks) and writes BENCHMARKS.md:
// each row a figure and the baseline it is compared with, measured in the
// same run, with the machine, the Go, Vault and SPIRE versions and the date.
// `make bench` runs it from the repository root.
//
// With -bench REGEXP it runs only the benchmarks matching REGEXP (go test
// -bench, in every suite) and keeps every other figure of the report it
// rewrites, read back from its table of all results: each row compares
// figures of one benchmark, hence of one run, and the report lists the
// benchmarks re-run alone since the full run, with their dates.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// module is stripped from package paths in result keys.
const module = "github.com/agentictrust/atf/"

// suites are the go test runs: the broker's against the dev stack take
// their samples per iteration (one each); the micro-benchmarks run as usual.
var suites = [][]string{
	{"test", "-run", "^$", "-bench", ".", "-benchtime", "1x", "-timeout", "60m", "./broker/", "./cmd/atfd/"},
	{"test", "-run", "^$", "-bench", "StoreAfterIssuances", "-benchtime", "1x", "-timeout", "30m", "./broker/store/"},
	{"test", "-run", "^$", "-bench", ".", "./authz/", "./delegation/", "./broker/monitor/", "./broker/audit/", "./oauth/verify/"},
}

// results maps "pkg/Name/sub" (no Benchmark prefix, no -N suffix) to its
// metrics by unit.
type results map[string]map[string]float64

var benchLine = regexp.MustCompile(`^Benchmark(\S+?)(-\d+)?\s+\d+\s+(.*)$`)

func main() {
	out := flag.String("o", "BENCHMARKS.md", "report file")
	goTool := flag.String("go", "go", "go command")
	only := flag.String("bench", "", "run only the benchmarks matching this go test -bench regexp, keeping the report's other figures")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("benchreport: ")
	started := time.Now().UTC()
	res, prov := results{}, provenance{full: started}
	if *only != "" {
		old, err := os.ReadFile(*out)
		if err != nil {
			log.Fatalf("-bench keeps the figures of the report it rewrites: %v", err)
		}
		if res, prov, err = readReport(string(old)); err != nil {
			log.Fatalf("%s: %v", *out, err)
		}
		prov = prov.rerun(started, *only)
	}
	for _, args := range suites {
		if *only != "" {
			args = withBench(args, *only)
		}
		log.Printf("%s %s", *goTool, strings.Join(args, " "))
		if err := run(*goTool, args, res); err != nil {
			log.Fatal(err)
		}
	}
	var sb strings.Builder
	writeReport(&sb, res, prov)
	if err := os.WriteFile(*out, []byte(sb.String()), 0o644); err != nil {
		log.Fatal(err)
	}
	log.Printf("wrote %s", *out)
}

// withBench is a suite's go test arguments with its -bench pattern
// replaced by pattern.
func withBench(args []string, pattern string) []string {
	out := slices.Clone(args)
	if i := slices.Index(out, "-bench"); i >= 0 && i+1 < len(out) {
		out[i+1] = pattern
	}
	return out
}

// run runs one go test command, echoing its output, and collects its
// benchmark lines.
func run(goTool string, args []string, res results) error {
	cmd := exec.Command(goTool, args...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	parse(io.TeeReader(stdout, os.Stdout), res)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%s %s: %w", goTool, strings.Join(args, " "), err)
	}
	return nil
}

// parse reads go test -bench output into res.
func parse(r io.Reader, res results) {
	pkg := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimPrefix(p, module)
			continue
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		metrics := map[string]float64{}
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				metrics[f[i+1]] = v
			}
		}
		res[pkg+"/"+m[1]] = metrics
	}
}

// get returns a metric, and whether the run produced it.
func (r results) get(key, unit string) (float64, bool) {
	v, ok := r[key][unit]
	return v, ok
}

// row is one line of the report.
type row struct {
	what, measured, baseline, ratio, target string
}

// provenance is when the report's figures were measured: the full run, and
// the benchmarks re-run alone since, one note each.
type provenance struct {
	full   time.Time
	reruns []string
}

// dateLayout is how the report writes the date of a run.
const dateLayout = "2006-01-02 15:04 MST"

// rerun is p with the benchmarks matching pattern re-run alone at t: its
// note replaces an older one of the same pattern.
func (p provenance) rerun(t time.Time, pattern string) provenance {
	tail := ": `" + pattern + "`"
	p.reruns = append(slices.DeleteFunc(slices.Clone(p.reruns), func(n string) bool { return strings.HasSuffix(n, tail) }),
		"- "+t.Format(dateLayout)+tail)
	return p
}

// writeReport writes BENCHMARKS.md: the run's setting, the figures against
// their baselines, then every result.
func writeReport(w io.Writer, r results, prov provenance) {
	writeSetting(w, prov)
	fmt.Fprintln(w, "| what | measured | baseline (same run) | ratio | target |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for _, rw := range rows(r) {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", rw.what, rw.measured, rw.baseline, rw.ratio, rw.target)
	}
	writeAll(w, r)
}

// writeSetting writes the title, what the figures are compared with, when
// they were measured, and the machine and versions they were measured on.
func writeSetting(w io.Writer, prov provenance) {
	fmt.Fprintf(w, `# Benchmarks

Generated by `+"`make bench`"+` (deploy/dev/benchreport) on %s. Every figure is
compared with a baseline measured in the same run on the same machine: raw
Vault calls for issuance and revocation, the same atfd on an empty store for
memory, the same atfd on a bbolt file, one replica, raw etcd or a fresh start
for replicas on etcd, the target of docs/design.md §5 where the baseline is a
budget. Figures from one run; rerun `+"`make bench`"+` to regenerate this file.
%s
| | |
|---|---|
| machine | %s, %d cores, %s RAM, %s/%s |
| Go | %s |
| Vault | %s (dev server, in memory, loopback) |
| SPIRE | %s |

`, prov.full.Format(dateLayout), rerunsText(prov.reruns), cpuModel(), runtime.NumCPU(), memTotal(), runtime.GOOS, runtime.GOARCH,
		version("go", "version"), version("bin/vault", "version"), version("bin/spire-server", "--version"))
}

// The formats of the report's figures.
func ms(ns float64) string           { return fmt.Sprintf("%.2f ms", ns/1e6) }
func us(ns float64) string           { return fmt.Sprintf("%.1f µs", ns/1e3) }
func times(v float64) string         { return fmt.Sprintf("%.2f×", v) }
func perSecond(v float64) string     { return fmt.Sprintf("%.0f/s", v) }
func wholeNS(v float64) string       { return fmt.Sprintf("%.0f ns", v) }
func wholeMS(v float64) string       { return fmt.Sprintf("%.0f ms", v) }
func tenthMS(v float64) string       { return fmt.Sprintf("%.1f ms", v) }
func mib(v float64) string           { return fmt.Sprintf("%.0f MiB", v) }
func tenth(v float64) string         { return fmt.Sprintf("%.1f", v) }
func hundredth(v float64) string     { return fmt.Sprintf("%.2f", v) }
func share(v float64) string         { return fmt.Sprintf("%.0f%%", 100*v) }
func vsTarget20us(ns float64) string { return times(ns / 20e3) }

// vsTarget20ms is a duration in milliseconds against the 20 ms target.
func vsTarget20ms(ms float64) string { return times(ms / 20) }

// vsTarget50ms is a duration in milliseconds against the 50 ms target.
func vsTarget50ms(ms float64) string { return times(ms / 50) }

// ratioOf is key's metric over base's, or says the run did not produce
// them.
func (r results) ratioOf(key, base, unit string) string {
	v, ok := r.get(key, unit)
	w, ok2 := r.get(base, unit)
	if !ok || !ok2 || w == 0 {
		return "not measured"
	}
	return times(v / w)
}

// pick formats a metric, or says the run did not produce it.
func (r results) pick(key, unit string, format func(float64) string) string {
	if v, ok := r.get(key, unit); ok {
		return format(v)
	}
	return "not measured"
}

// issuanceStages are the stages BenchmarkIssuanceStages times, by metric.
var issuanceStages = []struct{ key, what string }{
	{"transport", "gRPC, mutual TLS, SVID check, validation, answer"},
	{"decide", "decision: admission, chain, monitor, gate, limits"},
	{"vault", "Vault call"},
	{"record", "store record with its audit record (committed while Vault makes a batch token)"},
	{"record-exposed", "of the record, what the answer waits for beyond the Vault call"},
}

// rows are the report's figures, each against its baseline.
func rows(r results) []row {
	pick := r.pick
	const (
		iss      = "broker/Issuance"
		stages   = "broker/IssuanceStages"
		lin      = "broker/LineageRevocation/credentials=10000"
		size     = "broker/store/StoreAfterIssuances"
		kill     = "broker/KillSwitch/default"
		killAppr = "broker/KillSwitch/approvals-100000"
		forced   = "broker/KillSwitch/forced"
		mem      = "cmd/atfd/ResidentMemory"
		mon      = "broker/MonitorOverhead"
		dyn      = "broker/DynamicSecret"
	)
	out := []row{
		{"issuance p50, concurrency 1", pick(iss, "p50-ns", ms), "raw Vault service child-token create, under an anchor with the agent's Vault entity as the broker's " + pick(iss, "raw-p50-ns", ms), pick(iss, "p50-ratio", times), "≤ 1.2×"},
		{"issuance p50 vs a raw batch child", pick(iss, "p50-ns", ms), "raw Vault batch child-token create, the same " + pick(iss, "batch-raw-p50-ns", ms), pick(iss, "p50-vs-batch", times), "≤ 1.6×"},
		{"issuance p50 vs a raw service child under an anchor without an entity (cheaper for Vault)", pick(iss, "p50-ns", ms), "raw " + pick(iss, "plain-raw-p50-ns", ms), pick(iss, "plain-p50-ratio", times), ""},
		{"issuance p50 vs a raw batch child without an entity", pick(iss, "p50-ns", ms), "raw " + pick(iss, "plain-batch-raw-p50-ns", ms), pick(iss, "plain-p50-vs-batch", times), ""},
		{"issuance p99, concurrency 1", pick(iss, "p99-ns", ms), "raw " + pick(iss, "raw-p99-ns", ms), pick(iss, "p99-ratio", times), ""},
		{"issuance p50, concurrency 32", pick(iss, "c32-p50-ns", ms), "raw " + pick(iss, "c32-raw-p50-ns", ms), pick(iss, "c32-p50-ratio", times), ""},
		{"issuance p99, concurrency 32", pick(iss, "c32-p99-ns", ms), "raw " + pick(iss, "c32-raw-p99-ns", ms), pick(iss, "c32-p99-ratio", times), ""},
		{"issuance throughput, concurrency 32", pick(iss, "ops/s", perSecond), "raw service " + pick(iss, "raw-ops/s", perSecond), pick(iss, "throughput-ratio", times), "≥ 1.0×"},
		{"issuance throughput vs raw batch, concurrency 32", pick(iss, "ops/s", perSecond), "raw batch " + pick(iss, "batch-raw-ops/s", perSecond), pick(iss, "throughput-vs-batch", times), ""},
		{"issuance throughput vs raw service without an entity, concurrency 32", pick(iss, "ops/s", perSecond), "raw service " + pick(iss, "plain-raw-ops/s", perSecond), pick(iss, "plain-throughput-ratio", times), ""},
		{"store record back to back, each waiting for the last one's fsync (an issuance's own answer does not wait for its fsync)", pick(iss, "commit-p50-ns", ms), "issuance p50 " + pick(iss, "p50-ns", ms), pick(iss, "commit-share", share), ""},
		{"dynamic secret (a PostgreSQL user) through the broker, p50", pick(dyn, "p50-ns", ms), "raw Vault read with a plain token " + pick(dyn, "raw-p50-ns", ms), pick(dyn, "p50-ratio", times), ""},
		{"dynamic secret through the broker, p99", pick(dyn, "p99-ns", ms), "raw " + pick(dyn, "raw-p99-ns", ms), pick(dyn, "p99-ratio", times), ""},
	}
	out = append(out, oauthRows(r)...)
	for _, st := range issuanceStages {
		out = append(out, row{"issuance stage p50: " + st.what, pick(stages, st.key+"-p50-ns", ms),
			"issuance p50 " + pick(stages, "total-p50-ns", ms), pick(stages, st.key+"-share", share), ""})
	}
	for _, n := range []string{"10", "1000", "10000", "100000"} {
		key := "broker/LineageRevocation/credentials=" + n
		out = append(out, row{"lineage revocation of " + n + " credentials: store commit / answer / all dead in Vault", pick(key, "commit-ms", tenthMS) + " / " +
			pick(key, "return-ms", wholeMS) + " / " + pick(key, "dead-ms", wholeMS), "10,000: all dead " + pick(lin, "dead-ms", wholeMS),
			r.ratioOf(key, lin, "dead-ms"), "flat"})
	}
	for _, n := range []string{"10", "1000", "10000"} {
		key := "broker/Decision/lines=" + n
		out = append(out, row{"full decision (chain of 4, Casbin + maturity), " + n + " policy lines, p50", pick(key, "p50-ns", us),
			"target 20 µs", pick(key, "p50-vs-target", times), "≤ 1×"})
	}
	for _, n := range []string{"10", "1000", "10000"} {
		key := "authz/Decision/lines=" + n + "/uncached"
		out = append(out, row{"Casbin decision alone, uncached, " + n + " lines", pick(key, "ns/op", us), "target 20 µs",
			pick(key, "ns/op", vsTarget20us), "≤ 1×"})
	}
	monitorShare := func(v float64) string {
		p, _ := r.get(mon, "issuance-p50-ns")
		return fmt.Sprintf("%.3f%%", 100*v/p)
	}
	out = append(out,
		row{"lineage revocation, 10,000 credentials, all dead in Vault", pick(lin, "dead-ms", wholeMS),
			"Vault revoke-tree " + pick(lin, "tree-dead-ms", wholeMS), pick(lin, "vs-revoke-tree", times), "≤ 0.05×"},
		row{"the same vs revoking one by one", pick(lin, "dead-ms", wholeMS),
			"one by one " + pick(lin, "one-by-one-ms", wholeMS), pick(lin, "vs-one-by-one", times), ""},
		row{"the same, all dead in Vault, absolute", pick(lin, "dead-ms", wholeMS), "target 50 ms", pick(lin, "dead-ms", vsTarget50ms), "≤ 1×"},
		row{"store file after 1M issuances (credentials of 5 min, store_retention 5 min)", pick(size, "file-MiB", mib) + " (" + pick(size, "used-MiB", mib) + " in use)",
			"audit trail moved out to segments " + pick(size, "segments-MiB", mib), pick(size, "file-vs-segments", times), ""},
		row{"kill switch, 100 live credentials, p50 (answer after Vault confirmed)", pick(kill, "p50-ms", tenthMS), "raw revoke " + pick(kill, "raw-p50-ms", tenthMS), pick(kill, "p50-vs-raw", times), ""},
		row{"kill switch p99", pick(kill, "p99-ms", tenthMS), "target 20 ms", pick(kill, "p99-ms", vsTarget20ms), "≤ 1×"},
		row{"kill switch p99 with 100,000 approval requests in the store", pick(killAppr, "p99-ms", tenthMS), "target 20 ms", pick(killAppr, "p99-ms", vsTarget20ms), "≤ 1×"},
		row{"the same vs without them (flat)", pick(killAppr, "p99-ms", tenthMS), "p99 " + pick(kill, "p99-ms", tenthMS), r.ratioOf(killAppr, kill, "p99-ms"), ""},
		row{"kill switch --forced: all dead in Vault, p99", pick(forced, "dead-p99-ms", tenthMS), "target 1 s", pick(forced, "dead-p99-vs-1s", times), "≤ 1×"},
		row{"atfd resident memory after a restart, 100k agents + 1M audit records written (store " + pick(mem, "store-MiB", mib) + ")", pick(mem, "rss-MiB", mib),
			"empty store " + pick(mem, "empty-rss-MiB", mib), pick(mem, "rss-ratio", times), ""},
		row{"the same against its target", pick(mem, "rss-MiB", mib), "target 150 MiB", pick(mem, "rss-MiB", func(v float64) string { return times(v / 150) }), "≤ 1×"},
		row{"of which anonymous (heap, stacks) / file (store pages mapped)", pick(mem, "anon-MiB", mib) + " / " + pick(mem, "file-MiB", mib), "", pick(mem, "anon-ratio", times) + " anon", ""},
		row{"behaviour monitoring + breaker per request", pick(mon, "monitor-ns", wholeNS),
			"issuance p50 " + pick(mon, "issuance-p50-ns", ms), pick(mon, "monitor-ns", monitorShare), "≤ 5%"},
	)
	out = append(out, haRows(r)...)
	return append(out, verifierRows(r)...)
}

// verifierRows are the resource servers' token verifier's figures
// (oauth/verify).
func verifierRows(r results) []row {
	const (
		repeat = "oauth/verify/Middleware/repeat-token"
		first  = "oauth/verify/Middleware/new-token"
		floor  = "oauth/verify/Middleware/baseline-ecdsa-p256-verify"
	)
	return []row{
		{"resource server's token verifier per request, token seen before (cached JWK Set, push revocation on)", r.pick(repeat, "ns/op", us),
			"target 50 µs", r.pick(repeat, "ns/op", func(v float64) string { return times(v / 50e3) }), "≤ 1×"},
		{"the same, token seen for the first time (signature verified)", r.pick(first, "ns/op", us),
			"one ECDSA P-256 verification " + r.pick(floor, "ns/op", us), r.ratioOf(first, floor, "ns/op"), ""},
	}
}

// haRows are the figures of replicas on etcd (docs/design.md §5, HA).
func haRows(r results) []row {
	pick := r.pick
	const (
		iss        = "broker/HAIssuance"
		heard      = "broker/HARevocationHeard"
		stages     = "broker/HAIssuanceStages"
		boltStages = "broker/IssuanceStages"
	)
	// etcd's work and the CPU in a throughput phase (r1, r3, bolt).
	etcdWork := func(phase string) string {
		return pick(iss, phase+"-txn/s", perSecond) + " / " + pick(iss, phase+"-writes/txn", tenth) + " / " +
			pick(iss, phase+"-conflicts/op", hundredth) + " / " + pick(iss, phase+"-ranges/op", tenth)
	}
	cpu := func(phase string) string {
		return pick(iss, phase+"-etcd-cores", hundredth) + " / " + pick(iss, phase+"-vault-cores", hundredth) + " / " +
			pick(iss, phase+"-atfd-cores", hundredth)
	}
	out := []row{
		{"HA: issuance p50 on etcd (3 members), concurrency 1", pick(iss, "p50-ns", ms), "bbolt " + pick(iss, "bolt-p50-ns", ms), pick(iss, "p50-ratio", times), "≤ 1.3×"},
		{"HA: issuance p99 on etcd, concurrency 1", pick(iss, "p99-ns", ms), "bbolt " + pick(iss, "bolt-p99-ns", ms), pick(iss, "p99-ratio", times), ""},
	}
	// Where the distance to bbolt goes, stage by stage.
	for _, st := range issuanceStages {
		out = append(out, row{"HA: issuance stage p50 on etcd: " + st.what, pick(stages, st.key+"-p50-ns", ms),
			"bbolt " + pick(boltStages, st.key+"-p50-ns", ms), r.ratioOf(stages, boltStages, st.key+"-p50-ns"), ""})
	}
	out = append(out, []row{
		{"HA: issuance throughput on etcd, 1 replica, concurrency 64", pick(iss, "r1-ops/s", perSecond), "bbolt " + pick(iss, "bolt-ops/s", perSecond), pick(iss, "r1-vs-bolt", times), ""},
		{"HA: issuance throughput, 3 replicas on one store, concurrency 64", pick(iss, "r3-ops/s", perSecond), "1 replica " + pick(iss, "r1-ops/s", perSecond), pick(iss, "r3-vs-r1", times), ""},
		{"HA: calls refused Unavailable at concurrency 64 (a store transaction that kept conflicting until store.etcd.timeout), 3 replicas", pick(iss, "r3-refused", share),
			"1 replica " + pick(iss, "r1-refused", share), "", ""},
		{"HA: etcd at concurrency 64, 3 replicas: write transactions / store writes per transaction (1 per issuance) / transactions that conflicted and ran again, per call / read requests per call (a Range, or one prefetch of several keys)",
			etcdWork("r3"), "1 replica: " + etcdWork("r1"), "", ""},
		{"HA: CPU at concurrency 64, 3 replicas, in cores of the machine's: etcd's 3 members / Vault / this process (the replicas and the load)", cpu("r3"),
			"1 replica: " + cpu("r1") + "; bbolt: " + cpu("bolt"), "", ""},
		{"HA: revocation heard on another replica, from the commit, p99", pick(heard, "other-p99-ms", tenthMS), "target 50 ms", pick(heard, "other-p99-vs-50ms", times), "≤ 1×"},
		{"HA: the same vs raw etcd (a Put heard by another client's watch, from the Put), p99", pick(heard, "other-p99-ms", tenthMS), "raw " + pick(heard, "raw-p99-ms", tenthMS),
			pick(heard, "other-vs-raw", times), ""},
		{"HA: the same, p50", pick(heard, "other-p50-ms", tenthMS), "raw " + pick(heard, "raw-p50-ms", tenthMS), pick(heard, "other-p50-vs-raw", times), ""},
		{"HA: the same heard on the replica that revoked, p99", pick(heard, "other-p99-ms", tenthMS), "that replica " + pick(heard, "same-p99-ms", tenthMS),
			pick(heard, "other-vs-same", times), ""},
	}...)
	for _, v := range []struct{ key, what string }{
		{"broker/HAFailover/stopped", "stopped (graceful)"},
		{"broker/HAFailover/crashed", "crashed (its connections dropped)"},
	} {
		out = append(out, row{"HA: failover, replica " + v.what + ": from the loss to the agent's next credential from another replica, p50 / p99; calls failed meanwhile",
			pick(v.key, "p50-ms", wholeMS) + " / " + pick(v.key, "p99-ms", wholeMS) + "; " + pick(v.key, "failed-calls", tenth),
			"a fresh agent's first credential there " + pick(v.key, "cold-p50-ms", wholeMS) + " / " + pick(v.key, "cold-p99-ms", wholeMS),
			pick(v.key, "p99-vs-cold", times), ""})
	}
	return out
}

// rerunsText is the setting's paragraph on the benchmarks re-run alone
// since the full run, if any.
func rerunsText(reruns []string) string {
	if len(reruns) == 0 {
		return ""
	}
	return "\nBenchmarks re-run alone since (`make bench BENCH=regexp`), each of their rows from that run:\n\n" +
		strings.Join(reruns, "\n") + "\n"
}

// oauthRows are the figures of the OAuth token exchange (docs/oauth.md).
func oauthRows(r results) []row {
	const (
		tx   = "broker/OAuthTokenExchange"
		push = "broker/OAuthRevocationPush"
	)
	return []row{
		{"OAuth token exchange p50 (HTTPS, mutual TLS, decision, transit sign, record)", r.pick(tx, "p50-ns", ms),
			"raw Vault transit sign " + r.pick(tx, "raw-p50-ns", ms), r.pick(tx, "p50-ratio", times), "≤ 1.5×"},
		{"OAuth token exchange throughput, concurrency 32", r.pick(tx, "ops/s", perSecond),
			"raw transit sign " + r.pick(tx, "raw-ops/s", perSecond), r.pick(tx, "throughput-ratio", times), ""},
		{"revocation → resource server's event stream, p99", r.pick(push, "p99-ns", ms), "target 50 ms (p50 " + r.pick(push, "p50-ns", ms) + ")",
			r.pick(push, "p99-ns", func(ns float64) string { return vsTarget50ms(ns / 1e6) }), "≤ 1×"},
	}
}

// allResults heads the report's table of every result.
const allResults = "All results, by benchmark and unit:"

// writeAll writes every result, by benchmark and unit, each value as go
// test printed it, so that readReport reads back the same figures.
func writeAll(w io.Writer, r results) {
	fmt.Fprintf(w, "\n%s\n\n```\n", allResults)
	for _, k := range slices.Sorted(maps.Keys(r)) {
		var parts []string
		for _, u := range slices.Sorted(maps.Keys(r[k])) {
			parts = append(parts, u+"="+strconv.FormatFloat(r[k][u], 'g', -1, 64))
		}
		fmt.Fprintf(w, "%s %s\n", k, strings.Join(parts, " "))
	}
	fmt.Fprintln(w, "```")
}

var (
	generatedOn = regexp.MustCompile(`\) on (\d{4}-\d\d-\d\d \d\d:\d\d [A-Z]+)\. Every figure`)
	rerunLine   = regexp.MustCompile("^- \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d [A-Z]+: `.+`$")
)

// readReport reads back a report writeReport wrote: its table of every
// result, the date of its full run and the notes of the benchmarks re-run
// alone since.
func readReport(report string) (results, provenance, error) {
	m := generatedOn.FindStringSubmatch(report)
	if m == nil {
		return nil, provenance{}, fmt.Errorf("no date of the full run")
	}
	full, err := time.Parse(dateLayout, m[1])
	if err != nil {
		return nil, provenance{}, err
	}
	prov := provenance{full: full.UTC()}
	_, all, ok := strings.Cut(report, allResults+"\n\n```\n")
	if !ok {
		return nil, provenance{}, fmt.Errorf("no table of all results (%q)", allResults)
	}
	all, _, _ = strings.Cut(all, "```")
	r := results{}
	for line := range strings.Lines(all) {
		key, metrics, _ := strings.Cut(strings.TrimSpace(line), " ")
		if key == "" {
			continue
		}
		r[key] = map[string]float64{}
		for _, f := range strings.Fields(metrics) {
			unit, v, _ := strings.Cut(f, "=")
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return nil, provenance{}, fmt.Errorf("result %s: %q is not unit=number", key, f)
			}
			r[key][unit] = n
		}
	}
	for line := range strings.Lines(report) {
		if l := strings.TrimSpace(line); rerunLine.MatchString(l) {
			prov.reruns = append(prov.reruns, l)
		}
	}
	return r, prov, nil
}

// version is the first line a tool prints about its version.
func version(tool string, args ...string) string {
	out, err := exec.Command(tool, args...).CombinedOutput()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

func cpuModel() string {
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
			}
		}
	}
	return "unknown CPU"
}

func memTotal() string {
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for l := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				return fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
			}
		}
	}
	return "unknown"
}
