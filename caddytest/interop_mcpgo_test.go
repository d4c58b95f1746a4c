package caddytest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mgoclient "github.com/mark3labs/mcp-go/client"
	mgotransport "github.com/mark3labs/mcp-go/client/transport"
	mgo "github.com/mark3labs/mcp-go/mcp"
	mgoserver "github.com/mark3labs/mcp-go/server"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// The interop tests put a second MCP implementation, mark3labs/mcp-go, on
// both sides of mcp_proxy: its servers upstream in every HTTP transport
// it offers, its client in front of the go-sdk demo server. Every
// scenario runs straight against the upstream first, so that a failure
// through the proxy is the proxy's.

// interopResource is the one resource of interopServer.
const interopResource = "mem://greeting"

// interopServer is an mcp-go server with the tools echo, countdown (a
// progress notification a step when the call asks for progress, then an
// error-level log message, then its result), block (runs until its
// context ends, which it reports on cancelled) and ask (elicits a name
// from the client), and the resource interopResource. started gets a
// value when block starts.
func interopServer(name string, started chan<- struct{}, cancelled chan<- error) *mgoserver.MCPServer {
	s := mgoserver.NewMCPServer(name, "1.0.0", mgoserver.WithToolCapabilities(false),
		mgoserver.WithResourceCapabilities(false, false), mgoserver.WithLogging())
	s.AddTool(mgo.NewTool("echo", mgo.WithString("text", mgo.Required())),
		func(_ context.Context, req mgo.CallToolRequest) (*mgo.CallToolResult, error) {
			return mgo.NewToolResultText(req.GetString("text", "")), nil
		})
	s.AddTool(mgo.NewTool("countdown", mgo.WithNumber("from")),
		func(ctx context.Context, req mgo.CallToolRequest) (*mgo.CallToolResult, error) {
			from := min(req.GetInt("from", 3), 100)
			if req.Params.Meta != nil && req.Params.Meta.ProgressToken != nil {
				for i := 1; i <= from; i++ {
					p := map[string]any{"progressToken": req.Params.Meta.ProgressToken, "progress": i, "total": from}
					if err := s.SendNotificationToClient(ctx, "notifications/progress", p); err != nil {
						return nil, err
					}
				}
			}
			if err := s.SendLogMessageToClient(ctx, mgo.NewLoggingMessageNotification(mgo.LoggingLevelError, "countdown", "liftoff")); err != nil {
				return nil, err
			}
			return mgo.NewToolResultText("liftoff"), nil
		})
	s.AddTool(mgo.NewTool("block"), func(ctx context.Context, _ mgo.CallToolRequest) (*mgo.CallToolResult, error) {
		started <- struct{}{}
		select {
		case <-ctx.Done():
			cancelled <- ctx.Err()
			return nil, ctx.Err()
		case <-time.After(boundedWait):
			return mgo.NewToolResultText("not cancelled"), nil
		}
	})
	s.AddTool(mgo.NewTool("ask"), func(ctx context.Context, _ mgo.CallToolRequest) (*mgo.CallToolResult, error) {
		res, err := s.RequestElicitation(ctx, mgo.ElicitationRequest{Params: mgo.ElicitationParams{
			Message:         "your name?",
			RequestedSchema: map[string]any{"type": "object", "properties": map[string]any{"name": map[string]any{"type": "string"}}},
		}})
		if err != nil {
			return nil, err
		}
		return mgo.NewToolResultText(fmt.Sprintf("%s %v", res.Action, res.Content)), nil
	})
	s.AddResource(mgo.NewResource(interopResource, "greeting", mgo.WithMIMEType("text/plain")),
		func(_ context.Context, req mgo.ReadResourceRequest) ([]mgo.ResourceContents, error) {
			return []mgo.ResourceContents{mgo.TextResourceContents{URI: req.Params.URI, MIMEType: "text/plain", Text: "hello from " + name}}, nil
		})
	return s
}

// interopUpstream is an mcp-go server on loopback and what its tools
// report.
type interopUpstream struct {
	*recordedUpstream
	kind      string // as startInterop takes it
	legacy    bool   // the legacy HTTP+SSE transport
	path      string // the path a client connects to
	started   chan struct{}
	cancelled chan error
}

// startInterop serves interopServer named name in the transport kind:
// "sessions" (Streamable HTTP, stateful), "stateless" (Streamable HTTP
// without session ids), "sse" (legacy, a root-relative endpoint),
// "sse-full" (legacy, an absolute endpoint URL with the upstream's own
// host) or "sse-base" (legacy under a base path, absolute endpoint).
// The "sessions" and "sse" servers ping the client every 50ms on its
// stream (GET or legacy), a request the client answers.
func startInterop(t *testing.T, name, kind string) *interopUpstream {
	t.Helper()
	u := &interopUpstream{kind: kind, started: make(chan struct{}, 8), cancelled: make(chan error, 8), path: "/mcp"}
	s := interopServer(name, u.started, u.cancelled)
	var h http.Handler
	u.recordedUpstream = startRecorded(t, name, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	u.legacy = strings.HasPrefix(kind, "sse")
	switch kind {
	case "sessions":
		h = mgoserver.NewStreamableHTTPServer(s, mgoserver.WithStateful(true), mgoserver.WithHeartbeatInterval(50*time.Millisecond))
	case "stateless":
		h = mgoserver.NewStreamableHTTPServer(s, mgoserver.WithStateLess(true))
	case "sse":
		h = mgoserver.NewSSEServer(s, mgoserver.WithUseFullURLForMessageEndpoint(false), mgoserver.WithKeepAliveInterval(50*time.Millisecond))
		u.path = "/sse"
	case "sse-full":
		h, u.path = mgoserver.NewSSEServer(s, mgoserver.WithBaseURL(u.URL)), "/sse"
	case "sse-base":
		h = mgoserver.NewSSEServer(s, mgoserver.WithBaseURL(u.URL), mgoserver.WithStaticBasePath("/mcp"))
		u.path = "/mcp/sse"
	default:
		t.Fatalf("unknown kind %q", kind)
	}
	return u
}

// seen reports whether the upstream got, since its mark'th request, an
// HTTP method request of the JSON-RPC method rpc ("" for any), and
// stores it in found when found is not nil.
func (u *interopUpstream) seen(mark int, method, rpc string, found *fakeSeen) bool {
	for _, s := range u.since(mark) {
		if s.method == method && (rpc == "" || s.rpc == rpc) {
			if found != nil {
				*found = s
			}
			return true
		}
	}
	return false
}

// interopPeer is an MCP client session of either SDK, and what it heard.
type interopPeer struct {
	version  string
	tools    func(context.Context) ([]string, error)
	call     func(ctx context.Context, tool string, args map[string]any, progress bool) (string, error)
	read     func(context.Context, string) (string, error)
	ping     func(context.Context) error
	close    func() error
	session  func() string // the Mcp-Session-Id the client holds
	progress atomic.Int64  // notifications/progress received
	logs     atomic.Int64  // notifications/message received
}

// sdkPeer connects a go-sdk client to endpoint (legacy: over HTTP+SSE)
// at version ("" for the client's choice).
func sdkPeer(ctx context.Context, endpoint string, legacy bool, version string) (*interopPeer, error) {
	p := &interopPeer{}
	client := mcp.NewClient(&mcp.Implementation{Name: "interop-sdk", Version: "1"}, &mcp.ClientOptions{
		ProgressNotificationHandler: func(context.Context, *mcp.ProgressNotificationClientRequest) { p.progress.Add(1) },
		LoggingMessageHandler:       func(context.Context, *mcp.LoggingMessageRequest) { p.logs.Add(1) },
		ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"name": "caddy"}}, nil
		},
	})
	var tr mcp.Transport = &mcp.StreamableClientTransport{Endpoint: endpoint, MaxRetries: 1}
	if legacy {
		tr = &mcp.SSEClientTransport{Endpoint: endpoint}
	}
	cs, err := client.Connect(ctx, tr, &mcp.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		return nil, err
	}
	p.version = cs.InitializeResult().ProtocolVersion
	p.tools = func(ctx context.Context) (names []string, err error) {
		res, err := cs.ListTools(ctx, nil)
		if err == nil {
			for _, tool := range res.Tools {
				names = append(names, tool.Name)
			}
		}
		return names, err
	}
	p.call = func(ctx context.Context, tool string, args map[string]any, progress bool) (string, error) {
		params := &mcp.CallToolParams{Name: tool, Arguments: args}
		if progress {
			params.SetProgressToken("p1")
		}
		res, err := cs.CallTool(ctx, params)
		if err != nil {
			return "", err
		}
		if tc, ok := res.Content[0].(*mcp.TextContent); ok && !res.IsError {
			return tc.Text, nil
		}
		return "", fmt.Errorf("result %+v", res)
	}
	p.read = func(ctx context.Context, uri string) (string, error) {
		res, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: uri})
		if err != nil {
			return "", err
		}
		return res.Contents[0].Text, nil
	}
	p.ping = func(ctx context.Context) error { return cs.Ping(ctx, nil) }
	p.close, p.session = cs.Close, cs.ID
	return p, nil
}

// mcpgoPeer connects an mcp-go client to endpoint (legacy: over
// HTTP+SSE) at version ("" for the client's choice).
func mcpgoPeer(ctx context.Context, endpoint string, legacy bool, version string) (*interopPeer, error) {
	p := &interopPeer{}
	var tr mgotransport.Interface
	var err error
	if legacy {
		tr, err = mgotransport.NewSSE(endpoint)
	} else {
		tr, err = mgotransport.NewStreamableHTTP(endpoint)
	}
	if err != nil {
		return nil, err
	}
	opts := []mgoclient.ClientOption{mgoclient.WithElicitationHandler(interopElicit{})}
	if version != "" {
		opts = append(opts, mgoclient.WithProtocolVersion(version))
	}
	c := mgoclient.NewClient(tr, opts...)
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	c.OnNotification(func(n mgo.JSONRPCNotification) {
		switch n.Method {
		case "notifications/progress":
			p.progress.Add(1)
		case "notifications/message":
			p.logs.Add(1)
		}
	})
	init := mgo.InitializeRequest{}
	init.Params.ClientInfo = mgo.Implementation{Name: "interop-mcpgo", Version: "1"}
	res, err := c.Initialize(ctx, init)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	p.version = res.ProtocolVersion
	p.tools = func(ctx context.Context) (names []string, err error) {
		res, err := c.ListTools(ctx, mgo.ListToolsRequest{})
		if err == nil {
			for _, tool := range res.Tools {
				names = append(names, tool.Name)
			}
		}
		return names, err
	}
	p.call = func(ctx context.Context, tool string, args map[string]any, progress bool) (string, error) {
		req := mgo.CallToolRequest{}
		req.Params.Name, req.Params.Arguments = tool, args
		if progress {
			req.Params.Meta = &mgo.Meta{ProgressToken: "p1"}
		}
		res, err := c.CallTool(ctx, req)
		if err != nil {
			return "", err
		}
		if tc, ok := res.Content[0].(mgo.TextContent); ok && !res.IsError {
			return tc.Text, nil
		}
		return "", fmt.Errorf("result %+v", res)
	}
	p.read = func(ctx context.Context, uri string) (string, error) {
		req := mgo.ReadResourceRequest{}
		req.Params.URI = uri
		res, err := c.ReadResource(ctx, req)
		if err != nil {
			return "", err
		}
		if tc, ok := res.Contents[0].(mgo.TextResourceContents); ok {
			return tc.Text, nil
		}
		return "", fmt.Errorf("contents %+v", res.Contents)
	}
	p.ping = c.Ping
	p.close, p.session = c.Close, c.GetSessionId
	return p, nil
}

// interopElicit answers every elicitation with the name caddy.
type interopElicit struct{}

func (interopElicit) Elicit(context.Context, mgo.ElicitationRequest) (*mgo.ElicitationResult, error) {
	return &mgo.ElicitationResult{ElicitationResponse: mgo.ElicitationResponse{Action: mgo.ElicitationResponseActionAccept, Content: map[string]any{"name": "caddy"}}}, nil
}

// interopConnect is sdkPeer or mcpgoPeer.
type interopConnect func(ctx context.Context, endpoint string, legacy bool, version string) (*interopPeer, error)

// basics lists the tools of p's server, which must hold echo, countdown
// and tool, and calls echo and countdown, this one with progress.
func basics(t *testing.T, ctx context.Context, p *interopPeer, tool string) {
	t.Helper()
	names, err := p.tools(ctx)
	if err != nil || !slices.Contains(names, "echo") || !slices.Contains(names, "countdown") || !slices.Contains(names, tool) {
		t.Fatalf("tools/list: %v %v", names, err)
	}
	if got, err := p.call(ctx, "echo", map[string]any{"text": "hi"}, false); err != nil || got != "hi" {
		t.Fatalf("echo: %q %v", got, err)
	}
	if got, err := p.call(ctx, "countdown", map[string]any{"from": 3}, true); err != nil || got != "liftoff" {
		t.Fatalf("countdown: %q %v", got, err)
	}
}

// viaBoth runs f as the subtests name/direct and name/proxy, with the
// base URL of the upstream or of the proxy, and a bounded context.
func viaBoth(t *testing.T, name, direct, proxy string, f func(t *testing.T, ctx context.Context, base string)) {
	for _, via := range []struct{ name, base string }{{"direct", direct}, {"proxy", proxy}} {
		t.Run(name+"/"+via.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
			defer cancel()
			f(t, ctx, via.base)
		})
	}
}

// exercise runs the scenarios against a session p of u: tools/list,
// calls with progress and a log message, resources/read, ping, and what
// the pair supports of the rest: an elicitation (mcp-go serves one to a
// session-era client of a stateful Streamable HTTP server) and a call
// cancelled mid-way, which the upstream's tool must see end, and which
// must reach the upstream as notifications/cancelled when the client
// sends one (go-sdk, before 2026-07-28); and the server's pings since
// its mark'th request answered.
func exercise(t *testing.T, ctx context.Context, p *interopPeer, u *interopUpstream, client string, mark int) {
	t.Helper()
	basics(t, ctx, p, "ask")
	// mcp-go's Streamable HTTP server can drop a notification when the
	// previous request's forwarder, not yet gone, takes it off the
	// session's channel (directly as well): up to three more calls, until
	// one of each has come.
	modern := p.version >= "2026"
	both := func() bool { return p.progress.Load() > 0 && (modern || p.logs.Load() > 0) }
	for i := 0; i < 3 && !waitUntil(time.Second, 5*time.Millisecond, both); i++ {
		if _, err := p.call(ctx, "countdown", map[string]any{"from": 1}, true); err != nil {
			t.Fatalf("countdown: %v", err)
		}
	}
	if !both() {
		t.Errorf("countdown at %s: %d progress notifications and %d log messages", p.version, p.progress.Load(), p.logs.Load())
	}
	if got, err := p.read(ctx, interopResource); err != nil || got != "hello from "+u.name {
		t.Errorf("resources/read: %q %v", got, err)
	}
	// At 2026-07-28 the go-sdk client pings without the _meta mcp-go
	// requires of every request then (ping is gone from that revision).
	if !modern || client != "go-sdk" {
		if err := p.ping(ctx); err != nil {
			t.Errorf("ping: %v", err)
		}
	}
	if !modern && u.kind == "sessions" {
		if got, err := p.call(ctx, "ask", nil, false); err != nil || got != "accept map[name:caddy]" {
			t.Errorf("ask (elicitation): %q %v", got, err)
		}
	}
	// The server's pings: the mcp-go client opens no GET stream unless
	// asked to, and its legacy transport answers no server requests.
	if !modern && client == "go-sdk" && (u.kind == "sessions" || u.kind == "sse") {
		answers := func() (n int) {
			for _, s := range u.since(mark) {
				for _, m := range s.msgs {
					if m.Method == "" && string(m.ID) != "" {
						n++
					}
				}
			}
			return n
		}
		if !waitUntil(5*time.Second, 5*time.Millisecond, func() bool { return answers() >= 2 }) {
			t.Errorf("the server got %d answers to its pings", answers())
		}
	}
	// The mcp-go client sends no notifications/cancelled over HTTP, and a
	// legacy server sees no end of a POST it has answered with 202.
	if client != "go-sdk" && u.legacy {
		return
	}
	mark = len(u.since(0))
	callCtx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { _, err := p.call(callCtx, "block", nil, false); errc <- err }()
	select {
	case <-u.started:
	case <-ctx.Done():
		t.Fatal("block never started")
	}
	cancel()
	select {
	case err := <-u.cancelled:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("block ended with %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the upstream's tool was not cancelled")
	}
	if err := <-errc; err == nil {
		t.Error("the cancelled call succeeded")
	}
	if client == "go-sdk" && !modern {
		if !waitUntil(5*time.Second, 5*time.Millisecond, func() bool { return u.seen(mark, http.MethodPost, "notifications/cancelled", nil) }) {
			t.Error("no notifications/cancelled reached the upstream")
		}
	}
}

// TestInteropMcpgoServer: mcp-go servers in each HTTP transport behind
// mcp_proxy, with go-sdk and mcp-go clients in front, at the clients'
// own version choice and pinned to the session era.
func TestInteropMcpgoServer(t *testing.T) {
	kinds := []string{"sessions", "stateless", "sse", "sse-full", "sse-base"}
	ups, ports, cf := map[string]*interopUpstream{}, map[string]int{}, ""
	for _, k := range kinds {
		ups[k], ports[k] = startInterop(t, "mcpgo-"+k, k), freePort(t)
		block := ""
		if k == "stateless" {
			block = "\t\trequire_session off\n"
		}
		cf += proxySite(ports[k], ups[k].addr(), block)
	}
	loadCaddyfile(t, cf)
	for _, k := range kinds {
		u := ups[k]
		for _, cl := range interopClients {
			for _, version := range []string{"", "2025-11-25"} {
				viaBoth(t, fmt.Sprintf("%s/%s/%q", k, cl.name, version), u.URL, proxyURL(ports[k]), func(t *testing.T, ctx context.Context, base string) {
					mark := len(u.since(0))
					p, err := cl.connect(ctx, base+u.path, u.legacy, version)
					if err != nil {
						t.Fatalf("connect: %v", err)
					}
					defer p.close()
					t.Logf("negotiated %s", p.version)
					exercise(t, ctx, p, u, cl.name, mark)
				})
			}
		}
	}
}

// interopClients are the clients the tests put in front of the proxy.
var interopClients = []struct {
	name    string
	connect interopConnect
}{{"go-sdk", sdkPeer}, {"mcp-go", mcpgoPeer}}

// TestInteropMcpgoSessionClose: a session-era client closing its session
// to a stateful mcp-go server through mcp_proxy has the DELETE reach the
// upstream with the upstream's own session id, after which the proxy's
// session id gets 404.
func TestInteropMcpgoSessionClose(t *testing.T) {
	u := startInterop(t, "mcpgo-close", "sessions")
	port := freePort(t)
	loadCaddyfile(t, proxySite(port, u.addr(), ""))
	for _, cl := range interopClients {
		t.Run(cl.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
			defer cancel()
			p, err := cl.connect(ctx, proxyURL(port)+u.path, false, "2025-11-25")
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			sid := p.session()
			if err := p.ping(ctx); err != nil || sid == "" {
				t.Fatalf("ping in session %q: %v", sid, err)
			}
			mark := len(u.since(0))
			if err := p.close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			var del fakeSeen
			if !waitUntil(5*time.Second, 5*time.Millisecond, func() bool { return u.seen(mark, http.MethodDelete, "", &del) }) {
				t.Fatal("no DELETE reached the upstream")
			}
			if del.sid == "" || del.sid == sid {
				t.Errorf("the upstream's DELETE carried session id %q, the client's was %q", del.sid, sid)
			}
			st, _, body := rawPost(t, proxyURL(port)+u.path, rpcRequest(9, "ping"), sessionHeaders(sid, "2025-11-25"))
			if st != http.StatusNotFound {
				t.Errorf("ping in the closed session: %d %s", st, body)
			}
		})
	}
}

// TestInteropMcpgoTwoUpstreams: sessions of both clients to two mcp-go
// servers behind one mcp_proxy, over Streamable HTTP and over legacy
// HTTP+SSE with absolute endpoint URLs, are spread over both and stay
// pinned: each session reads the resource of the one server it began
// on, and the stateful servers refuse a session they do not hold.
func TestInteropMcpgoTwoUpstreams(t *testing.T) {
	for _, kind := range []string{"sessions", "sse-full"} {
		t.Run(kind, func(t *testing.T) {
			a, b := startInterop(t, "a", kind), startInterop(t, "b", kind)
			port := freePort(t)
			loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s %s {\n\t\tlb_policy round_robin\n\t}\n}\n", port, a.addr(), b.addr()))
			ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
			defer cancel()
			for i := range 4 {
				for _, cl := range interopClients {
					p, err := cl.connect(ctx, proxyURL(port)+a.path, a.legacy, "2025-11-25")
					if err != nil {
						t.Fatalf("%s connect %d: %v", cl.name, i, err)
					}
					first, err := p.read(ctx, interopResource)
					if err != nil {
						t.Fatalf("%s session %d: resources/read: %v", cl.name, i, err)
					}
					for j := range 3 {
						if got, err := p.call(ctx, "countdown", map[string]any{"from": 2}, true); err != nil || got != "liftoff" {
							t.Fatalf("%s session %d call %d: %q %v", cl.name, i, j, got, err)
						}
						if got, err := p.read(ctx, interopResource); err != nil || got != first {
							t.Fatalf("%s session %d moved from %q to %q (%v)", cl.name, i, first, got, err)
						}
					}
					_ = p.close()
				}
			}
			assertBothUsed(t, kind+" sessions did not spread", a.upstream, b.upstream)
		})
	}
}

// TestInteropMcpgoClient: the mcp-go client in front of the go-sdk demo
// server, over Streamable HTTP and legacy HTTP+SSE, straight and
// through mcp_proxy, at its own version choice (2026-07-28, which the
// go-sdk serves with Stateless only, though its other servers list it
// in their server/discover answer) and pinned to the session era.
func TestInteropMcpgoClient(t *testing.T) {
	up, stateless := startUpstream(t, "demo", nil), startUpstream(t, "demo", &mcp.StreamableHTTPOptions{Stateless: true})
	port, statelessPort := freePort(t), freePort(t)
	loadCaddyfile(t, proxySite(port, up.addr(), "")+proxySite(statelessPort, stateless.addr(), ""))
	for _, path := range []string{"/mcp", "/sse"} {
		for _, version := range []string{"", "2025-11-25"} {
			direct, pport := up.URL, port
			if path == "/mcp" && version == "" {
				direct, pport = stateless.URL, statelessPort
			}
			viaBoth(t, fmt.Sprintf("%s/%q", path, version), direct, proxyURL(pport), func(t *testing.T, ctx context.Context, base string) {
				p, err := mcpgoPeer(ctx, base+path, path == "/sse", version)
				if err != nil {
					t.Fatalf("connect: %v", err)
				}
				defer p.close()
				t.Logf("negotiated %s", p.version)
				basics(t, ctx, p, "add")
				if !waitUntil(5*time.Second, 5*time.Millisecond, func() bool { return p.progress.Load() == 3 }) {
					t.Errorf("%d progress notifications, want 3", p.progress.Load())
				}
				if err := p.ping(ctx); err != nil {
					t.Errorf("ping: %v", err)
				}
			})
		}
	}
}
