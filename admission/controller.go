package admission

import (
	"context"
	"fmt"
	"math"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// DefaultMaxKeys is the bound on the number of keys each keyed table of a
// Controller tracks when Config.MaxKeys is zero.
const DefaultMaxKeys = 100000

// maxRateRefusals bounds the table of preallocated client-rate refusals, one
// per whole second of Retry-After. A longer Retry-After allocates its refusal.
const maxRateRefusals = 3600

// Config holds the limits of a Controller. Every limit is optional: its zero
// value turns it off. All configured limits are enforced together.
type Config struct {
	// MaxInflight caps the requests in flight through this proxy. Zero means
	// no cap (requests are still counted). With Adaptive set, it is the
	// ceiling of the adaptive limit.
	MaxInflight int

	// QueueSize is how many requests may wait for a per-proxy slot when
	// MaxInflight (or the adaptive limit) is reached. Zero refuses at once.
	QueueSize int

	// QueueTimeout is the longest a request waits in the per-proxy queue.
	// Zero means until the request's context is done; set a timeout.
	QueueTimeout time.Duration

	// Adaptive, when not nil, makes the per-proxy limit follow an Adaptive
	// controller built from it. Its MaxLimit is lowered to MaxInflight when
	// MaxInflight is set and is lower (or MaxLimit is zero).
	Adaptive *AdaptiveConfig

	// ClientMaxInflight caps the requests in flight per client key. Zero
	// means no cap.
	ClientMaxInflight int

	// ClientSessionRate caps the new sessions (initialize requests without a
	// session) a client key may open, in sessions per second. Zero means no
	// cap.
	ClientSessionRate float64

	// ClientSessionBurst is how many new sessions a client key may open at
	// once within ClientSessionRate. Zero means max(1, ⌈ClientSessionRate⌉).
	ClientSessionBurst int

	// SessionMaxInflight caps the requests in flight per session. Zero means
	// no cap.
	SessionMaxInflight int

	// Tools are per-tool in-flight limits for tools/call, tried in order; the
	// first rule whose pattern matches the tool name applies.
	Tools []ToolRule

	// MaxKeys bounds the number of keys each keyed table (per client in
	// flight, per session in flight, per client session rate) tracks, so a
	// flood of distinct keys cannot grow memory. Zero means DefaultMaxKeys.
	MaxKeys int
}

// ToolRule limits the tools/call requests in flight for the tools whose name
// matches Pattern. Each rule has its own limiter and wait queue, so a heavy
// tool is capped without taking capacity from the others.
type ToolRule struct {
	// Pattern is a glob over the tool name with path.Match semantics: '*'
	// matches any run of characters other than '/', '?' one such character,
	// '[...]' a character class, '\\' escapes.
	Pattern string

	// MaxInflight caps the matching calls in flight. Zero makes the rule an
	// exemption: matching calls get no tool limit, and later rules are not
	// tried.
	MaxInflight int

	// Timeout is the longest a matching call waits for a slot. Zero refuses
	// at once when the rule is full; otherwise up to MaxInflight calls may
	// wait.
	Timeout time.Duration
}

// Request describes one incoming HTTP request for admission, as far as the
// headers and the peeked JSON-RPC envelope tell.
//
// Admit is meant for messages (POSTs), whose slot is held while the upstream
// works on them. A standalone GET stream should not hold an in-flight slot
// for its whole life; bound streams through the resources package instead.
type Request struct {
	// Class is the message's class (see ClassOf). ClassCheap messages other
	// than a new session's initialize are never queued nor refused by the
	// per-proxy, per-client or per-session limits (see Controller.Admit).
	Class Class

	// InSession reports that the request belongs to an existing session.
	InSession bool

	// NewSession reports an initialize request without a session: it is
	// subject to ClientSessionRate.
	NewSession bool

	// ClientKey identifies the client for the per-client limits (such as
	// its address or an authenticated principal). Empty skips them.
	ClientKey string

	// SessionKey identifies the session for the per-session limit. It is
	// used only when InSession is set; empty skips the limit. Prefer a key
	// the caller has verified (such as an opened session token): made-up
	// session ids each get their own quota, and only the per-client limit
	// and MaxKeys bound them.
	SessionKey string

	// Tool is params.name of a tools/call request, empty otherwise. Tool
	// rules apply only to a non-empty Tool.
	Tool string
}

// Reason is why a request was refused. Its String is a metrics label.
type Reason uint8

const (
	// ReasonCapacity: the process-wide limit is reached, or a keyed table
	// is full of other keys. 503.
	ReasonCapacity Reason = iota
	// ReasonQueueFull: the per-proxy limit is reached and its queue has no
	// room for the request's priority (or it was evicted by a higher one,
	// or QueueSize is zero). 503.
	ReasonQueueFull
	// ReasonQueueTimeout: the request waited QueueTimeout for a per-proxy
	// slot. 503.
	ReasonQueueTimeout
	// ReasonClientQuota: the client has ClientMaxInflight requests in
	// flight, or opens sessions faster than ClientSessionRate. 429.
	ReasonClientQuota
	// ReasonSessionQuota: the session has SessionMaxInflight requests in
	// flight. 429.
	ReasonSessionQuota
	// ReasonToolLimit: the matching tool rule is full and its queue has no
	// room, or its timeout passed. 503.
	ReasonToolLimit
	// ReasonCanceled: the request's context was done while it waited. 503;
	// the client is normally gone and sees nothing.
	ReasonCanceled
	// ReasonLevel: the service level refuses the request. Never produced by
	// Admit; for the caller's own refusals through Controller.Refuse. 503.
	ReasonLevel
)

// NumReasons is the number of distinct Reason values.
const NumReasons = 8

// String returns the metrics label of r, such as "queue_full" ("unknown"
// for an out-of-range value).
func (r Reason) String() string {
	switch r {
	case ReasonCapacity:
		return "capacity"
	case ReasonQueueFull:
		return "queue_full"
	case ReasonQueueTimeout:
		return "queue_timeout"
	case ReasonClientQuota:
		return "client_quota"
	case ReasonSessionQuota:
		return "session_quota"
	case ReasonToolLimit:
		return "tool_limit"
	case ReasonCanceled:
		return "canceled"
	case ReasonLevel:
		return "level"
	}
	return "unknown"
}

// Status returns the HTTP status of a refusal for r: 429 for a client's or
// session's quota, 503 otherwise.
func (r Reason) Status() int {
	if r == ReasonClientQuota || r == ReasonSessionQuota {
		return 429
	}
	return 503
}

// Refusal is the answer to a refused request. Refusals are preallocated and
// shared: never modify one.
type Refusal struct {
	// Reason is why the request was refused.
	Reason Reason
	// Status is the HTTP status to answer with: 429 or 503.
	Status int
	// RetryAfter is the delay to advertise, in whole seconds, at least 1s.
	RetryAfter time.Duration
	// RetryAfterHeader is RetryAfter as a Retry-After header value, in
	// seconds, such as "2".
	RetryAfterHeader string
}

// newRefusal returns a Refusal for reason with retry rounded up to whole
// seconds, at least one.
func newRefusal(reason Reason, retry time.Duration) *Refusal {
	secs := retrySeconds(retry)
	return &Refusal{
		Reason:           reason,
		Status:           reason.Status(),
		RetryAfter:       time.Duration(secs) * time.Second,
		RetryAfterHeader: strconv.FormatInt(secs, 10),
	}
}

// retrySeconds returns d in whole seconds, rounded up, at least 1.
func retrySeconds(d time.Duration) int64 {
	return max(1, int64((d+time.Second-1)/time.Second))
}

// toolRule is a compiled ToolRule.
type toolRule struct {
	pattern string
	kind    uint8
	lit     string   // exact name, prefix or suffix, by kind
	lim     *Limiter // nil for an exemption
	refusal *Refusal
}

// toolRule kinds: patterns of common shapes are matched without path.Match,
// with the same result.
const (
	matchExact  uint8 = iota // no metacharacter
	matchPrefix              // lit + "*"
	matchSuffix              // "*" + lit
	matchGlob                // anything else: path.Match
)

// compileRule returns the matcher for pattern, which path.Match accepts.
func compileRule(pattern string) (kind uint8, lit string) {
	const meta = `*?[\`
	switch {
	case !strings.ContainsAny(pattern, meta):
		return matchExact, pattern
	case strings.HasSuffix(pattern, "*") && !strings.ContainsAny(pattern[:len(pattern)-1], meta):
		return matchPrefix, pattern[:len(pattern)-1]
	case strings.HasPrefix(pattern, "*") && !strings.ContainsAny(pattern[1:], meta):
		return matchSuffix, pattern[1:]
	}
	return matchGlob, ""
}

// match reports whether name matches the rule, as path.Match would.
func (r *toolRule) match(name string) bool {
	switch r.kind {
	case matchExact:
		return name == r.lit
	case matchPrefix:
		return strings.HasPrefix(name, r.lit) && strings.IndexByte(name[len(r.lit):], '/') < 0
	case matchSuffix:
		return strings.HasSuffix(name, r.lit) && strings.IndexByte(name[:len(name)-len(r.lit)], '/') < 0
	}
	ok, _ := path.Match(r.pattern, name)
	return ok
}

// Controller decides whether a request is admitted, from its headers and
// peeked JSON-RPC envelope, before any upstream is dialled. One Controller
// serves one proxy (handler) instance; the caller builds a new one on every
// config reload, while the process-wide limiter passed to New is shared by
// every instance and survives reloads.
//
// All methods are safe for concurrent use.
type Controller struct {
	global   *Limiter // shared; nil: off
	proxy    *Limiter
	adaptive *Adaptive     // nil: off
	sessions *KeyedLimiter // nil: off
	clients  *KeyedLimiter // nil: off
	rate     *KeyedRate    // nil: off
	tools    []toolRule

	refusals     [NumReasons]*Refusal
	rateRefusals []*Refusal // index n-1: Retry-After n seconds
	counts       [NumReasons]atomic.Uint64

	now func() time.Time // the clock for the client session rate
}

// New returns a Controller enforcing cfg, and global, when not nil, as the
// process-wide in-flight limit. The caller shares one global Limiter among
// all Controllers of the process and across reloads; it should have no
// queue (NewLimiter(n, 0, 0); n <= 0 counts without a cap), because Admit
// only ever calls its TryAcquire. New returns an error for a negative limit,
// size or duration, a non-finite rate, or an empty or malformed tool
// pattern.
func New(cfg Config, global *Limiter) (*Controller, error) {
	switch {
	case cfg.MaxInflight < 0:
		return nil, fmt.Errorf("max inflight %d: must not be negative", cfg.MaxInflight)
	case cfg.QueueSize < 0:
		return nil, fmt.Errorf("queue size %d: must not be negative", cfg.QueueSize)
	case cfg.QueueTimeout < 0:
		return nil, fmt.Errorf("queue timeout %v: must not be negative", cfg.QueueTimeout)
	case cfg.ClientMaxInflight < 0:
		return nil, fmt.Errorf("client max inflight %d: must not be negative", cfg.ClientMaxInflight)
	case cfg.ClientSessionRate < 0 || math.IsNaN(cfg.ClientSessionRate) || math.IsInf(cfg.ClientSessionRate, 0):
		return nil, fmt.Errorf("client session rate %v: must be a non-negative number", cfg.ClientSessionRate)
	case cfg.ClientSessionBurst < 0:
		return nil, fmt.Errorf("client session burst %d: must not be negative", cfg.ClientSessionBurst)
	case cfg.SessionMaxInflight < 0:
		return nil, fmt.Errorf("session max inflight %d: must not be negative", cfg.SessionMaxInflight)
	case cfg.MaxKeys < 0:
		return nil, fmt.Errorf("max keys %d: must not be negative", cfg.MaxKeys)
	}
	maxKeys := cfg.MaxKeys
	if maxKeys == 0 {
		maxKeys = DefaultMaxKeys
	}

	c := &Controller{
		global: global,
		proxy:  NewLimiter(cfg.MaxInflight, cfg.QueueSize, cfg.QueueTimeout),
		now:    time.Now,
	}
	if cfg.Adaptive != nil {
		acfg := *cfg.Adaptive
		if cfg.MaxInflight > 0 {
			if acfg.MinLimit > cfg.MaxInflight {
				return nil, fmt.Errorf("adaptive min limit %d: above max inflight %d", acfg.MinLimit, cfg.MaxInflight)
			}
			if acfg.MaxLimit <= 0 || acfg.MaxLimit > cfg.MaxInflight {
				acfg.MaxLimit = cfg.MaxInflight
			}
		}
		c.adaptive = NewAdaptive(acfg)
		c.adaptive.Attach(c.proxy)
	}
	if cfg.SessionMaxInflight > 0 {
		c.sessions = NewKeyedLimiter(cfg.SessionMaxInflight, maxKeys)
	}
	if cfg.ClientMaxInflight > 0 {
		c.clients = NewKeyedLimiter(cfg.ClientMaxInflight, maxKeys)
	}
	if cfg.ClientSessionRate > 0 {
		burst := cfg.ClientSessionBurst
		if burst == 0 {
			burst = int(max(1, math.Ceil(min(cfg.ClientSessionRate, 1<<30))))
		}
		c.rate = NewKeyedRate(cfg.ClientSessionRate, burst, maxKeys)
		// The longest Retry-After of a token bucket is the time to earn one
		// token.
		n := min(retrySeconds(time.Duration(float64(time.Second)/cfg.ClientSessionRate)), maxRateRefusals)
		c.rateRefusals = make([]*Refusal, n)
		for i := range c.rateRefusals {
			c.rateRefusals[i] = newRefusal(ReasonClientQuota, time.Duration(i+1)*time.Second)
		}
	}
	for i, tr := range cfg.Tools {
		if tr.Pattern == "" {
			return nil, fmt.Errorf("tool rule %d: empty pattern", i)
		}
		if _, err := path.Match(tr.Pattern, ""); err != nil {
			return nil, fmt.Errorf("tool rule %d: pattern %q: %w", i, tr.Pattern, err)
		}
		if tr.MaxInflight < 0 {
			return nil, fmt.Errorf("tool rule %d (%s): max inflight %d: must not be negative", i, tr.Pattern, tr.MaxInflight)
		}
		if tr.Timeout < 0 {
			return nil, fmt.Errorf("tool rule %d (%s): timeout %v: must not be negative", i, tr.Pattern, tr.Timeout)
		}
		r := toolRule{pattern: tr.Pattern}
		r.kind, r.lit = compileRule(tr.Pattern)
		if tr.MaxInflight > 0 {
			queue := 0
			if tr.Timeout > 0 {
				queue = tr.MaxInflight
			}
			r.lim = NewLimiter(tr.MaxInflight, queue, tr.Timeout)
			r.refusal = newRefusal(ReasonToolLimit, tr.Timeout)
		}
		c.tools = append(c.tools, r)
	}

	capacityRetry := cfg.QueueTimeout
	for r := range Reason(NumReasons) {
		retry := capacityRetry
		if r == ReasonClientQuota || r == ReasonSessionQuota {
			retry = time.Second
		}
		c.refusals[r] = newRefusal(r, retry)
	}
	return c, nil
}

// Ticket holds the slots taken for one admitted request. It is a small value
// and costs no allocation. Release it exactly once, in a defer, with the
// request's latency measured at release time:
//
//	t, refusal, _ := c.Admit(ctx, &req)
//	if refusal != nil { … answer refusal.Status … }
//	defer func() { t.Release(time.Since(start), failed) }()
//
// (defer t.Release(time.Since(start), failed) would measure the latency when
// the defer statement runs.) Release clears the ticket, so releasing the
// same variable again is a no-op, but releasing a copy of a released ticket
// would release slots twice: do not copy tickets. The zero Ticket holds
// nothing and its Release is a no-op.
type Ticket struct {
	c        *Controller
	tool     *Limiter
	session  string
	client   string
	inflight int32 // per-proxy in flight after acquiring, for Adaptive
	flags    uint8
}

// Ticket flags: which slots the ticket holds.
const (
	tookSession uint8 = 1 << iota
	tookClient
	tookGlobal
	tookProxy
	sampled // the per-proxy slot feeds the adaptive limit
)

// Release returns every slot the ticket holds. latency is how long the
// request took upstream and failed whether it failed in a way that signals
// overload or says nothing about service time (a timeout, a refused
// connection, a 502/503/504); both feed the adaptive limit, if any, for
// requests that went through the per-proxy queue. Release must not be
// called concurrently on the same ticket.
func (t *Ticket) Release(latency time.Duration, failed bool) {
	c := t.c
	if c == nil {
		return
	}
	if t.tool != nil {
		t.tool.Release()
	}
	if t.flags&sampled != 0 {
		c.adaptive.Sample(latency, int(t.inflight), failed)
	}
	t.releaseTaken()
}

// releaseTaken returns the per-proxy, global, client and session slots the
// ticket holds, in that order, and clears the ticket. It does not sample and
// does not release the tool slot.
// takeGlobal takes the process-wide slot; on refusal it releases what the
// ticket took and reports false.
func (t *Ticket) takeGlobal() bool {
	c := t.c
	if c.global == nil {
		return true
	}
	if !c.global.TryAcquire() {
		t.releaseTaken()
		return false
	}
	t.flags |= tookGlobal
	return true
}

func (t *Ticket) releaseTaken() {
	c := t.c
	if t.flags&tookProxy != 0 {
		c.proxy.Release()
	}
	if t.flags&tookGlobal != 0 {
		c.global.Release()
	}
	if t.flags&tookClient != 0 {
		c.clients.Release(t.client)
	}
	if t.flags&tookSession != 0 {
		c.sessions.Release(t.session)
	}
	*t = Ticket{}
}

// Admit decides whether req is admitted. On success it returns a Ticket
// holding the request's slots and a nil Refusal; on refusal it returns the
// zero Ticket and a shared, preallocated Refusal, having released every slot
// it took. waited is how long the request waited in queues (zero when it did
// not wait).
//
// The checks run in this order, the cheapest and most specific first:
//
//  1. NewSession: the client's new-session rate (ClientSessionRate). The
//     token is spent even if a later check refuses the request.
//  2. InSession: the session's in-flight cap, TryAcquire (429).
//  3. The client's in-flight cap, TryAcquire (429).
//  4. The first tool rule matching Tool: Acquire with the rule's own queue
//     and timeout, at PriorityOf(Class, InSession) (503).
//  5. The per-proxy limit: Acquire with the bounded priority queue at
//     PriorityOf(Class, InSession) (503).
//  6. The process-wide limit, TryAcquire without a queue (503).
//
// The tool rule comes before the per-proxy queue so that calls waiting for
// a busy tool hold no per-proxy slot: a per-proxy slot is only held by
// requests the upstream is working on, which keeps the other tools'
// capacity and the adaptive limit's view of the upstream intact. The
// process-wide slot comes last for the same reason: a request waiting in
// one handler's queue must not refuse another handler's work. Cheap
// messages that bypass the queue take the process-wide slot first.
//
// A keyed table full of other keys (MaxKeys) refuses with ReasonCapacity. A
// context done while waiting refuses with ReasonCanceled.
//
// ClassCheap messages that do not open a session (notifications, responses
// to server requests, ping) are treated specially: they skip steps 1–3 and
// 5, and at step 6 take a per-proxy slot at once, above the limit if need
// be, without queueing (Limiter.ForceAcquire). They still count in flight,
// and the process-wide limit (step 4) still applies to them. A response to
// a server request (sampling, elicitation) is what unblocks a tools/call
// holding a slot: queueing or refusing it behind the limit it is waiting on
// could stall every slot until the upstream's own timeout. They are not
// sampled for the adaptive limit.
//
// Retry-After: for ReasonCapacity, ReasonQueueFull, ReasonQueueTimeout and
// ReasonCanceled it is max(1s, QueueTimeout) rounded up to whole seconds;
// for ReasonToolLimit, max(1s, the rule's Timeout) rounded up; for the
// client session rate, the time until the client's next token rounded up;
// for the per-client and per-session in-flight caps, 1s.
//
// Admit does not allocate, except when a client's first session token, a
// new client or a new session is stored (one copy of its key), and for a
// client-rate refusal with a Retry-After beyond an hour.
func (c *Controller) Admit(ctx context.Context, req *Request) (t Ticket, refusal *Refusal, waited time.Duration) {
	t.c = c
	bypass := req.Class == ClassCheap && !req.NewSession
	if !bypass {
		if req.NewSession && c.rate != nil && req.ClientKey != "" {
			if ok, after := c.rate.Allow(req.ClientKey, c.now()); !ok {
				return Ticket{}, c.refuseRate(after), 0
			}
		}
		if c.sessions != nil && req.InSession && req.SessionKey != "" {
			if !c.sessions.TryAcquire(req.SessionKey) {
				return Ticket{}, c.refuseKeyed(c.sessions, req.SessionKey, ReasonSessionQuota), 0
			}
			t.session = req.SessionKey
			t.flags |= tookSession
		}
		if c.clients != nil && req.ClientKey != "" {
			if !c.clients.TryAcquire(req.ClientKey) {
				t.releaseTaken()
				return Ticket{}, c.refuseKeyed(c.clients, req.ClientKey, ReasonClientQuota), 0
			}
			t.client = req.ClientKey
			t.flags |= tookClient
		}
	}
	if bypass {
		if !t.takeGlobal() {
			return Ticket{}, c.Refuse(ReasonCapacity), 0
		}
		c.proxy.ForceAcquire()
		t.flags |= tookProxy
		return t, nil, 0
	}

	prio := PriorityOf(req.Class, req.InSession)
	if req.Tool != "" && len(c.tools) > 0 {
		if rule := c.matchTool(req.Tool); rule != nil && rule.lim != nil {
			w, err := rule.lim.Acquire(ctx, prio)
			waited = w
			if err != nil {
				t.releaseTaken()
				if err == ErrQueueFull || err == ErrQueueTimeout {
					c.counts[ReasonToolLimit].Add(1)
					return Ticket{}, rule.refusal, waited
				}
				return Ticket{}, c.Refuse(ReasonCanceled), waited
			}
			t.tool = rule.lim
		}
	}

	w, err := c.proxy.Acquire(ctx, prio)
	waited += w
	if err != nil {
		if t.tool != nil {
			t.tool.Release()
		}
		t.releaseTaken()
		switch err {
		case ErrQueueFull:
			return Ticket{}, c.Refuse(ReasonQueueFull), waited
		case ErrQueueTimeout:
			return Ticket{}, c.Refuse(ReasonQueueTimeout), waited
		}
		return Ticket{}, c.Refuse(ReasonCanceled), waited
	}
	t.flags |= tookProxy
	// The process-wide slot is taken last, so a request waiting in this
	// handler's queue holds none: it cannot refuse another handler's work.
	if tool := t.tool; !t.takeGlobal() {
		if tool != nil {
			tool.Release()
		}
		return Ticket{}, c.Refuse(ReasonCapacity), waited
	}
	if c.adaptive != nil {
		t.inflight = int32(min(c.proxy.InFlight(), math.MaxInt32))
		t.flags |= sampled
	}
	return t, nil, waited
}

// matchTool returns the first tool rule matching name, or nil.
func (c *Controller) matchTool(name string) *toolRule {
	for i := range c.tools {
		if r := &c.tools[i]; r.match(name) {
			return r
		}
	}
	return nil
}

// refuseKeyed counts and returns the refusal of a keyed in-flight limit that
// refused key: reason when key is at its cap, ReasonCapacity when the table
// is full of other keys.
func (c *Controller) refuseKeyed(k *KeyedLimiter, key string, reason Reason) *Refusal {
	if k.InFlight(key) == 0 {
		reason = ReasonCapacity
	}
	return c.Refuse(reason)
}

// refuseRate counts and returns a client-rate refusal advertising after.
func (c *Controller) refuseRate(after time.Duration) *Refusal {
	c.counts[ReasonClientQuota].Add(1)
	// The bucket computes after in floating point, which can overshoot a
	// whole second by a few nanoseconds; do not round that up to the next.
	n := retrySeconds(after - time.Microsecond)
	if n <= int64(len(c.rateRefusals)) {
		return c.rateRefusals[n-1]
	}
	return newRefusal(ReasonClientQuota, after)
}

// Refuse counts a refusal for reason and returns its shared, preallocated
// Refusal. The caller uses it for refusals of its own, such as the service
// level's (ReasonLevel), so that they are counted with Admit's and carry the
// same Retry-After as capacity refusals. A reason out of range is treated as
// ReasonCapacity.
func (c *Controller) Refuse(reason Reason) *Refusal {
	if reason >= NumReasons {
		reason = ReasonCapacity
	}
	c.counts[reason].Add(1)
	return c.refusals[reason]
}

// Refusals returns how many requests were refused for each reason since the
// Controller was built, indexed by Reason.
func (c *Controller) Refusals() [NumReasons]uint64 {
	var out [NumReasons]uint64
	for i := range out {
		out[i] = c.counts[i].Load()
	}
	return out
}

// InFlight returns the number of requests holding a per-proxy slot.
func (c *Controller) InFlight() int { return c.proxy.InFlight() }

// Queued returns the number of requests waiting in the per-proxy queue.
func (c *Controller) Queued() int { return c.proxy.Queued() }

// Limit returns the current per-proxy limit (the adaptive limit when
// configured); zero means no cap.
func (c *Controller) Limit() int { return c.proxy.Limit() }

// Global returns the process-wide limiter passed to New, or nil.
func (c *Controller) Global() *Limiter { return c.global }

// Adaptive returns the adaptive controller of the per-proxy limit, or nil.
func (c *Controller) Adaptive() *Adaptive { return c.adaptive }

// ToolStat is a snapshot of one tool rule's limiter.
type ToolStat struct {
	// Pattern is the rule's pattern.
	Pattern string
	// InFlight is the number of matching calls holding a slot.
	InFlight int
	// Queued is the number of matching calls waiting for a slot.
	Queued int
	// Limit is the rule's MaxInflight.
	Limit int
}

// ToolStats returns a snapshot of every tool rule with a limit, in rule
// order; exemptions (MaxInflight 0) are left out.
func (c *Controller) ToolStats() []ToolStat {
	out := make([]ToolStat, 0, len(c.tools))
	for i := range c.tools {
		r := &c.tools[i]
		if r.lim == nil {
			continue
		}
		out = append(out, ToolStat{
			Pattern:  r.pattern,
			InFlight: r.lim.InFlight(),
			Queued:   r.lim.Queued(),
			Limit:    r.lim.Limit(),
		})
	}
	return out
}
