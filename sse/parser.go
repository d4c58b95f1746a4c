// Package sse implements the Server-Sent Events pieces of an MCP proxy: an
// incremental WHATWG event-stream parser with size bounds that hands out each
// event's raw bytes for byte-exact forwarding, an encoder, and a bounded
// per-stream replay ring for resumption with Last-Event-ID.
//
// The package imports only the standard library.
package sse

import (
	"bytes"
	"errors"
	"strings"
)

// DefaultMaxEvent is the event size bound, in bytes, that NewParser uses when
// it is given a bound of zero or less (so does a Stream whose
// StreamConfig.MaxEvent is zero or less): 1 MiB.
const DefaultMaxEvent = 1 << 20

// Errors returned by Parser.Feed. After either of them the parser is unusable.
var (
	// ErrEventTooLarge reports an event whose raw size, counting every line
	// and line terminator of its block, exceeds the parser's event bound.
	ErrEventTooLarge = errors.New("sse: event too large")
	// ErrLineTooLong reports a line whose content, without its line
	// terminator, exceeds the parser's line bound.
	ErrLineTooLong = errors.New("sse: line too long")
)

// Event is one block of an event stream: the lines up to and including the
// blank line that ends it.
//
// An Event handed to an emit callback, and every slice it holds, is valid
// only during that callback: the parser reuses the Event and its buffers, and
// Raw and Data may point into the chunk passed to Feed. Copy what must be
// kept. The strings ID and Name are ordinary immutable strings and may be
// kept.
type Event struct {
	// ID is the value of the block's last valid "id" field, or "" when
	// HasID is false. It is the id of this block only; the id that persists
	// across blocks is Parser.LastEventID.
	ID string
	// HasID reports whether the block had a valid "id" field (one without
	// NUL). An "id" field with an empty value sets HasID with ID "".
	HasID bool
	// Name is the value of the block's last "event" field, or "" when there
	// was none. A browser treats "" as "message".
	Name string
	// Data is the block's "data" field values joined with "\n"; it is empty
	// when the block had no data field or only empty ones.
	Data []byte
	// HasData reports whether the block had a "data" field, an empty one
	// too: a client dispatches an event only then (an MCP priming event
	// is an id and one empty data field).
	HasData bool
	// Retry is the value of the block's last valid "retry" field, in
	// milliseconds, or -1 when there was none. Values too large for an
	// int32 are clamped to math.MaxInt32.
	Retry int
	// Comment reports that the block had only comment lines and no field
	// lines. A relay may forward such a block or drop it.
	Comment bool
	// Raw is the exact bytes of the block as received: every line with its
	// own line terminator, including comment lines and the terminating blank
	// line. A comment-only block surfaced early (see Parser) has no blank
	// line. Concatenating the Raw of all events gives the input stream minus
	// a leading byte order mark, blank lines outside any block and the
	// discarded tail (see Flush).
	Raw []byte
}

const (
	blockEmpty   = iota // no line yet
	blockComment        // only comment lines so far
	blockFields         // at least one field line
)

const maxRetry = 1<<31 - 1

var utf8BOM = [3]byte{0xEF, 0xBB, 0xBF}

// Parser is an incremental parser of a text/event-stream body that follows
// the WHATWG HTML "event stream interpretation" rules, with the following
// differences, made on purpose for a proxy:
//
//   - Every non-empty block is emitted, including blocks with empty data
//     (such as the MCP priming event, an "id" with an empty "data"), blocks
//     with only an "id" or only unknown fields, and comment-only blocks. A
//     browser would dispatch none of these to the page.
//   - A run of comment lines at the start of a block is emitted on its own,
//     as an Event with Comment set, as soon as the first byte of the next
//     line shows a field line. So ": ping\n" followed by "data: x\n\n" gives
//     two events; the concatenated Raw bytes and the meaning of the stream
//     are unchanged.
//   - A block whose terminating blank line ends with a CR that is the last
//     byte of a chunk is emitted when the next byte arrives (to learn
//     whether an LF follows and belongs to Raw) or at Flush.
//
// Feed accepts the body in chunks of any size; the result does not depend on
// where the chunks are cut. Line ends may be CR, LF or CRLF, mixed. A UTF-8
// byte order mark at the start of the stream is skipped.
//
// Memory is bounded: the parser buffers at most one incomplete event, never
// grows a buffer past the event bound, and in steady state allocates nothing
// per event (ID and Name strings are cached or carved from a small shared
// arena).
//
// A Parser is not safe for concurrent use. After Feed or Flush returns an
// error, including one returned by emit, the parser must not be used further;
// it returns the same error from then on.
type Parser struct {
	maxEvent int
	maxLine  int
	err      error

	// raw holds the bytes of the current block when it spans chunks, from
	// the block's first byte; ls is the offset of the current (possibly
	// partial) line in raw.
	raw []byte
	ls  int
	// crPending: the last byte seen was a CR line terminator, so a leading
	// LF in the next chunk belongs to it.
	crPending bool
	// held: raw is a complete block whose blank line ended with crPending.
	held bool
	// bom counts the bytes of a byte order mark matched at the start of the
	// stream; -1 once the start of the stream has been decided.
	bom int

	// Fields of the current block.
	kind      int
	dataState int // 0 no data line, 1 single line in alias, 2 joined in data
	alias     []byte
	data      []byte
	name      string
	id        string
	hasID     bool
	retry     int

	lastID   string
	lastName string
	arena    strings.Builder
	arenaCap int
	ev       Event
}

// NewParser returns a parser that fails with ErrEventTooLarge when the raw
// size of an event exceeds maxEvent bytes and with ErrLineTooLong when a
// line, without its terminator, exceeds maxLine bytes. A maxEvent of zero or
// less means DefaultMaxEvent; a maxLine of zero or less, or above maxEvent,
// means maxEvent.
func NewParser(maxEvent, maxLine int) *Parser {
	if maxEvent <= 0 {
		maxEvent = DefaultMaxEvent
	}
	if maxLine <= 0 || maxLine > maxEvent {
		maxLine = maxEvent
	}
	return &Parser{maxEvent: maxEvent, maxLine: maxLine, retry: -1}
}

// LastEventID returns the event stream's last event ID: the id of the most
// recent emitted block that had a valid "id" field, or "" if none had. It
// persists across blocks and across Flush, as a browser's lastEventId does,
// and is the value to send as Last-Event-ID when reconnecting.
func (p *Parser) LastEventID() string { return p.lastID }

// Pending returns the number of bytes buffered for events that have not been
// emitted yet: an incomplete block, a complete block awaiting its next byte
// (see Parser) and bytes of a possible byte order mark.
func (p *Parser) Pending() int {
	n := len(p.raw)
	if p.bom > 0 {
		n += p.bom
	}
	return n
}

// Feed parses the next chunk of the stream and calls emit, in order, for
// every event the chunk completes. It returns the first error of emit, or
// ErrEventTooLarge or ErrLineTooLong when the stream breaks a bound; events
// before the offending one have been emitted by then. The Event passed to
// emit is valid only during the call (see Event); emit must not call Feed or
// Flush.
func (p *Parser) Feed(chunk []byte, emit func(ev *Event) error) error {
	if p.err != nil {
		return p.err
	}
	if p.bom >= 0 {
		for len(chunk) > 0 && p.bom < len(utf8BOM) {
			if chunk[0] != utf8BOM[p.bom] {
				n := p.bom
				p.bom = -1
				if err := p.feed(utf8BOM[:n], emit); err != nil {
					return err
				}
				break
			}
			p.bom++
			chunk = chunk[1:]
		}
		if p.bom == len(utf8BOM) {
			p.bom = -1
		}
		if p.bom >= 0 {
			return nil
		}
	}
	return p.feed(chunk, emit)
}

// Flush ends the stream. A block completed by a trailing CR is emitted; an
// incomplete trailing block is discarded, as the WHATWG rules require, and
// its size in bytes (with any partial byte order mark) is returned. After a
// successful Flush the parser is ready for a new stream and keeps
// LastEventID. emit may be nil to drop a pending event.
func (p *Parser) Flush(emit func(ev *Event) error) (discarded int, err error) {
	if p.err != nil {
		return 0, p.err
	}
	if p.held {
		p.held = false
		err = p.dispatch(p.raw, emit)
		p.raw = p.raw[:0]
	}
	discarded = p.Pending()
	p.raw = p.raw[:0]
	p.ls = 0
	p.crPending = false
	p.bom = 0
	p.resetBlock()
	if err != nil {
		p.err = err
	}
	return discarded, err
}

func (p *Parser) fail(err error) error {
	p.err = err
	p.ev = Event{}
	return err
}

func (p *Parser) feed(b []byte, emit func(*Event) error) error {
	if len(b) == 0 {
		return nil
	}
	i := 0
	if p.crPending {
		p.crPending = false
		if b[0] == '\n' {
			i = 1
			if len(p.raw) > 0 {
				if len(p.raw)+1 > p.maxEvent {
					return p.fail(ErrEventTooLarge)
				}
				p.raw = appendCapped(p.raw, b[:1], p.maxEvent)
				p.ls = len(p.raw)
			}
		}
	}
	if p.held {
		p.held = false
		err := p.dispatch(p.raw, emit)
		p.raw = p.raw[:0]
		p.ls = 0
		if err != nil {
			return p.fail(err)
		}
	}
	if len(p.raw) > 0 {
		var err error
		if i, err = p.carry(b, i, emit); err != nil {
			return p.fail(err)
		}
		if len(p.raw) > 0 {
			return nil
		}
	}
	if err := p.direct(b, i, emit); err != nil {
		return p.fail(err)
	}
	return nil
}

// carry continues a block buffered in p.raw with the bytes of b from i,
// until the block is emitted (p.raw is then empty) or b is used up.
func (p *Parser) carry(b []byte, i int, emit func(*Event) error) (int, error) {
	for i < len(b) {
		rest := b[i:]
		pl := len(p.raw) - p.ls
		if pl == 0 && p.kind == blockComment && isFieldStart(rest[0]) {
			err := p.dispatch(p.raw, emit)
			p.raw = p.raw[:0]
			p.ls = 0
			return i, err
		}
		j := indexEOL(rest)
		n, term, cr := j, 0, false
		if j < 0 {
			n = len(rest)
		} else {
			term, cr = terminator(rest, j)
		}
		if err := p.check(p.ls, pl+n, len(p.raw)+n+term); err != nil {
			return i, err
		}
		p.raw = appendCapped(p.raw, rest[:n+term], p.maxEvent)
		i += n + term
		if j < 0 {
			return i, nil
		}
		line := p.raw[p.ls : p.ls+pl+n]
		p.ls = len(p.raw)
		if cr {
			p.crPending = true
		}
		if len(line) == 0 {
			// In carry mode a blank line always ends a non-empty block.
			if cr {
				p.held = true
				return i, nil
			}
			err := p.dispatch(p.raw, emit)
			p.raw = p.raw[:0]
			p.ls = 0
			return i, err
		}
		p.line(line, true)
	}
	return i, nil
}

// direct parses b from i with no block buffered, emitting events whose bytes
// are all in b without copying them, and buffers the incomplete tail.
func (p *Parser) direct(b []byte, i int, emit func(*Event) error) error {
	s := i // start of the current block
	for i < len(b) {
		rest := b[i:]
		if p.kind == blockComment && isFieldStart(rest[0]) {
			if err := p.dispatch(b[s:i], emit); err != nil {
				return err
			}
			s = i
		}
		j := indexEOL(rest)
		if j < 0 {
			if err := p.check(i-s, len(rest), len(b)-s); err != nil {
				return err
			}
			break
		}
		term, cr := terminator(rest, j)
		next := i + j + term
		// A blank line outside any block belongs to no event, so no bound
		// applies to it (split between chunks, its CRLF is not counted
		// either).
		if j != 0 || p.kind != blockEmpty {
			if err := p.check(i-s, j, next-s); err != nil {
				return err
			}
		}
		if cr {
			p.crPending = true
		}
		if j == 0 {
			if p.kind != blockEmpty {
				if cr {
					p.ownData()
					p.raw = appendCapped(p.raw[:0], b[s:next], p.maxEvent)
					p.ls = len(p.raw)
					p.held = true
					return nil
				}
				if err := p.dispatch(b[s:next], emit); err != nil {
					return err
				}
			}
			s = next
			i = next
			continue
		}
		p.line(rest[:j], false)
		i = next
	}
	if s < len(b) {
		p.ownData()
		p.raw = appendCapped(p.raw[:0], b[s:], p.maxEvent)
		p.ls = i - s
	}
	return nil
}

// check enforces the bounds for a line starting at block offset ls with
// lineLen content bytes seen so far, in a block of blockLen bytes seen so
// far. When both bounds are broken, the one broken at the earlier byte wins,
// so the error does not depend on chunking.
func (p *Parser) check(ls, lineLen, blockLen int) error {
	lineBad := lineLen > p.maxLine
	eventBad := blockLen > p.maxEvent
	switch {
	case lineBad && (!eventBad || ls+p.maxLine <= p.maxEvent):
		return ErrLineTooLong
	case eventBad:
		return ErrEventTooLarge
	}
	return nil
}

// line interprets one complete, non-blank line. owned reports that line
// points into p.raw rather than into the caller's chunk.
func (p *Parser) line(line []byte, owned bool) {
	if line[0] == ':' {
		if p.kind == blockEmpty {
			p.kind = blockComment
		}
		return
	}
	p.kind = blockFields
	field, value := line, line[len(line):]
	if k := bytes.IndexByte(line, ':'); k >= 0 {
		field, value = line[:k], line[k+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	switch string(field) {
	case "data":
		p.addData(value, owned)
	case "event":
		if string(value) != p.lastName {
			p.lastName = p.intern(value)
		}
		p.name = p.lastName
	case "id":
		if bytes.IndexByte(value, 0) >= 0 {
			return
		}
		switch {
		case string(value) == p.lastID:
			p.id = p.lastID
		case string(value) != p.id:
			p.id = p.intern(value)
		}
		p.hasID = true
	case "retry":
		if v, ok := parseRetry(value); ok {
			p.retry = v
		}
	}
}

func (p *Parser) addData(v []byte, owned bool) {
	switch p.dataState {
	case 0:
		if owned {
			p.data = appendCapped(p.data[:0], v, p.maxEvent)
			p.dataState = 2
			return
		}
		p.alias = v
		p.dataState = 1
	case 1:
		p.data = appendCapped(p.data[:0], p.alias, p.maxEvent)
		p.alias = nil
		p.dataState = 2
		fallthrough
	default:
		p.data = appendCapped(p.data, newline, p.maxEvent)
		p.data = appendCapped(p.data, v, p.maxEvent)
	}
}

var newline = []byte{'\n'}

// ownData copies data that may point into the caller's chunk.
func (p *Parser) ownData() {
	if p.dataState == 1 {
		p.data = appendCapped(p.data[:0], p.alias, p.maxEvent)
		p.alias = nil
		p.dataState = 2
	}
}

func (p *Parser) dispatch(raw []byte, emit func(*Event) error) error {
	ev := &p.ev
	ev.Raw = raw
	switch p.dataState {
	case 1:
		ev.Data = p.alias
	case 2:
		ev.Data = p.data
	default:
		ev.Data = nil
	}
	ev.HasData = p.dataState != 0
	ev.Name = p.name
	ev.HasID = p.hasID
	ev.ID = ""
	if p.hasID {
		ev.ID = p.id
		p.lastID = p.id
	}
	ev.Retry = p.retry
	ev.Comment = p.kind == blockComment
	var err error
	if emit != nil {
		err = emit(ev)
	}
	ev.Raw, ev.Data = nil, nil
	p.resetBlock()
	return err
}

func (p *Parser) resetBlock() {
	p.kind = blockEmpty
	p.dataState = 0
	p.alias = nil
	p.data = p.data[:0]
	p.name = ""
	p.id = ""
	p.hasID = false
	p.retry = -1
}

// intern returns b as a string carved from an append-only arena, so that
// strings for ids and names cost no allocation of their own. Bytes in the
// arena are never overwritten, so the strings stay immutable.
func (p *Parser) intern(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if p.arena.Cap()-p.arena.Len() < len(b) {
		p.arenaCap = min(max(2*p.arenaCap, 256), 4096)
		p.arena.Reset()
		p.arena.Grow(max(p.arenaCap, len(b)))
	}
	start := p.arena.Len()
	p.arena.Write(b)
	return p.arena.String()[start:]
}

func isFieldStart(c byte) bool { return c != ':' && c != '\r' && c != '\n' }

// indexEOL returns the index of the first CR or LF in b, or -1.
func indexEOL(b []byte) int {
	j := bytes.IndexByte(b, '\n')
	if j < 0 {
		return bytes.IndexByte(b, '\r')
	}
	if k := bytes.IndexByte(b[:j], '\r'); k >= 0 {
		return k
	}
	return j
}

// terminator returns the length of the line terminator at b[j] and whether
// it is a CR at the end of b, which an LF in the next chunk may extend.
func terminator(b []byte, j int) (n int, crAtEnd bool) {
	if b[j] == '\r' {
		if j+1 == len(b) {
			return 1, true
		}
		if b[j+1] == '\n' {
			return 2, false
		}
	}
	return 1, false
}

func parseRetry(v []byte) (int, bool) {
	if len(v) == 0 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = min(n*10+int64(c-'0'), maxRetry)
	}
	return int(n), true
}

// appendCapped appends src to dst, growing dst geometrically but never to a
// capacity above limit. The caller guarantees len(dst)+len(src) <= limit.
func appendCapped(dst, src []byte, limit int) []byte {
	need := len(dst) + len(src)
	if need > cap(dst) {
		c := min(max(2*cap(dst), need, 512), limit)
		nb := make([]byte, len(dst), c)
		copy(nb, dst)
		dst = nb
	}
	return append(dst, src...)
}
