# Demo policy: read the demo reports secret.
path "secret/data/demo/reports" {
  capabilities = ["read"]
}
