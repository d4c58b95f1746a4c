package caddymodule

import (
	"errors"
	"net/http"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/relay"
	"github.com/mcpgate/mcpgate/resources"
	"github.com/mcpgate/mcpgate/sse"
)

// levelRetryAfter is the Retry-After of a refusal by service level or
// for a full session table, the relay's.
const levelRetryAfter = relay.RetryAfter

// trackSession begins the request in its session's entry of the registry
// (see admission.TrackSession): a session the registry evicted is refused
// with 404 so the client starts anew, one that cannot be adopted with 429
// or 503. end must be called when the request is over.
func (h *Handler) trackSession(r *http.Request, call *mcp.Call, res mcp.Resolution, clientKey string, level admission.Level) (s *resources.Session, end func(), ref *mcp.Refusal) {
	if res.Session == nil {
		return nil, func() {}, nil
	}
	info := resources.SessionInfo{
		Key: res.Key, Upstream: res.Session.Upstream, Version: res.Session.Version, UpstreamID: res.Session.UpstreamID,
		ClientKey: clientKey, Endpoint: mcp.SessionEndpoint(r), Host: mcp.SessionHost(r.Host),
	}
	s, end, err := admission.TrackSession(h.app.global.Sessions(), info, mcp.Finishing(r.Method, call), level == admission.LevelProtective)
	switch {
	case errors.Is(err, admission.ErrSessionGone):
		metrics.sessionRefusals.WithLabelValues("not_found").Inc()
		return nil, nil, mcp.Refuse(http.StatusNotFound, mcp.CodeSessionNotFound, call.First().ID, "session not found")
	case err != nil:
		return nil, nil, h.relay.SessionTableRefusal(err, call.First().ID)
	}
	s.SetVersion(call.Version)
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
