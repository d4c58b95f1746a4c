package relay

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

// ceilingWriter stands for a writer between a handler and the connection
// that, like Caddy's write idle timeout, keeps the deadline a handler
// sets and reads it on each write, with no lock: it may be used by one
// goroutine at a time only.
type ceilingWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	ceiling time.Time
	seen    []time.Time // every deadline it was given
}

func (w *ceilingWriter) SetWriteDeadline(t time.Time) error {
	w.ceiling = t
	w.seen = append(w.seen, t)
	return w.rc.SetWriteDeadline(t)
}

func (w *ceilingWriter) Write(p []byte) (int, error) {
	d := time.Now().Add(time.Minute)
	if !w.ceiling.IsZero() && w.ceiling.Before(d) {
		d = w.ceiling
	}
	_ = w.rc.SetWriteDeadline(d)
	return w.ResponseWriter.Write(p)
}

func (w *ceilingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// TestClientWriterDeadlineFromAnotherGoroutine: a deadline set while
// another goroutine writes reaches the connection at once and cuts a
// write to a client that reads nothing short, and reaches the writers in
// between only from the goroutine that writes (under -race, the
// ceilingWriter's field would otherwise be a data race).
func TestClientWriterDeadlineFromAnotherGoroutine(t *testing.T) {
	writeErr := make(chan error, 1)
	var cw *clientWriter
	var ceiling *ceilingWriter
	started := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ceiling = &ceilingWriter{ResponseWriter: w, rc: http.NewResponseController(w)}
		cw = newClientWriter(ceiling, r)
		w.Header().Set("Content-Type", "text/event-stream")
		_ = cw.Flush()
		close(started)
		chunk := []byte("data: " + strings.Repeat("x", 64<<10) + "\n\n")
		var err error
		// The client reads nothing: the socket buffers fill, and a
		// write blocks until its deadline; at most 4 GiB are tried.
		for i := 0; i < 1<<16 && err == nil; i++ {
			if _, err = cw.Write(chunk); err == nil {
				err = cw.Flush()
			}
		}
		writeErr <- err
	}))
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := http.ReadResponse(bufio.NewReader(conn), nil); err != nil {
		t.Fatal(err)
	}
	<-started
	// Let the writes fill the buffers, then cut them short from here.
	time.Sleep(100 * time.Millisecond)
	if err := cw.SetWriteDeadline(time.Now()); err != nil {
		t.Fatalf("SetWriteDeadline: %v", err)
	}
	select {
	case err := <-writeErr:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("the write ended with %v, want a deadline error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the write to a client that reads nothing was not cut short")
	}
}

// deadlineRecorder is an innermost writer with a deadline of its own; it
// records the deadlines it is given.
type deadlineRecorder struct {
	*httptest.ResponseRecorder
	seen []time.Time
}

func (d *deadlineRecorder) SetWriteDeadline(t time.Time) error {
	d.seen = append(d.seen, t)
	return nil
}

// TestClientWriterDeadlineReachesChain: a deadline is given to the
// writers in between before the next write, once; only one that has
// passed goes to the innermost writer at once.
func TestClientWriterDeadlineReachesChain(t *testing.T) {
	inner := &deadlineRecorder{ResponseRecorder: httptest.NewRecorder()}
	ceiling := &ceilingWriter{ResponseWriter: inner, rc: http.NewResponseController(inner)}
	cw := newClientWriter(ceiling, httptest.NewRequest(http.MethodGet, "/", nil))
	write := func() {
		t.Helper()
		if _, err := cw.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	future := time.Now().Add(time.Hour)
	_ = cw.SetWriteDeadline(future)
	if len(ceiling.seen) != 0 || len(inner.seen) != 0 {
		t.Fatalf("a deadline for the writes that follow was given before a write: chain %v, innermost %v", ceiling.seen, inner.seen)
	}
	write()
	write()
	if len(ceiling.seen) != 1 || !ceiling.seen[0].Equal(future) {
		t.Errorf("the chain got deadlines %v, want %v once", ceiling.seen, future)
	}
	past := time.Now()
	_ = cw.SetWriteDeadline(past)
	if n := len(inner.seen); n == 0 || !inner.seen[n-1].Equal(past) {
		t.Errorf("a deadline that has passed did not go to the innermost writer at once: %v", inner.seen)
	}
	write()
	if n := len(ceiling.seen); n != 2 || !ceiling.seen[1].Equal(past) {
		t.Errorf("the chain got deadlines %v, want %v last", ceiling.seen, past)
	}
	if got := inner.Body.String(); got != "xxx" {
		t.Errorf("body %q", got)
	}
}

// TestClientWriterClearsOverHTTP2: the zero deadline that ends a burst of
// writes reaches the chain at once over HTTP/2, where a deadline left
// armed would reset the silent stream when it passes; over HTTP/1, where
// only the next write reads it, nothing is done.
func TestClientWriterClearsOverHTTP2(t *testing.T) {
	for _, major := range []int{1, 2} {
		inner := &deadlineRecorder{ResponseRecorder: httptest.NewRecorder()}
		ceiling := &ceilingWriter{ResponseWriter: inner, rc: http.NewResponseController(inner)}
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.ProtoMajor = major
		cw := newClientWriter(ceiling, r)
		_ = cw.SetWriteDeadline(time.Now().Add(time.Hour))
		if _, err := cw.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		_ = cw.SetWriteDeadline(time.Time{})
		cleared := len(ceiling.seen) == 2 && ceiling.seen[1].IsZero()
		if cleared != (major == 2) {
			t.Errorf("HTTP/%d: the chain got deadlines %v after a zero one; cleared %v, want %v", major, ceiling.seen, cleared, major == 2)
		}
		if _, err := cw.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if n := len(ceiling.seen); major == 2 && n != 2 {
			t.Errorf("HTTP/2: the chain got deadlines %v; the zero one was given again before a write", ceiling.seen)
		}
	}
}
