package mcp

import (
	"sync"
	"sync/atomic"
	"time"
)

// MaxCachedTokens bounds a TokenCache (a few hundred bytes per entry);
// reaching it empties the cache.
const MaxCachedTokens = 8192

// TokenCache remembers the session tokens a Sealer opened, so the
// requests of a session after its first skip the decoding and the AEAD.
// Only tokens that opened are cached, entries are never modified, and the
// expiry is checked on every hit, so a hit answers exactly what opening the
// token again would. A cache belongs with one Sealer: other keys need a new
// one. The zero value is ready to use and safe for concurrent use.
type TokenCache struct {
	m sync.Map // token string → *Session
	n atomic.Int64
}

// Get returns the session of a cached token that is not expired at now.
func (c *TokenCache) Get(tok string, now time.Time) *Session {
	v, ok := c.m.Load(tok)
	if !ok {
		return nil
	}
	s := v.(*Session)
	if !now.Before(s.Expires) {
		c.m.Delete(tok)
		return nil
	}
	return s
}

// Put caches an opened token.
func (c *TokenCache) Put(tok string, s *Session) {
	if c.n.Add(1) > MaxCachedTokens {
		c.m.Clear()
		c.n.Store(1)
	}
	c.m.Store(tok, s)
}
