package resources

import (
	"context"
	"sync"
	"sync/atomic"
)

// Group owns goroutines. Every goroutine the proxy starts is started with
// Go on the group of the request or session it works for, gets that
// group's context, and is expected to return when the context is done, so
// that no goroutine outlives what it belongs to.
//
// Groups form a tree: a child's context is derived from its parent's, a
// goroutine of a child counts in the child and in every ancestor, and
// closing a group also closes its descendants (their Go refuses and their
// contexts are cancelled). Wait on a group waits for the goroutines of its
// descendants too.
//
// A group keeps no list of its children or goroutines, only counts; the
// number of goroutines is bounded by whoever calls Go (admission for
// requests, the session registry's bounds for sessions). Each group must be
// closed by its owner: an open child stays registered with its parent's
// context until it is closed. All methods are safe for concurrent use.
type Group struct {
	parent *Group
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool       // guarded by mu
	running int        // goroutines of this group and its descendants, guarded by mu
	idle    *sync.Cond // signalled when running drops to zero; uses mu
	count   atomic.Int64
	onPanic atomic.Pointer[func(v any)]
}

// NewGroup returns an open group, a child of parent when parent is not nil.
// A child of a closed parent starts closed.
func NewGroup(parent *Group) *Group {
	base := context.Background()
	if parent != nil {
		base = parent.ctx
	}
	g := &Group{parent: parent}
	g.ctx, g.cancel = context.WithCancel(base)
	g.idle = sync.NewCond(&g.mu)
	if parent != nil && parent.Closed() {
		g.Close()
	}
	return g
}

// Context returns the group's context; it is done once the group or an
// ancestor is closed.
func (g *Group) Context() context.Context { return g.ctx }

// Go runs f in a new goroutine that belongs to the group and reports true,
// or reports false and does nothing when the group or an ancestor is
// closed. f gets the group's context.
func (g *Group) Go(f func(ctx context.Context)) bool {
	if !g.enter() {
		return false
	}
	go func() {
		defer g.exit()
		defer g.recoverPanic()
		f(g.ctx)
	}()
	return true
}

// SetPanicHandler makes a panic in a goroutine started with Go on g or on
// a descendant without a handler of its own end that goroutine only: the
// panic is recovered and its value handed to fn, which runs on the
// panicking goroutine (a stack trace taken in fn shows where the panic
// happened) before the goroutine is counted out. A nil fn removes g's
// handler. Without a handler in g or an ancestor a panic crashes the
// process, as in a plain goroutine.
func (g *Group) SetPanicHandler(fn func(v any)) {
	if fn == nil {
		g.onPanic.Store(nil)
		return
	}
	g.onPanic.Store(&fn)
}

// recoverPanic hands a panic of one of g's goroutines to the nearest
// panic handler, or lets it crash the process when there is none. It must
// be deferred directly.
func (g *Group) recoverPanic() {
	v := recover()
	if v == nil {
		return
	}
	for p := g; p != nil; p = p.parent {
		if fn := p.onPanic.Load(); fn != nil {
			(*fn)(v)
			return
		}
	}
	panic(v)
}

// enter counts one goroutine in g and every ancestor, root first, unless
// one of them is closed. Each group's Close sets closed under the same lock
// that enter increments under, so a Wait that returns after Close has seen
// every goroutine Go admitted.
func (g *Group) enter() bool {
	var chain [8]*Group // the common depth is request, session, root
	path := chain[:0]
	for p := g; p != nil; p = p.parent {
		path = append(path, p)
	}
	for i := len(path) - 1; i >= 0; i-- {
		p := path[i]
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			for _, q := range path[i+1:] {
				q.done()
			}
			return false
		}
		p.running++
		p.count.Add(1)
		p.mu.Unlock()
	}
	return true
}

// exit undoes enter once the goroutine returns.
func (g *Group) exit() {
	for p := g; p != nil; p = p.parent {
		p.done()
	}
}

func (g *Group) done() {
	g.mu.Lock()
	g.running--
	g.count.Add(-1)
	if g.running == 0 {
		g.idle.Broadcast()
	}
	g.mu.Unlock()
}

// Count returns the goroutines running in the group and its descendants.
func (g *Group) Count() int { return int(g.count.Load()) }

// Closed reports whether the group or an ancestor has been closed.
func (g *Group) Closed() bool {
	for p := g; p != nil; p = p.parent {
		p.mu.Lock()
		c := p.closed
		p.mu.Unlock()
		if c {
			return true
		}
	}
	return false
}

// Close cancels the group's context, which the goroutines of the group and
// its descendants are expected to watch, and refuses further Go calls on
// the group and its descendants. It does not wait; see Wait. Closing a
// closed group does nothing.
func (g *Group) Close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.cancel()
}

// Wait blocks until no goroutine of the group or its descendants is
// running. It is normally called after Close; on an open group it returns
// as soon as the count reaches zero, even if Go is called again later.
func (g *Group) Wait() {
	g.mu.Lock()
	for g.running > 0 {
		g.idle.Wait()
	}
	g.mu.Unlock()
}
