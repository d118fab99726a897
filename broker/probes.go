package broker

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/agentictrust/atf/broker/conformance"
	"github.com/agentictrust/atf/broker/notify"
)

// probes are the live checks the conformance statement rests on
// (adminapi.Probes; docs/conformance.md, "Live evidence").
type probes struct{ s *Server }

func (p probes) VaultHealthy(ctx context.Context) error { return p.s.vault.Healthy(ctx) }

func (p probes) VaultBreaker() conformance.VaultBreaker {
	st := p.s.vault.Stats()
	return conformance.VaultBreaker{Open: st.BreakerOpen, Trips: st.BreakerTrips}
}

func (p probes) Deliveries() notify.Deliveries { return p.s.notifier.Deliveries() }

// Identity reads the broker's SVID and its trust bundles, and asks the
// Workload API, unless both come from files.
func (p probes) Identity(ctx context.Context) conformance.Identity {
	id := conformance.Identity{Authorities: map[string]int{}}
	if sv, err := p.s.source.GetX509SVID(); err == nil && len(sv.Certificates) > 0 {
		id.SVIDNotBefore, id.SVIDNotAfter = sv.Certificates[0].NotBefore, sv.Certificates[0].NotAfter
	}
	sp := p.s.cfg.SPIFFE
	if sp.SVIDFile == "" || len(sp.BundleFiles) == 0 {
		id.WorkloadAPI.Checked = true
		if err := p.s.source.Healthy(ctx); err != nil {
			id.WorkloadAPI.Err = err.Error()
		}
	}
	for _, name := range p.s.cfg.TrustDomains {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			continue
		}
		if b, err := p.s.source.GetX509BundleForTrustDomain(td); err == nil {
			id.Authorities[name] = len(b.X509Authorities())
		}
	}
	return id
}
