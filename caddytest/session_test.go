package caddytest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestSessionEraEndToEnd drives a go-sdk client through mcp_proxy to a
// stateful go-sdk server: initialize, list, call (JSON and SSE answers with
// progress notifications), and the session id the client sees is sealed.
func TestSessionEraEndToEnd(t *testing.T) {
	up := startUpstream(t, "up", &mcp.StreamableHTTPOptions{})
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, up.addr()))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rec := &headerRecorder{base: http.DefaultTransport}
	for _, version := range []string{"2025-03-26", "2025-06-18", "2025-11-25"} {
		t.Run(version, func(t *testing.T) {
			cs := connect(t, ctx, proxyURL(port)+"/mcp", &http.Client{Transport: rec}, &mcp.ClientSessionOptions{ProtocolVersion: version})
			defer cs.Close()
			if got := cs.InitializeResult().ProtocolVersion; got != version {
				t.Fatalf("negotiated %s", got)
			}
			tools, err := cs.ListTools(ctx, nil)
			if err != nil || len(tools.Tools) != 3 {
				t.Fatalf("tools/list: %v %v", tools, err)
			}
			if got, err := echo(ctx, cs, "hello"); err != nil || got != "hello" {
				t.Fatalf("echo: %q %v", got, err)
			}
			var progress sync.WaitGroup
			progress.Add(5)
			res, err := cs.CallTool(ctx, &mcp.CallToolParams{
				Meta:      mcp.Meta{"progressToken": "p1"},
				Name:      "countdown",
				Arguments: map[string]any{"from": 5},
			})
			if err != nil || res.IsError {
				t.Fatalf("countdown: %+v %v", res, err)
			}
			sid := rec.session()
			if sid == "" || strings.Count(sid, "-") > 3 && len(sid) < 60 {
				t.Fatalf("client saw session id %q; want a sealed token", sid)
			}
			if !validVisibleASCII(sid) {
				t.Fatalf("session id %q has characters outside 0x21-0x7E", sid)
			}
		})
	}
}

func validVisibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return s != ""
}

// TestTwoUpstreamsPinnedSessions runs 20 concurrent sessions on each of two
// upstreams behind round-robin: every request of a session must reach the
// upstream that created it, or the stateful servers answer 404.
func TestTwoUpstreamsPinnedSessions(t *testing.T) {
	a, b := startTwoUpstreams(t)
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s %s {\n\t\tlb_policy round_robin\n\t}\n}\n", port, a.addr(), b.addr()))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const sessions = 40
	errs := make(chan error, sessions)
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := mcp.NewClient(&mcp.Implementation{Name: "c", Version: "1"}, nil)
			cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: proxyURL(port) + "/", MaxRetries: 1}, nil)
			if err != nil {
				errs <- fmt.Errorf("session %d: connect: %w", i, err)
				return
			}
			defer cs.Close()
			for j := range 3 {
				if _, err := cs.ListTools(ctx, nil); err != nil {
					errs <- fmt.Errorf("session %d: tools/list %d: %w", i, j, err)
					return
				}
				want := fmt.Sprintf("s%d-%d", i, j)
				if got, err := echo(ctx, cs, want); err != nil || got != want {
					errs <- fmt.Errorf("session %d: echo %q: %q %w", i, want, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assertBothUsed(t, "round robin did not use both upstreams", a, b)
}

// TestSessionTokenRefusals checks the answers for tokens that must not
// open, and that none of them reaches the upstream.
func TestSessionTokenRefusals(t *testing.T) {
	up := startUpstream(t, "up", nil)
	port := freePort(t)
	const key = "0123456789abcdef0123456789abcdef-test-key"
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tsession_key %q\n\t\tsession_lifetime 2s\n\t}\n}\n", port, up.addr(), key))
	url := proxyURL(port) + "/mcp"

	status, hdr, body := rawPost(t, url, initializeBody, nil)
	sid := hdr.Get("Mcp-Session-Id")
	if status != http.StatusOK || sid == "" {
		t.Fatalf("initialize: %d %q %s", status, sid, body)
	}
	list := `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`
	v := map[string]string{"Mcp-Protocol-Version": "2025-06-18"}
	with := func(k, val string) map[string]string {
		m := map[string]string{k: val}
		for a, b := range v {
			m[a] = b
		}
		return m
	}
	if st, _, b := rawPost(t, url, list, with("Mcp-Session-Id", sid)); st != http.StatusOK {
		t.Fatalf("valid token: %d %s", st, b)
	}
	before := up.requests.Load()
	tampered := []byte(sid)
	if tampered[10] == 'A' {
		tampered[10] = 'B'
	} else {
		tampered[10] = 'A'
	}
	for name, tok := range map[string]string{
		"tampered": string(tampered),
		"garbage":  "not-a-token",
		"upstream": "6MP7KQGMD44FUJEBX3YXENYGDG",
	} {
		st, _, b := rawPost(t, url, list, with("Mcp-Session-Id", tok))
		if st != http.StatusNotFound || !strings.Contains(b, `"code":-32001`) || !strings.Contains(b, `"id":2`) {
			t.Errorf("%s token: %d %s", name, st, b)
		}
	}
	// A token sealed by another key (another deployment) is foreign.
	port2 := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tsession_key %q\n\t}\n}\n", port2, up.addr(), "another-key-another-key-another-key-!"))
	if st, _, b := rawPost(t, proxyURL(port2)+"/mcp", list, with("Mcp-Session-Id", sid)); st != http.StatusNotFound {
		t.Errorf("foreign token: %d %s", st, b)
	}
	// Missing session id on a session-era request is 400.
	if st, _, b := rawPost(t, proxyURL(port2)+"/mcp", list, v); st != http.StatusBadRequest {
		t.Errorf("missing session: %d %s", st, b)
	}
	if got := up.requests.Load(); got != before {
		t.Errorf("refused requests reached the upstream: %d", got-before)
	}

	// Expiry: the first config's tokens live 2s.
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tsession_key %q\n\t\tsession_lifetime 2s\n\t}\n}\n", port, up.addr(), key))
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _, b := rawPost(t, url, list, with("Mcp-Session-Id", sid))
		if st == http.StatusNotFound && strings.Contains(b, "-32001") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token never expired: %d %s", st, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A token naming an upstream that is no longer configured is 404.
	other := startUpstream(t, "other", nil)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tsession_key %q\n\t}\n}\n", port, up.addr(), key))
	_, hdr, _ = rawPost(t, url, initializeBody, nil)
	sid = hdr.Get("Mcp-Session-Id")
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tsession_key %q\n\t}\n}\n", port, other.addr(), key))
	if st, _, b := rawPost(t, url, list, with("Mcp-Session-Id", sid)); st != http.StatusNotFound {
		t.Errorf("token of a removed upstream: %d %s", st, b)
	}
}
