// Package vault holds the one-time Vault configuration for the ATF broker:
// setup.sh and the policies it installs. Operators run setup.sh against their
// Vault; the package embeds the same files so that the development stack
// (deploy/dev) runs exactly that script, and tests exercise it.
package vault

import "embed"

// Files holds setup.sh and the policy files it reads from its own directory.
// Copy it to a directory (os.CopyFS) and run "bash setup.sh" there.
//
//go:embed setup.sh *.hcl
var Files embed.FS
