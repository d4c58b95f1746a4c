package caddymodule

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"reflect"
	"strings"
	"testing"
)

// TestConfigFieldDocs checks that every JSON field of the modules'
// config types has a comment of its own, starting with its name, that
// says its default (caddyserver.com renders these comments as the
// modules' documentation).
func TestConfigFieldDocs(t *testing.T) {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi fs.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	fields := 0
	for _, pkg := range pkgs {
		for _, f := range pkg.Files {
			ast.Inspect(f, func(n ast.Node) bool {
				ts, ok := n.(*ast.TypeSpec)
				if !ok || !ts.Name.IsExported() {
					return true
				}
				st, ok := ts.Type.(*ast.StructType)
				if !ok {
					return true
				}
				for _, fd := range st.Fields.List {
					if fd.Tag == nil || !strings.Contains(fd.Tag.Value, "json:") || len(fd.Names) == 0 {
						continue
					}
					tag := reflect.StructTag(strings.Trim(fd.Tag.Value, "`")).Get("json")
					if tag == "-" {
						continue
					}
					fields++
					where := fset.Position(fd.Pos()).String() + " " + ts.Name.Name
					name := fd.Names[0].Name
					if len(fd.Names) > 1 {
						t.Errorf("%s: fields %v share one comment", where, fd.Names)
						continue
					}
					doc := fd.Doc.Text()
					switch {
					case doc == "":
						t.Errorf("%s.%s: no comment", where, name)
					case !strings.HasPrefix(doc, name+" ") && !strings.HasPrefix(doc, name+","):
						t.Errorf("%s.%s: the comment does not start with the field's name: %q", where, name, firstLine(doc))
					case !strings.Contains(doc, "Default") && !strings.Contains(strings.ToLower(doc), "required"):
						t.Errorf("%s.%s: the comment gives no default (or says Required)", where, name)
					}
				}
				return true
			})
		}
	}
	if fields < 50 {
		t.Fatalf("only %d config fields found", fields)
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
