//go:build unix

package caddytest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// The HTTP/3 parity pass: what the HTTP/1.1 and HTTP/2 tests check, over
// QUIC, which Caddy serves by default on every HTTPS site.

// h3Site is a Caddy HTTPS site on loopback serving HTTP/1.1, HTTP/2 and
// HTTP/3, and how to reach it.
type h3Site struct {
	base string // https://localhost:<port>
	pool *x509.CertPool
}

// startH3Site runs a Caddy whose only site, https://localhost on a free
// port bound to 127.0.0.1 (TCP and UDP), has the test CA's certificate
// and an mcp_proxy to up with the lines of block, and the extra global
// options global.
func startH3Site(t *testing.T, global, up, block string) h3Site {
	t.Helper()
	port := freePort(t)
	ca := newTestCA(t)
	certFile, keyFile := ca.writeFiles("localhost", ca.issue("localhost", "localhost"))
	site := fmt.Sprintf("https://localhost:%d {\n\tbind 127.0.0.1\n\ttls %s %s\n\tmcp_proxy %s {\n%s\t}\n}\n",
		port, certFile, keyFile, up, block)
	loadCaddyfileWith(t, "\tservers {\n\t\tprotocols h1 h2 h3\n\t}\n"+global, site)
	return h3Site{base: fmt.Sprintf("https://localhost:%d", port), pool: ca.pool}
}

// h3Transport returns an HTTP/3 client transport that trusts the site's
// CA and dials 127.0.0.1 whatever the host. A positive window caps what
// each stream buffers for the test unread (flow control holds the proxy
// back past it). The transport is closed when the test ends.
func (s h3Site) h3Transport(t *testing.T, window uint64) *http3.Transport {
	qc := &quic.Config{}
	if window > 0 {
		qc.InitialStreamReceiveWindow, qc.MaxStreamReceiveWindow = window, window
	}
	tr := &http3.Transport{
		TLSClientConfig:    &tls.Config{RootCAs: s.pool, MinVersion: tls.VersionTLS13},
		QUICConfig:         qc,
		DisableCompression: true,
		Dial: func(ctx context.Context, addr string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return quic.DialAddrEarly(ctx, net.JoinHostPort("127.0.0.1", port), tlsCfg, cfg)
		},
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// h3Client is an HTTP/3 client of the site (see h3Transport).
func (s h3Site) h3Client(t *testing.T, window uint64) *http.Client {
	return &http.Client{Transport: s.h3Transport(t, window)}
}

// TestH3Refusals: over HTTP/3, the answers the proxy gives of its own are
// well-formed HTTP/3 responses with their status and a JSON-RPC error
// body: a body declared over max_body (413), one that turns out longer
// than it (413), a body that stops coming (408), a request whose
// deadline passes while its body is still coming (a JSON-RPC error in a
// 200), a request without a session (400) and a malformed body (400), each followed by a request the connection serves; then a DELETE
// over HTTP/3 ends the session upstream.
func TestH3Refusals(t *testing.T) {
	fake := startFake(t, &fakeUpstream{})
	site := startH3Site(t, "", fake.addr(), "\t\tmax_body 4KiB\n\t\tmax_peek 1KiB\n\t\tbody_timeout 2s\n\t\trequest_timeout 500ms\n")
	hc := site.h3Client(t, 0)
	url := site.base + "/mcp"
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	sid := fake.openSessionWith(t, hc, site.base, relayVersion)
	hdr := sessionHeaders(sid, relayVersion)
	big := echoCall(5, strings.Repeat("b", 8<<10))
	refusals := []struct {
		what   string
		send   func() reply
		status int
		id     string
		code   int
	}{
		{"a body declared over max_body", func() reply { return post(ctx, hc, url, big, hdr) }, http.StatusRequestEntityTooLarge, "null", -32600},
		{"a body of unknown length over max_body", func() reply { return postUnsized(ctx, hc, url, big, hdr) }, http.StatusRequestEntityTooLarge, "5", -32600},
		{"a request without a session", func() reply {
			return post(ctx, hc, url, echoCall(6, "x"), map[string]string{"Mcp-Protocol-Version": relayVersion})
		}, http.StatusBadRequest, "6", -32000},
		{"a body that stops before max_peek", func() reply { return postStalled(ctx, hc, url, big[:100], hdr) }, http.StatusRequestTimeout, "null", -32600},
		{"a request whose deadline passes as its body arrives", func() reply { return postStalled(ctx, hc, url, big[:2<<10], hdr) }, http.StatusOK, "5", -32001},
		{"a malformed body", func() reply { return post(ctx, hc, url, `{"jsonrpc":"2.0","id":7,`, hdr) }, http.StatusBadRequest, "null", -32700},
	}
	for _, rc := range refusals {
		r := rc.send()
		if r.err != nil || r.status != rc.status {
			t.Errorf("%s over HTTP/3: %v, want %d", rc.what, r, rc.status)
			continue
		}
		rpcErrorFor(t, rc.what, r.body, rc.id, rc.code)
		if r := post(ctx, hc, url, echoCall(8, "after"), hdr); !r.ok() {
			t.Errorf("the request after %s: %s", rc.what, r)
		}
	}
	if r := deleteSession(ctx, hc, url, sid, relayVersion); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("DELETE over HTTP/3: %v", r)
	}
	if fake.deletedKnown.Load() != 1 {
		t.Errorf("the upstream ended %d sessions, want 1", fake.deletedKnown.Load())
	}
	r := post(ctx, hc, url, echoCall(9, "gone"), hdr)
	if r.err != nil || r.status != http.StatusNotFound {
		t.Errorf("a request of the deleted session: %v, want 404", r)
	}
}

// postUnsized is post with a body whose length the client does not
// declare.
func postUnsized(ctx context.Context, hc *http.Client, url, body string, hdr map[string]string) reply {
	req, err := newPost(ctx, url, body, hdr)
	if err != nil {
		return reply{err: err}
	}
	req.Body, req.ContentLength, req.GetBody = io.NopCloser(strings.NewReader(body)), -1, nil
	return readReply(hc.Do(req))
}

// postStalled is post with a body of unknown length whose first bytes,
// head, come at once and the rest never, until the answer is read.
func postStalled(ctx context.Context, hc *http.Client, url, head string, hdr map[string]string) reply {
	req, err := newPost(ctx, url, "", hdr)
	if err != nil {
		return reply{err: err}
	}
	pr, pw := io.Pipe()
	go func() { _, _ = io.WriteString(pw, head) }()
	defer pw.CloseWithError(io.ErrUnexpectedEOF)
	req.Body, req.ContentLength, req.GetBody = pr, -1, nil
	return readReply(hc.Do(req))
}
