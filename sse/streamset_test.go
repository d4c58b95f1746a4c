package sse

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"
)

// setMember is a stream pumped from a pipe with one client attached, as
// a relay adds it to a StreamSet.
type setMember struct {
	s      *Stream
	pw     *io.PipeWriter
	w      *fakeWriter
	a      *Attachment
	closed atomic.Bool // the stream's upstream was closed (Stream.Close)
	waited chan error  // the attachment's Wait result, once
	err    error       // the result read from waited
	ended  bool        // err is set
}

// result returns the attachment's Wait result, failing the test if Wait
// does not return.
func (m *setMember) result(t *testing.T) error {
	t.Helper()
	if !m.ended {
		select {
		case m.err = <-m.waited:
			m.ended = true
		case <-time.After(hangBound):
			t.Fatal("Attachment.Wait hung")
		}
	}
	return m.err
}

// newSetMember starts a stream with the given events in its replay ring
// and a client attached; the test's end closes everything.
func newSetMember(t *testing.T, events int) *setMember {
	t.Helper()
	m := &setMember{w: newFakeWriter(), waited: make(chan error, 1)}
	var pumped <-chan error
	m.s, m.pw, pumped = pipeStream(baseConfig())
	m.s.SetCloser(func() { m.closed.Store(true); m.pw.Close() })
	m.a, _ = m.s.Attach(m.w, "", 0)
	go func() { m.waited <- m.a.Wait(context.Background()) }()
	if events > 0 {
		io.WriteString(m.pw, evRange(1, events))
		waitUntil(t, "the events to reach the client", func() bool { return m.w.String() == evRange(1, events) })
	}
	t.Cleanup(func() {
		m.pw.Close()
		m.s.Close()
		pumpResult(t, pumped)
		m.result(t)
		m.s.Discard()
	})
	return m
}

// add adds m to ss and returns the function that forgets it.
func (m *setMember) add(ss *StreamSet, resumable bool) func() {
	return ss.Add(m.a, m.s, resumable)
}

func TestStreamSetWait(t *testing.T) {
	ss := NewStreamSet(nil)
	if !ss.Wait(0) {
		t.Fatal("Wait on an empty set reported open attachments")
	}
	a, b := newSetMember(t, 0), newSetMember(t, 0)
	forgetA, forgetB := a.add(ss, false), b.add(ss, true)
	if ss.Len() != 2 {
		t.Fatalf("Len %d, want 2", ss.Len())
	}
	if ss.Wait(time.Millisecond) {
		t.Fatal("Wait reported an empty set with two attachments open")
	}
	forgetA()
	done := make(chan bool, 1)
	go func() { done <- ss.Wait(hangBound) }()
	forgetB()
	select {
	case empty := <-done:
		if !empty {
			t.Fatal("Wait timed out after the last attachment was forgotten")
		}
	case <-time.After(2 * hangBound):
		t.Fatal("Wait hung")
	}
	if ss.Len() != 0 {
		t.Fatalf("Len %d after forgetting all", ss.Len())
	}
}

func TestDrainDelay(t *testing.T) {
	for _, tc := range []struct {
		r    float64
		want time.Duration
	}{{0, 80 * time.Millisecond}, {0.5, 90 * time.Millisecond}, {0.999999, 99999980 * time.Nanosecond}} {
		if got := drainDelay(100*time.Millisecond, tc.r); got != tc.want {
			t.Errorf("drainDelay(100ms, %v) = %v, want %v", tc.r, got, tc.want)
		}
	}
}

// TestStreamSetDrain: a drain closes every attachment, those open and
// those added later, counting each; the upstream of a resumable stream
// keeps running, any other is closed; a second drain schedules nothing.
func TestStreamSetDrain(t *testing.T) {
	var drained atomic.Int32
	ss := NewStreamSet(&StreamSetHooks{Drained: func() { drained.Add(1) }})
	plain, resumable, late := newSetMember(t, 1), newSetMember(t, 1), newSetMember(t, 0)
	defer plain.add(ss, false)()
	defer resumable.add(ss, true)()
	ss.Drain(10 * time.Millisecond)
	ss.Drain(10 * time.Millisecond)
	defer late.add(ss, false)()
	for _, m := range []*setMember{plain, resumable, late} {
		waitUntil(t, "the drain to close each attachment", m.a.Closed)
	}
	if err := plain.result(t); !errors.Is(err, ErrClosed) {
		t.Errorf("the drained client's Wait = %v, want ErrClosed", err)
	}
	waitUntil(t, "three drains counted", func() bool { return drained.Load() == 3 })
	if !plain.closed.Load() || !late.closed.Load() {
		t.Error("the upstream of a stream nobody can resume was left running")
	}
	if resumable.closed.Load() {
		t.Error("the upstream of a resumable stream was closed by the drain")
	}
	time.Sleep(30 * time.Millisecond) // a second drain's timers would have fired
	if n := drained.Load(); n != 3 {
		t.Errorf("%d drains counted, want 3", n)
	}
}

// TestStreamSetDrainPanic: a panic in a drain timer goes to the Panic
// hook and ends that timer only.
func TestStreamSetDrainPanic(t *testing.T) {
	got := make(chan any, 1)
	ss := NewStreamSet(&StreamSetHooks{
		Drained: func() { panic("drain hook") },
		Panic:   func(v any) { got <- v },
	})
	m := newSetMember(t, 0)
	defer m.add(ss, false)()
	ss.Drain(time.Millisecond)
	select {
	case v := <-got:
		if v != "drain hook" {
			t.Fatalf("Panic hook got %v", v)
		}
	case <-time.After(hangBound):
		t.Fatal("the panic did not reach the Panic hook")
	}
}

func TestStreamSetCloseAll(t *testing.T) {
	ss := NewStreamSet(nil)
	plain, resumable := newSetMember(t, 0), newSetMember(t, 0)
	defer plain.add(ss, false)()
	defer resumable.add(ss, true)()
	ss.CloseAll()
	if !plain.a.Closed() || !resumable.a.Closed() {
		t.Fatal("CloseAll left an attachment open")
	}
	if !plain.closed.Load() || resumable.closed.Load() {
		t.Errorf("upstreams closed: plain %v, resumable %v; want true, false", plain.closed.Load(), resumable.closed.Load())
	}
}

// TestStreamSetResetLargest: the streams holding the most memory are
// reset first, upstream closed and replay ring emptied even when
// resumable; closed attachments are skipped.
func TestStreamSetResetLargest(t *testing.T) {
	ss := NewStreamSet(nil)
	small, big, mid, gone := newSetMember(t, 1), newSetMember(t, 30), newSetMember(t, 10), newSetMember(t, 50)
	for _, m := range []*setMember{small, big, mid, gone} {
		defer m.add(ss, true)()
	}
	gone.a.Close()
	if n := ss.ResetLargest(2); n != 2 {
		t.Fatalf("ResetLargest(2) = %d", n)
	}
	for _, m := range []*setMember{big, mid} {
		if !m.a.Closed() || !m.closed.Load() || m.s.RingBytes() != 0 {
			t.Errorf("a large stream was not reset: closed %v, upstream closed %v, ring %d", m.a.Closed(), m.closed.Load(), m.s.RingBytes())
		}
	}
	if small.a.Closed() || small.closed.Load() || small.s.RingBytes() == 0 {
		t.Error("the smallest stream was reset")
	}
	if gone.closed.Load() {
		t.Error("a closed attachment was counted for a reset")
	}
	if n := ss.ResetLargest(5); n != 1 || !small.a.Closed() {
		t.Fatalf("ResetLargest(5) = %d, want 1 (the last open one)", n)
	}
	if n := ss.ResetLargest(-1); n != 0 {
		t.Fatalf("ResetLargest(-1) = %d", n)
	}
}
