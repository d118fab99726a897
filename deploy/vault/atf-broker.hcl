# Policy "atf-broker": what the ATF broker's own Vault token (atfd) may do.
# It can mint tokens only through the two token roles, whose allowed_policies
# bound what it can hand out, and it can find and revoke what it minted by
# accessor. It cannot read secrets, write policies or touch any auth method.

# Issue an agent credential: a child token with a subset of the role's
# allowed_policies, non-renewable, at most 1 h (role "atf-credential").
path "auth/token/create/atf-credential" {
  capabilities = ["update"]
}

# Create a lineage anchor (role "atf-anchor"): a token held by the broker, never
# handed to an agent, under which an agent's or a grant's credentials are made
# so that revoking the anchor revokes the whole lineage.
path "auth/token/create/atf-anchor" {
  capabilities = ["update"]
}

# Revoke a credential or an anchor (and every token below it) by accessor; the
# broker keeps accessors, never the tokens themselves.
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}

# Check that a recorded accessor is still live (startup reconciliation and
# revocation retries).
path "auth/token/lookup-accessor" {
  capabilities = ["update"]
}

# Read its own token's TTL and policies, to schedule renewal and to report
# health.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

# Keep its own periodic token alive.
path "auth/token/renew-self" {
  capabilities = ["update"]
}

# Sign OAuth access tokens (docs/oauth.md) with the transit key atf-oauth,
# whose private half never leaves Vault; read its public keys for the JWKS;
# rotate it on schedule (oauth.rotate_every).
path "transit/sign/atf-oauth" {
  capabilities = ["update"]
}
path "transit/keys/atf-oauth" {
  capabilities = ["read"]
}
path "transit/keys/atf-oauth/rotate" {
  capabilities = ["update"]
}

# Let atfd verify at startup that its token holds the capabilities above, so a
# misconfigured token fails fast with a clear message instead of at first use.
path "sys/capabilities-self" {
  capabilities = ["update"]
}
