package admission

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"
)

// batchOf returns a batch request of session s1 and client c1 with weight n
// and the given tools/call names, of the class of its most expensive member.
func batchOf(class Class, n int, tools ...string) Request {
	return Request{Class: class, InSession: true, ClientKey: "c1", SessionKey: "s1", Weight: n, Tools: tools}
}

// pings returns n copies of "" for a batch of n members that are not
// tools/call, for readability of the tables below.
func repeat(name string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = name
	}
	return out
}

// held is a snapshot of the slots a Controller holds.
type held struct {
	proxy, global, session, client int
	tools                          []int // per tool rule with a limit, in order
}

func snapshot(c *Controller) held {
	h := held{proxy: c.InFlight()}
	if c.global != nil {
		h.global = c.global.InFlight()
	}
	if c.sessions != nil {
		h.session = c.sessions.InFlight("s1")
	}
	if c.clients != nil {
		h.client = c.clients.InFlight("c1")
	}
	for _, s := range c.ToolStats() {
		h.tools = append(h.tools, s.InFlight)
	}
	return h
}

func (h held) equal(o held) bool {
	if h.proxy != o.proxy || h.global != o.global || h.session != o.session || h.client != o.client || len(h.tools) != len(o.tools) {
		return false
	}
	for i := range h.tools {
		if h.tools[i] != o.tools[i] {
			return false
		}
	}
	return true
}

// TestControllerBatch admits, in turn, the steps of each case on a fresh
// Controller, holding every admitted ticket, and checks each step's outcome
// and the slots held after it; at the end it releases everything and
// checks that nothing is left.
func TestControllerBatch(t *testing.T) {
	countdown := []ToolRule{{Pattern: "countdown", MaxInflight: 1}}
	type step struct {
		req    Request
		refuse bool
		reason Reason
		after  held // slots held after the step
	}
	for _, tc := range []struct {
		name   string
		cfg    Config
		global int // the process-wide limit; 0: none (counting only)
		steps  []step
	}{
		{
			name: "batch with a busy tool is refused",
			cfg:  Config{MaxInflight: 16, Tools: countdown},
			steps: []step{
				{req: Request{Class: ClassHeavy, InSession: true, SessionKey: "s2", Tool: "countdown"},
					after: held{proxy: 1, global: 1, tools: []int{1}}},
				// [ping, tools/call countdown]
				{req: batchOf(ClassHeavy, 2, "countdown"), refuse: true, reason: ReasonToolLimit,
					after: held{proxy: 1, global: 1, tools: []int{1}}},
			},
		},
		{
			name: "batch in a busy session is refused",
			cfg:  Config{SessionMaxInflight: 1, Tools: countdown},
			steps: []step{
				{req: Request{Class: ClassHeavy, InSession: true, SessionKey: "s1", Tool: "countdown"},
					after: held{proxy: 1, global: 1, session: 1, tools: []int{1}}},
				{req: batchOf(ClassHeavy, 2, "countdown"), refuse: true, reason: ReasonSessionQuota,
					after: held{proxy: 1, global: 1, session: 1, tools: []int{1}}},
			},
		},
		{
			name: "calls of one tool take one slot each",
			cfg:  Config{MaxInflight: 16, Tools: []ToolRule{{Pattern: "search*", MaxInflight: 2}, {Pattern: "*", MaxInflight: 8}}},
			steps: []step{
				{req: batchOf(ClassHeavy, 3, repeat("search", 3)...), refuse: true, reason: ReasonToolLimit,
					after: held{tools: []int{0, 0}}},
				{req: batchOf(ClassHeavy, 3, "search", "search_web", "fetch"),
					after: held{proxy: 3, global: 3, tools: []int{2, 1}}},
				{req: batchOf(ClassHeavy, 2, "fetch", "search"), refuse: true, reason: ReasonToolLimit,
					after: held{proxy: 3, global: 3, tools: []int{2, 1}}},
				{req: batchOf(ClassHeavy, 7, repeat("fetch", 7)...),
					after: held{proxy: 10, global: 10, tools: []int{2, 8}}},
			},
		},
		{
			name: "cheap batch is not exempt from the per-proxy limit",
			cfg:  Config{MaxInflight: 16, QueueSize: 64, QueueTimeout: time.Second},
			steps: []step{
				{req: batchOf(ClassCheap, 256), refuse: true, reason: ReasonQueueFull},
				{req: batchOf(ClassCheap, 17), refuse: true, reason: ReasonQueueFull},
				{req: batchOf(ClassCheap, 16), after: held{proxy: 16, global: 16}},
				{req: batchOf(ClassCheap, 2), refuse: true, reason: ReasonQueueFull, after: held{proxy: 16, global: 16}},
				// A single ping still takes the cheap path, above the limit.
				{req: batchOf(ClassCheap, 1), after: held{proxy: 17, global: 17}},
				{req: batchOf(ClassCheap, 0), after: held{proxy: 18, global: 18}},
			},
		},
		{
			name: "cheap batch counts against the session and client",
			cfg:  Config{SessionMaxInflight: 1, ClientMaxInflight: 1},
			steps: []step{
				{req: batchOf(ClassCheap, 2), refuse: true, reason: ReasonSessionQuota},
				{req: Request{Class: ClassCheap, ClientKey: "c1", Weight: 2}, refuse: true, reason: ReasonClientQuota},
			},
		},
		{
			name: "per-client weight",
			cfg:  Config{ClientMaxInflight: 4},
			steps: []step{
				{req: batchOf(ClassList, 5), refuse: true, reason: ReasonClientQuota},
				{req: batchOf(ClassList, 3), after: held{proxy: 3, global: 3, client: 3}},
				{req: batchOf(ClassList, 2), refuse: true, reason: ReasonClientQuota, after: held{proxy: 3, global: 3, client: 3}},
				{req: batchOf(ClassHeavy, 1), after: held{proxy: 4, global: 4, client: 4}},
				{req: batchOf(ClassHeavy, 1), refuse: true, reason: ReasonClientQuota, after: held{proxy: 4, global: 4, client: 4}},
			},
		},
		{
			name: "per-session weight",
			cfg:  Config{SessionMaxInflight: 3, ClientMaxInflight: 10},
			steps: []step{
				{req: batchOf(ClassList, 4), refuse: true, reason: ReasonSessionQuota},
				{req: batchOf(ClassList, 2), after: held{proxy: 2, global: 2, session: 2, client: 2}},
				{req: batchOf(ClassList, 2), refuse: true, reason: ReasonSessionQuota, after: held{proxy: 2, global: 2, session: 2, client: 2}},
				{req: batchOf(ClassHeavy, 0), after: held{proxy: 3, global: 3, session: 3, client: 3}},
			},
		},
		{
			name: "a refused batch gives back the slots it took",
			cfg:  Config{MaxInflight: 4, SessionMaxInflight: 10, ClientMaxInflight: 10, Tools: []ToolRule{{Pattern: "*", MaxInflight: 10}}},
			steps: []step{
				{req: batchOf(ClassHeavy, 3, "a", "b"), after: held{proxy: 3, global: 3, session: 3, client: 3, tools: []int{2}}},
				// Session, client and tool fit; the per-proxy limit does not.
				{req: batchOf(ClassHeavy, 2, "a"), refuse: true, reason: ReasonQueueFull,
					after: held{proxy: 3, global: 3, session: 3, client: 3, tools: []int{2}}},
			},
		},
		{
			name:   "process-wide limit",
			cfg:    Config{MaxInflight: 100},
			global: 10,
			steps: []step{
				{req: batchOf(ClassHeavy, 6), after: held{proxy: 6, global: 6}},
				{req: batchOf(ClassHeavy, 5), refuse: true, reason: ReasonCapacity, after: held{proxy: 6, global: 6}},
				{req: batchOf(ClassHeavy, 4), after: held{proxy: 10, global: 10}},
				// The cheap path is refused by it too.
				{req: batchOf(ClassCheap, 1), refuse: true, reason: ReasonCapacity, after: held{proxy: 10, global: 10}},
			},
		},
		{
			name: "weight is at least the number of tools",
			cfg:  Config{MaxInflight: 100, Tools: []ToolRule{{Pattern: "x", MaxInflight: 0}, {Pattern: "*", MaxInflight: 10}}},
			steps: []step{
				{req: batchOf(ClassHeavy, 0, "a", "b", "x"), after: held{proxy: 3, global: 3, tools: []int{2}}},
				// Tool counts as one more member.
				{req: Request{Class: ClassHeavy, Tool: "a", Tools: []string{"a"}}, after: held{proxy: 5, global: 5, tools: []int{4}}},
				// An empty name counts as a member but matches no rule.
				{req: Request{Class: ClassHeavy, Tools: []string{"", "b"}}, after: held{proxy: 7, global: 7, tools: []int{5}}},
			},
		},
		{
			name: "a single tool in Tools is a single message",
			cfg:  Config{MaxInflight: 100, Tools: []ToolRule{{Pattern: "a", MaxInflight: 1}}},
			steps: []step{
				{req: Request{Class: ClassHeavy, Tools: []string{"a"}}, after: held{proxy: 1, global: 1, tools: []int{1}}},
				{req: Request{Class: ClassHeavy, Weight: 1, Tools: []string{"a"}}, refuse: true, reason: ReasonToolLimit,
					after: held{proxy: 1, global: 1, tools: []int{1}}},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			global := NewLimiter(tc.global, 0, 0)
			c := mustNew(t, tc.cfg, global)
			var tickets []Ticket
			for i, s := range tc.steps {
				tk, r, waited := c.Admit(context.Background(), &s.req)
				switch {
				case s.refuse && r == nil:
					t.Fatalf("step %d: %+v admitted", i, s.req)
				case s.refuse && r.Reason != s.reason:
					t.Fatalf("step %d: refused for %v, want %v", i, r.Reason, s.reason)
				case s.refuse && tk != (Ticket{}):
					t.Fatalf("step %d: refusal with a non-zero ticket", i)
				case !s.refuse && r != nil:
					t.Fatalf("step %d: %+v refused: %v", i, s.req, r.Reason)
				case waited != 0:
					t.Fatalf("step %d: waited %v", i, waited)
				}
				if r == nil {
					tickets = append(tickets, tk)
				}
				want := s.after
				if want.tools == nil {
					want.tools = make([]int, len(c.ToolStats()))
				}
				if got := snapshot(c); !got.equal(want) {
					t.Fatalf("step %d: holding %+v, want %+v", i, got, want)
				}
			}
			for i := range tickets {
				tickets[i].Release(time.Millisecond, false)
				tickets[i].Release(time.Millisecond, false) // no-op
			}
			checkIdle(t, c)
			var refusals uint64
			for _, n := range c.Refusals() {
				refusals += n
			}
			want := 0
			for _, s := range tc.steps {
				if s.refuse {
					want++
				}
			}
			if refusals != uint64(want) {
				t.Fatalf("%d refusals counted, want %d", refusals, want)
			}
		})
	}
}

// TestControllerConcurrentToolCalls sends four concurrent calls of a tool
// limited to one, in one session limited to one: one is admitted.
func TestControllerConcurrentToolCalls(t *testing.T) {
	c := mustNew(t, Config{SessionMaxInflight: 1, Tools: []ToolRule{{Pattern: "countdown", MaxInflight: 1}}}, nil)
	for _, sameSession := range []bool{true, false} {
		var wg sync.WaitGroup
		start := make(chan struct{})
		done := make(chan struct{})
		results := make(chan *Refusal, 4)
		for i := range 4 {
			wg.Go(func() {
				req := Request{Class: ClassHeavy, InSession: true, SessionKey: "s1", Tool: "countdown"}
				if !sameSession {
					req.SessionKey = "s" + strconv.Itoa(i)
				}
				<-start
				tk, r, _ := c.Admit(context.Background(), &req)
				results <- r
				<-done // hold the slot until every call is decided
				tk.Release(0, false)
			})
		}
		close(start)
		admitted := 0
		for range 4 {
			if r := <-results; r == nil {
				admitted++
			} else if r.Reason != ReasonSessionQuota && r.Reason != ReasonToolLimit {
				t.Errorf("refused for %v", r.Reason)
			}
		}
		close(done)
		wg.Wait()
		if admitted != 1 {
			t.Fatalf("same session %v: %d calls admitted, want 1", sameSession, admitted)
		}
		checkIdle(t, c)
	}
}

// TestControllerBatchNewSession checks that a batch opening a session
// spends a token of the client session rate.
func TestControllerBatchNewSession(t *testing.T) {
	c := mustNew(t, Config{ClientSessionRate: 0.5}, nil)
	now := epoch
	c.now = func() time.Time { return now }
	req := Request{Class: ClassCheap, NewSession: true, ClientKey: "c1", Weight: 2}
	release(admit(t, c, req))
	checkRefusal(t, refused(t, c, req), ReasonClientQuota, 429, 2*time.Second)
	checkIdle(t, c)
}

func TestControllerAllowNewSession(t *testing.T) {
	if r := mustNew(t, Config{}, nil).AllowNewSession("c1"); r != nil {
		t.Fatalf("refused without a rate: %v", r.Reason)
	}
	c := mustNew(t, Config{ClientSessionRate: 0.5}, nil)
	now := epoch
	c.now = func() time.Time { return now }
	if r := c.AllowNewSession("c1"); r != nil {
		t.Fatalf("first session refused: %v", r.Reason)
	}
	checkRefusal(t, c.AllowNewSession("c1"), ReasonClientQuota, 429, 2*time.Second)
	// The same bucket as Admit's new sessions.
	checkRefusal(t, refused(t, c, initReq), ReasonClientQuota, 429, 2*time.Second)
	if r := c.AllowNewSession(""); r != nil {
		t.Fatal("refused an empty key")
	}
	if r := c.AllowNewSession("c2"); r != nil {
		t.Fatal("refused another client")
	}
	now = now.Add(2 * time.Second)
	if r := c.AllowNewSession("c1"); r != nil {
		t.Fatal("refused after refill")
	}
	if n := c.Refusals()[ReasonClientQuota]; n != 2 {
		t.Fatalf("%d refusals counted, want 2", n)
	}
}

// TestControllerBatchNotSampled checks that a batch does not feed the
// adaptive limit.
func TestControllerBatchNotSampled(t *testing.T) {
	c := mustNew(t, Config{
		MaxInflight: 50,
		Adaptive:    &AdaptiveConfig{InitialLimit: 40, MinLimit: 4, WindowSamples: 1, UpdateInterval: -1, ProbeInterval: -1},
	}, nil)
	for range 3 {
		tk := admit(t, c, batchOf(ClassHeavy, 2))
		tk.Release(time.Second, true)
	}
	if c.Limit() != 40 {
		t.Fatalf("batches moved the limit to %d", c.Limit())
	}
	checkIdle(t, c)
}

// TestControllerBatchAllocs checks that a batch allocates a bounded amount
// and that single messages still do not.
func TestControllerBatchAllocs(t *testing.T) {
	ctx := context.Background()
	c, reqs := benchController(t, benchAll)
	batch := reqs[0]
	batch.Tool = ""
	batch.Weight, batch.Tools = 4, []string{"search", "db_read", "search"}
	if n := testing.AllocsPerRun(1000, func() {
		tk, r, _ := c.Admit(ctx, &batch)
		if r != nil {
			t.Fatal("refused")
		}
		tk.Release(time.Millisecond, false)
	}); n > 1 {
		t.Errorf("batch: %v allocs", n)
	}
}

// BenchmarkControllerBatch measures an admitted batch's Admit and Release
// with every limit configured and none reached.
func BenchmarkControllerBatch(b *testing.B) {
	for _, bc := range []struct {
		name  string
		tools []string
	}{
		{"NoTools", nil},
		{"ThreeCalls", []string{"search", "db_read", "search"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c, reqs := benchController(b, benchAll)
			req := reqs[0]
			req.Tool = ""
			req.Weight, req.Tools = 4, bc.tools
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
}
