package sse

import (
	"sync"
	"time"
)

// Registry finds the streams of a session by event id, so a client that
// reconnects with Last-Event-ID is answered from the stream it lost and
// never from another session's. It is bounded: at most maxSessions
// sessions with maxStreams streams each; the session used least recently
// is dropped first, and a stream whose upstream ended more than maxAge ago
// is dropped at the next sweep.
type Registry struct {
	mu          sync.Mutex
	sessions    map[string]*regSession
	maxSessions int
	maxStreams  int
	maxAge      time.Duration
	clock       uint64
}

type regSession struct {
	streams []*Stream
	used    uint64
}

// NewRegistry returns an empty registry with the given bounds.
func NewRegistry(maxSessions, maxStreams int, maxAge time.Duration) *Registry {
	return &Registry{sessions: make(map[string]*regSession), maxSessions: max(maxSessions, 1), maxStreams: max(maxStreams, 1), maxAge: maxAge}
}

// Add records s as a stream of session. When the session holds maxStreams
// streams the oldest ended one (else the oldest) is forgotten. Adding a
// stream the session already holds makes it the session's newest.
func (r *Registry) Add(session string, s *Stream) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clock++
	rs := r.sessions[session]
	if rs == nil {
		if len(r.sessions) >= r.maxSessions {
			r.dropLRULocked()
		}
		rs = &regSession{}
		r.sessions[session] = rs
	}
	rs.used = r.clock
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

func (r *Registry) dropLRULocked() {
	var oldest string
	var used uint64 = ^uint64(0)
	for k, rs := range r.sessions {
		if rs.used < used {
			oldest, used = k, rs.used
		}
	}
	if rs := r.sessions[oldest]; rs != nil {
		for _, st := range rs.streams {
			st.Discard()
		}
	}
	delete(r.sessions, oldest)
}

// Find returns the stream of session whose ring holds the event id.
func (r *Registry) Find(session, id string) *Stream {
	r.mu.Lock()
	rs := r.sessions[session]
	var streams []*Stream
	if rs != nil {
		r.clock++
		rs.used = r.clock
		streams = append(streams, rs.streams...)
	}
	r.mu.Unlock()
	now := time.Now()
	for i := len(streams) - 1; i >= 0; i-- {
		if streams[i].Has(id, now) {
			return streams[i]
		}
	}
	return nil
}

// Forget drops every stream of a session (the session ended).
func (r *Registry) Forget(session string) {
	r.mu.Lock()
	rs := r.sessions[session]
	delete(r.sessions, session)
	r.mu.Unlock()
	if rs != nil {
		for _, st := range rs.streams {
			st.Discard()
		}
	}
}

// Sweep drops streams that ended more than maxAge ago, evicts old events
// from the rest, and drops sessions left without streams. It returns the
// number of streams dropped.
func (r *Registry) Sweep(now time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	dropped := 0
	for k, rs := range r.sessions {
		kept := rs.streams[:0]
		for _, st := range rs.streams {
			ended, at := st.Ended()
			if ended && now.Sub(at) > r.maxAge {
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
			delete(r.sessions, k)
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

// Shrink lowers the replay bounds of every stream held to at most
// maxEvents events and maxBytes bytes each.
func (r *Registry) Shrink(maxEvents int, maxBytes int64) {
	r.mu.Lock()
	var streams []*Stream
	for _, rs := range r.sessions {
		streams = append(streams, rs.streams...)
	}
	r.mu.Unlock()
	for _, st := range streams {
		st.ShrinkRing(maxEvents, maxBytes)
	}
}
