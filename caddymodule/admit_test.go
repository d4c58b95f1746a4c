package caddymodule

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/mcp"
)

// callOf reads a POST body as the proxy does.
func callOf(t *testing.T, body string) *mcp.Call {
	t.Helper()
	call := new(mcp.Call)
	if err := mcp.ParseEnvelope([]byte(body), true, &call.Peek); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	return call
}

// TestRequestOf: a POST is admitted by every message: classed by its most
// expensive, weighed by its requests, each tools/call against its tool.
func TestRequestOf(t *testing.T) {
	call := admission.ClassOf("tools/call", false, false)
	list := admission.ClassOf("tools/list", false, false)
	cheap := admission.ClassOf("ping", false, false)
	cases := []struct {
		body   string
		class  admission.Class
		weight int
		tool   string
		tools  []string
	}{
		{`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}`, call, 1, "add", nil},
		{`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, list, 1, "", nil},
		{`{"jsonrpc":"2.0","method":"notifications/initialized"}`, cheap, 0, "", nil},
		{`[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a"}},` +
			`{"jsonrpc":"2.0","method":"notifications/progress"},{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"b"}}]`,
			call, 3, "", []string{"a", "b"}},
		// the most expensive member classes the batch wherever it is
		{`[{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a"}},{"jsonrpc":"2.0","id":1,"method":"ping"}]`,
			call, 2, "", []string{"a"}},
		{`[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":2,"error":{"code":-1,"message":"x"}}]`, cheap, 0, "", nil},
	}
	for _, c := range cases {
		var req admission.Request
		requestOf(callOf(t, c.body), &req)
		if req.Class != c.class || req.Weight != c.weight || req.Tool != c.tool || !slices.Equal(req.Tools, c.tools) {
			t.Errorf("%s: class %v weight %d tool %q tools %v; want %v %d %q %v",
				c.body, req.Class, req.Weight, req.Tool, req.Tools, c.class, c.weight, c.tool, c.tools)
		}
	}
}

// TestRefuseAdmission: a refusal is a 503 or 429 with Retry-After and a
// JSON-RPC error carrying the request's id, but a single call refused by
// its tool's limit gets its error inside a 200.
func TestRefuseAdmission(t *testing.T) {
	ctrl, err := admission.New(admission.Config{}, admission.NewLimiter(0, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{logger: zap.NewNop()}
	single := `{"jsonrpc":"2.0","id":"q7","method":"tools/call","params":{"name":"add"}}`
	batch := "[" + single + "]"
	cases := []struct {
		body   string
		reason admission.Reason
		status int
		text   string
	}{
		{single, admission.ReasonToolLimit, http.StatusOK, "tool add is busy"},
		{batch, admission.ReasonToolLimit, 0, "server overloaded: tool_limit"},
		{single, admission.ReasonQueueFull, 0, "server overloaded: queue_full"},
		{single, admission.ReasonClientQuota, 0, "server overloaded: client_quota"},
	}
	for _, c := range cases {
		w := httptest.NewRecorder()
		refusal := ctrl.Refuse(c.reason)
		ref := h.refuseAdmission(w, callOf(t, c.body), refusal)
		want := c.status
		if want == 0 {
			want = refusal.Status
		}
		if ref.Status != want || ref.ID != `"q7"` || !strings.HasPrefix(ref.Message, c.text) ||
			w.Header().Get("Retry-After") != refusal.RetryAfterHeader || refusal.RetryAfterHeader == "" {
			t.Errorf("%s refused for %v: %+v, Retry-After %q", c.body, c.reason, ref, w.Header().Get("Retry-After"))
		}
	}
}

// TestUpstreamFailure: a request reverse_proxy got no answer for is
// answered by the proxy with the request's id: 404 when its session's
// upstream left the config, the handler error's 5xx status, else 502.
func TestUpstreamFailure(t *testing.T) {
	body := `{"jsonrpc":"2.0","id":9,"method":"tools/list"}`
	cases := []struct {
		name    string
		missing bool
		err     error
		status  int
		code    int
	}{
		{"session upstream gone", true, errors.New("no upstreams"), http.StatusNotFound, mcp.CodeSessionNotFound},
		{"timeout", false, caddyhttp.Error(http.StatusGatewayTimeout, errors.New("timeout")), http.StatusGatewayTimeout, mcp.CodeInternalError},
		{"client error status", false, caddyhttp.Error(http.StatusBadRequest, errors.New("x")), http.StatusBadGateway, mcp.CodeInternalError},
		{"other", false, errors.New("connection reset"), http.StatusBadGateway, mcp.CodeInternalError},
	}
	for _, c := range cases {
		r := requestWith("POST", body, "192.0.2.1", nil)
		if c.missing {
			caddyhttp.SetVar(r.Context(), varPinMissing, true)
		}
		x := &exchange{w: httptest.NewRecorder(), r: r, call: *callOf(t, body)}
		ref := new(Handler).upstreamFailure(x, c.err)
		if ref.Status != c.status || ref.Code != c.code || ref.ID != "9" {
			t.Errorf("%s: %+v", c.name, ref)
		}
	}
}

// TestDeadlineForPOSTOnly: only a POST's requests have a deadline; a GET
// (a stream) has none, whatever request_timeout says.
func TestDeadlineForPOSTOnly(t *testing.T) {
	h := &Handler{RequestTimeout: caddy.Duration(10 * time.Second)}
	if err := h.provisionDeadlines(); err != nil {
		t.Fatal(err)
	}
	call := callOf(t, `{"jsonrpc":"2.0","id":1,"method":"ping"}`)
	if got := h.deadlineFor(httptest.NewRequest("POST", "/mcp", nil), call); got != 10*time.Second {
		t.Errorf("POST: %v, want 10s", got)
	}
	if got := h.deadlineFor(httptest.NewRequest("GET", "/mcp", nil), new(mcp.Call)); got != 0 {
		t.Errorf("GET: %v, want none", got)
	}
}

// TestProvisionDeadlinesBadPattern: a tool rule with a timeout and a
// malformed pattern is refused, not left to match no tool.
func TestProvisionDeadlinesBadPattern(t *testing.T) {
	h := &Handler{Tools: []ToolLimit{{Pattern: "[", Timeout: caddy.Duration(time.Second)}}}
	if err := h.provisionDeadlines(); err == nil {
		t.Error("a malformed tool pattern with a timeout was accepted")
	}
}
