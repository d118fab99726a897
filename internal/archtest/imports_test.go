// Package archtest holds the module's import rules as data and checks them
// against what `go list` reports, so that `make test` fails when a change
// breaks the layering the package layout promises.
//
// # Basics
//
// A rule says that the production packages matching from, minus those
// matching except, may not import the packages matching mayNotImport, and
// why. Production packages are all the module's packages but its test
// helpers: packages for _test.go files to import, named "...test" and
// importing testing (attest/attesttest, deploy/dev/brokertest,
// deploy/dev/devtest). TestTestHelpers keeps them out of production code.
// Where a rule exempts more, it says so with except: the dev-stack rule
// exempts deploy/dev itself, whose commands and fixtures are the dev stack.
//
// Patterns are matched element by element against import paths:
//
//   - "./x/y" is relative to the module root; anything else is a full import
//     path ("net/http", "google.golang.org/grpc/...").
//   - "*" and the other path.Match wildcards match within one element:
//     "./broker/api/*" is every package directly below broker/api.
//   - a "..." element matches any number of elements, none included:
//     "./broker/..." is broker and everything below it.
//
// # Caveats
//
// Only direct imports of non-test files count (go list's Imports, for the
// current GOOS and GOARCH); _test.go files may import anything. Since every
// package of the module is checked, a forbidden edge within the module is
// caught where it is made, but a rule whose target is outside the module
// ("may not import google.golang.org/grpc") sees only the direct import.
// A rule that applies to no package fails, so that a renamed package does
// not leave a rule silently checking nothing. deploy/k8s is a module of its
// own and is not checked here.
package archtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path"
	"slices"
	"strings"
	"testing"
)

// rule forbids the production packages matching from, except those
// matching except, to import the packages matching mayNotImport.
type rule struct {
	from, except, mayNotImport string
	why                        string
}

func (r rule) String() string {
	if r.except != "" {
		return fmt.Sprintf("%q (except %q) may not import %q", r.from, r.except, r.mayNotImport)
	}
	return fmt.Sprintf("%q may not import %q", r.from, r.mayNotImport)
}

const leafWhy = "attest, authz and delegation are leaves (cmd → broker → {attest, authz, delegation} → libraries): " +
	"each stands alone, and the broker composes them"

// rules are the module's import rules.
var rules = []rule{
	{from: "./attest/...", mayNotImport: "./authz/...", why: leafWhy},
	{from: "./attest/...", mayNotImport: "./delegation/...", why: leafWhy},
	{from: "./attest/...", mayNotImport: "./broker/...", why: leafWhy},
	{from: "./authz/...", mayNotImport: "./attest/...", why: leafWhy},
	{from: "./authz/...", mayNotImport: "./delegation/...", why: leafWhy},
	{from: "./authz/...", mayNotImport: "./broker/...", why: leafWhy},
	{from: "./delegation/...", mayNotImport: "./attest/...", why: leafWhy},
	{from: "./delegation/...", mayNotImport: "./authz/...", why: leafWhy},
	{from: "./delegation/...", mayNotImport: "./broker/...", why: leafWhy},
	{from: "./...", except: "./deploy/dev/...", mayNotImport: "./deploy/dev/...",
		why: "the dev stack (local SPIRE and Vault, its fixtures, the demo and benchmark tools) is for development " +
			"and tests; production code may not link it"},
	{from: "./oauth/verify", mayNotImport: "./...",
		why: "resource servers link the token verifier on its own (docs/oauth-verifier.md): it imports nothing of the " +
			"module, so it pulls in neither the broker nor its dependencies"},

	// Inside the broker (docs/architecture.md).
	{from: "./broker/*api", mayNotImport: "./broker/*api",
		why: "each API package receives its collaborators; what two services share has a package of its own"},
	{from: "./broker/...", except: "./broker", mayNotImport: "./broker/*api",
		why: "only the composition root wires the API packages"},
	{from: "./broker/decide", mayNotImport: "google.golang.org/grpc/...",
		why: "the decision is a pure function of its inputs: no transport, no status codes"},
	{from: "./broker/decide", mayNotImport: "./proto/...",
		why: "the decision is a pure function of its inputs: the edge converts messages"},
	{from: "./broker/fault", mayNotImport: "./...",
		why: "every package may use fault, so it imports nothing of the module"},
	{from: "./broker/edge", mayNotImport: "./broker/decide",
		why: "the edge maps errors and authenticates; it knows no decision"},
	{from: "./broker/console", mayNotImport: "./broker/store",
		why: "the console acts through the services the gRPC API serves, so that their rules hold for people as for workloads"},
	{from: "./broker/*api", mayNotImport: "./broker/revoke", why: apiWhy},
	{from: "./broker/*api", mayNotImport: "./broker/issue", why: apiWhy},
	{from: "./broker/*api", mayNotImport: "./broker/levels", why: apiWhy},
	{from: "./broker/*api", mayNotImport: "./broker/watch", why: apiWhy},
	{from: "./broker/*api", mayNotImport: "./broker/approval", why: apiWhy},
	{from: "./broker/*api", mayNotImport: "./broker/limits", why: apiWhy},
	{from: "./broker/*api", mayNotImport: "./broker/policy", why: apiWhy},
}

const apiWhy = "an API package receives its collaborators as small interfaces it declares itself; the composition root " +
	"hands it the implementations"

// TestImportRules checks every rule against the module's production
// packages.
func TestImportRules(t *testing.T) {
	module, pkgs := listPackages(t)
	for _, r := range rules {
		from, except, target := expand(module, r.from), expand(module, r.except), expand(module, r.mayNotImport)
		matched := false
		for _, p := range pkgs {
			if isTestHelper(p) || !match(from, p.ImportPath) || (except != "" && match(except, p.ImportPath)) {
				continue
			}
			matched = true
			for _, imp := range p.Imports {
				if match(target, imp) {
					t.Errorf("%s imports %s, which breaks the rule %s: %s", short(module, p.ImportPath), short(module, imp), r, r.why)
				}
			}
		}
		if !matched {
			t.Errorf("rule %s applies to no package: fix the pattern, or drop the rule if its packages are gone", r)
		}
		// A target inside the module must name packages that exist, or the
		// rule checks nothing after a rename.
		if strings.HasPrefix(r.mayNotImport, "./") && !slices.ContainsFunc(pkgs, func(p pkg) bool { return match(target, p.ImportPath) }) {
			t.Errorf("rule %s forbids a package that does not exist: fix the pattern, or drop the rule", r)
		}
	}
}

// Test helpers are exempt from the rules, which holds only while they stay
// out of production: a package that imports testing is named for a test
// helper, and production code imports no test helper.
func TestTestHelpers(t *testing.T) {
	module, pkgs := listPackages(t)
	helpers := map[string]bool{}
	for _, p := range pkgs {
		if isTestHelper(p) {
			helpers[p.ImportPath] = true
		} else if slices.Contains(p.Imports, "testing") {
			t.Errorf("%s imports testing: only test helpers may, and their names end in \"test\"", short(module, p.ImportPath))
		}
	}
	for _, p := range pkgs {
		if helpers[p.ImportPath] {
			continue
		}
		for _, imp := range p.Imports {
			if helpers[imp] {
				t.Errorf("%s imports the test helper %s: production code may not link test helpers", short(module, p.ImportPath), short(module, imp))
			}
		}
	}
}

// isTestHelper reports whether p is a test helper: a package for _test.go
// files to import, such as attest/attesttest or deploy/dev/brokertest. It
// is one by name and by content, so that attest, whose name also ends in
// "test", stays production code.
func isTestHelper(p pkg) bool {
	return strings.HasSuffix(path.Base(p.ImportPath), "test") && slices.Contains(p.Imports, "testing")
}

// The rules are well-formed: valid patterns, and a reason for each.
func TestRulesWellFormed(t *testing.T) {
	for _, r := range rules {
		for _, p := range []string{r.from, r.except, r.mayNotImport} {
			if p == "" {
				continue
			}
			for _, elem := range strings.Split(p, "/") {
				if _, err := path.Match(elem, ""); err != nil {
					t.Errorf("rule %s: pattern %q: %v", r, p, err)
				}
			}
		}
		if r.from == "" || r.mayNotImport == "" || r.why == "" {
			t.Errorf("rule %+v: from, mayNotImport and why are required", r)
		}
	}
}

func TestMatch(t *testing.T) {
	const mod = "example.org/m"
	for _, tt := range []struct {
		pattern, path string
		want          bool
	}{
		{"./attest", mod + "/attest", true},
		{"./attest", mod + "/attest/attesttest", false},
		{"./attest/...", mod + "/attest", true},
		{"./attest/...", mod + "/attest/attesttest", true},
		{"./attest/...", mod + "/attestx", false},
		{"./attest/...", "other.org/m/attest", false},
		{"./...", mod, true},
		{"./...", mod + "/broker/store", true},
		{"./...", "example.org/mx", false},
		{"./broker/api/*", mod + "/broker/api/admin", true},
		{"./broker/api/*", mod + "/broker/api", false},
		{"./broker/api/*", mod + "/broker/api/admin/v1", false},
		{"./broker/*/v1", mod + "/broker/api/v1", true},
		{"./broker/*store", mod + "/broker/store", true},
		{"./broker/*store", mod + "/broker/keystore", true},
		{"./.../*test", mod + "/attest/attesttest", true},
		{"./.../*test", mod + "/attest", true},
		{"./.../*test", mod + "/attest/verify", false},
		{"./.../*test", "other.org/m/footest", false},
		{"./deploy/.../demo", mod + "/deploy/demo", true},
		{"./deploy/.../demo", mod + "/deploy/dev/demo", true},
		{"./deploy/.../demo", mod + "/deploy/dev/demo/x", false},
		{"google.golang.org/grpc/...", "google.golang.org/grpc", true},
		{"google.golang.org/grpc/...", "google.golang.org/grpc/codes", true},
		{"google.golang.org/grpc/...", "google.golang.org/grpcx", false},
		{"google.golang.org/grpc/...", mod + "/google.golang.org/grpc", false},
		{"net/http", "net/http", true},
		{"net/http", "net/http/httptest", false},
		{"net/http", mod + "/net/http", false},
	} {
		if got := match(expand(mod, tt.pattern), tt.path); got != tt.want {
			t.Errorf("match(%q, %q) = %t, want %t", tt.pattern, tt.path, got, tt.want)
		}
	}
}

// expand makes a module-relative pattern a full one.
func expand(module, pattern string) string {
	if pattern == "." {
		return module
	}
	if rest, ok := strings.CutPrefix(pattern, "./"); ok {
		return module + "/" + rest
	}
	return pattern
}

// match reports whether the import path p matches pattern, element by
// element: path.Match within an element, "..." for any number of elements.
func match(pattern, p string) bool {
	return matchElems(strings.Split(pattern, "/"), strings.Split(p, "/"))
}

func matchElems(pattern, p []string) bool {
	if len(pattern) == 0 {
		return len(p) == 0
	}
	if pattern[0] == "..." {
		for i := 0; i <= len(p); i++ {
			if matchElems(pattern[1:], p[i:]) {
				return true
			}
		}
		return false
	}
	if len(p) == 0 {
		return false
	}
	ok, _ := path.Match(pattern[0], p[0])
	return ok && matchElems(pattern[1:], p[1:])
}

// short strips the module path, for messages.
func short(module, p string) string {
	if rest, ok := strings.CutPrefix(p, module+"/"); ok {
		return rest
	}
	return p
}

type pkg struct {
	ImportPath string
	Imports    []string
}

// listPackages returns the main module's path and its packages, as
// `go list ./...` from the module root sees them.
func listPackages(t *testing.T) (string, []pkg) {
	t.Helper()
	var mod struct{ Path, Dir string }
	if err := json.Unmarshal(goCmd(t, "", "list", "-m", "-json"), &mod); err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(goCmd(t, mod.Dir, "list", "-json=ImportPath,Imports", "./...")))
	var pkgs []pkg
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) == 0 {
		t.Fatalf("go list ./... in %s listed no packages", mod.Dir)
	}
	return mod.Path, pkgs
}

// goCmd runs the go command in dir ("" for the test's own) and returns its
// standard output.
func goCmd(t *testing.T, dir string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}
