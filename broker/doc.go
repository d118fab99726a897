// Package broker is the ATF broker's composition root: New opens the store,
// gets the broker's SVID, logs in to Vault and wires the packages that
// decide (decide), issue (issue), revoke (revoke), watch behaviour (watch)
// and change levels (levels) into the gRPC services, one package per API
// (agentapi, adminapi, approvalapi, responseapi, maturityapi), behind the
// gRPC edge (edge). Serve serves them; Close stops everything in order.
//
// docs/architecture.md draws the request path and the import rules.
package broker
