# Demo policy: read and write the demo reports secret.
path "secret/data/demo/reports" {
  capabilities = ["create", "update", "read"]
}
