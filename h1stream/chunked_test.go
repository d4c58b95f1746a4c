package h1stream

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http/httputil"
	"strings"
	"testing"
)

// chunkedReads reads all of r with reads of the given sizes, cycled.
func chunkedReads(r io.Reader, sizes []byte) ([]byte, error) {
	var out []byte
	for i := 0; i < 1<<16; i++ {
		n := 1
		if len(sizes) > 0 {
			n = 1 + int(sizes[i%len(sizes)])%64
		}
		buf := make([]byte, n)
		m, err := r.Read(buf)
		out = append(out, buf[:m]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
	return out, errors.New("too many reads")
}

// splitReader returns its data in pieces of the given sizes.
type splitReader struct {
	data  []byte
	sizes []byte
	i     int
}

func (s *splitReader) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if len(s.sizes) > 0 {
		n = min(n, 1+int(s.sizes[s.i%len(s.sizes)])%37)
		s.i++
	}
	n = copy(p, s.data[:min(n, len(s.data))])
	s.data = s.data[n:]
	return n, nil
}

func TestChunkedBody(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"5\r\nhello\r\n0\r\n\r\n", "hello"},
		{"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n", "hello world"},
		{"A \r\n0123456789\r\n0\r\n\r\n", "0123456789"},
		{"d\r\ndata: hello\n\n\r\n0\r\n\r\n", "data: hello\n\n"},
	} {
		for _, sizes := range [][]byte{nil, {0}, {1, 5, 2}, {200}} {
			cb := &chunkedBody{src: &splitReader{data: []byte(tc.in), sizes: sizes}}
			got, err := chunkedReads(cb, sizes)
			if err != nil || string(got) != tc.want {
				t.Errorf("%q with reads %v: got %q, %v; want %q", tc.in, sizes, got, err, tc.want)
			}
		}
	}
	for _, bad := range []string{"x\r\n", "5\r\nhelloX\r\n", "5\r\nhello\rX", "11111111111111111\r\n", "\r\n", "5\r\nhel"} {
		cb := &chunkedBody{src: strings.NewReader(bad)}
		if _, err := io.ReadAll(cb); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	long := strings.Repeat("0", maxChunkLine+10) + "1\r\nx\r\n0\r\n\r\n"
	if _, err := io.ReadAll(&chunkedBody{src: &splitReader{data: []byte(long), sizes: []byte{30}}}); err == nil {
		t.Error("an overlong size line was accepted")
	}
}

func TestChunkedBodyPending(t *testing.T) {
	cb := &chunkedBody{src: strings.NewReader("lo\r\n0\r\n\r\n"), pending: []byte("5\r\nhel")}
	got, err := io.ReadAll(cb)
	if err != nil || string(got) != "hello" {
		t.Fatalf("got %q, %v", got, err)
	}
}

// FuzzChunkedBody checks the decoder against net/http's on the same bytes,
// whatever the read sizes: whatever net/http decodes, it decodes the same.
func FuzzChunkedBody(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"), []byte{3, 1})
	f.Add([]byte("3;a=b\r\nabc\r\n1\r\nd\r\n0\r\nX: y\r\n\r\n"), []byte{0})
	f.Add([]byte("d\r\ndata: hello\n\n\r\n0\r\n\r\n"), []byte{7, 2, 9})
	f.Fuzz(func(t *testing.T, in, sizes []byte) {
		if len(in) > 4096 {
			return
		}
		want, werr := io.ReadAll(httputil.NewChunkedReader(bufio.NewReader(bytes.NewReader(in))))
		got, gerr := chunkedReads(&chunkedBody{src: &splitReader{data: in, sizes: sizes}}, sizes)
		// net/http's chunked reader stops at the last-chunk line and
		// leaves the trailer to its caller; this decoder reads the
		// trailer too, so input cut inside it is an unexpected EOF here.
		if werr == nil && (gerr != nil && !errors.Is(gerr, io.ErrUnexpectedEOF) || !bytes.Equal(got, want)) {
			t.Fatalf("net/http decodes %q to %q; got %q, %v", in, want, got, gerr)
		}
	})
}
