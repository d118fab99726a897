// Command atfd is the ATF broker daemon: it verifies agents' SPIFFE SVIDs
// and issues short-lived, narrowly scoped Vault credentials.
//
//	atfd -config /etc/atf/atfd.yaml
//
// See docs/operations.md, "Configuration reference", for the file's keys.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/agentictrust/atf/broker/config"

	"github.com/agentictrust/atf/broker"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "atfd:", err)
		os.Exit(1)
	}
}

func run() error {
	configPath := flag.String("config", "/etc/atf/atfd.yaml", "configuration file (YAML)")
	listen := flag.String("listen-addr", "", "gRPC listen address (overrides listen_addr)")
	logLevel := flag.String("log-level", "", "debug, info, warn or error (overrides log_level)")
	startTimeout := flag.Duration("start-timeout", time.Minute, "how long to wait for the Workload API and Vault at start")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (atfd takes only flags; see -h)", flag.Args())
	}

	cfg, err := config.Load(*configPath)
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.ListenAddr = *listen
	}
	if *logLevel != "" {
		cfg.LogLevel = *logLevel
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := newLogger(cfg)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, *startTimeout)
	srv, err := broker.New(startCtx, cfg, broker.WithLogger(log))
	cancel()
	if err != nil {
		return err
	}
	defer srv.Close()
	lis, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return err
	}
	log.Info("serving", slog.String("listen_addr", lis.Addr().String()))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		log.Info("shutting down")
		srv.Close()
		if err := <-errc; err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	}
}

func newLogger(cfg config.Config) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.LogLevel)) // checked by Validate
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts))
}
