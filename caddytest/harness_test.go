// Package caddytest holds mcpgate's end-to-end tests: a real Caddy, loaded
// in this process, in front of real MCP servers and clients from the MCP Go
// SDK. Caddy is process-global, so the tests of this package run one at a
// time.
package caddytest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	// Caddy's standard modules and ours.
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/mcpgate/mcpgate"

	"github.com/mcpgate/mcpgate/internal/demo"
)

// upstream is an MCP server on loopback that counts the requests it gets.
type upstream struct {
	*httptest.Server
	name     string
	requests atomic.Int64
}

// addr returns the host:port Caddy dials.
func (u *upstream) addr() string { return strings.TrimPrefix(u.URL, "http://") }

// startUpstream serves a demo MCP server named name (Streamable HTTP on
// every path, legacy SSE on /sse).
func startUpstream(t *testing.T, name string, opts *mcp.StreamableHTTPOptions) *upstream {
	t.Helper()
	return startUpstreamHandler(t, name, demo.Handler(demo.NewServer(name), "/sse", opts))
}

// startTwoUpstreams starts demo MCP servers named a and b.
func startTwoUpstreams(t *testing.T) (a, b *upstream) {
	t.Helper()
	return startUpstream(t, "a", nil), startUpstream(t, "b", nil)
}

// assertBothUsed fails the test unless both upstreams got requests.
func assertBothUsed(t *testing.T, what string, a, b *upstream) {
	t.Helper()
	if a.requests.Load() == 0 || b.requests.Load() == 0 {
		t.Errorf("%s: a=%d b=%d requests", what, a.requests.Load(), b.requests.Load())
	}
}

func startUpstreamHandler(t *testing.T, name string, h http.Handler) *upstream {
	t.Helper()
	u := &upstream{name: name}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

// freePort returns a port, free on every interface for TCP and UDP, that
// no other test in this process was given: Caddy's listeners set
// SO_REUSEPORT, so a port handed out twice would have two servers share
// its connections. It is taken below the kernel's range of ephemeral
// ports: a port of that range, free when checked here, may be the local
// port of one of the many connections the tests open by the time a
// server binds it.
func freePort(t testing.TB) int {
	t.Helper()
	hi := ephemeralLow()
	lo := hi / 2
	for range 200 {
		port := lo + rand.IntN(hi-lo)
		if _, dup := portsHanded.LoadOrStore(port, true); dup {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			continue
		}
		_ = l.Close()
		pc, err := net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		if err != nil {
			continue
		}
		_ = pc.Close()
		return port
	}
	t.Fatal("no free port below the ephemeral range")
	return 0
}

// ephemeralLow returns the first port of the kernel's ephemeral range
// (49152, IANA's, when the kernel does not say).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 49152
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 49152
	}
	if n, err := strconv.Atoi(f[0]); err == nil && n >= 4096 {
		return n
	}
	return 49152
}

// portsHanded holds every port freePort returned in this process.
var portsHanded sync.Map

// loadCaddyfile adapts a Caddyfile and runs it in this process until the
// test ends. Global options for a quiet test server are prepended.
func loadCaddyfile(t testing.TB, body string) {
	t.Helper()
	loadCaddyfileWith(t, "", body)
}

// loadCaddyfileWith is loadCaddyfile with extra global options (lines
// that go inside the global block).
func loadCaddyfileWith(t testing.TB, globalOptions, body string) {
	t.Helper()
	loadConfig(t, testCaddyfile("off", globalOptions, body))
}

// testCaddyfile is a Caddyfile for a quiet test server with the admin
// endpoint at admin ("off" for none), extra global options and the sites
// of body. MCPGATE_TEST_LOG set keeps Caddy's logs.
func testCaddyfile(admin, globalOptions, body string) string {
	logs := "\tlog {\n\t\toutput discard\n\t}\n"
	if os.Getenv("MCPGATE_TEST_LOG") != "" {
		logs = ""
	}
	return "{\n\tadmin " + admin + "\n\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n" + logs + globalOptions + "}\n" + body
}

// loadConfig adapts a Caddyfile and runs it in this process until the
// test ends; loading again in the same test is a config reload.
func loadConfig(t testing.TB, cf string) {
	t.Helper()
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, cf)
	}
	for _, w := range warnings {
		t.Logf("caddyfile warning: %s", w)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading config: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
}

// adaptFails checks that the Caddyfile cf fails to adapt with an error
// that mentions want.
func adaptFails(t *testing.T, what, cf, want string) {
	t.Helper()
	_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("%s: err = %v, want it to mention %q", what, err, want)
	}
}

// proxyBlockCaddyfile is a Caddyfile with the global option global (none
// when empty) and a site whose mcp_proxy holds the line block.
func proxyBlockCaddyfile(global, block string) string {
	cf := ":8080 {\n\tmcp_proxy localhost:3000 {\n\t\t" + block + "\n\t}\n}\n"
	if global != "" {
		cf = "{\n\t" + global + "\n}\n" + cf
	}
	return cf
}

// proxySite is a site on port whose mcp_proxy goes to up, with the lines
// of block (none: no block) inside mcp_proxy.
func proxySite(port int, up, block string) string {
	if block == "" {
		return fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, up)
	}
	return fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n%s\t}\n}\n", port, up, block)
}

// proxyURL is the base URL of a Caddy listener.
func proxyURL(port int) string { return fmt.Sprintf("http://127.0.0.1:%d", port) }

// connect opens a go-sdk client session over Streamable HTTP.
func connect(t *testing.T, ctx context.Context, endpoint string, hc *http.Client, opts *mcp.ClientSessionOptions) *mcp.ClientSession {
	t.Helper()
	client := mcp.NewClient(&mcp.Implementation{Name: "e2e", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: endpoint, HTTPClient: hc, MaxRetries: 1}, opts)
	if err != nil {
		t.Fatalf("connecting to %s: %v", endpoint, err)
	}
	return cs
}

// echo calls the echo tool and returns its text.
func echo(ctx context.Context, cs *mcp.ClientSession, text string) (string, error) {
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": text}})
	if err != nil {
		return "", err
	}
	if res.IsError || len(res.Content) != 1 {
		return "", fmt.Errorf("unexpected result %+v", res)
	}
	tc, ok := res.Content[0].(*mcp.TextContent)
	if !ok {
		return "", fmt.Errorf("unexpected content %T", res.Content[0])
	}
	return tc.Text, nil
}

// headerRecorder is an http.RoundTripper that remembers the session ids
// the proxy hands out.
type headerRecorder struct {
	base     http.RoundTripper
	sessions atomic.Value // string
}

func (h *headerRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := h.base.RoundTrip(r)
	if err == nil {
		if sid := resp.Header.Get("Mcp-Session-Id"); sid != "" {
			h.sessions.Store(sid)
		}
	}
	return resp, err
}

func (h *headerRecorder) session() string {
	s, _ := h.sessions.Load().(string)
	return s
}

// rawPost sends a JSON-RPC body with headers and returns status and body.
func rawPost(t *testing.T, url, body string, hdr map[string]string) (int, http.Header, string) {
	t.Helper()
	return postWith(t, rawClient, url, body, hdr)
}

// postWith is rawPost through the client hc.
func postWith(t *testing.T, hc *http.Client, url, body string, hdr map[string]string) (int, http.Header, string) {
	t.Helper()
	req, err := newPost(context.Background(), url, body, hdr)
	if err != nil {
		t.Fatal(err)
	}
	return doWith(t, hc, req)
}

// rawClient opens a connection per request, so a config reload between
// requests never meets a pooled connection the old server is closing.
var rawClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

func do(t *testing.T, req *http.Request) (int, http.Header, string) {
	t.Helper()
	return doWith(t, rawClient, req)
}

// doWith sends req through hc, within 10s, and reads the answer.
func doWith(t *testing.T, hc *http.Client, req *http.Request) (int, http.Header, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
	defer cancel()
	resp, err := hc.Do(req.WithContext(ctx))
	// Right after a reload onto the same port a connection can be
	// accepted by the old server as it shuts down and closed unanswered:
	// retry a few times.
	for i := 0; i < 5 && err != nil && isDialReset(err) && req.GetBody != nil; i++ {
		time.Sleep(50 * time.Millisecond)
		retry := req.Clone(ctx)
		retry.Body, _ = req.GetBody()
		resp, err = hc.Do(retry)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Header, string(b)
}

// initializeBody is an initialize request at sessionVersion.
var initializeBody = initBody(1)

// isDialReset reports a connection refused, reset or closed before any
// response.
func isDialReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}
