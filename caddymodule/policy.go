package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/auth"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
	"github.com/mcpgate/mcpgate/sse"
)

// Rule is one access rule of mcp_proxy (see Handler.Rules).
type Rule struct {
	// Action is "allow" or "deny".
	Action string `json:"action"`

	// Kind is what Targets name: "tool" (tools/call), "prompt"
	// (prompts/get), "resource" (resources/read, resources/subscribe,
	// resources/unsubscribe) or "method" (any JSON-RPC method).
	Kind string `json:"kind"`

	// Targets are globs over the tool names, prompt names, resource URIs
	// or methods: `*` matches any characters, `/` included, `?` one.
	Targets []string `json:"targets"`

	// Methods, for tool, prompt and resource rules, restricts the rule to
	// messages of these methods (globs), e.g. resources/subscribe.
	// Default: every method of the kind.
	Methods []string `json:"methods,omitempty"`

	// Unless makes the condition an exception: the rule applies to the
	// subjects that do not meet it. Default: false (the rule applies to
	// those that do).
	Unless bool `json:"unless,omitempty"`

	// Principals restricts the rule to these principals (exact). Default:
	// any.
	Principals []string `json:"principals,omitempty"`

	// Scopes restricts the rule to subjects holding all these OAuth
	// scopes (from mcp_auth, or `{http.auth.user.scope}`). Default: none
	// needed.
	Scopes []string `json:"scopes,omitempty"`

	// Placeholder, with Values, restricts the rule to requests where the
	// placeholder's value matches one of Values (globs), e.g.
	// `{http.request.header.X-Tenant}`. Default: none.
	Placeholder string `json:"placeholder,omitempty"`

	// Values: see Placeholder.
	Values []string `json:"values,omitempty"`

	// MatchRaw restricts the rule to requests a matcher set matches, as a
	// route's `match` would. Default: none.
	MatchRaw caddy.ModuleMap `json:"match,omitempty" caddy:"namespace=http.matchers"`
}

// UnknownError is the JSON-RPC error a denied call gets, for one kind of
// target; "%s" in Message stands for the target's name.
type UnknownError struct {
	// Code is the JSON-RPC error code.
	Code int `json:"code"`
	// Message is the error message; "%s" is replaced by the name, quoted
	// as Go's %q quotes it when written "%q".
	Message string `json:"message"`
}

// The errors a go-sdk server gives for an unknown tool, prompt, resource
// and method; a denied call gets the same unless UnknownErrors says
// otherwise.
var defaultUnknownErrors = map[string]UnknownError{
	"tool":     {Code: -32602, Message: "unknown tool %q"},
	"prompt":   {Code: -32602, Message: "unknown prompt %q"},
	"resource": {Code: -32602, Message: "Resource not found"},
	"method":   {Code: mcp.CodeMethodNotFound, Message: "method not found: %q"},
}

// governance is the compiled policy of a handler: the rules, their
// matchers, the errors denied calls get, tool pinning.
type governance struct {
	policy   policy.Policy
	matchers []caddyhttp.MatcherSet
	unknown  map[policy.Kind]UnknownError
	pins     *policy.Pins // toolPins, nil without pin_tools
	pinWarn  bool         // pin_tools warn: a changed tool passes
	// sseAnswers notes whether the upstreams' last answer to a POST
	// request was an SSE stream, so a denial answers the same way, and
	// answerHeaders holds the headers of such answers (JSON, SSE), which a
	// denial's answer carries too.
	sseAnswers    atomic.Bool
	answerHeaders [2]atomic.Pointer[answerTemplate]
	answersSeen   atomic.Uint64
	// unchanged holds, per upstream, the hash of the last tools array
	// whose every tool matched its pin; at the degraded level an equal
	// array is not checked tool by tool again.
	unchanged    sync.Map // upstream + "\x00" + tool → [32]byte
	unchangedLen atomic.Int64
}

// enforces reports whether any message can be denied.
func (g *governance) enforces() bool {
	return g != nil && (len(g.policy.Rules) > 0 || g.policy.Default == policy.Deny)
}

// lifecycle reports a method `default deny` leaves allowed, since no
// client works without it and it exposes nothing the rules guard:
// initialize, ping, the client's notifications, and the list methods,
// whose results are filtered by the rules. A rule that names one of
// them still applies.
func lifecycle(method string) bool {
	if _, ok := policy.ListKind(method); ok {
		return true
	}
	return method == "initialize" || method == "ping" || strings.HasPrefix(method, "notifications/")
}

// filters reports whether list results need reading: rules exist or
// tools are pinned.
func (g *governance) filters() bool {
	return g.enforces() || g != nil && g.pins != nil
}

// provisionGovernance compiles the rules and the pinning table.
func (h *Handler) provisionGovernance(ctx caddy.Context) error {
	g := &governance{unknown: map[policy.Kind]UnknownError{}}
	switch h.RulesDefault {
	case "", "allow":
		g.policy.Default = policy.Allow
	case "deny":
		g.policy.Default = policy.Deny
	default:
		return fmt.Errorf("rules_default %q: want allow or deny", h.RulesDefault)
	}
	for i := range h.Rules {
		rule, err := h.compileRule(ctx, i, g)
		if err != nil {
			return fmt.Errorf("rule %d: %w", i+1, err)
		}
		g.policy.Rules = append(g.policy.Rules, rule)
	}
	if err := g.policy.Compile(); err != nil {
		return err
	}
	for name, e := range defaultUnknownErrors {
		if custom, ok := h.UnknownErrors[name]; ok {
			e = custom
		}
		kind, _ := kindOf(name)
		g.unknown[kind] = e
	}
	for name := range h.UnknownErrors {
		if _, ok := kindOf(name); !ok {
			return fmt.Errorf("unknown_errors %q: want tool, prompt, resource or method", name)
		}
	}
	switch h.PinTools {
	case "", "off":
	case "drop", "on", "warn":
		g.pins = toolPins
		g.pinWarn = h.PinTools == "warn"
	default:
		return fmt.Errorf("pin_tools %q: want off, drop or warn", h.PinTools)
	}
	h.gov = g
	return nil
}

// defaultMaxPins bounds the pinned tool definitions of the process.
const defaultMaxPins = 10000

// toolPins are the pinned tool definitions of every upstream, shared by
// the handlers of every config, so a reload keeps them; DELETE /mcp/pins
// forgets them after an operator approved a change.
var toolPins = &policy.Pins{Max: defaultMaxPins}

// kindOf reads a rule kind.
func kindOf(s string) (policy.Kind, bool) {
	switch s {
	case "tool":
		return policy.KindTool, true
	case "prompt":
		return policy.KindPrompt, true
	case "resource":
		return policy.KindResource, true
	case "method":
		return policy.KindMethod, true
	}
	return 0, false
}

// compileRule turns rule i of the config into a policy rule, loading its
// matcher set.
func (h *Handler) compileRule(ctx caddy.Context, i int, g *governance) (policy.Rule, error) {
	c := &h.Rules[i]
	var out policy.Rule
	switch c.Action {
	case "allow":
		out.Action = policy.Allow
	case "deny":
		out.Action = policy.Deny
	default:
		return out, fmt.Errorf("action %q: want allow or deny", c.Action)
	}
	kind, ok := kindOf(c.Kind)
	if !ok {
		return out, fmt.Errorf("kind %q: want tool, prompt, resource or method", c.Kind)
	}
	if len(c.Targets) == 0 {
		return out, fmt.Errorf("no targets")
	}
	out.Kind, out.Targets, out.Methods = kind, c.Targets, c.Methods
	out.Label = "rule " + strconv.Itoa(i+1) + ": " + c.Action + " " + c.Kind + " " + strings.Join(c.Targets, " ")
	cond := &policy.Condition{Negate: c.Unless, Principals: c.Principals, Scopes: c.Scopes,
		Placeholder: c.Placeholder, Values: c.Values, Matcher: -1}
	if c.MatchRaw != nil {
		mods, err := ctx.LoadModule(c, "MatchRaw")
		if err != nil {
			return out, fmt.Errorf("loading matchers: %w", err)
		}
		var set caddyhttp.MatcherSet
		for _, m := range mods.(map[string]any) {
			set = append(set, m)
		}
		cond.Matcher = len(g.matchers)
		g.matchers = append(g.matchers, set)
	}
	if len(cond.Principals) > 0 || len(cond.Scopes) > 0 || cond.Placeholder != "" || cond.Matcher >= 0 {
		out.When = cond
	} else if c.Unless {
		return out, fmt.Errorf("unless without a condition")
	}
	return out, nil
}

// subject is who sends a request, for the rules: read lazily from the
// request, each fact once.
type subject struct {
	r         *http.Request
	repl      *caddy.Replacer
	principal string
	scopes    []string
	scopesSet bool
	matchers  []caddyhttp.MatcherSet
	matched   map[int]bool
}

func newSubject(r *http.Request, principal string, matchers []caddyhttp.MatcherSet) *subject {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	return &subject{r: r, repl: repl, principal: principal, matchers: matchers}
}

func (s *subject) Principal() string { return s.principal }

func (s *subject) Value(placeholder string) string {
	if s.repl == nil {
		return ""
	}
	return s.repl.ReplaceAll(placeholder, "")
}

func (s *subject) HasScopes(need []string) bool {
	if !s.scopesSet {
		s.scopesSet = true
		if p, ok := caddyhttp.GetVar(s.r.Context(), varAuth).(*auth.Principal); ok && p != nil {
			s.scopes = p.Scopes
		} else if s.repl != nil {
			v, _ := s.repl.GetString("http.auth.user.scope")
			s.scopes = strings.Fields(v)
		}
	}
	for _, n := range need {
		found := false
		for _, have := range s.scopes {
			if have == n {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func (s *subject) Match(set int) bool {
	if ok, seen := s.matched[set]; seen {
		return ok
	}
	if set < 0 || set >= len(s.matchers) {
		return false
	}
	ok, err := s.matchers[set].MatchWithError(s.r)
	if err != nil {
		ok = false
	}
	if s.matched == nil {
		s.matched = map[int]bool{}
	}
	s.matched[set] = ok
	return ok
}

// denial is a message of a request the rules denied.
type denial struct {
	index int // in the request's messages
	kind  policy.Kind
	name  string
	rule  string
}

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
	for i := range msgs {
		m := &msgs[i]
		if m.Kind == mcp.KindResponse || m.Method == "" {
			continue
		}
		kind, target := policy.TargetOf(m.Method, m.Name)
		action, rule := g.policy.Decide(x.subject, m.Method, m.Name)
		if rule < 0 && action == policy.Deny && lifecycle(m.Method) {
			action = policy.Allow
		}
		label := ""
		if rule >= 0 {
			label = g.policy.Rules[rule].Label
		}
		x.decision, x.rule = action.String(), label
		if action == policy.Allow {
			continue
		}
		x.denied = append(x.denied, denial{index: i, kind: kind, name: target, rule: label})
	}
	if len(x.denied) == 0 {
		return false
	}
	x.decision = "deny"
	x.rule = x.denied[0].rule
	for _, d := range x.denied {
		metrics.denials.WithLabelValues(d.kind.String()).Inc()
	}
	if c := h.logger.Check(zap.DebugLevel, "call denied"); c != nil {
		d := x.denied[0]
		c.Write(zap.String("kind", d.kind.String()), zap.String("target", d.name), zap.String("rule", d.rule),
			zap.String("principal", x.principal))
	}
	if x.call.Peek.Batch && len(x.denied) < len(msgs) && x.body.whole != nil && h.stripDenied(x) {
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
	var members []json.RawMessage
	if err := json.Unmarshal(x.body.whole, &members); err != nil || len(members) != len(x.call.Peek.Messages) {
		return false
	}
	denied := make(map[int]denial, len(x.denied))
	for _, d := range x.denied {
		denied[d.index] = d
	}
	kept := make([]json.RawMessage, 0, len(members)-len(x.denied))
	msgs := make([]mcp.Envelope, 0, cap(kept))
	var answers [][]byte
	for i, m := range x.call.Peek.Messages {
		d, isDenied := denied[i]
		switch {
		case !isDenied:
			kept = append(kept, members[i])
			msgs = append(msgs, m)
		case m.Kind == mcp.KindRequest && m.ID != "":
			answers = append(answers, h.gov.unknownErrorFor(d, m.ID))
		}
	}
	body, err := json.Marshal(kept)
	if err != nil {
		return false
	}
	x.call.Peek.Messages = msgs
	x.body.whole = body
	x.r.Body = io.NopCloser(bytes.NewReader(body))
	x.r.ContentLength = int64(len(body))
	x.r.Header.Set("Content-Length", strconv.Itoa(len(body)))
	x.spliced = answers
	x.decision = "allow"
	return true
}

// unknownErrorFor is the JSON-RPC error message of a denied message.
func (g *governance) unknownErrorFor(d denial, id string) []byte {
	e := g.unknown[d.kind]
	msg := e.Message
	if strings.Contains(msg, "%q") {
		msg = strings.Replace(msg, "%q", strconv.Quote(d.name), 1)
	} else if strings.Contains(msg, "%s") {
		msg = strings.Replace(msg, "%s", d.name, 1)
	}
	type rpcError struct {
		Code    int             `json:"code"`
		Message string          `json:"message"`
		Data    json.RawMessage `json:"data,omitempty"`
	}
	body := struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   rpcError        `json:"error"`
	}{JSONRPC: "2.0", ID: json.RawMessage(id), Error: rpcError{Code: e.Code, Message: msg}}
	if id == "" {
		body.ID = json.RawMessage("null")
	}
	if d.kind == policy.KindResource {
		uri, _ := json.Marshal(map[string]string{"uri": d.name})
		body.Error.Data = uri
	}
	out, _ := json.Marshal(body)
	return out
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
// the client accepts nothing else). (A batch with messages that are not
// denied goes on without the denied ones: see stripDenied.)
func (h *Handler) answerDenied(x *exchange) {
	w := x.w
	hdr := w.Header()
	var answers [][]byte
	denied := map[int]denial{}
	for _, d := range x.denied {
		denied[d.index] = d
	}
	for i, m := range x.call.Peek.Messages {
		if m.Kind != mcp.KindRequest || m.ID == "" {
			continue
		}
		if d, ok := denied[i]; ok {
			answers = append(answers, h.gov.unknownErrorFor(d, m.ID))
			if x.code == 0 {
				x.code = h.gov.unknown[d.kind].Code
			}
			continue
		}
		// Not reached: a batch with a message not denied is stripped.
		answers = append(answers, mcp.AppendError(nil, m.ID, mcp.CodeInvalidRequest, "batch not processed"))
	}
	x.status = http.StatusAccepted
	if len(answers) == 0 {
		w.WriteHeader(http.StatusAccepted)
		return
	}
	x.status = http.StatusOK
	accept := x.r.Header.Get("Accept")
	if (h.gov.sseAnswers.Load() || !strings.Contains(accept, "application/json")) && strings.Contains(accept, "text/event-stream") {
		hdr.Set("Content-Type", "text/event-stream")
		hdr.Set("Cache-Control", "no-cache")
		h.gov.answerHeadersFor(hdr, true, x.res.token)
		w.WriteHeader(http.StatusOK)
		// A relayed answer's events carry the proxy's ids where the
		// client can resume them; so do these.
		prefix := ""
		if mcp.Resumable(x.r.Method, &x.call, x.res.session != nil, false) {
			prefix = newIDPrefix()
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
		body = append([]byte{'['}, joinJSON(answers)...)
		body = append(body, ']')
	}
	hdr.Set("Content-Type", "application/json")
	h.gov.answerHeadersFor(hdr, false, x.res.token)
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// appendSSEAnswer appends a JSON-RPC message as an SSE message event.
func appendSSEAnswer(buf, msg []byte) []byte {
	buf = append(buf, "event: message\ndata: "...)
	buf = append(buf, msg...)
	return append(buf, "\n\n"...)
}

// joinJSON joins JSON values with commas.
func joinJSON(vs [][]byte) []byte {
	var out []byte
	for i, v := range vs {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, v...)
	}
	return out
}

// spliceAnswers adds the errors of a batch's denied requests to the
// upstream's answer to the rest: into a JSON array, as events at the end of
// an SSE answer (see the batch's stream hooks), or, when the rest held no
// request (the upstream answered 202), as the whole answer.
func (st *relayState) spliceAnswers(resp *http.Response) *http.Response {
	if resp.StatusCode == http.StatusAccepted {
		body := append([]byte{'['}, joinJSON(st.spliced)...)
		body = append(body, ']')
		if resp.Body != nil {
			_ = resp.Body.Close()
		}
		resp.StatusCode, resp.Status = http.StatusOK, "200 OK"
		resp.Header.Set("Content-Type", "application/json")
		resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		return resp
	}
	if resp.StatusCode != http.StatusOK || !mcp.IsJSON(resp.Header.Get("Content-Type")) || resp.Body == nil {
		return resp
	}
	limit := st.h.maxEvent
	raw, _, err := readHead(resp.Body, limit+1)
	_ = resp.Body.Close()
	var answers []json.RawMessage
	if err == nil && int64(len(raw)) <= limit {
		err = json.Unmarshal(raw, &answers)
	} else if err == nil {
		err = errors.New("the batch answer exceeds max_event_size")
	}
	if err != nil {
		return st.replaceResponse(resp, http.StatusBadGateway, mcp.CodeInternalError, "the upstream's batch answer could not be read")
	}
	for _, a := range st.spliced {
		answers = append(answers, a)
	}
	body, _ := json.Marshal(answers)
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	return resp
}

// splicedFinal returns the stream hook that ends a batch's SSE answer with
// the errors of its denied requests.
func (st *relayState) splicedFinal() func(error) []byte {
	return func(error) []byte {
		var out []byte
		for _, a := range st.spliced {
			out = appendSSEAnswer(out, a)
		}
		return out
	}
}
