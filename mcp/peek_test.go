package mcp

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseEnvelope(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		complete bool
		want     []Envelope
		batch    bool
		err      error
	}{
		{name: "request", complete: true,
			body: `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}`,
			want: []Envelope{{Kind: KindRequest, Method: "tools/call", ID: "7", Name: "echo"}}},
		{name: "string id and uri", complete: true,
			body: `{"method":"resources/read","params":{"uri":"file:///a"},"id":"x-1","jsonrpc":"2.0"}`,
			want: []Envelope{{Kind: KindRequest, Method: "resources/read", ID: `"x-1"`, Name: "file:///a"}}},
		{name: "notification", complete: true,
			body: `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3,"reason":"x"}}`,
			want: []Envelope{{Kind: KindNotification, Method: "notifications/cancelled", RequestID: "3"}}},
		{name: "response", complete: true,
			body: `{"jsonrpc":"2.0","id":4,"result":{"content":[]}}`,
			want: []Envelope{{Kind: KindResponse, ID: "4"}}},
		{name: "error response", complete: true,
			body: `{"jsonrpc":"2.0","id":4,"error":{"code":1,"message":"m"}}`,
			want: []Envelope{{Kind: KindResponse, ID: "4"}}},
		{name: "initialize", complete: true,
			body: `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{}}}`,
			want: []Envelope{{Kind: KindRequest, Method: "initialize", ID: "0", ProtocolVersion: "2025-06-18"}}},
		{name: "meta version", complete: true,
			body: `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}`,
			want: []Envelope{{Kind: KindRequest, Method: "tools/list", ID: "1", MetaVersion: "2026-07-28"}}},
		{name: "escaped method", complete: true,
			body: `{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"a\u0062"}}`,
			want: []Envelope{{Kind: KindRequest, Method: "tools/call", ID: "1", Name: "ab"}}},
		{name: "null id is a notification", complete: true,
			body: `{"jsonrpc":"2.0","id":null,"method":"ping"}`,
			want: []Envelope{{Kind: KindNotification, Method: "ping"}}},
		{name: "batch", complete: true, batch: true,
			body: ` [ {"jsonrpc":"2.0","id":1,"method":"ping"}, {"jsonrpc":"2.0","method":"notifications/initialized"} ] `,
			want: []Envelope{{Kind: KindRequest, Method: "ping", ID: "1"}, {Kind: KindNotification, Method: "notifications/initialized"}}},
		{name: "batch ids of another kind or owner", complete: true, batch: true,
			body: `[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":"1","method":"ping"},{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":null,"method":"ping"},{"jsonrpc":"2.0","id":null,"method":"ping"}]`,
			want: []Envelope{{Kind: KindRequest, Method: "ping", ID: "1"}, {Kind: KindRequest, Method: "ping", ID: `"1"`},
				{Kind: KindResponse, ID: "1"}, {Kind: KindNotification, Method: "ping"}, {Kind: KindNotification, Method: "ping"}}},
		{name: "truncated after name", complete: false,
			body: `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"big","arguments":{"blob":"aaaaaaaa`,
			want: []Envelope{{Kind: KindRequest, Method: "tools/call", ID: "9", Name: "big"}}},
		{name: "truncated before method", complete: false,
			body: `{"jsonrpc":"2.0","id":9,"params":{"name":"big","arguments":{"blob":"aaaaaaaa`,
			err:  ErrTooLarge},
		{name: "malformed", complete: true, body: `{"jsonrpc":"2.0",`, err: ErrMalformed},
		{name: "garbage", complete: true, body: "\x00\xff\xfe", err: ErrMalformed},
		{name: "empty", complete: true, body: "  ", err: ErrEmptyBody},
		{name: "not an object", complete: true, body: `"hello"`, err: ErrNotEnvelope},
		{name: "no method or result", complete: true, body: `{"jsonrpc":"2.0","id":1}`, err: ErrNotEnvelope},
		{name: "empty batch", complete: true, body: `[]`, err: ErrNotEnvelope},
		{name: "batch of scalars", complete: true, body: `[1,2]`, err: ErrNotEnvelope},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Peek
			err := ParseEnvelope([]byte(tt.body), tt.complete, &p)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			if p.Batch != tt.batch {
				t.Errorf("batch = %v", p.Batch)
			}
			if len(p.Messages) != len(tt.want) {
				t.Fatalf("got %d messages, want %d", len(p.Messages), len(tt.want))
			}
			for i := range tt.want {
				if !reflect.DeepEqual(p.Messages[i], tt.want[i]) {
					t.Errorf("message %d = %+v, want %+v", i, p.Messages[i], tt.want[i])
				}
			}
		})
	}
}

func TestParseEnvelopeBatchLimit(t *testing.T) {
	body := "[" + strings.Repeat(`{"jsonrpc":"2.0","method":"ping"},`, MaxBatch) + `{"jsonrpc":"2.0","method":"ping"}]`
	var p Peek
	if err := ParseEnvelope([]byte(body), true, &p); !errors.Is(err, ErrBatchTooLong) {
		t.Fatalf("err = %v", err)
	}
}

func TestParseEnvelopeDeepNesting(t *testing.T) {
	// Deep nesting inside params is skipped without recursion, up to the
	// depth encoding/json accepts.
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","x":` + strings.Repeat("[", maxNesting-2) + strings.Repeat("]", maxNesting-2) + `}}`
	for _, complete := range []bool{true, false} {
		var p Peek
		if err := ParseEnvelope([]byte(body), complete, &p); err != nil {
			t.Fatal(err)
		}
		if p.First().Method != "tools/call" {
			t.Fatalf("method %q", p.First().Method)
		}
	}
	body = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","x":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}}`
	for _, complete := range []bool{true, false} {
		var p Peek
		if err := ParseEnvelope([]byte(body), complete, &p); !errors.Is(err, ErrMalformed) {
			t.Fatalf("err = %v", err)
		}
	}
}

func BenchmarkParseEnvelope(b *testing.B) {
	body := []byte(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello world"}}}`)
	var p Peek
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if err := ParseEnvelope(body, true, &p); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzParseEnvelope checks that the peek never panics, that a complete
// body it accepts is valid JSON with a known message kind, and that a
// truncated prefix of an accepted body yields the same method when it
// yields one at all.
func FuzzParseEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}`,
		`[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]`,
		`{"jsonrpc":"2.0","id":"a","result":{}}`,
		`{"jsonrpc":"2.0","method":"x","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}`,
		"\x00garbage", `{"a":"\"}`, `[[[[`,
	} {
		f.Add([]byte(s), 10)
	}
	f.Fuzz(func(t *testing.T, body []byte, cut int) {
		var p Peek
		err := ParseEnvelope(body, true, &p)
		if err == nil {
			for _, m := range p.Messages {
				if m.Kind == KindInvalid {
					t.Fatalf("accepted message of invalid kind: %q", body)
				}
			}
		}
		if cut < 0 {
			cut = -cut
		}
		if len(body) > 0 {
			cut %= len(body) + 1
			var q Peek
			err2 := ParseEnvelope(body[:cut], false, &q)
			if err == nil && err2 == nil && !p.Batch && q.First().Method != "" && q.First().Method != p.First().Method {
				t.Fatalf("truncated method %q, whole %q", q.First().Method, p.First().Method)
			}
		}
	})
}

func TestParseEnvelopeDuplicateKeys(t *testing.T) {
	for _, body := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}`,
		`{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}`,
	} {
		var p Peek
		if err := ParseEnvelope([]byte(body), true, &p); !errors.Is(err, ErrAmbiguous) {
			t.Errorf("%s: err = %v, want ErrAmbiguous", body, err)
		}
	}
}

// BenchmarkPeek classifies small complete tools/call bodies as the SDKs
// write them, and a completion of a prompt.
func BenchmarkPeek(b *testing.B) {
	for _, bc := range []struct{ name, body string }{
		{"tools-call", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello world"}}}`},
		{"typescript", `{"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello world"}},"jsonrpc":"2.0","id":7}`},
		{"go-sdk-meta", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"_meta":{"progressToken":"p1"},"name":"echo","arguments":{"text":"hi"}}}`},
		{"completion", `{"jsonrpc":"2.0","id":7,"method":"completion/complete","params":{"argument":{"name":"target","value":"pr"},"ref":{"type":"ref/prompt","name":"greet"}}}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			body := []byte(bc.body)
			var p Peek
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if err := ParseEnvelope(body, true, &p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestScannerStr checks where a string ends: escaped quotes and
// backslashes anywhere, a long run without escapes, and a string cut
// before its end.
func TestScannerStr(t *testing.T) {
	long := strings.Repeat("x", 1000)
	for _, tc := range []struct {
		in, raw string
		escaped bool
		err     bool
	}{
		{in: `"abc",`, raw: `abc`},
		{in: `"",`, raw: ``},
		{in: `"a\"b",`, raw: `a\"b`, escaped: true},
		{in: `"a\\",`, raw: `a\\`, escaped: true},
		{in: `"\\\"",`, raw: `\\\"`, escaped: true},
		{in: `"` + long + `\"` + long + `",`, raw: long + `\"` + long, escaped: true},
		{in: `"` + long + `",`, raw: long},
		{in: `"\u0022",`, raw: `\u0022`, escaped: true},
		{in: `"abc`, err: true},
		{in: `"abc\"`, err: true},
		{in: `"abc\`, err: true},
	} {
		s := scanner{b: []byte(tc.in)}
		raw, esc, err := s.str()
		if (err != nil) != tc.err {
			t.Errorf("%.40q: err %v", tc.in, err)
			continue
		}
		if tc.err {
			continue
		}
		if string(raw) != tc.raw || esc != tc.escaped || s.b[s.i] != ',' {
			t.Errorf("%.40q: raw %.40q escaped %v, next %q", tc.in, raw, esc, s.b[s.i])
		}
	}
}
