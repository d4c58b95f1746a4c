package mcp

import (
	"net/http"
	"testing"
)

func TestCheckMirroredHeaders(t *testing.T) {
	call := Envelope{Kind: KindRequest, Method: "tools/call", ID: "1", Name: "echo", MetaVersion: Version20260728}
	list := Envelope{Kind: KindRequest, Method: "tools/list", ID: "2"}
	tests := []struct {
		name string
		h    map[string]string
		env  Envelope
		ok   bool
	}{
		{"match", map[string]string{"Mcp-Method": "tools/call", "Mcp-Name": "echo"}, call, true},
		{"base64 name", map[string]string{"Mcp-Method": "tools/call", "Mcp-Name": "=?base64?ZWNobw==?="}, call, true},
		{"bad base64", map[string]string{"Mcp-Method": "tools/call", "Mcp-Name": "=?base64?!!?="}, call, false},
		{"method mismatch", map[string]string{"Mcp-Method": "tools/list", "Mcp-Name": "echo"}, call, false},
		{"method case", map[string]string{"Mcp-Method": "Tools/Call", "Mcp-Name": "echo"}, call, false},
		{"missing method", map[string]string{"Mcp-Name": "echo"}, call, false},
		{"missing name", map[string]string{"Mcp-Method": "tools/call"}, call, false},
		{"name mismatch", map[string]string{"Mcp-Method": "tools/call", "Mcp-Name": "rm"}, call, false},
		{"list needs no name", map[string]string{"Mcp-Method": "tools/list"}, list, true},
		{"response", map[string]string{"Mcp-Method": "x"}, Envelope{Kind: KindResponse, ID: "1"}, false},
		{"meta mismatch", map[string]string{"Mcp-Method": "tools/list"}, Envelope{Kind: KindRequest, Method: "tools/list", MetaVersion: "2025-11-25"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tt.h {
				h.Set(k, v)
			}
			err := CheckMirroredHeaders(h, Version20260728, &tt.env)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestEraOf(t *testing.T) {
	for v, want := range map[string]Era{
		"2024-11-05": EraLegacy, "2025-03-26": EraSession, "2025-11-25": EraSession,
		"2026-07-28": EraStateless, "2027-01-01": EraStateless, "garbage": EraUnknown, "2025-1-01x": EraUnknown,
	} {
		if got, _ := EraOf(v); got != want {
			t.Errorf("EraOf(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestClassifyBody(t *testing.T) {
	parse := func(body string) (*Call, error) {
		c := &Call{}
		err := ParseEnvelope([]byte(body), true, &c.Peek)
		return c, err
	}
	batch := `[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/list"}]`
	for _, tt := range []struct {
		version string
		body    string
		status  int
	}{
		{"", batch, 0},
		{"2025-03-26", batch, 0},
		{"2025-06-18", batch, 400},
		{"2026-07-28", batch, 400},
		{"", `[{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}]`, 400},
		{"", `{"jsonrpc":"2.0",`, 400},
	} {
		h := http.Header{}
		if tt.version != "" {
			h.Set(HeaderProtocolVersion, tt.version)
		}
		c, err := parse(tt.body)
		if ref := ClassifyHeaders(h, c); ref != nil {
			t.Fatal(ref)
		}
		ref := ClassifyBody(h, err, c)
		got := 0
		if ref != nil {
			got = ref.Status
		}
		if got != tt.status {
			t.Errorf("%s %s: status %d, want %d", tt.version, tt.body, got, tt.status)
		}
	}
	h := http.Header{}
	h.Set(HeaderProtocolVersion, "20x5")
	if ref := ClassifyHeaders(h, &Call{}); ref == nil || ref.Status != 400 {
		t.Errorf("invalid version accepted: %v", ref)
	}
	// A header the proxy reads comes once: an empty first value hides
	// nothing.
	for _, k := range []string{"Mcp-Session-Id", "mcp-protocol-version", "MCP-METHOD", "Mcp-Name", "Last-Event-ID"} {
		h := http.Header{}
		h.Add(k, "")
		h.Add(k, "x")
		if ref := ClassifyHeaders(h, &Call{}); ref == nil || ref.Status != 400 {
			t.Errorf("two %s headers accepted: %v", k, ref)
		}
	}
	// The stateless era refuses a header mismatch with -32020 and the id.
	h = http.Header{}
	h.Set(HeaderProtocolVersion, Version20260728)
	h.Set(HeaderMethod, "tools/list")
	c, err := parse(`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"x"}}`)
	ClassifyHeaders(h, c)
	ref := ClassifyBody(h, err, c)
	if ref == nil || ref.Code != CodeHeaderMismatch || ref.ID != "5" {
		t.Fatalf("mismatch refusal = %+v", ref)
	}
	if got := string(ref.Body()); got != `{"jsonrpc":"2.0","id":5,"error":{"code":-32020,"message":"header Mcp-Method: does not match the body's method"}}` {
		t.Errorf("body %s", got)
	}
}

func TestAppendError(t *testing.T) {
	got := string(AppendError(nil, "", -32000, "a \"quoted\"\n\x01 é \xff"))
	want := `{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"a \"quoted\"\u000a\u0001 é \ufffd"}}`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
