package admission

import (
	"cmp"
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
	// flood of distinct keys cannot grow memory. The in-flight tables hold
	// only keys with requests in flight and refuse other keys when full
	// (ReasonCapacity); the session rate table forgets its least recently
	// seen clients instead (see KeyedRate). Zero means DefaultMaxKeys.
	MaxKeys int

	// Counts, when not nil, is where the Controller counts its refusals,
	// shared with other Controllers (every proxy instance of a process,
	// across config reloads) so the process keeps one set of counts. Nil
	// gives the Controller counts of its own.
	Counts *RefusalCounts
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
// headers and the peeked JSON-RPC envelope tell. The request may carry one
// JSON-RPC message or a batch of them.
//
// Admit is meant for messages (POSTs), whose slot is held while the upstream
// works on them. A standalone GET stream should not hold an in-flight slot
// for its whole life; bound streams through the resources package instead.
type Request struct {
	// Class is the message's class (see ClassOf). For a batch it is the
	// class of its most expensive member (the highest Class of any member).
	// ClassCheap single messages other than a new session's initialize are
	// never queued nor refused by the per-proxy, per-client or per-session
	// limits (see Controller.Admit); a batch never is.
	Class Class

	// InSession reports that the request belongs to an existing session.
	InSession bool

	// NewSession reports an initialize request without a session: it is
	// subject to ClientSessionRate.
	NewSession bool

	// ClientKey identifies the client for the per-client limits (such as
	// its address, see ClientKeyForIP, or an authenticated principal).
	// Empty skips them.
	ClientKey string

	// SessionKey identifies the session for the per-session limit. It is
	// used only when InSession is set; empty skips the limit. Prefer a key
	// the caller has verified (such as an opened session token): made-up
	// session ids each get their own quota, and only the per-client limit
	// and MaxKeys bound them.
	SessionKey string

	// Tool is params.name of a tools/call request, empty otherwise. Tool
	// rules apply only to a non-empty Tool. For a batch, list the tool
	// names in Tools instead; if both are set, Tool counts as one more
	// tools/call member.
	Tool string

	// Weight is the number of requests (messages with an id and a method)
	// the HTTP request carries: 0 or 1 for a single message, n for a batch
	// of n requests. Notifications and responses in a batch are not
	// counted, so a batch of them with at most one request is admitted like
	// a single message of its Class. A request with a Weight above 1, or
	// with more than one tool (Tool and Tools together), is a batch: see
	// Controller.Admit. Admit counts at least one slot per tool, raising
	// Weight to the number of tools when it is lower.
	Weight int

	// Tools are the params.name of every tools/call member of a batch, one
	// entry per member (a tool called twice is listed twice). Empty names
	// are counted as members but match no tool rule. A single entry with
	// Weight 0 or 1 and no Tool is the same as setting Tool.
	Tools []string
}

// single reports whether req is a single message rather than a batch (see
// Request.Weight) and, if it is, returns its tool name (empty when it is
// not a tools/call).
func (req *Request) single() (tool string, ok bool) {
	tool = req.Tool
	switch n := len(req.Tools); {
	case n == 0:
	case n == 1 && tool == "":
		tool = req.Tools[0]
	default:
		return "", false
	}
	return tool, req.Weight <= 1
}

// weight returns the slots a batch takes: Weight, at least the number of
// tools, and at least 1.
func (req *Request) weight() int {
	n := len(req.Tools)
	if req.Tool != "" {
		n++
	}
	return max(req.Weight, n, 1)
}

// Reason is why a request was refused. Its String is a metrics label.
type Reason uint8

const (
	// ReasonCapacity: the process-wide limit is reached, or a keyed table
	// is full of other keys. 503.
	ReasonCapacity Reason = iota
	// ReasonQueueFull: the per-proxy limit is reached and its queue has no
	// room for the request's priority (or it was evicted by a higher one,
	// or QueueSize is zero), or a batch does not fit in the free per-proxy
	// slots. 503.
	ReasonQueueFull
	// ReasonQueueTimeout: the request waited QueueTimeout for a per-proxy
	// slot. 503.
	ReasonQueueTimeout
	// ReasonClientQuota: the client has ClientMaxInflight requests in
	// flight (or a batch would take it past that), or opens sessions faster
	// than ClientSessionRate. 429.
	ReasonClientQuota
	// ReasonSessionQuota: the session has SessionMaxInflight requests in
	// flight (or a batch would take it past that). 429.
	ReasonSessionQuota
	// ReasonToolLimit: the matching tool rule is full and its queue has no
	// room, or its timeout passed, or a batch's calls of the rule's tools
	// do not fit in its free slots. 503.
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
func (r Reason) String() string { return nameOf(r, reasonNames[:]) }

// reasonNames are the metrics labels of the reasons, indexed by Reason.
var reasonNames = [NumReasons]string{
	ReasonCapacity:     "capacity",
	ReasonQueueFull:    "queue_full",
	ReasonQueueTimeout: "queue_timeout",
	ReasonClientQuota:  "client_quota",
	ReasonSessionQuota: "session_quota",
	ReasonToolLimit:    "tool_limit",
	ReasonCanceled:     "canceled",
	ReasonLevel:        "level",
}

// Status returns the HTTP status of a refusal for r: 429 for a client's or
// session's quota, 503 otherwise.
func (r Reason) Status() int {
	if r == ReasonClientQuota || r == ReasonSessionQuota {
		return 429
	}
	return 503
}

// RefusalCounts counts refused requests by Reason. The zero value is ready
// to use; it is safe for concurrent use and holds only NumReasons counters.
type RefusalCounts struct {
	n [NumReasons]atomic.Uint64
}

// Add counts one refusal for reason; a reason out of range counts as
// ReasonCapacity.
func (rc *RefusalCounts) Add(reason Reason) {
	if reason >= NumReasons {
		reason = ReasonCapacity
	}
	rc.n[reason].Add(1)
}

// Load returns the refusals counted so far, indexed by Reason.
func (rc *RefusalCounts) Load() [NumReasons]uint64 {
	var out [NumReasons]uint64
	for i := range out {
		out[i] = rc.n[i].Load()
	}
	return out
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
	rateRefusals []*Refusal     // index n-1: Retry-After n seconds
	counts       *RefusalCounts // Config.Counts, or the Controller's own

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
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	maxKeys := cfg.MaxKeys
	if maxKeys == 0 {
		maxKeys = DefaultMaxKeys
	}

	c := &Controller{
		global: global,
		proxy:  NewLimiter(cfg.MaxInflight, cfg.QueueSize, cfg.QueueTimeout),
		counts: cfg.Counts,
		now:    time.Now,
	}
	if c.counts == nil {
		c.counts = new(RefusalCounts)
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
		c.setRate(cfg.ClientSessionRate, cfg.ClientSessionBurst, maxKeys)
	}
	for i, tr := range cfg.Tools {
		r, err := compileToolRule(i, tr)
		if err != nil {
			return nil, err
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

// validate reports a negative limit, size or duration, or a non-finite
// rate.
func (cfg *Config) validate() error {
	return cmp.Or(
		notNegative("max inflight", cfg.MaxInflight),
		notNegative("queue size", cfg.QueueSize),
		notNegative("queue timeout", cfg.QueueTimeout),
		notNegative("client max inflight", cfg.ClientMaxInflight),
		finiteRate("client session rate", cfg.ClientSessionRate),
		notNegative("client session burst", cfg.ClientSessionBurst),
		notNegative("session max inflight", cfg.SessionMaxInflight),
		notNegative("max keys", cfg.MaxKeys),
	)
}

// notNegative reports a negative setting, named what.
func notNegative[T int | time.Duration](what string, v T) error {
	if v < 0 {
		return fmt.Errorf("%s %v: must not be negative", what, v)
	}
	return nil
}

// finiteRate reports a negative or non-finite rate, named what.
func finiteRate(what string, v float64) error {
	if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Errorf("%s %v: must be a non-negative number", what, v)
	}
	return nil
}

// setRate sets up the client session rate: a token bucket per client key
// (at most maxKeys), and the preallocated refusals for every Retry-After
// it can advertise.
func (c *Controller) setRate(rate float64, burst, maxKeys int) {
	if burst == 0 {
		burst = int(max(1, math.Ceil(min(rate, 1<<30))))
	}
	c.rate = NewKeyedRate(rate, burst, maxKeys)
	// The longest Retry-After of a token bucket is the time to earn one
	// token.
	n := min(retrySeconds(time.Duration(float64(time.Second)/rate)), maxRateRefusals)
	c.rateRefusals = make([]*Refusal, n)
	for i := range c.rateRefusals {
		c.rateRefusals[i] = newRefusal(ReasonClientQuota, time.Duration(i+1)*time.Second)
	}
}

// compileToolRule checks and compiles tool rule i.
func compileToolRule(i int, tr ToolRule) (toolRule, error) {
	if tr.Pattern == "" {
		return toolRule{}, fmt.Errorf("tool rule %d: empty pattern", i)
	}
	if _, err := path.Match(tr.Pattern, ""); err != nil {
		return toolRule{}, fmt.Errorf("tool rule %d: pattern %q: %w", i, tr.Pattern, err)
	}
	if err := cmp.Or(notNegative("max inflight", tr.MaxInflight), notNegative("timeout", tr.Timeout)); err != nil {
		return toolRule{}, fmt.Errorf("tool rule %d (%s): %w", i, tr.Pattern, err)
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
	return r, nil
}

// Ticket holds the slots taken for one admitted request. It is a small value
// and costs no allocation for a single message. Release it exactly once, in
// a defer, with the request's latency measured at release time:
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
	batch    *batchHold // nil for a single message
	session  string
	client   string
	inflight int32 // per-proxy in flight after acquiring, for Adaptive
	flags    uint8
}

// batchHold is what a batch's ticket holds beyond its flags: the number of
// slots it took of each of the per-proxy, process-wide, per-client and
// per-session limits, and its tool rule slots.
type batchHold struct {
	weight int
	tools  []toolHold
	inline [4]toolHold // backs tools for up to 4 rules
}

// toolHold is n slots of one tool rule.
type toolHold struct {
	rule *toolRule
	n    int
}

// Ticket flags: which slots the ticket holds.
const (
	tookSession uint8 = 1 << iota
	tookClient
	tookGlobal
	tookProxy
	sampled // the per-proxy slot feeds the adaptive limit
)

// Release returns every slot the ticket holds: for a batch, as many slots
// of each limit as it took. latency is how long the request took upstream
// and failed whether it failed in a way that signals overload or says
// nothing about service time (a timeout, a refused connection, a
// 502/503/504); both feed the adaptive limit, if any, for single requests
// that went through the per-proxy queue. Release must not be called
// concurrently on the same ticket.
func (t *Ticket) Release(latency time.Duration, failed bool) {
	c := t.c
	if c == nil {
		return
	}
	if t.batch != nil {
		t.releaseBatch()
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

// releaseTaken returns the per-proxy, global, client and session slots a
// single message's ticket holds, in that order, and clears the ticket. It
// does not sample and does not release the tool slot.
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

// releaseBatch returns every slot a batch's ticket holds, tool rules first,
// then the per-proxy, global, client and session slots, and clears the
// ticket.
func (t *Ticket) releaseBatch() {
	c, b := t.c, t.batch
	for _, h := range b.tools {
		h.rule.lim.ReleaseN(h.n)
	}
	n := b.weight
	if t.flags&tookProxy != 0 {
		c.proxy.ReleaseN(n)
	}
	if t.flags&tookGlobal != 0 {
		c.global.ReleaseN(n)
	}
	if t.flags&tookClient != 0 {
		c.clients.ReleaseN(t.client, n)
	}
	if t.flags&tookSession != 0 {
		c.sessions.ReleaseN(t.session, n)
	}
	*t = Ticket{}
}

// Admit decides whether req is admitted. On success it returns a Ticket
// holding the request's slots and a nil Refusal; on refusal it returns the
// zero Ticket and a shared, preallocated Refusal, having released every slot
// it took. waited is how long the request waited in queues (zero when it did
// not wait).
//
// For a single message the checks run in this order, the cheapest and most
// specific first:
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
// ClassCheap single messages that do not open a session (notifications,
// responses to server requests, ping) are treated specially: they skip
// steps 1–5, take the process-wide slot (step 6, which still applies to
// them) and then a per-proxy slot at once, above the limit if need be,
// without queueing (Limiter.ForceAcquire). They still count in flight. A
// response to a server request (sampling, elicitation) is what unblocks a
// tools/call holding a slot: queueing or refusing it behind the limit it is
// waiting on could stall every slot until the upstream's own timeout. They
// are not sampled for the adaptive limit.
//
// A batch (Request.Weight above 1, or more than one tool) is admitted whole
// or refused whole, and never waits. It goes through the same checks in the
// same order, whatever its Class (it never takes the cheap path), but each
// takes all its slots at once or refuses: n = Request.Weight slots of the
// session's and the client's in-flight caps (TryAcquireN, 429), for each
// tool rule as many slots as the batch has tools/call members whose first
// matching rule it is (ReasonToolLimit), n per-proxy slots (ReasonQueueFull
// when they are not free, or when requests are queued: a batch does not
// overtake them) and n process-wide slots (ReasonCapacity). A batch larger
// than a limit is always refused by it. On a refusal nothing is held. A
// batch is not sampled for the adaptive limit, since its latency is that of
// several requests.
//
// Retry-After: for ReasonCapacity, ReasonQueueFull, ReasonQueueTimeout and
// ReasonCanceled it is max(1s, QueueTimeout) rounded up to whole seconds;
// for ReasonToolLimit, max(1s, the rule's Timeout) rounded up; for the
// client session rate, the time until the client's next token rounded up;
// for the per-client and per-session in-flight caps, 1s.
//
// Admit does not allocate for a single message, except when a client's
// first session token, a new client or a new session is stored (one copy
// of its key), and for a client-rate refusal with a Retry-After beyond an
// hour. An admitted batch allocates its ticket's record of slots.
func (c *Controller) Admit(ctx context.Context, req *Request) (t Ticket, refusal *Refusal, waited time.Duration) {
	t.c = c
	tool, single := req.single()
	bypass := single && req.Class == ClassCheap && !req.NewSession
	if !bypass {
		if req.NewSession && c.rate != nil && req.ClientKey != "" {
			if ok, after := c.rate.Allow(req.ClientKey, c.now()); !ok {
				return Ticket{}, c.refuseRate(after), 0
			}
		}
		if !single {
			t, refusal = c.admitBatch(req)
			return t, refusal, 0
		}
		if c.sessions != nil && req.InSession && req.SessionKey != "" {
			if !c.sessions.TryAcquire(req.SessionKey) {
				return Ticket{}, c.refuseKeyed(c.sessions, req.SessionKey, 1, ReasonSessionQuota), 0
			}
			t.session = req.SessionKey
			t.flags |= tookSession
		}
		if c.clients != nil && req.ClientKey != "" {
			if !c.clients.TryAcquire(req.ClientKey) {
				t.releaseTaken()
				return Ticket{}, c.refuseKeyed(c.clients, req.ClientKey, 1, ReasonClientQuota), 0
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
	if tool != "" && len(c.tools) > 0 {
		var lim *Limiter
		if lim, waited, refusal = c.acquireTool(ctx, tool, prio); refusal != nil {
			t.releaseTaken()
			return Ticket{}, refusal, waited
		}
		t.tool = lim
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

// acquireTool takes a slot of the first tool rule matching tool, waiting
// in the rule's queue if it has one. It returns the rule's limiter (nil
// when no limited rule matches) and how long it waited, or the counted
// refusal.
func (c *Controller) acquireTool(ctx context.Context, tool string, prio Priority) (*Limiter, time.Duration, *Refusal) {
	rule := c.matchTool(tool)
	if rule == nil || rule.lim == nil {
		return nil, 0, nil
	}
	waited, err := rule.lim.Acquire(ctx, prio)
	switch {
	case err == nil:
		return rule.lim, waited, nil
	case err == ErrQueueFull || err == ErrQueueTimeout:
		c.counts.Add(ReasonToolLimit)
		return nil, waited, rule.refusal
	}
	return nil, waited, c.Refuse(ReasonCanceled)
}

// admitBatch admits a batch whole or refuses it whole, without waiting (see
// Admit). The client session rate has been checked.
func (c *Controller) admitBatch(req *Request) (Ticket, *Refusal) {
	n := req.weight()
	b := &batchHold{weight: n}
	t := Ticket{c: c, batch: b}
	if c.sessions != nil && req.InSession && req.SessionKey != "" {
		if !c.sessions.TryAcquireN(req.SessionKey, n) {
			return Ticket{}, c.refuseKeyed(c.sessions, req.SessionKey, n, ReasonSessionQuota)
		}
		t.session = req.SessionKey
		t.flags |= tookSession
	}
	if c.clients != nil && req.ClientKey != "" {
		if !c.clients.TryAcquireN(req.ClientKey, n) {
			t.releaseBatch()
			return Ticket{}, c.refuseKeyed(c.clients, req.ClientKey, n, ReasonClientQuota)
		}
		t.client = req.ClientKey
		t.flags |= tookClient
	}
	if len(c.tools) > 0 {
		holds := c.batchTools(b.inline[:0], req)
		for i, h := range holds {
			if !h.rule.lim.TryAcquireN(h.n) {
				b.tools = holds[:i]
				t.releaseBatch()
				c.counts.Add(ReasonToolLimit)
				return Ticket{}, h.rule.refusal
			}
		}
		b.tools = holds
	}
	if !c.proxy.TryAcquireN(n) {
		t.releaseBatch()
		return Ticket{}, c.Refuse(ReasonQueueFull)
	}
	t.flags |= tookProxy
	if c.global != nil {
		if !c.global.TryAcquireN(n) {
			t.releaseBatch()
			return Ticket{}, c.Refuse(ReasonCapacity)
		}
		t.flags |= tookGlobal
	}
	return t, nil
}

// batchTools appends to holds the tool rule slots a batch needs: for each
// limited rule, the number of its tools/call members whose first matching
// rule it is. Members matching no rule or an exemption need none.
func (c *Controller) batchTools(holds []toolHold, req *Request) []toolHold {
	add := func(name string) {
		if name == "" {
			return
		}
		rule := c.matchTool(name)
		if rule == nil || rule.lim == nil {
			return
		}
		for i := range holds {
			if holds[i].rule == rule {
				holds[i].n++
				return
			}
		}
		holds = append(holds, toolHold{rule: rule, n: 1})
	}
	add(req.Tool)
	for _, name := range req.Tools {
		add(name)
	}
	return holds
}

// AllowNewSession applies the client session rate (ClientSessionRate) to a
// session opened outside Admit, such as by a legacy SSE GET stream, whose
// slots the caller takes elsewhere. It spends one of clientKey's tokens and
// returns nil, or returns the counted refusal (ReasonClientQuota, 429, with
// the time until the client's next token as Retry-After) when it has none.
// Without a rate or with an empty clientKey it returns nil. It does not
// allocate, except for a client's first token (one copy of its key).
func (c *Controller) AllowNewSession(clientKey string) *Refusal {
	if c.rate == nil || clientKey == "" {
		return nil
	}
	if ok, after := c.rate.Allow(clientKey, c.now()); !ok {
		return c.refuseRate(after)
	}
	return nil
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
// refused n slots for key: reason when key's slots plus n exceed its cap,
// ReasonCapacity when the table is full of other keys.
func (c *Controller) refuseKeyed(k *KeyedLimiter, key string, n int, reason Reason) *Refusal {
	if n <= k.PerKey() && k.InFlight(key) == 0 {
		reason = ReasonCapacity
	}
	return c.Refuse(reason)
}

// refuseRate counts and returns a client-rate refusal advertising after.
func (c *Controller) refuseRate(after time.Duration) *Refusal {
	c.counts.Add(ReasonClientQuota)
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
	c.counts.Add(reason)
	return c.refusals[reason]
}

// Refusals returns how many requests were refused for each reason, indexed
// by Reason: by this Controller since it was built, or, with Config.Counts,
// by every Controller sharing those counts since they were made.
func (c *Controller) Refusals() [NumReasons]uint64 { return c.counts.Load() }

// InFlight returns the number of per-proxy slots held: one per single
// request admitted and not yet released, Weight per batch.
func (c *Controller) InFlight() int { return c.proxy.InFlight() }

// Queued returns the number of requests waiting in the per-proxy queue.
func (c *Controller) Queued() int { return c.proxy.Queued() }

// Limit returns the current per-proxy limit (the adaptive limit when
// configured); zero means no cap.
func (c *Controller) Limit() int { return c.proxy.Limit() }

// Idle reports whether the Controller holds no slot and queues no
// request: nothing in flight or waiting under its own limit or any tool's,
// and no session or client with a request in flight. The process-wide
// limit, which other Controllers share, is not looked at.
func (c *Controller) Idle() bool {
	if c.proxy.InFlight() != 0 || c.proxy.Queued() != 0 {
		return false
	}
	for i := range c.tools {
		if l := c.tools[i].lim; l != nil && (l.InFlight() != 0 || l.Queued() != 0) {
			return false
		}
	}
	return (c.sessions == nil || c.sessions.Len() == 0) && (c.clients == nil || c.clients.Len() == 0)
}

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
