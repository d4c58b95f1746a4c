package sse

import (
	"fmt"
	"io"
	"math/rand/v2"
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

// endedStream returns a stream whose upstream sent events with ids, then
// one without, and ended: each id has something after it to replay.
func endedStream(t *testing.T, ids ...string) *Stream {
	t.Helper()
	s := NewStream(regConfig())
	if err := s.Pump(strings.NewReader(idEvents(ids...) + "data: end\n\n")); err != nil {
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

// TestRegistryFindLeavesPollingToUpstream: a stream whose upstream ended
// right after an event of its own id does not answer that id, which the
// upstream resumes (it closed the stream for its client to poll); an
// earlier id, or that id on a live stream, is answered from the ring.
func TestRegistryFindLeavesPollingToUpstream(t *testing.T) {
	r := NewRegistry(10, 10, time.Minute)
	// endsAt records the upstream id a client that got every event holds
	// at the end of the stream (Continuation.LastID), "" for none.
	var endsAt string
	endsAtHook := func(c Continuation) io.ReadCloser { endsAt = c.LastID; return nil }
	cfg := regConfig()
	cfg.Continue = endsAtHook
	polled := NewStream(cfg)
	if err := polled.Pump(strings.NewReader("id: e1\ndata: one\n\nid: e2\nretry: 500\ndata: \n\n")); err != nil {
		t.Fatal(err)
	}
	live := liveStream(t, "l1")
	r.Add("A", polled)
	r.Add("A", live)
	if endsAt != "e2" {
		t.Errorf("the stream ends at upstream id %q, want e2", endsAt)
	}
	for id, want := range map[string]*Stream{"e1": polled, "e2": nil, "l1": live} {
		if got := r.Find("A", id); got != want {
			t.Errorf("Find(%q) = %p, want %p", id, got, want)
		}
	}
	proxied := NewStream(StreamConfig{ReplayEvents: 8, ReplayBytes: 1 << 16, IDPrefix: "p-", Continue: endsAtHook})
	if err := proxied.Pump(strings.NewReader("id: e1\ndata: one\n\ndata: two\n\n")); err != nil {
		t.Fatal(err)
	}
	if endsAt != "" {
		t.Errorf("the stream ends at upstream id %q after an event given the proxy's id, want none", endsAt)
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

// TestRegistryLRUModel runs random operations against a registry and a
// plain model of least-recently-used order, and checks after each that
// both hold the same sessions.
func TestRegistryLRUModel(t *testing.T) {
	const maxSessions = 4
	r := NewRegistry(maxSessions, 2, time.Minute)
	var model []string // least recently used first
	use := func(k string) {
		for i, m := range model {
			if m == k {
				model = append(model[:i], model[i+1:]...)
				break
			}
		}
		model = append(model, k)
	}
	remove := func(k string) {
		for i, m := range model {
			if m == k {
				model = append(model[:i], model[i+1:]...)
				return
			}
		}
	}
	rng := rand.New(rand.NewPCG(4, 2))
	for step := range 2000 {
		k := "s" + strconv.Itoa(rng.IntN(8))
		switch op := rng.IntN(10); {
		case op < 5:
			if r.sessions[k] == nil && len(model) >= maxSessions {
				model = model[1:] // the least recently used goes
			}
			r.Add(k, endedStream(t, k))
			use(k)
		case op < 8:
			r.Find(k, k)
			if r.sessions[k] != nil {
				use(k)
			}
		default:
			r.Forget(k)
			remove(k)
		}
		var got []string // least recently used first
		for rs := r.lru.prev; rs != &r.lru; rs = rs.prev {
			got = append(got, rs.key)
			if r.sessions[rs.key] != rs {
				t.Fatalf("step %d: listed session %q is not the registry's", step, rs.key)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(model) || len(r.sessions) != len(model) {
			t.Fatalf("step %d: sessions by use %v (%d held), want %v", step, got, len(r.sessions), model)
		}
	}
}

// TestRegistryDropsLeastRecentlyUsedInOrder checks the order in which a
// full registry drops sessions: oldest use first, a Find or an Add
// counting as use, a forgotten or swept session not counting at all.
func TestRegistryDropsLeastRecentlyUsedInOrder(t *testing.T) {
	r := NewRegistry(3, 4, time.Minute)
	for _, k := range []string{"A", "B", "C"} {
		r.Add(k, endedStream(t, k))
	}
	r.Find("A", "A")                // B C A
	r.Add("B", endedStream(t, "b")) // C A B
	var dropped []string
	for _, k := range []string{"D", "E", "F"} {
		before := map[string]bool{}
		for key := range r.sessions {
			before[key] = true
		}
		r.Add(k, endedStream(t, k))
		for key := range before {
			if r.sessions[key] == nil {
				dropped = append(dropped, key)
			}
		}
	}
	if fmt.Sprint(dropped) != "[C A B]" {
		t.Errorf("dropped %v, want [C A B]", dropped)
	}
	r.Forget("E") // D F
	r.Add("G", liveStream(t, "g"))
	if s, _ := r.Len(); s != 3 || r.Find("D", "D") == nil {
		t.Errorf("a forgotten session's slot was not reused: %d sessions", s)
	}
	// A sweep that empties a session takes it out of the order too.
	r.Sweep(time.Now().Add(time.Hour)) // G, live, is all that is left
	r.Add("H", endedStream(t, "h"))
	r.Add("I", endedStream(t, "i"))
	if s, _ := r.Len(); s != 3 || r.sessions["G"] == nil {
		t.Errorf("after a sweep: %d sessions, G held %v", s, r.sessions["G"] != nil)
	}
}

// streamWithAge returns an ended stream with its own replay age.
func streamWithAge(t *testing.T, age time.Duration, id string) *Stream {
	t.Helper()
	cfg := regConfig()
	cfg.ReplayAge = age
	s := NewStream(cfg)
	if err := s.Pump(strings.NewReader(idEvents(id))); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRegistrySweepPerStreamAge checks that each stream is kept for its
// own replay age, and for the registry's default when it has none.
func TestRegistrySweepPerStreamAge(t *testing.T) {
	r := NewRegistry(10, 10, time.Minute)
	short := streamWithAge(t, 10*time.Second, "short")
	long := streamWithAge(t, 5*time.Minute, "long")
	none := streamWithAge(t, 0, "none")
	r.Add("A", short)
	r.Add("A", long)
	r.Add("B", none)
	if long.ReplayAge() != 5*time.Minute || none.ReplayAge() != 0 {
		t.Errorf("ReplayAge %v, %v", long.ReplayAge(), none.ReplayAge())
	}
	_, ended := short.Ended()
	for _, step := range []struct {
		after   time.Duration
		dropped int
		left    []string
	}{
		{5 * time.Second, 0, []string{"short", "long", "none"}},
		{30 * time.Second, 1, []string{"long", "none"}},
		{2 * time.Minute, 1, []string{"long"}},
		{4 * time.Minute, 0, []string{"long"}},
		{6 * time.Minute, 1, nil},
	} {
		if n := r.Sweep(ended.Add(step.after)); n != step.dropped {
			t.Errorf("sweep at +%v dropped %d, want %d", step.after, n, step.dropped)
		}
		_, n := r.Len()
		if n != len(step.left) {
			t.Errorf("after the sweep at +%v: %d streams, want %v", step.after, n, step.left)
		}
	}
	if s, _ := r.Len(); s != 0 {
		t.Errorf("%d sessions left", s)
	}
}

// TestRegistryShrinkBy checks that ShrinkBy scales each stream's ring to
// a fraction of its own configured size.
func TestRegistryShrinkBy(t *testing.T) {
	r := NewRegistry(10, 10, time.Minute)
	stream := func(events int) *Stream {
		cfg := regConfig()
		cfg.ReplayEvents = events
		s := NewStream(cfg)
		if err := s.Pump(strings.NewReader(evRange(1, events))); err != nil {
			t.Fatal(err)
		}
		return s
	}
	small, large := stream(10), stream(100)
	r.Add("A", small)
	r.Add("B", large)
	r.ShrinkBy(0.5)
	has := func(s *Stream, id int) bool { return s.Has(strconv.Itoa(id), time.Now()) }
	if has(small, 5) || !has(small, 6) || has(large, 50) || !has(large, 51) {
		t.Errorf("after ShrinkBy(0.5): small has 5 %v, 6 %v; large has 50 %v, 51 %v",
			has(small, 5), has(small, 6), has(large, 50), has(large, 51))
	}
	r.ShrinkBy(0.01) // at least one event each
	if has(small, 9) || !has(small, 10) || has(large, 99) || !has(large, 100) {
		t.Error("ShrinkBy(0.01) does not keep one event per stream")
	}
}

// BenchmarkRegistryAddFull adds sessions to a full registry: each Add
// drops the least recently used session.
func BenchmarkRegistryAddFull(b *testing.B) {
	const sessions = 10000
	r := NewRegistry(sessions, 1, time.Minute)
	s := NewStream(StreamConfig{})
	keys := make([]string, 2*sessions)
	for i := range keys {
		keys[i] = "s" + strconv.Itoa(i)
	}
	for _, k := range keys[:sessions] {
		r.Add(k, s)
	}
	b.ResetTimer()
	for i := range b.N {
		r.Add(keys[i%len(keys)], s)
	}
}
