package config

import (
	"os"
	"strings"
	"time"
)

// StoreConfig is `store:`, the store's place when it is not a bbolt file.
type StoreConfig struct {
	Etcd *EtcdConfig `yaml:"etcd"`
}

// EtcdConfig is `store: {etcd: ...}`: the etcd cluster several atfd
// replicas share (docs/operations.md, "Several replicas on etcd").
type EtcdConfig struct {
	// Endpoints are the members' client URLs (https://host:2379).
	Endpoints []string `yaml:"endpoints"`
	// CAFile verifies the members' certificates; CertFile and KeyFile are
	// atfd's client certificate (etcd's --client-cert-auth). All three are
	// required: the store holds the broker's whole state.
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Prefix is the key prefix of the store; default "/atf/".
	Prefix string `yaml:"prefix"`
	// MaxTxnOps is the cluster's --max-txn-ops; default and minimum 4096.
	MaxTxnOps int `yaml:"max_txn_ops"`
	// Timeout bounds one store transaction; default 5s.
	Timeout time.Duration `yaml:"timeout"`
	// Replica names this atfd among the replicas (its crash recovery
	// revokes only what it made); default the host name.
	Replica string `yaml:"replica"`
	// ResumeWindow is how long the change feed keeps revocation events
	// for the watches that resume on any replica; default 10m.
	ResumeWindow time.Duration `yaml:"resume_window"`
}

// MinEtcdTxnOps is the least --max-txn-ops a cluster holding the store
// must allow: a wide lineage revocation is one transaction.
const MinEtcdTxnOps = 4096

// validate checks `store:` against store_path: exactly one of them says
// where the store is.
func (sc *StoreConfig) validate(v *validation, storePath string) {
	e := sc.Etcd
	switch {
	case e == nil && storePath == "":
		v.bad("store_path is required (or store.etcd, for several replicas)")
		return
	case e == nil:
		return
	case storePath != "":
		v.bad("store_path and store.etcd exclude each other: the store is a bbolt file or in etcd")
	}
	if len(e.Endpoints) == 0 {
		v.bad("store.etcd.endpoints needs at least one member")
	}
	for _, ep := range e.Endpoints {
		if !strings.HasPrefix(ep, "https://") {
			v.bad("store.etcd.endpoints: %q is not https://: the store travels over mutual TLS only", ep)
		}
	}
	if e.CAFile == "" || e.CertFile == "" || e.KeyFile == "" {
		v.bad("store.etcd needs ca_file, cert_file and key_file (mutual TLS)")
	}
	if e.Prefix == "" {
		e.Prefix = "/atf/"
	}
	if e.MaxTxnOps == 0 {
		e.MaxTxnOps = MinEtcdTxnOps
	} else if e.MaxTxnOps < MinEtcdTxnOps {
		v.bad("store.etcd.max_txn_ops %d is below %d: raise the cluster's --max-txn-ops and this setting", e.MaxTxnOps, MinEtcdTxnOps)
	}
	if e.Timeout <= 0 {
		e.Timeout = 5 * time.Second
	}
	switch {
	case e.ResumeWindow == 0:
		e.ResumeWindow = 10 * time.Minute
	case e.ResumeWindow < time.Second:
		v.bad("store.etcd.resume_window %s is under a second: a watch could hardly ever resume", e.ResumeWindow)
	}
	if e.Replica == "" {
		e.Replica, _ = os.Hostname()
	}
}
