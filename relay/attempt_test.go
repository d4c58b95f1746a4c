package relay

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/mcpgate/mcpgate/mcp"
)

// breakingConn is a connection whose writes fail, as a write to a pooled
// connection the upstream reset does, once broken is set.
type breakingConn struct {
	net.Conn
	broken *atomic.Bool
}

func (c breakingConn) Write(p []byte) (int, error) {
	if c.broken.Load() {
		return 0, &net.OpError{Op: "write", Net: "tcp", Err: syscall.EPIPE}
	}
	return c.Conn.Write(p)
}

// TestAttemptResendsOnDeadPooledConn: a POST whose body was read whole is
// sent again on a new connection when the pooled connection it was given
// fails before any byte of it is written, the way a connection to an
// upstream that restarted does, instead of failing the request.
func TestAttemptResendsOnDeadPooledConn(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"jsonrpc":"2.0","id":1,"result":{}}`))
	}))
	defer upstream.Close()

	var dials atomic.Int32
	var firstBroken atomic.Bool
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if dials.Add(1) == 1 {
			return breakingConn{Conn: c, broken: &firstBroken}, nil
		}
		return breakingConn{Conn: c, broken: new(atomic.Bool)}, nil
	}}
	defer tr.CloseIdleConnections()

	p, _, _ := newTestProxy(t, Config{})
	send := func(body string) (*http.Response, error) {
		r := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(body))
		var call mcp.Call
		if err := mcp.ParseEnvelope([]byte(body), true, &call.Peek); err != nil {
			t.Fatal(err)
		}
		st := p.NewState(httptest.NewRecorder(), r, &call, mcp.Resolution{})
		st.Whole = []byte(body)
		out, err := http.NewRequest(http.MethodPost, upstream.URL+"/mcp", bytes.NewReader([]byte(body)))
		if err != nil {
			t.Fatal(err)
		}
		// reverse_proxy hands the Transport a body of its own.
		out.Body = io.NopCloser(strings.NewReader(body))
		out.GetBody = nil
		return tr.RoundTrip(st.Attempt(out))
	}
	for i, body := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}`,
		`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"b"}}`,
	} {
		resp, err := send(body)
		if err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		firstBroken.Store(true) // the pooled connection dies
	}
	mu.Lock()
	defer mu.Unlock()
	if dials.Load() != 2 || len(bodies) != 2 || !strings.Contains(bodies[1], `"id":2`) {
		t.Fatalf("%d dials, upstream got %q; want the second request sent once, on a second connection", dials.Load(), bodies)
	}
}
