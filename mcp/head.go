package mcp

import (
	"encoding/json"
	"io"
	"slices"
	"strings"
)

// headChunk is the first buffer of ReadHead when want is larger: the
// buffer grows only as bytes arrive.
const headChunk = 4 << 10

// PeekSize returns how many bytes of a request body to read before the
// request is forwarded: one more than maxPeek (or than maxBody, when that
// cap is lower, so that a body over it shows), but no more than the
// declared contentLength when it is known (>= 0). maxBody <= 0 means no
// cap.
func PeekSize(maxPeek, maxBody, contentLength int64) int64 {
	want := maxPeek + 1
	if maxBody > 0 && maxBody < maxPeek {
		want = maxBody + 1
	}
	if contentLength >= 0 && contentLength < want {
		want = contentLength
	}
	return want
}

// ReadHead reads from body until it holds want bytes or body ends, into a
// buffer that starts at 4KiB at most and grows only as bytes arrive, and
// reports whether body ended first; it never holds more than want bytes.
// With want 0 it reads at most
// one byte, to learn whether the body is empty. An error other than
// io.EOF is returned with the bytes read before it.
func ReadHead(body io.Reader, want int64) (head []byte, eof bool, err error) {
	if want == 0 {
		var one [1]byte
		n, err := body.Read(one[:])
		if n == 0 && (err == io.EOF || err == nil) {
			return nil, err == io.EOF, nil
		}
		return one[:n], false, err
	}
	head = make([]byte, 0, min(want, headChunk))
	for int64(len(head)) < want {
		if len(head) == cap(head) {
			head = slices.Grow(head, int(min(int64(cap(head)), want-int64(len(head)))))
		}
		n, err := body.Read(head[len(head):int(min(int64(cap(head)), want))])
		head = head[:len(head)+n]
		if err == io.EOF {
			return head, true, nil
		}
		if err != nil {
			return head, false, err
		}
	}
	return head, false, nil
}

// IDText writes a raw JSON-RPC id (an Envelope's ID) as text, for a
// placeholder or a log: a string without its quotes (unescaped), a number
// as it is.
func IDText(raw string) string {
	if len(raw) > 1 && raw[0] == '"' {
		if inner := raw[1 : len(raw)-1]; !strings.ContainsRune(inner, '\\') {
			return inner
		}
		var s string
		if json.Unmarshal([]byte(raw), &s) == nil {
			return s
		}
	}
	return raw
}

// AppendBatch appends msgs, each a JSON-RPC message, as one JSON array:
// the answer to a batch.
func AppendBatch(dst []byte, msgs [][]byte) []byte {
	dst = append(dst, '[')
	for i, m := range msgs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, m...)
	}
	return append(dst, ']')
}
