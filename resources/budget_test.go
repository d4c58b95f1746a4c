package resources

import (
	"math"
	"sync"
	"sync/atomic"
	"testing"
)

func TestBudgetReserveRelease(t *testing.T) {
	b := NewBudget(100)
	if !b.Reserve(60) || !b.Reserve(40) {
		t.Fatal("reservations within the limit refused")
	}
	if b.Reserve(1) {
		t.Fatal("reservation past the limit granted")
	}
	if got := b.Refusals(); got != 1 {
		t.Fatalf("Refusals = %d, want 1", got)
	}
	if got := b.Pressure(); got != 1 {
		t.Fatalf("Pressure = %v, want 1", got)
	}
	b.Release(50)
	if got := b.Used(); got != 50 {
		t.Fatalf("Used = %d, want 50", got)
	}
	if got := b.Pressure(); got != 0.5 {
		t.Fatalf("Pressure = %v, want 0.5", got)
	}
	if !b.Reserve(0) || !b.Reserve(-5) || b.Used() != 50 {
		t.Fatal("non-positive reservations must be no-op successes")
	}
	b.Release(1000) // over-release stops at zero
	if got := b.Used(); got != 0 {
		t.Fatalf("Used after over-release = %d, want 0", got)
	}
	if b.Reserve(101) {
		t.Fatal("reservation larger than the limit granted")
	}
}

func TestBudgetSetLimit(t *testing.T) {
	b := NewBudget(100)
	b.Reserve(80)
	b.SetLimit(50)
	if b.Limit() != 50 {
		t.Fatalf("Limit = %d", b.Limit())
	}
	if b.Used() != 80 {
		t.Fatal("lowering the limit must keep reservations")
	}
	if b.Pressure() != 1 {
		t.Fatalf("Pressure over the limit = %v, want 1", b.Pressure())
	}
	if b.Reserve(1) {
		t.Fatal("reservation over a lowered limit granted")
	}
	b.Release(40)
	if !b.Reserve(10) {
		t.Fatal("reservation under the lowered limit refused")
	}
}

func TestBudgetUnlimited(t *testing.T) {
	for _, limit := range []int64{0, -1} {
		b := NewBudget(limit)
		if !b.Reserve(1 << 40) {
			t.Fatal("unlimited budget refused")
		}
		if b.Used() != 1<<40 {
			t.Fatal("unlimited budget must still count")
		}
		if b.Pressure() != 0 {
			t.Fatal("unlimited budget must read no pressure")
		}
		if b.Reserve(math.MaxInt64) {
			t.Fatal("overflowing reservation granted")
		}
	}
}

// TestBudgetNeverOverCommits checks, under -race, that concurrent
// reservations never hold more than the limit together.
func TestBudgetNeverOverCommits(t *testing.T) {
	const (
		limit      = 1000
		workers    = 8
		iterations = 3000
	)
	b := NewBudget(limit)
	var held atomic.Int64 // incremented after a grant, decremented before release
	var peak atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range iterations {
				n := int64(1 + (i*7+w*13)%150)
				if !b.Reserve(n) {
					continue
				}
				h := held.Add(n)
				if h > limit {
					t.Errorf("held %d > limit %d", h, limit)
				}
				if u := b.Used(); u > limit {
					t.Errorf("Used %d > limit %d", u, limit)
				}
				for {
					p := peak.Load()
					if h <= p || peak.CompareAndSwap(p, h) {
						break
					}
				}
				held.Add(-n)
				b.Release(n)
			}
		})
	}
	wg.Wait()
	if b.Used() != 0 {
		t.Fatalf("Used after all releases = %d", b.Used())
	}
	if peak.Load() == 0 {
		t.Fatal("no reservation granted")
	}
}

func TestAccountRollback(t *testing.T) {
	parent := NewBudget(100)
	a := NewAccount(60, parent)
	if !a.Reserve(50) {
		t.Fatal("reservation within quota refused")
	}
	// Refused by the account's own quota: the parent is untouched.
	if a.Reserve(20) {
		t.Fatal("reservation past quota granted")
	}
	if a.Used() != 50 || parent.Used() != 50 {
		t.Fatalf("after quota refusal: account %d parent %d, want 50 50", a.Used(), parent.Used())
	}
	// Refused by the parent: the account is untouched.
	other := NewAccount(0, parent)
	if !other.Reserve(45) {
		t.Fatal("other account refused")
	}
	if a.Reserve(10) {
		t.Fatal("reservation past the parent's limit granted")
	}
	if a.Used() != 50 || parent.Used() != 95 {
		t.Fatalf("after parent refusal: account %d parent %d, want 50 95", a.Used(), parent.Used())
	}
	a.Release(20)
	if a.Used() != 30 || parent.Used() != 75 {
		t.Fatalf("after release: account %d parent %d", a.Used(), parent.Used())
	}
	a.Release(1000) // releases only what it holds
	if a.Used() != 0 || parent.Used() != 45 {
		t.Fatalf("after over-release: account %d parent %d", a.Used(), parent.Used())
	}
}

func TestAccountClose(t *testing.T) {
	parent := NewBudget(0)
	a := NewAccount(0, parent)
	a.Reserve(300)
	if got := a.Close(); got != 300 {
		t.Fatalf("Close = %d, want 300", got)
	}
	if parent.Used() != 0 || a.Used() != 0 || !a.Closed() {
		t.Fatalf("after Close: parent %d account %d closed %v", parent.Used(), a.Used(), a.Closed())
	}
	if a.Reserve(1) {
		t.Fatal("closed account granted a reservation")
	}
	a.Release(300) // no-op: Close already gave everything back
	if parent.Used() != 0 {
		t.Fatalf("release after close changed the parent: %d", parent.Used())
	}
	if got := a.Close(); got != 0 {
		t.Fatalf("second Close = %d, want 0", got)
	}
	if parent.Used() != 0 {
		t.Fatal("parent changed by a refused reservation on a closed account")
	}
}

func TestAccountNilParent(t *testing.T) {
	a := NewAccount(10, nil)
	if !a.Reserve(10) || a.Reserve(1) {
		t.Fatal("quota not enforced without a parent")
	}
	if a.Close() != 10 {
		t.Fatal("Close without a parent")
	}
}

// TestAccountCloseRace closes accounts while other goroutines reserve and
// release from them; the parent must end at zero.
func TestAccountCloseRace(t *testing.T) {
	parent := NewBudget(1 << 20)
	for range 50 {
		a := NewAccount(1000, parent)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for i := range 200 {
					n := int64(1 + i%64)
					if a.Reserve(n) {
						a.Release(n)
					}
				}
			})
		}
		wg.Go(func() { a.Close() })
		wg.Wait()
		a.Close()
		if parent.Used() != 0 {
			t.Fatalf("parent holds %d after close", parent.Used())
		}
	}
}

func TestBudgetAllocs(t *testing.T) {
	b := NewBudget(1 << 30)
	a := NewAccount(1<<20, b)
	if n := testing.AllocsPerRun(100, func() {
		b.Reserve(10)
		b.Release(10)
		a.Reserve(10)
		a.Release(10)
	}); n != 0 {
		t.Fatalf("Reserve/Release allocate %v times", n)
	}
}

func BenchmarkBudgetReserveRelease(b *testing.B) {
	bud := NewBudget(1 << 40)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if bud.Reserve(4096) {
				bud.Release(4096)
			}
		}
	})
}

func BenchmarkAccountReserveRelease(b *testing.B) {
	parent := NewBudget(1 << 40)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		a := NewAccount(1<<20, parent)
		for pb.Next() {
			if a.Reserve(4096) {
				a.Release(4096)
			}
		}
	})
}
