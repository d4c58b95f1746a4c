package admission

import (
	"errors"
	"time"

	"github.com/mcpgate/mcpgate/resources"
)

// Admits reports whether the service level lets a request in: at the
// protective level only traffic that finishes work already in flight
// (responses, notifications, DELETE); at the essential level anything but
// a request that opens a session. When it does not, why says so, for the
// client's error message.
func (l Level) Admits(finishing, opensSession bool) (ok bool, why string) {
	switch {
	case l == LevelProtective && !finishing:
		return false, "server overloaded (protective level)"
	case l >= LevelEssential && opensSession:
		return false, "server overloaded (essential level): no new sessions"
	}
	return true, ""
}

// RoomForSession makes room in reg for a new session of clientKey: at the
// client's share (client_max_sessions) it evicts the client's idlest
// session, at the table's size (max_sessions) the idlest of all (see
// resources.Registry.Score). It returns resources.ErrClientFull or
// resources.ErrFull when nothing can be evicted. A session with a
// request in flight is evicted only when protective (the protective
// level). Registering the session
// later makes room again if others took it meanwhile.
func RoomForSession(reg *resources.Registry, clientKey string, protective bool) error {
	if max := reg.ClientMaxSessions(); max > 0 && clientKey != "" && reg.ClientSessions(clientKey) >= max {
		if !reg.EvictClientVictim(clientKey, protective) {
			return resources.ErrClientFull
		}
	}
	max := reg.MaxSessions()
	if max <= 0 || reg.Len() < max {
		return nil
	}
	if reg.EvictVictims(1, protective, resources.CauseCapacity) > 0 {
		return nil
	}
	return resources.ErrFull
}

// StreamSlots are the slots an SSE GET stream holds for its whole life:
// one of the process's, one of its handler's and, when Client is set, one
// of its client's.
type StreamSlots struct {
	Process *Limiter
	Handler *Limiter
	Client  *KeyedLimiter // nil: no per-client cap
}

// Acquire takes the slots of one stream of clientKey (no client slot for
// an empty key), all or none. It returns the function that gives them
// back, or the reason of the refusal: ReasonCapacity when the process or
// the handler is at its cap, ReasonClientQuota when the client is.
func (s StreamSlots) Acquire(clientKey string) (release func(), reason Reason, ok bool) {
	if !s.Process.TryAcquire() {
		return nil, ReasonCapacity, false
	}
	if !s.Handler.TryAcquire() {
		s.Process.Release()
		return nil, ReasonCapacity, false
	}
	if s.Client == nil || clientKey == "" {
		return func() { s.Handler.Release(); s.Process.Release() }, 0, true
	}
	if !s.Client.TryAcquire(clientKey) {
		s.Handler.Release()
		s.Process.Release()
		return nil, ReasonClientQuota, false
	}
	return func() { s.Client.Release(clientKey); s.Handler.Release(); s.Process.Release() }, 0, true
}

// Idle reports whether no stream holds a slot of the handler or of a
// client (the process-wide limit, shared with other handlers, is not
// looked at).
func (s StreamSlots) Idle() bool {
	return s.Handler.InFlight() == 0 && (s.Client == nil || s.Client.Len() == 0)
}

// ErrSessionGone reports a session the registry evicted: its client must
// start a new one.
var ErrSessionGone = errors.New("session evicted")

// TrackSession begins a request in the session info.Key of reg, adopting
// (registering from info) a session another instance created or this one
// held before a restart. A request that only finishes work (quiet) does
// not refresh the session's idle clock. The caller calls end when the
// request is over. It returns ErrSessionGone for a session the registry
// evicted, and resources.ErrFull or resources.ErrClientFull when it
// cannot take an adopted one (at the protective level, by evicting even
// sessions with requests in flight); a session is never served
// untracked.
func TrackSession(reg *resources.Registry, info resources.SessionInfo, quiet, protective bool) (s *resources.Session, end func(), err error) {
	s, ok := reg.Get(info.Key)
	if !ok {
		if reg.WasEvicted(info.Key) {
			return nil, nil, ErrSessionGone
		}
		s, err = reg.Open(info, time.Now(), protective)
		if errors.Is(err, resources.ErrExists) {
			if s, ok = reg.Get(info.Key); ok {
				err = nil
			} else {
				err = resources.ErrFull
			}
		}
		if err != nil {
			return nil, nil, err
		}
	}
	if quiet {
		end = s.BeginQuiet()
	} else {
		end = s.Begin()
	}
	if s.Evicted() {
		end()
		return nil, nil, ErrSessionGone
	}
	return s, end, nil
}
