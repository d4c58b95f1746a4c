package caddymodule

import (
	"strconv"
	"testing"
	"time"

	"github.com/mcpgate/mcpgate/mcp"
)

func TestTokenCache(t *testing.T) {
	var c tokenCache
	now := time.Unix(1000, 0)
	s := &mcp.Session{Upstream: "u", UpstreamID: "x", Expires: now.Add(time.Minute)}
	if c.get("t", now) != nil {
		t.Fatal("hit in an empty cache")
	}
	c.put("t", s)
	if c.get("t", now) != s {
		t.Fatal("miss after put")
	}
	if c.get("t", now.Add(time.Minute)) != nil {
		t.Fatal("an expired token hit")
	}
	if c.get("t", now) != nil {
		t.Fatal("an expired entry stayed")
	}
	for i := range maxCachedTokens + 10 {
		c.put(strconv.Itoa(i), s)
	}
	n := 0
	c.m.Range(func(any, any) bool { n++; return true })
	if n > maxCachedTokens {
		t.Fatalf("%d entries, bound %d", n, maxCachedTokens)
	}
}
