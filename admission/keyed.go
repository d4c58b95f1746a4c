package admission

import (
	"hash/maphash"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpgate/mcpgate/resources"
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
// so a flood of distinct keys cannot grow memory past the bound. Unlike
// KeyedRate, a full table does not evict: every entry stands for requests
// that hold slots right now, and dropping one would lose their count and
// let the key exceed its cap. A full table is a table of maxKeys keys all
// with work in flight, which is overload, and refusing newcomers then is
// what the process-wide limit would do too (the Controller answers
// ReasonCapacity). Keys are spread over 32 mutex-guarded maps to keep
// contention low; the maps use a random hash seed. All methods are safe for
// concurrent use.
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
	return k.TryAcquireN(key, 1)
}

// TryAcquireN takes n slots for key at once and reports whether it did: it
// takes all n or none. It refuses when key's slots in flight plus n would
// exceed perKey (so n > perKey is always refused), or when key has none
// and maxKeys other keys are in flight. With no per-key cap (perKey <= 0)
// only the key bound applies. n <= 0 takes nothing and reports true. A true
// result must be paired with ReleaseN(key, n) (or n calls of Release). The
// first slots of a key store a copy of key.
func (k *KeyedLimiter) TryAcquireN(key string, n int) bool {
	if n <= 0 {
		return true
	}
	if k.perKey > 0 && n > k.perKey {
		return false
	}
	s := &k.shards[shardOf(k.seed, key)]
	s.mu.Lock()
	cur, ok := s.m[key]
	if !ok {
		if !reserveKey(&k.keys, k.maxKeys) {
			s.mu.Unlock()
			return false
		}
		s.m[strings.Clone(key)] = n
		s.mu.Unlock()
		return true
	}
	if k.perKey > 0 && cur > k.perKey-n {
		s.mu.Unlock()
		return false
	}
	s.m[key] = cur + n
	s.mu.Unlock()
	return true
}

// Release returns a slot taken for key by TryAcquire. The key's entry is
// removed when its count reaches zero. Releasing a key without slots is a
// no-op.
func (k *KeyedLimiter) Release(key string) {
	k.ReleaseN(key, 1)
}

// ReleaseN returns n slots taken for key by TryAcquireN (or TryAcquire).
// The key's entry is removed when its count reaches zero; releasing more
// slots than key holds removes it too. n <= 0, or a key without slots, is a
// no-op.
func (k *KeyedLimiter) ReleaseN(key string, n int) {
	if n <= 0 {
		return
	}
	s := &k.shards[shardOf(k.seed, key)]
	s.mu.Lock()
	cur, ok := s.m[key]
	switch {
	case !ok:
	case cur <= n:
		delete(s.m, key)
		k.keys.Add(-1)
	default:
		s.m[key] = cur - n
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
// without changing any answer.
//
// The table never refuses a key for lack of room. When a new key arrives
// and the table is full, the least recently used bucket (the key whose last
// Allow is the oldest) is evicted to make room; an evicted key starts again
// with a full bucket when it comes back. A flood of distinct keys (such as
// rotating addresses) therefore cannot lock other clients out; it can only
// make the table forget its oldest keys, which are the likeliest to be idle.
// Eviction costs O(1): each shard keeps its buckets on an intrusive list in
// order of use. Sweep drops idle buckets.
//
// Keys are spread over mutex-guarded shards with a random hash seed: up to
// 32, fewer for small tables (a power of two, with a share of at least
// 1024 keys each), so that a table of fewer than 2048 keys is one exact
// LRU. maxKeys is divided among the shards, and
// each shard evicts its own least recently used bucket when it holds its
// share, so the table holds at most maxKeys buckets and at least the
// maxKeys/shards most recently used keys always keep theirs. All methods
// are safe for concurrent use.
type KeyedRate struct {
	perNano   float64 // tokens per nanosecond
	burst     float64
	tokenTime time.Duration // time to earn one token
	keys      atomic.Int64
	seed      maphash.Seed
	mask      uint64 // shards in use, minus one (a power of two minus one)
	shards    [keyedShards]rateShard
}

// rateKeysPerShard is the share of maxKeys below which a KeyedRate uses
// fewer shards (see KeyedRate).
const rateKeysPerShard = 1024

// rateShard is one shard of a KeyedRate: its buckets by key, and the same
// buckets on a list from the least recently used (head) to the most (tail).
type rateShard struct {
	mu sync.Mutex
	m  map[string]*rateEntry
	resources.List[keyBucket]
	n   int      // buckets held
	max int      // buckets held at most; 0 means no bound
	_   [16]byte // keep shards on separate cache lines
}

// rateEntry is one key's bucket, a node of its shard's list.
type rateEntry = resources.Node[keyBucket]

// keyBucket is a key and its bucket.
type keyBucket struct {
	key string
	b   bucket
}

// bucket is one key's token bucket.
type bucket struct {
	tokens float64 // tokens at last
	last   int64   // unix nanoseconds of the last update
}

// NewKeyedRate returns a KeyedRate allowing perSecond events per second per
// key with bursts of up to burst events (burst < 1 is treated as 1), holding
// at most maxKeys buckets and evicting the least recently used beyond that
// (maxKeys <= 0 means no bound; call Sweep periodically then). perSecond <= 0
// means no rate limit: Allow always succeeds and tracks nothing.
func NewKeyedRate(perSecond float64, burst int, maxKeys int) *KeyedRate {
	k := &KeyedRate{
		burst: float64(max(burst, 1)),
		seed:  maphash.MakeSeed(),
	}
	if perSecond > 0 && !math.IsInf(perSecond, 1) {
		k.perNano = perSecond / float64(time.Second)
		k.tokenTime = time.Duration(float64(time.Second) / perSecond)
	}
	shards := keyedShards
	if maxKeys > 0 {
		shards = 1
		for shards*2 <= keyedShards && shards*2 <= maxKeys/rateKeysPerShard {
			shards *= 2
		}
	}
	k.mask = uint64(shards - 1)
	for i := range shards {
		s := &k.shards[i]
		s.m = make(map[string]*rateEntry)
		if maxKeys > 0 {
			s.max = maxKeys / shards
			if i < maxKeys%shards {
				s.max++
			}
		}
	}
	return k
}

// shard returns key's shard.
func (k *KeyedRate) shard(key string) *rateShard {
	return &k.shards[maphash.String(k.seed, key)&k.mask]
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
// next token. A new key always gets a token: its bucket starts full, and
// when the table is full it takes the place of the least recently used
// bucket. Every call, allowed or not, makes key the most recently used. A
// copy of a new key is stored, so the caller's string may point into a
// larger buffer. Allow does not allocate for a known key.
func (k *KeyedRate) Allow(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	if k.perNano == 0 {
		return true, 0
	}
	t := now.UnixNano()
	s := k.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[key]
	if e == nil {
		if s.max > 0 && s.n >= s.max {
			// Reuse the least recently used entry for the new key.
			e = s.Front()
			s.Remove(e)
			delete(s.m, e.Value.key)
		} else {
			e = new(rateEntry)
			s.n++
			k.keys.Add(1)
		}
		e.Value = keyBucket{key: strings.Clone(key), b: bucket{tokens: k.burst - 1, last: t}}
		s.m[e.Value.key] = e
		s.PushBack(e)
		return true, 0
	}
	s.MoveToBack(e)
	b := &e.Value.b
	tokens := k.refill(*b, t)
	if t > b.last {
		b.last = t
	}
	if tokens >= 1 {
		b.tokens = tokens - 1
		return true, 0
	}
	b.tokens = tokens
	return false, time.Duration(math.Ceil((1 - tokens) / k.perNano))
}

// sweepShard drops s's idle buckets and returns how many. It requires s.mu.
func (k *KeyedRate) sweepShard(s *rateShard, now int64) int {
	n := 0
	for key, e := range s.m {
		if k.refill(e.Value.b, now) >= k.burst {
			delete(s.m, key)
			s.Remove(e)
			n++
		}
	}
	if n > 0 {
		s.n -= n
		k.keys.Add(-int64(n))
	}
	return n
}

// Sweep drops every bucket that has refilled completely at now and returns
// how many it dropped. Dropping an idle bucket never changes a later answer.
// It locks one shard at a time.
func (k *KeyedRate) Sweep(now time.Time) int {
	t := now.UnixNano()
	n := 0
	for i := range int(k.mask) + 1 {
		s := &k.shards[i]
		s.mu.Lock()
		n += k.sweepShard(s, t)
		s.mu.Unlock()
	}
	return n
}

// Len returns the number of buckets held.
func (k *KeyedRate) Len() int { return int(k.keys.Load()) }
