package mcp

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// streamValid runs the stream check over b in chunks of n bytes.
func streamValid(b []byte, n int) error {
	var v streamCheck
	for len(b) > 0 {
		k := min(n, len(b))
		if _, err := v.write(b[:k]); err != nil {
			return err
		}
		b = b[k:]
	}
	return v.end()
}

func TestStreamCheck(t *testing.T) {
	for _, s := range []string{
		``, ` `, `0`, `-0`, `-`, `01`, `1.`, `1.5`, `1e`, `1e+`, `1E-7`, `1.5e3 `, `-01`, `.5`,
		`true`, `tru`, `truex`, `nul`, `null `, `false`, `"a"`, `"\u00e9"`, `"\uZZZZ"`, `"\x"`,
		`"a` + "\x01" + `"`, "\"\xc3\xa9\"", "\"\xc3\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"",
		"\"\xf0\x9f\x98\x80\"", "\"\xe0\x80\xaf\"", `[]`, `[1,]`, `[,1]`, `[1 2]`, `{}`, `{"a"}`,
		`{"a":1,}`, `{"a":1}`, `{1:2}`, `{"a":[{"b":{}}]}`, `[}`, `{]`, `{"a":1]`, `[1}`, `1 1`,
		`{"a":1} `, `{"a":1} x`, "\t[\r\n]\n", `[[]]]`, `"\/\b\f\n\r\t\\\""`, "\xef\xbb\xbf{}",
		strings.Repeat("[", maxNesting) + strings.Repeat("]", maxNesting),
		strings.Repeat("[", maxNesting+1) + strings.Repeat("]", maxNesting+1),
		strings.Repeat(`{"a":`, maxNesting) + "1" + strings.Repeat("}", maxNesting),
		strings.Repeat(`{"a":`, maxNesting+1) + "1" + strings.Repeat("}", maxNesting+1),
	} {
		want := json.Valid([]byte(s)) && utf8.ValidString(s)
		for _, n := range []int{1, 2, 3, 7, 1 << 20} {
			if got := streamValid([]byte(s), n) == nil; got != want {
				t.Errorf("%.40q in chunks of %d: valid %v, want %v", s, n, got, want)
			}
		}
	}
}

// FuzzStreamCheck checks that the stream check accepts exactly what
// json.Valid accepts in valid UTF-8, whatever the chunks it is pushed in.
func FuzzStreamCheck(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":[1,2.5e-3,true,false,null]}}}`,
		`[{"a":"\u00e9\ud83d\ude00"},-0.1E+2]`, "\"\xe2\x82\xac\"", `{"a":}`, `[1,]`,
	} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, b []byte, n uint8) {
		want := json.Valid(b) && utf8.Valid(b)
		if got := streamValid(b, 1+int(n)) == nil; got != want {
			t.Fatalf("%q in chunks of %d: valid %v, want %v", b, 1+int(n), got, want)
		}
	})
}

func BenchmarkStreamCheck(b *testing.B) {
	body := []byte(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"` +
		strings.Repeat("hello world, ", 5000) + `"}}}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		v := newMessageCheck(1 << 10)
		if _, err := v.write(body); err != nil {
			b.Fatal(err)
		}
		if err := v.end(); err != nil {
			b.Fatal(err)
		}
	}
}
