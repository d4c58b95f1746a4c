package relay

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
	"github.com/mcpgate/mcpgate/sse"
)

// Attempt prepares one attempt of the request upstream: a resumable
// request gets a context of its own, which only the relay state cancels;
// a body already read whole goes as one buffer.
func (st *State) Attempt(req *http.Request) *http.Request {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.resumable {
		// Only a resumable request outlives its client; any other one is
		// cancelled with the client's request, as reverse_proxy does.
		clientCtx := req.Context()
		ctx, cancel := context.WithCancel(context.WithoutCancel(clientCtx))
		req = req.WithContext(ctx)
		if st.cancel != nil {
			st.cancel() // a retry: the previous attempt is over
		}
		st.cancel = cancel
		if st.stopWatch == nil {
			st.stopWatch = context.AfterFunc(clientCtx, st.clientGone)
		}
	}
	if st.deadline != nil && !st.resumable {
		// A request with a deadline gets a context the deadline cancels.
		ctx, cancel := context.WithCancel(req.Context())
		req = req.WithContext(ctx)
		if st.cancel != nil {
			st.cancel()
		}
		st.cancel = cancel
	}
	if st.expired && st.cancel != nil {
		st.cancel() // no new attempt after the deadline
	}
	// The proxy reads answers (ids, list results, pins, caps): it asks
	// for them unencoded, whatever the client accepts (Answer refuses an
	// encoded one).
	req.Header.Set("Accept-Encoding", "identity")
	st.outReq = req
	if len(st.Whole) > 0 && req.Body != nil && req.Body != http.NoBody {
		// reverse_proxy wraps the body (trailers, retries), which makes
		// net/http's Transport flush the request's header in a write of
		// its own, in case the body is slow to come. This body is already
		// in memory: as a *bytes.Reader the Transport sends the header
		// and body in one write. With GetBody, the Transport sends the
		// request again on a new connection when a pooled one turns out
		// closed before any of it was written (an upstream that
		// restarted), instead of failing it.
		whole := st.Whole
		req.Body = io.NopCloser(bytes.NewReader(whole))
		req.ContentLength = int64(len(whole))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(whole)), nil }
	}
	return req
}

// Answer handles the upstream's answer to attempt req: session ids sealed
// (a new session pinned to selected, the dial address the selection
// policy chose), a legacy session registered, a JSON answer filtered and
// capped, a batch's spliced errors added, an SSE body taken over for
// Relay; dialled reports that req went on a connection of the relay's
// own (h1stream), whose stream may be handed off.
func (st *State) Answer(req *http.Request, resp *http.Response, dialled bool, selected string) *http.Response {
	st.status, st.responded = resp.StatusCode, true
	if why := st.unreadableAnswer(resp); why != "" {
		st.dropUpstreamSession(req, resp)
		return st.replaceResponse(resp, http.StatusBadGateway, mcp.CodeInternalError, why)
	}
	// After the check: a coding or a second media type the proxy cannot
	// read is refused whatever the Connection header says (reverse_proxy
	// would remove the field, and pass the body as it is).
	mcp.RemoveConnectionFields(resp.Header)
	resp = st.sealResponse(req, resp, selected)
	streamed := isEventStream(resp.Header)
	if req.Method == http.MethodPost && resp.StatusCode == http.StatusOK && st.p.Lists.Enforces() {
		st.p.Denials.Note(resp, streamed)
	}
	if len(st.Spliced) > 0 && !streamed {
		resp = st.spliceAnswers(resp)
	}
	if !streamed {
		// The deadline runs on until the body is read.
		streaming := false
		if resp.StatusCode == http.StatusOK && resp.Body != nil && resp.Body != http.NoBody {
			resp, streaming = st.processJSON(resp)
		}
		if !streaming {
			st.stopDeadline()
		}
	}
	if resp.StatusCode == http.StatusOK && legacyStream(st.r, st.call, st.res) && isEventStream(resp.Header) && !st.openLegacy(selected) {
		resp = st.replaceResponse(resp, http.StatusServiceUnavailable, mcp.CodeServerError,
			"session limit reached, retry after "+RetryAfter+"s")
	}
	// An empty SSE answer (Content-Length: 0 gives http.NoBody) goes to
	// the relay too: it ends at once, without the request's answer.
	if resp.StatusCode != http.StatusOK || resp.Body == nil || !isEventStream(resp.Header) {
		st.handoff = false
		return guardTrailers(resp)
	}
	st.mu.Lock()
	st.body = resp.Body
	st.mu.Unlock()
	// The relay writes the body: no trailer of the upstream's goes with
	// it (reverse_proxy would announce them, and net/http then send the
	// answer's header fields of the same names as trailers). The client's
	// answer is a copy: net/http fills the upstream's trailers into the
	// response it made when the pump reads the body's end.
	taken := *resp
	resp = &taken
	resp.Trailer = nil
	resp.Body = http.NoBody
	resp.ContentLength = -1
	resp.Header.Del("Content-Length")
	// The relay writes keepalives, ids and errors of its own among the
	// upstream's events.
	dropBodyBound(resp.Header)
	// A stream that may be handed off is delimited by the close of its
	// connection, not chunked: net/http then sends "Connection: close"
	// and no Transfer-Encoding, and the relay writes the events as they
	// are once it owns the connection.
	st.handoff = st.handoff && dialled
	if st.handoff && st.r.ProtoAtLeast(1, 1) {
		st.w.Header().Set("Transfer-Encoding", "identity")
	}
	return resp
}

// unreadableAnswer returns why the upstream's answer cannot go to the
// client, "" when it can: a 200 answer encoded though the proxy asked for
// none, one with more than one Content-Type field (the proxy would read
// the first, and a client that joins them, as the TypeScript SDK does,
// another), or a 200 answer to a request that is neither JSON nor an
// event stream (a load balancer's page, a misrouted request). An empty 200 is
// passed, and so is any answer to a legacy (2024-11-05) POST, whose
// answers come on the session's stream (the Java SDK accepts such a POST
// with an empty 200).
func (st *State) unreadableAnswer(resp *http.Response) string {
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	if encoded(resp.Header) {
		st.p.Logger.Warn("upstream answer has a Content-Encoding though the proxy asked for none; answered with 502",
			zap.String("content_encoding", resp.Header.Get("Content-Encoding")), zap.String("upstream", st.UpstreamAddr()))
		return "the upstream's answer is encoded (Content-Encoding), which the proxy cannot read"
	}
	if len(resp.Header.Values("Content-Type")) > 1 {
		st.p.Logger.Warn("upstream answer has more than one Content-Type; answered with 502",
			zap.Strings("content_type", resp.Header.Values("Content-Type")), zap.String("upstream", st.UpstreamAddr()))
		return "the upstream's answer has more than one Content-Type, which clients read differently"
	}
	empty := resp.Body == nil || resp.Body == http.NoBody || resp.ContentLength == 0
	if !empty && st.call.Era != mcp.EraLegacy && st.carriesRequest() && !isEventStream(resp.Header) && !isJSONAnswer(resp.Header) {
		return "the upstream's answer is neither JSON nor an event stream"
	}
	return ""
}

// dropUpstreamSession deletes upstream the session an initialize answer
// the proxy does not pass on started, if it names one it could delete.
func (st *State) dropUpstreamSession(req *http.Request, resp *http.Response) {
	ids := resp.Header.Values(mcp.HeaderSessionID)
	if len(ids) == 1 && st.call.IsInitialize() && st.res.Session == nil && ids[0] != "" && validHeaderValue(ids[0]) {
		st.deleteUpstreamSession(req, ids[0])
	}
}

// guardTrailers returns resp with its body wrapped so that the trailers
// of the upstream's answer, which net/http fills in when the body ends,
// never carry a session id to the client: an upstream id would reach it
// unsealed. The other trailers of a body relayed as it comes pass as
// reverse_proxy passes them; a body the proxy holds whole goes with a
// Content-Length and no trailers (setBody), and needs no guard.
func guardTrailers(resp *http.Response) *http.Response {
	if _, whole := resp.Body.(*wholeBody); whole || resp.Body == nil || resp.Body == http.NoBody {
		resp.Trailer = nil
		return resp
	}
	resp.Trailer.Del(mcp.HeaderSessionID) // announced: not even its name goes
	resp.Body = &trailerGuard{ReadCloser: resp.Body, resp: resp}
	return resp
}

// trailerGuard removes a session id from its response's trailers when
// the body ends or is closed, before reverse_proxy copies them.
type trailerGuard struct {
	io.ReadCloser
	resp *http.Response
}

func (g *trailerGuard) Read(b []byte) (int, error) {
	n, err := g.ReadCloser.Read(b)
	if err != nil {
		g.resp.Trailer.Del(mcp.HeaderSessionID)
	}
	return n, err
}

func (g *trailerGuard) Close() error {
	err := g.ReadCloser.Close()
	g.resp.Trailer.Del(mcp.HeaderSessionID)
	return err
}

// encoded reports a Content-Encoding other than identity.
func encoded(h http.Header) bool {
	for _, v := range h.Values("Content-Encoding") {
		for _, c := range strings.Split(v, ",") {
			if c = strings.TrimSpace(c); c != "" && !strings.EqualFold(c, "identity") {
				return true
			}
		}
	}
	return false
}

// spliceAnswers adds the errors of a batch's denied requests to the
// upstream's answer to the rest: into a JSON array, as events at the end of
// an SSE answer (see the batch's stream hooks), or, when the rest held no
// request (the upstream answered 202), as the whole answer.
func (st *State) spliceAnswers(resp *http.Response) *http.Response {
	if resp.StatusCode == http.StatusAccepted {
		body := mcp.AppendBatch(nil, st.Spliced)
		if resp.Body != nil {
			_ = resp.Body.Close()
		}
		resp.StatusCode, resp.Status = http.StatusOK, "200 OK"
		resp.Header.Set("Content-Type", "application/json")
		dropBodyBound(resp.Header)
		setBody(resp, body)
		return resp
	}
	// The JSON answers unreadableAnswer passes, whatever their media type.
	if resp.StatusCode != http.StatusOK || !isJSONAnswer(resp.Header) || resp.Body == nil {
		return resp
	}
	limit := st.p.MaxEvent
	raw, _, err := mcp.ReadHead(resp.Body, limit+1)
	_ = resp.Body.Close()
	var body []byte
	if err == nil && int64(len(raw)) <= limit {
		body, err = policy.SpliceAnswers(raw, st.Spliced)
	} else if err == nil {
		err = errors.New("the batch answer exceeds max_event_size")
	}
	if err != nil {
		return st.replaceResponse(resp, http.StatusBadGateway, mcp.CodeInternalError, "the upstream's batch answer could not be read")
	}
	dropBodyBound(resp.Header)
	setBody(resp, body)
	return resp
}

// splicedFinal returns the stream hook that ends a batch's SSE answer with
// the errors of its denied requests.
func (st *State) splicedFinal() func(error) []byte {
	return func(error) []byte {
		var out []byte
		for _, a := range st.Spliced {
			out = sse.AppendEvent(out, "", "message", a)
		}
		return out
	}
}
