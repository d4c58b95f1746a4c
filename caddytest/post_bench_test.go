package caddytest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// BenchmarkPOSTToolsCall sends tools/call POSTs of one session through
// plain reverse_proxy, mcp_proxy, mcp_proxy with a header the size of a
// bearer token (the control for what the token's bytes cost), and mcp_auth
// in front of mcp_proxy (one token, so its verification is cached), in one
// Caddy in this process,
// to an upstream that answers each at once in JSON. Both sub-benchmarks
// count the client's and the upstream's work too, which is the same for
// both: the difference is what mcp_proxy adds per request. (The bench/
// harness measures the same against a separate Caddy process.)
func BenchmarkPOSTToolsCall(b *testing.B) {
	var sessions atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		var env struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
		}
		if json.Unmarshal(body, &env) != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		var out string
		switch env.Method {
		case "initialize":
			w.Header().Set("Mcp-Session-Id", fmt.Sprintf("bench-session-%d", sessions.Add(1)))
			out = `{"jsonrpc":"2.0","id":` + string(env.ID) + `,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"bench","version":"1"}}}`
		case "tools/call":
			out = `{"jsonrpc":"2.0","id":` + string(env.ID) + `,"result":{"content":[{"type":"text","text":"ok"}]}}`
		default:
			w.WriteHeader(http.StatusAccepted)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(out)))
		_, _ = io.WriteString(w, out)
	}))
	defer up.Close()
	addr := up.Listener.Addr().String()
	plain, proxied, authed, governed := freePort(b), freePort(b), freePort(b), freePort(b)
	secret := bytes.Repeat([]byte("k"), 32)
	authBlock := "\tmcp_auth {\n\t\tissuer bench\n\t\tresource http://127.0.0.1/mcp\n\t\tkey secret " +
		base64.StdEncoding.EncodeToString(secret) + " kid k alg HS256\n\t\talgorithms HS256\n\t}\n"
	loadCaddyfile(b, fmt.Sprintf(":%d {\n\treverse_proxy %s\n}\n:%d {\n\tmcp_proxy %s\n}\n"+
		":%d {\n%s\tmcp_proxy %s\n}\n:%d {\n%s\tmcp_proxy %s {\n%s\t}\n}\n",
		plain, addr, proxied, addr, authed, authBlock, addr, governed, authBlock, addr, benchPolicy))
	token := benchToken(b, secret, "http://127.0.0.1/mcp")
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	defer hc.CloseIdleConnections()

	// padded is mcp_proxy's site under another name: its requests carry a
	// header of the token's size, the control for what the token's bytes
	// alone cost.
	padded := strings.Replace(proxyURL(proxied), "127.0.0.1", "localhost", 1)
	post := func(b *testing.B, url, sid, body string) (*http.Response, error) {
		req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader([]byte(body)))
		if err != nil {
			return nil, err
		}
		req.Header["Content-Type"] = []string{"application/json"}
		req.Header["Accept"] = []string{"application/json, text/event-stream"}
		if strings.Contains(url, fmt.Sprintf(":%d/", authed)) || strings.Contains(url, fmt.Sprintf(":%d/", governed)) {
			req.Header["Authorization"] = []string{"Bearer " + token}
		}
		if strings.HasPrefix(url, padded) {
			req.Header["X-Padding"] = []string{"Bearer " + token}
		}
		if sid != "" {
			req.Header["Mcp-Session-Id"] = []string{sid}
			req.Header["Mcp-Protocol-Version"] = []string{"2025-06-18"}
		}
		return hc.Do(req)
	}
	for _, tc := range []struct {
		name, base string
	}{{"plain", proxyURL(plain)}, {"mcp_proxy", proxyURL(proxied)}, {"mcp_proxy_token_sized_header", padded}, {"mcp_auth", proxyURL(authed)}, {"mcp_auth_policy", proxyURL(governed)}} {
		b.Run(tc.name, func(b *testing.B) {
			url := tc.base + "/mcp"
			resp, err := post(b, url, "", `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}`)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			sid := resp.Header.Get("Mcp-Session-Id")
			if resp.StatusCode != http.StatusOK || sid == "" {
				b.Fatalf("initialize: %d, session %q", resp.StatusCode, sid)
			}
			var id atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(8) // 16 clients on 2 cores: throughput, not latency
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					body := `{"jsonrpc":"2.0","id":` + strconv.FormatInt(id.Add(1), 10) + `,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}`
					resp, err := post(b, url, sid, body)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("tools/call: %d", resp.StatusCode)
						return
					}
				}
			})
		})
	}
}

// benchPolicy is the mcp_auth_policy site's governance: ten rules (one
// of them allowing the echo tool the benchmark calls) and the audit trail.
const benchPolicy = `		rules {
			deny tool t1_*
			deny tool t2_* unless principal bench-user
			deny tool admin_* unless scope admin
			deny tool shell_* exec_* run_*
			deny tool echo stream unless principal bench-user
			deny tool * unless scope mcp
			deny prompt secret_*
			deny resource file:///etc/*
			deny method logging/setLevel
			allow tool echo stream if principal bench-user
		}
		audit
`

// benchToken signs an HS256 access token for resource, valid for an hour.
func benchToken(b *testing.B, secret []byte, resource string) string {
	now := time.Now()
	return signWith(b, jose.HS256, jose.JSONWebKey{Key: secret, KeyID: "k"}, map[string]any{
		"iss": "bench", "sub": "bench-user", "aud": resource, "scope": "mcp",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	})
}
