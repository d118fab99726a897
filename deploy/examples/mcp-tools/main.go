// Command mcp-tools is an example resource server for atfd's access
// tokens (docs/oauth-verifier.md): an MCP-style tool server (JSON-RPC 2.0
// at POST /mcp, tools "whoami" and "echo") behind the oauth/verify
// middleware, following atfd's revocation events so that a revoked
// lineage's next call fails at once. It logs who called through which
// delegation chain.
//
//	mcp-tools -issuer https://atfd.example:8443 -audience https://mcp.example/tools \
//	    -broker-id spiffe://example.org/atfd -listen 127.0.0.1:8444
//
// Its own SVID (Workload API, or -svid-cert/-svid-key with -bundle) serves
// HTTPS and authenticates it to atfd's events and introspection endpoints.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/agentictrust/atf/broker/svid"
	"github.com/agentictrust/atf/oauth/verify"
)

type options struct {
	listen, issuer, audience, brokerID string
	workloadAPI, cert, key, bundle     string
	push, introspect, plainHTTP        bool
}

func main() {
	var o options
	flag.StringVar(&o.listen, "listen", "127.0.0.1:8444", "address to serve on")
	flag.StringVar(&o.issuer, "issuer", "", "atfd's OAuth issuer URL (oauth.issuer); required")
	flag.StringVar(&o.audience, "audience", "", "this server's resource indicator, the aud its tokens carry; required")
	flag.StringVar(&o.brokerID, "broker-id", "", "atfd's SPIFFE ID, checked on its certificate; required")
	flag.StringVar(&o.workloadAPI, "workload-api", "", "Workload API socket (default $SPIFFE_ENDPOINT_SOCKET)")
	flag.StringVar(&o.cert, "svid-cert", "", "X.509-SVID file, instead of the Workload API")
	flag.StringVar(&o.key, "svid-key", "", "its key file")
	flag.StringVar(&o.bundle, "bundle", "", "trust bundle file of the broker's trust domain, instead of the Workload API")
	flag.BoolVar(&o.push, "push", true, "follow atfd's revocation events")
	flag.BoolVar(&o.introspect, "introspect", false, "introspect tokens the events cannot vouch for, instead of refusing them")
	flag.BoolVar(&o.plainHTTP, "plain-http", false, "serve plain HTTP (loopback demos only)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		fmt.Fprintln(os.Stderr, "mcp-tools:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	if o.issuer == "" || o.audience == "" || o.brokerID == "" {
		return errors.New("-issuer, -audience and -broker-id are required")
	}
	brokerID, err := spiffeid.FromString(o.brokerID)
	if err != nil {
		return fmt.Errorf("-broker-id: %w", err)
	}
	sc := svid.Config{WorkloadAPIAddr: o.workloadAPI, CertFile: o.cert, KeyFile: o.key}
	if o.bundle != "" {
		sc.BundleFiles = map[string]string{brokerID.TrustDomain().Name(): o.bundle}
	}
	src, err := svid.Open(ctx, sc)
	if err != nil {
		return err
	}
	defer src.Close()
	// The issuer's endpoints are HTTPS with atfd's X.509-SVID; this server
	// presents its own, which the events and introspection endpoints check.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(brokerID))}}
	cfg := verify.Config{Issuer: o.issuer, Audience: o.audience, Client: client, Logger: log}
	if o.push {
		cfg.Push = &verify.Push{OnRevoked: func(r verify.Revocation) {
			log.Info("revocation", slog.String("reason", r.Reason), slog.Duration("latency", r.Received.Sub(r.Time)))
		}}
		if o.introspect {
			cfg.Push.IntrospectionURL = o.issuer + "/oauth2/introspect"
		}
	}
	v, err := verify.New(cfg)
	if err != nil {
		return err
	}
	if o.push {
		go v.Subscribe(ctx)
	}
	return serve(ctx, o, newMux(v, log), src, log)
}

// newMux serves the tools at /mcp behind the verifier, and /healthz.
func newMux(v *verify.Verifier, log *slog.Logger) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/mcp", v.Middleware()(&tools{log: log}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	return mux
}

func serve(ctx context.Context, o options, h http.Handler, src *svid.Source, log *slog.Logger) error {
	srv := &http.Server{Addr: o.listen, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	if !o.plainHTTP {
		srv.TLSConfig = tlsconfig.TLSServerConfig(src)
	}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Info("serving", slog.String("addr", o.listen), slog.String("audience", o.audience), slog.Bool("push", o.push))
	var err error
	if o.plainHTTP {
		err = srv.ListenAndServe()
	} else {
		err = srv.ListenAndServeTLS("", "")
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
