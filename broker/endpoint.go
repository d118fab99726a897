package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/agentictrust/atf/broker/edge"
)

// endpoint is one of atfd's HTTP servers beside gRPC (the OAuth
// endpoints, the console), on a listener of its own.
type endpoint struct {
	name string
	srv  *http.Server
	ln   net.Listener
}

// listen opens an endpoint for h on addr (configuration key key), with the
// per-IP connection limit, over TLS unless tlsCfg is nil. readTimeout 0
// leaves each handler to bound its own reads (streams would be cut).
func (s *Server) listen(name, key, addr string, tlsCfg *tls.Config, h http.Handler, readTimeout time.Duration) (*endpoint, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("broker: %s: %w", key, err)
	}
	if n := s.cfg.Limits.MaxConnectionsPerIP; n > 0 {
		ln = edge.LimitPerIP(ln, n, s.log)
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: readTimeout, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	return &endpoint{name: name, srv: srv, ln: ln}, nil
}

// addr is the address e listens on ("" for no endpoint).
func (e *endpoint) addr() string {
	if e == nil {
		return ""
	}
	return e.ln.Addr().String()
}

// serve serves e until it is closed.
func (s *Server) serve(e *endpoint) {
	if e == nil {
		return
	}
	s.loops.Go(func() {
		if err := e.srv.Serve(e.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("the "+e.name+" stopped", slog.String(edge.LogError, err.Error()))
		}
	})
}

// close stops e, letting requests in flight end for up to 5 seconds.
func (e *endpoint) close() {
	if e == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		_ = e.srv.Close()
	}
	_ = e.ln.Close() // already closed if served
}
