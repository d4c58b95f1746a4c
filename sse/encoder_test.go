package sse

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestAppendEvent(t *testing.T) {
	tests := []struct {
		id, name, data string
		want           string
	}{
		{"", "", "", "data:\n\n"},
		{"7", "", "", "id: 7\ndata:\n\n"},
		{"1", "message", `{"a":1}`, "id: 1\nevent: message\ndata: {\"a\":1}\n\n"},
		{"", "", "a\nb\r\nc\rd", "data: a\ndata: b\ndata: c\ndata: d\n\n"},
		{"", "", "a\n", "data: a\ndata:\n\n"},
		{"", "", " lead", "data:  lead\n\n"},
		{"a\r\nb\x00", "ev\nil", "x", "id: ab\nevent: evil\ndata: x\n\n"},
		{"\n\x00", "\r", "x", "data: x\n\n"},
	}
	for _, tt := range tests {
		got := string(AppendEvent([]byte("pre"), tt.id, tt.name, []byte(tt.data)))
		if got != "pre"+tt.want {
			t.Errorf("AppendEvent(%q, %q, %q) = %q, want %q", tt.id, tt.name, tt.data, got, "pre"+tt.want)
		}
	}
}

func TestAppendCommentAndRetry(t *testing.T) {
	for text, want := range map[string]string{
		"":          ":\n\n",
		"keepalive": ": keepalive\n\n",
		"a\r\nb\n":  ": a\n: b\n:\n\n",
	} {
		if got := string(AppendComment(nil, text)); got != want {
			t.Errorf("AppendComment(%q) = %q, want %q", text, got, want)
		}
	}
	if got := string(AppendRetry(nil, 3000)); got != "retry: 3000\n\n" {
		t.Errorf("AppendRetry = %q", got)
	}
	if got := string(AppendRetry(nil, -1)); got != "retry: 0\n\n" {
		t.Errorf("AppendRetry(-1) = %q", got)
	}
}

// roundTrip encodes an event and parses it back.
func roundTrip(t *testing.T, id, name string, data []byte) {
	t.Helper()
	enc := AppendEvent(nil, id, name, data)
	enc = AppendComment(enc, "c\nd")
	enc = AppendRetry(enc, 5)
	var got []rec
	p := NewParser(0, 0)
	err := p.Feed(enc, func(ev *Event) error {
		got = append(got, rec{ev.ID, ev.HasID, ev.Name, string(ev.Data), ev.Retry, ev.Comment, string(ev.Raw), ""})
		return nil
	})
	if n, ferr := p.Flush(nil); err != nil || ferr != nil || n != 0 {
		t.Fatalf("parse: %v %v, %d discarded", err, ferr, n)
	}
	wantID := strings.NewReplacer("\r", "", "\n", "", "\x00", "").Replace(id)
	wantName := strings.NewReplacer("\r", "", "\n", "").Replace(name)
	wantData := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(string(data))
	if len(got) != 3 {
		t.Fatalf("got %d events from %q", len(got), enc)
	}
	e := got[0]
	if e.ID != wantID || e.HasID != (wantID != "") || e.Name != wantName || e.Data != wantData || e.Comment || e.Raw != string(AppendEvent(nil, id, name, data)) {
		t.Fatalf("round trip of %q %q %q gave %v", id, name, data, e)
	}
	if !got[1].Comment || got[2].Retry != 5 {
		t.Fatalf("comment/retry blocks: %v", got[1:])
	}
}

func TestEncoderRoundTrip(t *testing.T) {
	for _, tt := range []struct{ id, name, data string }{
		{"", "", ""},
		{"0", "", ""},
		{" spaced", " spaced", " spaced"},
		{"x:y", "a:b", "data: inner\n\nid: 9\n"},
		{"1", "message", strings.Repeat("z", 70000)},
		{"a\x00", "\r\n", "\r\r\n\n"},
	} {
		roundTrip(t, tt.id, tt.name, []byte(tt.data))
	}
}

func FuzzEncoderRoundTrip(f *testing.F) {
	f.Add("1", "message", []byte("{}"))
	f.Add("", "", []byte("a\r\nb\rc\n"))
	f.Add(" x\x00", "\n", []byte(" "))
	f.Fuzz(func(t *testing.T, id, name string, data []byte) {
		roundTrip(t, id, name, data)
	})
}

func BenchmarkAppendEvent(b *testing.B) {
	data := bytes.Repeat([]byte("a"), 1024)
	var buf []byte
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendEvent(buf[:0], "stream-1_12345", "message", data)
	}
}

// parsedEvent is what a client reads of an event.
type parsedEvent struct {
	id      string
	hasID   bool
	name    string
	data    string
	hasData bool
	retry   int
}

// parseAll parses a whole stream and returns the events with a field a
// client reads.
func parseAll(t *testing.T, stream []byte) []parsedEvent {
	t.Helper()
	var out []parsedEvent
	emit := func(ev *Event) error {
		if !ev.Comment && (ev.HasID || ev.Name != "" || ev.Retry >= 0 || ev.HasData) {
			out = append(out, parsedEvent{ev.ID, ev.HasID, ev.Name, string(ev.Data), ev.HasData, ev.Retry})
		}
		return nil
	}
	p := NewParser(0, 0)
	if err := p.Feed(stream, emit); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Flush(emit); err != nil {
		t.Fatal(err)
	}
	return out
}

// canonical writes every event of stream anew, as a Canonical stream does.
func canonical(t *testing.T, stream []byte) []byte {
	t.Helper()
	var out []byte
	p := NewParser(0, 0)
	emit := func(ev *Event) error {
		if !ev.Comment {
			out = AppendCanonical(out, ev)
		}
		return nil
	}
	if err := p.Feed(stream, emit); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Flush(emit); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestAppendCanonical checks that an event written anew reads as the
// parser read the upstream's, in LF-only lines of the four fields alone,
// whatever line ends, byte order marks, comments and unknown fields the
// upstream wrote.
func TestAppendCanonical(t *testing.T) {
	for _, in := range []string{
		"data: {\"a\":1}\n\n",
		"data: {\"jsonrpc\":\"2.0\",\r\"id\":1,\"result\":{}}\n\n",
		"id: 7\r\nevent: message\r\ndata: a\r\ndata: b\r\n\r\n",
		"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\nid: 5\n\n",
		"\n\xEF\xBB\xBFdata: x\nid: 5\n\n",
		"\xC3\xAF\xC2\xBB\xC2\xBFdata: x\nid: 5\n\n",
		": ping\ndata: x\n\n",
		"x\rdata: y\n\n",
		"event: message \ndata:  two spaces\n\n",
		"id:\ndata:\n\n",
		"id: p-1\nretry: 200\ndata: \n\n",
		"data\n\n",
		"id: 1\n\n",
		"id: a\x00b\ndata: x\ndata:\n\n",
		"retry: 3000\n\n",
		"Data: x\nfoo\n\n",
		"data: x\n\ndata: unterminated",
	} {
		want := parseAll(t, []byte(in))
		out := canonical(t, []byte(in))
		if bytes.ContainsRune(out, '\r') || bytes.HasPrefix(out, []byte("\xEF\xBB\xBF")) || bytes.Contains(out, []byte("\n:")) {
			t.Errorf("%q written anew as %q", in, out)
		}
		if got := parseAll(t, out); !slices.Equal(got, want) {
			t.Errorf("%q: read as %+v, written anew as %q, read back as %+v", in, want, out, got)
		}
	}
}

// FuzzAppendCanonical checks that any stream written anew reads as the
// stream itself did.
func FuzzAppendCanonical(f *testing.F) {
	f.Add([]byte("id: 1\r\nevent: x\rdata: a\n\n: c\n\xEF\xBB\xBFdata: b\n\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 4096 {
			return
		}
		want := parseAll(t, in)
		if got := parseAll(t, canonical(t, in)); !slices.Equal(got, want) {
			t.Fatalf("%q: read as %+v, written anew read back as %+v", in, want, got)
		}
	})
}
