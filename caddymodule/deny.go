package caddymodule

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/relay"
	"github.com/mcpgate/mcpgate/sse"
)

// A message the access rules deny never reaches an upstream: a request
// whose messages are all denied is answered by the proxy, as the upstream
// answers a call of something it does not have; a batch goes on without
// its denied messages, and their errors are added to the upstream's answer.

// enforce applies the access rules to every message of the request: the
// first denied one is answered, for a single message, by the proxy with
// the error an unknown tool, prompt, resource or method gets, and the
// request goes no further. It reports whether it answered.
func (h *Handler) enforce(x *exchange) bool {
	g := h.gov
	if !g.enforces() {
		return false
	}
	msgs := x.call.Peek.Messages
	x.subject = newSubject(x.r, x.principal, g.matchers)
	denied, last, rule := g.policy.DecideAll(x.subject, msgs)
	x.denied, x.decision, x.rule = denied, last.String(), rule
	if len(x.denied) == 0 {
		return false
	}
	x.decision = "deny"
	x.rule = x.denied[0].Rule
	for _, d := range x.denied {
		metrics.denials.WithLabelValues(d.Kind.String()).Inc()
	}
	if c := h.logger.Check(zap.DebugLevel, "call denied"); c != nil {
		d := x.denied[0]
		c.Write(zap.String("kind", d.Kind.String()), zap.String("target", d.Name), zap.String("rule", d.Rule),
			zap.String("principal", x.principal))
	}
	if x.call.Peek.Batch && len(x.denied) < len(msgs) && x.body.Whole != nil && h.stripDenied(x) {
		// The rest of the batch goes on; the denied calls' errors are
		// added to the upstream's answer.
		return false
	}
	h.answerDenied(x)
	return true
}

// stripDenied takes a batch's denied messages out of its body, keeping
// the errors their requests get for the answer (see spliceAnswers). It
// reports false when the body cannot be rewritten.
func (h *Handler) stripDenied(x *exchange) bool {
	body, kept, answers, ok := h.gov.unknown.StripDenied(x.body.Whole, x.call.Peek.Messages, x.denied)
	if !ok {
		return false
	}
	x.call.Peek.Messages = kept
	x.body.Whole = body
	x.r.Body = io.NopCloser(bytes.NewReader(body))
	x.r.ContentLength = int64(len(body))
	x.r.Header.Set("Content-Length", strconv.Itoa(len(body)))
	x.spliced = answers
	x.decision = "allow"
	return true
}

// answerTemplate is what a denial copies of an upstream's answer: its
// headers (less those of the one response) and the Via that
// reverse_proxy adds.
type answerTemplate struct {
	header http.Header
	via    string
	// session: the answer carried the session's id.
	session bool
}

// perResponseHeaders are not copied from an upstream's answer to a
// denial's.
var perResponseHeaders = []string{"Content-Length", "Date", mcp.HeaderSessionID, "Set-Cookie", "Transfer-Encoding", "Connection"}

// noteAnswer keeps the headers of an upstream's 200 answer to a POST, the
// first one of each kind and then one in 256.
func (g *governance) noteAnswer(resp *http.Response, streamed bool) {
	g.sseAnswers.Store(streamed)
	slot := &g.answerHeaders[0]
	if streamed {
		slot = &g.answerHeaders[1]
	}
	if slot.Load() != nil && g.answersSeen.Add(1)%256 != 0 {
		return
	}
	hdr := resp.Header.Clone()
	session := hdr.Get(mcp.HeaderSessionID) != ""
	for _, k := range perResponseHeaders {
		hdr.Del(k)
	}
	slot.Store(&answerTemplate{header: hdr, session: session,
		via: strconv.Itoa(resp.ProtoMajor) + "." + strconv.Itoa(resp.ProtoMinor) + " Caddy"})
}

// answerHeadersFor sets a denial's headers as an upstream's answer of the
// kind has them, through reverse_proxy: its own headers, the session's id
// (the client's token) when answers carry it, Caddy's Via and no Server.
func (g *governance) answerHeadersFor(hdr http.Header, streamed bool, token string) {
	slot := &g.answerHeaders[0]
	if streamed {
		slot = &g.answerHeaders[1]
	}
	t := slot.Load()
	if t == nil {
		return
	}
	hdr.Del("Server")
	for k, v := range t.header {
		hdr[k] = append([]string(nil), v...)
	}
	hdr["Via"] = append(hdr["Via"], t.via)
	if t.session && token != "" {
		hdr.Set(mcp.HeaderSessionID, token)
	}
}

// answerDenied answers a request whose messages are all denied as the
// upstream answers calls of things it does not have: a notification is
// accepted (202) and dropped; a request gets its error in a JSON answer,
// or as an event of an SSE answer when the upstreams answer that way (or
// the client accepts nothing else), or, in a legacy session whose stream
// the process relays, accepted (202) with its error sent on the stream.
// (A batch with messages that are not denied goes on without the denied
// ones: see stripDenied.)
func (h *Handler) answerDenied(x *exchange) {
	w := x.w
	hdr := w.Header()
	answers, code := h.gov.unknown.Answers(x.call.Peek.Messages, x.denied)
	if x.code == 0 {
		x.code = code
	}
	x.status = http.StatusAccepted
	if len(answers) == 0 {
		w.WriteHeader(http.StatusAccepted)
		return
	}
	if relay.SendOnLegacyStream(x.res, answers) {
		// A legacy session's answers go on its stream.
		w.WriteHeader(http.StatusAccepted)
		return
	}
	x.status = http.StatusOK
	accept := x.r.Header.Get("Accept")
	if (h.gov.sseAnswers.Load() || !strings.Contains(accept, "application/json")) && strings.Contains(accept, "text/event-stream") {
		hdr.Set("Content-Type", "text/event-stream")
		hdr.Set("Cache-Control", "no-cache")
		h.gov.answerHeadersFor(hdr, true, x.res.Token)
		w.WriteHeader(http.StatusOK)
		// A relayed answer's events carry the proxy's ids where the
		// client can resume them; so do these.
		prefix := ""
		if mcp.Resumable(x.r.Method, &x.call, x.res.Session != nil, false) {
			prefix = sse.NewIDPrefix()
		}
		var buf []byte
		for i, a := range answers {
			id := ""
			if prefix != "" {
				id = prefix + strconv.Itoa(i+1)
			}
			buf = sse.AppendEvent(buf, id, "message", a)
		}
		_, _ = w.Write(buf)
		return
	}
	body := answers[0]
	if x.call.Peek.Batch {
		body = mcp.AppendBatch(nil, answers)
	}
	hdr.Set("Content-Type", "application/json")
	h.gov.answerHeadersFor(hdr, false, x.res.Token)
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}
