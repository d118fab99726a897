// Package policy holds the broker's default Casbin model and example
// segmentation policy (model.conf, policy.csv), embedded for tests and the
// demo. atfd itself reads them from the files named in its configuration.
package policy

import _ "embed"

// Model is the default Casbin model (model.conf).
//
//go:embed model.conf
var Model string

// Example is the example policy (policy.csv).
//
//go:embed policy.csv
var Example string
