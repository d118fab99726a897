package dev_test

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/deploy/dev"
	"github.com/agentictrust/atf/deploy/dev/devtest"
)

// The dev stack's etcd cluster: three members on loopback behind mutual
// TLS, which keeps a quorum with one member down and takes that member back
// on its data.
func TestEtcdCluster(t *testing.T) {
	s := devtest.Start(t)
	e, err := s.StartEtcd(t.Context(), 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Endpoints) != 3 {
		t.Fatalf("endpoints %v, want 3", e.Endpoints)
	}
	client, err := e.HTTPClient()
	if err != nil {
		t.Fatal(err)
	}
	noCert := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: mustTLS(t, e)}}
	noCert.Transport.(*http.Transport).TLSClientConfig.Certificates = nil
	if _, err := noCert.Get(e.Endpoints[1] + "/v3/kv/range"); err == nil {
		t.Error("a client without a certificate was served; want the TLS handshake refused")
	}

	if err := s.Stop(e.MemberName(0)); err != nil {
		t.Fatal(err)
	}
	for _, ep := range e.Endpoints[1:] {
		awaitHealthy(t, client, ep)
	}
	if err := s.RestartEtcdMember(t.Context(), e, 0); err != nil {
		t.Fatal(err)
	}
	for _, ep := range e.Endpoints {
		awaitHealthy(t, client, ep)
	}
}

func mustTLS(t *testing.T, e *dev.Etcd) *tls.Config {
	t.Helper()
	cfg, err := e.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// awaitHealthy waits up to 10 s (an election on loopback takes about one)
// for the member at ep to report a quorum.
func awaitHealthy(t *testing.T, c *http.Client, ep string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var last string
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ep+"/health", nil)
		resp, err := c.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), `"health":"true"`) {
				return
			}
			last = string(b)
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s not healthy within 10s: %s", ep, last)
}
