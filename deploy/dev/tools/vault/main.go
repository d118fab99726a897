// Command vault is HashiCorp Vault 1.14.2 (MPL-2.0), built from the Go module
// proxy for the development stack and the integration tests.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
