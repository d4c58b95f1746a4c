package caddymodule

import (
	"cmp"
	"context"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"

	"github.com/mcpgate/mcpgate/resources"
	"github.com/mcpgate/mcpgate/sse"
)

// streamSet tracks open client attachments: each handler's, so they can
// be drained when its config is unloaded, and the process's, so the
// protective level can reset the largest.
type streamSet struct {
	mu       sync.Mutex
	open     map[*sse.Attachment]trackedStream
	draining bool
	delay    time.Duration
	empty    chan struct{} // closed when open empties; made by wait
}

type trackedStream struct {
	stream    *sse.Stream
	resumable bool
}

func newStreamSet() *streamSet {
	return &streamSet{open: make(map[*sse.Attachment]trackedStream)}
}

// add records an attachment; the returned func forgets it. An attachment
// opened while the set drains is scheduled for closing at once.
func (ss *streamSet) add(a *sse.Attachment, t trackedStream) func() {
	ss.mu.Lock()
	ss.open[a] = t
	draining, delay := ss.draining, ss.delay
	ss.mu.Unlock()
	if draining {
		scheduleDrain(a, t, delay)
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

// wait blocks until no attachment is open, or for at most timeout; it
// reports whether none is.
func (ss *streamSet) wait(timeout time.Duration) bool {
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

// track records an open attachment with the handler, the process and the
// session (whose eviction closes it); the returned func forgets it.
func (h *Handler) track(a *sse.Attachment, s *sse.Stream, resumable bool, sess *resources.Session) func() {
	t := trackedStream{stream: s, resumable: resumable}
	forgetHandler := h.streams.add(a, t)
	forgetProcess := h.app.global.active.add(a, t)
	forgetSession := func() {}
	if sess != nil {
		forgetSession = sess.AddStream(func(error) {
			a.Close()
			s.Close()
		})
	}
	return func() {
		forgetSession()
		forgetProcess()
		forgetHandler()
	}
}

// drain closes every open attachment at a random moment between 80% and
// 100% of delay, each with the retry hint, so clients reconnect spread
// out. The upstream of a resumable request stream keeps running so its
// client can resume it; any other stream's upstream is closed too.
func (ss *streamSet) drain(delay time.Duration) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.draining {
		return
	}
	ss.draining, ss.delay = true, delay
	for a, t := range ss.open {
		scheduleDrain(a, t, delay)
	}
}

// closeAll closes every open attachment at once, as the drain would.
func (ss *streamSet) closeAll() {
	ss.mu.Lock()
	open := make(map[*sse.Attachment]trackedStream, len(ss.open))
	maps.Copy(open, ss.open)
	ss.mu.Unlock()
	for a, t := range open {
		closeTracked(a, t)
	}
}

func scheduleDrain(a *sse.Attachment, t trackedStream, delay time.Duration) {
	d := time.Duration(float64(delay) * (0.8 + 0.2*rand.Float64()))
	time.AfterFunc(d, func() {
		defer recoverPanic(nil, "stream drain")
		metrics.streamsDrained.Inc()
		closeTracked(a, t)
	})
}

// closeTracked closes an attachment with its retry hint, and the upstream
// of a stream nobody can resume.
func closeTracked(a *sse.Attachment, t trackedStream) {
	a.Close()
	if !t.resumable {
		t.stream.Close()
	}
}

// resetLargest closes, with the retry hint, the n open streams holding the
// most memory (queued events and replay ring); idle streams hold least
// and go last, so a protective level that persists closes them all, n per
// refresh.
func (ss *streamSet) resetLargest(n int) int {
	type held struct {
		a     *sse.Attachment
		t     trackedStream
		bytes int64
	}
	ss.mu.Lock()
	all := make([]held, 0, len(ss.open))
	for a, t := range ss.open {
		if !a.Closed() {
			all = append(all, held{a, t, 0})
		}
	}
	ss.mu.Unlock()
	for i := range all {
		all[i].bytes = int64(all[i].a.Queued()) + all[i].t.stream.RingBytes()
	}
	slices.SortFunc(all, func(x, y held) int { return cmp.Compare(y.bytes, x.bytes) })
	reset := all[:min(n, len(all))]
	for _, h := range reset {
		metrics.protectiveResets.Inc()
		// Memory comes first at this level: the stream's upstream is
		// closed and its replay ring freed even when it was resumable.
		h.a.Close()
		h.t.stream.Close()
		h.t.stream.Discard()
	}
	return len(reset)
}

// watchStop starts draining when Caddy announces that this config stops
// (a reload or shutdown), before the HTTP servers wait for open requests.
func (h *Handler) watchStop(ctx caddy.Context) {
	appIface, err := ctx.App("events")
	if err != nil {
		return
	}
	app, ok := appIface.(*caddyevents.App)
	if !ok {
		return
	}
	_ = app.On("stopping", caddyevents.Handler(stopHandler{h: h}))
}

type stopHandler struct{ h *Handler }

// Handle implements caddyevents.Handler.
func (s stopHandler) Handle(context.Context, caddy.Event) error {
	s.h.streams.drain(s.h.drain)
	return nil
}
