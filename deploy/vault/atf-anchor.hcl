# Policy "atf-anchor": the policy every lineage anchor token has. An anchor is
# held by the broker and exists to be the parent of an agent's or a grant's
# tokens, so that revoking it revokes everything below. A role anchor also
# holds the policies of one role, so that it can create batch credentials with
# them. It can create credentials and child anchors, and nothing else.

# Batch credentials: plain children, with a subset of the anchor's own
# policies (Vault refuses any other).
path "auth/token/create" {
  capabilities = ["update"]
}

# Service credentials under this anchor (bounded by role "atf-credential").
path "auth/token/create/atf-credential" {
  capabilities = ["update"]
}

# Child anchors: role anchors, and anchors of delegations further down the
# lineage (bounded by role "atf-anchor").
path "auth/token/create/atf-anchor" {
  capabilities = ["update"]
}
