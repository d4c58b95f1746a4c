//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// target is one endpoint under test.
type target struct {
	Name string // direct, plain, mcp_proxy, mcp_auth
	URL  string
	// Token, when set, is the bearer token every request to the target
	// carries (mcp_auth); see target.client.
	Token string
}

const (
	protocolVersion = "2025-06-18"
	initializeBody  = `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"mcpgate-bench","version":"1.0.0"}}}`
	// okMarker is part of every successful tools/call answer of the mock.
	okMarker = `"text":"ok"`
	// listMarker is part of the mock's tools/list answer, also when
	// filtered by the bench's rules (they allow echo).
	listMarker = `"name":"echo"`
)

// newTransport returns an HTTP/1.1 transport tuned for loopback load:
// enough idle connections per host that none is closed between requests.
func newTransport(maxIdlePerHost int) *http.Transport {
	return &http.Transport{
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          0, // no global limit
		MaxIdleConnsPerHost:   maxIdlePerHost,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		ResponseHeaderTimeout: 0,
		WriteBufferSize:       4 << 10,
		ReadBufferSize:        4 << 10,
	}
}

// newSpreadTransport is newTransport whose connections come, in turn,
// from the loopback addresses 127.0.1.1 … 127.0.1.n, so that Caddy sees
// n clients instead of one (mcp_proxy's client_key is the remote address
// by default, and the mcp app caps the sessions of one client). Linux
// routes all of 127.0.0.0/8 to the loopback interface, so no set-up is
// needed.
func newSpreadTransport(maxIdlePerHost, n int) *http.Transport {
	tr := newTransport(maxIdlePerHost)
	var next atomic.Uint32
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		i := next.Add(1) % uint32(n)
		d := net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
			LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(i+1))},
		}
		return d.DialContext(ctx, network, addr)
	}
	return tr
}

// toolsListBody is the JSON-RPC tools/list request with id n.
func toolsListBody(dst []byte, n int64) []byte {
	dst = append(dst, `{"jsonrpc":"2.0","id":`...)
	dst = strconv.AppendInt(dst, n, 10)
	return append(dst, `,"method":"tools/list","params":{}}`...)
}

// toolsCallBody is the JSON-RPC tools/call request with id n.
func toolsCallBody(dst []byte, n int64) []byte {
	dst = append(dst, `{"jsonrpc":"2.0","id":`...)
	dst = strconv.AppendInt(dst, n, 10)
	return append(dst, `,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}`...)
}

// setMCPHeaders sets the headers of an MCP POST; sid may be empty.
func setMCPHeaders(h http.Header, sid string) {
	h["Content-Type"] = []string{"application/json"}
	h["Accept"] = []string{"application/json, text/event-stream"}
	if sid != "" {
		h["Mcp-Protocol-Version"] = []string{protocolVersion}
		h["Mcp-Session-Id"] = []string{sid}
	}
}

// initialize opens an MCP session at url and returns its Mcp-Session-Id.
func initialize(ctx context.Context, c *http.Client, url string) (string, error) {
	return initializeWith(ctx, c, url, initializeBody)
}

// initializeWith opens a session with the initialize request body and
// returns its Mcp-Session-Id; a 503 or 429 is errRefused.
func initializeWith(ctx context.Context, c *http.Client, url, initBody string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader([]byte(initBody)))
	if err != nil {
		return "", err
	}
	setMCPHeaders(req.Header, "")
	resp, err := c.Do(req)
	if err != nil {
		return "", fmt.Errorf("initialize: %w", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests {
		return "", fmt.Errorf("initialize: status %d: %s: %w", resp.StatusCode, bytes.TrimSpace(body), errRefused)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("initialize: status %d: %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	sid := resp.Header.Get("Mcp-Session-Id")
	if sid == "" {
		return "", errors.New("initialize: no Mcp-Session-Id in the answer")
	}
	return sid, nil
}

// initializeRetrying is initialize that tries again, up to 10 times half
// a second apart, while the target refuses new sessions (503 or 429).
func initializeRetrying(ctx context.Context, c *http.Client, url string) (string, error) {
	for try := 0; ; try++ {
		sid, err := initialize(ctx, c, url)
		if err == nil || try >= 9 || !(errors.Is(err, errRefused)) {
			return sid, err
		}
		if !pause(ctx, 500*time.Millisecond) {
			return "", ctx.Err()
		}
	}
}

// warmConns is how many keep-alive connections the overload client opens
// before a window at rate requests per second: 25 ms worth, 64 to 512.
func warmConns(rate float64) int {
	return min(512, max(64, int(rate*0.025)))
}

// warmConnections sends n concurrent pings in session sid, so that the
// client's pool holds up to n open connections afterwards.
func warmConnections(ctx context.Context, c *http.Client, url, sid string, n int) error {
	errs := make(chan error, n)
	for i := range n {
		go func() {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			body := fmt.Sprintf(`{"jsonrpc":"2.0","id":"warm-%d","method":"ping"}`, i)
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
			if err != nil {
				errs <- err
				return
			}
			setMCPHeaders(req.Header, sid)
			resp, err := c.Do(req)
			if err != nil {
				errs <- fmt.Errorf("warming connections: %w", err)
				return
			}
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			errs <- nil
		}()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// errRefused marks an initialize refused with 503 or 429.
var errRefused = errors.New("refused")

// outcome classifies one request's result.
type outcome uint8

const (
	outOK      outcome = iota // 200 with the expected body
	outStatus                 // any other status
	outBadBody                // 200 without the expected body
	outTimeout                // client deadline passed
	outError                  // transport error
)

// callResult is one tools/call's result.
type callResult struct {
	out        outcome
	status     int
	retryAfter bool  // a non-200 answer carried Retry-After
	err        error // the transport error of outError
}

// doCall sends one tools/call and reads the whole answer into buf.
func doCall(ctx context.Context, c *http.Client, url, sid string, body []byte, buf *bytes.Buffer) callResult {
	return doPost(ctx, c, url, sid, body, okMarker, buf)
}

// doPost sends one request and reads the whole answer into buf; a 200
// counts as answered when its body contains marker.
func doPost(ctx context.Context, c *http.Client, url, sid string, body []byte, marker string, buf *bytes.Buffer) callResult {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return callResult{out: outError}
	}
	setMCPHeaders(req.Header, sid)
	resp, err := c.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded {
			return callResult{out: outTimeout}
		}
		return callResult{out: outError, err: err}
	}
	buf.Reset()
	_, err = buf.ReadFrom(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded {
			return callResult{out: outTimeout, status: resp.StatusCode}
		}
		return callResult{out: outError, status: resp.StatusCode, err: err}
	}
	if resp.StatusCode != http.StatusOK {
		return callResult{out: outStatus, status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After") != ""}
	}
	if !bytes.Contains(buf.Bytes(), []byte(marker)) {
		return callResult{out: outBadBody, status: resp.StatusCode}
	}
	return callResult{out: outOK, status: resp.StatusCode}
}
