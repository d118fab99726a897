package dev

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

//go:embed config
var configFS embed.FS

var configTemplates = template.Must(template.New("").
	Funcs(template.FuncMap{"quote": strconv.Quote}).
	ParseFS(configFS, "config/*.conf.tmpl"))

// joinTokenTTL is how long the agent's join token stays valid; the agent
// uses it within seconds.
const joinTokenTTL = 10 * time.Minute

// SVIDFiles are the PEM files of a minted X.509-SVID.
type SVIDFiles struct {
	CertPath   string // the SVID's certificate chain
	KeyPath    string // its private key (PKCS#8)
	BundlePath string // the trust domain's X.509 authorities
}

// startSPIRE starts the SPIRE server, exports its bundle, and starts an agent
// attested with a join token.
func (s *Stack) startSPIRE(ctx context.Context) error {
	s.ServerSocketPath = filepath.Join(s.Dir, "server.sock")
	if err := s.startSPIREServer(ctx); err != nil {
		return err
	}
	pem, err := s.spire(ctx, "bundle", "show")
	if err != nil {
		return err
	}
	spiffe, err := s.spire(ctx, "bundle", "show", "-format", "spiffe")
	if err != nil {
		return err
	}
	s.BundlePath = filepath.Join(s.Dir, "bundle.pem")
	s.SPIFFEBundlePath = filepath.Join(s.Dir, "bundle.spiffe.json")
	if err := os.WriteFile(s.BundlePath, []byte(pem), 0o644); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	if err := os.WriteFile(s.SPIFFEBundlePath, []byte(spiffe), 0o644); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	return s.startSPIREAgent(ctx)
}

func (s *Stack) startSPIREServer(ctx context.Context) error {
	dataDir := filepath.Join(s.Dir, "server-data")
	for attempt := 1; ; attempt++ {
		// A failed try may have written a CA to the datastore; start afresh.
		if err := os.RemoveAll(dataDir); err != nil {
			return fmt.Errorf("dev: %w", err)
		}
		port, err := freePort()
		if err != nil {
			return err
		}
		s.ServerAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		conf, err := s.render("spire-server.conf.tmpl", map[string]any{
			"Port":         port,
			"SocketPath":   s.ServerSocketPath,
			"TrustDomain":  s.TrustDomain.Name(),
			"DataDir":      dataDir,
			"DatabasePath": filepath.Join(dataDir, "datastore.sqlite3"),
		})
		if err != nil {
			return err
		}
		s.log.Info("starting SPIRE server", keyAddr, s.ServerAddr)
		p, err := s.spawn("spire-server", os.Environ(), "spire-server", "run", "-config", conf)
		if err != nil {
			return err
		}
		err = s.awaitReady(ctx, p, func(ctx context.Context) error {
			_, err := s.spire(ctx, "healthcheck")
			return err
		})
		if err != nil && attempt == 1 && p.addrInUse() {
			s.log.Info("SPIRE server port was taken, retrying", keyAddr, s.ServerAddr)
			continue
		}
		return err
	}
}

func (s *Stack) startSPIREAgent(ctx context.Context) error {
	out, err := s.spire(ctx, "token", "generate", "-spiffeID", s.AgentID.String(),
		"-ttl", strconv.Itoa(int(joinTokenTTL.Seconds())))
	if err != nil {
		return err
	}
	token, ok := strings.CutPrefix(strings.TrimSpace(out), "Token: ")
	if !ok {
		return errors.New("dev: spire-server token generate: unexpected output")
	}
	_, port, _ := net.SplitHostPort(s.ServerAddr)
	socket := filepath.Join(s.Dir, "agent.sock")
	conf, err := s.render("spire-agent.conf.tmpl", map[string]any{
		"ServerPort":      port,
		"SocketPath":      socket,
		"TrustDomain":     s.TrustDomain.Name(),
		"TrustBundlePath": s.BundlePath,
		"DataDir":         filepath.Join(s.Dir, "agent-data"),
		"JoinToken":       token,
	})
	if err != nil {
		return err
	}
	s.log.Info("starting SPIRE agent", keyAddr, "unix://"+socket)
	p, err := s.spawn("spire-agent", os.Environ(), "spire-agent", "run", "-config", conf)
	if err != nil {
		return err
	}
	err = s.awaitReady(ctx, p, func(ctx context.Context) error {
		_, err := s.run(ctx, os.Environ(), "spire-agent", "healthcheck", "-socketPath", socket)
		return err
	})
	if err != nil {
		return err
	}
	s.WorkloadAPIAddr = "unix://" + socket
	return nil
}

// StartAgent starts the SPIRE agent again after Stop("spire-agent"), on
// the same Workload API socket. Its key lived in memory, so it attests
// afresh, with a new join token under the same node alias: workload entries
// still apply, and workloads get new SVIDs.
func (s *Stack) StartAgent(ctx context.Context) error {
	if _, running := s.PIDs()["spire-agent"]; running {
		return errors.New("dev: start spire-agent: already running")
	}
	return s.startSPIREAgent(ctx)
}

// render writes config/<name> filled with data to Dir, without the .tmpl
// suffix, readable by the owner only (the agent's holds its join token).
func (s *Stack) render(name string, data any) (string, error) {
	var b strings.Builder
	if err := configTemplates.ExecuteTemplate(&b, name, data); err != nil {
		return "", fmt.Errorf("dev: %s: %w", name, err)
	}
	path := filepath.Join(s.Dir, strings.TrimSuffix(name, ".tmpl"))
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return "", fmt.Errorf("dev: %w", err)
	}
	return path, nil
}

// spire runs a spire-server CLI command against the stack's server.
func (s *Stack) spire(ctx context.Context, args ...string) (string, error) {
	return s.run(ctx, os.Environ(), "spire-server", append(args, "-socketPath", s.ServerSocketPath)...)
}

// MintX509 has the SPIRE server sign an X.509-SVID for id, valid for ttl (0:
// the server default, 1 h), and writes it to a new directory under Dir.
func (s *Stack) MintX509(ctx context.Context, id spiffeid.ID, ttl time.Duration) (SVIDFiles, error) {
	dir, err := os.MkdirTemp(s.Dir, "x509-")
	if err != nil {
		return SVIDFiles{}, fmt.Errorf("dev: %w", err)
	}
	if _, err := s.spire(ctx, "x509", "mint", "-spiffeID", id.String(), "-ttl", ttl.String(), "-write", dir); err != nil {
		return SVIDFiles{}, err
	}
	return SVIDFiles{
		CertPath:   filepath.Join(dir, "svid.pem"),
		KeyPath:    filepath.Join(dir, "key.pem"),
		BundlePath: filepath.Join(dir, "bundle.pem"),
	}, nil
}

// MintJWT has the SPIRE server sign a JWT-SVID for id and audience, valid for
// ttl (0: the server default, 5 min).
func (s *Stack) MintJWT(ctx context.Context, id spiffeid.ID, audience string, ttl time.Duration) (string, error) {
	out, err := s.spire(ctx, "jwt", "mint", "-spiffeID", id.String(), "-audience", audience, "-ttl", ttl.String())
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// RegisterWorkload creates a registration entry for id under AgentID with
// the given selectors (e.g. "unix:uid:1000", "unix:path:/usr/bin/agent"), and
// returns once the server lists it. Registering the same entry again is not
// an error. The agent serves the SVID about two seconds later; see
// AwaitX509SVID.
func (s *Stack) RegisterWorkload(ctx context.Context, id spiffeid.ID, selectors ...string) error {
	return s.RegisterWorkloadTTL(ctx, id, 0, selectors...)
}

// RegisterWorkloadTTL is RegisterWorkload with the lifetime of the entry's
// X.509-SVIDs (whole seconds; 0 means the server's default, 1 h). A short
// lifetime makes the agent rotate the SVID soon: at about half of it.
func (s *Stack) RegisterWorkloadTTL(ctx context.Context, id spiffeid.ID, ttl time.Duration, selectors ...string) error {
	if len(selectors) == 0 {
		return fmt.Errorf("dev: registering %s: no selectors", id)
	}
	args := []string{"entry", "create", "-parentID", s.AgentID.String(), "-spiffeID", id.String()}
	if ttl > 0 {
		args = append(args, "-x509SVIDTTL", strconv.Itoa(int(ttl/time.Second)))
	}
	for _, sel := range selectors {
		args = append(args, "-selector", sel)
	}
	s.log.Info("registering workload", keyID, id.String(), keySelectors, selectors)
	if _, err := s.spire(ctx, args...); err != nil && !strings.Contains(err.Error(), "similar entry already exists") {
		return err
	}
	return retry(ctx, "waiting for entry "+id.String(), func(ctx context.Context) error {
		out, err := s.spire(ctx, "entry", "show", "-parentID", s.AgentID.String(), "-spiffeID", id.String(), "-output", "json")
		if err != nil {
			return err
		}
		var shown struct {
			Entries []struct {
				Selectors []struct{ Type, Value string }
			}
		}
		if err := json.Unmarshal([]byte(out), &shown); err != nil {
			return fmt.Errorf("dev: spire-server entry show: %w", err)
		}
		for _, e := range shown.Entries {
			var got []string
			for _, sel := range e.Selectors {
				got = append(got, sel.Type+":"+sel.Value)
			}
			if sameSet(got, selectors) {
				return nil
			}
		}
		return errors.New("dev: entry not listed yet")
	})
}

// AwaitX509SVID asks the agent's Workload API, as the calling process, for an
// X.509-SVID with the given ID until it is served or ctx ends. Use it after
// registering the calling process itself (e.g. by "unix:uid:<os.Getuid()>").
func (s *Stack) AwaitX509SVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	var found *x509svid.SVID
	err := retry(ctx, "waiting for the Workload API to serve "+id.String(), func(ctx context.Context) error {
		svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(s.WorkloadAPIAddr))
		if err != nil {
			return err
		}
		for _, svid := range svids {
			if svid.ID == id {
				found = svid
				return nil
			}
		}
		return errors.New("dev: not served yet")
	})
	return found, err
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}
