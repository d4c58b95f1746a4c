package relay

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpgate/mcpgate/governor"
	"github.com/mcpgate/mcpgate/mcp"
)

// TestSideRequestsBounded: a client that makes the proxy abandon requests
// faster than the upstream takes their notifications/cancelled cannot
// make the proxy hold more than governor.MaxSideRequests of them; the
// rest are counted as skipped, and a slot given back is used again.
func TestSideRequestsBounded(t *testing.T) {
	p, c, _ := newTestProxy(t, Config{})
	var inFlight, most, sent atomic.Int64
	unblock := make(chan struct{})
	p.Side = func(ctx context.Context, _, _, _, _ string, _ http.Header, _ []byte) (int, error) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		select {
		case <-unblock:
		case <-ctx.Done():
		}
		sent.Add(1)
		return http.StatusAccepted, nil
	}
	r, call := post(t, `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow"}}`)
	st := p.NewState(httptest.NewRecorder(), r, call, mcp.Resolution{Pinned: "127.0.0.1:1"})
	const abandoned = governor.MaxSideRequests + 100
	for range abandoned {
		p.legacyCanceller(st, "7")("client went away")
	}
	deadline := time.Now().Add(10 * time.Second)
	for inFlight.Load() < governor.MaxSideRequests && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := c.get("side_skipped"); got != abandoned-governor.MaxSideRequests {
		t.Errorf("skipped %d side requests, want %d", got, abandoned-governor.MaxSideRequests)
	}
	close(unblock)
	p.Gov.Tasks().Wait()
	if m := most.Load(); m > governor.MaxSideRequests {
		t.Errorf("%d side requests in flight at once, want at most %d", m, governor.MaxSideRequests)
	}
	if s := sent.Load(); s != governor.MaxSideRequests {
		t.Errorf("%d side requests sent, want %d", s, governor.MaxSideRequests)
	}
	// The slots are free again.
	p.legacyCanceller(st, "7")("client went away")
	p.Gov.Tasks().Wait()
	if s := sent.Load(); s != governor.MaxSideRequests+1 {
		t.Errorf("%d side requests sent after the slots were given back, want %d", s, governor.MaxSideRequests+1)
	}
}
