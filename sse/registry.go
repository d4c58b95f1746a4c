package sse

import (
	"sync"
	"time"
)

// Registry finds the streams of a session by event id, so a client that
// reconnects with Last-Event-ID is answered from the stream it lost and
// never from another session's. It is bounded: at most maxSessions
// sessions with maxStreams streams each; the session used least recently
// is dropped first (in constant time, from a list kept in order of use),
// and a stream whose upstream ended more than its replay age ago is
// dropped at the next sweep. A stream's replay age is its own
// StreamConfig.ReplayAge, or the registry's default maxAge when it has
// none, so handlers with different replay ages can share one registry.
type Registry struct {
	mu          sync.Mutex
	sessions    map[string]*regSession
	lru         regSession // sentinel: lru.next is the most recently used
	maxSessions int
	maxStreams  int
	maxAge      time.Duration
}

// regSession is the streams of one session and its place in the list of
// sessions ordered by use.
type regSession struct {
	key        string
	streams    []*Stream
	prev, next *regSession
}

// NewRegistry returns an empty registry with the given bounds. maxAge is
// the replay age of streams that have none of their own (a zero
// StreamConfig.ReplayAge).
func NewRegistry(maxSessions, maxStreams int, maxAge time.Duration) *Registry {
	r := &Registry{sessions: make(map[string]*regSession), maxSessions: max(maxSessions, 1), maxStreams: max(maxStreams, 1), maxAge: maxAge}
	r.lru.prev, r.lru.next = &r.lru, &r.lru
	return r
}

// touchLocked makes rs the most recently used session, linking it in when
// it is new.
func (r *Registry) touchLocked(rs *regSession) {
	if rs.next != nil {
		if r.lru.next == rs {
			return
		}
		r.unlinkLocked(rs)
	}
	rs.prev, rs.next = &r.lru, r.lru.next
	rs.next.prev = rs
	r.lru.next = rs
}

// unlinkLocked takes rs out of the list of sessions.
func (r *Registry) unlinkLocked(rs *regSession) {
	rs.prev.next, rs.next.prev = rs.next, rs.prev
	rs.prev, rs.next = nil, nil
}

// removeLocked forgets session rs.
func (r *Registry) removeLocked(rs *regSession) {
	r.unlinkLocked(rs)
	delete(r.sessions, rs.key)
}

// Add records s as a stream of session. When the session holds maxStreams
// streams the oldest ended one (else the oldest) is forgotten. Adding a
// stream the session already holds makes it the session's newest.
func (r *Registry) Add(session string, s *Stream) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rs := r.sessions[session]
	if rs == nil {
		if len(r.sessions) >= r.maxSessions {
			r.dropLRULocked()
		}
		rs = &regSession{key: session}
		r.sessions[session] = rs
	}
	r.touchLocked(rs)
	for i, st := range rs.streams {
		if st == s {
			rs.streams = append(rs.streams[:i], rs.streams[i+1:]...)
			break
		}
	}
	if len(rs.streams) >= r.maxStreams {
		victim := 0
		for i, st := range rs.streams {
			if ended, _ := st.Ended(); ended {
				victim = i
				break
			}
		}
		rs.streams[victim].Discard()
		rs.streams = append(rs.streams[:victim], rs.streams[victim+1:]...)
	}
	rs.streams = append(rs.streams, s)
}

// dropLRULocked drops the session used least recently.
func (r *Registry) dropLRULocked() {
	rs := r.lru.prev
	if rs == &r.lru {
		return
	}
	r.removeLocked(rs)
	for _, st := range rs.streams {
		st.Discard()
	}
}

// Find returns the stream of session that answers a client resuming
// after the event id (see Stream.Resumes).
func (r *Registry) Find(session, id string) *Stream {
	r.mu.Lock()
	rs := r.sessions[session]
	var streams []*Stream
	if rs != nil {
		r.touchLocked(rs)
		streams = append(streams, rs.streams...)
	}
	r.mu.Unlock()
	now := time.Now()
	for i := len(streams) - 1; i >= 0; i-- {
		if streams[i].Resumes(id, now) {
			return streams[i]
		}
	}
	return nil
}

// Forget drops every stream of a session (the session ended).
func (r *Registry) Forget(session string) {
	r.mu.Lock()
	rs := r.sessions[session]
	if rs != nil {
		r.removeLocked(rs)
	}
	r.mu.Unlock()
	if rs != nil {
		for _, st := range rs.streams {
			st.Discard()
		}
	}
}

// ageOf returns the replay age of a stream held by the registry.
func (r *Registry) ageOf(s *Stream) time.Duration {
	if age := s.ReplayAge(); age > 0 {
		return age
	}
	return r.maxAge
}

// Sweep drops streams that ended more than their replay age ago (see
// Registry), evicts old events from the rest, and drops sessions left
// without streams. It returns the number of streams dropped.
func (r *Registry) Sweep(now time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	dropped := 0
	for _, rs := range r.sessions {
		kept := rs.streams[:0]
		for _, st := range rs.streams {
			ended, at := st.Ended()
			if ended && now.Sub(at) > r.ageOf(st) {
				dropped++
				st.Discard()
				continue
			}
			st.Evict(now)
			kept = append(kept, st)
		}
		clear(rs.streams[len(kept):])
		rs.streams = kept
		if len(kept) == 0 {
			r.removeLocked(rs)
		}
	}
	return dropped
}

// Len returns the number of sessions and streams held.
func (r *Registry) Len() (sessions, streams int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range r.sessions {
		streams += len(rs.streams)
	}
	return len(r.sessions), streams
}

// Bytes returns the bytes held by every stream's replay ring.
func (r *Registry) Bytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, rs := range r.sessions {
		for _, st := range rs.streams {
			n += st.RingBytes()
		}
	}
	return n
}

// streams returns every stream held.
func (r *Registry) streams() []*Stream {
	r.mu.Lock()
	defer r.mu.Unlock()
	var streams []*Stream
	for _, rs := range r.sessions {
		streams = append(streams, rs.streams...)
	}
	return streams
}

// Shrink lowers the replay bounds of every stream held to at most
// maxEvents events and maxBytes bytes each.
func (r *Registry) Shrink(maxEvents int, maxBytes int64) {
	for _, st := range r.streams() {
		st.ShrinkRing(maxEvents, maxBytes)
	}
}

// ShrinkBy lowers the replay bounds of every stream held to fraction of
// the stream's own configured ReplayEvents and ReplayBytes (at least one
// event and one byte), so a degraded service level scales each handler's
// own sizes; see Stream.ShrinkRingBy.
func (r *Registry) ShrinkBy(fraction float64) {
	for _, st := range r.streams() {
		st.ShrinkRingBy(fraction)
	}
}
