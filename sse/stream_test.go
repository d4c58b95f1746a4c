package sse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"
)

// hangBound is how long a test waits for something that should happen at
// once before it declares a hang. It is not a timing assertion.
const hangBound = 3 * time.Second

// timeoutError is what a write past its deadline returns, as net.Conn's
// os.ErrDeadlineExceeded does.
type timeoutError struct{}

func (timeoutError) Error() string { return "i/o timeout" }
func (timeoutError) Timeout() bool { return true }

var errBrokenPipe = errors.New("broken pipe")

// fakeWriter is a ClientWriter that records every call. Like a net.Conn, a
// Write fails with a timeout once the write deadline has passed; while
// blocked is set a Write waits until it is cleared or the deadline passes
// (SetWriteDeadline wakes it, so a deadline in the past ends it at once).
type fakeWriter struct {
	mu       sync.Mutex
	ops      []string // "D" SetWriteDeadline, "C" the same with the zero time, "W" Write, "F" Flush, "T" timed-out Write
	writes   [][]byte
	buf      bytes.Buffer
	deadline time.Time
	blocked  bool
	err      error
	wake     chan struct{} // closed and replaced when deadline, blocked or err change
	blocking chan struct{} // gets a value when a Write starts to block
	wrote    chan struct{} // gets a value after every successful Write
}

func newFakeWriter() *fakeWriter {
	return &fakeWriter{wake: make(chan struct{}), blocking: make(chan struct{}, 1), wrote: make(chan struct{}, 1)}
}

func (f *fakeWriter) wakeLocked() {
	close(f.wake)
	f.wake = make(chan struct{})
}

func (f *fakeWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		if f.err != nil {
			return 0, f.err
		}
		if !f.deadline.IsZero() && !time.Now().Before(f.deadline) {
			f.ops = append(f.ops, "T")
			return 0, timeoutError{}
		}
		if !f.blocked {
			break
		}
		select {
		case f.blocking <- struct{}{}:
		default:
		}
		wake := f.wake
		var tc <-chan time.Time
		var timer *time.Timer
		if !f.deadline.IsZero() {
			timer = time.NewTimer(time.Until(f.deadline))
			tc = timer.C
		}
		f.mu.Unlock()
		select {
		case <-wake:
		case <-tc:
		}
		if timer != nil {
			timer.Stop()
		}
		f.mu.Lock()
	}
	f.ops = append(f.ops, "W")
	f.writes = append(f.writes, bytes.Clone(p))
	f.buf.Write(p)
	select {
	case f.wrote <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (f *fakeWriter) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "F")
	return f.err
}

func (f *fakeWriter) SetWriteDeadline(t time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t.IsZero() {
		f.ops = append(f.ops, "C")
	} else {
		f.ops = append(f.ops, "D")
	}
	f.deadline = t
	f.wakeLocked()
	return nil
}

func (f *fakeWriter) setBlocked(b bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blocked = b
	f.wakeLocked()
}

func (f *fakeWriter) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
	f.wakeLocked()
}

func (f *fakeWriter) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.buf.String()
}

func (f *fakeWriter) Writes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, len(f.writes))
	for i, w := range f.writes {
		out[i] = string(w)
	}
	return out
}

func (f *fakeWriter) Ops() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.ops, "")
}

// count returns how many writes were exactly s.
func (f *fakeWriter) count(s string) int {
	n := 0
	for _, w := range f.Writes() {
		if w == s {
			n++
		}
	}
	return n
}

// chunkReader returns data in random chunks of 1 to max bytes.
type chunkReader struct {
	data []byte
	rng  *rand.Rand
	max  int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(1+c.rng.IntN(c.max), len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// waitUntil polls cond until it holds, failing the test after hangBound.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangBound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitAtt calls a.Wait, failing the test if it does not return.
func waitAtt(t *testing.T, a *Attachment, ctx context.Context) error {
	t.Helper()
	ch := make(chan error, 1)
	go func() { ch <- a.Wait(ctx) }()
	select {
	case err := <-ch:
		return err
	case <-time.After(hangBound):
		t.Fatal("Attachment.Wait hung")
		return nil
	}
}

// startPump runs s.Pump(r) and returns a channel with its result.
func startPump(s *Stream, r io.Reader) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- s.Pump(r) }()
	return ch
}

// pipeStream returns a stream with cfg pumped from the read end of a
// pipe: the test writes the upstream into pw (closing it ends the stream
// cleanly) and pumped gets Pump's result.
func pipeStream(cfg StreamConfig) (s *Stream, pw *io.PipeWriter, pumped <-chan error) {
	s = NewStream(cfg)
	pr, pw := io.Pipe()
	return s, pw, startPump(s, pr)
}

func pumpResult(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(hangBound):
		t.Fatal("Pump hung")
		return nil
	}
}

// evN is the n-th test event, with the id strconv.Itoa(n).
func evN(n int) string {
	return "id: " + strconv.Itoa(n) + "\ndata: {\"n\":" + strconv.Itoa(n) + "}\n\n"
}

func evRange(from, to int) string {
	var b strings.Builder
	for i := from; i <= to; i++ {
		b.WriteString(evN(i))
	}
	return b.String()
}

// reserveCounter is a Hooks.Reserve that keeps the balance of reserved
// bytes and can refuse reservations.
type reserveCounter struct {
	mu     sync.Mutex
	sum    int
	calls  int
	refuse bool
	bad    bool // a release made the balance negative
}

func (r *reserveCounter) Reserve(n int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if n > 0 && r.refuse {
		return false
	}
	r.sum += n
	if r.sum < 0 {
		r.bad = true
	}
	return true
}

// check asserts every reserved byte was given back once the streams'
// replay rings are discarded.
func (r *reserveCounter) check(t *testing.T, streams ...*Stream) {
	t.Helper()
	for _, s := range streams {
		s.Discard()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sum != 0 || r.bad {
		t.Errorf("reserved bytes not balanced: sum %d, went negative %v (%d calls)", r.sum, r.bad, r.calls)
	}
}

func baseConfig() StreamConfig {
	return StreamConfig{
		QueueEvents:  64,
		QueueBytes:   1 << 16,
		WriteTimeout: time.Second,
		ReplayEvents: 128,
		ReplayBytes:  1 << 16,
	}
}

// relayInput exercises the parser's corners; relayWant is what a client
// must receive from it: every block, comments included, byte-exact;
// relayComments is the bytes of its comment-only blocks.
const relayInput = "\xEF\xBB\xBF" + // BOM, dropped
	": hello\n\n" + // comment-only block, forwarded
	"id: 1\nevent: message\ndata: {\"a\":1}\n\n" +
	"\n\n" + // blank lines outside a block, dropped
	"data: multi\r\ndata: line\r\n\r\n" +
	": ping\n" + // comment run before a field line, forwarded
	"data: x\rid: 2\r\r" +
	"retry: 100\ndata: y\n\n" +
	"data: a\n: inner comment\ndata: b\n\n" + // inner comment kept in Raw
	"event: prime\nid: 3\ndata:\n\n" + // priming event with empty data
	"data: z\r\r"

const relayWant = ": hello\n\n" +
	"id: 1\nevent: message\ndata: {\"a\":1}\n\n" +
	"data: multi\r\ndata: line\r\n\r\n" +
	": ping\n" +
	"data: x\rid: 2\r\r" +
	"retry: 100\ndata: y\n\n" +
	"data: a\n: inner comment\ndata: b\n\n" +
	"event: prime\nid: 3\ndata:\n\n" +
	"data: z\r\r"

const relayComments = ": hello\n\n" + ": ping\n"

func TestStreamRelayByteExact(t *testing.T) {
	inputs := map[string]struct{ in, want, comments string }{
		"trailing CR":     {relayInput, relayWant, relayComments},
		"incomplete tail": {relayInput + "data: never ended\n", relayWant, relayComments},
		"many events":     {evRange(1, 300), evRange(1, 300), ""},
	}
	for name, tc := range inputs {
		for seed := range uint64(20) {
			t.Run(fmt.Sprintf("%s/seed%d", name, seed), func(t *testing.T) {
				var events, eventBytes atomic.Int64
				cfg := baseConfig()
				cfg.QueueEvents = 1000
				cfg.QueueBytes = 1 << 20
				cfg.Hooks = &Hooks{Event: func(n int) { events.Add(1); eventBytes.Add(int64(n)) }}
				s := NewStream(cfg)
				w := newFakeWriter()
				a, found := s.Attach(w, "", 0)
				if found {
					t.Error("found with no after id")
				}
				var r io.Reader = &chunkReader{data: []byte(tc.in), rng: rand.New(rand.NewPCG(seed, 1)), max: 1 + int(seed)*3}
				if seed == 0 {
					r = strings.NewReader(tc.in) // whole reads, through the burst buffer
				}
				if err := s.Pump(r); err != nil {
					t.Fatalf("Pump: %v", err)
				}
				if err := waitAtt(t, a, context.Background()); err != nil {
					t.Fatalf("Wait: %v", err)
				}
				if got := w.String(); got != tc.want {
					t.Fatalf("client got\n%q\nwant\n%q", got, tc.want)
				}
				if want := len(tc.want) - len(tc.comments); int(eventBytes.Load()) != want {
					t.Errorf("Event hook counted %d bytes, want %d", eventBytes.Load(), want)
				}
				// The blocks of one upstream read are written together
				// after one deadline and flushed once; the deadline is
				// cleared after (see ClientWriter).
				n := len(w.Writes())
				if blocks := events.Load() + int64(strings.Count(tc.comments, ":")); int64(n) > blocks {
					t.Errorf("%d writes for %d blocks", n, blocks)
				}
				ops := w.Ops()
				if !regexp.MustCompile(`^(DW+FC)*$`).MatchString(ops) || strings.Count(ops, "W") != n {
					t.Errorf("ops %q, want deadline, writes, flush, clear per read", ops)
				}
				if ended, at := s.Ended(); !ended || at.IsZero() {
					t.Error("stream not ended")
				}
				if s.Attached() {
					t.Error("still attached after Wait")
				}
				select {
				case <-s.Done():
				default:
					t.Error("Done not closed")
				}
			})
		}
	}
}

func TestStreamNoWriteDeadlineWhenUnset(t *testing.T) {
	cfg := baseConfig()
	cfg.WriteTimeout = 0
	s := NewStream(cfg)
	w := newFakeWriter()
	a, _ := s.Attach(w, "", 0)
	if err := s.Pump(strings.NewReader(evRange(1, 3))); err != nil {
		t.Fatal(err)
	}
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Fatal(err)
	}
	if ops := w.Ops(); !regexp.MustCompile(`^(W+F)+$`).MatchString(ops) {
		t.Errorf("ops %q", ops)
	}
}

func TestStreamZeroConfig(t *testing.T) {
	// The zero configuration relays (default queue bounds, no replay).
	s := NewStream(StreamConfig{})
	w := newFakeWriter()
	a, _ := s.Attach(w, "", 0)
	if err := s.Pump(strings.NewReader(evRange(1, 50))); err != nil {
		t.Fatal(err)
	}
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if w.String() != evRange(1, 50) {
		t.Error("events lost with the zero configuration")
	}
	if s.RingBytes() != 0 || s.Has("1", time.Now()) || s.Evict(time.Now()) != 0 {
		t.Error("a stream without replay holds events")
	}
}

func TestStreamRewrite(t *testing.T) {
	cfg := baseConfig()
	cfg.Rewrite = func(ev *Event) []byte {
		if ev.Name == "endpoint" {
			return []byte("event: endpoint\ndata: /proxy" + string(ev.Data) + "\n\n")
		}
		return nil // keep
	}
	in := "event: endpoint\r\ndata: /messages?s=1\r\n\r\n" + evN(1) + "id: 2\nevent: endpoint\ndata: /m\n\n" + evN(3)
	want := "event: endpoint\ndata: /proxy/messages?s=1\n\n" + evN(1) + "event: endpoint\ndata: /proxy/m\n\n" + evN(3)
	s := NewStream(cfg)
	w := newFakeWriter()
	a, _ := s.Attach(w, "", 0)
	if err := s.Pump(&chunkReader{data: []byte(in), rng: rand.New(rand.NewPCG(7, 7)), max: 5}); err != nil {
		t.Fatal(err)
	}
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := w.String(); got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	// The ring holds the rewritten bytes, under the upstream id.
	w2 := newFakeWriter()
	a2, found := s.Attach(w2, "1", 0)
	if !found {
		t.Fatal("id 1 not found")
	}
	if err := waitAtt(t, a2, context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := w2.String(), "event: endpoint\ndata: /proxy/m\n\n"+evN(3); got != want {
		t.Fatalf("replay got %q want %q", got, want)
	}
}

// clientIDs parses what a client received and returns, for every event,
// the client's last event id after it (what it would resume with).
func clientIDs(t *testing.T, b string) []string {
	t.Helper()
	p := NewParser(0, 0)
	var ids []string
	err := p.Feed([]byte(b), func(ev *Event) error {
		if !ev.Comment && (ev.HasID || ev.Retry < 0) { // not a retry hint
			ids = append(ids, p.LastEventID())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Flush(nil); err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestStreamIDPrefix(t *testing.T) {
	cfg := baseConfig()
	cfg.IDPrefix = "px-"
	s, pw, pumped := pipeStream(cfg)
	w := newFakeWriter()
	a, _ := s.Attach(w, "", 0)

	steps := []struct {
		in, out, upstream string
	}{
		{"data: a\n\n", "id: px-1\ndata: a\n\n", ""},
		{"id: up-1\ndata: b\n\n", "id: up-1\ndata: b\n\n", "up-1"},
		{"data: c\r\n\r\n", "id: px-3\ndata: c\r\n\r\n", "up-1"},
		// An empty id resets the client's last id: ours goes after it.
		{"id:\ndata: d\r\n\r\n", "id:\ndata: d\r\nid: px-4\n\r\n", "up-1"},
		{"id: up-2\ndata: e\n\n", "id: up-2\ndata: e\n\n", "up-2"},
		// An id with NUL is ignored by clients: the event gets ours.
		{"id: bad\x00\ndata: f\n\n", "id: px-6\nid: bad\x00\ndata: f\n\n", "up-2"},
		{"event: prime\ndata:\n\n", "id: px-7\nevent: prime\ndata:\n\n", "up-2"},
	}
	var want string
	for _, st := range steps {
		if _, err := io.WriteString(pw, st.in); err != nil {
			t.Fatal(err)
		}
		want += st.out
		waitUntil(t, "event "+st.out, func() bool { return w.String() == want || len(w.String()) > len(want) })
		if got := w.String(); got != want {
			t.Fatalf("got %q\nwant %q", got, want)
		}
		if got := s.UpstreamLastID(); got != st.upstream {
			t.Errorf("UpstreamLastID %q, want %q", got, st.upstream)
		}
	}
	pw.Close()
	if err := pumpResult(t, pumped); err != nil {
		t.Fatal(err)
	}
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Fatal(err)
	}
	wantIDs := []string{"px-1", "up-1", "px-3", "px-4", "up-2", "px-6", "px-7"}
	if got := clientIDs(t, w.String()); fmt.Sprint(got) != fmt.Sprint(wantIDs) {
		t.Errorf("client's last ids %v, want %v", got, wantIDs)
	}
	// Every id the client can hold resumes the stream just after it.
	for i, id := range wantIDs {
		w2 := newFakeWriter()
		a2, found := s.Attach(w2, id, 0)
		if !found {
			t.Fatalf("id %q not found", id)
		}
		if err := waitAtt(t, a2, context.Background()); err != nil {
			t.Fatal(err)
		}
		var rest string
		for _, st := range steps[i+1:] {
			rest += st.out
		}
		if w2.String() != rest {
			t.Errorf("resume after %q got %q want %q", id, w2.String(), rest)
		}
	}
}

func TestAppendIDLast(t *testing.T) {
	for in, want := range map[string]string{
		"id:\ndata: x\n\n":       "id:\ndata: x\nid: p\n\n",
		"id:\rdata: x\r\r":       "id:\rdata: x\rid: p\n\r",
		"id:\r\ndata: x\r\n\r\n": "id:\r\ndata: x\r\nid: p\n\r\n",
		"id:\ndata: x\r\n\n":     "id:\ndata: x\r\nid: p\n\n",
		"id:\ndata: x\r\r\n":     "id:\ndata: x\rid: p\n\r\n",
		"no terminator":          "id: p\nno terminator",
		"":                       "id: p\n",
	} {
		if got := string(appendIDLast(nil, "p", []byte(in))); got != want {
			t.Errorf("appendIDLast(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStreamReplay(t *testing.T) {
	for _, late := range []bool{false, true} {
		t.Run(fmt.Sprintf("afterEnd=%v", late), func(t *testing.T) {
			rc := &reserveCounter{}
			cfg := baseConfig()
			cfg.Hooks = &Hooks{Reserve: rc.Reserve}
			s, pw, pumped := pipeStream(cfg)

			wa := newFakeWriter()
			ctxA, cancelA := context.WithCancel(context.Background())
			defer cancelA()
			a, found := s.Attach(wa, "", 0)
			if found {
				t.Error("found without an id")
			}
			for i := 1; i <= 3; i++ {
				io.WriteString(pw, evN(i))
			}
			waitUntil(t, "client A to get 3 events", func() bool { return wa.String() == evRange(1, 3) })
			cancelA()
			if err := waitAtt(t, a, ctxA); !errors.Is(err, ErrClientGone) {
				t.Fatalf("A's Wait = %v, want ErrClientGone", err)
			}
			if s.Attached() {
				t.Error("still attached after A left")
			}
			// The pump goes on without a client.
			for i := 4; i <= 6; i++ {
				io.WriteString(pw, evN(i))
			}
			waitUntil(t, "pump to reach 6", func() bool { return s.UpstreamLastID() == "6" })
			last := 9
			if late {
				pw.Close()
				if err := pumpResult(t, pumped); err != nil {
					t.Fatal(err)
				}
				last = 6
			}
			wb := newFakeWriter()
			b, found := s.Attach(wb, "3", 0)
			if !found {
				t.Fatal("id 3 not found")
			}
			if !late {
				for i := 7; i <= 9; i++ {
					io.WriteString(pw, evN(i))
				}
				pw.Close()
				if err := pumpResult(t, pumped); err != nil {
					t.Fatal(err)
				}
			}
			if err := waitAtt(t, b, context.Background()); err != nil {
				t.Fatalf("B's Wait = %v", err)
			}
			if got, want := wb.String(), evRange(4, last); got != want {
				t.Fatalf("B got %q\nwant %q", got, want)
			}
			// An unknown id is not found; nothing is replayed.
			wc := newFakeWriter()
			c, found := s.Attach(wc, "nope", 0)
			if found {
				t.Error("unknown id found")
			}
			if err := waitAtt(t, c, context.Background()); err != nil || wc.String() != "" {
				t.Errorf("unknown id: Wait %v, got %q", err, wc.String())
			}
			if !s.Has("5", time.Now()) || s.Has("nope", time.Now()) || s.Has("", time.Now()) {
				t.Error("Has is wrong")
			}
			if s.RingBytes() == 0 {
				t.Error("ring empty")
			}
			rc.check(t, s)
		})
	}
}

func TestStreamReplayEvicted(t *testing.T) {
	cfg := baseConfig()
	cfg.ReplayEvents = 5
	s := NewStream(cfg)
	if err := s.Pump(strings.NewReader(evRange(1, 20))); err != nil {
		t.Fatal(err)
	}
	w := newFakeWriter()
	a, found := s.Attach(w, "3", 0)
	if found {
		t.Error("evicted id found")
	}
	waitAtt(t, a, context.Background())
	w = newFakeWriter()
	a, found = s.Attach(w, "16", 0)
	if !found {
		t.Fatal("id 16 not found")
	}
	waitAtt(t, a, context.Background())
	if w.String() != evRange(17, 20) {
		t.Errorf("got %q", w.String())
	}
	// Expiry by age.
	if freed := s.Evict(time.Now().Add(time.Hour)); freed != 0 {
		t.Errorf("no ReplayAge, but Evict freed %d", freed)
	}
	cfg.ReplayAge = time.Minute
	s = NewStream(cfg)
	s.Pump(strings.NewReader(evRange(1, 3)))
	if s.Evict(time.Now().Add(time.Hour)) == 0 || s.RingBytes() != 0 || s.Has("2", time.Now().Add(time.Hour)) {
		t.Error("old events not evicted")
	}
}

func TestStreamReplayLargerThanQueue(t *testing.T) {
	// A client that missed more events than its live queue holds must
	// still be able to resume: replayed events are bounded by the ring.
	cfg := baseConfig()
	cfg.QueueEvents = 4
	cfg.QueueBytes = 64
	cfg.Retry = time.Second
	rc := &reserveCounter{}
	cfg.Hooks = &Hooks{Reserve: rc.Reserve}
	s, pw, pumped := pipeStream(cfg)
	io.WriteString(pw, evRange(1, 60))
	waitUntil(t, "pump to reach 60", func() bool { return s.UpstreamLastID() == "60" })

	w := newFakeWriter()
	w.setBlocked(true) // the replay is all queued before anything is written
	a, found := s.Attach(w, "1", 0)
	if !found {
		t.Fatal("id 1 not found")
	}
	w.setBlocked(false)
	// Live events still fit the live queue while the replay drains.
	io.WriteString(pw, evRange(61, 62))
	pw.Close()
	if err := pumpResult(t, pumped); err != nil {
		t.Fatal(err)
	}
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Fatalf("Wait = %v", err)
	}
	if w.String() != evRange(2, 62) {
		t.Errorf("got %d bytes, want events 2..62", len(w.String()))
	}
	rc.check(t, s)
}

func TestStreamEventLargerThanQueueBytes(t *testing.T) {
	cfg := baseConfig()
	cfg.QueueBytes = 16
	s, pw, pumped := pipeStream(cfg)
	w := newFakeWriter()
	a, _ := s.Attach(w, "", 0)
	big := "data: " + strings.Repeat("x", 100) + "\n\n"
	for i := 1; i <= 3; i++ {
		io.WriteString(pw, big)
		waitUntil(t, "big event", func() bool { return w.String() == strings.Repeat(big, i) })
	}
	pw.Close()
	pumpResult(t, pumped)
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Fatalf("Wait = %v", err)
	}
}

func TestStreamSkip(t *testing.T) {
	cfg := baseConfig()
	cfg.Skip = map[string]struct{}{"2": {}, "3": {}}
	s := NewStream(cfg)
	w := newFakeWriter()
	a, _ := s.Attach(w, "", 0)
	if err := s.Pump(&chunkReader{data: []byte(evRange(1, 5)), rng: rand.New(rand.NewPCG(1, 2)), max: 7}); err != nil {
		t.Fatal(err)
	}
	waitAtt(t, a, context.Background())
	if got, want := w.String(), evN(1)+evN(4)+evN(5); got != want {
		t.Errorf("got %q want %q", got, want)
	}
	if s.Has("2", time.Now()) || s.Has("3", time.Now()) {
		t.Error("skipped events stored")
	}
	if s.UpstreamLastID() != "5" {
		t.Errorf("UpstreamLastID %q", s.UpstreamLastID())
	}
	w = newFakeWriter()
	a, found := s.Attach(w, "1", 0)
	if !found {
		t.Fatal("id 1 not found")
	}
	waitAtt(t, a, context.Background())
	if got, want := w.String(), evN(4)+evN(5); got != want {
		t.Errorf("replay got %q want %q", got, want)
	}
}

func TestStreamBlockedWriteStopsUpstream(t *testing.T) {
	// A client that does not read blocks the pump in its write: the
	// upstream is not read meanwhile, and the write deadline cuts the
	// client. Every event stays in the ring for its resumption.
	var slow atomic.Int32
	rc := &reserveCounter{}
	cfg := baseConfig()
	cfg.QueueEvents = 2
	cfg.WriteTimeout = 300 * time.Millisecond
	cfg.Hooks = &Hooks{SlowConsumer: func() { slow.Add(1) }, Reserve: rc.Reserve}
	s := NewStream(cfg)
	w := newFakeWriter()
	w.setBlocked(true)
	a, _ := s.Attach(w, "", 0)
	pr, pw := io.Pipe()
	pumped := startPump(s, pr)
	io.WriteString(pw, evN(1))
	<-w.blocking
	// The pump is stuck in the client's write: it does not read event 2.
	wrote := make(chan struct{})
	go func() { io.WriteString(pw, evRange(2, 100)); pw.Close(); close(wrote) }()
	select {
	case <-wrote:
		t.Fatal("upstream read while the client write was blocked")
	case <-time.After(100 * time.Millisecond):
	}
	if err := waitAtt(t, a, context.Background()); !errors.Is(err, ErrSlowConsumer) {
		t.Fatalf("Wait = %v, want ErrSlowConsumer", err)
	}
	if n := slow.Load(); n != 1 {
		t.Errorf("SlowConsumer fired %d times", n)
	}
	if len(w.Writes()) != 0 {
		t.Errorf("blocked writer got writes %q", w.Writes())
	}
	if err := pumpResult(t, pumped); err != nil {
		t.Fatal(err)
	}
	if s.Attached() {
		t.Error("slow consumer still attached")
	}
	w3 := newFakeWriter()
	a3, found := s.Attach(w3, "1", 0)
	if !found {
		t.Fatal("id 1 not found")
	}
	waitAtt(t, a3, context.Background())
	if w3.String() != evRange(2, 100) {
		t.Error("resumption after a slow consumer lost events")
	}
	rc.check(t, s)
}

func TestStreamQueueFullWaitsForWriter(t *testing.T) {
	// While the writer goroutine is busy with replayed events, live events
	// queue; a full queue makes the pump wait for room instead of cutting
	// a client that keeps reading.
	rc := &reserveCounter{}
	cfg := baseConfig()
	cfg.QueueEvents = 2
	cfg.WriteTimeout = 10 * time.Second
	cfg.Hooks = &Hooks{Reserve: rc.Reserve}
	s, pw, pumped := pipeStream(cfg)
	io.WriteString(pw, evRange(1, 20))
	waitUntil(t, "event 20 stored", func() bool { return s.UpstreamLastID() == "20" })
	w := newFakeWriter()
	w.setBlocked(true)
	a, found := s.Attach(w, "1", 0)
	if !found {
		t.Fatal("id 1 not found")
	}
	<-w.blocking // the writer goroutine is stuck in replayed event 2
	go func() { io.WriteString(pw, evRange(21, 60)); pw.Close() }()
	waitUntil(t, "queue full", func() bool { return a.Queued() >= 2*len(evN(21)) })
	time.Sleep(50 * time.Millisecond)
	if a.Closed() {
		t.Fatal("client cut while its writes were within their deadline")
	}
	w.setBlocked(false)
	if err := pumpResult(t, pumped); err != nil {
		t.Fatal(err)
	}
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Fatalf("Wait = %v", err)
	}
	if w.String() != evRange(2, 60) {
		t.Errorf("client got %d bytes, want %d", len(w.String()), len(evRange(2, 60)))
	}
	rc.check(t, s)
}

func TestStreamWriteTimeout(t *testing.T) {
	var slow atomic.Int32
	rc := &reserveCounter{}
	cfg := baseConfig()
	cfg.WriteTimeout = 50 * time.Millisecond
	cfg.Retry = time.Second
	cfg.Hooks = &Hooks{SlowConsumer: func() { slow.Add(1) }, Reserve: rc.Reserve}
	s, pw, pumped := pipeStream(cfg)
	w := newFakeWriter()
	w.setBlocked(true)
	a, _ := s.Attach(w, "", 0)
	io.WriteString(pw, evN(1))
	if err := waitAtt(t, a, context.Background()); !errors.Is(err, ErrSlowConsumer) {
		t.Fatalf("Wait = %v, want ErrSlowConsumer", err)
	}
	if slow.Load() != 1 {
		t.Errorf("SlowConsumer fired %d times", slow.Load())
	}
	// The connection is stuck: no retry hint is attempted after the timeout.
	if ops := w.Ops(); len(w.Writes()) != 0 || strings.Count(ops, "T") != 1 {
		t.Errorf("writes %q ops %q", w.Writes(), ops)
	}
	rc.check(t, s)
	// The upstream goes on.
	io.WriteString(pw, evN(2))
	waitUntil(t, "event 2 stored", func() bool { return s.Has("2", time.Now()) })
	pw.Close()
	if err := pumpResult(t, pumped); err != nil {
		t.Fatal(err)
	}
}

func TestStreamClientGoneWhileBlocked(t *testing.T) {
	for _, retry := range []time.Duration{0, time.Second} {
		t.Run(fmt.Sprint(retry), func(t *testing.T) {
			rc := &reserveCounter{}
			cfg := baseConfig()
			cfg.QueueEvents = 2
			cfg.WriteTimeout = 10 * time.Second
			cfg.Hooks = &Hooks{Reserve: rc.Reserve}
			s := NewStream(cfg)
			pr, pw := io.Pipe()
			defer pw.Close()
			startPump(s, pr)
			w := newFakeWriter()
			w.setBlocked(true)
			ctx, cancel := context.WithCancel(context.Background())
			a, _ := s.Attach(w, "", retry)
			io.WriteString(pw, evRange(1, 2))
			<-w.blocking
			if retry > 0 {
				// A slow consumer with a retry hint pending, then the
				// client goes: the hint is dropped, Wait returns at once.
				io.WriteString(pw, evRange(3, 10))
				waitUntil(t, "slow consumer", func() bool { return s.UpstreamLastID() == "10" })
			}
			cancel()
			err := waitAtt(t, a, ctx)
			want := ErrClientGone
			if retry > 0 {
				want = ErrSlowConsumer
			}
			if !errors.Is(err, want) {
				t.Fatalf("Wait = %v, want %v", err, want)
			}
			if len(w.Writes()) != 0 {
				t.Errorf("writes %q", w.Writes())
			}
			rc.check(t, s)
		})
	}
}

func TestStreamReplayIntoBrokenClient(t *testing.T) {
	// The writer fails while Attach is still queueing the replay.
	for range 20 {
		rc := &reserveCounter{}
		cfg := baseConfig()
		cfg.Hooks = &Hooks{Reserve: rc.Reserve}
		s := NewStream(cfg)
		if err := s.Pump(strings.NewReader(evRange(1, 120))); err != nil {
			t.Fatal(err)
		}
		w := newFakeWriter()
		w.setErr(errBrokenPipe)
		a, found := s.Attach(w, "1", 0)
		if !found {
			t.Fatal("not found")
		}
		if err := waitAtt(t, a, context.Background()); !errors.Is(err, ErrClientGone) {
			t.Fatalf("Wait = %v", err)
		}
		rc.check(t, s)
	}
}

func TestStreamClientWriteError(t *testing.T) {
	rc := &reserveCounter{}
	cfg := baseConfig()
	cfg.Hooks = &Hooks{Reserve: rc.Reserve}
	s, pw, pumped := pipeStream(cfg)
	w := newFakeWriter()
	a, _ := s.Attach(w, "", 0)
	io.WriteString(pw, evN(1))
	waitUntil(t, "event 1", func() bool { return w.String() == evN(1) })
	w.setErr(errBrokenPipe)
	io.WriteString(pw, evRange(2, 5))
	if err := waitAtt(t, a, context.Background()); !errors.Is(err, ErrClientGone) {
		t.Fatalf("Wait = %v, want ErrClientGone", err)
	}
	if !a.Broken() {
		t.Error("Broken() = false after a failed write")
	}
	pw.Close()
	pumpResult(t, pumped)
	rc.check(t, s)
}

func TestStreamKeepalive(t *testing.T) {
	var kas atomic.Int32
	rc := &reserveCounter{}
	cfg := baseConfig()
	cfg.Keepalive = 20 * time.Millisecond
	cfg.Hooks = &Hooks{Keepalive: func() { kas.Add(1) }, Reserve: rc.Reserve}
	s, pw, pumped := pipeStream(cfg)
	w := newFakeWriter()
	a, _ := s.Attach(w, "", 0)
	waitUntil(t, "3 keepalives", func() bool { return w.count(":\n\n") >= 3 })
	io.WriteString(pw, evN(1))
	waitUntil(t, "event", func() bool { return strings.Contains(w.String(), evN(1)) })
	waitUntil(t, "a keepalive after the event", func() bool { return strings.HasSuffix(w.String(), evN(1)+":\n\n") })
	pw.Close()
	pumpResult(t, pumped)
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Fatal(err)
	}
	if a.Broken() {
		t.Error("Broken() = true after a clean end")
	}
	n := w.count(":\n\n")
	if int(kas.Load()) != n {
		t.Errorf("Keepalive hook counted %d, %d written", kas.Load(), n)
	}
	for _, wr := range w.Writes() {
		if wr != ":\n\n" && wr != evN(1) {
			t.Errorf("unexpected write %q", wr)
		}
	}
	total := len(w.Writes())
	time.Sleep(5 * cfg.Keepalive)
	if len(w.Writes()) != total {
		t.Errorf("writes after the stream ended: %q", w.Writes()[total:])
	}
	rc.check(t, s)
}

func TestStreamKeepaliveStopsWhenDetached(t *testing.T) {
	cfg := baseConfig()
	cfg.Keepalive = 10 * time.Millisecond
	s := NewStream(cfg)
	pr, pw := io.Pipe()
	defer pw.Close()
	startPump(s, pr)
	w := newFakeWriter()
	ctx, cancel := context.WithCancel(context.Background())
	a, _ := s.Attach(w, "", 0)
	waitUntil(t, "keepalive", func() bool { return w.count(":\n\n") >= 1 })
	cancel()
	if err := waitAtt(t, a, ctx); !errors.Is(err, ErrClientGone) {
		t.Fatal(err)
	}
	total := len(w.Writes())
	time.Sleep(5 * cfg.Keepalive)
	if len(w.Writes()) != total {
		t.Error("keepalive written after the client left")
	}
}

func TestStreamAttachReplaces(t *testing.T) {
	rc := &reserveCounter{}
	cfg := baseConfig()
	cfg.Hooks = &Hooks{Reserve: rc.Reserve}
	s, pw, pumped := pipeStream(cfg)
	wa := newFakeWriter()
	a, _ := s.Attach(wa, "", 0)
	io.WriteString(pw, evN(1))
	waitUntil(t, "A gets 1", func() bool { return wa.String() == evN(1) })

	wb := newFakeWriter()
	b, found := s.Attach(wb, "1", 0)
	if !found {
		t.Fatal("id 1 not found")
	}
	if err := waitAtt(t, a, context.Background()); !errors.Is(err, ErrDetached) {
		t.Fatalf("A's Wait = %v, want ErrDetached", err)
	}
	io.WriteString(pw, evN(2))
	waitUntil(t, "B gets 2", func() bool { return wb.String() == evN(2) })
	pw.Close()
	pumpResult(t, pumped)
	if err := waitAtt(t, b, context.Background()); err != nil {
		t.Fatal(err)
	}
	if wa.String() != evN(1) || wb.String() != evN(2) {
		t.Errorf("A %q B %q", wa.String(), wb.String())
	}
	rc.check(t, s)
}

func TestStreamAttachReplacesBlocked(t *testing.T) {
	// Replacing a client stuck in a write does not wait for its deadline.
	for _, retry := range []time.Duration{0, time.Second} {
		rc := &reserveCounter{}
		cfg := baseConfig()
		cfg.WriteTimeout = 10 * time.Second
		cfg.Retry = retry
		cfg.Hooks = &Hooks{Reserve: rc.Reserve}
		s, pw, pumped := pipeStream(cfg)
		wc := newFakeWriter()
		wc.setBlocked(true)
		c, _ := s.Attach(wc, "", 0)
		io.WriteString(pw, evRange(1, 3))
		<-wc.blocking // the pump is stuck writing event 1 to C
		wd := newFakeWriter()
		d, _ := s.Attach(wd, "1", 0)
		if err := waitAtt(t, c, context.Background()); !errors.Is(err, ErrDetached) {
			t.Fatalf("C's Wait = %v, want ErrDetached", err)
		}
		pw.Close()
		pumpResult(t, pumped)
		if err := waitAtt(t, d, context.Background()); err != nil {
			t.Fatal(err)
		}
		if wc.String() != "" || wd.String() != evRange(2, 3) {
			t.Errorf("C %q D %q", wc.String(), wd.String())
		}
		rc.check(t, s)
	}
}

func TestStreamAttachmentClose(t *testing.T) {
	for _, tc := range []struct {
		cfgRetry, attRetry time.Duration
		hint               string
	}{
		{0, 0, ""},
		{2 * time.Second, 0, "retry: 2000\n\n"},
		{2 * time.Second, 700 * time.Millisecond, "retry: 700\n\n"},
		{2 * time.Second, -1, ""},
	} {
		cfg := baseConfig()
		cfg.Retry = tc.cfgRetry
		s, pw, pumped := pipeStream(cfg)
		w := newFakeWriter()
		a, _ := s.Attach(w, "", tc.attRetry)
		io.WriteString(pw, evN(1))
		waitUntil(t, "event", func() bool { return w.String() == evN(1) })
		a.Close()
		if err := waitAtt(t, a, context.Background()); !errors.Is(err, ErrClosed) {
			t.Fatalf("Wait = %v, want ErrClosed", err)
		}
		if got := w.String(); got != evN(1)+tc.hint {
			t.Errorf("%v/%v: got %q", tc.cfgRetry, tc.attRetry, got)
		}
		pw.Close()
		pumpResult(t, pumped)
	}
}

func TestStreamCloseStopsUpstream(t *testing.T) {
	s := NewStream(baseConfig())
	pr, pw := io.Pipe()
	defer pw.Close()
	errStop := errors.New("stopped")
	s.SetCloser(func() { pw.CloseWithError(errStop) })
	pumped := startPump(s, pr)
	w := newFakeWriter()
	a, _ := s.Attach(w, "", 0)
	io.WriteString(pw, evN(1))
	waitUntil(t, "event", func() bool { return w.String() == evN(1) })
	s.Close()
	if err := pumpResult(t, pumped); !errors.Is(err, errStop) {
		t.Fatalf("Pump = %v", err)
	}
	if !errors.Is(s.Err(), errStop) {
		t.Errorf("Err = %v", s.Err())
	}
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Errorf("Wait = %v", err)
	}
	NewStream(baseConfig()).Close() // no closer: no-op
}

func TestStreamOversized(t *testing.T) {
	for _, tc := range []struct {
		name              string
		maxEvent, maxLine int
		bad               string
		want              error
	}{
		{"event", 64, 0, "data: a\ndata: " + strings.Repeat("b", 60) + "\ndata: c\n\n", ErrEventTooLarge},
		{"line", 1024, 32, "data: " + strings.Repeat("b", 100) + "\n\n", ErrLineTooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var over atomic.Int32
			rc := &reserveCounter{}
			cfg := baseConfig()
			cfg.MaxEvent, cfg.MaxLine = tc.maxEvent, tc.maxLine
			cfg.Hooks = &Hooks{Oversized: func() { over.Add(1) }, Reserve: rc.Reserve}
			s := NewStream(cfg)
			w := newFakeWriter()
			a, _ := s.Attach(w, "", 0)
			in := evN(1) + tc.bad + evN(2)
			err := s.Pump(&chunkReader{data: []byte(in), rng: rand.New(rand.NewPCG(3, 3)), max: 9})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Pump = %v, want %v", err, tc.want)
			}
			if !errors.Is(s.Err(), tc.want) {
				t.Errorf("Err = %v", s.Err())
			}
			if over.Load() != 1 {
				t.Errorf("Oversized fired %d times", over.Load())
			}
			if err := waitAtt(t, a, context.Background()); err != nil {
				t.Errorf("Wait = %v", err)
			}
			if w.String() != evN(1) {
				t.Errorf("got %q", w.String())
			}
			rc.check(t, s)
		})
	}
}

func TestStreamReserveRefused(t *testing.T) {
	// A refused reservation does not cut a client that keeps up (its
	// events are written through, not queued), but the event is not kept
	// for replay, and neither are the events before it: a resumption
	// from one of them is not found rather than replayed with a gap.
	var slow atomic.Int32
	rc := &reserveCounter{}
	cfg := baseConfig()
	cfg.Hooks = &Hooks{Reserve: rc.Reserve, SlowConsumer: func() { slow.Add(1) }}
	s, pw, pumped := pipeStream(cfg)
	w := newFakeWriter()
	a, _ := s.Attach(w, "", 0)
	io.WriteString(pw, evN(1))
	waitUntil(t, "event 1", func() bool { return w.String() == evN(1) })
	rc.mu.Lock()
	rc.refuse = true
	rc.mu.Unlock()
	io.WriteString(pw, evN(2))
	waitUntil(t, "event 2", func() bool { return w.String() == evN(1)+evN(2) })
	pw.Close()
	pumpResult(t, pumped)
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Fatalf("Wait = %v", err)
	}
	if slow.Load() != 0 {
		t.Errorf("SlowConsumer %d", slow.Load())
	}
	w2 := newFakeWriter()
	a2, found := s.Attach(w2, "1", 0)
	if found {
		t.Fatal("a resumption from the event before the one not kept was found")
	}
	if err := waitAtt(t, a2, context.Background()); err != nil || w2.String() != "" {
		t.Fatalf("replay Wait = %v, got %q", err, w2.String())
	}
	rc.check(t, s)
}

// TestStreamReserveRefusedNoGap: an event whose ring bytes the budget
// refuses while the client is away leaves no resumption that would skip
// it: from an event before it, the stream is not found; from the events
// kept after it, the replay is whole.
func TestStreamReserveRefusedNoGap(t *testing.T) {
	rc := &reserveCounter{}
	cfg := baseConfig()
	cfg.Hooks = &Hooks{Reserve: rc.Reserve}
	s, pw, pumped := pipeStream(cfg)
	w := newFakeWriter()
	ctx, cancel := context.WithCancel(context.Background())
	a, _ := s.Attach(w, "", 0)
	io.WriteString(pw, evN(1))
	waitUntil(t, "event 1", func() bool { return w.String() == evN(1) })
	cancel()
	_ = waitAtt(t, a, ctx) // the client dropped
	rc.mu.Lock()
	rc.refuse = true
	rc.mu.Unlock()
	io.WriteString(pw, evN(2))
	waitUntil(t, "the pump to read 2", func() bool { return s.UpstreamLastID() == "2" })
	rc.mu.Lock()
	rc.refuse = false
	rc.mu.Unlock()
	io.WriteString(pw, evN(3))
	io.WriteString(pw, evN(4))
	waitUntil(t, "the pump to read 4", func() bool { return s.UpstreamLastID() == "4" })
	pw.Close()
	pumpResult(t, pumped)
	w2 := newFakeWriter()
	a2, found := s.Attach(w2, "1", 0)
	_ = waitAtt(t, a2, context.Background())
	if found {
		t.Errorf("a resumption from 1 was found and replayed %q, without event 2", w2.String())
	}
	w3 := newFakeWriter()
	a3, found := s.Attach(w3, "3", 0)
	_ = waitAtt(t, a3, context.Background())
	if !found || w3.String() != evN(4) {
		t.Errorf("a resumption from 3: found %v, replayed %q, want %q", found, w3.String(), evN(4))
	}
	rc.check(t, s)
}

func TestStreamReserveRefusedQueued(t *testing.T) {
	// A queued event whose bytes cannot be reserved waits for the queue to
	// drain; a budget that stays exhausted, or a writer that stays stuck,
	// cuts the client once the wait limit passes.
	for _, retry := range []time.Duration{0, 300 * time.Millisecond} {
		var slow atomic.Int32
		rc := &reserveCounter{}
		cfg := baseConfig()
		cfg.Retry = retry
		cfg.WriteTimeout = 300 * time.Millisecond
		cfg.Hooks = &Hooks{Reserve: rc.Reserve, SlowConsumer: func() { slow.Add(1) }}
		s, pw, pumped := pipeStream(cfg)
		io.WriteString(pw, evRange(1, 2))
		waitUntil(t, "event 2 stored", func() bool { return s.UpstreamLastID() == "2" })
		w := newFakeWriter()
		w.setBlocked(true)
		a, _ := s.Attach(w, "1", 0)
		<-w.blocking // the writer goroutine holds replayed event 2
		rc.mu.Lock()
		rc.refuse = true
		rc.mu.Unlock()
		go io.WriteString(pw, evN(3))
		if err := waitAtt(t, a, context.Background()); !errors.Is(err, ErrSlowConsumer) {
			t.Fatalf("Wait = %v, want ErrSlowConsumer", err)
		}
		if slow.Load() != 1 {
			t.Errorf("SlowConsumer %d", slow.Load())
		}
		pw.Close()
		pumpResult(t, pumped)
		rc.check(t, s)
	}
}

func TestStreamReserveBalancedUnderLoad(t *testing.T) {
	// Many events through a writer that is sometimes slow, ending by every
	// path; the reservations must balance each time.
	for i := range 12 {
		rc := &reserveCounter{}
		cfg := baseConfig()
		cfg.QueueEvents = 8
		cfg.WriteTimeout = 20 * time.Millisecond
		cfg.Keepalive = time.Millisecond
		cfg.Retry = 10 * time.Millisecond
		cfg.Hooks = &Hooks{Reserve: rc.Reserve}
		s, pw, pumped := pipeStream(cfg)
		w := newFakeWriter()
		ctx, cancel := context.WithCancel(context.Background())
		a, _ := s.Attach(w, "", 0)
		go func() {
			for j := 1; j <= 200; j++ {
				if _, err := io.WriteString(pw, evN(j)); err != nil {
					return
				}
				if j%50 == 0 && i%3 == 1 {
					w.setBlocked(true)
					time.Sleep(time.Millisecond)
					w.setBlocked(false)
				}
			}
			pw.Close()
		}()
		switch i % 4 {
		case 2:
			cancel()
		case 3:
			a.Close()
		}
		err := waitAtt(t, a, ctx)
		if err != nil && !errors.Is(err, ErrClientGone) && !errors.Is(err, ErrClosed) && !errors.Is(err, ErrSlowConsumer) {
			t.Fatalf("Wait = %v", err)
		}
		pumpResult(t, pumped)
		cancel()
		rc.check(t, s)
	}
}

func TestStreamGoroutinesReturnToBaseline(t *testing.T) {
	base := runtime.NumGoroutine()
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := baseConfig()
			cfg.QueueEvents = 4
			cfg.Keepalive = 2 * time.Millisecond
			cfg.WriteTimeout = 20 * time.Millisecond
			cfg.Retry = 5 * time.Millisecond
			s := NewStream(cfg)
			pr, pw := io.Pipe()
			s.SetCloser(func() { pr.CloseWithError(errors.New("closed")) })
			pumped := make(chan error, 1)
			go func() { pumped <- s.Pump(pr) }()
			w := newFakeWriter()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			a, _ := s.Attach(w, "", 0)
			io.WriteString(pw, evN(1))
			switch i % 5 {
			case 0: // clean end
				pw.Close()
			case 1: // client gone, then the proxy stops the upstream
				cancel()
				a.Wait(ctx)
				s.Close()
			case 2: // slow consumer
				w.setBlocked(true)
				go func() { io.WriteString(pw, evRange(2, 50)); pw.Close() }()
			case 3: // replaced
				w2 := newFakeWriter()
				b, _ := s.Attach(w2, "1", 0)
				pw.Close()
				b.Wait(context.Background())
			case 4: // closed by the proxy
				a.Close()
				pw.Close()
			}
			a.Wait(ctx)
			<-pumped
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines, baseline %d\n%s", n, base, buf[:runtime.Stack(buf, true)])
	}
}

// TestStreamConcurrentAttach pumps a stream while several goroutines
// attach, resume and leave; every attachment must see a gap-free run of
// events, starting right after the id it resumed from.
func TestStreamConcurrentAttach(t *testing.T) {
	cfg := baseConfig()
	cfg.IDPrefix = "r-"
	cfg.QueueEvents = 16
	cfg.Keepalive = time.Millisecond
	cfg.WriteTimeout = 50 * time.Millisecond
	cfg.Retry = 5 * time.Millisecond
	cfg.ReplayEvents = 64
	rc := &reserveCounter{}
	cfg.Hooks = &Hooks{Reserve: rc.Reserve}
	s, pw, pumped := pipeStream(cfg)
	const total = 3000
	go func() {
		for i := 0; i < total; i++ {
			io.WriteString(pw, "data: "+strconv.Itoa(i)+"\n\n")
			if i%100 == 0 {
				runtime.Gosched()
			}
		}
		pw.Close()
	}()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			last := ""
			for j := 0; j < 40; j++ {
				w := newFakeWriter()
				if rng.IntN(8) == 0 {
					w.setBlocked(true)
					go func() { time.Sleep(time.Millisecond); w.setBlocked(false) }()
				}
				ctx, cancel := context.WithCancel(context.Background())
				a, found := s.Attach(w, last, 0)
				if rng.IntN(2) == 0 {
					time.Sleep(time.Duration(rng.IntN(500)) * time.Microsecond)
					cancel()
				}
				err := a.Wait(ctx)
				cancel()
				if err != nil && !errors.Is(err, ErrClientGone) && !errors.Is(err, ErrDetached) && !errors.Is(err, ErrSlowConsumer) {
					t.Errorf("Wait = %v", err)
					return
				}
				ids := clientIDs(t, w.String())
				want := -1
				if found {
					want, _ = strconv.Atoi(strings.TrimPrefix(last, "r-"))
					want++
				}
				for _, id := range ids {
					n, err := strconv.Atoi(strings.TrimPrefix(id, "r-"))
					if err != nil || (want >= 0 && n != want) {
						t.Errorf("attachment after %q (found %v): ids %v", last, found, ids)
						return
					}
					want = n + 1
				}
				if len(ids) > 0 {
					last = ids[len(ids)-1]
				}
			}
		}()
	}
	wg.Wait()
	if err := pumpResult(t, pumped); err != nil {
		t.Fatal(err)
	}
	rc.check(t, s)
}

// cutReader returns data in chunks whose sizes come from cuts (0 means
// as much as fits), with io.EOF on the last chunk when the cut is odd.
type cutReader struct {
	data, cuts []byte
	i          int
}

func (r *cutReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := len(r.data)
	var c byte = 1
	if len(r.cuts) > 0 {
		c = r.cuts[r.i%len(r.cuts)]
		r.i++
		if c == 0 {
			n = len(p)
		} else {
			n = int(c)%97 + 1
		}
	}
	n = min(n, len(p), len(r.data))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	if len(r.data) == 0 && c%2 == 1 {
		return n, io.EOF
	}
	return n, nil
}

func FuzzStreamRelay(f *testing.F) {
	f.Add([]byte(relayInput), []byte{3, 0, 7})
	f.Add([]byte(relayInput+"data: tail"), []byte{1})
	f.Add([]byte(evRange(1, 40)), []byte{0})
	f.Add([]byte("data: "+strings.Repeat("x", 2000)+"\n\n"), []byte{0, 5})
	f.Add([]byte(": c\r: d\rdata\r\r\n\nid\n\n"), []byte{2})
	f.Fuzz(func(t *testing.T, in, cuts []byte) {
		cfg := StreamConfig{
			MaxEvent: 1 << 12, MaxLine: 1 << 10,
			QueueEvents: 1 << 20, QueueBytes: 1 << 30,
			ReplayEvents: 16, ReplayBytes: 1 << 12,
		}
		var want bytes.Buffer
		p := NewParser(cfg.MaxEvent, cfg.MaxLine)
		emit := func(ev *Event) error {
			want.Write(ev.Raw)
			return nil
		}
		wantErr := p.Feed(in, emit)
		if wantErr == nil {
			_, wantErr = p.Flush(emit)
		}
		s := NewStream(cfg)
		w := newFakeWriter()
		a, _ := s.Attach(w, "", 0)
		err := s.Pump(&cutReader{data: in, cuts: cuts})
		if err != wantErr {
			t.Fatalf("Pump = %v, parser %v", err, wantErr)
		}
		if err := waitAtt(t, a, context.Background()); err != nil {
			t.Fatalf("Wait = %v", err)
		}
		if got := w.String(); got != want.String() {
			t.Fatalf("client got\n%q\nwant\n%q", got, want.String())
		}
	})
}

// TestStreamCloseAfterFinish checks that closing an attachment after it
// finished (a drain timer firing after the stream ended) writes nothing:
// the client's handler may have returned already.
func TestStreamCloseAfterFinish(t *testing.T) {
	cfg := baseConfig()
	cfg.Retry = 100 * time.Millisecond
	s := NewStream(cfg)
	w := newFakeWriter()
	a, _ := s.Attach(w, "", 0)
	if err := pumpResult(t, startPump(s, strings.NewReader(evN(1)))); err != nil {
		t.Fatal(err)
	}
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Fatal(err)
	}
	before := len(w.Writes())
	a.Close()
	a.Gone()
	time.Sleep(10 * time.Millisecond) // a stray writer would write now
	if got := len(w.Writes()); got != before {
		t.Fatalf("closing a finished attachment wrote %d more times", got-before)
	}
}

// TestStreamShrinkRing checks that shrinking a stream's replay ring drops
// its oldest events and gives their bytes back.
func TestStreamShrinkRing(t *testing.T) {
	rc := &reserveCounter{}
	cfg := baseConfig()
	cfg.Hooks = &Hooks{Reserve: rc.Reserve}
	s := NewStream(cfg)
	if err := pumpResult(t, startPump(s, strings.NewReader(evRange(1, 10)))); err != nil {
		t.Fatal(err)
	}
	before := s.RingBytes()
	s.ShrinkRing(2, 1<<20)
	if !s.Has("10", time.Now()) || s.Has("8", time.Now()) || s.RingBytes() >= before {
		t.Fatalf("after shrinking: has 10 %v, has 8 %v, bytes %d (were %d)", s.Has("10", time.Now()), s.Has("8", time.Now()), s.RingBytes(), before)
	}
	rc.check(t, s)
}

// discardWriter is a ClientWriter that takes everything at once.
type discardWriter struct{ n int64 }

func (d *discardWriter) Write(p []byte) (int, error)      { d.n += int64(len(p)); return len(p), nil }
func (d *discardWriter) Flush() error                     { return nil }
func (d *discardWriter) SetWriteDeadline(time.Time) error { return nil }

// BenchmarkStreamRelay relays 1 KiB events from an upstream body to a
// client that keeps up; one op is one event.
func BenchmarkStreamRelay(b *testing.B) {
	ev := "data: " + strings.Repeat("x", 1017) + "\n\n"
	const perBody = 1000
	body := []byte(strings.Repeat(ev, perBody))
	b.SetBytes(int64(len(ev)))
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += perBody {
		cfg := baseConfig()
		cfg.IDPrefix = "p-"
		s := NewStream(cfg)
		w := &discardWriter{}
		a, _ := s.Attach(w, "", 0)
		if err := s.Pump(bytes.NewReader(body)); err != nil {
			b.Fatal(err)
		}
		if err := a.Wait(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

// panicWriter panics on its first write.
type panicWriter struct{ discardWriter }

func (p *panicWriter) Write([]byte) (int, error) { panic("writer broke") }

func TestStreamWriterPanicRecovered(t *testing.T) {
	got := make(chan any, 1)
	rc := &reserveCounter{}
	cfg := baseConfig()
	cfg.Retry = time.Second
	cfg.Hooks = &Hooks{Panic: func(v any) { got <- v }, Reserve: rc.Reserve}
	s, pw, pumped := pipeStream(cfg)
	io.WriteString(pw, evRange(1, 2))
	waitUntil(t, "event 2 stored", func() bool { return s.UpstreamLastID() == "2" })
	// Replayed events are written by the writer goroutine, which panics.
	a, _ := s.Attach(&panicWriter{}, "1", 0)
	select {
	case v := <-got:
		if v != "writer broke" {
			t.Errorf("Panic got %v", v)
		}
	case <-time.After(hangBound):
		t.Fatal("the panic did not reach Hooks.Panic")
	}
	if err := waitAtt(t, a, context.Background()); err == nil {
		t.Error("Wait = nil after the writer panicked")
	}
	pw.Close()
	pumpResult(t, pumped)
	rc.check(t, s)
}

// TestStreamForwardsComments checks that upstream comment-only blocks
// reach the client byte for byte, before any event and between events,
// without proxy ids and without being kept for replay, and that the
// client's framing stays valid.
func TestStreamForwardsComments(t *testing.T) {
	const in = ": ok\n\n" + // before any event
		"data: a\n\n" +
		": ping\n" + // surfaced early, ahead of its block's field lines
		"data: b\n\n" +
		": mid\r\n\r\n" + // between events
		"data: c\n\n"
	const want = ": ok\n\n" +
		"id: p-1\ndata: a\n\n" +
		": ping\n" +
		"id: p-2\ndata: b\n\n" +
		": mid\r\n\r\n" +
		"id: p-3\ndata: c\n\n"
	for seed := range uint64(12) {
		var events atomic.Int32
		cfg := baseConfig()
		cfg.IDPrefix = "p-"
		cfg.Hooks = &Hooks{Event: func(int) { events.Add(1) }}
		s := NewStream(cfg)
		w := newFakeWriter()
		a, _ := s.Attach(w, "", 0)
		if err := s.Pump(&chunkReader{data: []byte(in), rng: rand.New(rand.NewPCG(seed, 5)), max: 1 + int(seed)}); err != nil {
			t.Fatal(err)
		}
		if err := waitAtt(t, a, context.Background()); err != nil {
			t.Fatal(err)
		}
		got := w.String()
		if got != want {
			t.Fatalf("seed %d: client got\n%q\nwant\n%q", seed, got, want)
		}
		if n := events.Load(); n != 3 {
			t.Errorf("Event hook counted %d, want 3 (comments are not events)", n)
		}
		// What the client got parses to the same events, with our ids.
		var data []string
		p := NewParser(0, 0)
		if err := p.Feed([]byte(got), func(ev *Event) error {
			if !ev.Comment {
				data = append(data, p.LastEventID()+"="+string(ev.Data))
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(data) != "[p-1=a p-2=b p-3=c]" {
			t.Errorf("client parsed %v", data)
		}
		// The ring holds the events only.
		w2 := newFakeWriter()
		a2, found := s.Attach(w2, "p-1", 0)
		if !found {
			t.Fatal("p-1 not found")
		}
		if err := waitAtt(t, a2, context.Background()); err != nil {
			t.Fatal(err)
		}
		if got, want := w2.String(), "id: p-2\ndata: b\n\nid: p-3\ndata: c\n\n"; got != want {
			t.Errorf("replay got %q want %q", got, want)
		}
	}
}

// TestStreamCommentLive checks that a comment is written as soon as it
// arrives: a server's opening comment is the client's first byte.
func TestStreamCommentLive(t *testing.T) {
	cfg := baseConfig()
	cfg.Keepalive = time.Hour
	s, pw, pumped := pipeStream(cfg)
	w := newFakeWriter()
	a, _ := s.Attach(w, "", 0)
	// A comment line followed by a field line of its block is written
	// as soon as the field line starts (the parser cannot know earlier
	// whether the block has fields).
	want := ""
	for _, step := range []struct{ in, out string }{
		{": ok\n\n", ": ok\n\n"},
		{evN(1), evN(1)},
		{": ping\n\n", ": ping\n\n"},
		{evN(2), evN(2)},
		{": x\nd", ": x\n"},
		{"ata: y\n\n", "data: y\n\n"},
	} {
		io.WriteString(pw, step.in)
		want += step.out
		waitUntil(t, fmt.Sprintf("%q", step.out), func() bool { return w.String() == want })
	}
	pw.Close()
	if err := pumpResult(t, pumped); err != nil {
		t.Fatal(err)
	}
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Fatal(err)
	}
	if w.String() != want {
		t.Errorf("got %q want %q", w.String(), want)
	}
}

// TestStreamCommentIsActivity checks that forwarded upstream comments
// hold off the proxy's keepalive, which comes only after Keepalive of
// silence.
func TestStreamCommentIsActivity(t *testing.T) {
	var kas atomic.Int32
	cfg := baseConfig()
	cfg.Keepalive = 250 * time.Millisecond
	cfg.Hooks = &Hooks{Keepalive: func() { kas.Add(1) }}
	s, pw, pumped := pipeStream(cfg)
	w := newFakeWriter()
	a, _ := s.Attach(w, "", 0)
	for range 30 {
		io.WriteString(pw, ": up\n\n")
		time.Sleep(cfg.Keepalive / 10)
	}
	if n := w.count(":\n\n"); n != 0 || kas.Load() != 0 {
		t.Errorf("%d keepalives while the upstream sent comments", n)
	}
	if n := w.count(": up\n\n"); n != 30 {
		t.Errorf("%d comments forwarded, want 30", n)
	}
	waitUntil(t, "a keepalive after silence", func() bool { return w.count(":\n\n") == 1 })
	pw.Close()
	pumpResult(t, pumped)
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestStreamCommentQueueBound checks that comments queue under the live
// queue bounds: a full queue makes the pump wait, and nothing is lost.
func TestStreamCommentQueueBound(t *testing.T) {
	rc := &reserveCounter{}
	cfg := baseConfig()
	cfg.QueueEvents = 2
	cfg.WriteTimeout = 10 * time.Second
	cfg.Hooks = &Hooks{Reserve: rc.Reserve}
	s, pw, pumped := pipeStream(cfg)
	io.WriteString(pw, evRange(1, 10))
	waitUntil(t, "event 10 stored", func() bool { return s.UpstreamLastID() == "10" })
	ringBytes := s.RingBytes()
	w := newFakeWriter()
	w.setBlocked(true)
	a, _ := s.Attach(w, "1", 0)
	<-w.blocking // the writer goroutine is stuck in the replay
	// The replayed events it has not taken yet wait in the queue too; they
	// do not count against its bounds.
	replayLeft := a.Queued()
	comment := func(i int) string { return ": c" + strconv.Itoa(i) + "\n\n" }
	const total = 20
	var sent atomic.Int32
	go func() {
		for i := 1; i <= total; i++ {
			io.WriteString(pw, comment(i)) // one upstream read each
			sent.Add(1)
		}
		pw.Close()
	}()
	waitUntil(t, "queue full", func() bool { return a.Queued()-replayLeft >= 2*len(comment(1)) })
	time.Sleep(50 * time.Millisecond)
	if n := sent.Load(); n >= total {
		t.Fatalf("the upstream was read on with the queue full (%d comments sent)", n)
	}
	if q := a.Queued() - replayLeft; q > 2*len(comment(10)) {
		t.Errorf("queue holds %d bytes, over its bound of 2 blocks", q)
	}
	if a.Closed() {
		t.Fatal("client cut while its writes were within their deadline")
	}
	w.setBlocked(false)
	if err := pumpResult(t, pumped); err != nil {
		t.Fatal(err)
	}
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Fatalf("Wait = %v", err)
	}
	want := evRange(2, 10)
	for i := 1; i <= total; i++ {
		want += comment(i)
	}
	if w.String() != want {
		t.Errorf("client got %q\nwant %q", w.String(), want)
	}
	if s.RingBytes() != ringBytes {
		t.Errorf("comments kept for replay: ring %d bytes, was %d", s.RingBytes(), ringBytes)
	}
	rc.check(t, s)
}

// finalEvent is what the Final hook of the tests below returns.
func finalEvent(err error) string {
	if err == nil {
		return "event: final\ndata: eof\n\n"
	}
	return "event: final\ndata: " + err.Error() + "\n\n"
}

// TestStreamFinalAtEveryEnd checks that Final is called once at every end
// of the upstream side, with nil at a clean end, and its event delivered
// and kept for replay.
func TestStreamFinalAtEveryEnd(t *testing.T) {
	errBroken := errors.New("connection reset")
	errStop := errors.New("stopped")
	for _, tc := range []struct {
		name      string
		end       func(s *Stream, pw *io.PipeWriter)
		want      error
		wantFinal error
	}{
		{"clean", func(_ *Stream, pw *io.PipeWriter) { pw.Close() }, nil, nil},
		{"broken", func(_ *Stream, pw *io.PipeWriter) { pw.CloseWithError(errBroken) }, errBroken, errBroken},
		{"closed", func(s *Stream, _ *io.PipeWriter) { s.Close() }, errStop, ErrClosed},
		{"oversized", func(_ *Stream, pw *io.PipeWriter) {
			io.WriteString(pw, strings.Repeat("data: "+strings.Repeat("x", 50)+"\n", 4)+"\n")
		}, ErrEventTooLarge, ErrEventTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			var got error
			cfg := baseConfig()
			cfg.MaxEvent = 128
			cfg.Final = func(err error) []byte {
				calls.Add(1)
				got = err
				return []byte(finalEvent(err))
			}
			s, pw, pumped := pipeStream(cfg)
			s.SetCloser(func() { pw.CloseWithError(errStop) })
			w := newFakeWriter()
			a, _ := s.Attach(w, "", 0)
			io.WriteString(pw, evN(1))
			waitUntil(t, "event 1", func() bool { return w.String() == evN(1) })
			tc.end(s, pw)
			if err := pumpResult(t, pumped); !errors.Is(err, tc.want) {
				t.Fatalf("Pump = %v, want %v", err, tc.want)
			}
			if err := waitAtt(t, a, context.Background()); err != nil {
				t.Fatalf("Wait = %v", err)
			}
			if n := calls.Load(); n != 1 || !errors.Is(got, tc.wantFinal) || (tc.wantFinal == nil) != (got == nil) {
				t.Errorf("Final called %d times, last with %v; want once with %v", n, got, tc.wantFinal)
			}
			fin := finalEvent(got)
			if w.String() != evN(1)+fin {
				t.Errorf("client got %q", w.String())
			}
			w2 := newFakeWriter()
			a2, _ := s.Attach(w2, "1", 0)
			if err := waitAtt(t, a2, context.Background()); err != nil || w2.String() != fin {
				t.Errorf("replay: Wait %v, got %q, want the final event", err, w2.String())
			}
		})
	}
}

// TestStreamRetryHintAtEnd checks that a client attached when the
// upstream breaks gets, after the Final event, its retry hint, and that a
// clean end, the proxy's own Close or an oversized event sends none.
func TestStreamRetryHintAtEnd(t *testing.T) {
	errBroken := errors.New("connection reset")
	errStop := errors.New("stopped")
	const fin = "data: final\n\n"
	for _, tc := range []struct {
		name               string
		cfgRetry, attRetry time.Duration
		end                func(s *Stream, pw *io.PipeWriter)
		hint               string
	}{
		{"clean", 700 * time.Millisecond, 0, func(_ *Stream, pw *io.PipeWriter) { pw.Close() }, ""},
		{"broken", 700 * time.Millisecond, 0, func(_ *Stream, pw *io.PipeWriter) { pw.CloseWithError(errBroken) }, "retry: 700\n\n"},
		{"broken/own hint", 700 * time.Millisecond, 300 * time.Millisecond, func(_ *Stream, pw *io.PipeWriter) { pw.CloseWithError(errBroken) }, "retry: 300\n\n"},
		{"broken/no hint", 700 * time.Millisecond, -1, func(_ *Stream, pw *io.PipeWriter) { pw.CloseWithError(errBroken) }, ""},
		{"broken/none configured", 0, 0, func(_ *Stream, pw *io.PipeWriter) { pw.CloseWithError(errBroken) }, ""},
		{"closed by the proxy", 700 * time.Millisecond, 0, func(s *Stream, _ *io.PipeWriter) { s.Close() }, ""},
		{"oversized", 700 * time.Millisecond, 0, func(_ *Stream, pw *io.PipeWriter) {
			io.WriteString(pw, "data: "+strings.Repeat("x", 200)+"\n\n")
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := &reserveCounter{}
			cfg := baseConfig()
			cfg.Retry = tc.cfgRetry
			cfg.MaxEvent = 128
			cfg.Final = func(error) []byte { return []byte(fin) }
			cfg.Hooks = &Hooks{Reserve: rc.Reserve}
			s, pw, pumped := pipeStream(cfg)
			s.SetCloser(func() { pw.CloseWithError(errStop) })
			w := newFakeWriter()
			a, _ := s.Attach(w, "", tc.attRetry)
			io.WriteString(pw, evN(1))
			waitUntil(t, "event 1", func() bool { return w.String() == evN(1) })
			tc.end(s, pw)
			pumpResult(t, pumped)
			if err := waitAtt(t, a, context.Background()); err != nil {
				t.Fatalf("Wait = %v, want nil", err)
			}
			if got, want := w.String(), evN(1)+fin+tc.hint; got != want {
				t.Errorf("client got %q want %q", got, want)
			}
			// A client resuming the ended stream gets what the ring
			// holds, and no hint.
			w2 := newFakeWriter()
			a2, _ := s.Attach(w2, "1", 0)
			if err := waitAtt(t, a2, context.Background()); err != nil || w2.String() != fin {
				t.Errorf("resume: Wait %v, got %q", err, w2.String())
			}
			rc.check(t, s)
		})
	}
}

// TestStreamRetryHintAfterQueued checks that the hint of a broken
// upstream comes after everything queued for the client, and that a
// client that goes away first is sent nothing more.
func TestStreamRetryHintAfterQueued(t *testing.T) {
	errBroken := errors.New("connection reset")
	for _, gone := range []bool{false, true} {
		t.Run(fmt.Sprintf("gone=%v", gone), func(t *testing.T) {
			rc := &reserveCounter{}
			cfg := baseConfig()
			cfg.Retry = 500 * time.Millisecond
			cfg.WriteTimeout = 10 * time.Second
			cfg.Final = func(err error) []byte { return []byte(finalEvent(err)) }
			cfg.Hooks = &Hooks{Reserve: rc.Reserve}
			s, pw, pumped := pipeStream(cfg)
			io.WriteString(pw, evRange(1, 10))
			waitUntil(t, "event 10 stored", func() bool { return s.UpstreamLastID() == "10" })
			w := newFakeWriter()
			w.setBlocked(true)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			a, _ := s.Attach(w, "1", 0)
			<-w.blocking // the writer goroutine is stuck in the replay
			io.WriteString(pw, evN(11)+": c\n\n")
			pw.CloseWithError(errBroken)
			if err := pumpResult(t, pumped); !errors.Is(err, errBroken) {
				t.Fatalf("Pump = %v", err)
			}
			if gone {
				cancel()
				if err := waitAtt(t, a, ctx); !errors.Is(err, ErrClientGone) {
					t.Fatalf("Wait = %v, want ErrClientGone", err)
				}
				w.setBlocked(false)
				time.Sleep(10 * time.Millisecond) // a stray writer would write now
				if got := w.String(); got != "" {
					t.Errorf("a client that went away got %q", got)
				}
				rc.check(t, s)
				return
			}
			w.setBlocked(false)
			if err := waitAtt(t, a, ctx); err != nil {
				t.Fatalf("Wait = %v", err)
			}
			want := evRange(2, 11) + ": c\n\n" + finalEvent(errBroken) + "retry: 500\n\n"
			if got := w.String(); got != want {
				t.Errorf("client got %q\nwant %q", got, want)
			}
			rc.check(t, s)
		})
	}
}

// TestStreamShrinkRingBy checks that a stream's ring shrinks to a
// fraction of its own configured bounds, never below one event, and never
// grows.
func TestStreamShrinkRingBy(t *testing.T) {
	rc := &reserveCounter{}
	cfg := baseConfig()
	cfg.ReplayEvents = 20
	cfg.Hooks = &Hooks{Reserve: rc.Reserve}
	s := NewStream(cfg)
	if err := s.Pump(strings.NewReader(evRange(1, 20))); err != nil {
		t.Fatal(err)
	}
	has := func(id int) bool { return s.Has(strconv.Itoa(id), time.Now()) }
	s.ShrinkRingBy(1.5)
	if !has(1) {
		t.Error("a fraction over 1 dropped events")
	}
	s.ShrinkRingBy(0.5)
	if has(10) || !has(11) || !has(20) {
		t.Errorf("after ShrinkRingBy(0.5): has 10 %v, 11 %v", has(10), has(11))
	}
	s.ShrinkRingBy(0.9) // bounds are only ever lowered
	if has(10) || !has(11) {
		t.Error("ShrinkRingBy(0.9) after 0.5 changed the ring")
	}
	s.ShrinkRingBy(0.05) // one event
	if has(19) || !has(20) {
		t.Error("ShrinkRingBy(0.05) does not keep exactly one event")
	}
	s.ShrinkRingBy(0) // one event and one byte: nothing fits
	if has(20) || s.RingBytes() != 0 {
		t.Error("ShrinkRingBy(0) kept an event")
	}
	rc.check(t, s)
	NewStream(StreamConfig{}).ShrinkRingBy(0.5) // no ring: no-op
}

func TestStreamInject(t *testing.T) {
	// Events of the proxy's own reach the client among the upstream's,
	// whole, under the queue bounds, and never wait for room.
	rc := &reserveCounter{}
	cfg := baseConfig()
	cfg.QueueEvents = 2
	cfg.Hooks = &Hooks{Reserve: rc.Reserve}
	injected := "event: message\ndata: {\"injected\":true}\n\n"
	s, pw, pumped := pipeStream(cfg)
	if s.Inject([]byte(injected)) {
		t.Fatal("Inject with no client attached reported delivery")
	}
	w := newFakeWriter()
	a, _ := s.Attach(w, "", 0)
	io.WriteString(pw, evN(1))
	waitUntil(t, "event 1 written", func() bool { return strings.Contains(w.String(), evN(1)) })
	if !s.Inject([]byte(injected)) {
		t.Fatal("Inject to an idle client refused")
	}
	waitUntil(t, "injected event written", func() bool { return strings.Contains(w.String(), injected) })
	io.WriteString(pw, evN(2))
	waitUntil(t, "event 2 written", func() bool { return strings.Contains(w.String(), evN(2)) })

	// A client that does not read: the queue fills, and Inject refuses
	// at once rather than wait.
	w.setBlocked(true)
	if !s.Inject([]byte(injected)) {
		t.Fatal("Inject refused with room in the queue")
	}
	<-w.blocking
	if !s.Inject([]byte(injected)) || !s.Inject([]byte(injected)) {
		t.Fatal("Inject refused with room in the queue")
	}
	if s.Inject([]byte(injected)) {
		t.Fatal("Inject into a full queue reported delivery")
	}
	w.setBlocked(false)
	pw.Close()
	if err := pumpResult(t, pumped); err != nil {
		t.Fatal(err)
	}
	if err := waitAtt(t, a, context.Background()); err != nil {
		t.Fatal(err)
	}
	want := evN(1) + injected + evN(2) + injected + injected + injected
	if got := w.String(); got != want {
		t.Errorf("client got %q\nwant %q", got, want)
	}
	if s.Inject([]byte(injected)) {
		t.Fatal("Inject into an ended stream reported delivery")
	}
	rc.check(t, s)
}

func TestIDPrefix(t *testing.T) {
	a, b := NewIDPrefix(), NewIDPrefix()
	if a == b || !IsProxyID(a+"1") || !IsProxyID(b) || IsProxyID("42") || IsProxyID("") {
		t.Fatalf("prefixes %q %q", a, b)
	}
	if strings.ContainsAny(a, "\r\n :") {
		t.Fatalf("prefix %q holds a byte an SSE id line or a Last-Event-ID cannot", a)
	}
}

// closeRecorder is an upstream body that records its Close.
type closeRecorder struct {
	io.Reader
	closed atomic.Bool
}

func (c *closeRecorder) Close() error { c.closed.Store(true); return nil }

// TestStreamContinue: at the end of each upstream body, clean or broken,
// Continue is told the error, the upstream's own last id (the client's
// last, which an event without an id keeps) and retry, and the stream goes on with the body it
// returns, parsed afresh (an event cut by the break is dropped) and
// closed by Pump; Final runs once, after the last body. An oversized
// event ends the stream without asking; Close stops a Continue that
// waits.
func TestStreamContinue(t *testing.T) {
	errBroken := errors.New("connection reset")
	var asked []Continuation
	var bodies []*closeRecorder
	cfg := baseConfig()
	cfg.Continue = func(c Continuation) io.ReadCloser {
		asked = append(asked, c)
		var next string
		switch len(asked) {
		case 1:
			next = "data: {\"n\":9}\n\nretry: 250\nid: up-2\ndata: {\"n\":2}\n\n"
		case 2:
			next = "id: up-3\ndata: {\"n\":3}\n\ndata: {\"n\":4}\n\n"
		default:
			return nil
		}
		b := &closeRecorder{Reader: strings.NewReader(next)}
		bodies = append(bodies, b)
		return b
	}
	var finals []error
	cfg.Final = func(err error) []byte { finals = append(finals, err); return []byte(finalEvent(err)) }
	s := NewStream(cfg)
	w := newFakeWriter()
	s.Attach(w, "", 0)
	first := io.MultiReader(strings.NewReader("id: up-1\ndata: {\"n\":1}\n\ndata: {\"cut"), iotest.ErrReader(errBroken))
	if err := pumpResult(t, startPump(s, first)); err != nil {
		t.Fatalf("Pump = %v, want the clean end of the last body", err)
	}
	if len(asked) != 3 {
		t.Fatalf("Continue asked %d times, want 3", len(asked))
	}
	for i, want := range []Continuation{
		{Err: errBroken, LastID: "up-1", Retry: -1},
		{LastID: "up-2", Retry: 250 * time.Millisecond},
		{LastID: "up-3", Retry: 250 * time.Millisecond}, // an event without an id keeps it
	} {
		got := asked[i]
		if !errors.Is(got.Err, want.Err) || (want.Err == nil) != (got.Err == nil) || got.LastID != want.LastID || got.Retry != want.Retry || got.Stop == nil {
			t.Errorf("Continue #%d told %+v, want %+v", i+1, got, want)
		}
	}
	for i, b := range bodies {
		if !b.closed.Load() {
			t.Errorf("body %d not closed", i+2)
		}
	}
	if len(finals) != 1 || finals[0] != nil {
		t.Errorf("Final called with %v, want once with nil", finals)
	}
	want := "id: up-1\ndata: {\"n\":1}\n\ndata: {\"n\":9}\n\nretry: 250\nid: up-2\ndata: {\"n\":2}\n\nid: up-3\ndata: {\"n\":3}\n\ndata: {\"n\":4}\n\n" + finalEvent(nil)
	if got := w.String(); got != want {
		t.Errorf("client got %q\nwant       %q", got, want)
	}

	// An oversized event ends the stream; nothing is asked.
	asked = nil
	cfg.MaxEvent = 64
	s = NewStream(cfg)
	if err := pumpResult(t, startPump(s, strings.NewReader("id: up-1\ndata: "+strings.Repeat("x", 100)+"\n\n"))); !errors.Is(err, ErrEventTooLarge) || len(asked) != 0 {
		t.Errorf("oversized: Pump = %v, Continue asked %d times", err, len(asked))
	}

	// Close ends a Continue that waits, and the stream.
	cfg = baseConfig()
	waiting := make(chan struct{})
	cfg.Continue = func(c Continuation) io.ReadCloser {
		close(waiting)
		<-c.Stop
		return io.NopCloser(strings.NewReader(evN(5)))
	}
	s = NewStream(cfg)
	pumped := startPump(s, strings.NewReader(evN(1)))
	<-waiting
	s.Close()
	if err := pumpResult(t, pumped); err != nil {
		t.Errorf("closed while continuing: Pump = %v", err)
	}
	w = newFakeWriter()
	if _, found := s.Attach(w, "1", 0); !found || strings.Contains(w.String(), `"n":5`) {
		t.Errorf("closed while continuing: a resumption got %q", w.String())
	}
}
