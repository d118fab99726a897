// Package broker is the ATF broker's composition root and gRPC edge: it
// wires the agent registry (store), SVID verification (attest), maturity
// gating (authz) and the Vault issuer (vault) into BrokerService, for agents,
// and AdminService, for the platform team.
//
// Every call is authenticated from the caller's SVID and every request is
// validated before a handler sees it. Errors become gRPC status codes here,
// and only here; internal detail is logged, never returned, and no token or
// secret is ever logged.
package broker
