package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/config"
)

// etcdStore is a store.etcd that validates.
func etcdStore() *config.EtcdConfig {
	return &config.EtcdConfig{Endpoints: []string{"https://10.0.0.1:2379"}, CAFile: "ca.pem", CertFile: "c.pem", KeyFile: "k.pem"}
}

func TestStoreEtcd(t *testing.T) {
	c := minimal()
	c.StorePath, c.Store.Etcd = "", etcdStore()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	e := c.Store.Etcd
	if e.Prefix != "/atf/" || e.MaxTxnOps != config.MinEtcdTxnOps || e.Timeout != 5*time.Second || e.Replica == "" || e.ResumeWindow != 10*time.Minute {
		t.Errorf("defaults = %+v; want prefix /atf/, %d ops, 5s, the host name as replica, a 10m resume window", e, config.MinEtcdTxnOps)
	}
	if c.Audit.Dir != "" {
		t.Errorf("audit.dir = %q; a store in etcd keeps its trail there", c.Audit.Dir)
	}
	for _, tt := range []struct {
		name   string
		change func(*config.Config)
		want   string
	}{
		{"neither", func(c *config.Config) { c.Store.Etcd = nil }, "store_path is required (or store.etcd"},
		{"both", func(c *config.Config) { c.StorePath = "atf.db" }, "exclude each other"},
		{"no endpoint", func(c *config.Config) { c.Store.Etcd.Endpoints = nil }, "at least one member"},
		{"plain http", func(c *config.Config) { c.Store.Etcd.Endpoints = []string{"http://10.0.0.1:2379"} }, "is not https://"},
		{"no client certificate", func(c *config.Config) { c.Store.Etcd.CertFile = "" }, "mutual TLS"},
		{"too few ops", func(c *config.Config) { c.Store.Etcd.MaxTxnOps = 128 }, "raise the cluster's --max-txn-ops"},
		{"resume window too short", func(c *config.Config) { c.Store.Etcd.ResumeWindow = time.Millisecond }, "resume_window 1ms is under a second"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := minimal()
			c.StorePath, c.Store.Etcd = "", etcdStore()
			tt.change(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate = %v, want an error saying %q", err, tt.want)
			}
		})
	}
}
