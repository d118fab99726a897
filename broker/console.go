package broker

import (
	"crypto/tls"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/agentictrust/atf/broker/console"
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
	cc := console.Config{ConsoleConfig: o, People: s.people, Sessions: s.store, Log: s.log, Now: s.now}
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
	var tlsCfg *tls.Config
	if o.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.TLSCertFile, o.TLSKeyFile)
		if err != nil {
			return fmt.Errorf("broker: console TLS certificate: %w", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	}
	// A read timeout bounds a form's upload; the live events only write.
	s.console, err = s.listen("console", "console.listen_addr", o.ListenAddr, tlsCfg, h, 30*time.Second)
	return err
}

// ConsoleAddr is the address the console listens on ("" if off).
func (s *Server) ConsoleAddr() string { return s.console.addr() }
