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
	if res.session == nil {
		return nil, func() {}, nil
	}
	g := h.app.global
	id := call.First().ID
	s, ok := g.Sessions().Get(res.key)
	if !ok {
		if g.Sessions().WasEvicted(res.key) {
			metrics.sessionRefusals.WithLabelValues("not_found").Inc()
			return nil, nil, mcp.Refuse(http.StatusNotFound, mcp.CodeSessionNotFound, id, "session not found")
		}
		var err error
		s, err = g.Sessions().Open(resources.SessionInfo{
			Key: res.key, Upstream: res.session.Upstream, Version: res.session.Version, UpstreamID: res.session.UpstreamID,
			ClientKey: clientKey, Endpoint: mcp.SessionEndpoint(r), Host: mcp.SessionHost(r.Host),
		}, time.Now(), level == admission.LevelProtective)
		if errors.Is(err, resources.ErrExists) {
			s, ok = g.Sessions().Get(res.key)
			err = nil
			if !ok {
				err = resources.ErrFull
			}
		}
		if err != nil {
			return nil, nil, sessionTableRefusal(err, id)
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

// sessionTableRefusal answers a session the registry could not take: 429
// when the client holds its share of sessions, 503 when the table is
// full, both with Retry-After, and counts it.
func sessionTableRefusal(err error, id string) *mcp.Refusal {
	if errors.Is(err, resources.ErrClientFull) {
		metrics.sessionRefusals.WithLabelValues("client_full").Inc()
		return mcp.Refuse(http.StatusTooManyRequests, mcp.CodeServerError, id,
			"too many sessions for this client (client_max_sessions), retry after "+levelRetryAfter+"s")
	}
	metrics.sessionRefusals.WithLabelValues("full").Inc()
	return mcp.Refuse(http.StatusServiceUnavailable, mcp.CodeServerError, id,
		"session limit reached, retry after "+levelRetryAfter+"s")
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
