//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"strconv"
	"strings"
	"time"
)

// How a flow of the upstreamkill scenario ended, judged from what its
// client received: the status, the Content-Type, the body bytes and how
// reading them stopped.

// flowKind is one kind of flow held open through the proxy.
type flowKind uint8

const (
	flowGET        flowKind = iota // a session's GET SSE stream
	flowStreamCall                 // a tools/call whose answer streams as SSE
	flowJSONCall                   // a tools/call waiting for an application/json answer
	numFlowKinds
)

func (k flowKind) String() string {
	switch k {
	case flowGET:
		return "GET stream"
	case flowStreamCall:
		return "streaming tools/call"
	case flowJSONCall:
		return "JSON tools/call"
	}
	return "flow"
}

// flowOutcome is how a flow ended.
type flowOutcome uint8

const (
	// endRPCError: a JSON-RPC error carrying the call's id (a JSON body,
	// or an SSE event before the stream ended).
	endRPCError flowOutcome = iota
	// endCleanRetry: the stream ended at EOF after complete events, and a
	// `retry:` field came before the end.
	endCleanRetry
	// endClean: the stream ended at EOF after complete events, without a
	// `retry:` field.
	endClean
	// endBare: the connection dropped (an error, or EOF inside an event),
	// or an error status came without a JSON-RPC error in its body.
	endBare
	// endHung: the flow had not ended when the budget ran out; the harness
	// closed it.
	endHung
	// endOther: anything else: an answer, a JSON-RPC error for another id,
	// a flow that failed to open or ended before the kill.
	endOther
	numOutcomes
)

func (o flowOutcome) String() string {
	switch o {
	case endRPCError:
		return "JSON-RPC error with id"
	case endCleanRetry:
		return "clean end with retry hint"
	case endClean:
		return "clean end without hint"
	case endBare:
		return "bare EOF or empty 5xx"
	case endHung:
		return "hung"
	}
	return "other"
}

// expected is the ending mcp_proxy aims at for a flow of kind k.
func (k flowKind) expected() flowOutcome {
	if k == flowGET {
		return endCleanRetry
	}
	return endRPCError
}

// flowRecord is what a flow's client saw.
type flowRecord struct {
	Kind        flowKind
	ID          int64 // the JSON-RPC id of a call; 0 for a GET stream
	Status      int   // 0 when no response came
	ContentType string
	Body        []byte // what was read, at most maxFlowBody bytes
	// Err is how the flow stopped: nil when the body was read to EOF, the
	// request's error when no response came, the read error otherwise.
	Err   error
	Ended time.Time
	// Hung is set when the flow had not ended when the budget ran out.
	Hung bool
	// Open is set when the flow was established before the kill.
	Open bool
}

// maxFlowBody bounds the bytes kept of a flow's body.
const maxFlowBody = 256 << 10

// flowEnd is a flow's classified ending.
type flowEnd struct {
	Kind    flowKind
	Outcome flowOutcome
	Status  int
	// Retry is set when a `retry:` field came on an SSE response.
	Retry bool
	// Events counts the complete SSE events received.
	Events int
	// AfterKill is the time from the kill to the end (the budget for a
	// hung flow); negative for a flow that ended before the kill.
	AfterKill time.Duration
	// Detail describes the ending in a few words, for the report.
	Detail string
}

// classifyFlow judges how a flow ended, killed at kill.
func classifyFlow(f *flowRecord, kill time.Time, budget time.Duration) flowEnd {
	e := flowEnd{Kind: f.Kind, Status: f.Status}
	if !f.Ended.IsZero() {
		e.AfterKill = f.Ended.Sub(kill)
	}
	switch {
	case f.Hung:
		e.Outcome, e.AfterKill = endHung, budget
		e.Detail = "still open after " + budget.String()
		if isEventStream(f.ContentType) {
			sc := scanSSE(f.Body, f.ID)
			e.Retry, e.Events = sc.retry, sc.events
		}
		return e
	case !f.Open:
		e.Outcome = endOther
		e.Detail = "not open at the kill"
		if f.Status != 0 {
			e.Detail += fmt.Sprintf(" (status %d)", f.Status)
		}
		if f.Err != nil {
			e.Detail += ": " + errText(f.Err)
		}
		return e
	case f.Ended.Before(kill):
		e.Outcome, e.Detail = endOther, "ended before the kill"
		return e
	case f.Status == 0:
		e.Outcome = endBare
		e.Detail = "no response: " + errText(f.Err)
		return e
	}
	if isEventStream(f.ContentType) {
		classifyStream(f, &e)
	} else {
		classifyBody(f, &e)
	}
	return e
}

// classifyStream judges an SSE response.
func classifyStream(f *flowRecord, e *flowEnd) {
	sc := scanSSE(f.Body, f.ID)
	e.Retry, e.Events = sc.retry, sc.events
	clean := f.Err == nil && !sc.partial
	end := "EOF"
	switch {
	case f.Err != nil:
		end = errText(f.Err)
	case sc.partial:
		end = "EOF inside an event"
	}
	hint := ""
	if sc.retry {
		hint = ", retry hint"
	}
	switch {
	case f.Kind != flowGET && sc.errorForID:
		e.Outcome = endRPCError
		e.Detail = fmt.Sprintf("error event %s for the id%s, then %s", sc.errCode, hint, end)
	case f.Kind != flowGET && sc.resultForID:
		e.Outcome = endOther
		e.Detail = "answered with a result, then " + end
	case f.Kind != flowGET && sc.errorOtherID:
		e.Outcome = endOther
		e.Detail = "error event for another id" + hint + ", then " + end
	case !clean:
		e.Outcome = endBare
		e.Detail = fmt.Sprintf("%s after %d events%s", end, sc.events, hint)
	case sc.retry:
		e.Outcome = endCleanRetry
		e.Detail = fmt.Sprintf("EOF after %d events, retry hint", sc.events)
	default:
		e.Outcome = endClean
		e.Detail = fmt.Sprintf("EOF after %d events", sc.events)
	}
}

// classifyBody judges a response that is not an event stream.
func classifyBody(f *flowRecord, e *flowEnd) {
	body := bytes.TrimSpace(f.Body)
	var m rpcMessage
	isRPC := len(body) > 0 && json.Unmarshal(body, &m) == nil && m.JSONRPC == "2.0"
	switch {
	case f.Err != nil && !isRPC:
		e.Outcome = endBare
		e.Detail = fmt.Sprintf("%d, body cut: %s", f.Status, errText(f.Err))
	case isRPC && m.Error != nil && sameID(m.ID, f.ID):
		e.Outcome = endRPCError
		e.Detail = fmt.Sprintf("%d, JSON-RPC error %d with the id", f.Status, m.Error.Code)
	case isRPC && m.Error != nil:
		e.Outcome = endOther
		e.Detail = fmt.Sprintf("%d, JSON-RPC error %d with id %s", f.Status, m.Error.Code, idText(m.ID))
	case isRPC && m.Result != nil:
		e.Outcome = endOther
		e.Detail = fmt.Sprintf("%d, answered with a result", f.Status)
	case f.Status >= 400 && len(body) == 0:
		e.Outcome = endBare
		e.Detail = fmt.Sprintf("%d, empty body", f.Status)
	case f.Status >= 400:
		e.Outcome = endBare
		e.Detail = fmt.Sprintf("%d, no JSON-RPC error in the body", f.Status)
	default:
		e.Outcome = endOther
		e.Detail = fmt.Sprintf("%d, %d bytes of %q", f.Status, len(body), f.ContentType)
	}
}

// rpcMessage is the part of a JSON-RPC message the classification reads.
type rpcMessage struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  string          `json:"method"`
	Result  json.RawMessage `json:"result"`
	Error   *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// sameID reports whether a JSON-RPC id is the number want (0: never).
func sameID(raw json.RawMessage, want int64) bool {
	if want == 0 {
		return false
	}
	return string(bytes.TrimSpace(raw)) == strconv.FormatInt(want, 10)
}

func idText(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "(none)"
	}
	return string(raw)
}

// sseScan is what an SSE body held.
type sseScan struct {
	events       int  // complete events (ended by a blank line) with data
	retry        bool // a valid `retry:` field came
	partial      bool // the body ended inside an event or a line
	errorForID   bool // an event carried a JSON-RPC error with the id
	errorOtherID bool // an event carried a JSON-RPC error with another id
	resultForID  bool // an event carried the result for the id
	errCode      string
}

// scanSSE reads an SSE body as the EventSource algorithm does: lines end
// in LF, CRLF or CR; a blank line dispatches the event's data; comments
// and unknown fields are ignored; a `retry:` field counts when its value
// is all digits. id is the call's JSON-RPC id (0 for none).
func scanSSE(body []byte, id int64) sseScan {
	var sc sseScan
	var data []byte
	hasData, pending := false, false
	dispatch := func() {
		if hasData {
			sc.events++
			var m rpcMessage
			if json.Unmarshal(data, &m) == nil && m.JSONRPC == "2.0" && m.Method == "" {
				switch {
				case m.Error != nil && sameID(m.ID, id):
					sc.errorForID = true
					sc.errCode = strconv.Itoa(m.Error.Code)
				case m.Error != nil:
					sc.errorOtherID = true
				case m.Result != nil && sameID(m.ID, id):
					sc.resultForID = true
				}
			}
		}
		data, hasData, pending = data[:0], false, false
	}
	for len(body) > 0 {
		i := bytes.IndexAny(body, "\r\n")
		if i < 0 {
			sc.partial = true // a line without its end
			return sc
		}
		line := body[:i]
		if body[i] == '\r' && i+1 < len(body) && body[i+1] == '\n' {
			i++ // CRLF
		}
		body = body[i+1:]
		if len(line) == 0 {
			dispatch()
			continue
		}
		if line[0] == ':' {
			continue
		}
		pending = true
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "data":
			if hasData {
				data = append(data, '\n')
			}
			data = append(data, value...)
			hasData = true
		case "retry":
			if len(value) > 0 && allDigits(value) {
				sc.retry = true
			}
		}
	}
	sc.partial = pending
	return sc
}

func allDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// isEventStream reports whether a Content-Type is text/event-stream.
func isEventStream(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "text/event-stream"
}

// errText names a read or request error briefly.
func errText(err error) string {
	switch {
	case err == nil:
		return "EOF"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected EOF"
	case errors.Is(err, io.EOF):
		return "EOF before the response"
	}
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	s := err.Error()
	for _, k := range []string{"connection reset by peer", "broken pipe", "context canceled", "connection refused"} {
		if strings.Contains(s, k) {
			return k
		}
	}
	return s
}
