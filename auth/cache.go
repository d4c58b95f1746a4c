package auth

import (
	"crypto/sha256"
	"strings"
	"sync"
	"time"
)

// MaxVerified bounds the verified JWTs a Verifier remembers.
const MaxVerified = 10000

// verifiedCache remembers the principals of JWTs already verified, by the
// SHA-256 of the token and the audiences it was checked against, until the
// token expires: a client sends the same token with every request for its
// lifetime, and a signature costs tens of microseconds to verify. At most
// MaxVerified entries; expired ones go first when it is full.
type verifiedCache struct {
	mu sync.Mutex
	m  map[[32]byte]*Principal
}

// cacheKey hashes a token with the audiences it is checked against.
func cacheKey(token string, audiences []string) [32]byte {
	h := sha256.New()
	h.Write([]byte(token))
	h.Write([]byte{0})
	h.Write([]byte(strings.Join(audiences, "\x00")))
	var k [32]byte
	h.Sum(k[:0])
	return k
}

func (c *verifiedCache) get(k [32]byte, now time.Time) *Principal {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.m[k]
	if p == nil {
		return nil
	}
	if !now.Before(p.Expires) {
		delete(c.m, k)
		return nil
	}
	return p
}

func (c *verifiedCache) put(k [32]byte, p *Principal, now time.Time) {
	if p.Expires.IsZero() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[[32]byte]*Principal)
	}
	if len(c.m) >= MaxVerified {
		for key, q := range c.m {
			if !now.Before(q.Expires) {
				delete(c.m, key)
			}
		}
		for key := range c.m {
			if len(c.m) < MaxVerified {
				break
			}
			delete(c.m, key)
		}
	}
	c.m[k] = p
}
