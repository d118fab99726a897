# Policy "atf-anchor": the only policy of a lineage anchor token. An anchor is
# held by the broker and exists to be the parent of an agent's or a grant's
# tokens, so that revoking it revokes everything below. It can create credential
# tokens and child anchors through the two token roles, and nothing else.

# Credentials under this anchor (bounded by role "atf-credential").
path "auth/token/create/atf-credential" {
  capabilities = ["update"]
}

# Child anchors, for delegations further down the lineage.
path "auth/token/create/atf-anchor" {
  capabilities = ["update"]
}
