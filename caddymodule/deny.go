package caddymodule

import (
	"bytes"
	"io"
	"strconv"

	"go.uber.org/zap"
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
// the errors their requests get for the upstream's answer, where the
// relay adds them (relay.State.Spliced). It
// reports false when the body cannot be rewritten.
func (h *Handler) stripDenied(x *exchange) bool {
	body, kept, answers, ok := h.gov.unknown.StripDenied(x.body.Whole, x.call.Peek.Messages, x.denied)
	if !ok {
		return false
	}
	x.batch = x.call.Peek.Messages
	x.call.Peek.Messages = kept
	x.body.Whole = body
	x.r.Body = io.NopCloser(bytes.NewReader(body))
	x.r.ContentLength = int64(len(body))
	x.r.Header.Set("Content-Length", strconv.Itoa(len(body)))
	x.spliced = answers
	x.decision = "allow"
	return true
}

// answerDenied answers a request whose messages are all denied with the
// errors an upstream gives calls of things it does not have, written as
// the upstreams answer (see relay.Denials.Write). (A batch with messages
// that are not denied goes on without the denied ones: see stripDenied.)
func (h *Handler) answerDenied(x *exchange) {
	answers, code := h.gov.unknown.Answers(x.call.Peek.Messages, x.denied)
	if x.code == 0 {
		x.code = code
	}
	x.status = h.relay.Denials.Write(x.w, x.r, &x.call, x.res, answers)
}
