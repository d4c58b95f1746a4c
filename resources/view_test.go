package resources

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestSessionIDAndPrefix(t *testing.T) {
	h := SessionHash("10.0.0.1:3000 abc")
	if len(h) != SessionHashLen || SessionID("10.0.0.1:3000 abc") != h[:SessionIDLen] {
		t.Fatalf("hash %q, id %q", h, SessionID("10.0.0.1:3000 abc"))
	}
	for _, c := range []struct {
		p  string
		ok bool
	}{
		{h[:SessionIDLen], true},
		{h, true},
		{h[:SessionIDLen+1], true}, // odd length
		{h[:SessionIDLen-1], false},
		{h + "0", false},
		{strings.ToUpper(h[:SessionIDLen]), false},
		{"zzzzzzzz", false},
		{"", false},
	} {
		if got := ValidIDPrefix(c.p); got != c.ok {
			t.Errorf("ValidIDPrefix(%q) = %v, want %v", c.p, got, c.ok)
		}
	}
}

func TestRegistryPage(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now})
	const n = 25
	for i := range n {
		mustOpen(t, r, fmt.Sprintf("10.0.0.1:3000 s%d", i), clk.Now())
	}
	clk.Advance(1500 * time.Millisecond)
	// Walk the pages, opening and evicting sessions between them: every
	// session live throughout is seen exactly once, in hash order.
	seen := map[string]int{}
	cursor, pages, last := "", 0, ""
	for pages < n {
		p := r.Page(cursor, 4, clk.Now())
		pages++
		if p.Total < 20 || p.Total > n+pages {
			t.Fatalf("page %d: total %d", pages, p.Total)
		}
		for _, v := range p.Sessions {
			if v.hash <= last {
				t.Fatalf("page %d: %s after %s", pages, v.hash, last)
			}
			last = v.hash
			seen[v.key]++
			age := 1.5
			if strings.Contains(v.key, " new") {
				age = 0
			}
			if v.ID != v.hash[:SessionIDLen] || v.Upstream != "10.0.0.1:3000" || v.AgeSeconds != age || v.IdleSeconds != age {
				t.Fatalf("view %+v", v)
			}
		}
		mustOpen(t, r, fmt.Sprintf("10.0.0.1:3000 new%d", pages), clk.Now())
		if p.Next == "" {
			break
		}
		if p.Next != last || len(p.Sessions) != 4 {
			t.Fatalf("page %d: next %q after %d sessions ending %q", pages, p.Next, len(p.Sessions), last)
		}
		cursor = p.Next
	}
	for i := range n {
		if k := fmt.Sprintf("10.0.0.1:3000 s%d", i); seen[k] != 1 {
			t.Errorf("%s seen %d times", k, seen[k])
		}
	}
	if p := r.Page("", 1000, clk.Now()); p.Next != "" || p.Total != r.Len() || len(p.Sessions) != r.Len() {
		t.Fatalf("one page of all: next %q total %d len %d, live %d", p.Next, p.Total, len(p.Sessions), r.Len())
	}
	if p := r.Page("", 0, clk.Now()); p.Next != "" || len(p.Sessions) != r.Len() {
		t.Fatalf("no limit: next %q len %d, live %d", p.Next, len(p.Sessions), r.Len())
	}
	if p := NewRegistry(RegistryConfig{}).Page("", 10, clk.Now()); p.Sessions == nil || p.Total != 0 {
		t.Fatalf("empty registry: %+v", p)
	}
}

func TestRegistryMatching(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now})
	a := mustOpen(t, r, "10.0.0.1:3000 a", clk.Now())
	mustOpen(t, r, "10.0.0.1:3000 b", clk.Now())
	found, page := r.Matching(SessionID(a.Key()), clk.Now())
	if len(found) != 1 || found[0] != a || page.Total != 1 || page.Sessions[0].ID != SessionID(a.Key()) {
		t.Fatalf("found %v, page %+v", found, page)
	}
	if found, page := r.Matching(SessionHash(a.Key()), clk.Now()); len(found) != 1 || page.Total != 1 {
		t.Fatalf("full hash: found %d", len(found))
	}
	if found, page := r.Matching("00000000000000000000", clk.Now()); len(found) != 0 || page.Total != 0 || page.Sessions != nil {
		t.Fatalf("no match: found %d, page %+v", len(found), page)
	}
}

// TestPageAllocBounded: a page of one session over 20,000 live ones
// builds one view, not a view of every session after the cursor: the
// memory a page takes follows its size (beside the snapshot Range takes
// and a digest per session), however many sessions live. Paging through
// them in small pages still sees each session once, in hash order.
func TestPageAllocBounded(t *testing.T) {
	clk := newFakeClock()
	r := NewRegistry(RegistryConfig{Clock: clk.Now})
	const n = 20_000
	for i := range n {
		mustOpen(t, r, fmt.Sprintf("10.0.0.1:3000 s%d", i), clk.Now())
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	p := r.Page("", 1, clk.Now())
	runtime.ReadMemStats(&after)
	if len(p.Sessions) != 1 || p.Total != n {
		t.Fatalf("page: %d sessions, total %d", len(p.Sessions), p.Total)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	// The snapshot of Range (8 B a session) and one SHA-256 a session are
	// unavoidable; building and sorting 100,000 views to return 1 is not.
	const bound = 2 << 20
	t.Logf("Page(limit=1) over %d sessions allocated %.1f MiB", n, float64(alloc)/(1<<20))
	if alloc > bound {
		t.Errorf("Page(limit=1) over %d sessions allocated %.1f MiB, want at most %d MiB", n, float64(alloc)/(1<<20), bound>>20)
	}
	seen, prev := 0, ""
	for cursor := ""; ; {
		p := r.Page(cursor, 997, clk.Now())
		for _, v := range p.Sessions {
			if v.hash <= prev {
				t.Fatalf("page order: %s after %s", v.hash, prev)
			}
			prev = v.hash
			seen++
		}
		if p.Next == "" {
			break
		}
		cursor = p.Next
		if seen > n {
			t.Fatal("paging does not end")
		}
	}
	if seen != n {
		t.Errorf("paged through %d sessions, want %d", seen, n)
	}
}
