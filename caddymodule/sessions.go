package caddymodule

import (
	"net/http"
	"time"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/resources"
	"github.com/mcpgate/mcpgate/sse"
)

// levelRetryAfter is the Retry-After of a refusal by service level.
const levelRetryAfter = "1"

// levelGate applies the service level to a new request: at the
// protective level only what finishes work already in flight passes
// (responses, notifications, DELETE); at the essential level new sessions
// are refused.
func (h *Handler) levelGate(level admission.Level, r *http.Request, call *mcp.Call, res resolution) *mcp.Refusal {
	if level < admission.LevelEssential {
		return nil
	}
	first := call.First()
	newSession := res.session == nil && (call.IsInitialize() ||
		(r.Method == http.MethodGet && call.Era != mcp.EraSession && call.Era != mcp.EraStateless))
	finishing := r.Method == http.MethodDelete ||
		(r.Method == http.MethodPost && !call.Peek.Batch && (first.Kind == mcp.KindResponse || first.Kind == mcp.KindNotification))
	switch {
	case level == admission.LevelProtective && !finishing:
		return mcp.Refuse(http.StatusServiceUnavailable, mcp.CodeServerError, first.ID, "server overloaded (protective level): retry after "+levelRetryAfter+"s")
	case newSession:
		return mcp.Refuse(http.StatusServiceUnavailable, mcp.CodeServerError, first.ID, "server overloaded (essential level): no new sessions, retry after "+levelRetryAfter+"s")
	}
	return nil
}

// trackSession finds the request's session in the registry, adopting one
// created by another instance or before a restart. A session the registry
// evicted is refused with 404 so the client starts anew. The returned
// session is nil for requests without a session and when the registry is
// full; end must be called when the request is over.
func (h *Handler) trackSession(res resolution, level admission.Level) (s *resources.Session, end func(), ref *mcp.Refusal) {
	if res.session == nil || res.session.Kind != mcp.TokenSession {
		return nil, func() {}, nil
	}
	g := h.app.global
	key := res.key
	s, ok := g.sessions.Get(key)
	if !ok {
		if g.sessions.WasEvicted(key) {
			metrics.sessionRefusals.WithLabelValues("not_found").Inc()
			return nil, nil, mcp.Refuse(http.StatusNotFound, mcp.CodeSessionNotFound, "", "session not found")
		}
		var err error
		s, err = g.sessions.Open(resources.SessionInfo{
			Key: key, Upstream: res.session.Upstream, Version: res.session.Version, UpstreamID: res.session.UpstreamID,
		}, time.Now(), level == admission.LevelProtective)
		if err != nil {
			return nil, func() {}, nil
		}
	}
	end = s.Begin()
	if s.Evicted() {
		end()
		metrics.sessionRefusals.WithLabelValues("not_found").Inc()
		return nil, nil, mcp.Refuse(http.StatusNotFound, mcp.CodeSessionNotFound, "", "session not found")
	}
	return s, end, nil
}

// roomForSession makes room for a new session at max_sessions by evicting
// a victim; false means none could be evicted.
func (h *Handler) roomForSession(level admission.Level) bool {
	g := h.app.global
	max := g.sessions.MaxSessions()
	if max <= 0 || g.sessions.Len() < max {
		return true
	}
	return g.sessions.EvictVictims(1, level == admission.LevelProtective, resources.CauseCapacity) > 0
}

// openSession records a session the upstream just created.
func (h *Handler) openSession(st *relayState, upstream, sid, version string) {
	g := h.app.global
	info := resources.SessionInfo{Key: sessionKey(upstream, sid), Upstream: upstream, Version: version, UpstreamID: sid}
	st.mu.Lock()
	if out := st.outReq; out != nil {
		info.Endpoint, info.Host = out.URL.String(), out.Host
	}
	st.mu.Unlock()
	_, _ = g.sessions.Open(info, time.Now(), g.levels.Level() == admission.LevelProtective)
}

// streamHooksFor returns the accounting hooks of one stream: bytes are
// reserved from the session's quota (and the process budget through it),
// or from the process budget for a stream without a session; relayed
// events are also counted for the session, for its lifetime figures.
func (h *Handler) streamHooksFor(s *resources.Session) *sse.Hooks {
	hooks := *streamHooks
	budget := h.app.global.memory
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
