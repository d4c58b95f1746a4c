package mcp

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

// BodyLimits bound the reading of a POST body by ReadBody.
type BodyLimits struct {
	// MaxPeek is how many bytes are read, and checked, before the request
	// goes on.
	MaxPeek int64
	// MaxBody caps the whole body; 0 or less: no cap.
	MaxBody int64
	// MaxBodyText is MaxBody as a refusal names it, such as "4.0 MiB".
	MaxBodyText string
	// Timeout bounds the wait for the head, and then each read of the
	// rest.
	Timeout time.Duration
	// Reserve takes n bytes from a memory budget for the head's buffer
	// and reports false when there is no room; Release gives back what
	// was not used. Both are needed.
	Reserve func(n int64) bool
	Release func(n int64)
}

// Body is what ReadBody left for the rest of the request.
type Body struct {
	// Held is the bytes reserved for the head; the caller releases them
	// when the request is over.
	Held int64
	// Whole is the entire body when the head holds all of it.
	Whole []byte
	// Checked is the body streamed past the head, nil when Whole is set;
	// CheckedBodyRefusal tells what its check found.
	Checked *CheckedBody
}

// ReadBody reads the head of a POST body, at most lim.MaxPeek bytes,
// within lim.Timeout, classifies it into call (ParseEnvelope,
// ClassifyBody) and puts the body back, unchanged, for the upstream. A
// declared length over lim.MaxBody is refused at once. The buffer is
// reserved before anything is read, for what will really be read, and
// grows only as bytes arrive (a body over the cap is read only to be
// discarded, see discard). A body longer than the head streams on
// through a CheckedBody, which checks the rest of its top level and
// aborts it at lim.MaxBody; each read of the rest gets lim.Timeout. A
// refusal that leaves the body unread asks for an HTTP/1 connection to
// close (see CloseConnection).
func ReadBody(w http.ResponseWriter, r *http.Request, call *Call, lim BodyLimits) (b Body, ref *Refusal) {
	cl := r.ContentLength
	if lim.MaxBody > 0 && cl > lim.MaxBody {
		if !lim.discard(w, r, cl) {
			CloseConnection(w, r)
		}
		return b, lim.tooLarge()
	}
	want := PeekSize(lim.MaxPeek, lim.MaxBody, cl)
	if !lim.Reserve(want) {
		return b, Refuse(http.StatusServiceUnavailable, CodeServerError, "", "server out of memory budget, retry later")
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(lim.Timeout))
	head, eof, err := ReadHead(r.Body, want)
	if n := int64(len(head)); n < want {
		lim.Release(want - n)
	}
	b.Held = int64(len(head))
	if err != nil {
		_ = rc.SetReadDeadline(time.Time{})
		if IsTimeout(err) {
			CloseConnection(w, r)
			return b, bodyTimeout()
		}
		return b, bodyReadRefusal(err)
	}
	complete := eof || (cl >= 0 && int64(len(head)) == cl)
	if lim.MaxBody > 0 && int64(len(head)) > lim.MaxBody {
		CloseConnection(w, r)
		return b, lim.tooLarge()
	}
	perr := ParseEnvelope(head, complete, &call.Peek)
	if ref := ClassifyBody(r.Header, perr, call); ref != nil {
		_ = rc.SetReadDeadline(time.Time{})
		return b, ref
	}
	if complete {
		_ = rc.SetReadDeadline(time.Time{})
		// The server closes the original body, read to its end, when the
		// handler returns.
		r.Body = io.NopCloser(bytes.NewReader(head))
		b.Whole = head
		return b, nil
	}
	rest := &deadlineReader{ReadCloser: r.Body, rc: rc, timeout: lim.Timeout, lift: r.ProtoMajor == 2}
	if rest.lift {
		// The request waits for admission and an upstream before the rest
		// is read; see deadlineReader.lift.
		_ = rc.SetReadDeadline(time.Time{})
	}
	b.Checked = NewCheckedBody(head, rest, max(lim.MaxBody, 0))
	r.Body = b.Checked
	r.ContentLength = cl
	return b, nil
}

// CloseConnection asks for the HTTP/1 connection of r to be closed once
// the answer is sent, for a refusal that leaves the request's body
// unread. HTTP/2 and HTTP/3 end the request's stream alone, and the
// connection goes on carrying the client's other streams: Go's HTTP/2
// server would read the header as a graceful shutdown of the whole
// connection, and an HTTP/3 answer carrying a connection-specific header
// field is malformed (RFC 9114, section 4.2), which its client rejects
// instead of reading the refusal.
func CloseConnection(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close")
	}
}

// discard reads and throws away an HTTP/1 body of declared length cl
// refused for being over MaxBody, when it is at most twice MaxBody, each
// read within Timeout, and reports whether it was read to its end (the
// connection can then serve another request). A server that answers
// before the body is read closes the connection with bytes unread, which
// resets it: a client that writes its whole request before it reads the
// answer, as Node.js fetch does, would see a broken connection, not the
// 413. A larger body is not worth reading; HTTP/2 ends the stream alone.
func (lim BodyLimits) discard(w http.ResponseWriter, r *http.Request, cl int64) bool {
	if r.ProtoMajor != 1 || cl-lim.MaxBody > lim.MaxBody {
		return false
	}
	rest := &deadlineReader{ReadCloser: r.Body, rc: http.NewResponseController(w), timeout: lim.Timeout}
	n, err := io.Copy(io.Discard, rest)
	return err == nil && n == cl
}

// deadlineReader is the rest of a request body past the head: every Read
// gets timeout to make progress, and the deadline is lifted at its end.
// stop ends it early (see CheckedBody.Cancel).
type deadlineReader struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	// lift: the deadline is lifted after every Read, so that it bounds
	// only a read in flight. Over HTTP/2 a read deadline is a timer that
	// closes the body when it passes, even with no read in flight: a
	// request waiting for admission, or an upstream slow to take the
	// bytes read before, would lose a body its client was sending in
	// time (flow control holds the client back meanwhile). Over HTTP/1
	// only the next read looks at the deadline, which it sets anew.
	lift    bool
	stopped atomic.Bool
}

// errBodyStopped is what a Read of a body whose reading was stopped
// returns.
var errBodyStopped = errors.New("the reading of the request body was stopped")

// stop makes a Read waiting for the client's bytes return at once (its
// connection's read deadline is moved to now), and every later Read fail.
func (d *deadlineReader) stop() {
	d.stopped.Store(true)
	_ = d.rc.SetReadDeadline(time.Now())
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	if d.stopped.Load() {
		return 0, errBodyStopped
	}
	_ = d.rc.SetReadDeadline(time.Now().Add(d.timeout))
	if d.stopped.Load() {
		// stop moved the deadline before this Read set its own.
		return 0, errBodyStopped
	}
	n, err := d.ReadCloser.Read(p)
	if err != nil || d.lift && !d.stopped.Load() {
		_ = d.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// IsTimeout reports an error of a read or write that hit its deadline.
func IsTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// tooLarge is the refusal of a body over MaxBody.
func (lim BodyLimits) tooLarge() *Refusal {
	return Refuse(http.StatusRequestEntityTooLarge, CodeInvalidRequest, "",
		"Payload Too Large: the request body exceeds max_body ("+lim.MaxBodyText+")")
}

// bodyTimeout is the refusal of a body that did not arrive in time.
func bodyTimeout() *Refusal {
	return Refuse(http.StatusRequestTimeout, CodeInvalidRequest, "",
		"Request Timeout: the request body did not arrive within body_timeout")
}

// bodyReadRefusal is the refusal for a request body that could not be read.
func bodyReadRefusal(err error) *Refusal {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return Refuse(http.StatusRequestEntityTooLarge, CodeInvalidRequest, "", "request body too large")
	}
	return Refuse(http.StatusBadRequest, CodeInvalidRequest, "", "reading request body failed")
}

// CheckedBodyRefusal is the answer to a request whose body the streaming
// check of b aborted, nil when it did not (or b has no streamed rest).
func (lim BodyLimits) CheckedBodyRefusal(b Body) *Refusal {
	if b.Checked == nil {
		return nil
	}
	err := b.Checked.Err()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrBodyTooLarge):
		return lim.tooLarge()
	case IsTimeout(err):
		return bodyTimeout()
	case errors.Is(err, ErrMalformed):
		return Refuse(http.StatusBadRequest, CodeParseError, "", "parse error: "+err.Error())
	}
	return Refuse(http.StatusBadRequest, CodeInvalidRequest, "", "invalid request: "+err.Error())
}
