package h1stream

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// rawUpstream accepts one connection and answers it with resp after
// reading the request head; it reports the request head and when the
// connection is closed by the peer.
func rawUpstream(t *testing.T, resp string) (addr string, head <-chan string, closed <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	h, c := make(chan string, 1), make(chan struct{})
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		var sb strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			sb.WriteString(line)
			if line == "\r\n" {
				break
			}
		}
		h <- sb.String()
		io.WriteString(conn, resp)
		_, _ = io.Copy(io.Discard, conn) // until the proxy closes
		close(c)
	}()
	return ln.Addr().String(), h, c
}

func testDialer() *Dialer {
	var d net.Dialer
	return &Dialer{DialContext: d.DialContext, MaxResponseHeaderSize: 4096}
}

func TestDialerRelaysAndCloses(t *testing.T) {
	addr, head, closed := rawUpstream(t, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"d\r\ndata: hello\n\n\r\n")
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/mcp", nil)
	req.Host = "upstream.example"
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Mcp-Session-Id", "abc")
	d := testDialer()
	if !d.Handles(req) {
		t.Fatal("an SSE GET is not handled")
	}
	resp, err := d.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	h := <-head
	if !strings.HasPrefix(h, "GET /mcp HTTP/1.1\r\n") || !strings.Contains(h, "Host: upstream.example\r\n") || !strings.Contains(h, "Mcp-Session-Id: abc\r\n") {
		t.Errorf("request head %q", h)
	}
	buf := make([]byte, 64)
	n, err := resp.Body.Read(buf)
	if err != nil || string(buf[:n]) != "data: hello\n\n" {
		t.Fatalf("body %q, %v", buf[:n], err)
	}
	// Closing the endless body returns at once and closes the connection.
	done := make(chan struct{})
	go func() { resp.Body.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Body.Close blocked")
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("upstream connection not closed")
	}
}

func TestDialerContextCloses(t *testing.T) {
	addr, _, closed := rawUpstream(t, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := testDialer().RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	cancel()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("cancelling the request did not close the upstream connection")
	}
}

func TestDialerHeaderCap(t *testing.T) {
	addr, _, _ := rawUpstream(t, "HTTP/1.1 200 OK\r\nX-Big: "+strings.Repeat("x", 8192)+"\r\n\r\n")
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	req.Header.Set("Accept", "text/event-stream")
	if _, err := testDialer().RoundTrip(req); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("err = %v, want a header-too-large error", err)
	}
}

func TestDialerHandles(t *testing.T) {
	d := testDialer()
	for _, tc := range []struct {
		method, url, accept string
		want                bool
	}{
		{"GET", "http://127.0.0.1:1/", "text/event-stream", true},
		{"GET", "//127.0.0.1:1/", "application/json, Text/Event-Stream", true},
		{"GET", "https://127.0.0.1:1/", "text/event-stream", false},
		{"GET", "http://127.0.0.1:1/", "application/json", false},
		{"POST", "http://127.0.0.1:1/", "text/event-stream", false},
	} {
		req, _ := http.NewRequest(tc.method, tc.url, nil)
		req.Header.Set("Accept", tc.accept)
		if got := d.Handles(req); got != tc.want {
			t.Errorf("%s %s %q: handles = %v", tc.method, tc.url, tc.accept, got)
		}
	}
	// A forward proxy from the environment is decided on the request as
	// it will be sent (scheme http), not on the scheme-less URL a reverse
	// proxy hands over: such a stream is left to the transport.
	proxied := testDialer()
	proxied.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: "proxy.invalid:3128"})
	envLike := testDialer()
	envLike.Proxy = func(r *http.Request) (*url.URL, error) {
		if r.URL.Scheme != "http" {
			return nil, nil // what ProxyFromEnvironment does without a scheme
		}
		return &url.URL{Scheme: "http", Host: "proxy.invalid:3128"}, nil
	}
	for _, pd := range []*Dialer{proxied, envLike} {
		req, _ := http.NewRequest("GET", "//127.0.0.1:1/", nil)
		req.Header.Set("Accept", "text/event-stream")
		if pd.Handles(req) {
			t.Error("a stream that a proxy applies to is dialled directly")
		}
	}
	var nilDialer *Dialer
	req, _ := http.NewRequest("GET", "http://127.0.0.1:1/", nil)
	req.Header.Set("Accept", "text/event-stream")
	if nilDialer.Handles(req) {
		t.Error("a nil dialer handles requests")
	}
	if (&Dialer{}).Handles(req) {
		t.Error("a dialer without DialContext handles requests")
	}
}

func TestDialerSkipsInformational(t *testing.T) {
	addr, _, _ := rawUpstream(t, "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"+
		"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nd\r\ndata: hello\n\n\r\n")
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := testDialer().RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want the final 200", resp.StatusCode)
	}
	buf := make([]byte, 64)
	if n, err := resp.Body.Read(buf); err != nil || string(buf[:n]) != "data: hello\n\n" {
		t.Fatalf("body %q, %v", buf[:n], err)
	}
}

func TestDialerDetach(t *testing.T) {
	addr, _, closed := rawUpstream(t, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"d\r\ndata: hello\n\n\r\n")
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := testDialer().RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, ok := resp.Body.(*Body)
	if !ok {
		t.Fatalf("body is a %T, want a *Body", resp.Body)
	}
	if !body.Detach() {
		t.Fatal("Detach reported the context over")
	}
	// Detached, the stream outlives its request's context.
	cancel()
	buf := make([]byte, 64)
	if n, err := body.Read(buf); err != nil || string(buf[:n]) != "data: hello\n\n" {
		t.Fatalf("body after cancel %q, %v", buf[:n], err)
	}
	select {
	case <-closed:
		t.Fatal("cancelling a detached stream's request closed its connection")
	default:
	}
	body.Close()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not close the detached stream's connection")
	}
}

func TestDialerDetachAfterCancel(t *testing.T) {
	addr, _, closed := rawUpstream(t, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := testDialer().RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("cancelling the request did not close the upstream connection")
	}
	if resp.Body.(*Body).Detach() {
		t.Error("Detach after the context ended reported success")
	}
	resp.Body.Close()
}
