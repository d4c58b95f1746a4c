package relay

import (
	"net/http"
	"time"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
)

// A request's deadline (request_timeout, or its tool's timeout; see
// policy.Deadline) bounds its whole life after admission; a batch has
// one, the largest of its requests' (see the caller). When it passes,
// the upstream request is cancelled (its context, which closes its
// connection or stream: the 2026-07-28 way of cancelling) and, in a
// session, the upstream is sent notifications/cancelled with the id of
// each request still unanswered; the client gets a JSON-RPC error
// (policy.CodeRequestTimeout) for each of them, as the answer (an array
// for a batch) or as the last events of its stream; the handler returns,
// which frees the request's slots. A request whose id follows the peek
// is known by it once its body has been read (mcp.CheckedBody.LateID);
// if its deadline passes before, while the body is still being sent, its
// error carries id null and no notifications/cancelled is sent (the
// upstream never had the whole request).

// startDeadline arms the request's deadline.
func (st *State) startDeadline(step, maxTotal time.Duration) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.deadline = policy.NewDeadline(step, maxTotal, st.expire)
}

// extendDeadline moves the deadline on a progress notification.
func (st *State) extendDeadline() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.deadline != nil && !st.expired && !st.done {
		st.deadline.Extend()
	}
}

// stopDeadline disarms the deadline: the answer arrived.
func (st *State) stopDeadline() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.deadline != nil {
		st.deadline.Stop()
	}
}

// IsExpired reports whether the request's deadline passed.
func (st *State) IsExpired() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.expired
}

// expire ends a request whose deadline passed.
func (st *State) expire() {
	defer st.p.recoverPanic("request deadline")
	st.mu.Lock()
	if st.done || st.expired {
		st.mu.Unlock()
		return
	}
	st.expired = true
	state := "waiting"
	if st.stream != nil {
		state = "streaming"
	}
	st.mu.Unlock()
	st.p.Metrics.Deadline(state)
	st.giveUp("request timed out")
	if st.Checked != nil {
		// A body still arriving is read by the upstream request, which
		// ends only once that read does.
		st.Checked.Cancel()
	}
}

// giveUp abandons the upstream request: cancels it and, in a session,
// tells the upstream about the requests it had not answered when it was
// given up (taken first: the end of its answer stream settles them).
func (st *State) giveUp(reason string) {
	ids := st.cancelIDs()
	st.abort()
	st.sendCancelledFor(ids, reason)
}

// TimeoutRefusal is the answer to a request whose deadline passed before
// the upstream answered: a JSON-RPC error for it (id null when its id,
// following the peek, was not read yet), inside a 200 as the request's
// answer; for a batch, an array of an error for each request it sent
// upstream, and the errors of its denied ones.
func (st *State) TimeoutRefusal() *mcp.Refusal {
	msg := policy.TimeoutMessage(st.deadline.Step())
	ref := mcp.Refuse(http.StatusOK, policy.CodeRequestTimeout, st.requestID(), msg)
	if st.call.Peek.Batch {
		ref.Batch = st.errorAnswer(policy.CodeRequestTimeout, msg)
	}
	return ref
}

// proxyWriter is the client's writer as reverse_proxy sees it. The
// headers of an upstream's informational answer (103 Early Hints), which
// reverse_proxy passes on as they come, before the relay sees the answer,
// lose any session id: an upstream's id never reaches the client
// unsealed. For a request with a deadline, reverse_proxy's record of an
// upstream request the deadline cancelled, which it takes for the
// client's own disconnect (499), does not reach the client: the handler
// answers with the request's timeout error instead.
type proxyWriter struct {
	http.ResponseWriter
	st *State // nil for an answer that has no relay state
}

func (p *proxyWriter) WriteHeader(code int) {
	switch {
	case code >= 100 && code < 200:
		p.Header().Del(mcp.HeaderSessionID)
	case code == statusClientClosed && p.st != nil && p.st.IsExpired():
		return
	}
	p.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the writer beneath.
func (p *proxyWriter) Unwrap() http.ResponseWriter { return p.ResponseWriter }

// statusClientClosed is the status reverse_proxy records for a cancelled
// upstream request.
const statusClientClosed = 499

// Writer returns w as reverse_proxy should write the client's answer to
// it (see proxyWriter).
func (st *State) Writer(w http.ResponseWriter) http.ResponseWriter {
	return &proxyWriter{ResponseWriter: w, st: st}
}

// PassWriter returns w as reverse_proxy should write to it an answer that
// has no relay state (an OAuth discovery document, a CORS preflight): an
// upstream's informational answers lose any session id (see
// proxyWriter).
func PassWriter(w http.ResponseWriter) http.ResponseWriter {
	return &proxyWriter{ResponseWriter: w}
}
