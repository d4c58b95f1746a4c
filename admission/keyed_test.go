package admission

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"
)

func TestKeyedLimiterPerKey(t *testing.T) {
	k := NewKeyedLimiter(2, 100)
	if !k.TryAcquire("a") || !k.TryAcquire("a") {
		t.Fatal("refused below the per-key cap")
	}
	if k.TryAcquire("a") {
		t.Fatal("admitted above the per-key cap")
	}
	if !k.TryAcquire("b") {
		t.Fatal("another key refused")
	}
	if k.InFlight("a") != 2 || k.InFlight("b") != 1 || k.Len() != 2 || k.PerKey() != 2 {
		t.Fatalf("InFlight(a) = %d, InFlight(b) = %d, Len() = %d", k.InFlight("a"), k.InFlight("b"), k.Len())
	}
	k.Release("a")
	if !k.TryAcquire("a") {
		t.Fatal("refused after Release")
	}
	k.Release("a")
	k.Release("a")
	k.Release("b")
	if k.Len() != 0 || k.InFlight("a") != 0 {
		t.Fatalf("entries left: Len() = %d", k.Len())
	}
	for i := range k.shards {
		if n := len(k.shards[i].m); n != 0 {
			t.Fatalf("shard %d holds %d entries", i, n)
		}
	}
	k.Release("never") // no-op
	if k.Len() != 0 {
		t.Fatalf("Release of an unknown key changed Len() to %d", k.Len())
	}
}

func TestKeyedLimiterMaxKeys(t *testing.T) {
	k := NewKeyedLimiter(1, 3)
	for i := range 3 {
		if !k.TryAcquire(strconv.Itoa(i)) {
			t.Fatalf("key %d refused", i)
		}
	}
	if k.TryAcquire("new") {
		t.Fatal("a new key was admitted with maxKeys keys in flight")
	}
	k.Release("1")
	if !k.TryAcquire("new") {
		t.Fatal("a new key was refused after a key left")
	}
	if k.Len() != 3 {
		t.Fatalf("Len() = %d, want 3", k.Len())
	}
}

func TestKeyedLimiterUnbounded(t *testing.T) {
	k := NewKeyedLimiter(0, 0)
	for i := range 100 {
		if !k.TryAcquire("same") || !k.TryAcquire(strconv.Itoa(i)) {
			t.Fatal("refused without limits")
		}
	}
	if k.InFlight("same") != 100 || k.Len() != 101 {
		t.Fatalf("InFlight = %d, Len() = %d", k.InFlight("same"), k.Len())
	}
}

func TestKeyedLimiterCopiesKey(t *testing.T) {
	k := NewKeyedLimiter(1, 10)
	buf := []byte("client-1")
	key := string(buf)
	if !k.TryAcquire(key[:6]) {
		t.Fatal("refused")
	}
	if k.InFlight("client") != 1 {
		t.Fatal("entry not found by an equal key")
	}
}

func TestKeyedLimiterConcurrent(t *testing.T) {
	const perKey, maxKeys = 3, 20
	k := NewKeyedLimiter(perKey, maxKeys)
	var mu sync.Mutex
	held := map[string]int{}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 2))
			for range 2000 {
				key := strconv.Itoa(r.IntN(40))
				if !k.TryAcquire(key) {
					continue
				}
				mu.Lock()
				held[key]++
				if held[key] > perKey {
					t.Errorf("key %s: %d in flight", key, held[key])
				}
				if len(held) > maxKeys {
					t.Errorf("%d keys in flight", len(held))
				}
				mu.Unlock()
				mu.Lock()
				if held[key]--; held[key] == 0 {
					delete(held, key)
				}
				mu.Unlock()
				k.Release(key)
			}
		})
	}
	wg.Wait()
	if k.Len() != 0 {
		t.Fatalf("Len() = %d after all releases", k.Len())
	}
}

func TestKeyedLimiterAllocs(t *testing.T) {
	k := NewKeyedLimiter(0, 100)
	k.TryAcquire("held") // keeps the entry, so the pair below only counts
	if n := testing.AllocsPerRun(1000, func() {
		if k.TryAcquire("held") {
			k.Release("held")
		}
	}); n != 0 {
		t.Errorf("existing key: %v allocs", n)
	}
}

var epoch = time.Unix(1_700_000_000, 0)

func TestKeyedRateBurstAndRefill(t *testing.T) {
	k := NewKeyedRate(2, 3, 10) // 2/s, burst 3
	now := epoch
	for i := range 3 {
		if ok, _ := k.Allow("c", now); !ok {
			t.Fatalf("burst event %d refused", i)
		}
	}
	ok, retry := k.Allow("c", now)
	if ok {
		t.Fatal("admitted beyond the burst")
	}
	if retry != 500*time.Millisecond {
		t.Fatalf("retryAfter = %v, want 500ms", retry)
	}
	if ok, _ := k.Allow("other", now); !ok {
		t.Fatal("another key refused")
	}
	now = now.Add(250 * time.Millisecond)
	if ok, retry := k.Allow("c", now); ok || retry != 250*time.Millisecond {
		t.Fatalf("half a token: %v, %v; want false, 250ms", ok, retry)
	}
	now = now.Add(250 * time.Millisecond)
	if ok, _ := k.Allow("c", now); !ok {
		t.Fatal("refused after refill")
	}
	// A clock going backwards earns nothing and breaks nothing.
	if ok, _ := k.Allow("c", now.Add(-time.Hour)); ok {
		t.Fatal("admitted on a backwards clock")
	}
}

func TestKeyedRateSweep(t *testing.T) {
	k := NewKeyedRate(10, 2, 100)
	now := epoch
	k.Allow("a", now)
	k.Allow("b", now)
	k.Allow("b", now)
	if k.Len() != 2 {
		t.Fatalf("Len() = %d, want 2", k.Len())
	}
	// a needs 100ms to refill, b 200ms.
	if n := k.Sweep(now.Add(150 * time.Millisecond)); n != 1 || k.Len() != 1 {
		t.Fatalf("Sweep removed %d, Len() = %d; want 1, 1", n, k.Len())
	}
	if n := k.Sweep(now.Add(200 * time.Millisecond)); n != 1 || k.Len() != 0 {
		t.Fatalf("Sweep removed %d, Len() = %d; want 1, 0", n, k.Len())
	}
	// A swept key starts full again, as if it had been kept.
	if ok, _ := k.Allow("b", now.Add(200*time.Millisecond)); !ok {
		t.Fatal("refused after sweep")
	}
}

func TestKeyedRateMaxKeys(t *testing.T) {
	k := NewKeyedRate(1, 1, 4)
	now := epoch
	for i := range 4 {
		if ok, _ := k.Allow(strconv.Itoa(i), now); !ok {
			t.Fatalf("key %d refused", i)
		}
	}
	// Full, and no bucket is idle yet: a new key is refused.
	ok, retry := k.Allow("new", now)
	if ok || retry != time.Second {
		t.Fatalf("new key on a full table: %v, %v; want false, 1s", ok, retry)
	}
	// Once buckets are idle, a new key triggers a lazy sweep and gets in.
	later := now.Add(2 * time.Second)
	if ok, _ := k.Allow("new", later); !ok {
		t.Fatal("new key refused though every bucket was idle")
	}
	if k.Len() != 1 {
		t.Fatalf("Len() = %d after the lazy sweep, want 1", k.Len())
	}
	// Lazy sweeps are throttled: fill again and ask at once.
	for i := range 3 {
		k.Allow("x"+strconv.Itoa(i), later)
	}
	if ok, _ := k.Allow("y", later.Add(5*time.Millisecond)); ok {
		t.Fatal("admitted a new key on a full table within the sweep gap")
	}
	if k.Len() > 4 {
		t.Fatalf("Len() = %d above maxKeys", k.Len())
	}
}

func TestKeyedRateUnlimited(t *testing.T) {
	k := NewKeyedRate(0, 0, 1)
	for i := range 100 {
		if ok, _ := k.Allow(strconv.Itoa(i), epoch); !ok {
			t.Fatal("refused without a rate")
		}
	}
	if k.Len() != 0 {
		t.Fatalf("Len() = %d, want 0", k.Len())
	}
}

func TestKeyedRateConcurrent(t *testing.T) {
	const maxKeys = 16
	k := NewKeyedRate(1000, 5, maxKeys)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 3))
			now := epoch
			for range 2000 {
				now = now.Add(time.Duration(r.IntN(200)) * time.Microsecond)
				k.Allow(fmt.Sprint(r.IntN(64)), now)
				if n := k.Len(); n > maxKeys {
					t.Errorf("Len() = %d above maxKeys", n)
					return
				}
			}
		})
	}
	wg.Wait()
	k.Sweep(epoch.Add(time.Hour))
	if k.Len() != 0 {
		t.Fatalf("Len() = %d after a full sweep", k.Len())
	}
}

func TestKeyedRateAllocs(t *testing.T) {
	k := NewKeyedRate(1e9, 1, 10)
	k.Allow("known", epoch)
	if n := testing.AllocsPerRun(1000, func() { k.Allow("known", epoch) }); n != 0 {
		t.Errorf("known key: %v allocs", n)
	}
}

func BenchmarkKeyedLimiter(b *testing.B) {
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "10.0.0." + strconv.Itoa(i)
	}
	k := NewKeyedLimiter(1<<20, 1<<20)
	for _, key := range keys {
		k.TryAcquire(key) // keep entries, measure the steady state
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := rand.IntN(len(keys))
		for pb.Next() {
			key := keys[i%len(keys)]
			i++
			if k.TryAcquire(key) {
				k.Release(key)
			}
		}
	})
}

func BenchmarkKeyedRateAllow(b *testing.B) {
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "10.0.0." + strconv.Itoa(i)
	}
	k := NewKeyedRate(1e6, 10, 1<<20)
	now := epoch
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := rand.IntN(len(keys))
		for pb.Next() {
			k.Allow(keys[i%len(keys)], now)
			i++
		}
	})
}
