// Package etcdclient connects to the etcd cluster that holds the store
// (store.etcd in atfd's configuration), over mutual TLS: for atfd's
// replicas, and for atfctl's offline migration of a bbolt store into it
// (docs/operations.md, "Several replicas on etcd").
package etcdclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/agentictrust/atf/broker/config"
)

// New returns a client of the cluster e names, authenticated with e's
// client certificate and trusting e's CA only. The caller closes it.
func New(e *config.EtcdConfig) (*clientv3.Client, error) {
	cert, err := tls.LoadX509KeyPair(e.CertFile, e.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("store.etcd: client certificate: %w", err)
	}
	ca, err := os.ReadFile(e.CAFile)
	if err != nil {
		return nil, fmt.Errorf("store.etcd: ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, errors.New("store.etcd: ca_file holds no PEM certificate")
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: e.Timeout, Logger: zap.NewNop(),
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12},
		// A member that stops answering is left for another within seconds.
		DialKeepAliveTime: 5 * time.Second, DialKeepAliveTimeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("store.etcd: %w", err)
	}
	return cli, nil
}
