package mcp

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestPeekSize(t *testing.T) {
	cases := []struct{ peek, body, cl, want int64 }{
		{64, 0, -1, 65},     // no cap, unknown length
		{64, 1000, -1, 65},  // cap above the peek
		{64, 10, -1, 11},    // cap below the peek: one past it
		{64, 1000, 20, 20},  // declared length within the peek
		{64, 1000, 65, 65},  // declared length one past the peek
		{64, 1000, 500, 65}, // longer declared length
		{64, 10, 0, 0},      // empty body
		{64, -1, -1, 65},    // negative cap: none
	}
	for _, c := range cases {
		if got := PeekSize(c.peek, c.body, c.cl); got != c.want {
			t.Errorf("PeekSize(%d, %d, %d) = %d, want %d", c.peek, c.body, c.cl, got, c.want)
		}
	}
}

func TestReadHead(t *testing.T) {
	data := bytes.Repeat([]byte("abcdefgh"), 2000) // 16000 bytes
	cases := []struct {
		name    string
		r       io.Reader
		want    int64
		n       int // -1: at least want
		eof     bool
		wantErr bool
	}{
		{"shorter body", bytes.NewReader(data[:100]), 200, 100, true, false},
		{"exact, not yet ended", bytes.NewReader(data[:100]), 100, 100, false, false},
		{"longer body", bytes.NewReader(data), 10000, -1, false, false},
		{"one byte at a time", iotest.OneByteReader(bytes.NewReader(data[:300])), 1000, 300, true, false},
		{"empty body, want 0", bytes.NewReader(nil), 0, 0, true, false},
		{"body, want 0", bytes.NewReader(data), 0, 1, false, false},
		{"error mid-way", io.MultiReader(bytes.NewReader(data[:50]), iotest.ErrReader(errors.New("boom"))), 100, 50, false, true},
	}
	for _, c := range cases {
		head, eof, err := ReadHead(c.r, c.want)
		n := c.n
		if n < 0 && len(head) >= int(c.want) {
			n = len(head) // at least want: the last read may fill the buffer
		}
		if len(head) != n || eof != c.eof || (err != nil) != c.wantErr {
			t.Errorf("%s: %d bytes, eof %v, err %v; want %d, %v, error %v", c.name, len(head), eof, err, c.n, c.eof, c.wantErr)
		}
		if !bytes.Equal(head, data[:len(head)]) {
			t.Errorf("%s: bytes differ", c.name)
		}
	}
}

func TestReadHeadGrowsAsBytesArrive(t *testing.T) {
	head, _, _ := ReadHead(bytes.NewReader(make([]byte, 10)), 1<<30)
	if cap(head) > headChunk {
		t.Errorf("a 10-byte body got a %d-byte buffer", cap(head))
	}
}

func TestIDText(t *testing.T) {
	for raw, want := range map[string]string{
		`7`:         "7",
		`"ab"`:      "ab",
		`"a\u0062"`: "ab",
		`"a\"b"`:    `a"b`,
		``:          "",
		`"`:         `"`,
		`-1.5e3`:    "-1.5e3",
		`"bad\x"`:   `"bad\x"`,
	} {
		if got := IDText(raw); got != want {
			t.Errorf("IDText(%s) = %q, want %q", raw, got, want)
		}
	}
}

func TestAppendBatch(t *testing.T) {
	for _, c := range []struct {
		in   [][]byte
		want string
	}{
		{nil, `[]`},
		{[][]byte{[]byte(`{"a":1}`)}, `[{"a":1}]`},
		{[][]byte{[]byte(`1`), []byte(`2`), []byte(`3`)}, `[1,2,3]`},
	} {
		if got := string(AppendBatch(nil, c.in)); got != c.want {
			t.Errorf("AppendBatch(%q) = %s, want %s", c.in, got, c.want)
		}
	}
}

// TestReadHeadStopsAtWant checks that the head never holds more than was
// asked for, however much each read could deliver.
func TestReadHeadStopsAtWant(t *testing.T) {
	for _, want := range []int64{1, 4095, 4096, 5000, 70000} {
		body := strings.NewReader(strings.Repeat("x", 200000))
		head, eof, err := ReadHead(body, want)
		if err != nil || eof || int64(len(head)) != want {
			t.Errorf("want %d: got %d bytes, eof %v, err %v", want, len(head), eof, err)
		}
	}
}
