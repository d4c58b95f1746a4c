package caddymodule

import (
	"context"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/mcpgate/mcpgate/mcp"
)

// TestCallFacts checks the placeholders and span attributes a classified
// request gets, for each kind of target.
func TestCallFacts(t *testing.T) {
	cases := []struct {
		body    string
		version string
		ph      map[string]string
		attrs   map[string]string
	}{
		{
			body:    `{"jsonrpc":"2.0","id":"a\u0062","method":"tools/call","params":{"name":"delete_repo"}}`,
			version: "2025-06-18",
			ph:      map[string]string{phMethod: "tools/call", phTool: "delete_repo", phRequestID: "ab", phVersion: "2025-06-18"},
			attrs:   map[string]string{"mcp.method.name": "tools/call", "gen_ai.tool.name": "delete_repo", "jsonrpc.request.id": "ab", "mcp.protocol.version": "2025-06-18"},
		},
		{
			body:  `{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"file:///etc/passwd"}}`,
			ph:    map[string]string{phMethod: "resources/read", phResource: "file:///etc/passwd", phRequestID: "7"},
			attrs: map[string]string{"mcp.method.name": "resources/read", "mcp.resource.uri": "file:///etc/passwd", "jsonrpc.request.id": "7"},
		},
		{
			body: `{"jsonrpc":"2.0","id":8,"method":"prompts/get","params":{"name":"greet"}}`,
			ph:   map[string]string{phMethod: "prompts/get", phPrompt: "greet", phTool: ""},
		},
		{
			body: `{"jsonrpc":"2.0","id":9,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"admin_reset"},"argument":{"name":"a","value":""}}}`,
			ph:   map[string]string{phMethod: "completion/complete", phPrompt: "admin_reset", phResource: ""},
		},
		{
			body:  `{"jsonrpc":"2.0","id":10,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///secret/{name}"},"argument":{"name":"name","value":""}}}`,
			ph:    map[string]string{phMethod: "completion/complete", phResource: "file:///secret/{name}", phPrompt: ""},
			attrs: map[string]string{"mcp.method.name": "completion/complete", "mcp.resource.uri": ""},
		},
		{
			body: `{"jsonrpc":"2.0","method":"notifications/initialized"}`,
			ph:   map[string]string{phMethod: "notifications/initialized", phRequestID: ""},
		},
	}
	for _, c := range cases {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		ctx, span := tp.Tracer("test").Start(context.Background(), "request")
		repl := caddy.NewReplacer()
		ctx = context.WithValue(ctx, caddy.ReplacerCtxKey, repl)
		r := httptest.NewRequest("POST", "/mcp", nil).WithContext(ctx)
		call := mcp.Call{Version: c.version}
		if err := mcp.ParseEnvelope([]byte(c.body), true, &call.Peek); err != nil {
			t.Fatalf("%s: %v", c.body, err)
		}
		setCallFacts(r, &call)
		span.End()
		for k, want := range c.ph {
			if got, _ := repl.GetString(k); got != want {
				t.Errorf("%s: {%s} = %q, want %q", c.body, k, got, want)
			}
		}
		got := map[string]string{}
		for _, kv := range rec.Ended()[0].Attributes() {
			got[string(kv.Key)] = kv.Value.Emit()
		}
		for k, want := range c.attrs {
			if got[k] != want {
				t.Errorf("%s: span attribute %s = %q, want %q (all: %v)", c.body, k, got[k], want, got)
			}
		}
	}
}
