package policy

import (
	"encoding/json"
	"strconv"
	"strings"

	"github.com/mcpgate/mcpgate/mcp"
)

// ParseKind reads the name of a Kind: "tool", "prompt", "resource" or
// "method".
func ParseKind(s string) (Kind, bool) {
	switch s {
	case "tool":
		return KindTool, true
	case "prompt":
		return KindPrompt, true
	case "resource":
		return KindResource, true
	case "method":
		return KindMethod, true
	}
	return 0, false
}

// Lifecycle reports a method a Deny default leaves allowed, since no
// client works without it and it exposes nothing the rules guard:
// initialize, ping, the client's notifications, and the list methods,
// whose results FilterList filters. A rule that names one of them still
// applies.
func Lifecycle(method string) bool {
	if _, ok := ListKind(method); ok {
		return true
	}
	return method == "initialize" || method == "ping" || strings.HasPrefix(method, "notifications/")
}

// Denial is a message the rules denied.
type Denial struct {
	Index int    // in the request's messages
	Kind  Kind   // of its target
	Name  string // its target (see TargetOf)
	Rule  string // the Label of the rule that denied it, "" for the default
}

// DecideAll applies p to every request and notification of msgs (a
// request's messages, responses skipped), leaving the Lifecycle methods
// allowed when only the default denies them. It returns the denied
// messages, and the action and rule Label that decided the last message
// (Allow and "" when there was none to decide).
//
// A completion/complete that refers to a prompt or a resource template
// (see RefOf) is judged twice: as the method, and as its prompt or
// template the way Allows judges a listed item (so completing is allowed
// just where the item is listed). It is denied when either denies: by the
// method's rules as a method (KindMethod), else as its prompt or resource
// (Denial.Kind KindPrompt or KindResource, Name the prompt name or URI
// template), and it then gets the error of an unknown prompt or
// resource. When both allow, the rule named is the item's when a rule
// decided it, else the method's.
//
// A subscriptions/listen (2026-07-28) is judged as the method and, when
// that allows it, as a resources/subscribe of each resource URI its
// params.notifications.resourceSubscriptions names (mcp.Envelope's
// Subscriptions): it is denied, as the first denied URI (Denial.Kind
// KindResource), when one of them is.
func (p *Policy) DecideAll(s Subject, msgs []mcp.Envelope) (denied []Denial, last Action, rule string) {
	for i := range msgs {
		m := &msgs[i]
		if m.Kind == mcp.KindResponse || m.Method == "" {
			continue
		}
		kind, target := TargetOf(m.Method, m.Name)
		action, r := p.Decide(s, m.Method, m.Name)
		if r < 0 && action == Deny && Lifecycle(m.Method) {
			action = Allow
		}
		if rk, rt, ok := RefOf(m); ok && action == Allow {
			switch a, ri := p.decideItem(s, rk, rt); {
			case a == Deny:
				kind, target, action, r = rk, rt, a, ri
			case ri >= 0:
				r = ri
			}
		}
		if action == Allow && m.Method == methodListen {
			// Each resource a subscriptions/listen subscribes to, as a
			// resources/subscribe of it: the upstream subscribes to it so.
			for _, uri := range m.Subscriptions {
				a, ri := p.decide(s, methodResourcesSub, KindResource, uri)
				if a == Deny {
					kind, target, action, r = KindResource, uri, a, ri
					break
				}
				if ri >= 0 {
					r = ri
				}
			}
		}
		last, rule = action, ""
		if r >= 0 {
			rule = p.Rules[r].Label
		}
		if action == Deny {
			denied = append(denied, Denial{Index: i, Kind: kind, Name: target, Rule: rule})
		}
	}
	return denied, last, rule
}

// UnknownError is the JSON-RPC error a denied message gets, for one kind
// of target: what the upstream answers for something it does not have.
type UnknownError struct {
	Code int
	// Message is the error message; its first "%q" is replaced by the
	// target's name quoted as Go's %q quotes it, or else its first "%s" by
	// the name as it is.
	Message string
}

// UnknownErrors are the errors denied messages get, by Kind.
type UnknownErrors [numKinds]UnknownError

// DefaultUnknownErrors returns the errors a go-sdk server gives for an
// unknown tool, prompt, resource and method.
func DefaultUnknownErrors() UnknownErrors {
	var u UnknownErrors
	u[KindTool] = UnknownError{Code: -32602, Message: "unknown tool %q"}
	u[KindPrompt] = UnknownError{Code: -32602, Message: "unknown prompt %q"}
	u[KindResource] = UnknownError{Code: -32602, Message: "Resource not found"}
	u[KindMethod] = UnknownError{Code: mcp.CodeMethodNotFound, Message: "method not found: %q"}
	return u
}

// Answer returns the JSON-RPC error answering the denied message d whose
// raw JSON id is id ("" gives null). An error for a resource carries its
// URI as data: {"uri": …}.
func (u *UnknownErrors) Answer(d Denial, id string) []byte {
	e := u[d.Kind]
	msg := e.Message
	if strings.Contains(msg, "%q") {
		msg = strings.Replace(msg, "%q", strconv.Quote(d.Name), 1)
	} else if strings.Contains(msg, "%s") {
		msg = strings.Replace(msg, "%s", d.Name, 1)
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
	if d.Kind == KindResource {
		uri, _ := json.Marshal(map[string]string{"uri": d.Name})
		body.Error.Data = uri
	}
	out, _ := json.Marshal(body)
	return out
}

// Answers returns the answers to the requests of msgs when the proxy
// answers them all itself: the error of each denied one (see Answer), and
// for a request of a batch that was not denied the error of a batch not
// processed. code is the JSON-RPC code of the first denied request's
// error, 0 when there is none. Notifications get no answer.
func (u *UnknownErrors) Answers(msgs []mcp.Envelope, denied []Denial) (answers [][]byte, code int) {
	byIndex := indexDenials(denied)
	for i, m := range msgs {
		if m.Kind != mcp.KindRequest || m.ID == "" {
			continue
		}
		if d, ok := byIndex[i]; ok {
			answers = append(answers, u.Answer(d, m.ID))
			if code == 0 {
				code = u[d.Kind].Code
			}
			continue
		}
		answers = append(answers, mcp.AppendError(nil, m.ID, mcp.CodeInvalidRequest, "batch not processed"))
	}
	return answers, code
}

// StripDenied takes the denied messages out of body, a batch whose
// messages are msgs. It returns the batch of the others re-encoded (its
// members as they were), their envelopes, and the errors answering the
// denied requests (see Answer), to be added to the upstream's answer (see
// SpliceAnswers). ok is false when body is not a JSON array of
// len(msgs) members.
func (u *UnknownErrors) StripDenied(body []byte, msgs []mcp.Envelope, denied []Denial) (out []byte, kept []mcp.Envelope, answers [][]byte, ok bool) {
	var members []json.RawMessage
	if err := json.Unmarshal(body, &members); err != nil || len(members) != len(msgs) {
		return nil, nil, nil, false
	}
	byIndex := indexDenials(denied)
	keptMembers := make([]json.RawMessage, 0, len(members)-len(denied))
	kept = make([]mcp.Envelope, 0, cap(keptMembers))
	for i, m := range msgs {
		d, isDenied := byIndex[i]
		switch {
		case !isDenied:
			keptMembers = append(keptMembers, members[i])
			kept = append(kept, m)
		case m.Kind == mcp.KindRequest && m.ID != "":
			answers = append(answers, u.Answer(d, m.ID))
		}
	}
	out, err := json.Marshal(keptMembers)
	if err != nil {
		return nil, nil, nil, false
	}
	return out, kept, answers, true
}

// SpliceAnswers adds answers to answer, the JSON array an upstream
// answered a batch with, and returns the array re-encoded; an error when
// answer is not a JSON array.
func SpliceAnswers(answer []byte, answers [][]byte) ([]byte, error) {
	var all []json.RawMessage
	if err := json.Unmarshal(answer, &all); err != nil {
		return nil, err
	}
	for _, a := range answers {
		all = append(all, a)
	}
	return json.Marshal(all)
}

func indexDenials(denied []Denial) map[int]Denial {
	m := make(map[int]Denial, len(denied))
	for _, d := range denied {
		m[d.Index] = d
	}
	return m
}
