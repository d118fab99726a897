package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/agentictrust/atf/broker/console"
	"github.com/agentictrust/atf/broker/edge"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

// openConsole builds the web console on its own listener, if it is on
// (docs/console.md): over TLS with console.tls_cert_file, else in the
// clear on a loopback address only (the configuration refuses others).
func (s *Server) openConsole(svcs []any) error {
	o := s.cfg.Console
	if !o.Enabled() {
		return nil
	}
	cc := console.Config{ConsoleConfig: o, Log: s.log, Now: s.now}
	for _, svc := range svcs {
		switch v := svc.(type) {
		case adminv1.AdminServiceServer:
			cc.Admin = v
		case adminv1.MaturityServiceServer:
			cc.Maturity = v
		case adminv1.ResponseServiceServer:
			cc.Response = v
		case adminv1.ApprovalServiceServer:
			cc.Approvals = v
		}
	}
	if f := o.OIDC.ClientSecretFile; f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("broker: console.oidc.client_secret_file: %w", err)
		}
		cc.ClientSecret = strings.TrimSpace(string(b))
	}
	h, err := console.New(cc)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.ListenAddr)
	if err != nil {
		return fmt.Errorf("broker: console.listen_addr: %w", err)
	}
	if n := s.cfg.Limits.MaxConnectionsPerIP; n > 0 {
		ln = edge.LimitPerIP(ln, n, s.log)
	}
	if o.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.TLSCertFile, o.TLSKeyFile)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("broker: console TLS certificate: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}})
	}
	s.consoleLn = ln
	// No WriteTimeout: it would cut the live events.
	s.console = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	return nil
}

// ConsoleAddr is the address the console listens on ("" if off).
func (s *Server) ConsoleAddr() string {
	if s.consoleLn == nil {
		return ""
	}
	return s.consoleLn.Addr().String()
}

func (s *Server) serveConsole() {
	if s.console == nil {
		return
	}
	s.loops.Go(func() {
		if err := s.console.Serve(s.consoleLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("the console stopped", slog.String(edge.LogError, err.Error()))
		}
	})
}

func (s *Server) closeConsole() {
	if s.console == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.console.Shutdown(ctx); err != nil {
		_ = s.console.Close()
	}
	_ = s.consoleLn.Close()
}
