package sse

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// StreamSet is a set of open client attachments, each with the stream it
// reads. A proxy keeps one per handler, to drain the handler's streams when
// its config is unloaded, and one for the whole process, so that a
// protective service level can reset the streams holding the most memory.
//
// Bounds: the set holds one entry per open attachment, removed by the
// function Add returns. Drain starts one timer per attachment open then or
// added later; each fires once and holds nothing afterwards. The set
// starts no other goroutine. It is safe for concurrent use.
type StreamSet struct {
	hooks *StreamSetHooks

	mu       sync.Mutex
	open     map[*Attachment]member // guarded by mu
	draining bool                   // guarded by mu
	delay    time.Duration          // the drain delay; guarded by mu
	empty    chan struct{}          // closed when open empties; made by Wait; guarded by mu
}

// StreamSetHooks are the callbacks a StreamSet reports to. Every field may
// be nil.
type StreamSetHooks struct {
	// Drained is called for every attachment a drain closes.
	Drained func()
	// Panic, when set, receives a panic raised in a drain timer, which
	// then ends; without it such a panic crashes the process as usual.
	Panic func(v any)
}

// member is one attachment of a set: the stream it reads, and whether a
// client may resume that stream after the attachment ends.
type member struct {
	stream    *Stream
	resumable bool
}

// NewStreamSet returns an empty set reporting to hooks, which may be nil.
func NewStreamSet(hooks *StreamSetHooks) *StreamSet {
	if hooks == nil {
		hooks = &StreamSetHooks{}
	}
	return &StreamSet{hooks: hooks, open: make(map[*Attachment]member)}
}

// Add records attachment a of stream s; resumable tells that a client may
// resume s after a ends, so a drain leaves s's upstream running. The
// returned function forgets a; call it once a has ended. An attachment
// added while the set drains is scheduled for closing at once.
func (ss *StreamSet) Add(a *Attachment, s *Stream, resumable bool) (forget func()) {
	m := member{stream: s, resumable: resumable}
	ss.mu.Lock()
	ss.open[a] = m
	draining, delay := ss.draining, ss.delay
	ss.mu.Unlock()
	if draining {
		ss.schedule(a, m, delay)
	}
	return func() {
		ss.mu.Lock()
		delete(ss.open, a)
		if len(ss.open) == 0 && ss.empty != nil {
			close(ss.empty)
			ss.empty = nil
		}
		ss.mu.Unlock()
	}
}

// Len returns the number of attachments in the set.
func (ss *StreamSet) Len() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.open)
}

// Wait blocks until the set is empty, or for at most timeout; it reports
// whether the set is empty.
func (ss *StreamSet) Wait(timeout time.Duration) bool {
	ss.mu.Lock()
	if len(ss.open) == 0 {
		ss.mu.Unlock()
		return true
	}
	if ss.empty == nil {
		ss.empty = make(chan struct{})
	}
	empty := ss.empty
	ss.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-empty:
		return true
	case <-t.C:
		return false
	}
}

// Drain closes every attachment of the set, those open now and those
// added later, each at a random moment between 80% and 100% of delay and
// with its retry hint, so clients reconnect spread out rather than as a
// herd. The upstream of a resumable stream keeps running so its client
// can resume it; any other stream's upstream is closed too. Only the
// first Drain of a set has an effect.
func (ss *StreamSet) Drain(delay time.Duration) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.draining {
		return
	}
	ss.draining, ss.delay = true, delay
	for a, m := range ss.open {
		ss.schedule(a, m, delay)
	}
}

// drainDelay returns the moment, after a drain of delay began, at which
// an attachment is closed, for r drawn uniformly from [0, 1).
func drainDelay(delay time.Duration, r float64) time.Duration {
	return time.Duration(float64(delay) * (0.8 + 0.2*r))
}

// schedule closes a, as Drain does, after a jittered delay.
func (ss *StreamSet) schedule(a *Attachment, m member, delay time.Duration) {
	time.AfterFunc(drainDelay(delay, rand.Float64()), func() {
		if ss.hooks.Panic != nil {
			defer func() {
				if v := recover(); v != nil {
					ss.hooks.Panic(v)
				}
			}()
		}
		if ss.hooks.Drained != nil {
			ss.hooks.Drained()
		}
		closeMember(a, m)
	})
}

// CloseAll closes every attachment of the set at once, as a drain would.
func (ss *StreamSet) CloseAll() {
	type entry struct {
		a *Attachment
		m member
	}
	ss.mu.Lock()
	open := make([]entry, 0, len(ss.open))
	for a, m := range ss.open {
		open = append(open, entry{a, m})
	}
	ss.mu.Unlock()
	for _, e := range open {
		closeMember(e.a, e.m)
	}
}

// closeMember closes an attachment with its retry hint, and the upstream
// of a stream nobody can resume.
func closeMember(a *Attachment, m member) {
	a.Close()
	if !m.resumable {
		m.stream.Close()
	}
}

// ResetLargest closes, with the retry hint, the n open attachments whose
// streams hold the most memory (queued events and replay ring), and
// returns how many it closed. Memory comes first here: each one's
// upstream is closed and its replay ring emptied even when the stream was
// resumable. Idle streams hold least and go last, so calling it
// repeatedly closes them all, n at a time. It allocates one slice of the
// open attachments for the call.
func (ss *StreamSet) ResetLargest(n int) int {
	type held struct {
		a     *Attachment
		s     *Stream
		bytes int64
	}
	ss.mu.Lock()
	all := make([]held, 0, len(ss.open))
	for a, m := range ss.open {
		if !a.Closed() {
			all = append(all, held{a: a, s: m.stream})
		}
	}
	ss.mu.Unlock()
	for i := range all {
		all[i].bytes = int64(all[i].a.Queued()) + all[i].s.RingBytes()
	}
	slices.SortFunc(all, func(x, y held) int { return cmp.Compare(y.bytes, x.bytes) })
	reset := all[:min(max(n, 0), len(all))]
	for _, h := range reset {
		h.a.Close()
		h.s.Close()
		h.s.Discard()
	}
	return len(reset)
}
