package resources

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a settable clock for RegistryConfig.Clock.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time                  { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration)         { c.ns.Add(int64(d)) }
func (c *fakeClock) After(d time.Duration) time.Time { return c.Now().Add(d) }

// evictLog records OnEvict calls.
type evictLog struct {
	mu    sync.Mutex
	calls map[string][]Cause
}

func (l *evictLog) record(s *Session, c Cause) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.calls == nil {
		l.calls = make(map[string][]Cause)
	}
	l.calls[s.Key()] = append(l.calls[s.Key()], c)
}

func (l *evictLog) get(key string) []Cause {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls[key]
}

func info(key string) SessionInfo {
	return SessionInfo{Key: key, Upstream: "10.0.0.1:3000", Version: "2025-11-25"}
}

func mustOpen(t testing.TB, r *Registry, key string, now time.Time) *Session {
	t.Helper()
	s, err := r.Open(info(key), now, false)
	if err != nil {
		t.Fatalf("Open(%q): %v", key, err)
	}
	return s
}

func TestRegistryOpenGet(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now})
	s := mustOpen(t, r, "a", clk.Now())
	if s.Key() != "a" || s.Info() != info("a") || !s.Created().Equal(clk.Now()) || !s.LastActive().Equal(clk.Now()) {
		t.Fatalf("session fields: %+v", s.Info())
	}
	if s.Account().Quota() != DefaultSessionMemory {
		t.Fatalf("default quota %d", s.Account().Quota())
	}
	got, ok := r.Get("a")
	if !ok || got != s {
		t.Fatal("Get did not return the opened session")
	}
	if _, ok := r.Get("b"); ok {
		t.Fatal("Get found an unknown key")
	}
	if _, err := r.Open(info("a"), clk.Now(), false); !errors.Is(err, ErrExists) {
		t.Fatalf("reopening a live key: %v, want ErrExists", err)
	}
	if r.Len() != 1 {
		t.Fatalf("Len = %d, want 1", r.Len())
	}
	if r.IdleTimeout() != DefaultIdleTimeout {
		t.Fatalf("IdleTimeout = %v", r.IdleTimeout())
	}
}

// TestSessionVersion: a session's version is the one it was opened at
// until a request names another; the last one named wins, and the
// session's opening info keeps the version it was opened at.
func TestSessionVersion(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now})
	in := info("a")
	in.Version = "2025-11-25"
	s, err := r.Open(in, clk.Now(), false)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct{ set, want string }{
		{"", "2025-11-25"},
		{"2025-11-25", "2025-11-25"},
		{"2025-06-18", "2025-06-18"},
		{"", "2025-06-18"},
		{"2024-11-05", "2024-11-05"},
		{"2025-11-25", "2025-11-25"},
	} {
		s.SetVersion(step.set)
		if got := s.Version(); got != step.want {
			t.Errorf("after SetVersion(%q): Version() = %q, want %q", step.set, got, step.want)
		}
	}
	if s.Info().Version != "2025-11-25" {
		t.Errorf("Info().Version = %q, want the opening version", s.Info().Version)
	}
}

func TestRegistryEvict(t *testing.T) {
	clk := newFakeClock()
	mem := NewBudget(0)
	var log evictLog
	r := NewRegistry(RegistryConfig{Clock: clk.Now, Memory: mem, OnEvict: log.record})
	s := mustOpen(t, r, "a", clk.Now())
	if !s.Account().Reserve(1000) {
		t.Fatal("reserve")
	}
	// The account also holds the bytes of the session's info.
	if want := 1000 + info("a").Size(); r.Bytes() != want || mem.Used() != want {
		t.Fatalf("bytes %d mem %d, want %d", r.Bytes(), mem.Used(), want)
	}
	var reasons []error
	var mu sync.Mutex
	for range 2 {
		s.AddStream(func(err error) { mu.Lock(); reasons = append(reasons, err); mu.Unlock() })
	}
	var goroutineEnded atomic.Bool
	s.Group().Go(func(ctx context.Context) { <-ctx.Done(); goroutineEnded.Store(true) })

	if !r.Remove("a", CauseOperator) {
		t.Fatal("Remove of a live session for an eviction cause reported false")
	}
	if r.Remove("a", CauseOperator) || r.Remove("a", CauseDeleted) {
		t.Fatal("second eviction reported true")
	}
	if _, ok := r.Get("a"); ok {
		t.Fatal("evicted session still live")
	}
	if !s.Evicted() || !r.WasEvicted("a") {
		t.Fatal("eviction not recorded")
	}
	if len(reasons) != 2 || !errors.Is(reasons[0], ErrEvicted) || !errors.Is(reasons[1], ErrEvicted) {
		t.Fatalf("closer reasons %v", reasons)
	}
	if got := log.get("a"); len(got) != 1 || got[0] != CauseOperator {
		t.Fatalf("OnEvict calls %v", got)
	}
	if r.Bytes() != 0 || mem.Used() != 0 || !s.Account().Closed() {
		t.Fatalf("memory not released: bytes %d mem %d", r.Bytes(), mem.Used())
	}
	s.Group().Wait()
	if !goroutineEnded.Load() || s.Goroutines() != 0 {
		t.Fatal("session goroutine not ended")
	}
	st := r.Stats()
	if st.Sessions != 0 || st.Evictions[CauseOperator] != 1 {
		t.Fatalf("stats %+v", st)
	}
	// A stream added after eviction is closed at once.
	var late error
	remove := s.AddStream(func(err error) { late = err })
	remove()
	if !errors.Is(late, ErrEvicted) {
		t.Fatalf("late stream closed with %v", late)
	}
	// Reopening the key clears its tombstone.
	mustOpen(t, r, "a", clk.Now())
	if r.WasEvicted("a") {
		t.Fatal("reopened key still tombstoned")
	}
}

func TestRegistryRemoveDeleted(t *testing.T) {
	clk := newFakeClock()
	var log evictLog
	r := NewRegistry(RegistryConfig{Clock: clk.Now, OnEvict: log.record})
	s := mustOpen(t, r, "a", clk.Now())
	var reason error
	s.AddStream(func(err error) { reason = err })
	if !r.Remove("a", CauseDeleted) {
		t.Fatal("Remove reported false")
	}
	if !errors.Is(reason, ErrDeleted) {
		t.Fatalf("closer reason %v, want ErrDeleted", reason)
	}
	if r.WasEvicted("a") {
		t.Fatal("a deleted session must leave no tombstone")
	}
	if got := log.get("a"); len(got) != 0 {
		t.Fatalf("OnEvict called for a deletion: %v", got)
	}
	if r.Stats().Evictions[CauseDeleted] != 1 || !s.Evicted() {
		t.Fatal("deletion not counted")
	}
	var late error
	s.AddStream(func(err error) { late = err })
	if !errors.Is(late, ErrDeleted) {
		t.Fatalf("late stream on deleted session closed with %v", late)
	}
	// Remove with an eviction cause tombstones.
	mustOpen(t, r, "b", clk.Now())
	r.Remove("b", CauseLevel)
	if !r.WasEvicted("b") || len(log.get("b")) != 1 {
		t.Fatal("Remove with an eviction cause must tombstone and call OnEvict")
	}
	// A session that cannot come back is removed as deleted, tombstoned.
	mustOpen(t, r, "c", clk.Now())
	if !r.RemoveEnded("c") || !r.WasEvicted("c") || len(log.get("c")) != 0 || r.Stats().Evictions[CauseDeleted] != 2 {
		t.Fatal("RemoveEnded must tombstone a deletion without calling OnEvict")
	}
}

func TestSessionStreams(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now, MaxStreams: 2})
	s := mustOpen(t, r, "a", clk.Now())
	var closed [3]atomic.Int32
	r1 := s.AddStream(func(error) { closed[0].Add(1) })
	r2 := s.AddStream(func(error) { closed[1].Add(1) })
	var limitErr error
	r3 := s.AddStream(func(err error) { closed[2].Add(1); limitErr = err })
	if !errors.Is(limitErr, ErrStreamLimit) || s.StreamCount() != 2 {
		t.Fatalf("stream limit: err %v count %d", limitErr, s.StreamCount())
	}
	r3()
	clk.Advance(time.Minute)
	r1()
	r1() // idempotent
	if s.StreamCount() != 1 {
		t.Fatalf("StreamCount = %d, want 1", s.StreamCount())
	}
	if !s.LastActive().Equal(clk.Now()) {
		t.Fatal("stream removal must touch the session")
	}
	r.Remove("a", CauseOperator)
	r2() // after close: no-op
	if closed[0].Load() != 0 || closed[1].Load() != 1 || closed[2].Load() != 1 {
		t.Fatalf("closer calls %d %d %d, want 0 1 1", closed[0].Load(), closed[1].Load(), closed[2].Load())
	}
}

func TestSessionBeginTouch(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now})
	start := clk.Now()
	s := mustOpen(t, r, "a", start)
	clk.Advance(time.Second)
	end := s.Begin()
	if s.InFlight() != 1 || !s.LastActive().Equal(clk.Now()) {
		t.Fatalf("Begin: inflight %d last %v", s.InFlight(), s.LastActive())
	}
	clk.Advance(time.Second)
	end()
	if s.InFlight() != 0 || !s.LastActive().Equal(clk.Now()) {
		t.Fatal("end must decrement and touch")
	}
	s.Touch(start) // never backwards
	if !s.LastActive().Equal(clk.Now()) {
		t.Fatal("Touch moved last-active backwards")
	}
}

func TestRegistrySweep(t *testing.T) {
	clk := newFakeClock()
	var log evictLog
	r := NewRegistry(RegistryConfig{Clock: clk.Now, IdleTimeout: time.Minute, OnEvict: log.record})
	t0 := clk.Now()
	idleS := mustOpen(t, r, "idle", t0)
	busy := mustOpen(t, r, "busy", t0)
	streaming := mustOpen(t, r, "streaming", t0)
	recent := mustOpen(t, r, "recent", t0)
	end := busy.Begin() // Begin touches at the clock's time, t0
	streaming.AddStream(func(error) {})
	recent.Touch(t0.Add(30 * time.Second))

	if n := r.Sweep(t0.Add(59 * time.Second)); n != 0 {
		t.Fatalf("Sweep before the timeout expired %d", n)
	}
	if n := r.Sweep(t0.Add(time.Minute)); n != 1 {
		t.Fatalf("Sweep expired %d, want 1", n)
	}
	if _, ok := r.Get("idle"); ok || !idleS.Evicted() || !r.WasEvicted("idle") {
		t.Fatal("idle session not expired")
	}
	if got := log.get("idle"); len(got) != 1 || got[0] != CauseIdle {
		t.Fatalf("OnEvict %v", got)
	}
	// An open stream or a request in flight keeps a session however long.
	if n := r.Sweep(t0.Add(time.Hour)); n != 1 {
		t.Fatalf("Sweep expired %d, want 1 (recent)", n)
	}
	for _, k := range []string{"busy", "streaming"} {
		if _, ok := r.Get(k); !ok {
			t.Fatalf("%s expired", k)
		}
	}
	end()
	clk.Advance(time.Hour)
	// end touched busy at the clock's time; a shorter timeout expires it.
	r.SetIdleTimeout(10 * time.Second)
	if n := r.Sweep(clk.Now().Add(10 * time.Second)); n != 1 {
		t.Fatalf("Sweep after end expired %d, want 1", n)
	}
	if r.Len() != 1 || r.Stats().Evictions[CauseIdle] != 3 {
		t.Fatalf("len %d stats %+v", r.Len(), r.Stats())
	}
	r.SetIdleTimeout(0)
	if r.IdleTimeout() != DefaultIdleTimeout {
		t.Fatal("SetIdleTimeout(0) must restore the default")
	}
}

func TestRegistryVictimOrder(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now, SessionMemory: 1000})
	now := clk.Now()
	// score = idleSeconds × (1 + bytes/quota); bytes is what the account
	// holds, the info's bytes included (0 below: only those).
	cases := []struct {
		key   string
		idle  time.Duration
		bytes int64
	}{
		{"fresh", 0, 1000},
		{"idle10", 10 * time.Second, 0},
		{"idle10full", 10 * time.Second, 1000},
		{"idle15half", 15 * time.Second, 500},
		{"idle5", 5 * time.Second, 0},
	}
	for _, c := range cases {
		s := mustOpen(t, r, c.key, now.Add(-c.idle))
		held := max(c.bytes, info(c.key).Size())
		if !s.Account().Reserve(held - s.Account().Used()) {
			t.Fatalf("reserve for %s", c.key)
		}
		want := c.idle.Seconds() * (1 + float64(held)/1000)
		if got := r.Score(s, now); got != want {
			t.Fatalf("Score(%s) = %v, want %v", c.key, got, want)
		}
	}
	var order []string
	for _, want := range []string{"idle15half", "idle10full", "idle10", "idle5", "fresh"} {
		before := map[string]bool{}
		r.Range(func(s *Session) bool { before[s.Key()] = true; return true })
		if n := r.EvictVictims(1, false, CauseLevel); n != 1 {
			t.Fatalf("EvictVictims = %d", n)
		}
		r.Range(func(s *Session) bool { delete(before, s.Key()); return true })
		for k := range before {
			order = append(order, k)
		}
		if order[len(order)-1] != want {
			t.Fatalf("eviction order %v, want %s next", order, want)
		}
	}
	if r.EvictVictims(1, false, CauseLevel) != 0 {
		t.Fatal("evicted from an empty registry")
	}
}

func TestRegistryEvictVictimsMany(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now})
	now := clk.Now()
	for i := range 100 {
		mustOpen(t, r, fmt.Sprint(i), now.Add(-time.Duration(i)*time.Second))
	}
	if n := r.EvictVictims(10, false, CauseLevel); n != 10 {
		t.Fatalf("EvictVictims = %d", n)
	}
	for i := range 100 {
		_, live := r.Get(fmt.Sprint(i))
		if live != (i < 90) {
			t.Fatalf("session %d live=%v; the 10 idlest must go", i, live)
		}
	}
	if n := r.EvictVictims(1000, false, CauseLevel); n != 90 || r.Len() != 0 {
		t.Fatalf("EvictVictims(all) = %d, len %d", n, r.Len())
	}
}

func TestRegistryProtectiveRule(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now, MaxSessions: 2})
	a := mustOpen(t, r, "a", clk.Now())
	b := mustOpen(t, r, "b", clk.Now())
	endA := a.Begin()
	endB := b.Begin()
	clk.Advance(time.Hour)
	if _, err := r.Open(info("c"), clk.Now(), false); !errors.Is(err, ErrFull) {
		t.Fatalf("Open with every session in flight: %v, want ErrFull", err)
	}
	if r.EvictVictims(2, false, CauseLevel) != 0 {
		t.Fatal("evicted a session with a request in flight")
	}
	endB()
	// b is no longer in flight, but was just touched: a is idler yet busy.
	if _, err := r.Open(info("c"), clk.Now(), false); err != nil {
		t.Fatalf("Open with a free victim: %v", err)
	}
	if _, ok := r.Get("b"); ok {
		t.Fatal("the victim must be b, the only session not in flight")
	}
	if _, err := r.Open(info("d"), clk.Now(), true); err != nil {
		t.Fatalf("protective Open: %v", err)
	}
	if r.Len() != 2 || r.Stats().Evictions[CauseCapacity] != 2 {
		t.Fatalf("len %d stats %+v", r.Len(), r.Stats())
	}
	endA()
}

func TestRegistryCapacityVictim(t *testing.T) {
	clk := newFakeClock()
	var log evictLog
	r := NewRegistry(RegistryConfig{Clock: clk.Now, MaxSessions: 3, OnEvict: log.record})
	now := clk.Now()
	mustOpen(t, r, "new", now)
	mustOpen(t, r, "old", now.Add(-time.Hour))
	mustOpen(t, r, "mid", now.Add(-time.Minute))
	if _, err := r.Open(info("x"), now, false); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Get("old"); ok {
		t.Fatal("the idlest session must make room")
	}
	if got := log.get("old"); len(got) != 1 || got[0] != CauseCapacity {
		t.Fatalf("OnEvict %v", got)
	}
	if r.Len() != 3 {
		t.Fatalf("Len = %d, want 3", r.Len())
	}
}

func TestRegistryTombstoneBounds(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now, MaxTombstones: 3, TombstoneTTL: time.Hour})
	for i := range 5 {
		mustOpen(t, r, fmt.Sprint(i), clk.Now())
		r.Remove(fmt.Sprint(i), CauseOperator)
		clk.Advance(time.Minute)
	}
	if r.Tombstones() != 3 {
		t.Fatalf("Tombstones = %d, want 3", r.Tombstones())
	}
	for i, want := range []bool{false, false, true, true, true} {
		if got := r.WasEvicted(fmt.Sprint(i)); got != want {
			t.Fatalf("WasEvicted(%d) = %v, want %v (oldest dropped first)", i, got, want)
		}
	}
	// Reopening and evicting a key again keeps one map entry, the newest;
	// its stale queue entry still counts toward the bound until it ages out.
	mustOpen(t, r, "4", clk.Now())
	r.Remove("4", CauseOperator)
	if r.Tombstones() > 3 || !r.WasEvicted("4") {
		t.Fatalf("Tombstones = %d after re-eviction", r.Tombstones())
	}
	// TTL: expired tombstones stop answering and are pruned by Sweep.
	clk.Advance(time.Hour)
	if r.WasEvicted("2") {
		t.Fatal("tombstone past its TTL still answers")
	}
	r.Sweep(clk.Now())
	if r.Tombstones() != 0 {
		t.Fatalf("Tombstones after TTL sweep = %d, want 0", r.Tombstones())
	}
	r.tombMu.Lock()
	qlen := len(r.queue) - r.head
	r.tombMu.Unlock()
	if qlen != 0 {
		t.Fatalf("tombstone queue holds %d after prune", qlen)
	}
}

func TestRegistryRange(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now})
	for i := range 10 {
		mustOpen(t, r, fmt.Sprint(i), clk.Now())
	}
	seen := 0
	// The callback may evict: no lock is held while it runs.
	r.Range(func(s *Session) bool {
		seen++
		r.Remove(s.Key(), CauseOperator)
		return seen < 5
	})
	if seen != 5 || r.Len() != 5 {
		t.Fatalf("seen %d len %d", seen, r.Len())
	}
}

func TestRegistryStats(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now})
	a := mustOpen(t, r, "a", clk.Now())
	b := mustOpen(t, r, "b", clk.Now())
	end := a.Begin()
	defer end()
	b.AddStream(func(error) {})
	b.AddStream(func(error) {})
	a.Account().Reserve(7)
	st := r.Stats()
	if st.Sessions != 2 || st.Streams != 2 || st.InFlight != 1 || st.Bytes != 7+info("a").Size()+info("b").Size() {
		t.Fatalf("stats %+v", st)
	}
}

func TestCauseString(t *testing.T) {
	want := []string{"idle", "capacity", "level", "operator", "deleted"}
	for c := range NumCauses {
		if got := Cause(c).String(); got != want[c] {
			t.Fatalf("Cause(%d) = %q, want %q", c, got, want[c])
		}
	}
	if Cause(200).String() != "unknown" {
		t.Fatal("unknown cause")
	}
}

// TestRegistryExactlyOnce races every way of ending a session: each
// session's OnEvict and each stream closer run exactly once.
func TestRegistryExactlyOnce(t *testing.T) {
	clk := newFakeClock()
	var evicts, ends sync.Map // key → *atomic.Int32
	count := func(m *sync.Map, key string) {
		v, _ := m.LoadOrStore(key, new(atomic.Int32))
		v.(*atomic.Int32).Add(1)
	}
	r := NewRegistry(RegistryConfig{Clock: clk.Now, IdleTimeout: time.Second,
		OnEvict: func(s *Session, _ Cause) { count(&evicts, s.Key()) },
		OnEnd:   func(s *Session, _ Cause, _ time.Time) { count(&ends, s.Key()) },
	})
	const n = 200
	closers := make([]atomic.Int32, n)
	for i := range n {
		s := mustOpen(t, r, fmt.Sprint(i), clk.Now())
		s.AddStream(func(error) { closers[i].Add(1) })
		s.AddStream(func(error) { closers[i].Add(1) })
	}
	clk.Advance(time.Hour)
	var wg sync.WaitGroup
	wg.Go(func() { r.Sweep(clk.Now()) })
	wg.Go(func() { r.EvictVictims(n, true, CauseLevel) })
	wg.Go(func() {
		for i := range n {
			r.Remove(fmt.Sprint(i), CauseOperator)
		}
	})
	wg.Go(func() {
		for i := n - 1; i >= 0; i-- {
			r.Remove(fmt.Sprint(i), CauseOperator)
		}
	})
	wg.Wait()
	if r.Len() != 0 {
		t.Fatalf("Len = %d", r.Len())
	}
	for i := range n {
		if c := closers[i].Load(); c != 2 {
			t.Fatalf("session %d: closers ran %d times, want 2", i, c)
		}
		v, ok := evicts.Load(fmt.Sprint(i))
		if !ok || v.(*atomic.Int32).Load() != 1 {
			t.Fatalf("session %d: OnEvict not called exactly once", i)
		}
		v, ok = ends.Load(fmt.Sprint(i))
		if !ok || v.(*atomic.Int32).Load() != 1 {
			t.Fatalf("session %d: OnEnd not called exactly once", i)
		}
	}
	st := r.Stats()
	var total uint64
	for _, e := range st.Evictions {
		total += e
	}
	if total != n {
		t.Fatalf("evictions counted %d, want %d", total, n)
	}
}

// TestRegistryConcurrentUse exercises the hot paths against evictions
// under -race.
func TestRegistryConcurrentUse(t *testing.T) {
	mem := NewBudget(1 << 20)
	r := NewRegistry(RegistryConfig{MaxSessions: 50, Memory: mem, IdleTimeout: time.Millisecond})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 300 {
				key := fmt.Sprint(w, "-", i%60)
				s, ok := r.Get(key)
				if !ok {
					var err error
					if s, err = r.Open(info(key), time.Now(), i%2 == 0); err != nil {
						continue
					}
				}
				end := s.Begin()
				remove := s.AddStream(func(error) {})
				if s.Account().Reserve(100) {
					s.Account().Release(100)
				}
				remove()
				end()
			}
		})
	}
	wg.Go(func() {
		for range 50 {
			r.Sweep(time.Now().Add(time.Second))
			r.EvictVictims(5, false, CauseLevel)
			r.Stats()
		}
	})
	wg.Wait()
	r.Range(func(s *Session) bool { r.Remove(s.Key(), CauseOperator); return true })
	if r.Len() != 0 || mem.Used() != 0 || r.Bytes() != 0 {
		t.Fatalf("len %d mem %d bytes %d", r.Len(), mem.Used(), r.Bytes())
	}
}

// TestRegistryLeak opens 10,000 sessions that each hold memory, a stream
// and a goroutine, abandons them, and checks that one Sweep expires all of
// them and gives everything back.
func TestRegistryLeak(t *testing.T) {
	const n = 10000
	baseline := runtime.NumGoroutine()
	clk := newFakeClock()
	mem := NewBudget(1 << 40)
	root := NewGroup(nil)
	defer root.Close()
	r := NewRegistry(RegistryConfig{Clock: clk.Now, Memory: mem, Tasks: root})
	var infoBytes int64
	for i := range n {
		key := fmt.Sprintf("session-%d", i)
		infoBytes += info(key).Size()
		s := mustOpen(t, r, key, clk.Now())
		if !s.Account().Reserve(512) {
			t.Fatal("reserve")
		}
		end := s.Begin()
		remove := s.AddStream(func(error) {})
		s.Group().Go(func(ctx context.Context) { <-ctx.Done() })
		remove()
		end()
	}
	if mem.Used() != n*512+infoBytes || root.Count() != n {
		t.Fatalf("before sweep: mem %d goroutines %d", mem.Used(), root.Count())
	}
	if got := r.Sweep(clk.After(DefaultIdleTimeout)); got != n {
		t.Fatalf("Sweep expired %d, want %d", got, n)
	}
	root.Wait()
	if r.Len() != 0 || mem.Used() != 0 || r.Bytes() != 0 || root.Count() != 0 {
		t.Fatalf("after sweep: len %d mem %d bytes %d goroutines %d", r.Len(), mem.Used(), r.Bytes(), root.Count())
	}
	// The goroutines have returned; give the runtime a moment to retire them.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > baseline {
		t.Fatalf("goroutines %d, baseline %d", g, baseline)
	}
}

func TestSessionHotPathAllocs(t *testing.T) {
	r := NewRegistry(RegistryConfig{})
	s := mustOpen(t, r, "a", time.Now())
	if n := testing.AllocsPerRun(100, func() { s.Begin()() }); n != 0 {
		t.Fatalf("Begin/end allocate %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { s.BeginQuiet()() }); n != 0 {
		t.Fatalf("BeginQuiet/end allocate %v times", n)
	}
	closer := func(error) {}
	if n := testing.AllocsPerRun(100, func() { s.AddStream(closer)() }); n > 1 {
		t.Fatalf("AddStream/remove allocate %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { r.Get("a") }); n != 0 {
		t.Fatalf("Get allocates %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { s.AddRelayed(100) }); n != 0 {
		t.Fatalf("AddRelayed allocates %v times", n)
	}
}

// endCall is one OnEnd call.
type endCall struct {
	key           string
	cause         Cause
	age           time.Duration
	events, bytes int64
	streamsClosed bool
	evictedYet    bool
}

// TestRegistryOnEnd: OnEnd is called once for every way a session leaves
// the registry, deletion included, after its streams are closed and
// before OnEvict, with the time it left and what it relayed.
func TestRegistryOnEnd(t *testing.T) {
	clk := newFakeClock()
	var mu sync.Mutex
	var calls []endCall
	evicted := map[string]bool{}
	closed := map[string]bool{}
	r := NewRegistry(RegistryConfig{
		Clock: clk.Now, IdleTimeout: time.Minute, MaxSessions: 4,
		OnEvict: func(s *Session, _ Cause) {
			mu.Lock()
			evicted[s.Key()] = true
			mu.Unlock()
		},
		OnEnd: func(s *Session, c Cause, at time.Time) {
			ev, b := s.Relayed()
			mu.Lock()
			calls = append(calls, endCall{s.Key(), c, at.Sub(s.Created()), ev, b, closed[s.Key()], evicted[s.Key()]})
			mu.Unlock()
		},
	})
	open := func(key string, stream bool) *Session {
		s := mustOpen(t, r, key, clk.Now())
		if stream {
			s.AddStream(func(error) {
				mu.Lock()
				closed[key] = true
				mu.Unlock()
			})
		}
		return s
	}
	del, op := open("deleted", true), open("operator", true)
	open("idle", false) // no stream, so it can expire
	capa := open("capacity", false)
	for range 3 {
		del.AddRelayed(10)
	}
	op.AddRelayed(7)

	clk.Advance(2 * time.Second)
	r.Remove("deleted", CauseDeleted)
	clk.Advance(time.Second)
	r.Remove("operator", CauseOperator)

	// The idle session expires; the capacity one, touched just before the
	// sweep, is the victim when a new session is opened at MaxSessions.
	clk.Advance(2 * time.Minute)
	capa.Touch(clk.Now())
	if n := r.Sweep(clk.Now()); n != 1 {
		t.Fatalf("Sweep expired %d sessions, want 1", n)
	}
	clk.Advance(time.Second)
	mustOpen(t, r, "new1", clk.Now())
	mustOpen(t, r, "new2", clk.Now())
	mustOpen(t, r, "new3", clk.Now())
	clk.Advance(time.Second)
	mustOpen(t, r, "new4", clk.Now()) // evicts the capacity session, idle longest

	want := []endCall{
		{key: "deleted", cause: CauseDeleted, age: 2 * time.Second, events: 3, bytes: 30, streamsClosed: true},
		{key: "operator", cause: CauseOperator, age: 3 * time.Second, events: 1, bytes: 7, streamsClosed: true},
		{key: "idle", cause: CauseIdle, age: 3*time.Second + 2*time.Minute},
		{key: "capacity", cause: CauseCapacity, age: 5*time.Second + 2*time.Minute},
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != len(want) {
		t.Fatalf("OnEnd calls %+v, want %+v", calls, want)
	}
	for i, w := range want {
		if calls[i] != w {
			t.Errorf("OnEnd call %d = %+v, want %+v", i, calls[i], w)
		}
	}
	if !evicted["operator"] || !evicted["idle"] || !evicted["capacity"] || evicted["deleted"] {
		t.Errorf("OnEvict calls %v", evicted)
	}
}

// clientEntries returns the number of entries in r's client index.
func clientEntries(r *Registry) (n int) {
	for i := range r.clients {
		cs := &r.clients[i]
		cs.mu.Lock()
		n += len(cs.clients)
		cs.mu.Unlock()
	}
	return n
}

func openClient(t testing.TB, r *Registry, key, client string, now time.Time) *Session {
	t.Helper()
	in := info(key)
	in.ClientKey = client
	s, err := r.Open(in, now, false)
	if err != nil {
		t.Fatalf("Open(%q for %q): %v", key, client, err)
	}
	return s
}

// TestSessionBeginQuiet: quiet requests keep a session while in flight
// but do not restart its idle clock, so a session that sends nothing else
// expires and is the preferred victim.
func TestSessionBeginQuiet(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now, IdleTimeout: time.Minute, MaxSessions: 4})
	t0 := clk.Now()
	quiet := mustOpen(t, r, "quiet", t0)
	active := mustOpen(t, r, "active", t0)
	streaming := mustOpen(t, r, "streaming", t0)
	streaming.AddStream(func(error) {})

	// Ten minutes of traffic, every 20 seconds: the active session sends
	// requests, the others only notifications and responses.
	var endQuiet func()
	for range 30 {
		clk.Advance(20 * time.Second)
		active.Begin()()
		streaming.BeginQuiet()()
		if endQuiet != nil {
			endQuiet()
		}
		endQuiet = quiet.BeginQuiet()
		if quiet.InFlight() != 1 || !quiet.LastActive().Equal(t0) {
			t.Fatalf("BeginQuiet: inflight %d, last active %v, want 1, %v", quiet.InFlight(), quiet.LastActive(), t0)
		}
	}
	// In flight, a quietly used session is neither idle nor a victim.
	if n := r.Sweep(clk.Now()); n != 0 {
		t.Fatalf("Sweep expired %d sessions with a quiet request in flight or a stream", n)
	}
	if r.EvictVictims(1, false, CauseLevel) != 1 {
		t.Fatal("EvictVictims found no victim")
	}
	if _, ok := r.Get("streaming"); ok {
		t.Fatal("the victim must be the streaming session (idle longest among those not in flight)")
	}
	endQuiet()
	if quiet.InFlight() != 0 || !quiet.LastActive().Equal(t0) {
		t.Fatal("the end of a quiet request must not touch the session")
	}
	// The quiet session is now the idlest: it goes first at capacity and
	// expires at the next Sweep.
	if got, want := r.Score(quiet, clk.Now()), r.Score(active, clk.Now()); got <= want {
		t.Fatalf("Score(quiet) = %v, not above Score(active) = %v", got, want)
	}
	mustOpen(t, r, "x", clk.Now())
	mustOpen(t, r, "y", clk.Now())
	mustOpen(t, r, "z", clk.Now()) // at MaxSessions: evicts a victim
	if _, ok := r.Get("quiet"); ok || !r.WasEvicted("quiet") {
		t.Fatal("the quietly used session must be the capacity victim")
	}
	if _, ok := r.Get("active"); !ok {
		t.Fatal("the active session was evicted")
	}

	// Sweep: a session with only quiet traffic expires, one with an open
	// stream does not.
	r2 := NewRegistry(RegistryConfig{Clock: clk.Now, IdleTimeout: time.Minute})
	t1 := clk.Now()
	q := mustOpen(t, r2, "q", t1)
	st := mustOpen(t, r2, "st", t1)
	st.AddStream(func(error) {})
	for range 6 {
		clk.Advance(15 * time.Second)
		q.BeginQuiet()()
		st.BeginQuiet()()
	}
	if n := r2.Sweep(clk.Now()); n != 1 || !q.Evicted() || st.Evicted() {
		t.Fatalf("Sweep expired %d; quiet evicted %v, streaming evicted %v", n, q.Evicted(), st.Evicted())
	}
	// Protective eviction may take a session with a quiet request in flight.
	end := st.BeginQuiet()
	if r2.EvictVictims(1, false, CauseLevel) != 0 || r2.EvictVictims(1, true, CauseLevel) != 1 {
		t.Fatal("a quiet request in flight must protect a session except in protective mode")
	}
	end()
}

// TestRegistryClientCap: a client at its cap evicts its own best victim,
// never another client's, and is refused when all of its sessions are in
// flight.
func TestRegistryClientCap(t *testing.T) {
	clk := newFakeClock()
	var log evictLog
	r := NewRegistry(RegistryConfig{Clock: clk.Now, ClientMaxSessions: 3, OnEvict: log.record})
	if r.ClientMaxSessions() != 3 {
		t.Fatalf("ClientMaxSessions = %d", r.ClientMaxSessions())
	}
	now := clk.Now()
	// The other client's sessions are idler than any of the flooder's.
	openClient(t, r, "g1", "good", now.Add(-2*time.Hour))
	openClient(t, r, "g2", "good", now.Add(-time.Hour))
	for i := range 3 {
		openClient(t, r, fmt.Sprint("e", i), "evil", now.Add(-time.Duration(i)*time.Minute))
	}
	if r.ClientSessions("evil") != 3 || r.ClientSessions("good") != 2 {
		t.Fatalf("client sessions evil %d good %d", r.ClientSessions("evil"), r.ClientSessions("good"))
	}
	openClient(t, r, "e3", "evil", now)
	if _, ok := r.Get("e2"); ok {
		t.Fatal("the flooder's idlest session must make room")
	}
	if got := log.get("e2"); len(got) != 1 || got[0] != CauseCapacity {
		t.Fatalf("OnEvict(e2) %v", got)
	}
	// A flood of Opens only ever evicts the flooder's own sessions.
	for i := 4; i < 200; i++ {
		clk.Advance(time.Second)
		openClient(t, r, fmt.Sprint("e", i), "evil", clk.Now())
	}
	if r.ClientSessions("evil") != 3 || r.ClientSessions("good") != 2 || r.Len() != 5 {
		t.Fatalf("after the flood: evil %d good %d len %d", r.ClientSessions("evil"), r.ClientSessions("good"), r.Len())
	}
	if len(log.get("g1")) != 0 || len(log.get("g2")) != 0 {
		t.Fatal("another client's session was evicted")
	}
	for i := 197; i < 200; i++ {
		if _, ok := r.Get(fmt.Sprint("e", i)); !ok {
			t.Fatalf("e%d, among the newest, was evicted", i)
		}
	}
	if st := r.Stats(); st.Clients != 2 || st.Evictions[CauseCapacity] != 197 {
		t.Fatalf("stats %+v", st)
	}

	// With every session of the client in flight, nothing may be evicted.
	var ends []func()
	for i := 197; i < 200; i++ {
		s, _ := r.Get(fmt.Sprint("e", i))
		ends = append(ends, s.Begin())
	}
	in := info("e200")
	in.ClientKey = "evil"
	if _, err := r.Open(in, clk.Now(), false); !errors.Is(err, ErrClientFull) {
		t.Fatalf("Open with all of the client's sessions in flight: %v, want ErrClientFull", err)
	}
	if r.Len() != 5 || r.ClientSessions("evil") != 3 || r.Bytes() != sumInfo(r) {
		t.Fatalf("a refused Open changed the registry: len %d evil %d", r.Len(), r.ClientSessions("evil"))
	}
	// Protective mode may evict one in flight, still the client's own.
	if _, err := r.Open(in, clk.Now(), true); err != nil {
		t.Fatalf("protective Open: %v", err)
	}
	if r.ClientSessions("evil") != 3 || r.ClientSessions("good") != 2 {
		t.Fatalf("protective Open: evil %d good %d", r.ClientSessions("evil"), r.ClientSessions("good"))
	}
	for _, end := range ends {
		end()
	}

	// Sessions without a client key are not counted nor capped.
	for i := range 5 {
		mustOpen(t, r, fmt.Sprint("anon", i), clk.Now())
	}
	if r.ClientSessions("") != 0 || r.Len() != 10 {
		t.Fatalf("anonymous sessions: counted %d, len %d", r.ClientSessions(""), r.Len())
	}
	// No cap: the client may grow.
	r.SetClientMaxSessions(0)
	openClient(t, r, "e201", "evil", clk.Now())
	if r.ClientSessions("evil") != 4 || r.ClientMaxSessions() != 0 {
		t.Fatalf("without a cap: evil %d", r.ClientSessions("evil"))
	}
	// Under a lowered cap the client's next Open evicts all its excess.
	r.SetClientMaxSessions(2)
	if r.ClientSessions("evil") != 4 {
		t.Fatal("lowering the cap must not evict at once")
	}
	clk.Advance(time.Second)
	openClient(t, r, "e202", "evil", clk.Now())
	if _, ok := r.Get("e202"); !ok || r.ClientSessions("evil") != 2 || r.ClientSessions("good") != 2 {
		t.Fatalf("over a lowered cap: evil %d good %d", r.ClientSessions("evil"), r.ClientSessions("good"))
	}
	// An entry lives only while its client has a live session.
	if clientEntries(r) != 2 {
		t.Fatalf("client index holds %d entries, want 2", clientEntries(r))
	}
	r.Range(func(s *Session) bool {
		if s.Info().ClientKey == "evil" {
			r.Remove(s.Key(), CauseDeleted)
		}
		return true
	})
	if r.ClientSessions("evil") != 0 || clientEntries(r) != 1 {
		t.Fatalf("after the client's sessions ended: evil %d, %d entries", r.ClientSessions("evil"), clientEntries(r))
	}
	r.Remove("g1", CauseOperator)
	r.Remove("g2", CauseIdle)
	if clientEntries(r) != 0 || r.Stats().Clients != 0 {
		t.Fatalf("client index holds %d entries with no client session live", clientEntries(r))
	}
}

// sumInfo returns the info bytes of r's live sessions.
func sumInfo(r *Registry) (n int64) {
	r.Range(func(s *Session) bool { n += s.Info().Size(); return true })
	return n
}

// TestRegistryClientAndGlobalCap: a client at its own cap makes room
// from its own sessions also when the registry is full; another client at
// MaxSessions takes the victim with the highest score of all.
func TestRegistryClientAndGlobalCap(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now, MaxSessions: 4, ClientMaxSessions: 2})
	now := clk.Now()
	openClient(t, r, "g1", "good", now.Add(-2*time.Hour))
	openClient(t, r, "g2", "good", now.Add(-time.Hour))
	openClient(t, r, "e1", "evil", now.Add(-time.Minute))
	openClient(t, r, "e2", "evil", now)
	openClient(t, r, "e3", "evil", now)
	if _, ok := r.Get("e1"); ok || r.ClientSessions("good") != 2 || r.Len() != 4 {
		t.Fatalf("the full client must evict its own session: good %d len %d", r.ClientSessions("good"), r.Len())
	}
	openClient(t, r, "t1", "third", now)
	if _, ok := r.Get("g1"); ok || r.Len() != 4 {
		t.Fatal("at MaxSessions the victim is the highest score of all")
	}
	// Nothing evictable anywhere: ErrFull, and the client's place is
	// given back.
	var ends []func()
	r.Range(func(s *Session) bool { ends = append(ends, s.Begin()); return true })
	in := info("t2")
	in.ClientKey = "third"
	if _, err := r.Open(in, now, false); !errors.Is(err, ErrFull) {
		t.Fatalf("Open at MaxSessions with every session in flight: %v, want ErrFull", err)
	}
	cs := r.clientShard("third")
	cs.mu.Lock()
	opening := cs.clients["third"].opening
	cs.mu.Unlock()
	if opening != 0 || r.ClientSessions("third") != 1 {
		t.Fatalf("a refused Open left %d places taken", opening)
	}
	for _, end := range ends {
		end()
	}
}

// TestRegistryClientConcurrent floods the registry from one client on
// several goroutines while another client's idle sessions must survive.
func TestRegistryClientConcurrent(t *testing.T) {
	const limit = 5
	var goodEvicted atomic.Int32
	r := NewRegistry(RegistryConfig{ClientMaxSessions: limit, OnEvict: func(s *Session, _ Cause) {
		if s.Info().ClientKey == "good" {
			goodEvicted.Add(1)
		}
	}})
	old := time.Now().Add(-time.Hour)
	for i := range 3 {
		openClient(t, r, fmt.Sprint("g", i), "good", old)
	}
	var over atomic.Int32
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if r.ClientSessions("evil") > limit {
				over.Add(1)
			}
		}
	})
	var flood sync.WaitGroup
	for w := range 4 {
		flood.Go(func() {
			for i := range 300 {
				in := info(fmt.Sprint("e", w, "-", i))
				in.ClientKey = "evil"
				s, err := r.Open(in, time.Now(), false)
				if err != nil {
					if !errors.Is(err, ErrClientFull) {
						t.Errorf("Open: %v", err)
					}
					continue
				}
				if i%3 == 0 {
					s.Begin()()
				} else {
					s.BeginQuiet()()
				}
			}
		})
	}
	flood.Wait()
	close(done)
	wg.Wait()
	if over.Load() != 0 {
		t.Fatalf("the client held more than %d sessions %d times", limit, over.Load())
	}
	if goodEvicted.Load() != 0 || r.ClientSessions("good") != 3 {
		t.Fatalf("another client lost %d sessions", goodEvicted.Load())
	}
	evil := 0
	r.Range(func(s *Session) bool {
		if s.Info().ClientKey == "evil" {
			evil++
		}
		return true
	})
	if evil != r.ClientSessions("evil") || evil > limit || r.Len() != evil+3 {
		t.Fatalf("index says %d, registry holds %d of the client's sessions (len %d)", r.ClientSessions("evil"), evil, r.Len())
	}
	r.Range(func(s *Session) bool { r.Remove(s.Key(), CauseOperator); return true })
	if clientEntries(r) != 0 || r.Bytes() != 0 {
		t.Fatalf("after evicting all: %d client entries, %d bytes", clientEntries(r), r.Bytes())
	}
}

// TestRegistryInfoCharge: Open charges the info's bytes to the session's
// account and refuses info that does not fit, changing nothing.
func TestRegistryInfoCharge(t *testing.T) {
	clk := newFakeClock()
	mem := NewBudget(0)
	r := NewRegistry(RegistryConfig{Clock: clk.Now, Memory: mem, SessionMemory: 100, MaxSessions: 2})
	in := SessionInfo{Key: "k", Upstream: "10.0.0.1:3000", Version: "2025-11-25", UpstreamID: "abc",
		Endpoint: "http://10.0.0.1:3000/mcp", Host: "10.0.0.1:3000", ClientKey: "192.0.2.1"}
	want := int64(len("k") + len("10.0.0.1:3000") + len("2025-11-25") + len("abc") +
		len("http://10.0.0.1:3000/mcp") + len("10.0.0.1:3000") + len("192.0.2.1"))
	if in.Size() != want {
		t.Fatalf("Size = %d, want %d", in.Size(), want)
	}
	s, err := r.Open(in, clk.Now(), false)
	if err != nil {
		t.Fatal(err)
	}
	if s.Account().Used() != want || mem.Used() != want || r.Bytes() != want {
		t.Fatalf("charged: account %d budget %d registry %d, want %d", s.Account().Used(), mem.Used(), r.Bytes(), want)
	}
	if s.Account().Reserve(100 - want + 1) {
		t.Fatal("the info's bytes must count against the quota")
	}

	// Too large for the quota: refused before anything is evicted, even
	// at MaxSessions.
	clk.Advance(time.Hour)
	mustOpen(t, r, "other", clk.Now())
	big := SessionInfo{Key: "big", Endpoint: strings.Repeat("x", 100)}
	if _, err := r.Open(big, clk.Now(), true); !errors.Is(err, ErrInfoTooLarge) {
		t.Fatalf("Open with %d bytes of info: %v, want ErrInfoTooLarge", big.Size(), err)
	}
	if _, ok := r.Get("big"); ok || r.Len() != 2 || mem.Used() != r.Bytes() || s.Evicted() {
		t.Fatalf("a refused Open changed the registry: len %d", r.Len())
	}
	// Exactly the quota fits.
	fit := SessionInfo{Key: "fit", Endpoint: strings.Repeat("x", 97)}
	f, err := r.Open(fit, clk.Now(), false)
	if err != nil || f.Account().Used() != 100 || f.Account().Reserve(1) {
		t.Fatalf("Open with info of exactly the quota: %v", err)
	}
	if !s.Evicted() {
		t.Fatal("the idlest session must have made room")
	}
	r.Range(func(s *Session) bool { r.Remove(s.Key(), CauseOperator); return true })
	if mem.Used() != 0 || r.Bytes() != 0 {
		t.Fatalf("info bytes not given back: budget %d registry %d", mem.Used(), r.Bytes())
	}

	// The parent budget too: its refusal changes nothing.
	small := NewBudget(40)
	r2 := NewRegistry(RegistryConfig{Clock: clk.Now, Memory: small, ClientMaxSessions: 1})
	if _, err := r2.Open(in, clk.Now(), false); !errors.Is(err, ErrNoMemory) {
		t.Fatalf("Open over the parent budget: %v, want ErrNoMemory", err)
	}
	if small.Used() != 0 || r2.Len() != 0 || r2.Bytes() != 0 || clientEntries(r2) != 0 {
		t.Fatalf("a refused Open held %d bytes, %d sessions, %d client entries", small.Used(), r2.Len(), clientEntries(r2))
	}
	mustOpen(t, r2, "a", clk.Now())
	if small.Used() != info("a").Size() {
		t.Fatalf("budget holds %d", small.Used())
	}
}

// TestRegistryNoAdoptionWindow hammers evictions against requests that
// look a key up and, on a miss, ask whether it was evicted (the way a
// proxy decides between 404 and adopting the session): for a key that
// was evicted the answer is never "missing and not evicted".
func TestRegistryNoAdoptionWindow(t *testing.T) {
	for _, mode := range []string{"remove", "sweep", "victims", "client"} {
		t.Run(mode, func(t *testing.T) {
			const n = 2000
			clk := newFakeClock()
			r := NewRegistry(RegistryConfig{Clock: clk.Now, IdleTimeout: time.Second, ClientMaxSessions: n,
				// Slow callbacks widen any gap between a session leaving
				// the map and its tombstone.
				OnEnd:   func(*Session, Cause, time.Time) { runtime.Gosched() },
				OnEvict: func(*Session, Cause) { runtime.Gosched() },
			})
			keys := make([]string, n)
			for i := range keys {
				keys[i] = fmt.Sprint("k", i)
				openClient(t, r, keys[i], "c", clk.Now().Add(-time.Duration(n-i)*time.Second))
			}
			clk.Advance(time.Hour)
			var cur atomic.Int64 // the key being evicted, in remove mode
			var done atomic.Bool
			var misses atomic.Int64
			var bad atomic.Pointer[string]
			var wg sync.WaitGroup
			for w := range 2 {
				wg.Go(func() {
					j := w
					for !done.Load() {
						i := int(cur.Load())
						if mode != "remove" {
							i = j % n
							j += 7
						}
						k := keys[i]
						if _, ok := r.Get(k); !ok {
							misses.Add(1)
							if !r.WasEvicted(k) {
								bad.CompareAndSwap(nil, &k)
							}
						}
					}
				})
			}
			switch mode {
			case "remove":
				for i, k := range keys {
					cur.Store(int64(i))
					r.Remove(k, CauseIdle)
				}
			case "sweep":
				r.Sweep(clk.Now())
			case "victims":
				r.EvictVictims(n, false, CauseIdle)
			case "client":
				// Each Open over the client's cap evicts its idlest.
				r.SetClientMaxSessions(1)
				for i := range n {
					openClient(t, r, fmt.Sprint("new", i), "c", clk.Now())
				}
			}
			done.Store(true)
			wg.Wait()
			if k := bad.Load(); k != nil {
				t.Fatalf("Get missed %q and WasEvicted reported false", *k)
			}
			for _, k := range keys {
				if _, ok := r.Get(k); ok || !r.WasEvicted(k) {
					t.Fatalf("%q: live %v, evicted %v after the evictions", k, ok, r.WasEvicted(k))
				}
			}
			t.Logf("%d misses checked", misses.Load())
		})
	}
}

func BenchmarkSessionBeginEnd(b *testing.B) {
	r := NewRegistry(RegistryConfig{})
	s := mustOpen(b, r, "a", time.Now())
	b.ReportAllocs()
	for b.Loop() {
		end := s.Begin()
		end()
	}
}

func BenchmarkSessionAddStream(b *testing.B) {
	r := NewRegistry(RegistryConfig{})
	s := mustOpen(b, r, "a", time.Now())
	closer := func(error) {}
	b.ReportAllocs()
	for b.Loop() {
		s.AddStream(closer)()
	}
}

func BenchmarkRegistryGet(b *testing.B) {
	r := NewRegistry(RegistryConfig{})
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("session-%016x", i*7919)
		mustOpen(b, r, keys[i], time.Now())
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok := r.Get(keys[i&1023]); !ok {
				b.Fatal("missing")
			}
			i++
		}
	})
}

func BenchmarkRegistryEvictVictims(b *testing.B) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now})
	for i := range 10000 {
		mustOpen(b, r, fmt.Sprint(i), clk.Now().Add(-time.Duration(i)*time.Millisecond))
	}
	b.ReportAllocs()
	for b.Loop() {
		// Score every session once and evict the idlest; reopen it untimed.
		r.EvictVictims(1, false, CauseLevel)
		b.StopTimer()
		for i := range 10000 {
			k := fmt.Sprint(i)
			if _, ok := r.Get(k); !ok {
				mustOpen(b, r, k, clk.Now())
			}
		}
		b.StartTimer()
	}
}

func TestRegistryEvictClientVictim(t *testing.T) {
	r := NewRegistry(RegistryConfig{})
	now := time.Now()
	open := func(key, client string, at time.Time) *Session {
		t.Helper()
		s, err := r.Open(SessionInfo{Key: key, ClientKey: client}, at, false)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	open("a1", "a", now.Add(-time.Hour))
	busy := open("a2", "a", now.Add(-2*time.Hour))
	end := busy.Begin()
	open("b1", "b", now.Add(-3*time.Hour))
	if !r.EvictClientVictim("a", false) {
		t.Fatal("no victim for a")
	}
	if _, ok := r.Get("a1"); ok {
		t.Error("a1, a's only idle session, was not the victim")
	}
	if _, ok := r.Get("b1"); !ok {
		t.Error("another client's session was evicted")
	}
	if r.EvictClientVictim("a", false) {
		t.Error("a session in flight was evicted")
	}
	if !r.EvictClientVictim("a", true) {
		t.Error("protective eviction found no victim")
	}
	end()
	if r.EvictClientVictim("nobody", true) || r.EvictClientVictim("", true) {
		t.Error("victim for an unknown client")
	}
}
