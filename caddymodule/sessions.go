package caddymodule

import (
	"errors"
	"net/http"
	"time"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/resources"
	"github.com/mcpgate/mcpgate/sse"
)

// levelRetryAfter is the Retry-After of a refusal by service level.
const levelRetryAfter = "1"

// trackSession finds the request's session in the registry, adopting one
// created by another instance or before a restart. A session the registry
// evicted is refused with 404 so the client starts anew; a session that
// cannot be registered (the table is full of sessions with work in
// flight) is refused with 503, never served untracked. end must be called
// when the request is over. Traffic that only finishes work (see
// finishing) does not refresh the session's idle clock.
func (h *Handler) trackSession(r *http.Request, call *mcp.Call, res resolution, clientKey string, level admission.Level) (s *resources.Session, end func(), ref *mcp.Refusal) {
	if res.Session == nil {
		return nil, func() {}, nil
	}
	g := h.app.global
	id := call.First().ID
	s, ok := g.Sessions().Get(res.Key)
	if !ok {
		if g.Sessions().WasEvicted(res.Key) {
			metrics.sessionRefusals.WithLabelValues("not_found").Inc()
			return nil, nil, mcp.Refuse(http.StatusNotFound, mcp.CodeSessionNotFound, id, "session not found")
		}
		var err error
		s, err = g.Sessions().Open(resources.SessionInfo{
			Key: res.Key, Upstream: res.Session.Upstream, Version: res.Session.Version, UpstreamID: res.Session.UpstreamID,
			ClientKey: clientKey, Endpoint: mcp.SessionEndpoint(r), Host: mcp.SessionHost(r.Host),
		}, time.Now(), level == admission.LevelProtective)
		if errors.Is(err, resources.ErrExists) {
			s, ok = g.Sessions().Get(res.Key)
			err = nil
			if !ok {
				err = resources.ErrFull
			}
		}
		if err != nil {
			return nil, nil, h.relay.SessionTableRefusal(err, id)
		}
	}
	if mcp.Finishing(r.Method, call) {
		end = s.BeginQuiet()
	} else {
		end = s.Begin()
	}
	if s.Evicted() {
		end()
		metrics.sessionRefusals.WithLabelValues("not_found").Inc()
		return nil, nil, mcp.Refuse(http.StatusNotFound, mcp.CodeSessionNotFound, id, "session not found")
	}
	return s, end, nil
}

// streamHooksFor returns the accounting hooks of one stream: bytes are
// reserved from the session's quota (and the process budget through it),
// or from the process budget for a stream without a session; relayed
// events are also counted for the session, for its lifetime figures.
func (h *Handler) streamHooksFor(s *resources.Session) *sse.Hooks {
	hooks := *streamHooks
	budget := h.app.global.Memory()
	reserve := budget.Reserve
	release := budget.Release
	if s != nil {
		acct := s.Account()
		reserve, release = acct.Reserve, acct.Release
		hooks.Event = func(n int) {
			countEvent(n)
			s.AddRelayed(n)
		}
	}
	hooks.Reserve = func(n int) bool {
		if n < 0 {
			release(int64(-n))
			return true
		}
		if reserve(int64(n)) {
			return true
		}
		metrics.backpressure.Inc()
		return false
	}
	return &hooks
}
