package sse

import (
	"context"
	"errors"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// ClientWriter is the client side of a stream: an HTTP response body that
// can be flushed and given a write deadline (http.ResponseController
// provides both). Write and Flush are called by one goroutine at a time;
// SetWriteDeadline may also be called while a Write or Flush is in
// progress on another goroutine, to cut it short, as a net.Conn allows.
// The zero time comes from the goroutine that writes, once its writes are
// done: the stream may now be silent for longer than the deadline, which
// must not end it. A writer whose deadline is read only by the next write
// (a net.Conn, HTTP/1) may ignore it; on HTTP/2 a deadline left armed
// resets the stream when it passes, with no write in flight.
type ClientWriter interface {
	Write(p []byte) (int, error)
	Flush() error
	SetWriteDeadline(t time.Time) error
}

// StreamConfig bounds and shapes one relayed stream.
type StreamConfig struct {
	// MaxEvent and MaxLine cap an upstream event and line, in bytes; zero
	// or less means DefaultMaxEvent, and MaxEvent for MaxLine.
	MaxEvent, MaxLine int
	// QueueEvents and QueueBytes bound the live events waiting to be
	// written to the client (events queue only while the writer goroutine
	// writes); at either bound Pump stops reading the upstream until the
	// client makes room, and a client that makes none within WriteTimeout
	// is a slow consumer.
	// Zero or less means DefaultQueueEvents and DefaultQueueBytes. One
	// event is always admitted into an empty queue, whatever its size
	// (MaxEvent bounds it).
	// Events replayed from the ring on Attach do not count against these
	// bounds (the ring bounds them), so a client can always catch up.
	QueueEvents int
	QueueBytes  int
	// WriteTimeout is the deadline of each write to the client; the
	// events of one upstream read are written under one deadline.
	WriteTimeout time.Duration
	// Keepalive is the idle time after which a comment is sent; 0 for none.
	// Every write to the client, a forwarded upstream comment included,
	// restarts it.
	Keepalive time.Duration
	// ReplayEvents, ReplayBytes and ReplayAge bound the replay ring; a
	// zero ReplayEvents disables replay.
	ReplayEvents int
	ReplayBytes  int64
	ReplayAge    time.Duration
	// IDPrefix, when set, gives every event that has no id of its own the
	// id IDPrefix + sequence number, so clients can resume streams whose
	// upstream does not number its events.
	IDPrefix string
	// Retry, when positive, is sent as a `retry:` hint (milliseconds)
	// before the proxy closes a stream the client should resume, and
	// after the last event of an upstream that broke. Attach may override
	// it per client.
	Retry time.Duration
	// Rewrite, when set, may replace an event's raw bytes before it is
	// stored and delivered; it returns nil to keep them, and an empty
	// non-nil slice to drop the event. Comment-only blocks are forwarded
	// as they came and not passed to Rewrite.
	Rewrite func(ev *Event) []byte
	// Canonical relays each event as the parser read it rather than as
	// the upstream wrote it: the block a Rewrite keeps is written anew
	// from its fields (AppendCanonical), and comment-only blocks are
	// dropped (Keepalive keeps the client's side alive). A client then
	// reads exactly the events the relay read, whatever line ends, byte
	// order marks or unknown fields the upstream sent and however the
	// client's parser differs from the WHATWG rules: what a Rewrite
	// decides on an event is what the client gets.
	Canonical bool
	// Final, when set, is called once at every end of the upstream side,
	// from Pump's goroutine after the last upstream event: with nil at a
	// clean end of stream, ErrClosed when Close stopped the read, else
	// with Pump's error (an oversized event, a broken upstream). It may return one last
	// event to deliver and keep for replay, such as a JSON-RPC error for
	// a request whose stream ended without its answer, or nil for none.
	Final func(err error) []byte
	// Continue, when set, is asked at the end of each upstream body,
	// clean or broken (not after Close or an oversized event), for the
	// body the stream goes on with: the upstream's own resumption of the
	// stream from its last event id (a GET with Last-Event-ID), so that
	// the client gets the rest on the stream it holds. It runs on Pump's
	// goroutine and may wait; it returns nil to end the stream (Final is
	// then called with the last body's error). Pump reads each body it
	// returns to its end, a fresh parser for each (an event cut short by
	// a break is dropped), and closes it; Close closes it too.
	Continue func(c Continuation) io.ReadCloser
	// Skip lists event ids the client already has (replayed before this
	// stream began); events with these ids are not delivered again.
	Skip map[string]struct{}
	// Hooks receives the stream's accounting; may be nil.
	Hooks *Hooks
}

// Continuation is what StreamConfig.Continue is told at the end of an
// upstream body.
type Continuation struct {
	// Err is the body's error; nil at a clean end.
	Err error
	// LastID is the newest event id the upstream itself assigned, when
	// it is the last id a client that got every event holds (no event
	// with an id of the proxy's came after it): the id the upstream can
	// resume after. "" otherwise.
	LastID string
	// Retry is the upstream's last `retry:` field, -1 when it sent none.
	Retry time.Duration
	// Stop is closed when the stream is closed (Close): a wait for the
	// upstream must end.
	Stop <-chan struct{}
}

// Hooks are counters and callbacks a stream reports to. Every field may
// be nil.
type Hooks struct {
	// Event is called for every event relayed from upstream, with its
	// size. Comment-only blocks are not events and are not counted.
	Event func(bytes int)
	// Keepalive is called for every keepalive comment sent.
	Keepalive func()
	// SlowConsumer is called when a client is cut for not keeping up.
	SlowConsumer func()
	// Oversized is called when an upstream event breaks MaxEvent/MaxLine.
	Oversized func()
	// Panic, when set, receives a panic raised in a goroutine the stream
	// owns (its writer, its keepalive timer); the attachment is then
	// closed. Without it such a panic crashes the process as usual.
	Panic func(v any)
	// Reserve asks for n more bytes of queue or ring memory (n < 0
	// returns bytes). A refused ring event is delivered but not kept for
	// replay; a refused queued event makes Pump wait for the queue to
	// drain (backpressure), as a full queue does. Events written straight
	// through to the client hold no memory and reserve nothing.
	Reserve func(n int) bool
}

// Reasons a client attachment ends.
var (
	// ErrSlowConsumer means the client did not keep up: its queue filled
	// or a write passed its deadline.
	ErrSlowConsumer = errors.New("slow consumer")
	// ErrClientGone means the client went away or its write failed.
	ErrClientGone = errors.New("client gone")
	// ErrDetached means another client attachment took the stream over.
	ErrDetached = errors.New("stream resumed elsewhere")
	// ErrClosed means the proxy closed the stream (drain, shedding).
	ErrClosed = errors.New("stream closed by proxy")
)

// Stream is one relayed Server-Sent Events stream. The upstream side is
// pumped by one goroutine (Pump); at most one client is attached at a time.
// Pump writes live events to the client itself while nothing is queued;
// otherwise they wait in the attachment's bounded queue for its writer, a
// goroutine that exists only while there is something queued, so an idle
// stream costs no goroutine of its own.
// Events are kept in a bounded replay ring so a client that dropped can
// resume with Last-Event-ID, also after the upstream stream has ended.
//
// Upstream comment-only blocks (a server's opening ": ok", its own
// keepalives) are forwarded to the client attached at that moment, under
// the same queue bounds and backpressure as events, but are neither kept
// for replay nor given proxy ids. Any write to the client, a forwarded
// comment included, counts as activity for the keepalive timer.
//
// When the upstream breaks (Pump ends with a read error that Close did not
// cause, and StreamConfig.Continue gives no body to go on with), the
// attached client is sent everything queued, the Final event and then its
// retry hint, so that it reconnects and resumes; at a clean
// end of stream, after Close, or after an oversized event (the proxy's
// own refusal, answered by the Final event) no hint is sent.
type Stream struct {
	cfg  StreamConfig
	ring *Ring

	mu       sync.Mutex
	att      *Attachment
	seq      uint64
	ended    bool // Pump returned
	closing  bool // Close was called: a read error is the proxy's doing
	pumpErr  error
	endedAt  time.Time
	upstream string // newest id the upstream itself assigned
	// lastOwn: a client that got every event so far holds the upstream's
	// own id (upstream) as its last event id, not one of the proxy's.
	lastOwn bool
	done    chan struct{}
	stop    chan struct{} // closed by Close
	closeFn func()        // stops the upstream read, set by SetCloser

	// Used by the Pump goroutine only.
	retry       time.Duration // the upstream's last retry field, -1 for none
	owner       *Attachment   // whose writer role the pump holds in this chunk
	ownerFailed bool          // a write of the pump to owner failed
	out         *[]byte       // owner's events of this chunk, not yet written
	scratch     []byte        // builds events that get a proxy id
	canon       []byte        // builds events written anew (Canonical)
}

// Defaults of a relayed stream: the bounds NewStream uses where a
// StreamConfig leaves them at zero or less, and the values a proxy should
// configure where its user sets none (in a StreamConfig, a zero
// WriteTimeout, Keepalive, ReplayEvents or Retry turns that off).
const (
	// DefaultQueueEvents and DefaultQueueBytes bound a client's queue of
	// live events (StreamConfig.QueueEvents and QueueBytes).
	DefaultQueueEvents = 100
	DefaultQueueBytes  = 1 << 20
	// DefaultWriteTimeout is the deadline of each write to a client
	// (StreamConfig.WriteTimeout). A stream whose writes have no deadline
	// still waits at most this long for room in a full queue.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultKeepalive is the idle time after which a keepalive comment is
	// sent (StreamConfig.Keepalive).
	DefaultKeepalive = 15 * time.Second
	// DefaultReplayEvents, DefaultReplayBytes and DefaultReplayAge bound
	// a stream's replay ring (StreamConfig.ReplayEvents, ReplayBytes and
	// ReplayAge).
	DefaultReplayEvents = 100
	DefaultReplayBytes  = 1 << 20
	DefaultReplayAge    = 60 * time.Second
	// DefaultRetry is the retry hint sent to a client that should resume
	// (StreamConfig.Retry).
	DefaultRetry = time.Second
)

// finalWriteTimeout bounds the write of the retry hint.
const finalWriteTimeout = time.Second

// NewStream returns a stream with the given configuration.
func NewStream(cfg StreamConfig) *Stream {
	if cfg.QueueEvents <= 0 {
		cfg.QueueEvents = DefaultQueueEvents
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = DefaultQueueBytes
	}
	s := &Stream{cfg: cfg, done: make(chan struct{}), stop: make(chan struct{}), retry: -1}
	if cfg.ReplayEvents > 0 && cfg.ReplayBytes > 0 {
		s.ring = NewRing(cfg.ReplayEvents, cfg.ReplayBytes, cfg.ReplayAge)
	}
	return s
}

// SetCloser registers the function that stops the upstream side (closing
// the upstream body); Close calls it.
func (s *Stream) SetCloser(f func()) {
	s.mu.Lock()
	s.closeFn = f
	s.mu.Unlock()
}

// Close stops the upstream side; Pump returns soon after. The end that
// follows is the proxy's decision, not a broken upstream: the attached
// client is sent no retry hint for it (Attachment.Close sends one).
func (s *Stream) Close() {
	s.mu.Lock()
	if !s.closing {
		close(s.stop)
	}
	s.closing = true
	f := s.closeFn
	s.mu.Unlock()
	if f != nil {
		f()
	}
}

// Done is closed when Pump has returned.
func (s *Stream) Done() <-chan struct{} { return s.done }

// Ended reports whether the upstream side has finished, and when.
func (s *Stream) Ended() (bool, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended, s.endedAt
}

// Attached reports whether a client is attached.
func (s *Stream) Attached() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.att != nil
}

// UpstreamLastID returns the newest event id that the upstream itself
// assigned, for resuming the upstream stream ("" when none).
func (s *Stream) UpstreamLastID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.upstream
}

// Resumes reports whether a client reconnecting with Last-Event-ID id is
// to be answered from this stream: its ring holds the event, and the
// stream has more to give, events after it or a live upstream. A stream
// whose upstream ended right after an event of its own id has not: that
// id is the upstream's to resume (an upstream that closes a stream for
// its client to poll, as 2025-11-25 allows, answers the GET with the rest).
func (s *Stream) Resumes(id string, now time.Time) bool {
	if s.ring == nil || id == "" {
		return false
	}
	more := false
	if !s.ring.After(id, now, func(string, []byte) bool { more = true; return false }) {
		return false
	}
	if more {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.ended || id != s.upstream
}

// Has reports whether the ring still holds an event with this id.
func (s *Stream) Has(id string, now time.Time) bool {
	if s.ring == nil || id == "" {
		return false
	}
	return s.ring.After(id, now, func(string, []byte) bool { return false })
}

// RingBytes returns the bytes the replay ring holds.
func (s *Stream) RingBytes() int64 {
	if s.ring == nil {
		return 0
	}
	return s.ring.Bytes()
}

// Evict drops replay events older than the ring's age bound.
func (s *Stream) Evict(now time.Time) int64 {
	if s.ring == nil {
		return 0
	}
	freed := s.ring.Evict(now)
	s.unreserve(freed)
	return freed
}

// ShrinkRing lowers the replay ring's bounds, giving back the bytes of
// the events it drops (a service level freeing memory).
func (s *Stream) ShrinkRing(maxEvents int, maxBytes int64) {
	if s.ring != nil {
		s.unreserve(s.ring.Shrink(maxEvents, maxBytes))
	}
}

// ShrinkRingBy lowers the replay ring's bounds to fraction of the stream's
// configured ReplayEvents and ReplayBytes, at least one event and one byte
// each, giving back the bytes of the events it drops. Bounds are only ever
// lowered: a fraction of 1 or more changes nothing.
func (s *Stream) ShrinkRingBy(fraction float64) {
	if s.ring == nil || !(fraction < 1) {
		return
	}
	fraction = max(fraction, 0)
	events := max(1, int(float64(s.cfg.ReplayEvents)*fraction))
	bytes := max(1, int64(float64(s.cfg.ReplayBytes)*fraction))
	s.ShrinkRing(events, bytes)
}

// ReplayAge returns the stream's configured StreamConfig.ReplayAge: how
// long its replay events are kept (zero when the stream sets no age).
func (s *Stream) ReplayAge() time.Duration { return s.cfg.ReplayAge }

// Discard empties the replay ring and gives its bytes back; the stream
// can no longer be resumed.
func (s *Stream) Discard() {
	if s.ring != nil {
		s.unreserve(s.ring.Reset())
	}
}

// storeLocked keeps an event in the replay ring, reserving its bytes
// first; an event whose bytes cannot be reserved is delivered but not
// kept. Called with s.mu held.
func (s *Stream) storeLocked(id string, raw []byte) {
	if s.ring == nil {
		return
	}
	n := int64(len(id) + len(raw))
	if h := s.cfg.Hooks; h != nil && h.Reserve != nil && !h.Reserve(int(n)) {
		// The event cannot be kept: a resumption from an event before it
		// must not be found, or it would replay the later ones without
		// it (as after an event too large for the ring).
		s.unreserve(s.ring.Reset())
		return
	}
	evicted, stored := s.ring.Append(id, raw, time.Now())
	if !stored {
		evicted += n
	}
	s.unreserve(evicted)
}

// unreserve gives n bytes back through the Reserve hook.
func (s *Stream) unreserve(n int64) {
	if h := s.cfg.Hooks; n > 0 && h != nil && h.Reserve != nil {
		h.Reserve(-int(n))
	}
}

// readBufSize is the size of the buffer an idle stream holds while it
// waits for the upstream: small, because it is held for the stream's
// whole life. Bursts are read in larger chunks from a pool.
const (
	readBufSize  = 512
	burstBufSize = 16 << 10
)

var burstPool = sync.Pool{New: func() any { b := make([]byte, burstBufSize); return &b }}

// Pump reads the upstream body until it ends or fails, parsing events and
// handing each to the attached client and the replay ring. It returns nil
// at a clean end of stream. At every end it calls StreamConfig.Final, if
// set, and delivers the event it returns; when the upstream broke (a read
// error not caused by Close) the attached client then gets its retry hint.
//
// While the client's queue is empty and no write is in progress, Pump
// writes the events of each upstream read to the client itself and
// flushes once per read, so an event costs no goroutine hand-off and a
// burst costs one flush. A write that blocks (the client reads slower
// than the upstream sends) stops the upstream read, so TCP flow control
// slows the upstream down, for at most WriteTimeout: past it the client
// is a slow consumer and is cut.
func (s *Stream) Pump(body io.Reader) error {
	defer close(s.done)
	var err error
	for {
		err = s.pumpBody(body)
		next := s.next(err)
		if next == nil {
			break
		}
		body = next
	}
	oversized := errors.Is(err, ErrEventTooLarge) || errors.Is(err, ErrLineTooLong)
	if oversized {
		if h := s.cfg.Hooks; h != nil && h.Oversized != nil {
			h.Oversized()
		}
	}
	s.deliverFinal(err, oversized)
	s.endChunk()
	s.mu.Lock()
	s.ended, s.endedAt, s.pumpErr = true, time.Now(), err
	// The upstream broke unless the stream ended cleanly, Close stopped
	// it, or the proxy refused an oversized event (Final answers that).
	broken := err != nil && !s.closing && !oversized
	att := s.att
	s.mu.Unlock()
	if att != nil {
		att.streamEnded(broken)
	}
	return err
}

// pumpBody relays one upstream body, with a parser of its own, and
// returns its error (nil at a clean end). A body StreamConfig.Continue
// gave is closed.
func (s *Stream) pumpBody(body io.Reader) error {
	p := NewParser(s.cfg.MaxEvent, s.cfg.MaxLine)
	err := s.relay(body, p)
	if errors.Is(err, io.EOF) {
		err = nil
		_, _ = p.Flush(s.emit)
	}
	if c, ok := body.(*continued); ok {
		_ = c.Close()
	}
	return err
}

// continued is a body StreamConfig.Continue gave, which Pump closes.
type continued struct{ io.ReadCloser }

// next asks StreamConfig.Continue, after a body that ended with err, for
// the body the stream goes on with; nil when it ends: no Continue, an
// oversized event, Close, or Continue's nil.
func (s *Stream) next(err error) io.Reader {
	if s.cfg.Continue == nil || errors.Is(err, ErrEventTooLarge) || errors.Is(err, ErrLineTooLong) {
		return nil
	}
	s.mu.Lock()
	c := Continuation{Err: err, Retry: s.retry, Stop: s.stop}
	if s.lastOwn {
		c.LastID = s.upstream
	}
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return nil
	}
	body := s.cfg.Continue(c)
	if body == nil {
		return nil
	}
	next := &continued{body}
	s.mu.Lock()
	closing = s.closing
	if !closing {
		s.closeFn = func() { _ = next.Close() }
	}
	s.mu.Unlock()
	if closing {
		_ = next.Close()
		return nil
	}
	return next
}

// relay reads body and feeds p, one upstream read at a time, until a
// read or the parser fails, and returns that error.
func (s *Stream) relay(body io.Reader, p *Parser) error {
	var small [readBufSize]byte
	// busy: the last read filled at least half a burst buffer, so the
	// upstream is sending faster than it is read and the next read goes
	// straight into a burst buffer. An idle stream waits in a small one.
	busy := false
	for {
		var err error
		if busy {
			busy, err = s.readBurst(body, p)
		} else {
			var n int
			n, err = body.Read(small[:])
			if n > 0 {
				if ferr := p.Feed(small[:n], s.emit); ferr != nil {
					err = ferr
				} else if n == len(small) && err == nil {
					// More is likely buffered: read it in one larger chunk.
					busy, err = s.readBurst(body, p)
				}
			}
		}
		s.endChunk()
		if err != nil {
			return err
		}
	}
}

// readBurst reads body once into a pooled burst buffer and feeds what it
// read to p. busy reports whether the read filled at least half the
// buffer.
func (s *Stream) readBurst(body io.Reader, p *Parser) (busy bool, err error) {
	bp := burstPool.Get().(*[]byte)
	n, err := body.Read(*bp)
	if n > 0 {
		if ferr := p.Feed((*bp)[:n], s.emit); ferr != nil {
			err = ferr
		}
	}
	burstPool.Put(bp)
	return n >= burstBufSize/2, err
}

// deliverFinal asks StreamConfig.Final, when set, for the stream's last
// event at the end of the upstream side, whose error is err, and keeps
// and delivers the event it returns.
func (s *Stream) deliverFinal(err error, oversized bool) {
	if s.cfg.Final == nil {
		return
	}
	s.mu.Lock()
	if err != nil && s.closing && !oversized {
		// The read failed because the proxy closed the stream.
		err = ErrClosed
	}
	s.mu.Unlock()
	final := s.cfg.Final(err)
	if final == nil {
		return
	}
	s.mu.Lock()
	s.storeLocked("", final)
	att := s.att
	s.mu.Unlock()
	s.deliver(att, final)
}

// Err returns Pump's error once it has returned.
func (s *Stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pumpErr
}

// emit handles one parsed upstream event: it is kept in the replay ring
// and delivered to the client attached at that moment. A client attaching
// later gets it from the ring, so every event reaches each client once.
//
// A comment-only block is only delivered, byte for byte. One that the
// parser surfaced early, ahead of the field lines of its block, has no
// blank line of its own; its lines reach the client just before the
// block's field lines (the next event) or, should those never be
// delivered, before whatever block is written next, where comment lines
// change nothing. Either way the client's framing stays valid.
func (s *Stream) emit(ev *Event) error {
	if ev.Comment {
		if s.cfg.Canonical {
			return nil
		}
		s.mu.Lock()
		att := s.att
		s.mu.Unlock()
		s.deliver(att, ev.Raw)
		return nil
	}
	if ev.Retry >= 0 {
		s.retry = time.Duration(ev.Retry) * time.Millisecond
	}
	raw, rewritten := ev.Raw, false
	if s.cfg.Rewrite != nil {
		if r := s.cfg.Rewrite(ev); r != nil {
			if len(r) == 0 {
				return nil // dropped
			}
			raw, rewritten = r, true
		}
	}
	if s.cfg.Canonical && !rewritten {
		s.canon = AppendCanonical(s.canon[:0], ev)
		if len(s.canon) == 0 {
			return nil // no field a client reads
		}
		raw = s.canon
	}
	if h := s.cfg.Hooks; h != nil && h.Event != nil {
		h.Event(len(raw))
	}
	s.mu.Lock()
	s.seq++
	id := ev.ID
	if ev.HasID && id != "" {
		s.upstream, s.lastOwn = id, true
		if _, skip := s.cfg.Skip[id]; skip {
			s.mu.Unlock()
			return nil
		}
	} else if s.cfg.IDPrefix != "" {
		id = s.cfg.IDPrefix + strconv.FormatUint(s.seq, 10)
		s.lastOwn = false
		if ev.HasID {
			// An empty upstream "id:" field resets the client's last
			// event id; ours must come after it to be the one kept.
			s.scratch = appendIDLast(s.scratch[:0], id, raw)
		} else {
			s.scratch = prependID(s.scratch[:0], id, raw)
		}
		raw = s.scratch
	} else if ev.HasID {
		s.lastOwn = false // an empty "id:" field resets the client's
	}
	s.storeLocked(id, raw)
	att := s.att
	s.mu.Unlock()
	s.deliver(att, raw)
	return nil
}

// Inject delivers events of the proxy's own (raw, whole event blocks) to
// the attached client, among the upstream's events: the answer of a
// request the proxy answered itself on a stream that carries the answers
// of many (a legacy HTTP+SSE session). raw is queued as one event under
// the same bounds as upstream events, but never waits for room: Inject
// reports false, and delivers nothing, when no client is attached, the
// stream has ended, or the queue is full. raw is not passed to Rewrite
// and not kept for replay. Inject may be called from any goroutine; the
// pump gives up the writer role after each upstream read, so an injected
// event never waits for the upstream.
func (s *Stream) Inject(raw []byte) bool {
	s.mu.Lock()
	a := s.att
	ended := s.ended
	s.mu.Unlock()
	if a == nil || ended || len(raw) == 0 {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || a.ended || !a.roomLocked(len(raw)) || !a.reserve(len(raw)) {
		return false
	}
	// Queued, it is written by the writer goroutine, or, when the pump
	// holds the writer role, right after the pump's current chunk.
	a.pushLocked(raw, false)
	a.kickLocked()
	return true
}

// prependID appends to dst raw with an id field line in front.
func prependID(dst []byte, id string, raw []byte) []byte {
	dst = append(dst, "id: "...)
	dst = append(dst, id...)
	dst = append(dst, '\n')
	return append(dst, raw...)
}

// appendIDLast appends to dst raw with an id field line inserted before
// the blank line that ends the block, so that it is the block's last id
// field. A raw block that does not end with a line terminator gets the id
// in front.
func appendIDLast(dst []byte, id string, raw []byte) []byte {
	n := len(raw)
	switch {
	case n >= 2 && raw[n-2] == '\r' && raw[n-1] == '\n':
		n -= 2
	case n >= 1 && (raw[n-1] == '\n' || raw[n-1] == '\r'):
		n--
	default:
		return prependID(dst, id, raw)
	}
	dst = append(dst, raw[:n]...)
	dst = append(dst, "id: "...)
	dst = append(dst, id...)
	dst = append(dst, '\n')
	return append(dst, raw[n:]...)
}

// deliver hands one live event to a, the client attached when the event
// was stored. Called by the Pump goroutine only, without s.mu.
func (s *Stream) deliver(a *Attachment, raw []byte) {
	if a == nil {
		return
	}
	if s.owner == a {
		s.writeOwned(raw)
		return
	}
	var deadline time.Time
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	a.mu.Lock()
	for {
		if a.closed {
			a.mu.Unlock()
			return
		}
		if !a.writing && len(a.queue) == 0 {
			// Nothing is queued or being written: the pump writes the
			// event itself and keeps the writer role until the end of
			// this upstream read.
			a.writing = true
			a.setDeadlineLocked(a.s.cfg.WriteTimeout)
			a.mu.Unlock()
			if s.owner != nil {
				s.endChunk()
			}
			s.owner, s.ownerFailed = a, false
			s.writeOwned(raw)
			return
		}
		if a.roomLocked(len(raw)) && a.reserve(len(raw)) {
			a.pushLocked(raw, false)
			a.kickLocked()
			a.mu.Unlock()
			return
		}
		// The writer goroutine is busy with a full queue: stop reading
		// the upstream until it makes room, for at most WriteTimeout.
		now := time.Now()
		if deadline.IsZero() {
			deadline = now.Add(a.waitLimit())
		} else if !now.Before(deadline) {
			a.closeLocked(ErrSlowConsumer)
			a.mu.Unlock()
			return
		}
		if timer == nil {
			timer = time.NewTimer(deadline.Sub(now))
		} else {
			timer.Reset(deadline.Sub(now))
		}
		a.waiting = true
		a.mu.Unlock()
		select {
		case <-a.space:
		case <-timer.C:
		}
		a.mu.Lock()
	}
}

// outBufSize is the capacity of the buffer that gathers the events of one
// upstream read for one write to the client.
const outBufSize = 32 << 10

var outBufPool = sync.Pool{New: func() any { b := make([]byte, 0, outBufSize); return &b }}

// writeOwned adds one event to what the pump writes to the client at the
// end of the upstream read, while it holds the writer role; the events of
// one read go out in one write (or a few, past outBufSize) and one flush.
func (s *Stream) writeOwned(raw []byte) {
	if s.ownerFailed || s.owner.isClosed.Load() {
		return
	}
	if s.out == nil {
		s.out = outBufPool.Get().(*[]byte)
	}
	buf := *s.out
	if len(buf)+len(raw) > cap(buf) {
		if !s.writeOut() {
			return
		}
		buf = *s.out
		if len(raw) > cap(buf) {
			s.writeOwnedErr(s.owner.w.Write(raw))
			return
		}
	}
	*s.out = append(buf, raw...)
}

// writeOut writes the gathered events; false when the write failed.
func (s *Stream) writeOut() bool {
	buf := *s.out
	*s.out = buf[:0]
	if len(buf) == 0 || s.ownerFailed {
		return !s.ownerFailed
	}
	return s.writeOwnedErr(s.owner.w.Write(buf))
}

func (s *Stream) writeOwnedErr(_ int, err error) bool {
	if err != nil {
		s.ownerFailed = true
		s.owner.mu.Lock()
		s.owner.writeFailedLocked(err)
		s.owner.mu.Unlock()
		return false
	}
	return true
}

// endChunk flushes what the pump wrote during one upstream read and gives
// the writer role back: to the writer goroutine when something was queued
// meanwhile (a retry hint after a cut), else to nobody.
func (s *Stream) endChunk() {
	a := s.owner
	if a == nil {
		return
	}
	var err error
	if s.out != nil {
		if !a.isClosed.Load() {
			s.writeOut()
		}
		*s.out = (*s.out)[:0]
		outBufPool.Put(s.out)
		s.out = nil
	}
	s.owner = nil
	if !s.ownerFailed {
		err = a.w.Flush()
	}
	a.mu.Lock()
	if err != nil {
		a.writeFailedLocked(err)
	}
	if err != nil || s.ownerFailed {
		// The connection failed mid-write: no retry hint can follow.
		a.final = nil
	}
	a.writing = false
	a.idleLocked()
	a.resumeLocked()
	a.mu.Unlock()
}

// writeFailedLocked ends the attachment whose write or flush to the
// client failed with err, and marks it broken (see Broken).
func (a *Attachment) writeFailedLocked(err error) {
	a.broken = true
	a.closeLocked(writeErrReason(err))
}

// writeErrReason classifies a failed client write.
func writeErrReason(err error) error {
	if isTimeout(err) {
		return ErrSlowConsumer
	}
	return ErrClientGone
}

// Attach connects a client to the stream, replacing any attached client
// (which ends with ErrDetached). When after is not empty the events the
// ring holds after that id are queued first; found reports whether the id
// was in the ring. retry is the retry hint of this client, sent when the
// proxy closes the attachment or the upstream breaks while it is attached:
// zero means StreamConfig.Retry, a negative value none. A client attaching
// to a stream that has already ended gets what the ring holds and no hint.
// The caller must call Wait.
func (s *Stream) Attach(w ClientWriter, after string, retry time.Duration) (a *Attachment, found bool) {
	if retry == 0 {
		retry = s.cfg.Retry
	}
	a = newAttachment(s, w, retry)
	s.mu.Lock()
	old := s.att
	s.att = a
	if after != "" && s.ring != nil {
		found = s.ring.After(after, time.Now(), func(_ string, raw []byte) bool {
			return a.enqueueReplay(raw)
		})
	}
	ended := s.ended
	s.mu.Unlock()
	if old != nil {
		old.close(ErrDetached)
	}
	a.startKeepalive()
	if ended {
		// The stream's end was told to the client attached then; this
		// one gets what the ring holds and ends cleanly.
		a.streamEnded(false)
	}
	return a, found
}

// detach removes a from the stream if it is still the attached client.
func (s *Stream) detach(a *Attachment) {
	s.mu.Lock()
	if s.att == a {
		s.att = nil
	}
	s.mu.Unlock()
}

// Attachment is one client connection receiving a stream's events.
//
// One goroutine at a time holds the writer role (writing): the stream's
// Pump while it writes live events through, or the attachment's writer
// goroutine, which exists only while queued items (replayed events, events
// that arrived during a write, a keepalive, the retry hint) wait.
type Attachment struct {
	s     *Stream
	w     ClientWriter
	retry time.Duration

	mu       sync.Mutex
	queue    [][]byte
	qbytes   int  // bytes in queue
	replayN  int  // events at the front of queue that were replayed
	replayB  int  // and their bytes
	inflight int  // live bytes the writer goroutine took and is writing
	taken    int  // all bytes (live and replayed) it took and is writing
	ping     bool // a keepalive comment is due
	writing  bool // a goroutine holds the writer role
	waiting  bool // the pump waits for room in the queue
	closed   bool
	isClosed atomic.Bool // closed, readable without mu by the pump
	ended    bool        // the stream has no more events
	reason   error
	broken   bool          // a write or flush to the client failed
	space    chan struct{} // buffered 1; signals the waiting pump
	finished chan struct{} // closed when nothing more will be written
	timer    *time.Timer
	final    []byte // written last, after the queue (retry hint)
	onEnd    func() // run when the attachment ends early
}

func newAttachment(s *Stream, w ClientWriter, retry time.Duration) *Attachment {
	return &Attachment{s: s, w: w, retry: retry, finished: make(chan struct{}), space: make(chan struct{}, 1)}
}

// enqueueReplay queues a copy of an event replayed from the ring; called
// with s.mu held. Replayed events do not count against the queue bounds
// (the ring bounds them). It reports whether the attachment is still open.
func (a *Attachment) enqueueReplay(raw []byte) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false
	}
	if !a.reserve(len(raw)) {
		a.closeLocked(ErrSlowConsumer)
		return false
	}
	a.pushLocked(raw, true)
	a.kickLocked()
	return true
}

// roomLocked reports whether a live event of n bytes fits the queue
// bounds, counting the live bytes being written. One event always fits
// an empty queue.
func (a *Attachment) roomLocked(n int) bool {
	cfg := &a.s.cfg
	live, liveBytes := len(a.queue)-a.replayN, a.qbytes-a.replayB+a.inflight
	if live >= cfg.QueueEvents {
		return false
	}
	return liveBytes == 0 || liveBytes+n <= cfg.QueueBytes
}

// pushLocked appends a copy of raw to the queue; its bytes are reserved.
func (a *Attachment) pushLocked(raw []byte, replay bool) {
	a.queue = append(a.queue, getEventBuf(raw))
	a.qbytes += len(raw)
	if replay {
		a.replayN++
		a.replayB += len(raw)
	}
}

// waitLimit is how long the pump waits for room in a full queue before
// the client counts as a slow consumer.
func (a *Attachment) waitLimit() time.Duration {
	if t := a.s.cfg.WriteTimeout; t > 0 {
		return t
	}
	return DefaultWriteTimeout
}

func (a *Attachment) reserve(n int) bool {
	if h := a.s.cfg.Hooks; h != nil && h.Reserve != nil {
		return h.Reserve(n)
	}
	return true
}

func (a *Attachment) kickLocked() {
	if !a.writing {
		a.writing = true
		go a.writeLoop()
	}
}

// signalLocked wakes the pump waiting for room.
func (a *Attachment) signalLocked() {
	if a.waiting {
		a.waiting = false
		select {
		case a.space <- struct{}{}:
		default:
		}
	}
}

// setDeadlineLocked gives the writes that follow a deadline. It is set
// under a.mu, so that a close that cuts a write short (deadline now)
// cannot be overridden by it.
func (a *Attachment) setDeadlineLocked(timeout time.Duration) {
	if timeout > 0 {
		_ = a.w.SetWriteDeadline(time.Now().Add(timeout))
	}
}

// idleLocked is called by the goroutine giving up the writer role with
// its writes done: an open attachment may now be silent for longer than
// the write deadline, which the writer is told (see ClientWriter).
func (a *Attachment) idleLocked() {
	if !a.closed && a.s.cfg.WriteTimeout > 0 {
		_ = a.w.SetWriteDeadline(time.Time{})
	}
}

// resumeLocked is called by the goroutine giving up the writer role: it
// starts the writer goroutine when something waits to be written, else
// finishes a closed or ended attachment, else rearms the keepalive.
func (a *Attachment) resumeLocked() {
	switch {
	case len(a.queue) > 0 || a.final != nil || a.ping && !a.closed:
		a.writing = true
		go a.writeLoop()
	case a.closed || a.ended:
		a.finishLocked()
	case a.timer != nil:
		a.timer.Reset(a.s.cfg.Keepalive)
	}
}

// eventBufSize is the capacity of the pooled buffers that hold queued
// events; a larger event gets a buffer of its own.
const eventBufSize = 2 << 10

var eventBufPool = sync.Pool{New: func() any { b := make([]byte, 0, eventBufSize); return &b }}

// getEventBuf returns a copy of raw, in a pooled buffer when it fits.
func getEventBuf(raw []byte) []byte {
	if len(raw) > eventBufSize {
		return append([]byte(nil), raw...)
	}
	bp := eventBufPool.Get().(*[]byte)
	return append((*bp)[:0], raw...)
}

// putEventBuf returns a buffer from getEventBuf to the pool once written.
func putEventBuf(b []byte) {
	if cap(b) != eventBufSize {
		return
	}
	b = b[:0]
	eventBufPool.Put(&b)
}

// maxBatch caps the events one write of the writer goroutine takes from
// the queue before it flushes.
const maxBatch = 64

// writeLoop is the writer goroutine: it writes the queued events in
// batches (one deadline and one flush per batch), then a due keepalive,
// then the retry hint, and exits when there is nothing left to write.
func (a *Attachment) writeLoop() {
	defer a.recoverPanic()
	var batch [][]byte
	for {
		a.mu.Lock()
		final, ping := false, false
		var item []byte
		switch {
		case len(a.queue) > 0: // a closed attachment has an empty queue
			batch = a.takeBatchLocked(batch[:0])
		case a.ping && !a.closed:
			item, ping = keepaliveComment, true
			a.ping = false
		case a.final != nil:
			item, final = a.final, true
			a.final = nil
		default:
			a.writing = false
			a.idleLocked()
			a.resumeLocked()
			a.mu.Unlock()
			return
		}
		timeout := a.s.cfg.WriteTimeout
		if final && (timeout <= 0 || timeout > finalWriteTimeout) {
			timeout = finalWriteTimeout
		}
		a.setDeadlineLocked(timeout)
		a.mu.Unlock()
		var err error
		if item != nil {
			err = a.write(item)
		} else {
			err = a.writeBatch(batch)
		}
		if err != nil {
			a.mu.Lock()
			a.writeFailedLocked(err)
			a.final = nil
			a.mu.Unlock()
			continue
		}
		if ping {
			if h := a.s.cfg.Hooks; h != nil && h.Keepalive != nil {
				h.Keepalive()
			}
		}
	}
}

// takeBatchLocked moves up to maxBatch events from the front of the queue
// to batch, counting them as taken by the writer, and returns batch.
func (a *Attachment) takeBatchLocked(batch [][]byte) [][]byte {
	n := min(len(a.queue), maxBatch)
	for i := range n {
		b := a.queue[i]
		batch = append(batch, b)
		a.queue[i] = nil
		a.qbytes -= len(b)
		a.taken += len(b)
		if a.replayN > 0 {
			a.replayN--
			a.replayB -= len(b)
		} else {
			a.inflight += len(b)
		}
	}
	a.queue = a.queue[n:]
	if len(a.queue) == 0 {
		a.queue = nil
	}
	return batch
}

// writeBatch writes the events of a batch and flushes them, then gives
// their bytes back and wakes a pump waiting for room.
func (a *Attachment) writeBatch(batch [][]byte) error {
	var err error
	for _, b := range batch {
		if err == nil {
			_, err = a.w.Write(b)
		}
	}
	if err == nil {
		err = a.w.Flush()
	}
	a.mu.Lock()
	for _, b := range batch {
		a.reserve(-len(b))
		putEventBuf(b)
	}
	a.inflight, a.taken = 0, 0
	a.signalLocked()
	a.mu.Unlock()
	clear(batch)
	return err
}

// recoverPanic hands a panic of one of the attachment's goroutines to
// Hooks.Panic and ends the attachment, so that Wait returns; without the
// hook the panic goes on.
func (a *Attachment) recoverPanic() {
	h := a.s.cfg.Hooks
	if h == nil || h.Panic == nil {
		return
	}
	v := recover()
	if v == nil {
		return
	}
	h.Panic(v)
	if a.mu.TryLock() {
		a.finishAfterPanicLocked()
		a.mu.Unlock()
		return
	}
	// a.mu is held, by another goroutine for a moment or by the frame
	// that panicked; finish once it is free.
	go func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.finishAfterPanicLocked()
	}()
}

// finishAfterPanicLocked closes the attachment and marks everything
// written, after its writer died.
func (a *Attachment) finishAfterPanicLocked() {
	a.writing = false
	a.reserve(-a.taken)
	a.taken, a.inflight = 0, 0
	a.final, a.retry = nil, 0 // nothing more is written to this client
	a.closeLocked(ErrClosed)
	a.finishLocked()
}

func (a *Attachment) write(p []byte) error {
	if _, err := a.w.Write(p); err != nil {
		return err
	}
	return a.w.Flush()
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout() || errors.Is(err, context.DeadlineExceeded)
}

// startKeepalive arms the keepalive timer.
func (a *Attachment) startKeepalive() {
	if a.s.cfg.Keepalive <= 0 {
		return
	}
	a.mu.Lock()
	a.timer = time.AfterFunc(a.s.cfg.Keepalive, a.keepalive)
	a.mu.Unlock()
}

var keepaliveComment = []byte(":\n\n")

func (a *Attachment) keepalive() {
	defer a.recoverPanic()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || a.ended {
		return
	}
	if !a.writing {
		// Not queued: a keepalive holds no reserved bytes.
		a.ping = true
		a.kickLocked()
		return
	}
	a.timer.Reset(a.s.cfg.Keepalive)
}

// streamEnded tells the attachment no more events will come. When the
// upstream broke, the retry hint (if the attachment has one) is written
// after everything queued, as after a proxy close, and the attachment
// still ends cleanly.
func (a *Attachment) streamEnded(broken bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ended = true
	if broken && !a.closed && a.retry > 0 && a.final == nil {
		a.final = AppendRetry(nil, int(a.retry/time.Millisecond))
	}
	a.wrapUpLocked()
}

// close ends the attachment for reason.
func (a *Attachment) close(reason error) {
	a.mu.Lock()
	a.closeLocked(reason)
	a.mu.Unlock()
}

func (a *Attachment) closeLocked(reason error) {
	select {
	case <-a.finished:
		// Everything was written and the client's handler may have
		// returned: nothing may touch the writer any more.
		return
	default:
	}
	if a.closed {
		// The first reason stays; but a client that went away or was
		// replaced is sent nothing more, not even a pending retry hint.
		if a.writing && (reason == ErrClientGone || reason == ErrDetached) {
			a.final = nil
			_ = a.w.SetWriteDeadline(time.Now())
		}
		return
	}
	a.closed = true
	a.isClosed.Store(true)
	a.reason = reason
	a.signalLocked()
	if f := a.onEnd; f != nil && reason != ErrDetached {
		a.onEnd = nil
		go f()
	}
	for _, q := range a.queue {
		a.reserve(-len(q))
		putEventBuf(q)
	}
	a.queue, a.qbytes, a.replayN, a.replayB, a.ping = nil, 0, 0, 0, false
	if reason == ErrSlowConsumer {
		if h := a.s.cfg.Hooks; h != nil && h.SlowConsumer != nil {
			h.SlowConsumer()
		}
	}
	if a.retry > 0 && (reason == ErrSlowConsumer || reason == ErrClosed) {
		if a.final == nil {
			a.final = AppendRetry(nil, int(a.retry/time.Millisecond))
		}
	} else {
		// A client that went away or was replaced is sent nothing more,
		// not even the hint of a broken upstream.
		a.final = nil
	}
	if a.timer != nil {
		a.timer.Stop()
	}
	if a.writing && (reason == ErrClientGone || reason == ErrDetached || a.final == nil) {
		// Unblock a write stuck on a client that stopped reading; with a
		// retry hint pending the write keeps its own deadline instead.
		_ = a.w.SetWriteDeadline(time.Now())
	}
	a.wrapUpLocked()
}

// wrapUpLocked, once nothing more will be queued, has the retry hint
// written when one is pending, or else finishes the attachment. A
// goroutine holding the writer role does that itself when it gives the
// role up (see resumeLocked).
func (a *Attachment) wrapUpLocked() {
	switch {
	case a.writing:
	case a.final != nil:
		a.kickLocked()
	default:
		a.finishLocked()
	}
}

func (a *Attachment) finishLocked() {
	select {
	case <-a.finished:
	default:
		close(a.finished)
		if a.timer != nil {
			a.timer.Stop()
		}
	}
}

// Close ends the attachment as the proxy's decision (drain, shedding),
// with the retry hint when one was given.
func (a *Attachment) Close() { a.close(ErrClosed) }

// Closed reports whether the attachment has been closed.
func (a *Attachment) Closed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closed
}

// Queued returns the bytes waiting to be written to the client.
func (a *Attachment) Queued() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.qbytes + a.inflight
}

// Gone ends the attachment because its client went away.
func (a *Attachment) Gone() { a.close(ErrClientGone) }

// OnEnd registers f to run, once and in its own goroutine, when the
// attachment ends before its stream does (slow consumer, client gone,
// closed by the proxy), but not when another client takes it over. A
// relay uses it to stop reading an upstream nobody will resume.
func (a *Attachment) OnEnd(f func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		if a.reason != ErrDetached {
			go f()
		}
		return
	}
	a.onEnd = f
}

// Broken reports whether a write or flush to the client failed: the
// client may have received part of an event, so its response must not
// end as a complete one would. Valid once Wait has returned.
func (a *Attachment) Broken() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.broken
}

// Wait blocks until the client has been sent everything the stream will
// send it, or the attachment ended early; it returns nil when the stream
// ended, cleanly or not (Stream.Err tells which), else the reason. When
// ctx ends (the client went away) the attachment is closed with
// ErrClientGone. No write to the client is in progress when Wait returns.
func (a *Attachment) Wait(ctx context.Context) error {
	select {
	case <-a.finished:
	case <-ctx.Done():
		a.close(ErrClientGone)
		<-a.finished
	}
	a.s.detach(a)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.timer != nil {
		a.timer.Stop()
	}
	return a.reason
}
