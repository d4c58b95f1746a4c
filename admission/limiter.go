package admission

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// ErrQueueFull is returned by Limiter.Acquire when no slot is free and the
// wait queue has no room for the request: the queue is full of waiters of
// equal or higher priority, or the queue size is zero. A waiter evicted from
// a full queue by a higher-priority arrival also gets ErrQueueFull.
var ErrQueueFull = errors.New("admission: wait queue full")

// ErrQueueTimeout is returned by Limiter.Acquire when a request waited for
// the limiter's queue timeout without getting a slot.
var ErrQueueTimeout = errors.New("admission: wait queue timeout")

// Limiter caps the number of requests in flight and keeps a bounded wait
// queue ordered by Priority.
//
// The fast path, TryAcquire and Release, is a few atomic operations and does
// not allocate. When no slot is free, Acquire waits in the queue. A Release
// hands its slot directly to the best waiter: the highest priority first and,
// within one priority, adaptively FIFO or LIFO. While the oldest waiter has
// waited less than half the queue timeout the queue is draining, and it is
// served oldest first, so a burst is absorbed in arrival order and no waiter
// starves behind newer ones. Once the oldest has waited longer, the queue is
// standing (sustained overload): a FIFO queue would then serve only requests
// that have waited the longest, whose clients are the most likely to have
// given up, so goodput collapses; the newest waiter is served instead, which
// keeps the requests whose clients are still waiting fast and lets the old
// ones reach their queue timeout and be refused (adaptive LIFO, as in
// CoDel-style queue management). Without a queue timeout the queue is FIFO.
//
// A full queue refuses a new request with ErrQueueFull, unless the request
// has a higher priority than some waiter: then the oldest waiter of the
// lowest queued priority is evicted (it gets ErrQueueFull) and the new
// request takes its place.
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

	mu    sync.Mutex
	lists [NumPriorities]waitList // guarded by mu
	count int                     // waiters in lists, guarded by mu
}

// waiter states, guarded by Limiter.mu.
const (
	waiting uint8 = iota
	granted
	evicted
)

// waiter is one caller blocked in Acquire. It is pooled: its channel and
// timer are reused across waits.
type waiter struct {
	prev, next *waiter
	since      time.Time // when it joined the queue
	prio       Priority
	state      uint8
	ready      chan struct{} // buffered 1; receives one signal per grant or eviction
	timer      *time.Timer
}

var waiterPool = sync.Pool{
	New: func() any { return &waiter{ready: make(chan struct{}, 1)} },
}

// waitList is an intrusive doubly linked list of waiters of one priority,
// oldest at head, newest at tail.
type waitList struct {
	head, tail *waiter
}

func (wl *waitList) pushBack(w *waiter) {
	w.prev, w.next = wl.tail, nil
	if wl.tail != nil {
		wl.tail.next = w
	} else {
		wl.head = w
	}
	wl.tail = w
}

func (wl *waitList) remove(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		wl.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		wl.tail = w.prev
	}
	w.prev, w.next = nil, nil
}

// NewLimiter returns a Limiter that admits at most limit requests in flight
// (limit <= 0 means unlimited: TryAcquire always succeeds, and in-flight
// requests are still counted), queues at most queueSize waiters
// (queueSize <= 0 disables waiting), and lets a waiter wait at most
// queueTimeout (queueTimeout <= 0 means waiters wait until their context is
// done).
func NewLimiter(limit int, queueSize int, queueTimeout time.Duration) *Limiter {
	l := &Limiter{queueSize: max(queueSize, 0), queueTimeout: queueTimeout}
	l.limit.Store(int64(limit))
	return l
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

// dispatch hands free slots to the best waiters while the limit allows.
func (l *Limiter) dispatch() {
	l.mu.Lock()
	l.grantLocked()
	l.mu.Unlock()
}

// grantLocked hands free slots to the best waiters while the limit allows.
// It requires mu.
func (l *Limiter) grantLocked() {
	for l.count > 0 && l.tryInc() {
		w := l.popBest()
		w.state = granted
		w.ready <- struct{}{}
	}
}

// popBest removes and returns the waiter to serve next from the highest
// non-empty priority: its oldest while that has waited less than half the
// queue timeout, else its newest (see Limiter). It requires mu and
// count > 0.
func (l *Limiter) popBest() *waiter {
	for p := NumPriorities - 1; p >= 0; p-- {
		if w := l.lists[p].head; w != nil {
			if l.queueTimeout > 0 && time.Since(w.since) >= l.queueTimeout/2 {
				w = l.lists[p].tail
			}
			l.unlink(w)
			return w
		}
	}
	panic("admission: wait queue count out of sync")
}

// unlink removes w from its list and the counts. It requires mu.
func (l *Limiter) unlink(w *waiter) {
	l.lists[w.prio].remove(w)
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
		return 0, nil
	}
	if l.count >= l.queueSize {
		victim := l.lowestBelow(p)
		if victim == nil {
			l.queued.Add(-1)
			l.mu.Unlock()
			return 0, ErrQueueFull
		}
		l.unlink(victim)
		victim.state = evicted
		victim.ready <- struct{}{}
	}
	w := waiterPool.Get().(*waiter)
	w.prio = p
	w.since = time.Now()
	w.state = waiting
	l.lists[p].pushBack(w)
	l.count++
	l.mu.Unlock()

	start := time.Now()
	var timeout <-chan time.Time
	if l.queueTimeout > 0 {
		if w.timer == nil {
			w.timer = time.NewTimer(l.queueTimeout)
		} else {
			w.timer.Reset(l.queueTimeout)
		}
		timeout = w.timer.C
	}
	select {
	case <-w.ready:
	case <-timeout:
		err = ErrQueueTimeout
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		l.mu.Lock()
		if w.state == waiting {
			l.unlink(w)
			l.mu.Unlock()
			return l.putWaiter(w, start, err)
		}
		l.mu.Unlock()
		// Granted or evicted while the wait ended: the signal was sent
		// under mu, so it is already buffered.
		<-w.ready
	}
	switch w.state {
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
		if w := l.lists[q].head; w != nil {
			return w
		}
	}
	return nil
}

// putWaiter returns w to the pool and the result of its wait.
func (l *Limiter) putWaiter(w *waiter, start time.Time, err error) (time.Duration, error) {
	waited := time.Since(start)
	if w.timer != nil {
		w.timer.Stop()
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

// QueueTimeout returns the longest time a waiter waits for a slot; zero or
// less means until its context is done.
func (l *Limiter) QueueTimeout() time.Duration { return l.queueTimeout }
