// Command etcd is the pinned etcd server of the dev stack and the tests (the
// HA mode's store, docs/operations.md): etcd's own entry point, built from
// the Go module proxy by deploy/dev/tools/install.sh like Vault and SPIRE.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
