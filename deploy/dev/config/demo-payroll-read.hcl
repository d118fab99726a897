# Demo policy: read the demo payroll secret.
path "secret/data/demo/payroll" {
  capabilities = ["read"]
}
