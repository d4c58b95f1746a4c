package auth

import (
	"crypto/sha256"
	"sync"
	"time"
)

// MaxVerified bounds the verified JWTs a Verifier remembers.
const MaxVerified = 10000

// ttlCache remembers values by a 32-byte key, each until a time of its
// own, holding at most a given number: when it is full,
// expired entries go first, then arbitrary ones. The zero value is empty
// and ready for use; it is safe for concurrent use. A full cache of live
// entries drops a sixteenth of them at once, so that the sweep for
// expired ones runs once per that many new entries.
//
// A Verifier keeps the principals of JWTs already verified, by the
// SHA-256 of the token and the audiences it was checked against, until the
// token expires (at most MaxVerified): a client sends the same token with
// every request for its lifetime, and a signature costs tens of
// microseconds to verify. An Introspector keeps its results likewise,
// and its refusals in another.
type ttlCache[V any] struct {
	mu sync.Mutex
	m  map[[32]byte]cached[V]
}

// principalCache keeps principals.
type principalCache = ttlCache[*Principal]

type cached[V any] struct {
	v     V
	until time.Time
}

// cacheKey hashes a token with the audiences it is checked against.
func cacheKey(token string, audiences []string) [32]byte {
	// One buffer on the stack for a token of usual size, so that a cache
	// hit does not copy the token to the heap.
	var scratch [2048]byte
	b := append(scratch[:0], token...)
	for _, a := range audiences {
		b = append(b, 0)
		b = append(b, a...)
	}
	return sha256.Sum256(b)
}

// get returns the value kept under k, and false when there is none or
// it expired at now (it is then dropped).
func (c *ttlCache[V]) get(k [32]byte, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if ok && !now.Before(e.until) {
		delete(c.m, k)
		ok = false
	}
	return e.v, ok
}

// put keeps v under k until until, first making room when the cache
// holds limit entries at now.
func (c *ttlCache[V]) put(k [32]byte, v V, until, now time.Time, limit int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[[32]byte]cached[V])
	}
	if len(c.m) >= limit {
		for key, e := range c.m {
			if !now.Before(e.until) {
				delete(c.m, key)
			}
		}
		// Room for a sixteenth more, so that a cache full of live
		// entries is not swept again at each new one.
		for key := range c.m {
			if len(c.m) < limit-limit/16 {
				break
			}
			delete(c.m, key)
		}
	}
	c.m[k] = cached[V]{v: v, until: until}
}
