package caddymodule

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/resources"
)

// Defaults of the request body bounds.
const (
	defaultMaxBody     = 4 << 20
	defaultBodyTimeout = 10 * time.Second
)

// peekedBody is what reading the head of a POST body left for the rest of
// the request.
type peekedBody struct {
	// held is the bytes reserved from the memory budget for the head; the
	// caller releases them when the request is over.
	held int64
	// whole is the entire body when the peek read all of it.
	whole []byte
	// checked is the body streamed past the peek, nil when whole is set.
	checked *mcp.CheckedBody
}

// bodyLimits bound the reading of a request body: the peek, the whole
// body (0: unbounded), the time each read may take, and the memory budget
// the peek's buffer is reserved from.
type bodyLimits struct {
	maxPeek, maxBody int64
	timeout          time.Duration
	memory           *resources.Budget
}

// readBody reads the head of a POST body, at most max_peek bytes, within
// body_timeout, classifies it and puts the body back, unchanged, for the
// upstream. A declared length over max_body is refused at once. The
// buffer is reserved from the memory budget before anything is read, for
// what will really be read, and grows only as bytes arrive. A body longer
// than the peek streams on through mcp.CheckedBody, which checks the rest
// of its top level and aborts it at max_body.
func readBody(w http.ResponseWriter, r *http.Request, call *mcp.Call, lim bodyLimits) (pb peekedBody, ref *mcp.Refusal) {
	cl := r.ContentLength
	if lim.maxBody > 0 && cl > lim.maxBody {
		w.Header().Set("Connection", "close")
		return pb, bodyTooLarge(lim.maxBody)
	}
	want := mcp.PeekSize(lim.maxPeek, lim.maxBody, cl)
	budget := lim.memory
	if !budget.Reserve(want) {
		metrics.backpressure.Inc()
		return pb, mcp.Refuse(http.StatusServiceUnavailable, mcp.CodeServerError, "", "server out of memory budget, retry later")
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(lim.timeout))
	head, eof, err := mcp.ReadHead(r.Body, want)
	if n := int64(len(head)); n < want {
		budget.Release(want - n)
	}
	pb.held = int64(len(head))
	if err != nil {
		_ = rc.SetReadDeadline(time.Time{})
		if isTimeout(err) {
			w.Header().Set("Connection", "close")
			return pb, mcp.Refuse(http.StatusRequestTimeout, mcp.CodeInvalidRequest, "",
				"Request Timeout: the request body did not arrive within body_timeout")
		}
		return pb, bodyReadRefusal(err)
	}
	complete := eof || (cl >= 0 && int64(len(head)) == cl)
	if lim.maxBody > 0 && int64(len(head)) > lim.maxBody {
		w.Header().Set("Connection", "close")
		return pb, bodyTooLarge(lim.maxBody)
	}
	perr := mcp.ParseEnvelope(head, complete, &call.Peek)
	if ref := mcp.ClassifyBody(r.Header, perr, call); ref != nil {
		_ = rc.SetReadDeadline(time.Time{})
		return pb, ref
	}
	if complete {
		_ = rc.SetReadDeadline(time.Time{})
		// The server closes the original body, read to its end, when the
		// handler returns.
		r.Body = io.NopCloser(bytes.NewReader(head))
		pb.whole = head
		return pb, nil
	}
	// The rest streams to the upstream; each read of it must make
	// progress within body_timeout.
	rest := &deadlineReader{ReadCloser: r.Body, rc: rc, timeout: lim.timeout}
	pb.checked = mcp.NewCheckedBody(head, rest, max(lim.maxBody, 0))
	r.Body = pb.checked
	r.ContentLength = cl
	return pb, nil
}

// deadlineReader is the rest of a request body past the peek: every Read
// gets timeout to make progress, and the deadline is lifted at its end.
type deadlineReader struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	_ = d.rc.SetReadDeadline(time.Now().Add(d.timeout))
	n, err := d.ReadCloser.Read(p)
	if err != nil {
		_ = d.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// isTimeout reports a read that hit its deadline.
func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// bodyTooLarge is the refusal of a body over max_body.
func bodyTooLarge(limit int64) *mcp.Refusal {
	return mcp.Refuse(http.StatusRequestEntityTooLarge, mcp.CodeInvalidRequest, "",
		"Payload Too Large: the request body exceeds max_body ("+humanSize(limit)+")")
}

// bodyReadRefusal is the refusal for a request body that could not be read.
func bodyReadRefusal(err error) *mcp.Refusal {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return mcp.Refuse(http.StatusRequestEntityTooLarge, mcp.CodeInvalidRequest, "", "request body too large")
	}
	return mcp.Refuse(http.StatusBadRequest, mcp.CodeInvalidRequest, "", "reading request body failed")
}

// checkedBodyRefusal is the answer to a request whose body the streaming
// check aborted, nil when it did not.
func checkedBodyRefusal(cb *mcp.CheckedBody, limit int64) *mcp.Refusal {
	if cb == nil {
		return nil
	}
	err := cb.Err()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, mcp.ErrBodyTooLarge):
		return bodyTooLarge(limit)
	case isTimeout(err):
		return mcp.Refuse(http.StatusRequestTimeout, mcp.CodeInvalidRequest, "",
			"Request Timeout: the request body did not arrive within body_timeout")
	case errors.Is(err, mcp.ErrMalformed):
		return mcp.Refuse(http.StatusBadRequest, mcp.CodeParseError, "", "parse error: "+err.Error())
	}
	return mcp.Refuse(http.StatusBadRequest, mcp.CodeInvalidRequest, "", "invalid request: "+err.Error())
}

// humanSize writes a byte count for a message, such as "4.0 MiB".
func humanSize(n int64) string { return humanize.IBytes(uint64(n)) }
