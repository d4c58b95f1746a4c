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
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
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
// and an mcp_proxy to up with the lines of block, with the extra global
// options global and the extra server options servers.
func startH3Site(t *testing.T, global, servers, up, block string) h3Site {
	t.Helper()
	port := freePort(t)
	ca := newTestCA(t)
	certFile, keyFile := ca.writeFiles("localhost", ca.issue("localhost", "localhost"))
	site := fmt.Sprintf("https://localhost:%d {\n\tbind 127.0.0.1\n\ttls %s %s\n\tmcp_proxy %s {\n%s\t}\n}\n",
		port, certFile, keyFile, up, block)
	loadCaddyfileWith(t, global+"\tservers {\n\t\tprotocols h1 h2 h3\n"+servers+"\t}\n", site)
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

// protoCheck is a RoundTripper that fails every answer that did not come
// over HTTP/major, so a client that fell back to another protocol is
// seen, and records the media types of the answers to POSTs.
type protoCheck struct {
	base  http.RoundTripper
	major int

	mu    sync.Mutex
	types []string
}

func (p *protoCheck) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := p.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	if resp.ProtoMajor != p.major {
		resp.Body.Close()
		return nil, fmt.Errorf("%s %s answered over %s, want HTTP/%d", r.Method, r.URL, resp.Proto, p.major)
	}
	if r.Method == http.MethodPost && resp.StatusCode == http.StatusOK {
		p.mu.Lock()
		p.types = append(p.types, strings.Split(resp.Header.Get("Content-Type"), ";")[0])
		p.mu.Unlock()
	}
	return resp, nil
}

// answerTypes returns the media types of the 200 answers to POSTs so far.
func (p *protoCheck) answerTypes() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.types)
}

// TestH3GoSDKClient: a go-sdk client over HTTP/3 initializes through the
// proxy and calls tools: the echo of an upstream that answers in JSON,
// and, of one that answers in SSE, a countdown that sends progress
// notifications, then its result.
func TestH3GoSDKClient(t *testing.T) {
	for _, tc := range []struct {
		name, media string
		opts        *mcp.StreamableHTTPOptions
	}{{"json", "application/json", &mcp.StreamableHTTPOptions{JSONResponse: true}}, {"sse", "text/event-stream", nil}} {
		t.Run(tc.name, func(t *testing.T) {
			up := startUpstream(t, "h3-"+tc.name, tc.opts)
			site := startH3Site(t, "", "", up.addr(), "")
			rt := &protoCheck{base: site.h3Transport(t, 0), major: 3}
			ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
			defer cancel()
			progress := make(chan float64, 16)
			client := mcp.NewClient(&mcp.Implementation{Name: "e2e-h3", Version: "1"}, &mcp.ClientOptions{
				ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
					select {
					case progress <- req.Params.Progress:
					default:
					}
				},
			})
			cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: site.base + "/mcp", HTTPClient: &http.Client{Transport: rt}, MaxRetries: 1}, nil)
			if err != nil {
				t.Fatalf("connecting over HTTP/3: %v", err)
			}
			defer cs.Close()
			if got, err := echo(ctx, cs, "over quic"); err != nil || got != "over quic" {
				t.Fatalf("echo over HTTP/3: %q %v", got, err)
			}
			if tc.name == "sse" {
				res, err := cs.CallTool(ctx, &mcp.CallToolParams{Meta: mcp.Meta{"progressToken": "h3"}, Name: "countdown", Arguments: map[string]any{"from": 5}})
				if err != nil || res.IsError || len(res.Content) != 1 || res.Content[0].(*mcp.TextContent).Text != "liftoff" {
					t.Fatalf("countdown over HTTP/3: %+v %v", res, err)
				}
				// The client's handler may run after the result arrived.
				var got []float64
				for range 5 {
					got = append(got, awaitProgress(t, progress))
				}
				if !slices.Equal(got, []float64{1, 2, 3, 4, 5}) {
					t.Errorf("countdown's progress notifications over HTTP/3: %v, want 1..5", got)
				}
			}
			types := rt.answerTypes()
			if len(types) < 2 {
				t.Fatalf("answers to POSTs: %v", types)
			}
			for _, mt := range types {
				if mt != tc.media {
					t.Errorf("answers to POSTs over HTTP/3: %v, want %s", types, tc.media)
					break
				}
			}
		})
	}
}

// awaitProgress waits for the next progress value on ch.
func awaitProgress(t *testing.T, ch <-chan float64) float64 {
	t.Helper()
	select {
	case p := <-ch:
		return p
	case <-time.After(boundedWait):
		t.Fatal("no progress notification")
	}
	return 0
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
	site := startH3Site(t, "", "", fake.addr(), "\t\tmax_body 4KiB\n\t\tmax_peek 1KiB\n\t\tbody_timeout 2s\n\t\trequest_timeout 500ms\n")
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

// TestH3SilentLongerThanWriteTimeout: over HTTP/3, a GET stream and the
// SSE answer of a call stay silent longer than write_timeout (keepalive
// off in effect), then carry an event: a write deadline left armed
// between writes must not end them (over HTTP/2 one did).
func TestH3SilentLongerThanWriteTimeout(t *testing.T) {
	const writeTimeout = 2 * time.Second // see TestStreamSilentLongerThanWriteTimeout
	fake := startFake(t, &fakeUpstream{on: map[string]func(*fakeCall){"tools/call:slow": slowFakeTool(make(chan string, 8))}})
	site := startH3Site(t, "", "", fake.addr(), fmt.Sprintf("\t\twrite_timeout %v\n\t\tkeepalive 5m\n", writeTimeout))
	ctx, cancel := context.WithTimeout(context.Background(), 2*boundedWait)
	defer cancel()
	checkSilentStream(t, ctx, fake, site.base, "HTTP/3", 3, site.h3Client(t, 0), writeTimeout+time.Second)
}

// TestH3Keepalive: an idle GET stream over HTTP/3 gets keepalive comments,
// also with a write_timeout shorter than the keepalive period, and still
// carries the upstream's next event.
func TestH3Keepalive(t *testing.T) {
	u, next := keepaliveUpstream(t)
	site := startH3Site(t, "", "", u.addr(), "\t\tkeepalive 300ms\n\t\twrite_timeout 100ms\n")
	checkKeepalive(t, u, next, site.base, site.h3Client(t, 0), 3)
}

// TestH3SlowConsumer: a GET stream whose HTTP/3 client stops reading (its
// QUIC stream's flow-control window, 16 KiB, fills) is cut and its
// upstream GET closed, while another stream of the same QUIC connection
// goes on; once the client is gone, no goroutine is left behind.
func TestH3SlowConsumer(t *testing.T) {
	const slack = 10 // goroutines that may come and go
	u := slowConsumerUpstream(t)
	site := startH3Site(t, "", "", u.addr(), "\t\twrite_timeout 1s\n")
	baseline := settledGoroutines()
	tr := site.h3Transport(t, 16<<10)
	checkSlowConsumer(t, u, site.base, &http.Client{Transport: tr}, 3)
	_ = tr.Close()
	if !u.streamOf(t, "steady").waitDone(boundedWait) {
		t.Fatal("the steady stream's upstream GET outlived its client")
	}
	var now int
	if !waitUntil(boundedWait, 50*time.Millisecond, func() bool { now = runtime.NumGoroutine(); return now <= baseline+slack }) {
		t.Errorf("%d goroutines after the client left, baseline %d (+%d allowed)\n%s", now, baseline, slack, goroutineDump())
	}
}

// TestH3SlowConsumerOfAnswer: the SSE answer of a call whose HTTP/3 client
// stops reading is cut, and the upstream's answer, far larger than every
// buffer on the way, is read to its end all the same.
func TestH3SlowConsumerOfAnswer(t *testing.T) {
	fake, finished := floodUpstream(t)
	site := startH3Site(t, "", "", fake.addr(), "\t\twrite_timeout 1s\n")
	checkSlowConsumerOfAnswer(t, fake, finished, site.base, site.h3Client(t, 16<<10), 3)
}

// TestH3ClientGoneMidCall: an HTTP/3 client of a 2025-06-18 session that
// cancels its request (the QUIC stream is reset) makes the proxy end the
// upstream request and post notifications/cancelled with the request's
// id in the session, as over HTTP/1.1: at once when no answer began, and
// once the replay age (1s) has passed when its SSE answer had begun.
func TestH3ClientGoneMidCall(t *testing.T) {
	cancelled := make(chan string, 8)
	fake := startFake(t, &fakeUpstream{on: map[string]func(*fakeCall){"tools/call:slow": slowFakeTool(cancelled)}})
	site := startH3Site(t, "", "", fake.addr(), "\t\treplay 100 1MiB 1s\n")
	hc := site.h3Client(t, 0)
	url := site.base + "/mcp"
	sid := fake.openSessionWith(t, hc, site.base, sessionVersion)
	upstreamSid := fake.mintedIDs()[0]
	for _, tc := range []struct{ id, what, meta string }{
		{"61", "no answer begun", ""},
		{"62", "an SSE answer begun", `,"_meta":{"progressToken":"p62"}`},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		body := `{"jsonrpc":"2.0","id":` + tc.id + `,"method":"tools/call","params":{"name":"slow","arguments":{"key":"never"}` + tc.meta + `}}`
		answered := make(chan *http.Response, 1)
		go func() {
			resp, err := openPost(ctx, hc, url, body, inSession(sid, nil))
			if err != nil {
				resp = nil
			}
			answered <- resp
		}()
		fake.await(t, "call "+tc.id, boundedWait, func(s fakeSeen) bool { return s.id == tc.id })
		if tc.meta != "" {
			resp := <-answered
			if resp == nil || resp.ProtoMajor != 3 || !isSSE(resp) {
				t.Fatalf("%s: the call's answer: %+v", tc.what, resp)
			}
			defer resp.Body.Close()
			if err := firstEvent(resp.Body); err != nil {
				t.Fatalf("%s: %v", tc.what, err)
			}
			answered <- nil
		}
		cancel()
		if id := awaitString(t, cancelled, tc.what+": the upstream request ended"); id != tc.id {
			t.Errorf("%s: the upstream request %s ended, want %s", tc.what, id, tc.id)
		}
		note := fake.await(t, "notifications/cancelled for "+tc.id, boundedWait, func(s fakeSeen) bool { return s.cancelledID() == tc.id })
		if note.sid != upstreamSid {
			t.Errorf("%s: notifications/cancelled came in session %q, want %q", tc.what, note.sid, upstreamSid)
		}
		if resp := <-answered; resp != nil {
			resp.Body.Close()
		}
	}
}

// TestH3SlowConsumerEndsBroken: a GET stream of 5 KB events whose HTTP/3
// client stops reading is cut in the middle of a write, so in the middle
// of an event. The client, reading at last, must not see that as the
// clean end of a stream: its stream must end with an error (a reset), as
// over HTTP/1.1 and HTTP/2, not with a truncated event and a clean end
// that an SSE client reads as a whole one.
func TestH3SlowConsumerEndsBroken(t *testing.T) {
	pad := strings.Repeat("x", 5000)
	u := startFake(t, &fakeUpstream{stream: func(s *fakeStream) error {
		for seq := 1; seq <= 10_000; seq++ { // 50 MB, far more than the buffers on the way
			if err := s.event(fmt.Sprint(seq), `{"pad":"`+pad+`"}`); err != nil {
				return err
			}
		}
		return s.idle(nil)
	}})
	site := startH3Site(t, "", "", u.addr(), "\t\twrite_timeout 1s\n")
	hc := site.h3Client(t, 16<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 2*boundedWait)
	defer cancel()
	resp := mustOpenStream(t, ctx, hc, site.base+"/mcp", u.openSessionWith(t, hc, site.base, relayVersion), relayVersion, "stalled")
	if g := u.streamOf(t, "stalled"); !g.waitDone(boundedWait) || g.selfEnded.Load() {
		t.Fatalf("the proxy did not cut the stalled stream (upstream sent %d events)", g.sent.Load())
	}
	got, err := io.ReadAll(resp.Body)
	t.Logf("the stalled client read %d bytes, then %v", len(got), err)
	if err == nil && !strings.HasSuffix(string(got), "\n\n") {
		t.Errorf("the stalled client's stream ended cleanly in the middle of an event: %q", got[max(0, len(got)-80):])
	}
}

// TestH3BypassesConnectionCap documents a gap: mcp_connections wraps the
// TCP listeners of a server, and Caddy's QUIC listener takes no listener
// wrappers (only packet conn wrappers, which see datagrams, not
// connections). With max_connections 1 held by an HTTP/1.1 connection,
// a further TCP connection is closed at accept, while HTTP/3 clients
// open as many QUIC connections as they like, each served, and none is
// counted (caddy_mcp_connections_active). Should QUIC connections come to
// be counted, this test must change with them.
func TestH3BypassesConnectionCap(t *testing.T) {
	const quicConns = 3
	up := startUpstream(t, "cap", nil)
	site := startH3Site(t, "\tmcp {\n\t\tmax_connections 1\n\t}\n", "\t\tlistener_wrappers {\n\t\t\tmcp_connections\n\t\t\ttls\n\t\t}\n", up.addr(), "")
	addr := "127.0.0.1:" + site.base[strings.LastIndex(site.base, ":")+1:]
	dialTLS := func() (*tls.Conn, error) {
		d := &tls.Dialer{Config: &tls.Config{RootCAs: site.pool, ServerName: "localhost", NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12}}
		ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return c.(*tls.Conn), nil
	}
	held, err := dialTLS()
	if err != nil {
		t.Fatalf("the first TCP connection: %v", err)
	}
	defer held.Close()
	if got := liveMetric(t, "caddy_mcp_connections_active"); got != 1 {
		t.Fatalf("caddy_mcp_connections_active %v with one TCP connection, want 1", got)
	}
	if c, err := dialTLS(); err == nil {
		c.Close()
		t.Fatal("a second TCP connection was served over max_connections 1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	for i := range quicConns {
		hc := site.h3Client(t, 0) // a QUIC connection of its own
		r := post(ctx, hc, site.base+"/mcp", initializeBody, nil)
		if !r.ok() {
			t.Fatalf("HTTP/3 connection %d: %s", i, r)
		}
	}
	if got := liveMetric(t, "caddy_mcp_connections_active"); got != 1 {
		t.Errorf("caddy_mcp_connections_active %v with %d QUIC connections open beside the TCP one", got, quicConns)
	}
	t.Logf("max_connections 1: a second TCP connection refused, %d QUIC connections served and not counted", quicConns)
}
