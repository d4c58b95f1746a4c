package caddymodule

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpgate/mcpgate/mcp"
)

// maxCachedTokens bounds a handler's token cache (a few hundred bytes per
// entry); reaching it empties the cache.
const maxCachedTokens = 8192

// tokenCache remembers the session tokens a handler opened, so the
// requests of a session after its first skip the decoding and the AEAD.
// Only tokens that opened are cached, entries are never modified, and the
// expiry is checked on every hit, so a hit answers exactly what opening the
// token again would. A handler's cache lives as long as its sealer: a
// reload with other keys starts a new one.
type tokenCache struct {
	m sync.Map // token string → *mcp.Session
	n atomic.Int64
}

// get returns the session of a cached token that is not expired at now.
func (c *tokenCache) get(tok string, now time.Time) *mcp.Session {
	v, ok := c.m.Load(tok)
	if !ok {
		return nil
	}
	s := v.(*mcp.Session)
	if !now.Before(s.Expires) {
		c.m.Delete(tok)
		return nil
	}
	return s
}

// put caches an opened token.
func (c *tokenCache) put(tok string, s *mcp.Session) {
	if c.n.Add(1) > maxCachedTokens {
		c.m.Clear()
		c.n.Store(1)
	}
	c.m.Store(tok, s)
}
