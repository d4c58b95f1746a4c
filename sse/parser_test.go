package sse

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// rec is a copy of an Event that outlives the emit callback.
type rec struct {
	ID      string
	HasID   bool
	Name    string
	Data    string
	Retry   int
	Comment bool
	Raw     string
	LastID  string // Parser.LastEventID during the callback
}

func (r rec) String() string {
	return fmt.Sprintf("{id %q has %v name %q data %q retry %d comment %v raw %q last %q}", r.ID, r.HasID, r.Name, r.Data, r.Retry, r.Comment, r.Raw, r.LastID)
}

// feedAll feeds chunks to a fresh parser, then flushes it.
func feedAll(maxEvent, maxLine int, chunks [][]byte) (out []rec, discarded int, err error) {
	p := NewParser(maxEvent, maxLine)
	emit := func(ev *Event) error {
		out = append(out, rec{ev.ID, ev.HasID, ev.Name, string(ev.Data), ev.Retry, ev.Comment, string(ev.Raw), p.LastEventID()})
		return nil
	}
	for _, c := range chunks {
		if err = p.Feed(c, emit); err != nil {
			return out, 0, err
		}
		if cap(p.raw) > p.maxEvent || cap(p.data) > p.maxEvent {
			panic(fmt.Sprintf("buffer grew past the cap: raw %d data %d max %d", cap(p.raw), cap(p.data), p.maxEvent))
		}
	}
	discarded, err = p.Flush(emit)
	return out, discarded, err
}

func splitAt(in []byte, cuts ...int) [][]byte {
	var out [][]byte
	prev := 0
	for _, c := range cuts {
		out = append(out, in[prev:c])
		prev = c
	}
	return append(out, in[prev:])
}

func bytewise(in []byte) [][]byte {
	out := make([][]byte, len(in))
	for i := range in {
		out[i] = in[i : i+1]
	}
	return out
}

// d is a plain data event.
func d(raw, data string) rec { return rec{Data: data, Raw: raw, Retry: -1} }

func TestParserRules(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		want      []rec
		discarded int
	}{
		{"data", "data: hello\n\n", []rec{d("data: hello\n\n", "hello")}, 0},
		{"data lines join with LF", "data: a\ndata: b\n\n", []rec{d("data: a\ndata: b\n\n", "a\nb")}, 0},
		{"no space after colon", "data:a\n\n", []rec{d("data:a\n\n", "a")}, 0},
		{"only one space stripped", "data:  a \n\n", []rec{d("data:  a \n\n", " a ")}, 0},
		{"field without colon", "data\n\n", []rec{d("data\n\n", "")}, 0},
		{"two empty data lines", "data\ndata:\n\n", []rec{d("data\ndata:\n\n", "\n")}, 0},
		{"two events", "data: a\n\ndata: b\n\n", []rec{d("data: a\n\n", "a"), d("data: b\n\n", "b")}, 0},
		{"event name", "event: update\ndata: x\n\n", []rec{{Name: "update", Data: "x", Retry: -1, Raw: "event: update\ndata: x\n\n"}}, 0},
		{"last event name wins", "event: a\nevent: b\ndata\n\n", []rec{{Name: "b", Retry: -1, Raw: "event: a\nevent: b\ndata\n\n"}}, 0},
		{"id persists as LastEventID only", "id: 7\ndata: x\n\ndata: y\n\n", []rec{
			{ID: "7", HasID: true, Data: "x", Retry: -1, Raw: "id: 7\ndata: x\n\n", LastID: "7"},
			{Data: "y", Retry: -1, Raw: "data: y\n\n", LastID: "7"},
		}, 0},
		{"id with NUL ignored", "id: a\x00b\ndata: x\n\n", []rec{d("id: a\x00b\ndata: x\n\n", "x")}, 0},
		{"id with NUL keeps earlier id", "id: 1\nid: a\x00b\ndata\n\n", []rec{{ID: "1", HasID: true, Retry: -1, Raw: "id: 1\nid: a\x00b\ndata\n\n", LastID: "1"}}, 0},
		{"empty id resets", "id: 1\n\nid\n\n", []rec{
			{ID: "1", HasID: true, Retry: -1, Raw: "id: 1\n\n", LastID: "1"},
			{HasID: true, Retry: -1, Raw: "id\n\n"},
		}, 0},
		{"retry digits", "retry: 1500\n\n", []rec{{Retry: 1500, Raw: "retry: 1500\n\n"}}, 0},
		{"retry non-digits ignored", "retry: 15x\n\n", []rec{{Retry: -1, Raw: "retry: 15x\n\n"}}, 0},
		{"retry negative ignored", "retry: -5\n\n", []rec{{Retry: -1, Raw: "retry: -5\n\n"}}, 0},
		{"retry empty ignored", "retry:\n\n", []rec{{Retry: -1, Raw: "retry:\n\n"}}, 0},
		{"retry bad keeps earlier", "retry: 10\nretry: x\n\n", []rec{{Retry: 10, Raw: "retry: 10\nretry: x\n\n"}}, 0},
		{"retry clamped", "retry: 99999999999999999999\n\n", []rec{{Retry: maxRetry, Raw: "retry: 99999999999999999999\n\n"}}, 0},
		{"unknown field", "foo: bar\nData: x\n\n", []rec{{Retry: -1, Raw: "foo: bar\nData: x\n\n"}}, 0},
		{"comment-only block", ":keepalive\n\n", []rec{{Comment: true, Retry: -1, Raw: ":keepalive\n\n"}}, 0},
		{"comment lines grouped", ": a\n: b\n\n", []rec{{Comment: true, Retry: -1, Raw: ": a\n: b\n\n"}}, 0},
		{"comment prefix surfaced", ": ping\ndata: x\n\n", []rec{{Comment: true, Retry: -1, Raw: ": ping\n"}, d("data: x\n\n", "x")}, 0},
		{"comment inside event", "data: x\n: mid\ndata: y\n\n", []rec{d("data: x\n: mid\ndata: y\n\n", "x\ny")}, 0},
		{"priming event", "id: 0\ndata:\n\n", []rec{{ID: "0", HasID: true, Retry: -1, Raw: "id: 0\ndata:\n\n", LastID: "0"}}, 0},
		{"id-only event", "id: 5\n\n", []rec{{ID: "5", HasID: true, Retry: -1, Raw: "id: 5\n\n", LastID: "5"}}, 0},
		{"mixed line ends", "data: a\rdata: b\r\ndata: c\n\r\n", []rec{d("data: a\rdata: b\r\ndata: c\n\r\n", "a\nb\nc")}, 0},
		{"CRLF events", "data: a\r\n\r\ndata: b\r\n\r\n", []rec{d("data: a\r\n\r\n", "a"), d("data: b\r\n\r\n", "b")}, 0},
		{"CR only, flushed", "data: a\r\rdata: b\r\r", []rec{d("data: a\r\r", "a"), d("data: b\r\r", "b")}, 0},
		{"stray blank lines", "\n\r\n\rdata: x\n\n\n\r\n", []rec{d("data: x\n\n", "x")}, 0},
		{"BOM skipped", "\xEF\xBB\xBFdata: x\n\n", []rec{d("data: x\n\n", "x")}, 0},
		{"partial BOM is data", "\xEF\xBBdata: x\n\n", []rec{{Retry: -1, Raw: "\xEF\xBBdata: x\n\n"}}, 0},
		{"BOM only at start", "data: a\n\n\xEF\xBB\xBFdata: b\n\n", []rec{d("data: a\n\n", "a"), {Retry: -1, Raw: "\xEF\xBB\xBFdata: b\n\n"}}, 0},
		{"flush discards partial line", "data: x\n\ndata: partial", []rec{d("data: x\n\n", "x")}, len("data: partial")},
		{"flush discards unterminated event", "data: x\n", nil, len("data: x\n")},
		{"flush discards comment", ": ping\n", nil, len(": ping\n")},
		{"flush discards partial BOM", "\xEF\xBB", nil, 2},
		{"empty input", "", nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := []byte(tt.in)
			ways := map[string][][]byte{"whole": {in}, "bytewise": bytewise(in)}
			for i := 0; i <= len(in); i++ {
				ways["split@"+strconv.Itoa(i)] = splitAt(in, i)
				for j := i; j <= len(in) && len(in) < 40; j++ {
					ways["split@"+strconv.Itoa(i)+","+strconv.Itoa(j)] = splitAt(in, i, j)
				}
			}
			for how, chunks := range ways {
				got, discarded, err := feedAll(0, 0, chunks)
				if err != nil {
					t.Fatalf("%s: %v", how, err)
				}
				if fmt.Sprint(got) != fmt.Sprint(tt.want) {
					t.Fatalf("%s: events\n got %v\nwant %v", how, got, tt.want)
				}
				if discarded != tt.discarded {
					t.Fatalf("%s: discarded %d, want %d", how, discarded, tt.discarded)
				}
			}
		})
	}
}

func TestParserCRAtChunkBoundary(t *testing.T) {
	p := NewParser(0, 0)
	var got []string
	emit := func(ev *Event) error { got = append(got, string(ev.Raw)); return nil }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(p.Feed([]byte("data: a\r"), emit))
	must(p.Feed([]byte("\n\r"), emit))
	if len(got) != 0 || p.Pending() != len("data: a\r\n\r") {
		t.Fatalf("emitted %q early, pending %d", got, p.Pending())
	}
	must(p.Feed([]byte("\ndata: b\r\r"), emit))
	if fmt.Sprint(got) != fmt.Sprint([]string{"data: a\r\n\r\n"}) {
		t.Fatalf("got %q", got)
	}
	must(p.Feed([]byte("data: c"), emit)) // a non-LF byte releases the held event
	if fmt.Sprint(got) != fmt.Sprint([]string{"data: a\r\n\r\n", "data: b\r\r"}) {
		t.Fatalf("got %q", got)
	}
	if p.Pending() != len("data: c") {
		t.Fatalf("pending %d", p.Pending())
	}
}

func TestParserLimits(t *testing.T) {
	tests := []struct {
		name              string
		maxEvent, maxLine int
		in                string
		want              []rec
		err               error
	}{
		{"event too large", 20, 20, "data: a\n\ndata: a\ndata: b\ndata: c\n\n", []rec{d("data: a\n\n", "a")}, ErrEventTooLarge},
		{"line too long", 100, 8, "data: a\n\ndata: 0123456789\n\n", []rec{d("data: a\n\n", "a")}, ErrLineTooLong},
		{"line too long without terminator", 100, 8, "data: 0123456789", nil, ErrLineTooLong},
		{"event exactly at the cap", 10, 10, "data: ab\n\n", []rec{d("data: ab\n\n", "ab")}, nil},
		{"line exactly at the cap", 100, 8, "data: ab\n\n", []rec{d("data: ab\n\n", "ab")}, nil},
		{"CRLF pushes event over the cap", 10, 10, "data: ab\r\n\r\n", nil, ErrEventTooLarge},
		{"comment prefix does not count", 12, 12, ": 01234567\ndata: 0123\n\n", []rec{{Comment: true, Retry: -1, Raw: ": 01234567\n"}, d("data: 0123\n\n", "0123")}, nil},
		{"earlier broken bound wins", 10, 5, "data: 0123456789\n\n", nil, ErrLineTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := []byte(tt.in)
			for how, chunks := range map[string][][]byte{"whole": {in}, "bytewise": bytewise(in)} {
				got, _, err := feedAll(tt.maxEvent, tt.maxLine, chunks)
				if !errors.Is(err, tt.err) {
					t.Fatalf("%s: err %v, want %v", how, err, tt.err)
				}
				if fmt.Sprint(got) != fmt.Sprint(tt.want) {
					t.Fatalf("%s: events\n got %v\nwant %v", how, got, tt.want)
				}
			}
		})
	}
}

func TestParserErrorIsSticky(t *testing.T) {
	p := NewParser(16, 0)
	nop := func(*Event) error { return nil }
	big := bytes.Repeat([]byte("x\n"), 1<<19)
	if err := p.Feed(big, nop); !errors.Is(err, ErrEventTooLarge) {
		t.Fatalf("err %v", err)
	}
	if cap(p.raw) > 16 {
		t.Fatalf("buffered %d bytes past the cap", cap(p.raw))
	}
	if err := p.Feed([]byte("data: x\n\n"), nop); !errors.Is(err, ErrEventTooLarge) {
		t.Fatalf("after error: %v", err)
	}
	if _, err := p.Flush(nop); !errors.Is(err, ErrEventTooLarge) {
		t.Fatalf("flush after error: %v", err)
	}

	boom := errors.New("boom")
	p = NewParser(0, 0)
	if err := p.Feed([]byte("data: a\n\ndata: b\n\n"), func(*Event) error { return boom }); err != boom {
		t.Fatalf("emit error: %v", err)
	}
	if err := p.Feed([]byte("data: c\n\n"), nop); err != boom {
		t.Fatalf("after emit error: %v", err)
	}
}

func TestParserReuseAfterFlush(t *testing.T) {
	p := NewParser(0, 0)
	var got []string
	emit := func(ev *Event) error { got = append(got, string(ev.Data)); return nil }
	_ = p.Feed([]byte("id: 3\ndata: a\n\ndata: cut"), emit)
	if n, err := p.Flush(emit); n != len("data: cut") || err != nil {
		t.Fatalf("flush %d %v", n, err)
	}
	if p.Pending() != 0 || p.LastEventID() != "3" {
		t.Fatalf("pending %d last id %q", p.Pending(), p.LastEventID())
	}
	_ = p.Feed([]byte("\xEF\xBB\xBFdata: b\n\n"), emit)
	if fmt.Sprint(got) != "[a b]" {
		t.Fatalf("got %q", got)
	}
}

func TestParserDataValidDuringCallbackOnly(t *testing.T) {
	// Events that span chunks are copied; the caller may reuse its chunk.
	p := NewParser(0, 0)
	var got []string
	emit := func(ev *Event) error { got = append(got, string(ev.Data)); return nil }
	buf := []byte("data: hel")
	_ = p.Feed(buf, emit)
	copy(buf, "XXXXXXXXX")
	_ = p.Feed([]byte("lo\ndata: w"), emit)
	_ = p.Feed([]byte("orld\n\n"), emit)
	if fmt.Sprint(got) != "[hello\nworld]" {
		t.Fatalf("got %q", got)
	}
}

func TestParserNoAllocs(t *testing.T) {
	stream := benchStream(64, 1024)
	p := NewParser(1<<20, 0)
	emit := func(*Event) error { return nil }
	feed := func() {
		for c := stream; len(c) > 0; {
			n := min(len(c), 4000)
			if err := p.Feed(c[:n], emit); err != nil {
				t.Fatal(err)
			}
			c = c[n:]
		}
	}
	feed()
	if n := testing.AllocsPerRun(50, feed); n != 0 {
		t.Fatalf("%v allocs per stream of 64 events", n)
	}
}

// benchStream returns n MCP-like events with ids and dataLen bytes of data.
func benchStream(n, dataLen int) []byte {
	payload := `{"jsonrpc":"2.0","method":"notifications/progress","params":{"x":"` + strings.Repeat("a", dataLen) + `"}}`
	payload = payload[len(payload)-dataLen:]
	var b []byte
	for i := range n {
		b = AppendEvent(b, "stream-1_"+strconv.Itoa(i), "message", []byte(payload))
	}
	return b
}

func BenchmarkParser1KiB(b *testing.B) {
	stream := benchStream(1024, 1024)
	const chunk = 32 << 10
	p := NewParser(1<<20, 0)
	events := 0
	emit := func(*Event) error { events++; return nil }
	b.SetBytes(chunk)
	b.ReportAllocs()
	off := 0
	for b.Loop() {
		if off+chunk > len(stream) {
			off = 0
		}
		if err := p.Feed(stream[off:off+chunk], emit); err != nil {
			b.Fatal(err)
		}
		off += chunk
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(max(events, 1)), "ns/event")
}

// refParse is a direct, unoptimized reading of the rules the parser
// implements, for whole inputs and no bounds.
func refParse(in []byte) (out []rec, discarded int) {
	in = bytes.TrimPrefix(in, utf8BOM[:])
	var (
		raw            []byte
		kind           = blockEmpty
		data           [][]byte
		name, id, last string
		hasID          bool
		retry          = -1
	)
	emit := func() {
		if hasID {
			last = id
		}
		r := rec{ID: id, HasID: hasID, Name: name, Data: string(bytes.Join(data, []byte("\n"))), Retry: retry, Comment: kind == blockComment, Raw: string(raw), LastID: last}
		if !hasID {
			r.ID = ""
		}
		out = append(out, r)
		raw, kind, data, name, id, hasID, retry = nil, blockEmpty, nil, "", "", false, -1
	}
	for len(in) > 0 {
		// A comment-only block ends at the first byte of a field line.
		if in[0] != ':' && in[0] != '\r' && in[0] != '\n' && kind == blockComment {
			emit()
		}
		k := 0
		for k < len(in) && in[k] != '\r' && in[k] != '\n' {
			k++
		}
		if k == len(in) {
			break
		}
		end := k + 1
		if in[k] == '\r' && end < len(in) && in[end] == '\n' {
			end++
		}
		line, full := in[:k], in[:end]
		in = in[end:]
		raw = append(raw, full...)
		switch {
		case len(line) == 0:
			if kind != blockEmpty {
				emit()
			}
			raw = nil
		case line[0] == ':':
			if kind == blockEmpty {
				kind = blockComment
			}
		default:
			kind = blockFields
			f, v, ok := bytes.Cut(line, []byte(":"))
			if ok && len(v) > 0 && v[0] == ' ' {
				v = v[1:]
			}
			switch string(f) {
			case "data":
				data = append(data, v)
			case "event":
				name = string(v)
			case "id":
				if !bytes.Contains(v, []byte{0}) {
					id, hasID = string(v), true
				}
			case "retry":
				if len(v) > 0 && len(bytes.Trim(v, "0123456789")) == 0 {
					n, err := strconv.ParseInt(string(v), 10, 64)
					if err != nil || n > maxRetry {
						n = maxRetry
					}
					retry = int(n)
				}
			}
		}
	}
	return out, len(raw) + len(in)
}

func FuzzParserChunking(f *testing.F) {
	seeds := []string{
		"data: hello\n\n",
		"id: 1\nevent: message\ndata: {\"jsonrpc\":\"2.0\"}\n\n",
		"id: 0\ndata:\n\n: keepalive\n\nretry: 100\n\n",
		": ping\ndata: a\ndata: b\n\ndata: c\n: mid\n\n",
		"data: a\rdata: b\r\ndata: c\n\r\n\r",
		"\xEF\xBB\xBFdata: x\r\n\r\n\r\n",
		"\xEF\xBBdata: x\n\nid: a\x00b\nretry: 12x\n\nfoo\n\n",
		"data: unterminated",
		"data: 0123456789abcdef0123456789\n\n",
	}
	for i, s := range seeds {
		f.Add([]byte(s), []byte{byte(i), 3, 1, 7}, uint16(0))
		f.Add([]byte(s), []byte{1, 1, 1, 1, 1, 1, 1, 1}, uint16(i*1100+12))
	}
	f.Fuzz(func(t *testing.T, in, cuts []byte, caps uint16) {
		maxEvent, maxLine := 0, 0
		if caps != 0 {
			maxEvent = int(caps&0x3ff) + 1
			maxLine = int(caps>>10)*16 + 1
		}
		whole, wd, werr := feedAll(maxEvent, maxLine, [][]byte{in})
		var chunks [][]byte
		rest := in
		for _, c := range cuts {
			n := min(int(c%19), len(rest))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		chunks = append(chunks, rest)
		got, gd, gerr := feedAll(maxEvent, maxLine, chunks)
		if werr != gerr {
			t.Fatalf("errors differ: whole %v, chunked %v", werr, gerr)
		}
		if fmt.Sprint(whole) != fmt.Sprint(got) || wd != gd {
			t.Fatalf("chunking changed the result\nwhole   %v discarded %d\nchunked %v discarded %d", whole, wd, got, gd)
		}
		if werr != nil {
			return
		}
		want, dd := refParse(in)
		if fmt.Sprint(whole) != fmt.Sprint(want) || wd != dd {
			t.Fatalf("differs from the reference\n got %v discarded %d\nwant %v discarded %d", whole, wd, want, dd)
		}
	})
}
