// Package dev runs a complete local ATF environment for integration tests and
// the demo: a real SPIRE server, a SPIRE agent and a Vault dev server, all on
// free loopback ports, with their state in one temporary directory.
//
// # Basics
//
// Start launches the three components from the pinned builds in bin/ (made
// by `make dev-tools`), waits until each one answers its health check, and
// prepares them:
//
//   - SPIRE: trust domain Options.TrustDomain, join-token node attestation and
//     the unix workload attestor. The agent's node alias is Stack.AgentID;
//     RegisterWorkload creates workload entries under it. MintX509 and MintJWT
//     get SPIRE-signed SVIDs for any SPIFFE ID without a workload.
//   - Vault: a dev server with a random root token, configured by the real
//     deploy/vault/setup.sh (policies atf-broker and atf-anchor, token roles
//     atf-credential and atf-anchor, AppRole atf-broker), plus demo policies
//     (demo-reports-read, demo-reports-write, demo-payroll-read,
//     demo-orders-db) and kv-v2
//     secrets secret/demo/reports and secret/demo/payroll. BrokerVaultToken and
//     BrokerAppRole give the broker its own non-root credentials.
//
// StartPostgres adds, on demand, a PostgreSQL server of Debian's postgresql
// package (linked into bin/ by `make dev-tools`) on a free loopback port, in a
// directory of its own, run as the postgres system user when the stack runs as
// root (PostgreSQL refuses root). It mounts Vault's database secrets engine at
// database/ with role orders-db (DatabaseCredsPath, allowed by the demo policy
// demo-orders-db): a LOGIN user that may read table orders, valid until its
// lease ends, dropped when Vault revokes the lease.
//
// Close stops every process (SIGTERM, then SIGKILL) and removes the directory.
// The deploy/dev/devtest package wraps all this for tests.
//
// # Caveats
//
// A new registration entry reaches the agent within about two seconds (the
// server reloads entries and the agent syncs every second, the lowest the
// configuration allows); RegisterWorkload returns when the server has the
// entry, and AwaitX509SVID waits until the Workload API serves it.
//
// The stack is for development only: Vault keeps everything in memory and the
// root token is handed out freely. It needs a Unix system; on Linux the
// processes are also killed if the process that started them dies without
// calling Close (e.g. a test binary that times out).
package dev
