package mcp

import (
	"strconv"
	"testing"
	"time"
)

func TestTokenCache(t *testing.T) {
	var c TokenCache
	now := time.Unix(1000, 0)
	s := &Session{Upstream: "u", UpstreamID: "x", Expires: now.Add(time.Minute)}
	if c.Get("t", now) != nil {
		t.Fatal("hit in an empty cache")
	}
	c.Put("t", s)
	if c.Get("t", now) != s {
		t.Fatal("miss after put")
	}
	if c.Get("t", now.Add(time.Minute)) != nil {
		t.Fatal("an expired token hit")
	}
	if c.Get("t", now) != nil {
		t.Fatal("an expired entry stayed")
	}
	for i := range MaxCachedTokens + 10 {
		c.Put(strconv.Itoa(i), s)
	}
	n := 0
	c.m.Range(func(any, any) bool { n++; return true })
	if n > MaxCachedTokens {
		t.Fatalf("%d entries, bound %d", n, MaxCachedTokens)
	}
}
