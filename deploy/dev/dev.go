package dev

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const (
	// ModulePath is the module whose go.mod marks the repository root.
	ModulePath = "github.com/agentictrust/atf"
	// DefaultTrustDomain is the trust domain used when Options leaves it empty.
	DefaultTrustDomain = "atf.test"

	// logLines is how much of each component's log Logs returns.
	logLines = 200

	keyAddr      = "addr"
	keyComponent = "component"
	keyDir       = "dir"
	keyElapsed   = "elapsed"
	keyID        = "spiffe_id"
	keySelectors = "selectors"
)

// Options configures Start. The zero value is ready to use.
type Options struct {
	// BinDir holds spire-server, spire-agent and vault. Default: $ATF_BIN_DIR,
	// else bin/ in the repository root, found by walking up from the working
	// directory to the go.mod of ModulePath.
	BinDir string
	// TrustDomain of the SPIRE server. Default: DefaultTrustDomain.
	TrustDomain string
	// Logger receives progress lines. Nil discards them.
	Logger *slog.Logger
}

// Stack is a running SPIRE server, SPIRE agent and Vault dev server. Its
// fields are read-only. Methods are safe for concurrent use, except that Close
// must not run concurrently with Start.
type Stack struct {
	TrustDomain spiffeid.TrustDomain
	// AgentID is the agent's node alias, the parent of workload entries.
	AgentID spiffeid.ID
	// BrokerID is the SPIFFE ID the stack expects atfd to have: Vault's JWT
	// auth role atf-broker accepts its JWT-SVIDs with audience "vault".
	BrokerID spiffeid.ID
	// Dir holds configuration, state, sockets and logs; Close removes it. It
	// is short on purpose: Unix socket paths must stay under ~100 bytes.
	Dir    string
	BinDir string

	// ServerAddr is the SPIRE server's gRPC address (host:port).
	ServerAddr string
	// ServerSocketPath is the SPIRE server's admin API socket, the one the
	// spire-server CLI takes as -socketPath.
	ServerSocketPath string
	// WorkloadAPIAddr is the agent's Workload API endpoint ("unix:///..."),
	// for workloadapi.WithAddr or SPIFFE_ENDPOINT_SOCKET.
	WorkloadAPIAddr string
	// BundlePath is the trust domain's X.509 bundle (PEM).
	BundlePath string
	// SPIFFEBundlePath is the trust domain's bundle in SPIFFE (JWKS) format,
	// holding the X.509 and the JWT authorities.
	SPIFFEBundlePath string

	// VaultAddr is the Vault server's address (http://127.0.0.1:port).
	VaultAddr string
	// VaultRootToken is the dev server's root token, random per Stack.
	VaultRootToken string

	log   *slog.Logger
	vault *vaultapi.Client // root client; VaultClient hands out clones

	mu    sync.Mutex
	procs []*process
	// dirs are directories besides Dir that Close removes.
	dirs     []string
	closed   bool
	closeErr error

	etcdClusters int // started by StartEtcd, under mu

	pgMu sync.Mutex
	pg   *Postgres // started by StartPostgres
}

// tools are the binaries Start needs in the bin directory.
var tools = []string{"spire-server", "spire-agent", "vault"}

// Start starts SPIRE and Vault and returns once both are ready and
// configured. ctx bounds the start only; the components run until Close. On
// error, everything already started is stopped again.
func Start(ctx context.Context, opts Options) (*Stack, error) {
	begin := time.Now()
	binDir, err := opts.binDir()
	if err != nil {
		return nil, err
	}
	for _, tool := range tools {
		path := filepath.Join(binDir, tool)
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("dev: %s not found: run `make dev-tools` first (or set ATF_BIN_DIR): %w", path, err)
		}
	}
	tdName := opts.TrustDomain
	if tdName == "" {
		tdName = DefaultTrustDomain
	}
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return nil, fmt.Errorf("dev: trust domain: %w", err)
	}
	agentID, err := spiffeid.FromPath(td, "/node")
	if err != nil {
		return nil, fmt.Errorf("dev: agent ID: %w", err)
	}
	brokerID, err := spiffeid.FromPath(td, "/atfd")
	if err != nil {
		return nil, fmt.Errorf("dev: broker ID: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := os.MkdirTemp("", "atf-")
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	s := &Stack{
		TrustDomain:    td,
		AgentID:        agentID,
		BrokerID:       brokerID,
		Dir:            dir,
		BinDir:         binDir,
		VaultRootToken: rand.Text(),
		log:            log,
	}
	log.Info("starting ATF dev stack", keyDir, dir)

	// SPIRE and Vault start side by side (waiting for one stops when the
	// other has failed); setup.sh then needs both, for SPIRE's JWT keys.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan error, 2)
	go func() { results <- s.startSPIRE(ctx) }()
	go func() { results <- s.startVault(ctx) }()
	var errs []error
	for range 2 {
		err := <-results
		switch {
		case err == nil:
		case len(errs) == 0:
			cancel()
			errs = append(errs, err)
		case !errors.Is(err, context.Canceled):
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		errs = append(errs, s.runVaultSetup(ctx))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	log.Info("ATF dev stack ready", keyElapsed, time.Since(begin).Round(time.Millisecond))
	return s, nil
}

// binDir resolves Options.BinDir to an absolute path.
func (o Options) binDir() (string, error) {
	dir := o.BinDir
	if dir == "" {
		dir = os.Getenv("ATF_BIN_DIR")
	}
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, "bin")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("dev: bin dir: %w", err)
	}
	return abs, nil
}

// RepoRoot returns the repository root: the nearest directory, from the
// working directory up, whose go.mod declares ModulePath.
func RepoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("dev: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if modulePath(filepath.Join(dir, "go.mod")) == ModulePath {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("dev: no go.mod of %s in %s or above it (set ATF_BIN_DIR)", ModulePath, wd)
		}
	}
}

// modulePath returns the module path declared by the go.mod at path, or "".
func modulePath(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module"); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// Close stops every component (SIGTERM, then SIGKILL after a few seconds)
// and removes Dir. It is idempotent.
func (s *Stack) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return s.closeErr
	}
	s.closed = true
	var wg sync.WaitGroup
	for _, p := range s.procs {
		wg.Go(p.stop)
	}
	wg.Wait()
	for _, dir := range append(s.dirs, s.Dir) {
		if err := os.RemoveAll(dir); err != nil {
			s.closeErr = errors.Join(s.closeErr, fmt.Errorf("dev: %w", err))
		}
	}
	s.log.Info("ATF dev stack stopped", keyDir, s.Dir)
	return s.closeErr
}

// PIDs returns the process ID of each component, by name (spire-server,
// spire-agent, vault). Each is the leader of its own process group.
func (s *Stack) PIDs() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	pids := make(map[string]int, len(s.procs))
	for _, p := range s.procs {
		pids[p.name] = p.pid // a restarted component replaces its first try
	}
	return pids
}

// Stop stops one component (spire-server, spire-agent or vault) and leaves
// the others running, to test how they cope with its outage. A stopped
// agent can be started again with StartAgent; Close still stops the rest.
func (s *Stack) Stop(name string) error {
	s.mu.Lock()
	var stop []*process
	s.procs = slices.DeleteFunc(s.procs, func(p *process) bool {
		if p.name == name {
			stop = append(stop, p)
			return true
		}
		return false
	})
	closed := s.closed
	s.mu.Unlock()
	if closed || len(stop) == 0 {
		return fmt.Errorf("dev: stop %s: not running", name)
	}
	for _, p := range stop {
		p.stop()
	}
	s.log.Info("stopped", keyComponent, name)
	return nil
}

// logFiles are the logs Logs reports, in order.
var logFiles = []string{"spire-server", "spire-agent", "vault", "vault-setup", "postgres"}

// Logs returns the last lines of each component's log, labelled, for failure
// diagnostics. Secrets the Vault dev server prints are masked. After Close it
// returns "".
func (s *Stack) Logs() string {
	var b strings.Builder
	etcd, _ := filepath.Glob(filepath.Join(s.Dir, "etcd[0-9]*-[0-9]*.log"))
	for i := range etcd {
		etcd[i] = strings.TrimSuffix(filepath.Base(etcd[i]), ".log")
	}
	for _, name := range append(logFiles, etcd...) {
		path := filepath.Join(s.Dir, name+".log")
		if _, err := os.Stat(path); err != nil {
			continue
		}
		fmt.Fprintf(&b, "=== %s (last %d lines of %s) ===\n%s\n", name, logLines, path, s.tail(path, logLines))
	}
	return b.String()
}
