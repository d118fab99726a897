package dev_test

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/devtest"
)

// The shipped deployment artifacts (deploy/spire/register.sh,
// deploy/systemd/atfd.service, deploy/docker/Dockerfile) exercised here as
// far as this machine allows: the script against a real SPIRE server, the
// unit with systemd-analyze, the image's build stage as the same go build.

// repoRoot is the repository's root, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return root
}

// spireEntry is one entry of `spire-server entry show -output json`.
type spireEntry struct {
	SpiffeID  spireID `json:"spiffe_id"`
	ParentID  spireID `json:"parent_id"`
	Selectors []struct{ Type, Value string }
}

// spireID is a SPIFFE ID as the SPIRE server's API writes it.
type spireID struct {
	TrustDomain string `json:"trust_domain"`
	Path        string `json:"path"`
}

func (e spireEntry) selectors() []string {
	out := make([]string, 0, len(e.Selectors))
	for _, s := range e.Selectors {
		out = append(out, s.Type+":"+s.Value)
	}
	slices.Sort(out)
	return out
}

// entries lists the SPIRE server's entries whose SPIFFE ID is id.
func entries(t *testing.T, s *dev.Stack, id string) []spireEntry {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), filepath.Join(s.BinDir, "spire-server"), "entry", "show",
		"-spiffeID", id, "-output", "json", "-socketPath", s.ServerSocketPath).Output()
	if err != nil {
		t.Fatalf("spire-server entry show -spiffeID %s: %v", id, err)
	}
	var shown struct{ Entries []spireEntry }
	if err := json.Unmarshal(out, &shown); err != nil {
		t.Fatalf("spire-server entry show: %v\n%s", err, out)
	}
	return shown.Entries
}

// deploy/spire/register.sh against the dev stack's real SPIRE server: each
// command makes the entry the script's header documents, running it again
// neither fails nor duplicates it, and bad arguments are refused.
func TestRegisterScript(t *testing.T) {
	s := devtest.Start(t)
	td := s.TrustDomain.Name()
	script := filepath.Join(repoRoot(t), "deploy", "spire", "register.sh")
	env := append(os.Environ(), "ATF_TRUST_DOMAIN="+td, "SPIRE_SERVER="+filepath.Join(s.BinDir, "spire-server"),
		"SPIRE_SERVER_SOCKET="+s.ServerSocketPath, "VM_AGENT_ID="+s.AgentID.String(), "K8S_CLUSTER=prod")
	run := func(args ...string) (string, error) {
		cmd := exec.CommandContext(t.Context(), "bash", append([]string{script}, args...)...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	server := "spiffe://" + td + "/spire/server"
	for _, tt := range []struct {
		args      []string
		id        string
		parent    string
		selectors []string
	}{
		{[]string{"k8s-nodes"}, "/k8s-nodes/prod", server, []string{"k8s_psat:cluster:prod"}},
		{[]string{"atfd-k8s"}, "/atfd", "spiffe://" + td + "/k8s-nodes/prod",
			[]string{"k8s:container-name:atfd", "k8s:ns:atf", "k8s:sa:atfd"}},
		{[]string{"atfd-unix", "998"}, "/atfd", s.AgentID.String(), []string{"unix:path:/usr/local/bin/atfd", "unix:uid:998"}},
		{[]string{"agent-k8s", "reports", "reporter"}, "/agents/reports/reporter", "spiffe://" + td + "/k8s-nodes/prod",
			[]string{"k8s:ns:reports", "k8s:sa:reporter"}},
		{[]string{"agent-unix", "summarizer", "1001", "/usr/local/bin/atfctl"}, "/agents/summarizer", s.AgentID.String(),
			[]string{"unix:path:/usr/local/bin/atfctl", "unix:uid:1001"}},
		{[]string{"agent-unix", "nightly", "1002"}, "/agents/nightly", s.AgentID.String(), []string{"unix:uid:1002"}},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			for i := range 2 {
				out, err := run(tt.args...)
				if err != nil {
					t.Fatalf("run %d: %v\n%s", i+1, err, out)
				}
				if i == 1 && !strings.Contains(out, "already registered") {
					t.Errorf("second run does not say the entry exists:\n%s", out)
				}
			}
			matching := 0
			for _, e := range entries(t, s, "spiffe://"+td+tt.id) {
				if slices.Equal(e.selectors(), tt.selectors) {
					matching++
					if parent := "spiffe://" + e.ParentID.TrustDomain + e.ParentID.Path; parent != tt.parent {
						t.Errorf("entry's parent %s, want %s", parent, tt.parent)
					}
				}
			}
			if matching != 1 {
				t.Errorf("%d entries for %s with selectors %q after two runs, want 1", matching, tt.id, tt.selectors)
			}
		})
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"atfd-unix", "atf"}, `UID must be a number, not "atf"`},
		{[]string{"agent-k8s", "only-namespace"}, "register.sh agent-k8s NAMESPACE SERVICE_ACCOUNT"},
		{[]string{"nonsense"}, "register.sh k8s-nodes"},
	} {
		if out, err := run(tt.args...); err == nil || !strings.Contains(out, tt.want) {
			t.Errorf("register.sh %q: %v, want a failure saying %q:\n%s", tt.args, err, tt.want, out)
		}
	}
	// Without the host agent's ID, the unix commands say what to set.
	cmd := exec.CommandContext(t.Context(), "bash", script, "agent-unix", "x", "1003")
	cmd.Env = slices.DeleteFunc(slices.Clone(env), func(v string) bool { return strings.HasPrefix(v, "VM_AGENT_ID=") })
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "VM_AGENT_ID is not set") {
		t.Errorf("agent-unix without VM_AGENT_ID: %v\n%s", err, out)
	}
}

// buildAtfd builds atfd into a temporary directory.
func buildAtfd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "atfd")
	cmd := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "./cmd/atfd")
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/atfd: %v\n%s", err, out)
	}
	return bin
}

// atfdFlags are the flags atfd -h lists.
func atfdFlags(t *testing.T, bin string) map[string]bool {
	t.Helper()
	out, _ := exec.CommandContext(t.Context(), bin, "-h").CombinedOutput() // -h exits 2
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+-([a-z][a-z0-9-]*)`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	if !flags["config"] {
		t.Fatalf("atfd -h lists no -config flag:\n%s", out)
	}
	return flags
}

// checkArgs checks that args (after the binary) are flags atfd accepts,
// each with its value.
func checkArgs(t *testing.T, where string, args []string, flags map[string]bool) {
	t.Helper()
	for i := 0; i < len(args); i++ {
		name, hasValue := strings.CutPrefix(args[i], "-")
		name, _, inline := strings.Cut(strings.TrimPrefix(name, "-"), "=")
		if !hasValue || !flags[name] {
			t.Errorf("%s: %q is not a flag atfd accepts", where, args[i])
			continue
		}
		if !inline {
			i++ // every atfd flag takes a value
		}
	}
}

// unitKeys reads a systemd unit's Key=Value lines.
func unitKeys(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			keys[k] = append(keys[k], v)
		}
	}
	return keys
}

// deploy/systemd/atfd.service: its ExecStart runs atfd with flags atfd
// accepts, its writable path is the state directory the store lives in,
// and systemd-analyze verify accepts it (with the binary where ExecStart
// says it is, here the one just built).
func TestSystemdUnit(t *testing.T) {
	root := repoRoot(t)
	unit := filepath.Join(root, "deploy", "systemd", "atfd.service")
	keys := unitKeys(t, unit)
	bin := buildAtfd(t)
	exec0 := strings.Fields(strings.Join(keys["ExecStart"], " "))
	if len(keys["ExecStart"]) != 1 || len(exec0) == 0 || exec0[0] != "/usr/local/bin/atfd" {
		t.Fatalf("ExecStart %q, want one line running /usr/local/bin/atfd", keys["ExecStart"])
	}
	checkArgs(t, "ExecStart", exec0[1:], atfdFlags(t, bin))
	if got := keys["StateDirectory"]; !slices.Equal(got, []string{"atf"}) || !slices.Contains(keys["ReadWritePaths"], "/var/lib/atf") {
		t.Errorf("StateDirectory %q, ReadWritePaths %q: the store (store_path under /var/lib/atf) must be writable", got, keys["ReadWritePaths"])
	}
	if sock := "/run/spire/agent/public"; !slices.Contains(keys["ReadOnlyPaths"], sock) ||
		!slices.ContainsFunc(keys["Environment"], func(v string) bool { return strings.Contains(v, "unix://"+sock+"/") }) {
		t.Errorf("the Workload API socket %s must be readable and named by SPIFFE_ENDPOINT_SOCKET: ReadOnlyPaths %q, Environment %q",
			sock, keys["ReadOnlyPaths"], keys["Environment"])
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not on PATH: the unit's keys and flags were checked, systemd's verification was not")
	}
	text, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(t.TempDir(), "atfd.service")
	if err := os.WriteFile(local, []byte(strings.ReplaceAll(string(text), "/usr/local/bin/atfd", bin)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(t.Context(), analyze, "verify", local).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// dockerStage is one FROM of a Dockerfile and its instructions.
type dockerStage struct {
	from, name string
	lines      []string // instructions, continuation lines joined
}

// parseDockerfile splits a Dockerfile into its stages.
func parseDockerfile(t *testing.T, path string) []dockerStage {
	t.Helper()
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.ReplaceAll(string(text), "\\\n", " ")
	var stages []dockerStage
	for _, line := range strings.Split(joined, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if f := strings.Fields(line); f[0] == "FROM" {
			st := dockerStage{from: f[1]}
			if len(f) == 4 && strings.EqualFold(f[2], "AS") {
				st.name = f[3]
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) == 0 {
			t.Fatalf("%s: instruction before FROM: %s", path, line)
		}
		stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, line)
	}
	return stages
}

// deploy/docker/Dockerfile without a Docker daemon: the build stage's RUN
// (its go build commands, env and flags as written) runs here with /out in
// a temporary directory; the binaries are static, as the distroless static
// base needs; the final stage copies exactly what the build made and its
// ENTRYPOINT runs atfd with flags it accepts; the base images carry an
// explicit version tag (they are not pinned by digest: see docs/operations.md).
func TestDockerfileBuildStage(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the image's build stage builds atfd and atfctl from scratch (-trimpath)")
	}
	root := repoRoot(t)
	stages := parseDockerfile(t, filepath.Join(root, "deploy", "docker", "Dockerfile"))
	if len(stages) != 2 || stages[0].name != "build" {
		t.Fatalf("stages %+v, want a build stage and a final one", stages)
	}
	build, final := stages[0], stages[1]
	checkBaseImages(t, root, build.from, final.from)

	out := t.TempDir()
	var built []string
	for _, l := range build.lines {
		cmd, ok := strings.CutPrefix(l, "RUN ")
		if !ok || !strings.Contains(cmd, "go build") {
			continue
		}
		built = append(built, regexp.MustCompile(`-o /out/(\S+)`).FindAllString(cmd, -1)...)
		sh := exec.CommandContext(t.Context(), "sh", "-c", strings.ReplaceAll(cmd, "/out/", out+"/"))
		sh.Dir = root
		if b, err := sh.CombinedOutput(); err != nil {
			t.Fatalf("the build stage's RUN %s: %v\n%s", cmd, err, b)
		}
	}
	if len(built) == 0 {
		t.Fatal("the build stage has no go build -o /out/...")
	}
	for i, o := range built {
		built[i] = strings.TrimPrefix(o, "-o ")
		checkStatic(t, filepath.Join(out, filepath.Base(built[i])))
	}
	checkFinalStage(t, final, built, out)
}

// checkBaseImages checks that both images name a version: the Go image
// the go.mod's Go version, the runtime image a Debian release.
func checkBaseImages(t *testing.T, root, build, final string) {
	t.Helper()
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+)\.(\d+)`).FindStringSubmatch(string(mod))
	tag := regexp.MustCompile(`^golang:(\d+)\.(\d+)`).FindStringSubmatch(build)
	if goVersion == nil || tag == nil || tag[1] != goVersion[1] || tag[2] != goVersion[2] {
		t.Errorf("build image %s: want golang:<go.mod's go version %v>", build, goVersion)
	}
	if !regexp.MustCompile(`^gcr\.io/distroless/static-debian\d+(:[a-z0-9.-]+)?(@sha256:[0-9a-f]{64})?$`).MatchString(final) ||
		strings.HasSuffix(final, ":latest") {
		t.Errorf("final image %s: want a distroless static image of a named Debian release", final)
	}
	for _, img := range []string{build, final} {
		if !strings.Contains(img, "@sha256:") {
			t.Logf("base image %s is pinned by tag, not by digest", img)
		}
	}
}

// checkStatic fails unless bin is an ELF executable without an interpreter.
func checkStatic(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s is dynamically linked: the distroless static image has no libc", bin)
		}
	}
}

// checkFinalStage checks that the final stage copies the built binaries
// and that its ENTRYPOINT runs one of them with flags it accepts.
func checkFinalStage(t *testing.T, final dockerStage, built []string, out string) {
	t.Helper()
	var copied []string
	dest := ""
	var entry []string
	for _, l := range final.lines {
		f := strings.Fields(l)
		switch {
		case f[0] == "COPY" && len(f) > 2 && f[1] == "--from=build":
			copied = append(copied, f[2:len(f)-1]...)
			dest = f[len(f)-1]
		case f[0] == "ENTRYPOINT":
			if err := json.Unmarshal([]byte(strings.TrimPrefix(l, "ENTRYPOINT ")), &entry); err != nil {
				t.Fatalf("ENTRYPOINT is not in exec (JSON) form: %s", l)
			}
		}
	}
	slices.Sort(copied)
	slices.Sort(built)
	if !slices.Equal(copied, built) {
		t.Errorf("the final stage copies %q from the build, which makes %q", copied, built)
	}
	if len(entry) == 0 || filepath.Dir(entry[0])+"/" != dest || !slices.Contains(built, "/out/"+filepath.Base(entry[0])) {
		t.Fatalf("ENTRYPOINT %q does not run a binary copied to %s", entry, dest)
	}
	checkArgs(t, "ENTRYPOINT", entry[1:], atfdFlags(t, filepath.Join(out, filepath.Base(entry[0]))))
	if !slices.Contains(final.lines, "USER nonroot:nonroot") {
		t.Error("the final stage does not run as distroless's unprivileged user (USER nonroot:nonroot)")
	}
}
