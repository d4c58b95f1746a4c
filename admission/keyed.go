package admission

import (
	"hash/maphash"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// keyedShards is the number of independently locked maps in KeyedLimiter and
// KeyedRate.
const keyedShards = 32

// shardOf returns the shard index of key under seed.
func shardOf(seed maphash.Seed, key string) int {
	return int(maphash.String(seed, key) % keyedShards)
}

// reserveKey counts one more distinct key unless max (> 0) keys are already
// counted, and reports whether it did.
func reserveKey(keys *atomic.Int64, limit int64) bool {
	if limit <= 0 {
		keys.Add(1)
		return true
	}
	for {
		n := keys.Load()
		if n >= limit {
			return false
		}
		if keys.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// KeyedLimiter caps the requests in flight per key, such as per client
// address or per session, with memory bounded by the number of keys in
// flight.
//
// A key has an entry only while it has requests in flight: the entry is
// removed when its count returns to zero. At most maxKeys distinct keys are
// tracked; while that many are in flight, TryAcquire refuses any other key,
// so a flood of distinct keys cannot grow memory past the bound (it is then
// refused as a whole, like the global limit would). Keys are spread over 32
// mutex-guarded maps to keep contention low; the maps use a random hash seed.
// All methods are safe for concurrent use.
type KeyedLimiter struct {
	perKey  int
	maxKeys int64
	keys    atomic.Int64
	seed    maphash.Seed
	shards  [keyedShards]countShard
}

type countShard struct {
	mu sync.Mutex
	m  map[string]int
	_  [48]byte // keep shards on separate cache lines
}

// NewKeyedLimiter returns a KeyedLimiter that admits at most perKey requests
// in flight per key (perKey <= 0 means no per-key cap; keys are still
// counted) and tracks at most maxKeys distinct keys (maxKeys <= 0 means no
// bound, which leaves memory unbounded).
func NewKeyedLimiter(perKey int, maxKeys int) *KeyedLimiter {
	k := &KeyedLimiter{perKey: perKey, maxKeys: int64(maxKeys), seed: maphash.MakeSeed()}
	for i := range k.shards {
		k.shards[i].m = make(map[string]int)
	}
	return k
}

// TryAcquire takes a slot for key and reports whether it did. It refuses
// when key already has perKey requests in flight, or when key has none and
// maxKeys other keys are in flight. A true result must be paired with exactly
// one Release(key). The first slot of a key stores a copy of key, so the
// caller's string may point into a larger buffer.
func (k *KeyedLimiter) TryAcquire(key string) bool {
	s := &k.shards[shardOf(k.seed, key)]
	s.mu.Lock()
	n, ok := s.m[key]
	if !ok {
		if !reserveKey(&k.keys, k.maxKeys) {
			s.mu.Unlock()
			return false
		}
		s.m[strings.Clone(key)] = 1
		s.mu.Unlock()
		return true
	}
	if k.perKey > 0 && n >= k.perKey {
		s.mu.Unlock()
		return false
	}
	s.m[key] = n + 1
	s.mu.Unlock()
	return true
}

// Release returns a slot taken for key by TryAcquire. The key's entry is
// removed when its count reaches zero. Releasing a key without slots is a
// no-op.
func (k *KeyedLimiter) Release(key string) {
	s := &k.shards[shardOf(k.seed, key)]
	s.mu.Lock()
	n, ok := s.m[key]
	switch {
	case !ok:
	case n <= 1:
		delete(s.m, key)
		k.keys.Add(-1)
	default:
		s.m[key] = n - 1
	}
	s.mu.Unlock()
}

// InFlight returns the number of slots held for key.
func (k *KeyedLimiter) InFlight(key string) int {
	s := &k.shards[shardOf(k.seed, key)]
	s.mu.Lock()
	n := s.m[key]
	s.mu.Unlock()
	return n
}

// Len returns the number of distinct keys with requests in flight.
func (k *KeyedLimiter) Len() int { return int(k.keys.Load()) }

// PerKey returns the per-key in-flight cap; zero or less means no cap.
func (k *KeyedLimiter) PerKey() int { return k.perKey }

// KeyedRate is a token bucket per key, such as "new sessions per second per
// client address", with memory bounded by maxKeys buckets.
//
// Each key's bucket holds up to burst tokens and refills at perSecond tokens
// per second; Allow takes one token. A bucket that has refilled completely
// is idle: it behaves exactly like a missing bucket, so it can be dropped
// without changing any answer. Sweep drops idle buckets; Allow also sweeps,
// lazily, when a new key arrives while maxKeys buckets exist (at most once
// per min(max(1/perSecond, 10ms), 1s), so a flood of new keys cannot turn
// every call into a full sweep). If the table is still full the new key is
// refused. Keys are spread over 32 mutex-guarded maps with a random hash
// seed. All methods are safe for concurrent use.
type KeyedRate struct {
	perNano   float64 // tokens per nanosecond
	burst     float64
	tokenTime time.Duration // time to earn one token
	maxKeys   int64
	keys      atomic.Int64
	seed      maphash.Seed
	sweepGap  int64        // nanoseconds between lazy sweeps
	lastSweep atomic.Int64 // unix nanoseconds of the last lazy sweep
	shards    [keyedShards]rateShard
}

type rateShard struct {
	mu sync.Mutex
	m  map[string]bucket
	_  [48]byte // keep shards on separate cache lines
}

// bucket is one key's token bucket.
type bucket struct {
	tokens float64 // tokens at last
	last   int64   // unix nanoseconds of the last update
}

// NewKeyedRate returns a KeyedRate allowing perSecond events per second per
// key with bursts of up to burst events (burst < 1 is treated as 1), tracking
// at most maxKeys keys (maxKeys <= 0 means no bound; call Sweep periodically
// then). perSecond <= 0 means no rate limit: Allow always succeeds and
// tracks nothing.
func NewKeyedRate(perSecond float64, burst int, maxKeys int) *KeyedRate {
	k := &KeyedRate{
		burst:   float64(max(burst, 1)),
		maxKeys: int64(maxKeys),
		seed:    maphash.MakeSeed(),
	}
	if perSecond > 0 && !math.IsInf(perSecond, 1) {
		k.perNano = perSecond / float64(time.Second)
		k.tokenTime = time.Duration(float64(time.Second) / perSecond)
		k.sweepGap = int64(min(max(k.tokenTime, 10*time.Millisecond), time.Second))
	}
	for i := range k.shards {
		k.shards[i].m = make(map[string]bucket)
	}
	return k
}

// refill returns b's tokens at now.
func (k *KeyedRate) refill(b bucket, now int64) float64 {
	elapsed := now - b.last
	if elapsed <= 0 {
		return b.tokens
	}
	return min(k.burst, b.tokens+float64(elapsed)*k.perNano)
}

// Allow takes a token from key's bucket at time now. It returns true, 0 when
// a token was available. Otherwise it returns false and how long until the
// next token; when the key is new and maxKeys buckets are busy, that is the
// time to earn one token (1/perSecond). A copy of key is stored, so the
// caller's string may point into a larger buffer. Allow does not allocate
// for a known key.
func (k *KeyedRate) Allow(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	if k.perNano == 0 {
		return true, 0
	}
	t := now.UnixNano()
	s := &k.shards[shardOf(k.seed, key)]
	s.mu.Lock()
	defer s.mu.Unlock()
	b, found := s.m[key]
	if !found {
		if !reserveKey(&k.keys, k.maxKeys) {
			k.lazySweep(s, t)
			if !reserveKey(&k.keys, k.maxKeys) {
				return false, k.tokenTime
			}
		}
		s.m[strings.Clone(key)] = bucket{tokens: k.burst - 1, last: t}
		return true, 0
	}
	tokens := k.refill(b, t)
	if t > b.last {
		b.last = t
	}
	if tokens >= 1 {
		b.tokens = tokens - 1
		s.m[key] = b
		return true, 0
	}
	b.tokens = tokens
	s.m[key] = b
	return false, time.Duration(math.Ceil((1 - tokens) / k.perNano))
}

// lazySweep drops idle buckets from every shard if no lazy sweep ran in the
// last sweepGap. It holds own's lock and only try-locks the other shards, so
// concurrent sweeps cannot deadlock; busy shards are skipped.
func (k *KeyedRate) lazySweep(own *rateShard, now int64) {
	last := k.lastSweep.Load()
	if now-last < k.sweepGap || !k.lastSweep.CompareAndSwap(last, now) {
		return
	}
	for i := range k.shards {
		s := &k.shards[i]
		if s == own {
			k.sweepShard(s, now)
			continue
		}
		if s.mu.TryLock() {
			k.sweepShard(s, now)
			s.mu.Unlock()
		}
	}
}

// sweepShard drops s's idle buckets and returns how many. It requires s.mu.
func (k *KeyedRate) sweepShard(s *rateShard, now int64) int {
	n := 0
	for key, b := range s.m {
		if k.refill(b, now) >= k.burst {
			delete(s.m, key)
			n++
		}
	}
	if n > 0 {
		k.keys.Add(-int64(n))
	}
	return n
}

// Sweep drops every bucket that has refilled completely at now and returns
// how many it dropped. Dropping an idle bucket never changes a later answer.
func (k *KeyedRate) Sweep(now time.Time) int {
	t := now.UnixNano()
	n := 0
	for i := range k.shards {
		s := &k.shards[i]
		s.mu.Lock()
		n += k.sweepShard(s, t)
		s.mu.Unlock()
	}
	return n
}

// Len returns the number of buckets held.
func (k *KeyedRate) Len() int { return int(k.keys.Load()) }
