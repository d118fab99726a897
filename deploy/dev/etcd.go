package dev

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Etcd is an etcd cluster the stack runs on loopback: the store of atfd's
// high-availability mode (docs/operations.md). Clients must present a
// certificate signed by CAFile (mutual TLS); members talk to each other in
// plain HTTP on loopback.
type Etcd struct {
	// Endpoints are the members' client URLs (https://127.0.0.1:port), in
	// member order.
	Endpoints []string
	// CAFile signs the members' and the client's certificates; CertFile and
	// KeyFile are a client certificate for atfd and the tests (PEM).
	CAFile, CertFile, KeyFile string

	members []etcdMember
	cluster string // --initial-cluster
}

// etcdMember is one member's name, ports and data directory.
type etcdMember struct {
	name, dir    string
	client, peer int
}

// MaxTxnOps is the dev cluster's --max-txn-ops, the value
// docs/operations.md asks of a cluster that holds atfd's store.
const MaxTxnOps = 4096

// MemberName is the component name of member i (0-based), for Stop and
// PIDs: etcd<k>-<i>, k counting the stack's clusters.
func (e *Etcd) MemberName(i int) string { return e.members[i].name }

// StartEtcd starts an etcd cluster of n members (bin/etcd, which `make
// dev-tools` builds) and returns once every member answers its health
// check. Close stops it with the rest; Stop(e.MemberName(i)) stops one
// member and RestartEtcdMember starts it again on its data.
func (s *Stack) StartEtcd(ctx context.Context, n int) (*Etcd, error) {
	if _, err := os.Stat(filepath.Join(s.BinDir, "etcd")); err != nil {
		return nil, fmt.Errorf("dev: etcd not found: run `make dev-tools` first: %w", err)
	}
	// A port found free (freePort) can be taken by another test process
	// before a member binds it: the cluster then starts again, on other
	// ports, under other names.
	for attempt := 1; ; attempt++ {
		e, err := s.startEtcd(ctx, n)
		if err == nil || e == nil || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return e, err
		}
		for i := range e.members {
			_ = s.Stop(e.MemberName(i)) // a member that exited is not running
		}
		s.log.Warn("an etcd port was taken before its member bound it; starting the cluster again on other ports", "error", err.Error())
	}
}

// startEtcd is one attempt of StartEtcd; on failure e holds the members it
// meant to start.
func (s *Stack) startEtcd(ctx context.Context, n int) (*Etcd, error) {
	dir, err := os.MkdirTemp(s.Dir, "etcd-")
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	s.mu.Lock()
	s.etcdClusters++
	k := s.etcdClusters
	s.mu.Unlock()
	e := &Etcd{}
	if err := e.writeCerts(dir); err != nil {
		return nil, err
	}
	var peers []string
	for i := range n {
		client, err := freePort()
		if err != nil {
			return nil, err
		}
		peer, err := freePort()
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("etcd%d-%d", k, i)
		m := etcdMember{name: name, dir: filepath.Join(dir, name), client: client, peer: peer}
		e.members = append(e.members, m)
		e.Endpoints = append(e.Endpoints, fmt.Sprintf("https://127.0.0.1:%d", client))
		peers = append(peers, fmt.Sprintf("%s=http://127.0.0.1:%d", m.name, peer))
	}
	e.cluster = strings.Join(peers, ",")
	for i := range e.members {
		if _, err := s.spawnEtcd(e, i, "new"); err != nil {
			return e, err
		}
	}
	for i := range e.members {
		if err := s.awaitEtcd(ctx, e, i); err != nil {
			return e, err
		}
	}
	s.log.Info("etcd ready", keyAddr, strings.Join(e.Endpoints, ","))
	return e, nil
}

// RestartEtcdMember starts member i again on its data directory, after
// Stop(e.MemberName(i)), and waits until it is healthy.
func (s *Stack) RestartEtcdMember(ctx context.Context, e *Etcd, i int) error {
	if _, err := s.spawnEtcd(e, i, "existing"); err != nil {
		return err
	}
	return s.awaitEtcd(ctx, e, i)
}

// RestartEtcd starts every member of e again on its data directory, after
// each was stopped, and waits until all are healthy (a quorum forms only
// once enough of them run, so they start together).
func (s *Stack) RestartEtcd(ctx context.Context, e *Etcd) error {
	for i := range e.members {
		if _, err := s.spawnEtcd(e, i, "existing"); err != nil {
			return err
		}
	}
	for i := range e.members {
		if err := s.awaitEtcd(ctx, e, i); err != nil {
			return err
		}
	}
	return nil
}

// Leader is the index of the member that leads the cluster now.
func (e *Etcd) Leader(ctx context.Context) (int, error) {
	cli, err := e.Client()
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	for i, ep := range e.Endpoints {
		// Each its own deadline: a stopped member waits out the one given.
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cli.Status(sctx, ep)
		cancel()
		if err != nil {
			continue
		}
		if st.Leader == st.Header.MemberId {
			return i, nil
		}
	}
	return 0, errors.New("dev: no etcd member says it leads")
}

// StopEtcdLeader stops the member of e that leads it, waits until the
// others have elected another (up to 20 s), and returns the stopped
// member's index.
func (s *Stack) StopEtcdLeader(ctx context.Context, e *Etcd) (int, error) {
	gone, err := e.Leader(ctx)
	if err != nil {
		return 0, err
	}
	if err := s.Stop(e.MemberName(gone)); err != nil {
		return gone, err
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		// The stopped member does not answer: a leader found is another.
		if _, err := e.Leader(ctx); err == nil {
			return gone, nil
		}
		select {
		case <-ctx.Done():
			return gone, fmt.Errorf("dev: no new etcd leader after member %d stopped: %w", gone, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// spawnEtcd starts member i with the cluster state given ("new" or
// "existing").
func (s *Stack) spawnEtcd(e *Etcd, i int, state string) (*process, error) {
	m := e.members[i]
	return s.spawn(m.name, []string{"PATH=" + os.Getenv("PATH")}, "etcd",
		"--name", m.name, "--data-dir", m.dir,
		"--listen-client-urls", e.Endpoints[i], "--advertise-client-urls", e.Endpoints[i],
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", m.peer),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", m.peer),
		"--initial-cluster", e.cluster, "--initial-cluster-state", state,
		"--initial-cluster-token", "atf-dev",
		"--client-cert-auth", "--trusted-ca-file", e.CAFile,
		"--cert-file", filepath.Join(filepath.Dir(e.CAFile), "server.pem"),
		"--key-file", filepath.Join(filepath.Dir(e.CAFile), "server-key.pem"),
		// Loopback: elect quickly, so that failover tests do not wait on
		// production timings.
		"--heartbeat-interval", "50", "--election-timeout", "500",
		// atfd's store in etcd needs more than etcd's default 128
		// operations per transaction (docs/operations.md).
		"--max-txn-ops", strconv.Itoa(MaxTxnOps),
		"--log-level", "warn")
}

// awaitEtcd waits until member i reports healthy (a quorum and a leader).
func (s *Stack) awaitEtcd(ctx context.Context, e *Etcd, i int) error {
	s.mu.Lock()
	var p *process
	for _, q := range s.procs {
		if q.name == e.members[i].name {
			p = q
		}
	}
	s.mu.Unlock()
	if p == nil {
		return fmt.Errorf("dev: %s is not running", e.members[i].name)
	}
	client, err := e.HTTPClient()
	if err != nil {
		return err
	}
	return s.awaitReady(ctx, p, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.Endpoints[i]+"/health", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"health":"true"`) {
			return fmt.Errorf("health %s: %s", resp.Status, body)
		}
		return nil
	})
}

// TLSConfig is the client side of the cluster's mutual TLS.
func (e *Etcd) TLSConfig() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(e.CertFile, e.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("dev: etcd client certificate: %w", err)
	}
	ca, err := os.ReadFile(e.CAFile)
	if err != nil {
		return nil, fmt.Errorf("dev: etcd CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, errors.New("dev: etcd CA: no certificate in " + e.CAFile)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// HTTPClient is an HTTP client for the members' HTTP endpoints (/health).
func (e *Etcd) HTTPClient() (*http.Client, error) {
	cfg, err := e.TLSConfig()
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}, nil
}

// writeCerts writes a CA, a server certificate for 127.0.0.1 and a client
// certificate into dir, and sets the paths of e.
func (e *Etcd) writeCerts(dir string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("dev: etcd CA key: %w", err)
	}
	caTmpl := certTemplate("atf dev etcd CA")
	caTmpl.IsCA, caTmpl.BasicConstraintsValid = true, true
	caTmpl.KeyUsage = x509.KeyUsageCertSign
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("dev: etcd CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fmt.Errorf("dev: etcd CA: %w", err)
	}
	e.CAFile = filepath.Join(dir, "ca.pem")
	if err := writePEM(e.CAFile, "CERTIFICATE", caDER); err != nil {
		return err
	}
	server := certTemplate("127.0.0.1")
	server.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	server.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	if err := issueCert(dir, "server", server, ca, caKey); err != nil {
		return err
	}
	client := certTemplate("atfd")
	client.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if err := issueCert(dir, "client", client, ca, caKey); err != nil {
		return err
	}
	e.CertFile, e.KeyFile = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	return nil
}

// certTemplate is a day-long certificate template for cn.
func certTemplate(cn string) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	return &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature}
}

// issueCert signs tmpl with the CA and writes <name>.pem and <name>-key.pem.
func issueCert(dir, name string, tmpl, ca *x509.Certificate, caKey *ecdsa.PrivateKey) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("dev: etcd %s key: %w", name, err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("dev: etcd %s certificate: %w", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("dev: etcd %s key: %w", name, err)
	}
	if err := writePEM(filepath.Join(dir, name+".pem"), "CERTIFICATE", der); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, name+"-key.pem"), "PRIVATE KEY", keyDER)
}

// writePEM writes one PEM block to path, readable by its owner only.
func writePEM(path, typ string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	return nil
}

// StartEtcdAlone starts a stack that runs only an etcd cluster of n
// members (no SPIRE, no Vault), for tests of the etcd engine alone. Close
// the stack to stop it.
func StartEtcdAlone(ctx context.Context, opts Options, n int) (*Stack, *Etcd, error) {
	binDir, err := opts.binDir()
	if err != nil {
		return nil, nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := os.MkdirTemp("", "atf-etcd-")
	if err != nil {
		return nil, nil, fmt.Errorf("dev: %w", err)
	}
	s := &Stack{Dir: dir, BinDir: binDir, log: log}
	e, err := s.StartEtcd(ctx, n)
	if err != nil {
		return nil, nil, errors.Join(err, s.Close())
	}
	return s, e, nil
}

// Client is an etcd client of the cluster, over its mutual TLS.
func (e *Etcd) Client() (*clientv3.Client, error) {
	cfg, err := e.TLSConfig()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, TLS: cfg, DialTimeout: 5 * time.Second,
		Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("dev: etcd client: %w", err)
	}
	return cli, nil
}
