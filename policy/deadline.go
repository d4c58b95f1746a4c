package policy

import (
	"path"
	"sync"
	"time"

	"github.com/mcpgate/mcpgate/mcp"
)

// A request's deadline (request_timeout, or its tool's timeout) bounds its
// whole life after admission. Each progress notification for it moves the
// deadline a full step from then, never past a maximum from the start.

// DefaultMaxTimeoutFactor is the maximum of a deadline without one, in
// steps.
const DefaultMaxTimeoutFactor = 10

// CodeRequestTimeout is the JSON-RPC error code of a request whose
// deadline passed.
const CodeRequestTimeout = -32001

// TimeoutMessage is the error message of a request whose deadline, of
// step, passed before an answer came.
func TimeoutMessage(step time.Duration) string {
	return "request timed out: no answer within " + step.String()
}

// Deadline is a request's deadline: fire runs once step has passed
// without an Extend. Its methods are safe to call concurrently.
type Deadline struct {
	step  time.Duration
	end   time.Time
	timer *time.Timer
}

// NewDeadline arms a deadline of step from now, which Extend moves up to
// maxTotal from now (DefaultMaxTimeoutFactor steps when maxTotal is 0 or
// less, and never less than one step). fire runs on a goroutine of its
// own.
func NewDeadline(step, maxTotal time.Duration, fire func()) *Deadline {
	if maxTotal <= 0 {
		maxTotal = DefaultMaxTimeoutFactor * step
	}
	return &Deadline{step: step, end: time.Now().Add(max(maxTotal, step)), timer: time.AfterFunc(step, fire)}
}

// Step is the deadline's step.
func (d *Deadline) Step() time.Duration { return d.step }

// Extend moves the deadline a full step from now, within its maximum. A
// deadline at its maximum, or stopped, is left alone; one that fired
// fires again at the new time, so callers extend only a deadline that has
// not fired.
func (d *Deadline) Extend() {
	if next := min(d.step, time.Until(d.end)); next > 0 {
		d.timer.Reset(next)
	}
}

// Stop disarms the deadline.
func (d *Deadline) Stop() { d.timer.Stop() }

// MaxAwaited bounds the requests of one session whose answers Awaiting
// holds.
const MaxAwaited = 256

// Awaiting holds the requests of one session whose answers the proxy
// awaits on the session's stream (the legacy HTTP+SSE transport answers
// every POST there): a list to filter for its caller, a call with a
// deadline. At most MaxAwaited; each with a deadline owns a timer until
// its answer is taken, it is forgotten, or Close.
type Awaiting struct {
	mu       sync.Mutex
	pending  map[string]*Awaited // by mcp.IDKey of the request's id
	closed   bool
	onExpire func(*Awaited)
}

// Awaited is one request whose answer is awaited.
type Awaited struct {
	// ID is the request's raw JSON id, as the client wrote it.
	ID string
	// List is the list method whose result is filtered for Subject, or "".
	List    string
	Subject Subject
	// Step is the request's deadline step; 0 for none.
	Step time.Duration
	// Cancel tells the upstream the proxy gave the request up; called
	// once its deadline passed. Needed with a Step.
	Cancel func(reason string)

	key      string
	deadline *Deadline
	expired  bool
}

// NewAwaiting returns an empty table. onExpire runs, on a goroutine of its
// own, for a request whose deadline passed while its answer was awaited;
// the request stays in the table, expired, so its late answer is known
// for what it is, without its Subject and, once onExpire returned, its
// Cancel.
func NewAwaiting(onExpire func(*Awaited)) *Awaiting {
	return &Awaiting{pending: map[string]*Awaited{}, onExpire: onExpire}
}

// Add awaits the answers of calls, arming the deadline of each that has a
// step, within maxTotal (see NewDeadline). A request whose id is already
// awaited replaces the older one. It reports false, adding none, when the
// table has no room for them all: it first drops requests whose deadline
// passed, then lists without a deadline (their results can still be told
// apart by their shape). A closed table adds nothing and reports true.
func (a *Awaiting) Add(calls []*Awaited, maxTotal time.Duration) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || len(calls) == 0 {
		return true
	}
	if len(a.pending)+len(calls) > MaxAwaited && !a.makeRoomLocked(len(calls)) {
		return false
	}
	for _, c := range calls {
		c.key = mcp.IDKey(c.ID)
		if old := a.pending[c.key]; old != nil && old.deadline != nil {
			old.deadline.Stop()
		}
		a.pending[c.key] = c
		if c.Step > 0 {
			c.deadline = NewDeadline(c.Step, maxTotal, func() { a.expire(c) })
		}
	}
	return true
}

// makeRoomLocked makes room for n more requests, dropping expired ones,
// then those without a deadline, and reports whether there is room.
func (a *Awaiting) makeRoomLocked(n int) bool {
	for _, droppable := range []func(*Awaited) bool{
		func(c *Awaited) bool { return c.expired },
		func(c *Awaited) bool { return c.deadline == nil },
	} {
		for key, c := range a.pending {
			if len(a.pending)+n <= MaxAwaited {
				return true
			}
			if droppable(c) {
				delete(a.pending, key)
			}
		}
	}
	return len(a.pending)+n <= MaxAwaited
}

// Len is the number of requests awaited.
func (a *Awaiting) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.pending)
}

// Has reports whether a request with the raw id (written any way, see
// mcp.IDKey) is in the table, its deadline passed or not.
func (a *Awaiting) Has(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pending[mcp.IDKey(id)] != nil
}

// Running reports whether a request with the raw id (written any way,
// see mcp.IDKey) is in the table and its deadline has not passed.
func (a *Awaiting) Running(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.pending[mcp.IDKey(id)]
	return c != nil && !c.expired
}

// Forget stops awaiting the requests with these raw ids: their answer
// will not come (the upstream refused their POST), or the client gave
// them up.
func (a *Awaiting) Forget(ids []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		a.dropLocked(a.pending[mcp.IDKey(id)])
	}
}

// dropLocked removes c, when not nil, and stops its deadline.
func (a *Awaiting) dropLocked(c *Awaited) {
	if c == nil {
		return
	}
	delete(a.pending, c.key)
	if c.deadline != nil {
		c.deadline.Stop()
	}
}

// Take returns, and stops awaiting, the request an answer with id (raw
// JSON, written as the upstream writes it) answers, or nil; expired
// reports that its deadline had passed (its error was sent).
func (a *Awaiting) Take(id []byte) (c *Awaited, expired bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c = a.pending[mcp.IDKey(string(id))]
	if c == nil {
		return nil, false
	}
	a.dropLocked(c)
	return c, c.expired
}

// Extend moves the deadline of every awaited request a full step from
// now, within its maximum: progress for the session came, which names no
// request (legacy progress tokens are the client's own).
func (a *Awaiting) Extend() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.pending {
		if c.deadline != nil && !c.expired {
			c.deadline.Extend()
		}
	}
}

// Close stops every deadline and awaits nothing more: the stream ended.
func (a *Awaiting) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	for _, c := range a.pending {
		if c.deadline != nil {
			c.deadline.Stop()
		}
	}
	a.pending = nil
}

// expire marks c expired, when it is still awaited, and runs onExpire.
func (a *Awaiting) expire(c *Awaited) {
	a.mu.Lock()
	if a.closed || a.pending[c.key] != c || c.expired {
		a.mu.Unlock()
		return
	}
	c.expired = true
	c.Subject = nil // its late answer is dropped, not filtered
	a.mu.Unlock()
	a.onExpire(c)
	a.mu.Lock()
	c.Cancel = nil // called: what it holds can go
	a.mu.Unlock()
}

// ToolTimeout gives the calls of the tools whose names Pattern matches
// (path.Match syntax) a deadline step of their own.
type ToolTimeout struct {
	Pattern string
	Timeout time.Duration
}

// Deadlines says the deadline step of a request: the Timeout of the first
// of Tools that matches its tool (a tools/call) and has one, else Request
// (0 for none).
type Deadlines struct {
	Request time.Duration
	Tools   []ToolTimeout
}

// Any reports whether any request can have a deadline.
func (d *Deadlines) Any() bool {
	if d.Request > 0 {
		return true
	}
	for _, t := range d.Tools {
		if t.Timeout > 0 {
			return true
		}
	}
	return false
}

// StepOf returns the deadline step of request m (0 for none).
func (d *Deadlines) StepOf(m *mcp.Envelope) time.Duration {
	if m.Method == "tools/call" {
		for _, t := range d.Tools {
			if ok, _ := path.Match(t.Pattern, m.Name); ok && t.Timeout > 0 {
				return t.Timeout
			}
		}
	}
	return d.Request
}

// For returns the deadline step of a POST's messages (0 for none): for a
// single request, its own step, also when its id follows the peek (the
// relay reads it from the body); for a batch, the largest step of its
// requests that have one, which the batch's other requests share: the
// batch is answered, or ends, as a whole. Notifications and responses
// have none.
func (d *Deadlines) For(msgs []mcp.Envelope, batch bool) time.Duration {
	if !batch {
		if len(msgs) > 0 && msgs[0].Kind == mcp.KindRequest {
			return d.StepOf(&msgs[0])
		}
		return 0
	}
	var step time.Duration
	for i := range msgs {
		if m := &msgs[i]; m.Kind == mcp.KindRequest && m.ID != "" {
			step = max(step, d.StepOf(m))
		}
	}
	return step
}
