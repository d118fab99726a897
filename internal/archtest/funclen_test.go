package archtest

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// maxFuncLines is the longest a function of production code may be, in
// lines from its signature to its closing brace: a reader should see what
// one function does at once. Tests and generated code are exempt.
const maxFuncLines = 80

// TestFunctionLength fails for every non-test, non-generated function of
// the module longer than maxFuncLines, naming it: split it into steps a
// reader can name.
func TestFunctionLength(t *testing.T) {
	var mod struct{ Dir string }
	if err := json.Unmarshal(goCmd(t, "", "list", "-m", "-json"), &mod); err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	fset := token.NewFileSet()
	checked := 0
	err := filepath.WalkDir(mod.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// Other modules (deploy/k8s), hidden and tool directories.
			if name := d.Name(); path != mod.Dir && (strings.HasPrefix(name, ".") || name == "bin" || name == "testdata" || fileExists(filepath.Join(path, "go.mod"))) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || strings.HasSuffix(path, ".pb.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		if ast.IsGenerated(f) {
			return nil
		}
		checked++
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			if n := fset.Position(fn.End()).Line - fset.Position(fn.Pos()).Line + 1; n > maxFuncLines {
				rel, _ := filepath.Rel(mod.Dir, path)
				t.Errorf("%s: %s is %d lines long, over %d: split it into steps a reader can name", rel, fn.Name.Name, n, maxFuncLines)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatal("no Go file checked")
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
