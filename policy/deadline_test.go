package policy

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mcpgate/mcpgate/mcp"
)

func TestDeadlineFiresOnce(t *testing.T) {
	fired := make(chan struct{}, 2)
	d := NewDeadline(time.Millisecond, 0, func() { fired <- struct{}{} })
	<-fired
	if d.Step() != time.Millisecond {
		t.Fatalf("step %v", d.Step())
	}
	d.Stop()
	select {
	case <-fired:
		t.Fatal("fired twice")
	case <-time.After(20 * time.Millisecond):
	}
}

func TestDeadlineStopAndMaximum(t *testing.T) {
	fired := make(chan struct{}, 1)
	d := NewDeadline(time.Hour, 0, func() { fired <- struct{}{} })
	d.Extend()
	d.Stop()
	if time.Until(d.end) <= 9*time.Hour {
		t.Fatalf("maximum without one: %v from now, want 10 steps", time.Until(d.end))
	}
	// A maximum below the step is one step.
	d2 := NewDeadline(time.Hour, time.Minute, func() {})
	defer d2.Stop()
	if time.Until(d2.end) <= 59*time.Minute {
		t.Fatalf("maximum below a step: %v from now", time.Until(d2.end))
	}
	// At its maximum, Extend leaves a deadline to fire.
	d3 := NewDeadline(time.Millisecond, time.Millisecond, func() { fired <- struct{}{} })
	<-fired
	d3.Extend()
	select {
	case <-fired:
		t.Fatal("a deadline past its maximum was moved")
	case <-time.After(20 * time.Millisecond):
	}
}

// awaitingLog records the requests that expired.
type awaitingLog struct {
	mu  sync.Mutex
	ids []string
	ch  chan string
}

func newAwaitingLog() *awaitingLog { return &awaitingLog{ch: make(chan string, MaxAwaited)} }

func (l *awaitingLog) expire(c *Awaited) {
	l.mu.Lock()
	l.ids = append(l.ids, c.ID)
	l.mu.Unlock()
	c.Cancel("request timed out")
	l.ch <- c.ID
}

func TestAwaitingTakeForget(t *testing.T) {
	log := newAwaitingLog()
	a := NewAwaiting(log.expire)
	cancelled := 0
	cancel := func(string) { cancelled++ }
	ok := a.Add([]*Awaited{
		{ID: `"a"`, List: "tools/list"},
		{ID: `7`, Step: time.Hour, Cancel: cancel},
		{ID: `"c"`, Step: time.Hour, Cancel: cancel},
	}, 0)
	if !ok || a.Len() != 3 {
		t.Fatalf("add: %v, %d awaited", ok, a.Len())
	}
	// An id written another way by the upstream is the same id.
	c, expired := a.Take([]byte(`"\u0061"`))
	if c == nil || c.List != "tools/list" || expired {
		t.Fatalf("take a: %+v %v", c, expired)
	}
	if c, _ := a.Take([]byte(`"a"`)); c != nil {
		t.Fatal("taken twice")
	}
	if c, _ := a.Take([]byte(`"7"`)); c != nil {
		t.Fatal("the string \"7\" answered the number 7")
	}
	a.Forget([]string{`7`, `"nope"`})
	if a.Len() != 1 {
		t.Fatalf("after forget: %d awaited", a.Len())
	}
	a.Close()
	if a.Len() != 0 || !a.Add([]*Awaited{{ID: `1`, Step: time.Millisecond}}, 0) || a.Len() != 0 {
		t.Fatal("a closed table awaits")
	}
	time.Sleep(20 * time.Millisecond)
	if cancelled != 0 || len(log.ids) != 0 {
		t.Fatalf("forgotten or closed requests expired: %v", log.ids)
	}
}

func TestAwaitingExpire(t *testing.T) {
	log := newAwaitingLog()
	a := NewAwaiting(log.expire)
	var mu sync.Mutex
	var reasons []string
	cancel := func(r string) { mu.Lock(); reasons = append(reasons, r); mu.Unlock() }
	a.Add([]*Awaited{{ID: `1`, List: "tools/list", Subject: nobody{}, Step: time.Millisecond, Cancel: cancel}, {ID: `2`, Step: time.Hour, Cancel: cancel}}, 0)
	if id := <-log.ch; id != `1` {
		t.Fatalf("expired %s", id)
	}
	// Extending leaves the expired one expired.
	a.Extend()
	c, expired := a.Take([]byte(`1`))
	if c == nil || !expired {
		t.Fatalf("late answer: %+v expired %v", c, expired)
	}
	if c.Subject != nil {
		t.Fatal("an expired request keeps its subject, which its dropped answer does not need")
	}
	if c, expired := a.Take([]byte(`2`)); c == nil || expired {
		t.Fatalf("running deadline: %+v expired %v", c, expired)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reasons) != 1 || reasons[0] != "request timed out" {
		t.Fatalf("cancels %v", reasons)
	}
}

func TestAwaitingBound(t *testing.T) {
	log := newAwaitingLog()
	a := NewAwaiting(log.expire)
	cancel := func(string) {}
	var calls []*Awaited
	for i := range MaxAwaited - 2 {
		calls = append(calls, &Awaited{ID: strconv.Itoa(i), Step: time.Hour, Cancel: cancel})
	}
	calls = append(calls, &Awaited{ID: `"l1"`, List: "tools/list"}, &Awaited{ID: `"e"`, Step: time.Millisecond, Cancel: cancel})
	if !a.Add(calls, 0) || a.Len() != MaxAwaited {
		t.Fatalf("%d awaited", a.Len())
	}
	<-log.ch // "e" expired
	// The expired request makes room first, then the list.
	if !a.Add([]*Awaited{{ID: `"n1"`, Step: time.Hour, Cancel: cancel}}, 0) {
		t.Fatal("no room made from the expired request")
	}
	if c, _ := a.Take([]byte(`"e"`)); c != nil {
		t.Fatal("the expired request was kept")
	}
	if !a.Add([]*Awaited{{ID: `"n2"`, Step: time.Hour, Cancel: cancel}}, 0) {
		t.Fatal("no room made from the list")
	}
	if c, _ := a.Take([]byte(`"l1"`)); c != nil {
		t.Fatal("the list was kept")
	}
	// Only running deadlines left: nothing is dropped for newcomers.
	if a.Add([]*Awaited{{ID: `"n3"`, List: "prompts/list"}}, 0) {
		t.Fatal("running deadlines were dropped")
	}
	if c, _ := a.Take([]byte(`"n3"`)); c != nil {
		t.Fatal("a refused request was added")
	}
	a.Close()

	// A request whose id is awaited replaces the older one.
	b := NewAwaiting(log.expire)
	defer b.Close()
	b.Add([]*Awaited{{ID: `0`, Step: time.Hour, Cancel: cancel}}, 0)
	if !b.Add([]*Awaited{{ID: `0`, List: "tools/list"}}, 0) || b.Len() != 1 {
		t.Fatalf("a request with an awaited id: %d awaited", b.Len())
	}
	if c, _ := b.Take([]byte(`0`)); c == nil || c.List != "tools/list" || c.Step != 0 {
		t.Fatalf("replaced: %+v", c)
	}
}

// TestDeadlinesFor: the first tool rule with a timeout that matches a
// call's tool sets its deadline, else request_timeout, also for a call
// whose id follows the peek; a batch has the largest deadline of its
// requests; notifications and responses have none.
func TestDeadlinesFor(t *testing.T) {
	d := &Deadlines{Request: 10 * time.Second, Tools: []ToolTimeout{
		{Pattern: "slow_*", Timeout: 30 * time.Second},
		{Pattern: "slow_x", Timeout: time.Second},
		{Pattern: "capped"}, // a tool rule without a timeout
	}}
	tool := func(name string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"` + name + `"}}`
	}
	cases := []struct {
		method, body string // every method POST
		want         time.Duration
	}{
		{"POST", tool("slow_a"), 30 * time.Second},
		{"POST", tool("slow_x"), 30 * time.Second},
		{"POST", tool("capped"), 10 * time.Second},
		{"POST", `{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"slow_a"}}`, 10 * time.Second},
		{"POST", `{"jsonrpc":"2.0","method":"notifications/initialized"}`, 0},
		{"POST", `{"jsonrpc":"2.0","id":1,"result":{}}`, 0},
		{"POST", "[" + tool("slow_a") + "]", 30 * time.Second},
		{"POST", `[{"jsonrpc":"2.0","id":2,"method":"ping"},` + tool("capped") + "]", 10 * time.Second},
		{"POST", `[{"jsonrpc":"2.0","id":2,"method":"ping"},` + tool("slow_a") + `,{"jsonrpc":"2.0","method":"notifications/initialized"}]`, 30 * time.Second},
		{"POST", `[{"jsonrpc":"2.0","method":"notifications/initialized"}]`, 0},
	}
	for _, c := range cases {
		var p mcp.Peek
		if err := mcp.ParseEnvelope([]byte(c.body), true, &p); err != nil {
			t.Fatalf("%s: %v", c.body, err)
		}
		if got := d.For(p.Messages, p.Batch); got != c.want {
			t.Errorf("%s %s: %v, want %v", c.method, c.body, got, c.want)
		}
	}
	// The head of a call whose id follows it.
	var late mcp.Peek
	head := `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"slow_a","arguments":{"pad":"xxxx`
	if err := mcp.ParseEnvelope([]byte(head), false, &late); err != nil || late.First().ID != "" {
		t.Fatalf("head of a late-id call: %v, id %q", err, late.First().ID)
	}
	if got := d.For(late.Messages, late.Batch); got != 30*time.Second {
		t.Errorf("a call whose id follows the peek: %v, want 30s", got)
	}
	d.Request = 0
	if got := d.For(envelopes(t, tool("capped")), false); got != 0 {
		t.Errorf("without request_timeout: %v", got)
	}
	if got := d.For(envelopes(t, `[{"jsonrpc":"2.0","id":2,"method":"ping"},`+tool("slow_x")+"]"), true); got != 30*time.Second {
		t.Errorf("without request_timeout, a batch with a tool of 30s: %v", got)
	}
}

// TestDeadlinesAny: deadlines exist with request_timeout or a tool's
// timeout, not with tool rules that have none.
func TestDeadlinesAny(t *testing.T) {
	for _, c := range []struct {
		d    Deadlines
		want bool
	}{
		{Deadlines{}, false},
		{Deadlines{Tools: []ToolTimeout{{Pattern: "x"}}}, false},
		{Deadlines{Request: time.Second}, true},
		{Deadlines{Tools: []ToolTimeout{{Pattern: "x"}, {Pattern: "y", Timeout: time.Second}}}, true},
	} {
		if got := c.d.Any(); got != c.want {
			t.Errorf("%+v: Any %v", c.d, got)
		}
	}
}
