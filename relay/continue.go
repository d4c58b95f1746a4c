package relay

import (
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/sse"
)

// An upstream in a Streamable HTTP session may end a POST's SSE answer
// before the answer, right after an event id of its own: it closes the
// stream for the client to poll (2025-11-25, SEP-1699), or the connection
// breaks. The upstream then goes on from that id when asked with a GET
// and Last-Event-ID. The relay asks it itself and relays what follows on
// the stream the client holds, so the request keeps its deadline, its
// max_response, its answer checks and its admission slot, and a client
// that cannot resume a stream (or a replica that did not relay it) loses
// nothing.

const (
	// maxContinueDelay bounds the wait an upstream's retry field asks
	// for before the relay resumes its stream.
	maxContinueDelay = time.Minute
	// maxContinueTries bounds the resumptions in a row that bring no new
	// event id: the upstream makes no progress.
	maxContinueTries = 3
)

// continuer resumes one request's answer stream from the upstream (see
// sse.StreamConfig.Continue); its state is the stream's pump's.
type continuer struct {
	st     *State
	lastID string // the id of the last resumption
	tries  int    // resumptions in a row from lastID
}

// continues reports whether the answer stream of st is resumed from the
// upstream when it ends without its answers: a POST of requests in a
// Streamable HTTP session.
func (st *State) continues() bool {
	return st.r.Method == http.MethodPost && st.res.Session != nil && st.res.Session.Kind == mcp.TokenSession &&
		(st.resumable || st.call.Peek.Batch)
}

// next is the stream's Continue hook: it returns the upstream's
// resumption of the stream after c.LastID, or nil when there is none to
// ask for (every answer came, the deadline passed, no id of the
// upstream's own ends the stream, no progress) or the upstream gives none.
// An upstream that answers 409 Conflict still holds the stream's broken
// connection as its live one (it has not noticed the break): it is asked
// again after a retry delay, within the same tries.
func (k *continuer) next(c sse.Continuation) io.ReadCloser {
	st := k.st
	st.mu.Lock()
	out := st.outReq
	st.mu.Unlock()
	if c.LastID == "" || out == nil || st.IsExpired() || len(st.cancelIDs()) == 0 {
		return nil
	}
	if c.LastID != k.lastID {
		k.lastID, k.tries = c.LastID, 0
	}
	delay := c.Retry
	for k.tries < maxContinueTries {
		k.tries++
		body, busy := k.ask(out, c, delay)
		if body != nil || !busy {
			return body
		}
		delay = max(delay, sse.DefaultRetry)
	}
	st.p.Logger.Debug("upstream stream not resumed: no progress", zap.String("upstream", st.UpstreamAddr()), zap.Int("tries", maxContinueTries))
	return nil
}

// ask waits delay (none when not positive) and asks the upstream for its
// stream after c.LastID with a GET like out; busy reports a 409 answer.
func (k *continuer) ask(out *http.Request, c sse.Continuation, delay time.Duration) (body io.ReadCloser, busy bool) {
	st := k.st
	ctx := out.Context() // what abort, and so the deadline, cancels
	if delay > 0 {
		t := time.NewTimer(min(delay, maxContinueDelay))
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.Stop:
			return nil, false
		case <-ctx.Done():
			return nil, false
		}
	}
	get := bodiless(ctx, out, http.MethodGet)
	get.Header.Set("Accept", "text/event-stream")
	get.Header.Set(mcp.HeaderLastEventID, c.LastID)
	resp, err := st.p.Inner.RoundTrip(get)
	if err != nil {
		st.p.Logger.Debug("resuming the upstream stream failed", zap.Error(err), zap.String("upstream", st.UpstreamAddr()))
		return nil, false
	}
	if resp.StatusCode != http.StatusOK || !isEventStream(resp.Header) || encoded(resp.Header) {
		st.p.Logger.Debug("upstream did not resume its stream", zap.Int("status", resp.StatusCode),
			zap.String("content_type", resp.Header.Get("Content-Type")), zap.String("upstream", st.UpstreamAddr()))
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		_ = resp.Body.Close()
		return nil, resp.StatusCode == http.StatusConflict
	}
	return resp.Body, false
}
