package admission

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpgate/mcpgate/resources"
)

// ErrQueueFull is returned by Limiter.Acquire when no slot is free and the
// wait queue has no room for the request: the queue is full of waiters of
// equal or higher priority (a standing queue is full at its standing size,
// see Limiter), or the queue size is zero. A waiter evicted from a full
// queue by a higher-priority arrival also gets ErrQueueFull.
var ErrQueueFull = errors.New("admission: wait queue full")

// ErrQueueTimeout is returned by Limiter.Acquire when a request waited for
// the limiter's queue timeout without getting a slot.
var ErrQueueTimeout = errors.New("admission: wait queue timeout")

// Limiter caps the number of requests in flight and keeps a bounded wait
// queue ordered by Priority.
//
// The fast path, TryAcquire and Release, is a few atomic operations and does
// not allocate. When no slot is free, Acquire waits in the queue. A Release
// hands its slot directly to the best waiter: the highest priority first
// and, within one priority, in the order the queue's state calls for (see
// below). A full queue refuses a new request with ErrQueueFull, unless the
// request has a higher priority than some waiter: then the oldest waiter of
// the lowest queued priority is evicted (it gets ErrQueueFull) and the new
// request takes its place.
//
// Draining queue. A queue that empties now and then, or that refuses
// nobody, absorbs bursts: it holds up to queueSize waiters, each for up to
// the queue timeout. While the oldest waiter has waited less than half the
// queue timeout it is served oldest first, so a burst is absorbed in
// arrival order and no waiter starves behind newer ones. Once the oldest
// has waited longer, the newest is served instead (adaptive LIFO): FIFO
// would then serve only the requests that have waited the longest, whose
// clients are the likeliest to have given up, while LIFO keeps the
// requests of clients still waiting fast and lets the old ones reach their
// timeout. Without a queue timeout a draining queue is FIFO.
//
// Standing queue. Under sustained overload a queue of queueSize only adds
// latency: it stays full, every admitted request waits behind all of it,
// and the excess is refused anyway. The queue is standing, in CoDel's
// sense, when it has not been empty at any point during the last interval
// and has refused a request (full queue, eviction or queue timeout) within
// that interval and since it was last empty. It stays standing until it
// has refused nothing for an interval, even if it empties meanwhile. A
// standing queue admits a newcomer only while it holds fewer than
//
//	n = clamp(⌊g·target/w⌋, 1, queueSize)
//
// waiters, where g is the number of slots handed to waiters during the last
// closed rate window and w is that window's length: at that departure rate
// a newcomer behind n−1 others expects to wait at most target. A newcomer
// beyond n is refused at once with ErrQueueFull. Waiters are served oldest
// first and keep the queue timeout; those queued beyond n when the queue
// started standing stay and are served. A rate window closes when a request
// that finds no free slot arrives an interval or more after the window
// opened; a request that finds the queue empty restarts a window that old
// without closing it, so idle time does not dilute the rate.
//
// The defaults are CoDel's: target is StandingTarget (5ms) and the interval
// StandingInterval (100ms), or half the queue timeout when that is shorter,
// the wait at which a draining queue turns LIFO. With a queue timeout of at
// most the target the queue never stands.
//
// A standing queue refuses newcomers at once rather than time its waiters
// out after the target (the "Fail at Scale" CoDel variant) or evict its
// oldest waiter when full. Both of those refuse a request only after it has
// been parked with a timer and woken again, so under overload, when most
// requests are refused, nearly every refusal costs the target plus a
// wake-up in a busy process, in latency and in CPU. A newcomer refused
// before it waits gets the fastest and cheapest refusal there is, and
// sizing the queue from its departure rate bounds the wait of the admitted
// requests to about the target, which is what CoDel's drops achieve. A
// standing queue is FIFO because it holds only a target's worth of
// waiters: none of them is stale, and LIFO would starve the oldest to their
// timeout behind each newcomer.
//
// Requiring a refusal keeps bursts out of the standing state: a burst the
// queue holds without refusing anyone, such as a closed-loop burst smaller
// than the queue, is served at the full size and timeout however long the
// queue stays non-empty.
//
// Waiting costs no goroutine besides the caller's own; the queue holds at
// most queueSize waiters and waiter structs are pooled. All methods are safe
// for concurrent use.
type Limiter struct {
	inflight atomic.Int64
	limit    atomic.Int64
	// queued counts the waiters in the queue, plus, briefly and under mu, a
	// caller checking whether it must join it. TryAcquire refuses while it
	// is above zero, so new arrivals do not overtake queued waiters.
	queued atomic.Int64

	queueSize    int
	queueTimeout time.Duration
	target       time.Duration        // the standing queue's target wait; 0 turns the control off
	interval     time.Duration        // how long a queue must stand, and the rate window
	epoch        time.Time            // the zero of the limiter's clock
	clock        func() time.Duration // replaces the clock in tests

	mu    sync.Mutex
	lists [NumPriorities]resources.List[waitState] // oldest at head, guarded by mu
	count int                                      // waiters in lists, guarded by mu

	// Standing-queue state, guarded by mu.
	// Times are on the limiter's clock (see now).
	busySince time.Duration // when the queue last turned non-empty
	refusedAt time.Duration // when the queue last refused a request for room or time
	standing  bool
	rateStart time.Duration // start of the current departure-rate window
	grants    int           // slots handed to waiters since rateStart
	// standingSize is the standing queue's size, set when a rate window
	// closes.
	standingSize int
}

// waiter states, guarded by Limiter.mu.
const (
	waiting uint8 = iota
	granted
	evicted
)

// waiter is one caller blocked in Acquire, a node of its priority's wait
// list. It is pooled: its channel and timer are reused across waits.
type waiter = resources.Node[waitState]

// waitState is what a waiter holds.
type waitState struct {
	since time.Duration // when it joined the queue, on the limiter's clock
	prio  Priority
	state uint8
	ready chan struct{} // buffered 1; receives one signal per grant or eviction
	timer *time.Timer
}

var waiterPool = sync.Pool{
	New: func() any { return &waiter{Value: waitState{ready: make(chan struct{}, 1)}} },
}

// NewLimiter returns a Limiter that admits at most limit requests in flight
// (limit <= 0 means unlimited: TryAcquire always succeeds, and in-flight
// requests are still counted), queues at most queueSize waiters
// (queueSize <= 0 disables waiting), and lets a waiter wait at most
// queueTimeout (queueTimeout <= 0 means waiters wait until their context is
// done). Under sustained overload the queue holds fewer waiters (see
// Limiter).
func NewLimiter(limit int, queueSize int, queueTimeout time.Duration) *Limiter {
	l := &Limiter{queueSize: max(queueSize, 0), queueTimeout: queueTimeout, epoch: time.Now()}
	l.target, l.interval = standingParams(queueTimeout)
	l.standingSize = l.queueSize
	l.refusedAt = math.MinInt64 / 2 // never
	l.limit.Store(int64(limit))
	return l
}

// Standing-queue defaults (see Limiter).
const (
	// StandingTarget is the wait a standing queue is sized for.
	StandingTarget = 5 * time.Millisecond
	// StandingInterval is the interval of the standing-queue test and the
	// length of a rate window, unless half the queue timeout is shorter.
	StandingInterval = 100 * time.Millisecond
)

// now reads the limiter's clock: the monotonic time since the limiter was
// made, which costs about half of time.Now.
func (l *Limiter) now() time.Duration {
	if l.clock != nil {
		return l.clock()
	}
	return time.Since(l.epoch)
}

// standingParams returns the standing queue's target and interval for a
// queue timeout (see Limiter).
func standingParams(queueTimeout time.Duration) (target, interval time.Duration) {
	switch {
	case queueTimeout <= 0:
		return StandingTarget, StandingInterval
	case queueTimeout <= StandingTarget:
		return 0, 0
	}
	return StandingTarget, min(StandingInterval, queueTimeout/2)
}

// standingLocked reports whether the queue is standing at now, updating
// the state (see Limiter). It requires mu.
func (l *Limiter) standingLocked(now time.Duration) bool {
	if l.target <= 0 {
		return false
	}
	recent := now-l.refusedAt < l.interval
	if !l.standing {
		l.standing = recent && l.count > 0 && now-l.busySince >= l.interval && l.refusedAt >= l.busySince
	} else if !recent {
		l.standing = false
	}
	return l.standing
}

// sizeLocked returns how many waiters the queue holds at now: the
// standing size while the queue stands, else queueSize. It closes the
// departure-rate window once it is interval old. It requires mu.
func (l *Limiter) sizeLocked(now time.Duration) int {
	if l.target <= 0 {
		return l.queueSize
	}
	l.closeWindowLocked(now)
	if !l.standingLocked(now) {
		return l.queueSize
	}
	return l.standingSize
}

// closeWindowLocked ends the departure-rate window if it is interval old
// and sets the standing size from it: the grants a target's time holds at
// the window's rate, at least 1 and at most queueSize. It requires mu.
func (l *Limiter) closeWindowLocked(now time.Duration) {
	if d := now - l.rateStart; d >= l.interval {
		n := int(float64(l.grants) * float64(l.target) / float64(d))
		l.standingSize = min(max(n, 1), l.queueSize)
		l.grants, l.rateStart = 0, now
	}
}

// TryAcquire takes a slot if one is free and no request is queued, and
// reports whether it did. It never blocks and does not allocate. A true
// result must be paired with exactly one Release.
func (l *Limiter) TryAcquire() bool {
	if l.queued.Load() > 0 {
		return false
	}
	return l.tryInc()
}

// tryInc takes a slot if the limit allows, ignoring the queue.
func (l *Limiter) tryInc() bool {
	lim := l.limit.Load()
	if lim <= 0 {
		l.inflight.Add(1)
		return true
	}
	for {
		n := l.inflight.Load()
		if n >= lim {
			return false
		}
		if l.inflight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// TryAcquireN takes n slots at once if n are free and no request is queued,
// and reports whether it did: it takes all n or none. It never blocks and
// does not allocate. With no limit (limit <= 0) it always succeeds and the
// n slots are counted. A request of more slots than the limit is always
// refused. n <= 0 takes nothing and reports true. A true result must be
// paired with ReleaseN(n) (or n calls of Release).
func (l *Limiter) TryAcquireN(n int) bool {
	if n <= 0 {
		return true
	}
	if l.queued.Load() > 0 {
		return false
	}
	return l.tryIncN(int64(n))
}

// tryIncN takes n slots if the limit allows, ignoring the queue.
func (l *Limiter) tryIncN(n int64) bool {
	lim := l.limit.Load()
	if lim <= 0 {
		l.inflight.Add(n)
		return true
	}
	for {
		cur := l.inflight.Load()
		if cur > lim-n {
			return false
		}
		if l.inflight.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// ForceAcquire takes a slot whatever the limit and the queue: it never
// refuses, never waits and does not allocate. It is for cheap messages that
// must be counted in flight but never be refused or starved by the limit
// (see Controller). The slot counts against the limit like any other until
// it is released, so it can delay other callers. It must be paired with
// exactly one Release.
func (l *Limiter) ForceAcquire() {
	l.inflight.Add(1)
}

// Release returns a slot taken by TryAcquire, ForceAcquire or a successful
// Acquire. If requests are queued and the limit allows, the slot goes
// straight to the best waiter. Release panics if more slots are released
// than were taken.
func (l *Limiter) Release() {
	if l.inflight.Add(-1) < 0 {
		panic("admission: Limiter.Release without a matching acquire")
	}
	if l.queued.Load() > 0 {
		l.dispatch()
	}
}

// ReleaseN returns n slots taken by TryAcquireN(n) (or by n single
// acquires). Queued requests get the freed slots as the limit allows.
// n <= 0 is a no-op. ReleaseN panics if more slots are released than were
// taken.
func (l *Limiter) ReleaseN(n int) {
	if n <= 0 {
		return
	}
	if l.inflight.Add(-int64(n)) < 0 {
		panic("admission: Limiter.ReleaseN without a matching acquire")
	}
	if l.queued.Load() > 0 {
		l.dispatch()
	}
}

// dispatch hands free slots to the best waiters while the limit allows.
func (l *Limiter) dispatch() {
	l.mu.Lock()
	l.grantLocked()
	l.mu.Unlock()
}

// grantLocked hands free slots to the best waiters while the limit allows.
// It requires mu.
func (l *Limiter) grantLocked() {
	if l.count == 0 || !l.tryInc() {
		return
	}
	now := l.now()
	standing := l.standingLocked(now)
	for {
		w := l.popBest(now, standing)
		l.grants++
		w.Value.state = granted
		w.Value.ready <- struct{}{}
		if l.count == 0 || !l.tryInc() {
			return
		}
	}
}

// popBest removes and returns the waiter to serve next from the highest
// non-empty priority: its oldest if the queue is standing or that has
// waited less than half the queue timeout, else its newest (see Limiter).
// It requires mu and count > 0.
func (l *Limiter) popBest(now time.Duration, standing bool) *waiter {
	for p := NumPriorities - 1; p >= 0; p-- {
		if w := l.lists[p].Front(); w != nil {
			if !standing && l.queueTimeout > 0 && now-w.Value.since >= l.queueTimeout/2 {
				w = l.lists[p].Back()
			}
			l.unlink(w)
			return w
		}
	}
	panic("admission: wait queue count out of sync")
}

// unlink removes w from its list and the counts. It requires mu.
func (l *Limiter) unlink(w *waiter) {
	l.lists[w.Value.prio].Remove(w)
	l.count--
	l.queued.Add(-1)
}

// Acquire takes a slot for a request of priority p, waiting in the queue if
// none is free. It returns how long the request waited in the queue (zero if
// it did not wait) and nil on success, in which case the caller must call
// Release exactly once. Otherwise it returns ErrQueueFull when the queue has
// no room (or the waiter was evicted by a higher priority), ErrQueueTimeout
// after waiting the queue timeout, or ctx.Err() when ctx is done first.
//
// A slot handed to a waiter at the moment its wait ends is never lost: if
// the queue timeout fired, Acquire returns nil and the caller owns the slot;
// if ctx is done, the slot is released to the next waiter and Acquire returns
// ctx.Err(). A priority outside [0, NumPriorities) is treated as the highest.
func (l *Limiter) Acquire(ctx context.Context, p Priority) (waited time.Duration, err error) {
	if l.TryAcquire() {
		return 0, nil
	}
	if l.queueSize == 0 {
		return 0, ErrQueueFull
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if p >= NumPriorities {
		p = NumPriorities - 1
	}
	w, err := l.join(p)
	if w == nil {
		return 0, err
	}
	return l.wait(ctx, w)
}

// join takes a slot freed since TryAcquire or else queues a waiter of
// priority p, evicting the oldest waiter of a lower priority when the
// queue is full. It returns no waiter when it took a slot (and a nil
// error) or when the queue has no room for p (ErrQueueFull).
func (l *Limiter) join(p Priority) (*waiter, error) {
	l.mu.Lock()
	// Announce the intent to wait before the last look at the slots, so a
	// concurrent Release either sees this caller in the queue or has freed
	// its slot before the look below.
	l.queued.Add(1)
	// Slots freed since TryAcquire go to the queued waiters first.
	l.grantLocked()
	if l.count == 0 && l.tryInc() {
		l.queued.Add(-1)
		l.mu.Unlock()
		return nil, nil
	}
	now := l.now()
	if l.count == 0 {
		l.busySince = now
		if now-l.rateStart >= l.interval {
			// The window held idle time: start afresh.
			l.grants, l.rateStart = 0, now
		}
	}
	if l.count >= l.sizeLocked(now) {
		l.refusedAt = now
		victim := l.lowestBelow(p)
		if victim == nil {
			l.queued.Add(-1)
			l.mu.Unlock()
			return nil, ErrQueueFull
		}
		l.unlink(victim)
		victim.Value.state = evicted
		victim.Value.ready <- struct{}{}
	}
	w := waiterPool.Get().(*waiter)
	w.Value.prio, w.Value.since, w.Value.state = p, now, waiting
	l.lists[p].PushBack(w)
	l.count++
	l.mu.Unlock()
	return w, nil
}

// wait blocks until the queued waiter w is granted a slot or evicted, the
// queue timeout passes or ctx is done, and returns how long it waited and
// the result of Acquire.
func (l *Limiter) wait(ctx context.Context, w *waiter) (time.Duration, error) {
	ws := &w.Value
	start := time.Now()
	var timeout <-chan time.Time
	if l.queueTimeout > 0 {
		if ws.timer == nil {
			ws.timer = time.NewTimer(l.queueTimeout)
		} else {
			ws.timer.Reset(l.queueTimeout)
		}
		timeout = ws.timer.C
	}
	var err error
	select {
	case <-ws.ready:
	case <-timeout:
		err = ErrQueueTimeout
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		l.mu.Lock()
		if ws.state == waiting {
			l.unlink(w)
			if err == ErrQueueTimeout {
				l.refusedAt = l.now()
			}
			l.mu.Unlock()
			return l.putWaiter(w, start, err)
		}
		l.mu.Unlock()
		// Granted or evicted while the wait ended: the signal was sent
		// under mu, so it is already buffered.
		<-ws.ready
	}
	switch ws.state {
	case granted:
		if err != nil && err != ErrQueueTimeout {
			// The caller is gone: pass the slot on.
			l.Release()
		} else {
			err = nil
		}
	case evicted:
		err = ErrQueueFull
	}
	return l.putWaiter(w, start, err)
}

// lowestBelow returns the oldest waiter of the lowest queued priority if that
// priority is below p, else nil. It requires mu.
func (l *Limiter) lowestBelow(p Priority) *waiter {
	for q := Priority(0); q < p; q++ {
		if w := l.lists[q].Front(); w != nil {
			return w
		}
	}
	return nil
}

// putWaiter returns w to the pool and the result of its wait.
func (l *Limiter) putWaiter(w *waiter, start time.Time, err error) (time.Duration, error) {
	waited := time.Since(start)
	if w.Value.timer != nil {
		w.Value.timer.Stop()
	}
	waiterPool.Put(w)
	return waited, err
}

// SetLimit changes the in-flight limit (n <= 0 means unlimited). Raising it
// hands the new slots to waiters at once; lowering it takes effect as
// requests complete, without cancelling any.
func (l *Limiter) SetLimit(n int) {
	l.limit.Store(int64(n))
	if l.queued.Load() > 0 {
		l.dispatch()
	}
}

// Limit returns the current in-flight limit; zero or less means unlimited.
func (l *Limiter) Limit() int { return int(l.limit.Load()) }

// InFlight returns the number of slots currently held.
func (l *Limiter) InFlight() int { return int(l.inflight.Load()) }

// Queued returns the number of requests waiting in the queue. While calls
// are in progress it may briefly count one caller that is deciding whether
// to wait.
func (l *Limiter) Queued() int { return int(l.queued.Load()) }

// QueueSize returns the maximum number of waiters.
func (l *Limiter) QueueSize() int { return l.queueSize }
