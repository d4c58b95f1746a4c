package caddytest

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpgate/mcpgate/internal/demo"
)

// TestStatelessEraEndToEnd runs a 2026-07-28 go-sdk client against a
// stateless go-sdk server through mcp_proxy.
func TestStatelessEraEndToEnd(t *testing.T) {
	up := startUpstream(t, "stateless", &mcp.StreamableHTTPOptions{Stateless: true})
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, up.addr()))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cs := connect(t, ctx, proxyURL(port)+"/mcp", nil, nil)
	defer cs.Close()
	if v := cs.InitializeResult().ProtocolVersion; v != "2026-07-28" {
		t.Fatalf("negotiated %s, want 2026-07-28", v)
	}
	if got, err := echo(ctx, cs, "stateless"); err != nil || got != "stateless" {
		t.Fatalf("echo: %q %v", got, err)
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Meta: mcp.Meta{"progressToken": 1}, Name: "countdown", Arguments: map[string]any{"from": 3}})
	if err != nil || res.IsError {
		t.Fatalf("countdown: %v %v", res, err)
	}
}

const meta2026 = `"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"}}`

// TestStatelessHeaderMismatch checks that a 2026-07-28 request whose
// mirrored headers disagree with its body gets 400 with -32020 and is never
// forwarded.
func TestStatelessHeaderMismatch(t *testing.T) {
	up := startUpstream(t, "stateless", &mcp.StreamableHTTPOptions{Stateless: true})
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, up.addr()))
	url := proxyURL(port) + "/mcp"
	call := `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"},` + meta2026 + `}}`
	good := map[string]string{"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "echo"}
	if st, _, b := rawPost(t, url, call, good); st != http.StatusOK || !strings.Contains(b, `"text":"x"`) {
		t.Fatalf("matching headers: %d %s", st, b)
	}
	before := up.requests.Load()
	for name, hdr := range map[string]map[string]string{
		"method":  {"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list", "Mcp-Name": "echo"},
		"name":    {"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "rm"},
		"no name": {"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call"},
		"version": {"Mcp-Protocol-Version": "2026-08-01", "Mcp-Method": "tools/call", "Mcp-Name": "echo"},
	} {
		st, _, b := rawPost(t, url, call, hdr)
		if st != http.StatusBadRequest || !strings.Contains(b, `"code":-32020`) || !strings.Contains(b, `"id":3`) {
			t.Errorf("%s mismatch: %d %s", name, st, b)
		}
	}
	if got := up.requests.Load() - before; got != 0 {
		t.Errorf("%d mismatched requests reached the upstream", got)
	}
}

// TestStatelessDisconnectCancels checks that a client that goes away
// cancels the upstream request (in 2026-07-28 closing the stream is the
// cancellation).
func TestStatelessDisconnectCancels(t *testing.T) {
	started := make(chan struct{}, 1)
	cancelled := make(chan struct{}, 1)
	srv := demo.NewServer("blocker")
	srv.AddTool(&mcp.Tool{Name: "block", InputSchema: map[string]any{"type": "object"}},
		func(ctx context.Context, _ *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			started <- struct{}{}
			select {
			case <-ctx.Done():
				cancelled <- struct{}{}
				return nil, ctx.Err()
			case <-time.After(15 * time.Second):
				return &mcp.CallToolResult{}, nil
			}
		})
	up := startUpstreamHandler(t, "blocker", demo.Handler(srv, "", &mcp.StreamableHTTPOptions{Stateless: true, PropagateRequestCancellation: true}))
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, up.addr()))

	ctx, cancel := context.WithCancel(context.Background())
	body := `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"block","arguments":{},` + meta2026 + `}}`
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, proxyURL(port)+"/mcp", bytes.NewReader([]byte(body)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Mcp-Protocol-Version", "2026-07-28")
	req.Header.Set("Mcp-Method", "tools/call")
	req.Header.Set("Mcp-Name", "block")
	errc := make(chan error, 1)
	go func() {
		resp, err := rawClient.Do(req)
		if err == nil {
			// Headers may arrive before the result on an SSE response;
			// reading blocks until the stream ends.
			_, err = bytes.NewBuffer(nil).ReadFrom(resp.Body)
			resp.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("tool never started")
	}
	cancel()
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("upstream request was not cancelled after the client went away")
	}
	<-errc
}

// TestLegacyUnderPrefix runs a real legacy (2024-11-05) HTTP+SSE client
// against a legacy server mounted under a stripped path prefix.
func TestLegacyUnderPrefix(t *testing.T) {
	a, b := startTwoUpstreams(t)
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\thandle_path /legacy/* {\n\t\tmcp_proxy %s %s {\n\t\t\tlb_policy round_robin\n\t\t}\n\t}\n}\n", port, a.addr(), b.addr()))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Several sessions, so the round robin puts them on both upstreams
	// and each session's POSTs must follow its stream.
	for i := range 4 {
		client := mcp.NewClient(&mcp.Implementation{Name: "legacy", Version: "1"}, nil)
		cs, err := client.Connect(ctx, &mcp.SSEClientTransport{Endpoint: proxyURL(port) + "/legacy/sse"}, legacyOptions)
		if err != nil {
			t.Fatalf("legacy connect %d: %v", i, err)
		}
		if v := cs.InitializeResult().ProtocolVersion; v != "2024-11-05" && v != "2025-03-26" && v != "2025-06-18" && v != "2025-11-25" {
			t.Fatalf("negotiated %s", v)
		}
		want := fmt.Sprintf("legacy-%d", i)
		if got, err := echo(ctx, cs, want); err != nil || got != want {
			t.Fatalf("echo over legacy transport: %q %v", got, err)
		}
		cs.Close()
	}
	assertBothUsed(t, "legacy sessions did not spread", a, b)
}
