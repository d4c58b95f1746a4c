package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
)

// requestWith returns a request carrying a Replacer and Caddy's vars, the
// client address among them, as Caddy's server prepares one.
func requestWith(method, body, clientIP string, hdr map[string]string) *http.Request {
	r := httptest.NewRequest(method, "/mcp", strings.NewReader(body))
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	repl := caddy.NewReplacer()
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: clientIP})
	r = r.WithContext(ctx)
	repl.Set("http.request.header.X-Client", r.Header.Get("X-Client"))
	repl.Set("http.vars.client_ip", clientIP)
	return r
}

func TestClientKeyOf(t *testing.T) {
	long := strings.Repeat("k", maxClientKey+1)
	cases := []struct {
		clientKey, ip, header string
		prefix                int
		want                  string
	}{
		{defaultClientKey, "192.0.2.7", "", 64, "192.0.2.7"},
		{"{http.request.header.X-Client}", "192.0.2.7", "tenant-a", 64, "tenant-a"},
		// an empty value falls back to the address
		{"{http.request.header.X-Client}", "192.0.2.7", "", 64, "192.0.2.7"},
		// an IPv6 client stands for its network
		{defaultClientKey, "2001:db8:1:2:3:4:5:6", "", 64, "2001:db8:1:2::/64"},
		{defaultClientKey, "2001:db8:1:2:3:4:5:6", "", 48, "2001:db8:1::/48"},
		// a long key is kept as its hash
		{"{http.request.header.X-Client}", "192.0.2.7", long, 64, ""},
	}
	for _, c := range cases {
		h := &Handler{clientKey: c.clientKey, ipv6Prefix: c.prefix}
		r := requestWith("POST", "", c.ip, map[string]string{"X-Client": c.header})
		got := h.clientKeyOf(r)
		if c.want == "" {
			if !strings.HasPrefix(got, "sha256:") || len(got) != len("sha256:")+32 {
				t.Errorf("a %d-byte key gave %q, want its hash", len(c.header), got)
			}
			continue
		}
		if got != c.want {
			t.Errorf("%s with %s / %q, /%d: %q, want %q", c.clientKey, c.ip, c.header, c.prefix, got, c.want)
		}
	}
}

func TestUpstreamRegistry(t *testing.T) {
	a := &Handler{upstreams: map[string]struct{}{"10.0.0.1:80": {}}}
	b := &Handler{upstreams: map[string]struct{}{"10.0.0.1:80": {}, "10.0.0.2:80": {}}}
	dynamic := &Handler{}
	for _, h := range []*Handler{a, b, dynamic} {
		h.registerUpstreams()
		defer h.unregisterUpstreams()
	}
	if got := handlerFor("10.0.0.1:80"); got != b {
		t.Errorf("the newest handler of an upstream is not the one found")
	}
	if got := handlerFor("10.0.0.3:80"); got != dynamic {
		t.Errorf("an upstream no handler names is not served by the dynamic one")
	}
	b.unregisterUpstreams()
	if got := handlerFor("10.0.0.1:80"); got != a {
		t.Errorf("after the newest left, the older handler is not found")
	}
	if got := handlerFor("10.0.0.2:80"); got != dynamic {
		t.Errorf("an upstream only a removed handler named is not left to the dynamic one")
	}
	dynamic.unregisterUpstreams()
	a.unregisterUpstreams()
	if got := handlerFor("10.0.0.1:80"); got != nil {
		t.Errorf("a handler found after all left")
	}
}

func TestAuditRecord(t *testing.T) {
	// Encoded as Caddy's loggers do, during the write: the record a
	// write is given is the Writer's, reused once it returns.
	var out bytes.Buffer
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&out), zapcore.InfoLevel)
	a := &auditor{logger: zap.New(core), warn: zap.NewNop()}
	var err error
	a.Auditor, err = policy.NewAuditor(policy.AuditSettings{Arguments: true, Redact: []string{"/token"}}, a.write)
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{auditor: a}

	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"deploy","arguments":{"token":"t","env":"prod"}}}`
	x := &exchange{r: requestWith("POST", body, "192.0.2.7", nil), status: 200, decision: "allow", start: time.Now(), release: func(int) {}}
	if err := mcp.ParseEnvelope([]byte(body), true, &x.call.Peek); err != nil {
		t.Fatal(err)
	}
	x.body.Whole = []byte(body)
	h.audit(x, &countingWriter{n: 42})

	// A GET with no message: its method is the HTTP method, no target.
	y := &exchange{r: requestWith("GET", "", "192.0.2.8", nil), status: 200, decision: "allow", start: time.Now(), release: func(int) {}, clientKey: "tenant-b"}
	h.audit(y, nil)
	if !a.Close(5 * time.Second) {
		t.Fatal("audit records not written")
	}

	var entries []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(out.String()), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		entries = append(entries, e)
	}
	if len(entries) != 2 {
		t.Fatalf("%d records, want 2", len(entries))
	}
	first := entries[0]
	want := map[string]any{"client": "192.0.2.7", "method": "tools/call", "tool": "deploy", "decision": "allow",
		"status": 200.0, "bytes_in": float64(len(body)), "bytes_out": 42.0, "msg": auditRecordDescription}
	for k, v := range want {
		if first[k] != v {
			t.Errorf("tools/call record %s = %#v, want %#v", k, first[k], v)
		}
	}
	if args, _ := first["arguments"].(map[string]any); args["token"] != "REDACTED" || args["env"] != "prod" {
		t.Errorf("arguments %#v", first["arguments"])
	}
	for _, k := range []string{"rule", "error_code"} {
		if _, ok := first[k]; ok {
			t.Errorf("an allowed request's record has %s", k)
		}
	}
	second := entries[1]
	if second["method"] != "GET" || second["client"] != "tenant-b" || second["bytes_out"] != 0.0 {
		t.Errorf("GET record %v", second)
	}
	if _, ok := second["arguments"]; ok {
		t.Errorf("GET record has arguments")
	}
}

func TestIdleUnprovisioned(t *testing.T) {
	if !new(Handler).Idle() {
		t.Fatal("a handler not provisioned is not idle")
	}
}

// TestWrapTransportIdleTimeout checks the transport mcp_proxy gives its
// embedded reverse_proxy: an mcp_relay around the configured one, whose
// http transport closes idle upstream connections after
// defaultUpstreamIdle unless its keepalive is set.
func TestWrapTransportIdleTimeout(t *testing.T) {
	idle := float64(defaultUpstreamIdle)
	cases := []struct{ name, in, want string }{
		{"none", `{}`, fmt.Sprintf(`{"inner":{"keep_alive":{"idle_timeout":%v},"protocol":"http"},"protocol":"mcp_relay","rewrite_host":true}`, idle)},
		{"http", `{"transport":{"protocol":"http","dial_timeout":1000}}`,
			fmt.Sprintf(`{"inner":{"dial_timeout":1000,"keep_alive":{"idle_timeout":%v},"protocol":"http"},"protocol":"mcp_relay","rewrite_host":true}`, idle)},
		{"keepalive set", `{"transport":{"protocol":"http","keep_alive":{"idle_timeout":60000000000}}}`,
			`{"inner":{"keep_alive":{"idle_timeout":60000000000},"protocol":"http"},"protocol":"mcp_relay","rewrite_host":true}`},
		{"keepalive off", `{"transport":{"protocol":"http","keep_alive":{"enabled":false}}}`,
			fmt.Sprintf(`{"inner":{"keep_alive":{"enabled":false,"idle_timeout":%v},"protocol":"http"},"protocol":"mcp_relay","rewrite_host":true}`, idle)},
		{"fastcgi", `{"transport":{"protocol":"fastcgi","root":"/srv"}}`,
			`{"inner":{"protocol":"fastcgi","root":"/srv"},"protocol":"mcp_relay","rewrite_host":true}`},
		{"relay already", `{"transport":{"protocol":"mcp_relay","inner":{"protocol":"http"}}}`,
			fmt.Sprintf(`{"inner":{"keep_alive":{"idle_timeout":%v},"protocol":"http"},"protocol":"mcp_relay"}`, idle)},
	}
	for _, c := range cases {
		var cfg map[string]any
		if err := json.Unmarshal([]byte(c.in), &cfg); err != nil {
			t.Fatal(err)
		}
		wrapTransport(cfg, true)
		got, _ := json.Marshal(cfg["transport"])
		var want any
		if err := json.Unmarshal([]byte(c.want), &want); err != nil {
			t.Fatal(err)
		}
		wantJSON, _ := json.Marshal(want)
		if string(got) != string(wantJSON) {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, wantJSON)
		}
	}
}
