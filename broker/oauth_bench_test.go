package broker_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agentictrust/atf/deploy/dev/brokertest"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// BenchmarkOAuthTokenExchange compares the token exchange, end to end over
// HTTPS with mutual TLS (decision, transit sign, store record with its
// audit record), with its floor: one raw Vault transit sign call of a
// token-sized input, with a token of the broker's policy. Sequential calls
// alternate between the two (p50, p99); throughput phases run each at
// benchConcurrency.
func BenchmarkOAuthTokenExchange(b *testing.B) {
	f := brokertest.Setup(b)
	cfg := brokertest.WithOAuth(b, f.Config(b, b.TempDir()))
	cfg.Vault.Timeout, cfg.Vault.Breaker.Failures, cfg.Limits.MaxConnectionsPerIP = 30*time.Second, 1<<20, -1
	bk := f.Start(b, cfg)
	agent := f.ID(b, "exchanger")
	bk.Register(b, agent, brokerv1.Level_LEVEL_SENIOR, "tools-read")
	hc := bk.HTTPClient(b, agent)
	hc.Transport.(*http.Transport).MaxIdleConnsPerHost = benchConcurrency
	form := url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"}, "resource": {brokertest.OAuthToolsAudience}}.Encode()
	viaBroker := func(ctx context.Context, _ int) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, bk.OAuthURL()+"/oauth2/token", strings.NewReader(form))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("token exchange: %d %s", resp.StatusCode, body)
		}
		return nil
	}
	vc := vaultClient(b, f, vaultToken(b, f))
	input := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("x", 700))) // about a token's header and claims
	raw := func(ctx context.Context, _ int) error {
		_, err := vc.Logical().WriteWithContext(ctx, "transit/sign/atf-oauth", map[string]any{"input": input, "marshaling_algorithm": "jws"})
		return err
	}
	compareToRaw(b, []func(context.Context, int) error{raw, viaBroker}, latencySamples, throughputOps, 1).report(b, 0, 1)
}

// pushSamples is how many revocations BenchmarkOAuthRevocationPush times.
const pushSamples = 200

// BenchmarkOAuthRevocationPush times a revocation's way to a resource
// server: from the admin's RevokeLineage call to the revoked event, naming
// the token's jti, on the resource server's event stream (p50, p99); the
// commit is within it, and the answer to the admin is not waited for.
func BenchmarkOAuthRevocationPush(b *testing.B) {
	f := brokertest.Setup(b)
	rs := f.ID(b, "resource-server")
	cfg := brokertest.WithOAuth(b, f.Config(b, b.TempDir()), rs)
	cfg.Limits.MaxConnectionsPerIP = -1
	bk := f.Start(b, cfg)
	a, c := f.ID(b, "a"), f.ID(b, "c")
	bk.Register(b, a, brokerv1.Level_LEVEL_SENIOR, "tools-read")
	bk.Register(b, c, brokerv1.Level_LEVEL_SENIOR, "tools-read")
	ac, admin := bk.Dial(b, a).Broker, bk.Dial(b, f.Admin).Admin
	e := &oauthEnv{killEnv: &killEnv{delegEnv: &delegEnv{f: f, cfg: cfg, b: bk}}, rs: rs}
	events := e.subscribe(b)
	var lat []time.Duration
	for b.Loop() {
		for range pushSamples {
			g, err := ac.Delegate(b.Context(), &brokerv1.DelegateRequest{Delegatee: c.String(), Roles: []string{"tools-read"}, Ttl: durationpb.New(time.Hour)})
			if err != nil {
				b.Fatal(err)
			}
			grant := g.GetGrant().GetId()
			e.mustExchange(b, c, brokertest.OAuthToolsAudience, "", grant)
			start := time.Now()
			var wg sync.WaitGroup
			wg.Go(func() {
				if _, err := admin.RevokeLineage(b.Context(), &adminv1.RevokeLineageRequest{Root: &adminv1.RevokeLineageRequest_GrantId{GrantId: grant}, Reason: "bench"}); err != nil {
					b.Error(err)
				}
			})
			events.awaitNode(b, "grant:"+grant)
			lat = append(lat, time.Since(start))
			wg.Wait()
		}
	}
	slices.Sort(lat)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(percentile(lat, 0.50)), "p50-ns")
	b.ReportMetric(float64(percentile(lat, 0.99)), "p99-ns")
}
