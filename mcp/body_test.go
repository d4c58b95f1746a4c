package mcp

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// budgetCounter is a memory budget of a fixed size for ReadBody.
type budgetCounter struct{ size, used int64 }

func (b *budgetCounter) limits(maxPeek, maxBody int64) BodyLimits {
	return BodyLimits{
		MaxPeek: maxPeek, MaxBody: maxBody, MaxBodyText: "the cap",
		Reserve: func(n int64) bool {
			if b.used+n > b.size {
				return false
			}
			b.used += n
			return true
		},
		Release: func(n int64) { b.used -= n },
	}
}

func postWith(body io.Reader, length int64) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/mcp", body)
	r.ContentLength = length
	r.Header.Set("Content-Type", "application/json")
	return r
}

func TestReadBodyWhole(t *testing.T) {
	const msg = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}`
	for _, length := range []int64{int64(len(msg)), -1} {
		budget := &budgetCounter{size: 1 << 20}
		w := httptest.NewRecorder()
		// One byte per read: the head is gathered across reads.
		r := postWith(iotest.OneByteReader(strings.NewReader(msg)), length)
		var call Call
		b, ref := ReadBody(w, r, &call, budget.limits(1024, 4096))
		if ref != nil {
			t.Fatalf("length %d: refused %d %s", length, ref.Status, ref.Body())
		}
		if string(b.Whole) != msg || b.Checked != nil || b.Held != int64(len(msg)) || budget.used != b.Held {
			t.Fatalf("length %d: whole %q, held %d, budget %d", length, b.Whole, b.Held, budget.used)
		}
		if call.First().Name != "echo" {
			t.Fatalf("not classified: %+v", call.First())
		}
		if got, _ := io.ReadAll(r.Body); string(got) != msg {
			t.Fatalf("body for the upstream: %q", got)
		}
	}
}

func TestReadBodyStreamsTheRest(t *testing.T) {
	text := strings.Repeat("a", 300)
	msg := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"` + text + `"}}}`
	budget := &budgetCounter{size: 1 << 20}
	r := postWith(strings.NewReader(msg), int64(len(msg)))
	var call Call
	lim := budget.limits(100, 4096)
	b, ref := ReadBody(httptest.NewRecorder(), r, &call, lim)
	if ref != nil || b.Whole != nil || b.Checked == nil || b.Held != 101 {
		t.Fatalf("refusal %v, whole %q, held %d", ref, b.Whole, b.Held)
	}
	if got, _ := io.ReadAll(r.Body); string(got) != msg || r.ContentLength != int64(len(msg)) {
		t.Fatalf("body for the upstream: %d bytes, length %d", len(got), r.ContentLength)
	}
	if ref := lim.CheckedBodyRefusal(b); ref != nil {
		t.Fatalf("a clean body refused: %s", ref.Body())
	}

	// The same body over max_body, not declared: aborted as it streams.
	r = postWith(strings.NewReader(msg), -1)
	lim = budget.limits(100, 200)
	b, ref = ReadBody(httptest.NewRecorder(), r, &call, lim)
	if ref != nil || b.Checked == nil {
		t.Fatalf("refused before the cap: %v", ref)
	}
	if _, err := io.ReadAll(r.Body); err == nil {
		t.Fatal("a body over max_body streamed to its end")
	}
	if ref := lim.CheckedBodyRefusal(b); ref == nil || ref.Status != http.StatusRequestEntityTooLarge || !strings.Contains(string(ref.Body()), "the cap") {
		t.Fatalf("over max_body: %+v", ref)
	}
}

func TestReadBodyRefusals(t *testing.T) {
	const msg = `{"jsonrpc":"2.0","id":1,"method":"ping"}`
	budget := &budgetCounter{size: 1 << 20}
	// A declared length over twice max_body: refused before reading,
	// the connection to be closed.
	w := httptest.NewRecorder()
	r := postWith(strings.NewReader(msg), 9000)
	var call Call
	if _, ref := ReadBody(w, r, &call, budget.limits(1024, 4096)); ref == nil || ref.Status != http.StatusRequestEntityTooLarge || w.Header().Get("Connection") != "close" {
		t.Fatalf("declared length over max_body: %+v, Connection %q", ref, w.Header().Get("Connection"))
	}
	// Over HTTP/2 and HTTP/3 the refusal carries no Connection header:
	// the stream ends alone (the header would shut an HTTP/2 connection
	// down, and makes an HTTP/3 answer malformed).
	for _, major := range []int{2, 3} {
		w = httptest.NewRecorder()
		r = postWith(strings.NewReader(msg), 9000)
		r.Proto, r.ProtoMajor, r.ProtoMinor = fmt.Sprintf("HTTP/%d.0", major), major, 0
		if _, ref := ReadBody(w, r, &call, budget.limits(1024, 4096)); ref == nil || ref.Status != http.StatusRequestEntityTooLarge || w.Header().Values("Connection") != nil {
			t.Fatalf("declared length over max_body over HTTP/%d: %+v, Connection %q", major, ref, w.Header().Values("Connection"))
		}
	}
	// No room in the budget: 503, nothing held.
	small := &budgetCounter{size: 10}
	if b, ref := ReadBody(httptest.NewRecorder(), postWith(strings.NewReader(msg), int64(len(msg))), &call, small.limits(1024, 4096)); ref == nil || ref.Status != http.StatusServiceUnavailable || b.Held != 0 || small.used != 0 {
		t.Fatalf("out of budget: %+v, held %d", ref, b.Held)
	}
	// A body that breaks while read: 400, and what was read is held.
	r = postWith(io.MultiReader(strings.NewReader(`{"jsonrpc"`), iotest.ErrReader(io.ErrUnexpectedEOF)), -1)
	if b, ref := ReadBody(httptest.NewRecorder(), r, &call, budget.limits(1024, 4096)); ref == nil || ref.Status != http.StatusBadRequest || b.Held != budget.used {
		t.Fatalf("broken body: %+v, held %d of %d", ref, b.Held, budget.used)
	}
	// http.MaxBytesReader's cap: 413.
	budget.used = 0
	w = httptest.NewRecorder()
	r = postWith(strings.NewReader(msg), -1)
	r.Body = http.MaxBytesReader(w, r.Body, 5)
	if _, ref := ReadBody(w, r, &call, budget.limits(1024, 4096)); ref == nil || ref.Status != http.StatusRequestEntityTooLarge {
		t.Fatalf("MaxBytesReader: %+v", ref)
	}
	// Not JSON-RPC: the classification's refusal.
	r = postWith(strings.NewReader(`[1,2`), 4)
	if _, ref := ReadBody(httptest.NewRecorder(), r, &call, budget.limits(1024, 4096)); ref == nil || ref.Code != CodeParseError {
		t.Fatalf("malformed: %+v", ref)
	}
}

// smallBuffers accepts connections with small socket buffers, so that a
// body the server does not read stalls its client's writes.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(16 << 10)
	}
	return c, err
}

// TestReadBodyTooLargeAnswered: a client that writes its whole request
// before it reads the answer (Node.js fetch does) gets the 413 of a
// declared length over max_body, not a reset connection, when the body is
// at most twice the cap; and the connection stays usable.
func TestReadBodyTooLargeAnswered(t *testing.T) {
	const maxBody = 256 << 10
	budget := &budgetCounter{size: 1 << 20}
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lim := budget.limits(1024, maxBody)
		lim.Timeout = 5 * time.Second
		var call Call
		if _, ref := ReadBody(w, r, &call, lim); ref != nil {
			http.Error(w, ref.Message, ref.Status)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	ts.Listener = smallBuffers{ts.Listener}
	ts.Start()
	defer ts.Close()

	c, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.(*net.TCPConn).SetWriteBuffer(16 << 10)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"` +
		strings.Repeat("x", maxBody*3/2) + `"}}}`
	head := "POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
	if _, err := fmt.Fprintf(c, head+"%s", len(body), body); err != nil {
		t.Fatalf("writing the request: %v", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Close {
		t.Fatalf("answer %d, close %v; want 413 on a connection kept open", resp.StatusCode, resp.Close)
	}
	// The same connection serves the next request.
	if _, err := fmt.Fprintf(c, head+"%s", 2, "{}"); err != nil {
		t.Fatal(err)
	}
	if resp, err = http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("next request: %v %v", resp, err)
	}
}

// TestCheckedBodyCancel: Cancel ends the wait of a Read for a client that
// stalls in the middle of its body at once, and every later Read fails; a
// body that ended is left as it is.
func TestCheckedBodyCancel(t *testing.T) {
	head := `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x","arguments":{"a":"` + strings.Repeat("a", 200)
	type result struct {
		n      int
		err    error
		waited time.Duration
		late   error
		lateID string
	}
	got := make(chan result, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var call Call
		lim := (&budgetCounter{size: 1 << 20}).limits(100, 4096)
		lim.Timeout = 10 * time.Second
		b, ref := ReadBody(w, r, &call, lim)
		if ref != nil || b.Checked == nil {
			got <- result{err: fmt.Errorf("refused %v", ref)}
			return
		}
		time.AfterFunc(50*time.Millisecond, b.Checked.Cancel)
		start := time.Now()
		n, err := io.Copy(io.Discard, r.Body)
		waited := time.Since(start)
		_, late := b.Checked.Read(make([]byte, 10))
		got <- result{n: int(n), err: err, waited: waited, late: late, lateID: b.Checked.LateID()}
	}))
	defer srv.Close()
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = io.WriteString(pw, head) }()
	req, _ := http.NewRequest(http.MethodPost, srv.URL, pr)
	req.Header.Set("Content-Type", "application/json")
	go func() {
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case r := <-got:
		if r.err == nil || r.waited > 5*time.Second || r.waited < 40*time.Millisecond || r.late == nil || r.lateID != "" || r.n >= len(head) {
			t.Fatalf("read %d bytes in %v, ended with %v, then %v, id %q; want an error at once", r.n, r.waited, r.err, r.late, r.lateID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the cancelled body was never done with")
	}

	// An ended body is left alone.
	msg := head + `"}},"id":1}`
	cb := NewCheckedBody([]byte(msg[:100]), io.NopCloser(strings.NewReader(msg[100:])), 0)
	if b, err := io.ReadAll(cb); err != nil || string(b) != msg {
		t.Fatalf("%q %v", b, err)
	}
	cb.Cancel()
	if cb.Err() != nil || cb.LateID() != "1" {
		t.Fatalf("after Cancel of an ended body: %v, id %q", cb.Err(), cb.LateID())
	}
}

// readDeadlineRecorder is a response writer that records the read
// deadlines set through an http.ResponseController.
type readDeadlineRecorder struct {
	*httptest.ResponseRecorder
	deadline time.Time
}

func (d *readDeadlineRecorder) SetReadDeadline(t time.Time) error {
	d.deadline = t
	return nil
}

// TestReadBodyRestDeadlineBetweenReads: the rest of a body past the head
// has a read deadline only while a read is in flight over HTTP/2, where
// a deadline is a timer that closes the body when it passes (the request
// may wait for admission, or an upstream, for longer than body_timeout
// before its next read); over HTTP/1 each read sets its own.
func TestReadBodyRestDeadlineBetweenReads(t *testing.T) {
	msg := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"` + strings.Repeat("a", 300) + `"}}}`
	for _, major := range []int{1, 2} {
		budget := &budgetCounter{size: 1 << 20}
		r := postWith(iotest.OneByteReader(strings.NewReader(msg)), int64(len(msg)))
		r.ProtoMajor = major
		w := &readDeadlineRecorder{ResponseRecorder: httptest.NewRecorder()}
		lim := budget.limits(100, 4096)
		lim.Timeout = time.Minute
		var call Call
		b, ref := ReadBody(w, r, &call, lim)
		if ref != nil || b.Checked == nil {
			t.Fatalf("HTTP/%d: refusal %v, checked %v", major, ref, b.Checked)
		}
		armed := []bool{!w.deadline.IsZero()}
		buf := make([]byte, 64)
		for range 3 {
			if _, err := r.Body.Read(buf); err != nil {
				t.Fatalf("HTTP/%d: %v", major, err)
			}
			armed = append(armed, !w.deadline.IsZero())
		}
		for i, a := range armed {
			if a && major == 2 {
				t.Errorf("HTTP/2: a read deadline left armed after read %d (0: the head's)", i)
			}
		}
		if _, err := io.Copy(io.Discard, r.Body); err != nil || !w.deadline.IsZero() {
			t.Errorf("HTTP/%d: the body's end: %v, deadline %v", major, err, w.deadline)
		}
	}
}
