# Demo policy: obtain a PostgreSQL user for the orders database from Vault's
# database secrets engine (a dynamic secret; the dev stack mounts the engine
# when it starts PostgreSQL).
path "database/creds/orders-db" {
  capabilities = ["read"]
}
