package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Record is one audited MCP request.
type Record struct {
	Time      time.Time
	Principal string
	Session   string
	Client    string
	Method    string
	Kind      string
	Target    string
	Decision  string // "allow", "deny" or "error"
	Rule      string // the deciding rule's Label, "" for the default
	Status    int    // HTTP status
	Code      int    // JSON-RPC error code, 0 for none
	Duration  time.Duration
	Upstream  string
	BytesIn   int64
	BytesOut  int64
	Arguments json.RawMessage // nil unless configured (already redacted)
	// BatchIndex is the message's place in its batch, from 1, and
	// BatchSize the batch's number of messages; both 0 for a request of
	// one message.
	BatchIndex, BatchSize int
}

// DefaultQueueSize is the queue size of a Writer made with a size <= 0.
const DefaultQueueSize = 1024

// Writer hands records to write on one goroutine of its own through a
// queue of at most Size records (Size <= 0 means 1024). Log never blocks:
// when the queue is full the record is dropped and counted. Close stops the
// goroutine after writing what is queued (bounded: at most Size records)
// and waits for it; Log after Close drops.
//
// The queue holds copies of the records logged: Log copies *r, so the
// caller may reuse r once Log returns (the bytes of r.Arguments are not
// copied and must not change afterwards). write is given a pointer to the
// Writer's copy, valid only until write returns: write must not keep it.
// write runs on the Writer's goroutine, one record at a time; it must not
// panic, and a write that never returns keeps Close from returning.
type Writer struct {
	write func(*Record)
	queue chan Record
	done  chan struct{}

	mu     sync.RWMutex // held for reading by Log, for writing by Close
	closed bool

	dropped atomic.Uint64
	written atomic.Uint64
}

// NewWriter starts a Writer with a queue of size records (size <= 0 means
// 1024) that passes each record to write. It panics if write is nil.
func NewWriter(size int, write func(*Record)) *Writer {
	if write == nil {
		panic("policy: NewWriter with a nil write func")
	}
	if size <= 0 {
		size = DefaultQueueSize
	}
	w := &Writer{
		write: write,
		queue: make(chan Record, size),
		done:  make(chan struct{}),
	}
	go w.run()
	return w
}

func (w *Writer) run() {
	defer close(w.done)
	var r Record // the one copy write is given, reused for every record
	for {
		var ok bool
		if r, ok = <-w.queue; !ok {
			return
		}
		w.write(&r)
		r = Record{} // keep nothing of it alive
		w.written.Add(1)
	}
}

// Log queues a copy of r for writing and reports whether it did: false when
// the queue is full or the Writer closed (the record is dropped and
// counted), or r is nil. It never blocks.
func (w *Writer) Log(r *Record) bool {
	if r == nil {
		return false
	}
	w.mu.RLock()
	defer w.mu.RUnlock()
	if !w.closed {
		select {
		case w.queue <- *r:
			return true
		default:
		}
	}
	w.dropped.Add(1)
	return false
}

// Dropped returns how many records Log dropped.
func (w *Writer) Dropped() uint64 { return w.dropped.Load() }

// Written returns how many records write has returned from.
func (w *Writer) Written() uint64 { return w.written.Load() }

// Close stops taking records, writes those queued (at most Size) and waits
// for the Writer's goroutine to end, so for every write to return. It may
// be called more than once.
func (w *Writer) Close() {
	w.stop()
	<-w.done
}

// CloseWait is Close waiting at most wait, and reports whether every
// queued record was written. Past wait (a write that blocks: a stuck log
// sink), the records still queued are dropped and counted, and the
// Writer's goroutine is left in its write with the one record it holds; it
// ends when that write returns. A sink that stays stuck thus keeps one
// goroutine and one record of each Writer closed on it, never its queue.
func (w *Writer) CloseWait(wait time.Duration) bool {
	w.stop()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-w.done:
		return true
	case <-t.C:
	}
	for range w.queue {
		w.dropped.Add(1)
	}
	return false
}

// stop stops taking records.
func (w *Writer) stop() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.queue)
	}
	w.mu.Unlock()
}

// redacted is the value Redact puts in place of each value it hides.
const redacted = "REDACTED"

// Redact returns v (JSON) with the values at each RFC 6901 JSON pointer in
// pointers replaced by the string "REDACTED" (a pointer that does not
// resolve, or is not well-formed, is skipped; "" means the whole value;
// `~0`/`~1` escapes; array indices). Invalid JSON gives nil. maxBytes > 0
// truncates the result: an output longer than maxBytes becomes a JSON
// string "TRUNCATED (<n> bytes)", n the length of the output it replaces.
//
// The output is compact. With pointers to apply it is re-encoded from the
// decoded value: object members sorted by name, a duplicated member once
// (its last value), numbers as written, <, > and & unescaped.
func Redact(v json.RawMessage, pointers []string, maxBytes int) json.RawMessage {
	out, err := redact(v, pointers)
	if err != nil {
		return nil
	}
	if maxBytes > 0 && len(out) > maxBytes {
		return json.RawMessage(strconv.Quote(fmt.Sprintf("TRUNCATED (%d bytes)", len(out))))
	}
	return out
}

func redact(v json.RawMessage, pointers []string) (json.RawMessage, error) {
	var buf bytes.Buffer
	if len(pointers) == 0 {
		if err := json.Compact(&buf, v); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	}
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	var root any
	if err := dec.Decode(&root); err != nil {
		return nil, err
	}
	if err := expectEOF(dec); err != nil {
		return nil, err
	}
	for _, p := range pointers {
		if p == "" {
			root = redacted
			break
		}
		toks, err := splitPointer(p)
		if err != nil {
			continue
		}
		redactAt(root, toks)
	}
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(root); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// redactAt replaces the value at toks below root, when there is one.
func redactAt(root any, toks []string) {
	cur := root
	for i, t := range toks {
		last := i == len(toks)-1
		switch c := cur.(type) {
		case map[string]any:
			next, ok := c[t]
			if !ok {
				return
			}
			if last {
				c[t] = redacted
				return
			}
			cur = next
		case []any:
			n, ok := arrayIndex(t)
			if !ok || n >= len(c) {
				return
			}
			if last {
				c[n] = redacted
				return
			}
			cur = c[n]
		default:
			return
		}
	}
}

// arrayIndex parses an RFC 6901 array index: "0", or digits without a
// leading zero.
func arrayIndex(t string) (int, bool) {
	if t == "" || len(t) > 1 && t[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(t); i++ {
		if t[i] < '0' || t[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(t)
	return n, err == nil
}

// ValidPointer reports whether p is an RFC 6901 JSON pointer: "" (the
// whole value), or "/"-prefixed reference tokens in which `~` is only
// followed by 0 or 1.
func ValidPointer(p string) error {
	_, err := splitPointer(p)
	return err
}

// splitPointer returns the unescaped reference tokens of p.
func splitPointer(p string) ([]string, error) {
	if p == "" {
		return nil, nil
	}
	if p[0] != '/' {
		return nil, fmt.Errorf("JSON pointer %q does not start with /", p)
	}
	toks := strings.Split(p[1:], "/")
	for i, t := range toks {
		if !strings.Contains(t, "~") {
			continue
		}
		var b strings.Builder
		for j := 0; j < len(t); j++ {
			if t[j] != '~' {
				b.WriteByte(t[j])
				continue
			}
			if j+1 >= len(t) || (t[j+1] != '0' && t[j+1] != '1') {
				return nil, errors.New("JSON pointer " + strconv.Quote(p) + ": ~ not followed by 0 or 1")
			}
			if t[j+1] == '0' {
				b.WriteByte('~')
			} else {
				b.WriteByte('/')
			}
			j++
		}
		toks[i] = b.String()
	}
	return toks, nil
}
