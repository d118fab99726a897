// Package svid supplies a workload's own X.509-SVID and the trust bundles it
// verifies peers with, from the SPIRE Workload API or, for setups without a
// local agent, from files. Both atfd and its clients use it.
//
// From the Workload API, SVIDs and bundles rotate without a restart. From
// files, they are read once at Open.
package svid

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// Config says where the SVID and bundles come from.
type Config struct {
	// WorkloadAPIAddr is the Workload API socket, e.g.
	// unix:///run/spire/agent.sock. Empty means $SPIFFE_ENDPOINT_SOCKET.
	WorkloadAPIAddr string
	// CertFile and KeyFile, when set, hold the X.509-SVID (PEM chain, leaf
	// first) and its key, instead of the Workload API.
	CertFile string
	KeyFile  string
	// BundleFiles maps trust domain names to bundle files, in SPIFFE bundle
	// (JWKS) format or PEM (X.509 authorities only). When set, they replace
	// the Workload API's bundles.
	BundleFiles map[string]string
}

// Source is a workload's SVID and bundles. It implements x509svid.Source,
// x509bundle.Source and jwtbundle.Source.
type Source struct {
	svid    x509svid.Source
	x509    x509bundle.Source
	jwt     jwtbundle.Source
	addr    string
	wopts   []workloadapi.ClientOption
	closers []func() error

	// jwtClient fetches JWT-SVIDs over one Workload API connection, made on
	// first use (clients authenticating with JWT-SVIDs fetch one per call).
	mu        sync.Mutex
	jwtClient *workloadapi.Client
}

// Open opens the sources cfg names and waits for the first SVID.
func Open(ctx context.Context, cfg Config) (*Source, error) {
	s := &Source{addr: cfg.WorkloadAPIAddr}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	if cfg.WorkloadAPIAddr != "" {
		s.wopts = append(s.wopts, workloadapi.WithAddr(cfg.WorkloadAPIAddr))
	}
	wopts := s.wopts
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("svid: an SVID file needs its key file, and the other way round")
	}
	if cfg.CertFile != "" {
		sv, err := x509svid.Load(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("svid: %w", err)
		}
		s.svid = staticSVID{sv}
	} else {
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(wopts...))
		if err != nil {
			return nil, fmt.Errorf("svid: Workload API %s: %w", addrOrEnv(cfg.WorkloadAPIAddr), err)
		}
		s.closers = append(s.closers, src.Close)
		s.svid = src
	}
	if len(cfg.BundleFiles) > 0 {
		set, err := LoadBundles(cfg.BundleFiles)
		if err != nil {
			return nil, err
		}
		s.x509, s.jwt = set, set
	} else {
		src, err := workloadapi.NewBundleSource(ctx, workloadapi.WithClientOptions(wopts...))
		if err != nil {
			return nil, fmt.Errorf("svid: Workload API %s: %w", addrOrEnv(cfg.WorkloadAPIAddr), err)
		}
		s.closers = append(s.closers, src.Close)
		s.x509, s.jwt = src, src
	}
	ok = true
	return s, nil
}

// GetX509SVID implements x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) { return s.svid.GetX509SVID() }

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.x509.GetX509BundleForTrustDomain(td)
}

// GetJWTBundleForTrustDomain implements jwtbundle.Source.
func (s *Source) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	return s.jwt.GetJWTBundleForTrustDomain(td)
}

// ID is the workload's own SPIFFE ID.
func (s *Source) ID() (spiffeid.ID, error) {
	sv, err := s.svid.GetX509SVID()
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("svid: %w", err)
	}
	return sv.ID, nil
}

// client returns the Workload API client, made on first use.
func (s *Source) client(ctx context.Context) (*workloadapi.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.jwtClient == nil {
		c, err := workloadapi.New(ctx, s.wopts...)
		if err != nil {
			return nil, fmt.Errorf("svid: Workload API %s: %w", addrOrEnv(s.addr), err)
		}
		s.jwtClient = c
		s.closers = append(s.closers, c.Close)
	}
	return s.jwtClient, nil
}

// Healthy reports whether the Workload API answers (nil when SVID and
// bundles both come from files).
func (s *Source) Healthy(ctx context.Context) error {
	if _, static := s.svid.(staticSVID); static && s.x509 != nil {
		if _, files := s.x509.(*spiffebundle.Set); files {
			return nil
		}
	}
	c, err := s.client(ctx)
	if err != nil {
		return err
	}
	if _, err := c.FetchX509Bundles(ctx); err != nil {
		return fmt.Errorf("svid: Workload API %s: %w", addrOrEnv(s.addr), err)
	}
	return nil
}

// FetchJWTSVID fetches a JWT-SVID for audience from the Workload API.
func (s *Source) FetchJWTSVID(ctx context.Context, audience string) (string, error) {
	c, err := s.client(ctx)
	if err != nil {
		return "", err
	}
	sv, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
	if err != nil {
		return "", fmt.Errorf("svid: fetch JWT-SVID from Workload API %s: %w", addrOrEnv(s.addr), err)
	}
	return sv.Marshal(), nil
}

// Close stops watching the Workload API.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, c := range s.closers {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

type staticSVID struct{ svid *x509svid.SVID }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

// LoadBundles reads bundle files, by trust domain name, as
// Config.BundleFiles: for a caller that has no SVID of its own (a person
// on the command line) but must verify the broker's.
func LoadBundles(files map[string]string) (*spiffebundle.Set, error) {
	set := spiffebundle.NewSet()
	for name, path := range files {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, fmt.Errorf("svid: bundle file for %q: %w", name, err)
		}
		b, err := loadBundle(td, path)
		if err != nil {
			return nil, err
		}
		set.Add(b)
	}
	return set, nil
}

// loadBundle reads a SPIFFE bundle (JSON) or a PEM bundle.
func loadBundle(td spiffeid.TrustDomain, path string) (*spiffebundle.Bundle, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("svid: bundle: %w", err)
	}
	if strings.HasPrefix(strings.TrimSpace(string(raw)), "{") {
		b, err := spiffebundle.Parse(td, raw)
		if err != nil {
			return nil, fmt.Errorf("svid: bundle %s: %w", path, err)
		}
		return b, nil
	}
	xb, err := x509bundle.Parse(td, raw)
	if err != nil {
		return nil, fmt.Errorf("svid: bundle %s: %w", path, err)
	}
	return spiffebundle.FromX509Authorities(td, xb.X509Authorities()), nil
}

func addrOrEnv(addr string) string {
	if addr != "" {
		return addr
	}
	return "$SPIFFE_ENDPOINT_SOCKET"
}
