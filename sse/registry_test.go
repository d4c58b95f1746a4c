package sse

import (
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func regConfig() StreamConfig {
	cfg := baseConfig()
	cfg.ReplayAge = time.Minute
	return cfg
}

func idEvents(ids ...string) string {
	var b strings.Builder
	for _, id := range ids {
		b.WriteString("id: " + id + "\ndata: " + id + "\n\n")
	}
	return b.String()
}

// endedStream returns a stream whose upstream sent events with ids and
// ended.
func endedStream(t *testing.T, ids ...string) *Stream {
	t.Helper()
	s := NewStream(regConfig())
	if err := s.Pump(strings.NewReader(idEvents(ids...))); err != nil {
		t.Fatal(err)
	}
	return s
}

// liveStream returns a stream whose upstream sent events with ids and is
// still open until the test ends.
func liveStream(t *testing.T, ids ...string) *Stream {
	t.Helper()
	s := NewStream(regConfig())
	pr, pw := io.Pipe()
	pumped := startPump(s, pr)
	t.Cleanup(func() {
		pw.Close()
		<-pumped
	})
	if len(ids) > 0 {
		go io.WriteString(pw, idEvents(ids...))
		waitUntil(t, "live stream events", func() bool { return s.UpstreamLastID() == ids[len(ids)-1] })
	}
	return s
}

func TestRegistryFindScopedBySession(t *testing.T) {
	r := NewRegistry(10, 10, time.Minute)
	a1 := endedStream(t, "a1", "a2", "shared")
	a2 := liveStream(t, "a3")
	b1 := endedStream(t, "b1", "shared")
	r.Add("A", a1)
	r.Add("A", a2)
	r.Add("B", b1)
	for _, tc := range []struct {
		session, id string
		want        *Stream
	}{
		{"A", "a1", a1},
		{"A", "a2", a1},
		{"A", "a3", a2},
		{"A", "shared", a1},
		{"B", "shared", b1},
		{"B", "b1", b1},
		{"B", "a1", nil}, // another session's id
		{"B", "a3", nil},
		{"A", "b1", nil},
		{"C", "a1", nil}, // unknown session
		{"A", "", nil},
		{"A", "zzz", nil},
	} {
		if got := r.Find(tc.session, tc.id); got != tc.want {
			t.Errorf("Find(%q, %q) = %p, want %p", tc.session, tc.id, got, tc.want)
		}
	}
	if s, n := r.Len(); s != 2 || n != 3 {
		t.Errorf("Len = %d, %d", s, n)
	}
	if got, want := r.Bytes(), a1.RingBytes()+a2.RingBytes()+b1.RingBytes(); got != want || got == 0 {
		t.Errorf("Bytes = %d, want %d", got, want)
	}
	// Find does not create sessions.
	if s, _ := r.Len(); s != 2 {
		t.Errorf("%d sessions after Find of an unknown one", s)
	}
}

func TestRegistryFindNewestFirst(t *testing.T) {
	// Ids should be unique per session; if they are not, the newest
	// stream answers.
	r := NewRegistry(1, 10, time.Minute)
	old, young := endedStream(t, "x"), endedStream(t, "x")
	r.Add("A", old)
	r.Add("A", young)
	if r.Find("A", "x") != young {
		t.Error("older stream answered")
	}
}

func TestRegistryMaxStreams(t *testing.T) {
	r := NewRegistry(10, 2, time.Minute)
	l1 := liveStream(t, "l1")
	e2 := endedStream(t, "e2")
	l3 := liveStream(t, "l3")
	r.Add("A", l1)
	r.Add("A", e2)
	r.Add("A", l3) // the oldest ended stream goes first
	if r.Find("A", "e2") != nil || r.Find("A", "l1") != l1 || r.Find("A", "l3") != l3 {
		t.Error("the ended stream should have been dropped")
	}
	l4 := liveStream(t, "l4")
	r.Add("A", l4) // none ended: the oldest goes
	if r.Find("A", "l1") != nil || r.Find("A", "l3") != l3 || r.Find("A", "l4") != l4 {
		t.Error("the oldest stream should have been dropped")
	}
	if s, n := r.Len(); s != 1 || n != 2 {
		t.Errorf("Len = %d, %d", s, n)
	}
	// Adding a stream again does not take a second slot.
	r.Add("A", l3)
	r.Add("A", l3)
	if _, n := r.Len(); n != 2 || r.Find("A", "l4") != l4 {
		t.Errorf("re-adding took a slot: %d streams", n)
	}
	// ... and makes it the newest, so l4 is the oldest now.
	l5 := liveStream(t, "l5")
	r.Add("A", l5)
	if r.Find("A", "l4") != nil || r.Find("A", "l3") != l3 {
		t.Error("re-added stream not made the newest")
	}
}

func TestRegistryMaxSessionsLRU(t *testing.T) {
	r := NewRegistry(2, 4, time.Minute)
	sa, sb, sc := endedStream(t, "a"), endedStream(t, "b"), endedStream(t, "c")
	r.Add("A", sa)
	r.Add("B", sb)
	if r.Find("A", "a") != sa { // A is now the most recently used
		t.Fatal("A not found")
	}
	r.Add("C", sc)
	if s, n := r.Len(); s != 2 || n != 2 {
		t.Errorf("Len = %d, %d", s, n)
	}
	if r.Find("B", "b") != nil || r.Find("A", "a") != sa || r.Find("C", "c") != sc {
		t.Error("the least recently used session (B) should have been dropped")
	}
	// Adding to an existing session uses it too; a Find that misses does
	// as well.
	r.Find("C", "nope")
	r.Add("D", endedStream(t, "d")) // drops A
	if r.Find("A", "a") != nil || r.Find("C", "c") != sc {
		t.Error("A should have been dropped")
	}
	r.Add("C", endedStream(t, "c2"))
	r.Add("E", endedStream(t, "e")) // drops D
	if r.Find("D", "d") != nil || r.Find("C", "c2") == nil {
		t.Error("D should have been dropped")
	}
}

func TestRegistryZeroBounds(t *testing.T) {
	r := NewRegistry(0, 0, 0)
	s1, s2 := endedStream(t, "1"), endedStream(t, "2")
	r.Add("A", s1)
	r.Add("A", s2)
	r.Add("B", s1)
	if s, n := r.Len(); s != 1 || n != 1 {
		t.Errorf("Len = %d, %d; bounds of zero mean one", s, n)
	}
}

func TestRegistrySweep(t *testing.T) {
	r := NewRegistry(10, 10, time.Minute)
	e1 := endedStream(t, "e1")
	l1 := liveStream(t, "l1")
	b1 := endedStream(t, "b1")
	r.Add("A", e1)
	r.Add("A", l1)
	r.Add("B", b1)
	now := time.Now()
	if n := r.Sweep(now); n != 0 {
		t.Errorf("Sweep dropped %d fresh streams", n)
	}
	if s, n := r.Len(); s != 2 || n != 3 {
		t.Fatalf("Len = %d, %d", s, n)
	}
	later := now.Add(2 * time.Minute)
	if n := r.Sweep(later); n != 2 {
		t.Errorf("Sweep dropped %d streams, want 2", n)
	}
	if s, n := r.Len(); s != 1 || n != 1 {
		t.Errorf("Len = %d, %d after sweep", s, n)
	}
	if r.Find("B", "b1") != nil || r.Find("A", "e1") != nil {
		t.Error("ended streams still found")
	}
	// The live stream is kept, but its old events were evicted.
	if l1.RingBytes() != 0 || r.Bytes() != 0 {
		t.Errorf("old events kept: %d bytes", r.Bytes())
	}
}

func TestRegistryForget(t *testing.T) {
	r := NewRegistry(10, 10, time.Minute)
	r.Add("A", endedStream(t, "a"))
	r.Add("A", endedStream(t, "a2"))
	r.Add("B", endedStream(t, "b"))
	r.Forget("A")
	r.Forget("nope")
	if s, n := r.Len(); s != 1 || n != 1 {
		t.Errorf("Len = %d, %d", s, n)
	}
	if r.Find("A", "a") != nil || r.Find("B", "b") == nil {
		t.Error("Forget dropped the wrong session")
	}
}

func TestRegistryConcurrent(t *testing.T) {
	r := NewRegistry(8, 4, time.Millisecond)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				session := "s" + strconv.Itoa((g+i)%12)
				id := strconv.Itoa(g) + "-" + strconv.Itoa(i)
				s := NewStream(regConfig())
				s.Pump(strings.NewReader(idEvents(id)))
				r.Add(session, s)
				if got := r.Find(session, id); got != nil && got != s {
					t.Errorf("Find(%q, %q) found another stream", session, id)
				}
				switch i % 10 {
				case 3:
					r.Sweep(time.Now().Add(time.Second))
				case 7:
					r.Forget(session)
				}
				r.Len()
				r.Bytes()
			}
		}()
	}
	wg.Wait()
	if s, n := r.Len(); s > 8 || n > 8*4 {
		t.Errorf("bounds broken: %d sessions, %d streams", s, n)
	}
}
