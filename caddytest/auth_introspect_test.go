package caddytest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpgate/mcpgate/auth"
)

// TestAuthIntrospectionBounded checks that clients sending opaque tokens
// cannot make mcp_auth ask the introspection endpoint without bound: a
// refused token sent again is refused from memory; one client (address)
// has at most auth.DefaultMaxPerClient checks under way, its next getting
// 429; new tokens arriving at once are asked about at most
// auth.DefaultMaxInFlight at a time, and a request that waited for a slot
// for auth.MaxSlotWait gets 503. Both carry Retry-After, not the 401 that
// would send a client back to authorize.
func TestAuthIntrospectionBounded(t *testing.T) {
	var asked, inFlight atomic.Int64
	release := make(chan struct{})
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	defer free()
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		if strings.HasPrefix(r.FormValue("token"), "slow-") {
			inFlight.Add(1)
			defer inFlight.Add(-1)
			<-release
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"active":false}`))
	}))
	defer as.Close()
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(`:%d {
	mcp_auth {
		introspect %s
		resource http://mcp.test/mcp
	}
	respond "ok"
}
`, port, as.URL))
	for i := range 20 {
		status, h, _ := rawPost(t, proxyURL(port)+"/mcp", toolCall("echo"), bearerHdr("revoked-token"))
		if status != http.StatusUnauthorized || !strings.Contains(h.Get("WWW-Authenticate"), "invalid_token") {
			t.Fatalf("request %d: %d %q, want 401 invalid_token", i, status, h.Get("WWW-Authenticate"))
		}
	}
	if n := asked.Swap(0); n != 1 {
		t.Errorf("a revoked token sent 20 times was introspected %d times, want 1", n)
	}

	// Clients of their own addresses, each with its bound of checks.
	from := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}, Timeout: time.Minute}
	}
	var wg sync.WaitGroup
	defer func() { free(); wg.Wait() }()
	for i := range auth.DefaultMaxInFlight {
		hc := from(fmt.Sprint("127.0.0.", 2+i/auth.DefaultMaxPerClient))
		req, err := newPost(context.Background(), proxyURL(port)+"/mcp", toolCall("echo"), bearerHdr(fmt.Sprint("slow-", i)))
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			if resp, err := hc.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	if !waitUntil(10*time.Second, 10*time.Millisecond, func() bool { return inFlight.Load() == auth.DefaultMaxInFlight }) {
		t.Fatalf("%d requests in flight at the endpoint, want %d", inFlight.Load(), auth.DefaultMaxInFlight)
	}
	status, h, body := postWith(t, from("127.0.0.2"), proxyURL(port)+"/mcp", toolCall("echo"), bearerHdr("fifth-of-a-client"))
	if status != http.StatusTooManyRequests || h.Get("Retry-After") == "" || h.Get("WWW-Authenticate") != "" {
		t.Errorf("a client's check past its bound: %d Retry-After %q WWW-Authenticate %q %s, want 429 with Retry-After", status, h.Get("Retry-After"), h.Get("WWW-Authenticate"), body)
	}
	status, h, body = postWith(t, from("127.0.0.100"), proxyURL(port)+"/mcp", toolCall("echo"), bearerHdr("one-too-many"))
	if status != http.StatusServiceUnavailable || h.Get("Retry-After") == "" || h.Get("WWW-Authenticate") != "" {
		t.Errorf("a token past the limit: %d Retry-After %q WWW-Authenticate %q %s, want 503 with Retry-After", status, h.Get("Retry-After"), h.Get("WWW-Authenticate"), body)
	}
	if n := asked.Load(); n != auth.DefaultMaxInFlight {
		t.Errorf("the endpoint was asked %d times, want %d", n, auth.DefaultMaxInFlight)
	}
}
