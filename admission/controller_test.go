package admission

import (
	"context"
	"math"
	"math/rand/v2"
	"path"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func mustNew(t testing.TB, cfg Config, global *Limiter) *Controller {
	t.Helper()
	c, err := New(cfg, global)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// admit calls Admit and fails the test on a refusal.
func admit(t testing.TB, c *Controller, req Request) Ticket {
	t.Helper()
	tk, r, _ := c.Admit(context.Background(), &req)
	if r != nil {
		t.Fatalf("request %+v refused: %v", req, r.Reason)
	}
	return tk
}

// release releases a ticket with no latency.
func release(tk Ticket) { tk.Release(0, false) }

// refused calls Admit and fails the test unless it refuses.
func refused(t testing.TB, c *Controller, req Request) *Refusal {
	t.Helper()
	tk, r, _ := c.Admit(context.Background(), &req)
	if r == nil {
		tk.Release(0, false)
		t.Fatalf("request %+v admitted", req)
	}
	if tk != (Ticket{}) {
		t.Fatalf("refusal came with a non-zero ticket %+v", tk)
	}
	return r
}

// checkRefusal checks a refusal's fields.
func checkRefusal(t *testing.T, r *Refusal, reason Reason, status int, retry time.Duration) {
	t.Helper()
	if r.Reason != reason || r.Status != status || r.RetryAfter != retry ||
		r.RetryAfterHeader != strconv.Itoa(int(retry/time.Second)) {
		t.Fatalf("refusal %+v, want %v, %d, Retry-After %v", *r, reason, status, retry)
	}
}

// checkIdle fails unless c holds no slot anywhere.
func checkIdle(t *testing.T, c *Controller) {
	t.Helper()
	if c.InFlight() != 0 || c.Queued() != 0 {
		t.Fatalf("per-proxy InFlight() = %d, Queued() = %d", c.InFlight(), c.Queued())
	}
	if g := c.Global(); g != nil && g.InFlight() != 0 {
		t.Fatalf("global InFlight() = %d", g.InFlight())
	}
	if c.sessions != nil && c.sessions.Len() != 0 {
		t.Fatalf("%d sessions in flight", c.sessions.Len())
	}
	if c.clients != nil && c.clients.Len() != 0 {
		t.Fatalf("%d clients in flight", c.clients.Len())
	}
	for _, s := range c.ToolStats() {
		if s.InFlight != 0 || s.Queued != 0 {
			t.Fatalf("tool %s: InFlight %d, Queued %d", s.Pattern, s.InFlight, s.Queued)
		}
	}
	if !c.Idle() {
		t.Fatal("Idle() false with no slot held")
	}
}

// TestControllerIdle checks Idle before, during and after requests that
// hold the handler's slot and, besides it, a session's, a client's or a
// tool's.
func TestControllerIdle(t *testing.T) {
	cfg := Config{MaxInflight: 5, QueueSize: 2, QueueTimeout: time.Second, SessionMaxInflight: 2, ClientMaxInflight: 3,
		Tools: []ToolRule{{Pattern: "slow", MaxInflight: 1}}}
	for _, req := range []Request{
		{Class: ClassHeavy},
		{Class: ClassHeavy, SessionKey: "s1"},
		{Class: ClassHeavy, ClientKey: "c1"},
		{Class: ClassHeavy, Tool: "slow", Weight: 1},
	} {
		c := mustNew(t, cfg, nil)
		checkIdle(t, c)
		tk := admit(t, c, req)
		if c.Idle() {
			t.Errorf("Idle() with %+v admitted", req)
		}
		release(tk)
		checkIdle(t, c)
	}
}

var (
	heavy   = Request{Class: ClassHeavy, InSession: true, ClientKey: "c1", SessionKey: "s1"}
	initReq = Request{Class: ClassCheap, NewSession: true, ClientKey: "c1"}
	notify  = Request{Class: ClassCheap, InSession: true, ClientKey: "c1", SessionKey: "s1"}
)

func TestControllerNewErrors(t *testing.T) {
	for _, cfg := range []Config{
		{MaxInflight: -1},
		{QueueSize: -1},
		{QueueTimeout: -1},
		{ClientMaxInflight: -1},
		{ClientSessionRate: -1},
		{ClientSessionRate: math.Inf(1)},
		{ClientSessionRate: math.NaN()},
		{ClientSessionBurst: -1},
		{SessionMaxInflight: -1},
		{MaxKeys: -1},
		{MaxInflight: 4, Adaptive: &AdaptiveConfig{MinLimit: 5}},
		{Tools: []ToolRule{{Pattern: "", MaxInflight: 1}}},
		{Tools: []ToolRule{{Pattern: "a[", MaxInflight: 1}}},
		{Tools: []ToolRule{{Pattern: "a", MaxInflight: -1}}},
		{Tools: []ToolRule{{Pattern: "a", MaxInflight: 1, Timeout: -1}}},
	} {
		if _, err := New(cfg, nil); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		} else {
			t.Logf("%v", err)
		}
	}
	if _, err := New(Config{}, nil); err != nil {
		t.Fatalf("New with nothing configured: %v", err)
	}
}

func TestReasonStrings(t *testing.T) {
	seen := map[string]bool{}
	for r := range Reason(NumReasons) {
		s := r.String()
		if s == "unknown" || seen[s] {
			t.Errorf("Reason(%d).String() = %q", r, s)
		}
		seen[s] = true
	}
	if Reason(NumReasons).String() != "unknown" {
		t.Error("out-of-range reason has a name")
	}
}

// TestSharedRefusalCounts: Controllers given the same Config.Counts count
// their refusals, those of Admit and those of Refuse alike, into it, and
// a Controller built later sees the counts of those before it.
func TestSharedRefusalCounts(t *testing.T) {
	var counts RefusalCounts
	global := NewLimiter(1, 0, 0)
	old := mustNew(t, Config{Counts: &counts}, global)
	tk := admit(t, old, heavy)
	checkRefusal(t, refused(t, old, heavy), ReasonCapacity, 503, time.Second)
	reloaded := mustNew(t, Config{Counts: &counts}, global)
	checkRefusal(t, refused(t, reloaded, heavy), ReasonCapacity, 503, time.Second)
	reloaded.Refuse(ReasonLevel)
	tk.Release(0, false)
	var want [NumReasons]uint64
	want[ReasonCapacity], want[ReasonLevel] = 2, 1
	if got := counts.Load(); got != want {
		t.Fatalf("shared counts %v, want %v", got, want)
	}
	if old.Refusals() != want || reloaded.Refusals() != want {
		t.Fatalf("Refusals() %v and %v, want the shared %v", old.Refusals(), reloaded.Refusals(), want)
	}
	if own := mustNew(t, Config{}, nil); own.Refusals() != ([NumReasons]uint64{}) {
		t.Fatalf("a Controller without Counts starts at %v", own.Refusals())
	}
	counts.Add(NumReasons) // out of range: counted as capacity
	if got := counts.Load()[ReasonCapacity]; got != 3 {
		t.Fatalf("capacity %d after an out-of-range Add, want 3", got)
	}
}

func TestControllerRefusals(t *testing.T) {
	t.Run("global", func(t *testing.T) {
		global := NewLimiter(1, 0, 0)
		c := mustNew(t, Config{QueueTimeout: 2500 * time.Millisecond}, global)
		other := mustNew(t, Config{}, global) // another proxy sharing the global limit
		tk := admit(t, other, heavy)
		checkRefusal(t, refused(t, c, heavy), ReasonCapacity, 503, 3*time.Second)
		// The bypass path is subject to the global limit too.
		checkRefusal(t, refused(t, c, notify), ReasonCapacity, 503, 3*time.Second)
		tk.Release(0, false)
		checkIdle(t, c)
		checkIdle(t, other)
		if n := c.Refusals()[ReasonCapacity]; n != 2 {
			t.Fatalf("%d capacity refusals counted, want 2", n)
		}
	})
	t.Run("queue full", func(t *testing.T) {
		c := mustNew(t, Config{MaxInflight: 1}, nil)
		tk := admit(t, c, heavy)
		checkRefusal(t, refused(t, c, heavy), ReasonQueueFull, 503, time.Second)
		tk.Release(0, false)
		checkIdle(t, c)
	})
	t.Run("queue timeout", func(t *testing.T) {
		c := mustNew(t, Config{MaxInflight: 1, QueueSize: 1, QueueTimeout: time.Millisecond}, nil)
		tk := admit(t, c, heavy)
		checkRefusal(t, refused(t, c, heavy), ReasonQueueTimeout, 503, time.Second)
		tk.Release(0, false)
		checkIdle(t, c)
	})
	t.Run("canceled", func(t *testing.T) {
		c := mustNew(t, Config{MaxInflight: 1, QueueSize: 1, QueueTimeout: 90 * time.Second}, nil)
		tk := admit(t, c, heavy)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan *Refusal)
		go func() {
			_, r, _ := c.Admit(ctx, &heavy)
			done <- r
		}()
		waitQueued(t, c.proxy, 1)
		cancel()
		checkRefusal(t, <-done, ReasonCanceled, 503, 90*time.Second)
		tk.Release(0, false)
		checkIdle(t, c)
	})
	t.Run("client inflight", func(t *testing.T) {
		c := mustNew(t, Config{ClientMaxInflight: 1}, nil)
		tk := admit(t, c, heavy)
		other := heavy
		other.SessionKey = "s2"
		checkRefusal(t, refused(t, c, other), ReasonClientQuota, 429, time.Second)
		other.ClientKey = "c2"
		release(admit(t, c, other))
		other.ClientKey = "" // no client key: no per-client limit
		release(admit(t, c, other))
		tk.Release(0, false)
		checkIdle(t, c)
	})
	t.Run("session inflight", func(t *testing.T) {
		c := mustNew(t, Config{SessionMaxInflight: 1}, nil)
		tk := admit(t, c, heavy)
		checkRefusal(t, refused(t, c, heavy), ReasonSessionQuota, 429, time.Second)
		other := heavy
		other.SessionKey = "s2"
		release(admit(t, c, other))
		other.SessionKey = heavy.SessionKey
		other.InSession = false // the session key counts only in a session
		release(admit(t, c, other))
		tk.Release(0, false)
		checkIdle(t, c)
	})
	t.Run("keyed table full", func(t *testing.T) {
		c := mustNew(t, Config{ClientMaxInflight: 5, MaxKeys: 1}, nil)
		tk := admit(t, c, heavy)
		other := heavy
		other.ClientKey = "c2"
		checkRefusal(t, refused(t, c, other), ReasonCapacity, 503, time.Second)
		tk.Release(0, false)
		release(admit(t, c, other))
		checkIdle(t, c)
	})
	t.Run("client session rate", func(t *testing.T) {
		c := mustNew(t, Config{ClientSessionRate: 0.5}, nil)
		now := time.Unix(1_700_000_000, 0)
		c.now = func() time.Time { return now }
		release(admit(t, c, initReq))
		checkRefusal(t, refused(t, c, initReq), ReasonClientQuota, 429, 2*time.Second)
		now = now.Add(1500 * time.Millisecond) // 0.5s to the next token
		checkRefusal(t, refused(t, c, initReq), ReasonClientQuota, 429, time.Second)
		// Only new sessions spend tokens.
		release(admit(t, c, heavy))
		release(admit(t, c, Request{Class: ClassCheap, InSession: true, ClientKey: "c1", SessionKey: "s1"}))
		other := initReq
		other.ClientKey = "c2"
		release(admit(t, c, other))
		now = now.Add(600 * time.Millisecond)
		release(admit(t, c, initReq))
		checkIdle(t, c)
		if n := c.Refusals()[ReasonClientQuota]; n != 2 {
			t.Fatalf("%d client refusals counted, want 2", n)
		}
	})
	t.Run("client session rate, long retry", func(t *testing.T) {
		c := mustNew(t, Config{ClientSessionRate: 1.0 / 7200}, nil) // one per two hours
		now := time.Unix(1_700_000_000, 0)
		c.now = func() time.Time { return now }
		release(admit(t, c, initReq))
		checkRefusal(t, refused(t, c, initReq), ReasonClientQuota, 429, 7200*time.Second)
		now = now.Add(7199*time.Second + time.Millisecond)
		checkRefusal(t, refused(t, c, initReq), ReasonClientQuota, 429, time.Second)
	})
	t.Run("tool without queue", func(t *testing.T) {
		c := mustNew(t, Config{Tools: []ToolRule{{Pattern: "search*", MaxInflight: 1}}}, nil)
		call := heavy
		call.Tool = "search_web"
		tk := admit(t, c, call)
		checkRefusal(t, refused(t, c, call), ReasonToolLimit, 503, time.Second)
		call.Tool = "fetch"
		release(admit(t, c, call))
		tk.Release(0, false)
		checkIdle(t, c)
		if n := c.Refusals(); n[ReasonToolLimit] != 1 || n[ReasonQueueFull] != 0 {
			t.Fatalf("refusals %v", n)
		}
	})
	t.Run("tool queue", func(t *testing.T) {
		c := mustNew(t, Config{Tools: []ToolRule{{Pattern: "search*", MaxInflight: 1, Timeout: 2100 * time.Millisecond}}}, nil)
		call := heavy
		call.Tool = "search_web"
		tk := admit(t, c, call)
		// One waiter fills the rule's queue (its size is MaxInflight).
		done := make(chan Ticket)
		go func() { done <- admit(t, c, call) }()
		waitQueued(t, c.tools[0].lim, 1)
		if s := c.ToolStats(); len(s) != 1 || s[0] != (ToolStat{"search*", 1, 1, 1}) {
			t.Fatalf("ToolStats() = %+v", s)
		}
		// A call waiting for its tool holds no per-proxy slot.
		if c.InFlight() != 1 {
			t.Fatalf("InFlight() = %d with one call running and one waiting for its tool", c.InFlight())
		}
		checkRefusal(t, refused(t, c, call), ReasonToolLimit, 503, 3*time.Second)
		tk.Release(0, false)
		tk = <-done
		tk.Release(0, false)
		checkIdle(t, c)
	})
}

// TestControllerReleasesEarlierSlots refuses at each step in turn with every
// limit configured and checks that the slots of the earlier steps are back.
func TestControllerReleasesEarlierSlots(t *testing.T) {
	global := NewLimiter(3, 0, 0)
	c := mustNew(t, Config{
		MaxInflight:        1,
		ClientMaxInflight:  1,
		SessionMaxInflight: 1,
		ClientSessionRate:  1000,
		Tools:              []ToolRule{{Pattern: "slow", MaxInflight: 1}},
	}, global)

	call := Request{Class: ClassHeavy, InSession: true, ClientKey: "c9", SessionKey: "s9", Tool: "slow"}

	// Per-proxy refusal (last step): the holder is another client's list
	// request, so only the per-proxy limit is reached.
	holder := admit(t, c, Request{Class: ClassList, InSession: true, ClientKey: "c1", SessionKey: "s1"})
	checkRefusal(t, refused(t, c, call), ReasonQueueFull, 503, time.Second)
	if c.sessions.InFlight("s9") != 0 || c.clients.InFlight("c9") != 0 || global.InFlight() != 1 ||
		c.tools[0].lim.InFlight() != 0 || c.InFlight() != 1 {
		t.Fatalf("after a per-proxy refusal: session %d, client %d, global %d, tool %d, proxy %d",
			c.sessions.InFlight("s9"), c.clients.InFlight("c9"), global.InFlight(), c.tools[0].lim.InFlight(), c.InFlight())
	}
	holder.Release(0, false)
	checkIdle(t, c)

	// Tool refusal: another client holds the tool.
	other := call
	other.ClientKey, other.SessionKey = "c1", "s1"
	holder = admit(t, c, other)
	checkRefusal(t, refused(t, c, call), ReasonToolLimit, 503, time.Second)
	if c.sessions.InFlight("s9") != 0 || c.clients.InFlight("c9") != 0 || global.InFlight() != 1 || c.InFlight() != 1 {
		t.Fatal("after a tool refusal: slots left")
	}
	holder.Release(0, false)
	checkIdle(t, c)

	// Global refusal: three other proxies' requests hold the global limit.
	var held []Ticket
	for range 3 {
		held = append(held, admit(t, mustNew(t, Config{}, global), heavy))
	}
	checkRefusal(t, refused(t, c, call), ReasonCapacity, 503, time.Second)
	if c.sessions.Len() != 0 || c.clients.Len() != 0 {
		t.Fatal("after a global refusal: keyed slots left")
	}
	for i := range held {
		held[i].Release(0, false)
	}
	checkIdle(t, c)

	// Client refusal: the session slot taken before is returned.
	other = call
	other.SessionKey, other.Tool = "s1", ""
	holder = admit(t, c, other)
	checkRefusal(t, refused(t, c, call), ReasonClientQuota, 429, time.Second)
	if c.sessions.InFlight("s9") != 0 || c.sessions.Len() != 1 {
		t.Fatal("after a client refusal: the session slot is left")
	}
	holder.Release(0, false)
	checkIdle(t, c)

	want := [NumReasons]uint64{ReasonQueueFull: 1, ReasonToolLimit: 1, ReasonCapacity: 1, ReasonClientQuota: 1}
	if got := c.Refusals(); got != want {
		t.Fatalf("Refusals() = %v, want %v", got, want)
	}
}

func TestTicketRelease(t *testing.T) {
	var zero Ticket
	zero.Release(time.Second, true) // no-op

	global := NewLimiter(0, 0, 0)
	c := mustNew(t, Config{MaxInflight: 2, SessionMaxInflight: 2, ClientMaxInflight: 2,
		Tools: []ToolRule{{Pattern: "*", MaxInflight: 2}}}, global)
	call := heavy
	call.Tool = "x"
	tk := admit(t, c, call)
	if c.InFlight() != 1 || global.InFlight() != 1 || c.sessions.InFlight("s1") != 1 ||
		c.clients.InFlight("c1") != 1 || c.tools[0].lim.InFlight() != 1 {
		t.Fatal("slots not taken")
	}
	tk.Release(0, false)
	tk.Release(0, false) // the same variable again: no-op
	checkIdle(t, c)
}

// TestControllerCheapBypass checks that cheap messages other than a new
// session's initialize are counted but neither queued nor refused by the
// per-proxy, per-client and per-session limits.
func TestControllerCheapBypass(t *testing.T) {
	c := mustNew(t, Config{MaxInflight: 1, QueueSize: 1, QueueTimeout: time.Hour,
		ClientMaxInflight: 1, SessionMaxInflight: 1, ClientSessionRate: 1}, NewLimiter(10, 0, 0))
	tk := admit(t, c, heavy)
	// The per-proxy limit, the client's and the session's are all reached.
	for _, req := range []Request{
		notify,
		{Class: ClassCheap, ClientKey: "c1"}, // outside a session (ping, stateless)
	} {
		n := admit(t, c, req)
		if c.InFlight() != 2 || c.Global().InFlight() != 2 {
			t.Fatalf("a cheap message is not counted: InFlight() = %d", c.InFlight())
		}
		if c.sessions.InFlight("s1") != 1 || c.clients.InFlight("c1") != 1 {
			t.Fatal("a cheap message took a per-session or per-client slot")
		}
		n.Release(0, false)
	}
	// A new session's initialize is not a bypass: the client is at its cap.
	checkRefusal(t, refused(t, c, initReq), ReasonClientQuota, 429, time.Second)
	tk.Release(0, false)
	checkIdle(t, c)
}

// TestControllerPriorityOrder queues requests of every kind behind one slot
// and checks that they are admitted by priority.
func TestControllerPriorityOrder(t *testing.T) {
	c := mustNew(t, Config{MaxInflight: 1, QueueSize: 8, QueueTimeout: hang}, nil)
	holder := admit(t, c, heavy)

	reqs := []Request{
		{Class: ClassHeavy},                                                     // PriorityHeavyNew
		{Class: ClassCheap, NewSession: true},                                   // PriorityCheapNew
		{Class: ClassHeavy, InSession: true},                                    // PriorityHeavySession
		{Class: ClassList},                                                      // PriorityListNew
		{Class: ClassList, InSession: true},                                     // PriorityListSession
		{Class: ClassHeavy, InSession: true},                                    // PriorityHeavySession, newer
		{Class: ClassList, Tool: "not-limited"},                                 // PriorityListNew, newer
		{Class: ClassHeavy, InSession: false},                                   // PriorityHeavyNew, newer
		{Class: ClassCheap, NewSession: true, InSession: false, ClientKey: "x"}, // PriorityCheapNew, newer
	}
	// Queue size 8: the ninth, a PriorityCheapNew, evicts the oldest
	// PriorityHeavyNew (request 0). The queue is draining (nobody has
	// waited half the timeout), so within a priority the oldest goes first.
	want := []int{4, 2, 5, 1, 8, 3, 6, 7}

	out := make(chan int, len(reqs))
	refusedOut := make(chan int, len(reqs))
	release := make([]chan struct{}, len(reqs))
	var wg sync.WaitGroup
	for i := range reqs {
		release[i] = make(chan struct{})
		wg.Go(func() {
			tk, r, _ := c.Admit(context.Background(), &reqs[i])
			if r != nil {
				refusedOut <- i
				return
			}
			out <- i
			<-release[i]
			tk.Release(0, false)
		})
		if i < 8 {
			waitQueued(t, c.proxy, i+1)
		}
	}
	if i := <-refusedOut; i != 0 {
		t.Fatalf("request %d was evicted, want 0", i)
	}
	waitQueued(t, c.proxy, 8)
	holder.Release(0, false)
	for _, w := range want {
		var got int
		select {
		case got = <-out:
		case <-time.After(hang):
			t.Fatal("no request admitted")
		}
		if got != w {
			t.Fatalf("admitted %d, want %d (order %v)", got, w, want)
		}
		close(release[got])
	}
	wg.Wait()
	checkIdle(t, c)
	if n := c.Refusals()[ReasonQueueFull]; n != 1 {
		t.Fatalf("%d queue-full refusals, want 1", n)
	}
}

func TestToolRuleMatching(t *testing.T) {
	patterns := []string{
		"search", "search*", "*_admin", "*", "db/*", "*/query", "s?arch", "[a-c]*",
		`esc\*`, "a*b", "", "*.*", "x/y", "**",
	}
	names := []string{
		"", "search", "search_web", "search/web", "web_admin", "a/web_admin", "db/query",
		"db/a/query", "sxarch", "apple", "esc*", "escx", "ab", "a/b", "axxb", "file.txt", "x/y",
	}
	for _, p := range patterns {
		r := toolRule{pattern: p}
		r.kind, r.lit = compileRule(p)
		for _, n := range names {
			want, _ := path.Match(p, n)
			if got := r.match(n); got != want {
				t.Errorf("pattern %q (kind %d), name %q: match %v, path.Match %v", p, r.kind, n, got, want)
			}
		}
	}

	c := mustNew(t, Config{Tools: []ToolRule{
		{Pattern: "db_*", MaxInflight: 1},
		{Pattern: "db_read", MaxInflight: 5}, // shadowed by the rule above
		{Pattern: "safe_*", MaxInflight: 0},  // exemption
		{Pattern: "*", MaxInflight: 2},
	}}, nil)
	for _, tc := range []struct {
		name, rule string
	}{
		{"db_read", "db_*"},
		{"db_write", "db_*"},
		{"safe_echo", "safe_*"},
		{"search", "*"},
		{"ns/tool", ""}, // '*' does not match '/'
	} {
		got := ""
		if r := c.matchTool(tc.name); r != nil {
			got = r.pattern
		}
		if got != tc.rule {
			t.Errorf("tool %q matched rule %q, want %q", tc.name, got, tc.rule)
		}
	}

	// First match wins: db_read is capped by db_* at 1.
	call := heavy
	call.Tool = "db_read"
	tk := admit(t, c, call)
	refused(t, c, call)
	// The exemption is not limited at all, and the catch-all is independent.
	call.Tool = "safe_echo"
	var held []Ticket
	for range 5 {
		held = append(held, admit(t, c, call))
	}
	call.Tool = "search"
	held = append(held, admit(t, c, call), admit(t, c, call))
	refused(t, c, call)
	call.Tool = "" // not a tools/call: no tool rule applies
	held = append(held, admit(t, c, call))
	stats := c.ToolStats()
	if len(stats) != 3 || stats[0].InFlight != 1 || stats[1].InFlight != 0 || stats[2].InFlight != 2 || stats[2].Pattern != "*" {
		t.Fatalf("ToolStats() = %+v", stats)
	}
	tk.Release(0, false)
	for i := range held {
		held[i].Release(0, false)
	}
	checkIdle(t, c)
}

func TestControllerAdaptive(t *testing.T) {
	c := mustNew(t, Config{
		MaxInflight: 50,
		QueueSize:   4,
		Adaptive:    &AdaptiveConfig{InitialLimit: 40, MinLimit: 4, WindowSamples: 1, UpdateInterval: -1, ProbeInterval: -1},
	}, nil)
	if c.Adaptive().Config().MaxLimit != 50 {
		t.Fatalf("MaxLimit %d, want MaxInflight", c.Adaptive().Config().MaxLimit)
	}
	if c.Limit() != 40 {
		t.Fatalf("Limit() = %d, want the initial limit", c.Limit())
	}
	// Dropped requests halve the limit at every window.
	for range 3 {
		tk := admit(t, c, heavy)
		tk.Release(time.Second, true)
	}
	if c.Limit() >= 40 || c.Limit() != c.Adaptive().Limit() {
		t.Fatalf("Limit() = %d after drops, adaptive %d", c.Limit(), c.Adaptive().Limit())
	}
	// Cheap messages and refusals are not sampled.
	before := c.Limit()
	for range 3 {
		tk := admit(t, c, notify)
		tk.Release(time.Second, true)
	}
	if c.Limit() != before {
		t.Fatalf("a cheap message moved the limit from %d to %d", before, c.Limit())
	}
	checkIdle(t, c)

	// Without MaxInflight the adaptive limit keeps its own ceiling.
	c = mustNew(t, Config{Adaptive: &AdaptiveConfig{}}, nil)
	if c.Adaptive().Config().MaxLimit != 1000 || c.Limit() != 20 {
		t.Fatalf("MaxLimit %d, Limit() %d", c.Adaptive().Config().MaxLimit, c.Limit())
	}
}

// TestControllerStress admits random requests from 8 goroutines against
// small limits of every kind and checks the caps and that everything
// returns to zero.
func TestControllerStress(t *testing.T) {
	const goroutines, iterations = 8, 1000
	const sessionCap, clientCap, toolCap = 2, 3, 1
	global := NewLimiter(12, 0, 0)
	c := mustNew(t, Config{
		MaxInflight:        4,
		QueueSize:          3,
		QueueTimeout:       200 * time.Microsecond,
		Adaptive:           &AdaptiveConfig{InitialLimit: 4, MinLimit: 1, MaxLimit: 6, WindowSamples: 5, UpdateInterval: -1},
		ClientMaxInflight:  clientCap,
		ClientSessionRate:  1e5,
		SessionMaxInflight: sessionCap,
		Tools: []ToolRule{
			{Pattern: "slow_*", MaxInflight: toolCap, Timeout: 100 * time.Microsecond},
			{Pattern: "*", MaxInflight: 3},
		},
		MaxKeys: 6,
	}, global)
	other := mustNew(t, Config{MaxInflight: 2}, global) // another proxy sharing the global limit

	var mu sync.Mutex
	held := map[string]int{}
	take := func(key string, n, limit int) {
		mu.Lock()
		defer mu.Unlock()
		held[key] += n
		if held[key] > limit {
			t.Errorf("%s: %d in flight, cap %d", key, held[key], limit)
		}
	}
	drop := func(key string, n int) {
		mu.Lock()
		held[key] -= n
		mu.Unlock()
	}
	var admitted, refusedN atomic.Int64
	tools := []string{"", "slow_a", "slow_b", "fast", "ns/x"}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for range iterations {
				ctl := c
				if r.IntN(8) == 0 {
					ctl = other
				}
				req := Request{
					Class:     Class(r.IntN(NumClasses)),
					InSession: r.IntN(3) > 0,
					ClientKey: "c" + strconv.Itoa(r.IntN(4)),
					Tool:      tools[r.IntN(len(tools))],
				}
				if req.InSession {
					req.SessionKey = "s" + strconv.Itoa(r.IntN(6))
				} else if req.Class == ClassCheap {
					req.NewSession = true
				}
				if r.IntN(4) == 0 { // a batch
					req.Weight = 1 + r.IntN(3)
					for range r.IntN(3) {
						req.Tools = append(req.Tools, tools[r.IntN(len(tools))])
					}
				}
				ctx, cancel := context.WithCancel(context.Background())
				if r.IntN(10) == 0 {
					time.AfterFunc(time.Duration(r.IntN(50))*time.Microsecond, cancel)
				}
				func() {
					defer cancel()
					tk, ref, _ := ctl.Admit(ctx, &req)
					if ref != nil {
						refusedN.Add(1)
						return
					}
					admitted.Add(1)
					start := time.Now()
					failed := r.IntN(10) == 0
					defer func() { tk.Release(time.Since(start), failed) }()
					tool, single := req.single()
					bypass := single && req.Class == ClassCheap && !req.NewSession
					if ctl == c && !bypass {
						n := req.weight()
						if req.InSession {
							take("session "+req.SessionKey, n, sessionCap)
							defer drop("session "+req.SessionKey, n)
						}
						take("client "+req.ClientKey, n, clientCap)
						defer drop("client "+req.ClientKey, n)
						slow := 0
						names := req.Tools
						if single {
							names = []string{tool}
						} else if req.Tool != "" {
							names = append(names, req.Tool)
						}
						for _, name := range names {
							if strings.HasPrefix(name, "slow_") {
								slow++
							}
						}
						take("tool slow_*", slow, toolCap)
						defer drop("tool slow_*", slow)
					}
					if r.IntN(2) == 0 {
						runtime.Gosched()
					}
				}()
			}
		})
	}
	wg.Wait()
	checkIdle(t, c)
	checkIdle(t, other)
	if admitted.Load() == 0 || refusedN.Load() == 0 {
		t.Fatalf("admitted %d, refused %d: the test exercises nothing", admitted.Load(), refusedN.Load())
	}
	var sum uint64
	for _, n := range c.Refusals() {
		sum += n
	}
	for _, n := range other.Refusals() {
		sum += n
	}
	if sum != uint64(refusedN.Load()) {
		t.Fatalf("refusals counted %d, seen %d", sum, refusedN.Load())
	}
	t.Logf("admitted %d, refused %d: %v", admitted.Load(), refusedN.Load(), c.Refusals())
}

func TestControllerAllocs(t *testing.T) {
	ctx := context.Background()
	for _, set := range []int{benchGlobalProxy, benchTools, benchAll} {
		c, reqs := benchController(t, set)
		for i := range reqs {
			if n := testing.AllocsPerRun(1000, func() {
				tk, r, _ := c.Admit(ctx, &reqs[i])
				if r != nil {
					t.Fatal("refused")
				}
				tk.Release(time.Millisecond, false)
			}); n != 0 {
				t.Errorf("limit set %d, request %d: %v allocs", set, i, n)
			}
		}
	}
	for name, rc := range refuseCases(t) {
		// A client-quota refusal after the session check stores the
		// session's key, then drops it: one copy of the key.
		allowed := 0.0
		if name == "client_quota" {
			allowed = 1
		}
		if n := testing.AllocsPerRun(1000, func() {
			if _, r, _ := rc.c.Admit(ctx, &rc.req); r == nil {
				t.Fatal("admitted")
			}
		}); n > allowed {
			t.Errorf("refusal %s: %v allocs", name, n)
		}
	}
}

// Limit sets for benchController.
const (
	benchGlobalProxy = iota // the global and per-proxy limits
	benchTools              // and tool rules
	benchAll                // and every per-client and per-session limit
)

// benchController returns a Controller and requests that reach none of its
// limits, configured with the limits of set. With benchAll the client and
// session keys of the requests are kept in flight by a held ticket, as in a
// busy session, so the keyed tables do not store a key on every call.
func benchController(t testing.TB, set int) (*Controller, []Request) {
	cfg := Config{MaxInflight: 1 << 20, QueueSize: 64, QueueTimeout: time.Second}
	all := set == benchAll
	if all {
		cfg.ClientMaxInflight = 1 << 20
		cfg.ClientSessionRate = 1e9
		cfg.ClientSessionBurst = 1 << 20
		cfg.SessionMaxInflight = 1 << 20
	}
	if set >= benchTools {
		cfg.Tools = []ToolRule{
			{Pattern: "db_*", MaxInflight: 8, Timeout: time.Second},
			{Pattern: "*", MaxInflight: 1 << 20, Timeout: time.Second},
		}
	}
	c := mustNew(t, cfg, NewLimiter(1<<20, 0, 0))
	req := Request{Class: ClassHeavy, InSession: true, ClientKey: "203.0.113.7", SessionKey: "3f2a9c1e-5b7d-4e8f-a1c2-9d0e6b4f8a21", Tool: "search"}
	if all {
		held := req
		held.Tool = ""
		admit(t, c, held) // never released
	}
	return c, []Request{req}
}

type refuseCase struct {
	c   *Controller
	req Request
}

// refuseCases returns a Controller and a request refused by it for each
// check of Admit.
func refuseCases(t testing.TB) map[string]refuseCase {
	out := map[string]refuseCase{}
	req := heavy

	c := mustNew(t, Config{MaxInflight: 10}, NewLimiter(1, 0, 0))
	admit(t, c, req)
	out["global"] = refuseCase{c, req}

	c = mustNew(t, Config{MaxInflight: 1}, nil)
	admit(t, c, req)
	out["queue_full"] = refuseCase{c, req}

	c = mustNew(t, Config{ClientMaxInflight: 1, SessionMaxInflight: 10, MaxInflight: 10}, NewLimiter(10, 0, 0))
	other := req
	other.SessionKey = "s2"
	admit(t, c, other)
	out["client_quota"] = refuseCase{c, req}

	c = mustNew(t, Config{SessionMaxInflight: 1, MaxInflight: 10}, NewLimiter(10, 0, 0))
	admit(t, c, req)
	out["session_quota"] = refuseCase{c, req}

	c = mustNew(t, Config{ClientSessionRate: 0.001}, nil)
	admit(t, c, initReq)
	out["client_rate"] = refuseCase{c, initReq}

	c = mustNew(t, Config{MaxInflight: 10, Tools: []ToolRule{{Pattern: "*", MaxInflight: 1}}}, NewLimiter(10, 0, 0))
	call := req
	call.Tool = "search"
	admit(t, c, call)
	out["tool_limit"] = refuseCase{c, call}
	return out
}

// BenchmarkControllerAdmitRelease measures an admitted request's Admit and
// Release with no limit reached.
func BenchmarkControllerAdmitRelease(b *testing.B) {
	for _, bc := range []struct {
		name     string
		set      int
		adaptive bool
	}{
		{"GlobalProxy", benchGlobalProxy, false},
		{"GlobalProxyTools", benchTools, false},
		{"All", benchAll, false},
		{"AllAdaptive", benchAll, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c, reqs := benchController(b, bc.set)
			if bc.adaptive {
				c.adaptive = NewAdaptive(AdaptiveConfig{InitialLimit: 1000, MaxLimit: 1000})
				c.adaptive.Attach(c.proxy)
			}
			req := &reqs[0]
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				tk, r, _ := c.Admit(ctx, req)
				if r != nil {
					b.Fatal("refused")
				}
				tk.Release(time.Millisecond, false)
			}
		})
	}
	b.Run("AllParallel", func(b *testing.B) {
		c, reqs := benchController(b, benchAll)
		ctx := context.Background()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			req := reqs[0]
			for pb.Next() {
				tk, r, _ := c.Admit(ctx, &req)
				if r != nil {
					b.Error("refused")
					return
				}
				tk.Release(time.Millisecond, false)
			}
		})
	})
	b.Run("NewKeys", func(b *testing.B) {
		// Every call stores and drops a client and a session key: the
		// cost of a client's or session's only request in flight.
		c, reqs := benchController(b, benchAll)
		req := reqs[0]
		req.ClientKey, req.SessionKey = "198.51.100.1", "other-session"
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			tk, r, _ := c.Admit(ctx, &req)
			if r != nil {
				b.Fatal("refused")
			}
			tk.Release(time.Millisecond, false)
		}
	})
}

// BenchmarkControllerRefuse measures a refusal at each check.
func BenchmarkControllerRefuse(b *testing.B) {
	ctx := context.Background()
	cases := refuseCases(b)
	for _, name := range []string{"client_rate", "session_quota", "client_quota", "global", "tool_limit", "queue_full"} {
		rc := cases[name]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, r, _ := rc.c.Admit(ctx, &rc.req); r == nil {
					b.Fatal("admitted")
				}
			}
		})
	}
}
