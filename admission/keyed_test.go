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

func TestKeyedLimiterN(t *testing.T) {
	k := NewKeyedLimiter(4, 2)
	for _, tc := range []struct {
		op   string // "try" or "release"
		key  string
		n    int
		ok   bool
		want int // InFlight(key) after
	}{
		{"try", "a", 3, true, 3},
		{"try", "a", 2, false, 3}, // all or nothing
		{"try", "a", 1, true, 4},
		{"try", "b", 5, false, 0}, // above the cap outright: no entry stored
		{"try", "b", 0, true, 0},  // takes nothing
		{"try", "b", 4, true, 4},
		{"try", "c", 1, false, 0}, // table full (maxKeys 2)
		{"release", "a", 2, true, 2},
		{"release", "a", 0, true, 2},
		{"try", "a", 2, true, 4},
		{"release", "a", 4, true, 0}, // entry removed
		{"try", "c", 2, true, 2},
		{"release", "c", 9, true, 0}, // more than held: removed
		{"release", "b", 1, true, 3},
		{"release", "b", 3, true, 0},
	} {
		switch tc.op {
		case "try":
			if got := k.TryAcquireN(tc.key, tc.n); got != tc.ok {
				t.Fatalf("TryAcquireN(%s, %d) = %v, want %v", tc.key, tc.n, got, tc.ok)
			}
		case "release":
			k.ReleaseN(tc.key, tc.n)
		}
		if got := k.InFlight(tc.key); got != tc.want {
			t.Fatalf("after %s(%s, %d): InFlight = %d, want %d", tc.op, tc.key, tc.n, got, tc.want)
		}
	}
	if k.Len() != 0 {
		t.Fatalf("Len() = %d, want 0", k.Len())
	}
	u := NewKeyedLimiter(0, 0) // no cap: counts only
	if !u.TryAcquireN("x", 1000) || u.InFlight("x") != 1000 {
		t.Fatal("no cap: refused or not counted")
	}
	u.ReleaseN("x", 1000)
	if u.Len() != 0 {
		t.Fatalf("Len() = %d, want 0", u.Len())
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

func TestKeyedRateEvictsLRU(t *testing.T) {
	k := NewKeyedRate(1, 1, 4) // 1/s, burst 1, 4 keys: one shard, exact LRU
	now := epoch
	for _, key := range []string{"a", "b", "c", "d"} {
		if ok, _ := k.Allow(key, now); !ok {
			t.Fatalf("key %s refused", key)
		}
	}
	// a is used again (and refused): it becomes the most recently used.
	if ok, _ := k.Allow("a", now); ok {
		t.Fatal("a admitted with an empty bucket")
	}
	// Full, and no bucket is idle: a new key evicts the least recently
	// used, b, and is admitted.
	if ok, retry := k.Allow("new", now); !ok || retry != 0 {
		t.Fatalf("new key on a full table: %v, %v; want true, 0", ok, retry)
	}
	if k.Len() != 4 {
		t.Fatalf("Len() = %d, want 4", k.Len())
	}
	// b was evicted: it starts again with a full bucket. That evicts c.
	if ok, _ := k.Allow("b", now); !ok {
		t.Fatal("evicted key b refused")
	}
	// a, d, new and b keep their (empty) buckets.
	for _, key := range []string{"a", "d", "new", "b"} {
		if ok, _ := k.Allow(key, now); ok {
			t.Fatalf("key %s admitted: its bucket was lost", key)
		}
	}
	if k.Len() != 4 {
		t.Fatalf("Len() = %d, want 4", k.Len())
	}
}

// TestKeyedRateFlood sends 10×maxKeys distinct keys through tables of
// several sizes: no new key is ever refused, the table never holds more
// than maxKeys buckets, and the most recent keys keep their buckets.
func TestKeyedRateFlood(t *testing.T) {
	for _, maxKeys := range []int{1, 7, 100, 3000, 40000} {
		t.Run(strconv.Itoa(maxKeys), func(t *testing.T) {
			k := NewKeyedRate(1, 1, maxKeys) // each key's first event empties its bucket
			shards := int(k.mask) + 1
			now := epoch
			n := 10 * maxKeys
			for i := range n {
				if ok, _ := k.Allow("flood-"+strconv.Itoa(i), now); !ok {
					t.Fatalf("new key %d refused", i)
				}
				if k.Len() > maxKeys {
					t.Fatalf("Len() = %d above maxKeys", k.Len())
				}
			}
			// Every shard got far more than its share: all are full.
			if k.Len() != maxKeys {
				t.Fatalf("Len() = %d, want %d", k.Len(), maxKeys)
			}
			// The maxKeys/shards most recent keys all keep their buckets.
			for i := n - maxKeys/shards; i < n; i++ {
				if ok, _ := k.Allow("flood-"+strconv.Itoa(i), now); ok {
					t.Fatalf("recent key %d lost its bucket (%d shards)", n-i, shards)
				}
			}
			var total int
			for i := range shards {
				s := &k.shards[i]
				total += s.max
				if len(s.m) != s.n {
					t.Fatalf("shard %d: map %d, count %d", i, len(s.m), s.n)
				}
				m := 0
				for e := s.Front(); e != nil; e = e.Next() {
					m++
				}
				if m != s.n {
					t.Fatalf("shard %d: list %d, count %d", i, m, s.n)
				}
			}
			if total != maxKeys {
				t.Fatalf("shard bounds add up to %d, want %d", total, maxKeys)
			}
		})
	}
}

func TestKeyedRateShards(t *testing.T) {
	for _, tc := range []struct{ maxKeys, shards int }{
		{0, 32}, {1, 1}, {1000, 1}, {2047, 1}, {2048, 2}, {4096, 4}, {10000, 8},
		{32767, 16}, {32768, 32}, {DefaultMaxKeys, 32}, {1 << 30, 32},
	} {
		k := NewKeyedRate(1, 1, tc.maxKeys)
		if got := int(k.mask) + 1; got != tc.shards {
			t.Errorf("maxKeys %d: %d shards, want %d", tc.maxKeys, got, tc.shards)
		}
	}
}

func TestKeyedRateSweepKeepsList(t *testing.T) {
	k := NewKeyedRate(10, 1, 3)
	now := epoch
	k.Allow("a", now)
	k.Allow("b", now.Add(50*time.Millisecond))
	k.Allow("c", now.Add(100*time.Millisecond))
	// a and b are idle at 150ms (a token takes 100ms); c is not.
	if n := k.Sweep(now.Add(150 * time.Millisecond)); n != 2 || k.Len() != 1 {
		t.Fatalf("Sweep removed %d, Len() = %d; want 2, 1", n, k.Len())
	}
	s := &k.shards[0]
	if s.Front() == nil || s.Front() != s.Back() || s.Front().Value.key != "c" || s.n != 1 {
		t.Fatal("list out of sync after Sweep")
	}
	// Two new keys fill the table again without evicting c.
	later := now.Add(160 * time.Millisecond)
	k.Allow("d", later)
	k.Allow("e", later)
	if ok, _ := k.Allow("c", later); ok {
		t.Fatal("c lost its bucket")
	}
	// The next new key evicts the least recently used: d.
	k.Allow("f", later)
	if ok, _ := k.Allow("d", later); !ok {
		t.Fatal("d kept its bucket")
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
	for _, tc := range []struct{ maxKeys, keys int }{
		{16, 64},     // one shard, constant eviction
		{4096, 6000}, // four shards
		{0, 500},     // no bound
	} {
		k := NewKeyedRate(1000, 5, tc.maxKeys)
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(g), 3))
				now := epoch
				for i := range 2000 {
					now = now.Add(time.Duration(r.IntN(200)) * time.Microsecond)
					k.Allow(fmt.Sprint(r.IntN(tc.keys)), now)
					if i%100 == 0 && g == 0 {
						k.Sweep(now)
					}
					if n := k.Len(); tc.maxKeys > 0 && n > tc.maxKeys {
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
		for i := range k.shards {
			if s := &k.shards[i]; s.Front() != nil || s.Back() != nil || s.n != 0 || len(s.m) != 0 {
				t.Fatalf("shard %d not empty after a full sweep", i)
			}
		}
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
