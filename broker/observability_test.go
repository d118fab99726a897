package broker_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/agentictrust/atf/broker/metrics"
	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/brokertest"
	"github.com/agentictrust/atf/deploy/dev/devtest"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// freeAddr returns a loopback address nobody listens on (for a moment).
func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := dev.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// The metrics endpoint is scraped and parsed as Prometheus text, and its
// figures follow what happened; the health service reports NOT_SERVING
// while Vault does not answer and SERVING again when it does.
func TestObservability(t *testing.T) {
	f := brokertest.Setup(t)
	proxy := brokertest.NewFaultProxy(t, strings.TrimPrefix(f.Stack.VaultAddr, "http://"))
	cfg := f.Config(t, t.TempDir())
	cfg.Vault.Address = proxy.URL()
	cfg.MetricsAddr = freeAddr(t)
	cfg.HealthInterval = 200 * time.Millisecond
	b := f.Start(t, cfg)
	agent := f.ID(t, "agent")
	b.Register(t, agent, brokerv1.Level_LEVEL_INTERN, "reports-read", "reports-write")
	bc := b.Dial(t, agent).Broker
	if _, err := bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-read"}); err != nil {
		t.Fatal(err)
	}
	if _, err := bc.FetchCredential(t.Context(), &brokerv1.FetchCredentialRequest{Role: "reports-write"}); err == nil {
		t.Fatal("an intern got a write credential")
	}

	families := scrape(t, "http://"+cfg.MetricsAddr+"/metrics")
	for _, want := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"atf_decisions_total", map[string]string{"outcome": "allow", "reason": "allowed"}, 1},
		{"atf_decisions_total", map[string]string{"outcome": "deny", "reason": "class_not_allowed"}, 1},
		{"atf_issuance_seconds", nil, 1}, // the histogram's count
		{"atf_live_credentials", nil, 1},
		{"atf_policy_version", nil, 1},
		{"atf_revocation_queue_depth", nil, 0},
	} {
		if got, ok := value(families, want.name, want.labels); !ok || got < want.min {
			t.Errorf("%s%v = %v (found %t), want at least %v", want.name, want.labels, got, ok, want.min)
		}
	}
	// A store on a bbolt file asks nothing of etcd: no etcd metrics.
	if _, ok := value(families, "atf_store_etcd_prefetches_total", nil); ok {
		t.Error("atf_store_etcd_prefetches_total is exported by a broker on a bbolt file")
	}

	// The gRPC health service's status, and the metrics listener's
	// readiness check (the kubelet's probe) saying the same in HTTP.
	health := healthpb.NewHealthClient(b.Dial(t, agent).ClientConn)
	status := func() healthpb.HealthCheckResponse_ServingStatus {
		r, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: ""})
		if err != nil {
			return healthpb.HealthCheckResponse_UNKNOWN
		}
		code, body := ready(t, "http://"+cfg.MetricsAddr+metrics.ReadyPath)
		// Compared only if the status held around the HTTP read: a probe
		// may flip it in between.
		again, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: ""})
		if err != nil || again.GetStatus() != r.GetStatus() {
			return healthpb.HealthCheckResponse_UNKNOWN
		}
		if want := map[bool]int{true: http.StatusOK, false: http.StatusServiceUnavailable}[r.GetStatus() == healthpb.HealthCheckResponse_SERVING]; code != want || body != r.GetStatus().String() {
			t.Errorf("%s answered %d %q while the health service says %s, want %d", metrics.ReadyPath, code, body, r.GetStatus(), want)
		}
		return r.GetStatus()
	}
	devtest.WaitFor(t, 10*time.Second, "health SERVING with Vault up", func() bool {
		return status() == healthpb.HealthCheckResponse_SERVING
	})
	proxy.Down()
	devtest.WaitFor(t, 10*time.Second, "health NOT_SERVING with Vault down", func() bool {
		return status() == healthpb.HealthCheckResponse_NOT_SERVING
	})
	if got, _ := value(scrape(t, "http://"+cfg.MetricsAddr+"/metrics"), "atf_dependency_up", map[string]string{"dependency": "vault"}); got != 0 {
		t.Errorf("atf_dependency_up{vault} = %v with Vault down, want 0", got)
	}
	proxy.Restore(t)
	devtest.WaitFor(t, 10*time.Second, "health SERVING again with Vault back", func() bool {
		return status() == healthpb.HealthCheckResponse_SERVING
	})
}

// ready is the status code and the trimmed body of a GET of url.
func ready(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, strings.TrimSpace(string(body))
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	return scrapeWith(t, http.DefaultClient, url)
}

// scrapeWith parses the Prometheus metrics at url, fetched with c.
func scrapeWith(t testing.TB, c *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("metrics do not parse: %v", err)
	}
	return families
}

// value is the sample of family name whose labels include labels (for a
// histogram, its count).
func value(families map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	mf, ok := families[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}
