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
func (k *continuer) next(c sse.Continuation) io.ReadCloser {
	st := k.st
	st.mu.Lock()
	out := st.outReq
	st.mu.Unlock()
	if c.LastID == "" || out == nil || st.IsExpired() || len(st.cancelIDs()) == 0 {
		return nil
	}
	if c.LastID == k.lastID {
		k.tries++
	} else {
		k.lastID, k.tries = c.LastID, 1
	}
	if k.tries > maxContinueTries {
		st.p.Logger.Debug("upstream stream not resumed: no progress", zap.String("upstream", st.UpstreamAddr()), zap.Int("tries", maxContinueTries))
		return nil
	}
	ctx := out.Context() // what abort, and so the deadline, cancels
	if c.Retry > 0 {
		t := time.NewTimer(min(c.Retry, maxContinueDelay))
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.Stop:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
	get := out.Clone(ctx)
	get.Method = http.MethodGet
	get.Body, get.ContentLength, get.GetBody = http.NoBody, 0, nil
	get.Header.Del("Content-Type")
	get.Header.Del("Content-Length")
	get.Header.Set("Accept", "text/event-stream")
	get.Header.Set(mcp.HeaderLastEventID, c.LastID)
	resp, err := st.p.Inner.RoundTrip(get)
	if err != nil {
		st.p.Logger.Debug("resuming the upstream stream failed", zap.Error(err), zap.String("upstream", st.UpstreamAddr()))
		return nil
	}
	if resp.StatusCode != http.StatusOK || !isEventStream(resp.Header) || encoded(resp.Header) {
		st.p.Logger.Debug("upstream did not resume its stream", zap.Int("status", resp.StatusCode),
			zap.String("content_type", resp.Header.Get("Content-Type")), zap.String("upstream", st.UpstreamAddr()))
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		_ = resp.Body.Close()
		return nil
	}
	return resp.Body
}
