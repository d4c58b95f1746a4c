package admission

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// hang bounds every wait in these tests; it only prevents a hang and is
// never the subject of an assertion.
const hang = 10 * time.Second

// waitQueued polls until l has n queued waiters, each in the queue.
func waitQueued(t *testing.T, l *Limiter, n int) {
	t.Helper()
	deadline := time.Now().Add(hang)
	// Queued counts a waiter as it starts to join; it is in the queue (and
	// has read the clock) once count says so too.
	inQueue := func() int {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.count
	}
	for l.Queued() != n || inQueue() != n {
		if time.Now().After(deadline) {
			t.Fatalf("Queued() = %d, want %d", l.Queued(), n)
		}
		runtime.Gosched()
		time.Sleep(50 * time.Microsecond)
	}
}

type result struct {
	id  int
	err error
}

// startWaiter calls Acquire in a goroutine and reports its result on out.
func startWaiter(ctx context.Context, l *Limiter, p Priority, id int, out chan<- result) {
	go func() {
		_, err := l.Acquire(ctx, p)
		out <- result{id, err}
	}()
}

// releaseInOrder releases one slot per wanted waiter, checking that the
// waiters are served in that order, then releases the last slot and
// checks that the limiter is empty.
func releaseInOrder(t *testing.T, l *Limiter, out <-chan result, want ...int) {
	t.Helper()
	for _, id := range want {
		l.Release()
		if r := recv(t, out); r.err != nil || r.id != id {
			t.Fatalf("got waiter %d (%v), want %d", r.id, r.err, id)
		}
	}
	l.Release()
	if l.InFlight() != 0 || l.Queued() != 0 {
		t.Fatalf("InFlight() = %d, Queued() = %d", l.InFlight(), l.Queued())
	}
}

func recv(t *testing.T, out <-chan result) result {
	t.Helper()
	select {
	case r := <-out:
		return r
	case <-time.After(hang):
		t.Fatal("no waiter finished")
		return result{}
	}
}

func TestLimiterTryAcquire(t *testing.T) {
	l := NewLimiter(2, 0, 0)
	if !l.TryAcquire() || !l.TryAcquire() {
		t.Fatal("TryAcquire refused below the limit")
	}
	if l.TryAcquire() {
		t.Fatal("TryAcquire admitted above the limit")
	}
	if l.InFlight() != 2 {
		t.Fatalf("InFlight() = %d, want 2", l.InFlight())
	}
	l.Release()
	if !l.TryAcquire() {
		t.Fatal("TryAcquire refused after Release")
	}
	l.Release()
	l.Release()
	if l.InFlight() != 0 || l.Limit() != 2 || l.QueueSize() != 0 {
		t.Fatalf("InFlight() = %d, Limit() = %d, QueueSize() = %d", l.InFlight(), l.Limit(), l.QueueSize())
	}
}

func TestLimiterUnlimited(t *testing.T) {
	for _, limit := range []int{0, -1} {
		l := NewLimiter(limit, 4, time.Second)
		for range 1000 {
			if !l.TryAcquire() {
				t.Fatalf("limit %d: TryAcquire refused", limit)
			}
		}
		if _, err := l.Acquire(context.Background(), PriorityHeavyNew); err != nil {
			t.Fatalf("limit %d: Acquire: %v", limit, err)
		}
		if l.InFlight() != 1001 {
			t.Fatalf("limit %d: InFlight() = %d, want 1001", limit, l.InFlight())
		}
		for range 1001 {
			l.Release()
		}
	}
}

func TestLimiterReleasePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("Release without acquire did not panic")
		}
	}()
	NewLimiter(1, 0, 0).Release()
}

func TestLimiterRefuseWithoutQueue(t *testing.T) {
	l := NewLimiter(1, 0, time.Second)
	if !l.TryAcquire() {
		t.Fatal("TryAcquire refused")
	}
	waited, err := l.Acquire(context.Background(), PriorityCheapSession)
	if !errors.Is(err, ErrQueueFull) || waited != 0 {
		t.Fatalf("Acquire = %v, %v; want 0, ErrQueueFull", waited, err)
	}
	l.Release()
}

func TestLimiterPriorityOrder(t *testing.T) {
	l := NewLimiter(1, 16, hang)
	if !l.TryAcquire() {
		t.Fatal("TryAcquire refused")
	}
	arrivals := []Priority{
		PriorityHeavyNew, PriorityCheapSession, PriorityListNew,
		PriorityHeavySession, PriorityCheapNew, PriorityListSession,
	}
	out := make(chan result, len(arrivals))
	for i, p := range arrivals {
		startWaiter(context.Background(), l, p, int(p), out)
		waitQueued(t, l, i+1)
	}
	want := []Priority{
		PriorityCheapSession, PriorityListSession, PriorityHeavySession,
		PriorityCheapNew, PriorityListNew, PriorityHeavyNew,
	}
	for _, w := range want {
		l.Release() // hand the slot to the best waiter
		r := recv(t, out)
		if r.err != nil || Priority(r.id) != w {
			t.Fatalf("got %v (%v), want %v", Priority(r.id), r.err, w)
		}
	}
	l.Release()
	if l.InFlight() != 0 || l.Queued() != 0 {
		t.Fatalf("InFlight() = %d, Queued() = %d", l.InFlight(), l.Queued())
	}
}

// TestLimiterAdaptiveLIFO checks the order within a priority: oldest
// first while the queue drains, newest first once the oldest waiter has
// waited half the queue timeout (a standing queue).
func TestLimiterAdaptiveLIFO(t *testing.T) {
	l := NewLimiter(1, 16, time.Hour)
	if !l.TryAcquire() {
		t.Fatal("TryAcquire refused")
	}
	out := make(chan result, 8)
	for i := range 6 {
		startWaiter(context.Background(), l, PriorityListSession, i, out)
		waitQueued(t, l, i+1)
	}
	for want := range 2 {
		l.Release()
		if r := recv(t, out); r.err != nil || r.id != want {
			t.Fatalf("draining queue: got waiter %d (%v), want %d", r.id, r.err, want)
		}
	}
	// Age every waiter past half the queue timeout.
	l.mu.Lock()
	for w := l.lists[PriorityListSession].Front(); w != nil; w = w.Next() {
		w.Value.since -= time.Hour
	}
	l.mu.Unlock()
	for want := 5; want >= 2; want-- {
		l.Release()
		if r := recv(t, out); r.err != nil || r.id != want {
			t.Fatalf("standing queue: got waiter %d (%v), want %d", r.id, r.err, want)
		}
	}
	l.Release()
}

func TestLimiterEviction(t *testing.T) {
	l := NewLimiter(1, 2, hang)
	if !l.TryAcquire() {
		t.Fatal("TryAcquire refused")
	}
	out := make(chan result, 4)
	startWaiter(context.Background(), l, PriorityHeavyNew, 0, out)
	waitQueued(t, l, 1)
	startWaiter(context.Background(), l, PriorityHeavyNew, 1, out)
	waitQueued(t, l, 2)

	// Equal priority: the newcomer is refused, nobody is evicted.
	if _, err := l.Acquire(context.Background(), PriorityHeavyNew); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("equal priority on a full queue: %v, want ErrQueueFull", err)
	}

	// Higher priority: the oldest lowest-priority waiter is evicted.
	startWaiter(context.Background(), l, PriorityCheapSession, 2, out)
	if r := recv(t, out); r.id != 0 || !errors.Is(r.err, ErrQueueFull) {
		t.Fatalf("evicted %d (%v), want waiter 0 with ErrQueueFull", r.id, r.err)
	}
	waitQueued(t, l, 2)

	releaseInOrder(t, l, out, 2, 1)
}

func TestLimiterQueueTimeout(t *testing.T) {
	l := NewLimiter(1, 1, time.Millisecond)
	if !l.TryAcquire() {
		t.Fatal("TryAcquire refused")
	}
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	waited, err := l.Acquire(ctx, PriorityHeavyNew)
	if !errors.Is(err, ErrQueueTimeout) {
		t.Fatalf("Acquire: %v, want ErrQueueTimeout", err)
	}
	if waited <= 0 {
		t.Fatalf("waited = %v, want > 0", waited)
	}
	if l.InFlight() != 1 || l.Queued() != 0 {
		t.Fatalf("InFlight() = %d, Queued() = %d", l.InFlight(), l.Queued())
	}
	// The pooled waiter and its timer are reused cleanly.
	if _, err := l.Acquire(ctx, PriorityHeavyNew); !errors.Is(err, ErrQueueTimeout) {
		t.Fatalf("second Acquire: %v, want ErrQueueTimeout", err)
	}
	l.Release()
}

func TestLimiterContext(t *testing.T) {
	l := NewLimiter(1, 4, hang)
	if !l.TryAcquire() {
		t.Fatal("TryAcquire refused")
	}

	// Already done: refused without queueing.
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Acquire(done, PriorityHeavyNew); !errors.Is(err, context.Canceled) {
		t.Fatalf("done ctx: %v, want context.Canceled", err)
	}

	// Cancelled while waiting.
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan result, 1)
	startWaiter(ctx, l, PriorityHeavyNew, 0, out)
	waitQueued(t, l, 1)
	cancel()
	if r := recv(t, out); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled wait: %v, want context.Canceled", r.err)
	}

	// A ctx deadline sooner than the queue timeout wins.
	ctx, cancel = context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	if _, err := l.Acquire(ctx, PriorityHeavyNew); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ctx deadline: %v, want context.DeadlineExceeded", err)
	}

	if l.InFlight() != 1 || l.Queued() != 0 {
		t.Fatalf("InFlight() = %d, Queued() = %d", l.InFlight(), l.Queued())
	}
	l.Release()
}

func TestLimiterNoQueueTimeout(t *testing.T) {
	l := NewLimiter(1, 1, 0)
	if !l.TryAcquire() {
		t.Fatal("TryAcquire refused")
	}
	out := make(chan result, 1)
	startWaiter(context.Background(), l, PriorityHeavyNew, 0, out)
	waitQueued(t, l, 1)
	l.Release()
	if r := recv(t, out); r.err != nil {
		t.Fatalf("Acquire: %v", r.err)
	}
	l.Release()
}

func TestLimiterSetLimit(t *testing.T) {
	l := NewLimiter(1, 8, hang)
	if !l.TryAcquire() {
		t.Fatal("TryAcquire refused")
	}
	out := make(chan result, 3)
	for i := range 3 {
		startWaiter(context.Background(), l, PriorityListNew, i, out)
		waitQueued(t, l, i+1)
	}
	l.SetLimit(4) // wakes all three
	for range 3 {
		if r := recv(t, out); r.err != nil {
			t.Fatalf("waiter %d: %v", r.id, r.err)
		}
	}
	if l.InFlight() != 4 || l.Queued() != 0 || l.Limit() != 4 {
		t.Fatalf("InFlight() = %d, Queued() = %d, Limit() = %d", l.InFlight(), l.Queued(), l.Limit())
	}

	// Lowering takes effect as requests complete.
	l.SetLimit(2)
	if l.TryAcquire() {
		t.Fatal("TryAcquire admitted above a lowered limit")
	}
	l.Release()
	l.Release()
	if l.TryAcquire() {
		t.Fatal("TryAcquire admitted at the lowered limit")
	}
	l.Release()
	if !l.TryAcquire() {
		t.Fatal("TryAcquire refused below the lowered limit")
	}
	l.Release()
	l.Release()

	// Raising to unlimited wakes waiters too.
	l.SetLimit(1)
	if !l.TryAcquire() {
		t.Fatal("TryAcquire refused")
	}
	startWaiter(context.Background(), l, PriorityHeavyNew, 0, out)
	waitQueued(t, l, 1)
	l.SetLimit(0)
	if r := recv(t, out); r.err != nil {
		t.Fatalf("unlimited: %v", r.err)
	}
	l.Release()
	l.Release()
	if l.InFlight() != 0 {
		t.Fatalf("InFlight() = %d", l.InFlight())
	}
}

// TestLimiterGrantRacesCancel hands a slot to a waiter while its context is
// cancelled: the slot must end up either with the waiter (nil) or back in
// the limiter.
func TestLimiterGrantRacesCancel(t *testing.T) {
	l := NewLimiter(1, 1, hang)
	for i := range 500 {
		if !l.TryAcquire() {
			t.Fatalf("iteration %d: TryAcquire refused", i)
		}
		ctx, cancel := context.WithCancel(context.Background())
		out := make(chan result, 1)
		startWaiter(ctx, l, PriorityHeavyNew, 0, out)
		waitQueued(t, l, 1)
		var wg sync.WaitGroup
		wg.Go(cancel)
		wg.Go(l.Release)
		wg.Wait()
		r := recv(t, out)
		switch {
		case r.err == nil:
			l.Release()
		case errors.Is(r.err, context.Canceled):
		default:
			t.Fatalf("iteration %d: %v", i, r.err)
		}
		if l.InFlight() != 0 || l.Queued() != 0 {
			t.Fatalf("iteration %d: InFlight() = %d, Queued() = %d", i, l.InFlight(), l.Queued())
		}
	}
}

// TestLimiterGrantRacesTimeout is the same race against the queue timeout.
func TestLimiterGrantRacesTimeout(t *testing.T) {
	l := NewLimiter(1, 1, 20*time.Microsecond)
	for i := range 500 {
		if !l.TryAcquire() {
			t.Fatalf("iteration %d: TryAcquire refused", i)
		}
		out := make(chan result, 1)
		startWaiter(context.Background(), l, PriorityHeavyNew, 0, out)
		time.Sleep(time.Duration(rand.IntN(40)) * time.Microsecond)
		l.Release()
		r := recv(t, out)
		switch {
		case r.err == nil:
			l.Release()
		case errors.Is(r.err, ErrQueueTimeout):
		default:
			t.Fatalf("iteration %d: %v", i, r.err)
		}
		if l.InFlight() != 0 || l.Queued() != 0 {
			t.Fatalf("iteration %d: InFlight() = %d, Queued() = %d", i, l.InFlight(), l.Queued())
		}
	}
}

func TestLimiterStress(t *testing.T) {
	const goroutines, iterations = 8, 2000
	for _, mode := range []string{"fixed", "changing", "standing"} {
		changing := mode == "changing"
		t.Run(mode, func(t *testing.T) {
			const limit = 3
			l := NewLimiter(limit, 4, 200*time.Microsecond)
			if mode == "standing" {
				// The standing state turns on and off within the run.
				l.target, l.interval = 20*time.Microsecond, 100*time.Microsecond
			}
			var holders, maxHolders atomic.Int64
			var granted, refused atomic.Int64
			stop := make(chan struct{})
			var setter sync.WaitGroup
			if changing {
				setter.Go(func() {
					for {
						select {
						case <-stop:
							l.SetLimit(limit)
							return
						default:
						}
						l.SetLimit(rand.IntN(6)) // includes 0: unlimited
						time.Sleep(20 * time.Microsecond)
					}
				})
			}
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(g), 1))
					for range iterations {
						var ok bool
						switch r.IntN(4) {
						case 0:
							ok = l.TryAcquire()
						case 1:
							ctx, cancel := context.WithCancel(context.Background())
							if r.IntN(2) == 0 {
								time.AfterFunc(time.Duration(r.IntN(100))*time.Microsecond, cancel)
							} else {
								cancel()
							}
							_, err := l.Acquire(ctx, Priority(r.IntN(NumPriorities)))
							cancel()
							ok = err == nil
						default:
							_, err := l.Acquire(context.Background(), Priority(r.IntN(NumPriorities)))
							ok = err == nil
						}
						if !ok {
							refused.Add(1)
							continue
						}
						granted.Add(1)
						n := holders.Add(1)
						for {
							m := maxHolders.Load()
							if n <= m || maxHolders.CompareAndSwap(m, n) {
								break
							}
						}
						if r.IntN(2) == 0 {
							runtime.Gosched()
						}
						holders.Add(-1)
						l.Release()
					}
				})
			}
			wg.Wait()
			close(stop)
			setter.Wait()
			if l.InFlight() != 0 || l.Queued() != 0 {
				t.Fatalf("InFlight() = %d, Queued() = %d", l.InFlight(), l.Queued())
			}
			if !changing && maxHolders.Load() > limit {
				t.Fatalf("%d holders at once, limit %d", maxHolders.Load(), limit)
			}
			if granted.Load() == 0 {
				t.Fatal("nothing was granted")
			}
			t.Logf("granted %d, refused %d, max holders %d", granted.Load(), refused.Load(), maxHolders.Load())
		})
	}
}

func TestLimiterAllocs(t *testing.T) {
	l := NewLimiter(1<<20, 0, 0)
	if n := testing.AllocsPerRun(1000, func() {
		if l.TryAcquire() {
			l.Release()
		}
	}); n != 0 {
		t.Errorf("TryAcquire+Release: %v allocs", n)
	}
	ctx := context.Background()
	if n := testing.AllocsPerRun(1000, func() {
		if _, err := l.Acquire(ctx, PriorityHeavyNew); err == nil {
			l.Release()
		}
	}); n != 0 {
		t.Errorf("uncontended Acquire+Release: %v allocs", n)
	}
	full := NewLimiter(1, 0, 0)
	full.TryAcquire()
	if n := testing.AllocsPerRun(1000, func() {
		_, _ = full.Acquire(ctx, PriorityHeavyNew)
	}); n != 0 {
		t.Errorf("refusal: %v allocs", n)
	}
}

func BenchmarkLimiterAcquireRelease(b *testing.B) {
	b.Run("TryAcquire", func(b *testing.B) {
		l := NewLimiter(1<<30, 16, time.Second)
		b.ReportAllocs()
		for b.Loop() {
			if l.TryAcquire() {
				l.Release()
			}
		}
	})
	b.Run("Acquire", func(b *testing.B) {
		l := NewLimiter(1<<30, 16, time.Second)
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := l.Acquire(ctx, PriorityHeavyNew); err == nil {
				l.Release()
			}
		}
	})
}

func BenchmarkLimiterAcquireReleaseParallel(b *testing.B) {
	l := NewLimiter(1<<30, 16, time.Second)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if l.TryAcquire() {
				l.Release()
			}
		}
	})
}

func BenchmarkLimiterRefuse(b *testing.B) {
	ctx := context.Background()
	b.Run("NoQueue", func(b *testing.B) {
		l := NewLimiter(1, 0, time.Second)
		l.TryAcquire()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := l.Acquire(ctx, PriorityHeavyNew); err == nil {
				b.Fatal("admitted")
			}
		}
	})
	b.Run("FullQueue", func(b *testing.B) {
		const queue = 8
		l := NewLimiter(1, queue, time.Hour)
		l.TryAcquire()
		wctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for range queue {
			wg.Go(func() { _, _ = l.Acquire(wctx, PriorityCheapSession) })
		}
		for l.Queued() != queue {
			time.Sleep(time.Millisecond)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := l.Acquire(ctx, PriorityHeavyNew); err == nil {
				b.Fatal("admitted")
			}
		}
		b.StopTimer()
		cancel()
		wg.Wait()
	})
}

// BenchmarkLimiterHandoff measures a slot passed through the wait queue: one
// goroutine holds the only slot and releases it to a waiting one, in turns.
func BenchmarkLimiterHandoff(b *testing.B) {
	l := NewLimiter(1, 4, time.Hour)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := l.Acquire(ctx, PriorityHeavyNew); err != nil {
				b.Error(err)
				return
			}
			l.Release()
		}
	})
}

// fakeClock is a Limiter clock the test moves by hand. Only the limiter's
// reading of the time is faked; its timers run on the real clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Duration
}

func (c *fakeClock) Now() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t += d
	c.mu.Unlock()
}

// withClock returns a Limiter like NewLimiter(limit, size, timeout) reading
// the time from a fake clock.
func withClock(limit, size int, timeout time.Duration) (*Limiter, *fakeClock) {
	clk := &fakeClock{t: time.Hour}
	l := NewLimiter(limit, size, timeout)
	l.clock = clk.Now
	return l, clk
}

func TestLimiterStandingParams(t *testing.T) {
	for _, tc := range []struct {
		timeout, target, interval time.Duration
	}{
		{0, StandingTarget, StandingInterval},
		{time.Millisecond, 0, 0},
		{StandingTarget, 0, 0},
		{50 * time.Millisecond, StandingTarget, 25 * time.Millisecond},
		{time.Second, StandingTarget, StandingInterval},
		{5 * time.Second, StandingTarget, StandingInterval},
	} {
		l := NewLimiter(1, 4, tc.timeout)
		if l.target != tc.target || l.interval != tc.interval {
			t.Errorf("timeout %v: target %v, interval %v; want %v, %v", tc.timeout, l.target, l.interval, tc.target, tc.interval)
		}
	}
}

// TestLimiterStandingQueue walks a queue through the standing state: a
// queue that stands without refusing anyone keeps its size; once it has
// also refused a request it is sized from its departure rate, serves
// oldest first and refuses newcomers at once; after an interval without
// refusals it is back to its full size.
func TestLimiterStandingQueue(t *testing.T) {
	l, clk := withClock(1, 8, time.Hour)
	l.target = 50 * time.Millisecond // with the 100ms interval
	if !l.TryAcquire() {
		t.Fatal("TryAcquire refused")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan result, 32)
	for i := range 6 {
		startWaiter(ctx, l, PriorityHeavyNew, i, out)
		waitQueued(t, l, i+1)
	}
	// Four grants in the first 100ms window.
	clk.Add(100 * time.Millisecond)
	for want := range 4 {
		l.Release()
		if r := recv(t, out); r.err != nil || r.id != want {
			t.Fatalf("got waiter %d (%v), want %d", r.id, r.err, want)
		}
	}
	// Non-empty for an interval but nothing refused: not standing, and
	// the queue fills to its size.
	for i := 6; i < 12; i++ {
		startWaiter(ctx, l, PriorityHeavyNew, i, out)
		waitQueued(t, l, i-3)
	}
	l.mu.Lock()
	standing, size := l.standing, l.standingSize
	l.mu.Unlock()
	if standing {
		t.Fatal("standing without a refusal")
	}
	// The window closed at 4 grants per 100ms: 2 per 50ms target.
	if size != 2 {
		t.Fatalf("standing size %d, want 2", size)
	}
	// A full queue refuses: from now on the queue stands.
	if _, err := l.Acquire(ctx, PriorityHeavyNew); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("full queue: %v, want ErrQueueFull", err)
	}
	// Served oldest first, even when the oldest has waited past half the
	// queue timeout (a draining queue would serve the newest).
	l.mu.Lock()
	for w := l.lists[PriorityHeavyNew].Front(); w != nil; w = w.Next() {
		w.Value.since -= time.Hour
	}
	l.mu.Unlock()
	for want := 4; want < 10; want++ {
		l.Release()
		if r := recv(t, out); r.err != nil || r.id != want {
			t.Fatalf("standing queue: got waiter %d (%v), want %d", r.id, r.err, want)
		}
	}
	// Two waiters left: the standing size is reached, so a newcomer is
	// refused at once although the queue has room for 8, and without
	// allocating.
	if _, err := l.Acquire(ctx, PriorityHeavyNew); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("standing queue at its size: %v, want ErrQueueFull", err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = l.Acquire(ctx, PriorityHeavyNew) }); n != 0 {
		t.Errorf("standing refusal: %v allocs", n)
	}
	if l.Queued() != 2 {
		t.Fatalf("Queued() = %d, want 2", l.Queued())
	}
	// A higher priority still evicts a lower one.
	startWaiter(ctx, l, PriorityCheapSession, 100, out)
	if r := recv(t, out); r.id != 10 || !errors.Is(r.err, ErrQueueFull) {
		t.Fatalf("evicted %d (%v), want waiter 10 with ErrQueueFull", r.id, r.err)
	}
	waitQueued(t, l, 2)
	// An interval without refusals ends the standing state.
	clk.Add(100 * time.Millisecond)
	startWaiter(ctx, l, PriorityHeavyNew, 12, out)
	waitQueued(t, l, 3)
	l.mu.Lock()
	standing = l.standing
	l.mu.Unlock()
	if standing {
		t.Fatal("still standing after an interval without refusals")
	}
	// Draining again: waiter 11 has waited past half the queue timeout,
	// so the newest is served first.
	releaseInOrder(t, l, out, 100, 12, 11)
}

// TestLimiterBurstNotStanding: a burst the queue holds without refusing
// anyone (a closed loop smaller than the queue) drains at the configured
// size, oldest first, however long the queue stays non-empty.
func TestLimiterBurstNotStanding(t *testing.T) {
	const n = 40
	l, clk := withClock(1, n, time.Hour)
	if !l.TryAcquire() {
		t.Fatal("TryAcquire refused")
	}
	out := make(chan result, n+1)
	for i := range n {
		startWaiter(context.Background(), l, PriorityHeavySession, i, out)
		waitQueued(t, l, i+1)
	}
	next := n
	for want := range 4 * n {
		clk.Add(time.Second) // far beyond the interval and the target
		l.Release()
		r := recv(t, out)
		if r.err != nil || r.id != want {
			t.Fatalf("got waiter %d (%v), want %d", r.id, r.err, want)
		}
		// The served client comes back at once, to the back of the queue.
		startWaiter(context.Background(), l, PriorityHeavySession, next, out)
		next++
		waitQueued(t, l, n)
	}
	l.mu.Lock()
	standing := l.standing
	l.mu.Unlock()
	if standing {
		t.Fatal("a burst without refusals became standing")
	}
	for range n {
		l.Release()
		if r := recv(t, out); r.err != nil {
			t.Fatal(r.err)
		}
	}
	l.Release()
}

// TestLimiterTimeoutMarksRefusal: a queue timeout is a refusal for the
// standing state, as a full queue is.
func TestLimiterTimeoutMarksRefusal(t *testing.T) {
	l, clk := withClock(1, 4, time.Millisecond)
	l.target, l.interval = time.Microsecond, time.Millisecond
	if !l.TryAcquire() {
		t.Fatal("TryAcquire refused")
	}
	if _, err := l.Acquire(context.Background(), PriorityHeavyNew); !errors.Is(err, ErrQueueTimeout) {
		t.Fatalf("Acquire: %v, want ErrQueueTimeout", err)
	}
	l.mu.Lock()
	at := l.refusedAt
	l.mu.Unlock()
	if at != clk.Now() {
		t.Fatalf("refusedAt %v, want %v", at, clk.Now())
	}
	l.Release()
}

func TestLimiterTryAcquireN(t *testing.T) {
	l := NewLimiter(5, 4, hang)
	for _, tc := range []struct {
		op       string // "try" or "release"
		n        int
		ok       bool
		inflight int
	}{
		{"try", 3, true, 3},
		{"try", 3, false, 3}, // all or nothing: 2 free, 3 asked
		{"try", 2, true, 5},
		{"try", 1, false, 5},
		{"try", 0, true, 5}, // takes nothing
		{"try", -1, true, 5},
		{"release", 4, true, 1},
		{"try", 6, false, 1}, // above the limit outright
		{"try", 4, true, 5},
		{"release", 0, true, 5}, // no-op
		{"release", 5, true, 0},
		{"try", 5, true, 5},
		{"release", 5, true, 0},
	} {
		switch tc.op {
		case "try":
			if got := l.TryAcquireN(tc.n); got != tc.ok {
				t.Fatalf("TryAcquireN(%d) = %v, want %v", tc.n, got, tc.ok)
			}
		case "release":
			l.ReleaseN(tc.n)
		}
		if l.InFlight() != tc.inflight {
			t.Fatalf("after %s %d: InFlight() = %d, want %d", tc.op, tc.n, l.InFlight(), tc.inflight)
		}
	}

	// Requests in the queue are not overtaken.
	if !l.TryAcquireN(5) {
		t.Fatal("refused on an idle limiter")
	}
	out := make(chan result, 1)
	startWaiter(context.Background(), l, PriorityHeavyNew, 1, out)
	waitQueued(t, l, 1)
	l.ReleaseN(2) // one slot goes to the waiter
	if r := recv(t, out); r.err != nil {
		t.Fatalf("waiter: %v", r.err)
	}
	if l.TryAcquireN(2) {
		t.Fatal("admitted 2 slots with 1 free")
	}
	if !l.TryAcquireN(1) {
		t.Fatal("refused 1 slot with 1 free and none queued")
	}
	l.ReleaseN(5)
	if l.InFlight() != 0 {
		t.Fatalf("InFlight() = %d, want 0", l.InFlight())
	}
}

func TestLimiterTryAcquireNUnlimited(t *testing.T) {
	l := NewLimiter(0, 0, 0)
	if !l.TryAcquireN(1000) || !l.TryAcquireN(1<<40) || l.InFlight() != 1000+1<<40 {
		t.Fatalf("InFlight() = %d", l.InFlight())
	}
	l.ReleaseN(1 << 40)
	l.ReleaseN(1000)
	if l.InFlight() != 0 {
		t.Fatalf("InFlight() = %d, want 0", l.InFlight())
	}
}

func TestLimiterReleaseNPanics(t *testing.T) {
	l := NewLimiter(4, 0, 0)
	l.TryAcquireN(2)
	defer func() {
		if recover() == nil {
			t.Fatal("ReleaseN of more slots than taken did not panic")
		}
	}()
	l.ReleaseN(3)
}

// TestLimiterTryAcquireNConcurrent takes random numbers of slots from 8
// goroutines and checks the limit is never exceeded.
func TestLimiterTryAcquireNConcurrent(t *testing.T) {
	const limit = 10
	l := NewLimiter(limit, 0, 0)
	var held atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 11))
			for range 2000 {
				n := 1 + r.IntN(4)
				if !l.TryAcquireN(n) {
					continue
				}
				if h := held.Add(int64(n)); h > limit {
					t.Errorf("%d slots held, limit %d", h, limit)
				}
				runtime.Gosched()
				held.Add(-int64(n))
				l.ReleaseN(n)
			}
		})
	}
	wg.Wait()
	if l.InFlight() != 0 {
		t.Fatalf("InFlight() = %d, want 0", l.InFlight())
	}
}
