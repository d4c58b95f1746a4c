package resources

import (
	"context"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestGroupGoCloseWait(t *testing.T) {
	g := NewGroup(nil)
	const n = 10
	var started sync.WaitGroup
	started.Add(n)
	var ended atomic.Int64
	for range n {
		if !g.Go(func(ctx context.Context) {
			started.Done()
			<-ctx.Done()
			ended.Add(1)
		}) {
			t.Fatal("Go refused on an open group")
		}
	}
	started.Wait()
	if got := g.Count(); got != n {
		t.Fatalf("Count = %d, want %d", got, n)
	}
	g.Close()
	g.Wait()
	if ended.Load() != n || g.Count() != 0 {
		t.Fatalf("after Wait: ended %d count %d", ended.Load(), g.Count())
	}
	if g.Go(func(context.Context) { t.Error("ran on a closed group") }) {
		t.Fatal("Go accepted on a closed group")
	}
	if !g.Closed() || g.Context().Err() == nil {
		t.Fatal("closed group must report closed and have a done context")
	}
	g.Close() // idempotent
}

func TestGroupWaitOpen(t *testing.T) {
	g := NewGroup(nil)
	defer g.Close()
	done := make(chan struct{})
	g.Go(func(context.Context) { <-done })
	close(done)
	g.Wait()
	if g.Count() != 0 {
		t.Fatalf("Count = %d", g.Count())
	}
}

func TestGroupParentRollUp(t *testing.T) {
	root := NewGroup(nil)
	session := NewGroup(root)
	request := NewGroup(session)
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(3)
	for _, g := range []*Group{root, session, request} {
		g.Go(func(context.Context) { started.Done(); <-release })
	}
	started.Wait()
	if root.Count() != 3 || session.Count() != 2 || request.Count() != 1 {
		t.Fatalf("counts root %d session %d request %d, want 3 2 1", root.Count(), session.Count(), request.Count())
	}
	close(release)
	root.Wait()
	if root.Count() != 0 || session.Count() != 0 || request.Count() != 0 {
		t.Fatal("counts not back to zero")
	}
	request.Close()
	session.Close()
	root.Close()
}

func TestGroupParentClosesChildren(t *testing.T) {
	root := NewGroup(nil)
	child := NewGroup(root)
	grandchild := NewGroup(child)
	var ended atomic.Int64
	grandchild.Go(func(ctx context.Context) { <-ctx.Done(); ended.Add(1) })
	child.Go(func(ctx context.Context) { <-ctx.Done(); ended.Add(1) })
	root.Close()
	root.Wait() // waits for descendants' goroutines too
	if ended.Load() != 2 {
		t.Fatalf("ended %d, want 2", ended.Load())
	}
	if !child.Closed() || !grandchild.Closed() {
		t.Fatal("children of a closed group must report closed")
	}
	if grandchild.Go(func(context.Context) {}) {
		t.Fatal("Go accepted under a closed ancestor")
	}
	late := NewGroup(root)
	if !late.Closed() || late.Context().Err() == nil {
		t.Fatal("a child of a closed group must start closed")
	}
	child.Close()
	grandchild.Close()
}

// TestGroupCloseRace starts goroutines while the group is being closed:
// every goroutine Go admitted has ended when Wait returns.
func TestGroupCloseRace(t *testing.T) {
	for range 20 {
		root := NewGroup(nil)
		child := NewGroup(root)
		var admitted, ran atomic.Int64
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for range 100 {
					if child.Go(func(ctx context.Context) { ran.Add(1); <-ctx.Done() }) {
						admitted.Add(1)
					}
				}
			})
		}
		root.Close()
		wg.Wait()
		root.Wait()
		if ran.Load() != admitted.Load() || root.Count() != 0 || child.Count() != 0 {
			t.Fatalf("admitted %d ran %d counts %d %d", admitted.Load(), ran.Load(), root.Count(), child.Count())
		}
		child.Close()
	}
}

// TestGroupPanicHandler: a panic in a goroutine of a group, or of a
// descendant, goes to the nearest handler on the panicking goroutine, the
// goroutine is counted out, and the group goes on working.
func TestGroupPanicHandler(t *testing.T) {
	root := NewGroup(nil)
	defer root.Close()
	child := NewGroup(root)
	defer child.Close()
	var mu sync.Mutex
	var got []any
	var stacks []string
	root.SetPanicHandler(func(v any) {
		mu.Lock()
		got = append(got, v)
		stacks = append(stacks, string(debug.Stack()))
		mu.Unlock()
	})
	child.Go(func(context.Context) { panicInTask("in the child") })
	child.Wait()
	if child.Count() != 0 || root.Count() != 0 {
		t.Fatalf("counts after the panic: child %d, root %d", child.Count(), root.Count())
	}
	mu.Lock()
	if len(got) != 1 || got[0] != "in the child" || !strings.Contains(stacks[0], "panicInTask") {
		t.Fatalf("handler got %v, stack:\n%s", got, stacks)
	}
	mu.Unlock()

	// The child's own handler takes precedence; nil removes it again.
	var own atomic.Int32
	child.SetPanicHandler(func(any) { own.Add(1) })
	child.Go(func(context.Context) { panicInTask("own") })
	child.Wait()
	child.SetPanicHandler(nil)
	child.Go(func(context.Context) { panicInTask("root again") })
	child.Wait()
	var done atomic.Bool
	if !child.Go(func(context.Context) { done.Store(true) }) {
		t.Fatal("Go refused after a panic")
	}
	child.Wait()
	mu.Lock()
	defer mu.Unlock()
	if own.Load() != 1 || len(got) != 2 || got[1] != "root again" || !done.Load() {
		t.Fatalf("own handler %d, root handler %v, later goroutine ran %v", own.Load(), got, done.Load())
	}
}

//go:noinline
func panicInTask(v string) { panic(v) }
