package client

import (
	"go/ast"
	"go/build"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The client stands on the wire contract alone: it imports neither the
// server's packages nor, in its exported API, any type generated for the
// Raft log (fsmpb), so a change to the log schema or to the server is not
// a change to a user's build.
func TestPublicAPIIsTheClientsOwn(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if imp == "github.com/quorumq/quorumq/transport" || imp == "github.com/quorumq/quorumq/cluster" ||
			strings.HasPrefix(imp, "github.com/quorumq/quorumq/cluster/") {
			t.Errorf("client imports %s, a server package", imp)
		}
	}

	// Nor through the wire contract: the state machine and Raft are the
	// server's, whatever the client imports.
	deps, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, d := range strings.Fields(string(deps)) {
		if d == "github.com/quorumq/quorumq/fsm" || d == "github.com/hashicorp/raft" {
			t.Errorf("client depends on %s, a package of the server", d)
		}
	}

	fset := token.NewFileSet()
	for _, name := range pkg.GoFiles {
		f, err := parser.ParseFile(fset, filepath.Join(".", name), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			for _, n := range exportedAPI(d) {
				ast.Inspect(n, func(n ast.Node) bool {
					if sel, ok := n.(*ast.SelectorExpr); ok {
						if id, ok := sel.X.(*ast.Ident); ok && id.Name == "fsmpb" {
							t.Errorf("%s: the exported API uses fsmpb.%s", fset.Position(sel.Pos()), sel.Sel.Name)
						}
					}
					return true
				})
			}
		}
	}
}

// exportedAPI returns the parts of d that go doc shows: signatures of
// exported functions and methods, exported fields of exported types, and
// types of exported variables and constants.
func exportedAPI(d ast.Decl) []ast.Node {
	var out []ast.Node
	switch d := d.(type) {
	case *ast.FuncDecl:
		if d.Name.IsExported() && (d.Recv == nil || exportedRecv(d.Recv)) {
			out = append(out, d.Type)
		}
	case *ast.GenDecl:
		for _, s := range d.Specs {
			switch s := s.(type) {
			case *ast.TypeSpec:
				if !s.Name.IsExported() {
					continue
				}
				st, ok := s.Type.(*ast.StructType)
				if !ok {
					out = append(out, s.Type)
					continue
				}
				for _, fld := range st.Fields.List {
					if len(fld.Names) == 0 || slices.ContainsFunc(fld.Names, (*ast.Ident).IsExported) {
						out = append(out, fld.Type)
					}
				}
			case *ast.ValueSpec:
				if slices.ContainsFunc(s.Names, (*ast.Ident).IsExported) && s.Type != nil {
					out = append(out, s.Type)
				}
			}
		}
	}
	return out
}

func exportedRecv(r *ast.FieldList) bool {
	t := r.List[0].Type
	if s, ok := t.(*ast.StarExpr); ok {
		t = s.X
	}
	id, ok := t.(*ast.Ident)
	return ok && id.IsExported()
}
