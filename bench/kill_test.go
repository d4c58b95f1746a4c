//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestClassifyFlow(t *testing.T) {
	kill := time.Unix(1000, 0)
	budget := 5 * time.Second
	const sse = "text/event-stream"
	progress := "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1001,\"progress\":0}}\n\n"
	errEvent := func(id string) string {
		return "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":" + id + ",\"error\":{\"code\":-32603,\"message\":\"upstream gone\"}}\n\n"
	}
	cases := []struct {
		name   string
		rec    flowRecord
		want   flowOutcome
		retry  bool
		detail string
	}{
		{"GET, retry hint, EOF", flowRecord{Kind: flowGET, Status: 200, ContentType: sse, Body: []byte(": open\n\nretry: 1000\n\n")},
			endCleanRetry, true, "EOF after 0 events, retry hint"},
		{"GET, EOF without hint", flowRecord{Kind: flowGET, Status: 200, ContentType: "text/event-stream; charset=utf-8", Body: []byte(": open\n\n")},
			endClean, false, "EOF after 0 events"},
		{"GET, retry value not a number", flowRecord{Kind: flowGET, Status: 200, ContentType: sse, Body: []byte("retry: soon\n\n")},
			endClean, false, "EOF after 0 events"},
		{"GET, connection dropped", flowRecord{Kind: flowGET, Status: 200, ContentType: sse, Body: []byte(": open\n\n"), Err: io.ErrUnexpectedEOF},
			endBare, false, "unexpected EOF after 0 events"},
		{"GET, retry hint then reset", flowRecord{Kind: flowGET, Status: 200, ContentType: sse, Body: []byte("retry: 1000\n\n"), Err: syscall.ECONNRESET},
			endBare, true, "connection reset by peer after 0 events, retry hint"},
		{"GET, EOF inside an event", flowRecord{Kind: flowGET, Status: 200, ContentType: sse, Body: []byte(": open\n\ndata: {\"jsonrpc\"")},
			endBare, false, "EOF inside an event after 0 events"},
		{"GET, EOF after a field without its blank line", flowRecord{Kind: flowGET, Status: 200, ContentType: sse, Body: []byte("retry: 1000\n")},
			endBare, true, "EOF inside an event after 0 events, retry hint"},
		{"streaming call, error event for its id, retry, EOF", flowRecord{Kind: flowStreamCall, ID: 1001, Status: 200, ContentType: sse, Body: []byte(progress + errEvent("1001") + "retry: 1000\n\n")},
			endRPCError, true, "error event -32603 for the id, retry hint, then EOF"},
		{"streaming call, CRLF lines and data over two lines", flowRecord{Kind: flowStreamCall, ID: 1002, Status: 200, ContentType: sse,
			Body: []byte("event: message\r\ndata: {\"jsonrpc\":\"2.0\",\r\ndata: \"id\":1002,\"error\":{\"code\":-32000,\"message\":\"x\"}}\r\n\r\n")},
			endRPCError, false, "error event -32000 for the id, then EOF"},
		{"streaming call, error event then the connection drops", flowRecord{Kind: flowStreamCall, ID: 1001, Status: 200, ContentType: sse, Body: []byte(progress + errEvent("1001")), Err: io.ErrUnexpectedEOF},
			endRPCError, false, "error event -32603 for the id, then unexpected EOF"},
		{"streaming call, error event for another id", flowRecord{Kind: flowStreamCall, ID: 1001, Status: 200, ContentType: sse, Body: []byte(progress + errEvent("null"))},
			endOther, false, "error event for another id, then EOF"},
		{"streaming call, answered", flowRecord{Kind: flowStreamCall, ID: 1001, Status: 200, ContentType: sse,
			Body: []byte(progress + "data: {\"jsonrpc\":\"2.0\",\"id\":1001,\"result\":{}}\n\n")},
			endOther, false, "answered with a result, then EOF"},
		{"streaming call, progress only, dropped", flowRecord{Kind: flowStreamCall, ID: 1001, Status: 200, ContentType: sse, Body: []byte(progress), Err: io.ErrUnexpectedEOF},
			endBare, false, "unexpected EOF after 1 events"},
		{"streaming call, progress only, clean end with hint", flowRecord{Kind: flowStreamCall, ID: 1001, Status: 200, ContentType: sse, Body: []byte(progress + "retry: 500\n\n")},
			endCleanRetry, true, "EOF after 1 events, retry hint"},
		{"JSON call, 502 with a JSON-RPC error for its id", flowRecord{Kind: flowJSONCall, ID: 2001, Status: 502, ContentType: "application/json",
			Body: []byte(`{"jsonrpc":"2.0","id":2001,"error":{"code":-32603,"message":"upstream gone"}}` + "\n")},
			endRPCError, false, "502, JSON-RPC error -32603 with the id"},
		{"JSON call, empty 502", flowRecord{Kind: flowJSONCall, ID: 2001, Status: 502},
			endBare, false, "502, empty body"},
		{"JSON call, 502 with text", flowRecord{Kind: flowJSONCall, ID: 2001, Status: 502, ContentType: "text/plain", Body: []byte("bad gateway")},
			endBare, false, "502, no JSON-RPC error in the body"},
		{"JSON call, 503 with a null id", flowRecord{Kind: flowJSONCall, ID: 2001, Status: 503, ContentType: "application/json",
			Body: []byte(`{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"x"}}`)},
			endOther, false, "503, JSON-RPC error -32000 with id null"},
		{"JSON call, no response", flowRecord{Kind: flowJSONCall, ID: 2001, Err: fmt.Errorf("Post \"http://x/mcp\": %w", io.EOF)},
			endBare, false, "no response: EOF before the response"},
		{"JSON call, answered", flowRecord{Kind: flowJSONCall, ID: 2001, Status: 200, ContentType: "application/json",
			Body: []byte(`{"jsonrpc":"2.0","id":2001,"result":{}}`)},
			endOther, false, "200, answered with a result"},
		{"JSON call, body cut", flowRecord{Kind: flowJSONCall, ID: 2001, Status: 200, ContentType: "application/json", Body: []byte(`{"jsonrpc"`), Err: io.ErrUnexpectedEOF},
			endBare, false, "200, body cut: unexpected EOF"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.rec.Open = true
			tc.rec.Ended = kill.Add(3 * time.Millisecond)
			e := classifyFlow(&tc.rec, kill, budget)
			if e.Outcome != tc.want || e.Retry != tc.retry || e.Detail != tc.detail {
				t.Errorf("got %s, retry %v, %q; want %s, retry %v, %q", e.Outcome, e.Retry, e.Detail, tc.want, tc.retry, tc.detail)
			}
			if e.AfterKill != 3*time.Millisecond || e.Kind != tc.rec.Kind || e.Status != tc.rec.Status {
				t.Errorf("end %+v", e)
			}
		})
	}

	hung := classifyFlow(&flowRecord{Kind: flowGET, Open: true, Hung: true, Status: 200, ContentType: sse, Body: []byte(": open\n\n"), Err: errors.New("context canceled"), Ended: kill.Add(7 * time.Second)}, kill, budget)
	if hung.Outcome != endHung || hung.AfterKill != budget {
		t.Errorf("hung: %+v", hung)
	}
	closed := classifyFlow(&flowRecord{Kind: flowGET, Status: 404, Ended: kill.Add(-time.Second)}, kill, budget)
	if closed.Outcome != endOther || closed.Detail != "not open at the kill (status 404)" {
		t.Errorf("not open: %+v", closed)
	}
	early := classifyFlow(&flowRecord{Kind: flowJSONCall, ID: 2001, Open: true, Status: 200, Ended: kill.Add(-time.Millisecond)}, kill, budget)
	if early.Outcome != endOther || early.Detail != "ended before the kill" {
		t.Errorf("early: %+v", early)
	}
}

// killResultOf makes a result whose flows all end as given per kind.
func killResultOf(tgt string, get, stream, json flowEnd, before, after float64) *killResult {
	r := &killResult{Target: tgt, Round: 1, OpenAtKill: 70, GoroutinesBefore: before, GoroutinesAfter: after, Recovered: 40 * time.Millisecond,
		AtKill: mockState{Streams: 50, StreamCalls: 10, JSONCalls: 10}, Before: quietness{Quiet: true}}
	for i := range 70 {
		e := get
		switch {
		case i >= 60:
			e = json
		case i >= 50:
			e = stream
		}
		e.AfterKill = time.Duration(i+1) * 100 * time.Microsecond
		r.Ends = append(r.Ends, e)
	}
	return r
}

func TestKillReport(t *testing.T) {
	cfg := killConfig{Streams: 50, StreamCalls: 10, JSONCalls: 10, Rounds: 1, Budget: 5 * time.Second, SlowTool: 30 * time.Second, Settle: 3 * time.Second}
	plain := killResultOf(targetPlain,
		flowEnd{Kind: flowGET, Outcome: endBare, Status: 200, Detail: "unexpected EOF after 0 events"},
		flowEnd{Kind: flowStreamCall, Outcome: endBare, Status: 200, Events: 1, Detail: "unexpected EOF after 1 events"},
		flowEnd{Kind: flowJSONCall, Outcome: endBare, Status: 502, Detail: "502, empty body"}, 14, 14)
	mcp := killResultOf(targetMCP,
		flowEnd{Kind: flowGET, Outcome: endCleanRetry, Status: 200, Retry: true, Detail: "EOF after 0 events, retry hint"},
		flowEnd{Kind: flowStreamCall, Outcome: endRPCError, Status: 200, Retry: true, Detail: "error event -32603 for the id, retry hint, then EOF"},
		flowEnd{Kind: flowJSONCall, Outcome: endRPCError, Status: 502, Detail: "502, JSON-RPC error -32603 with the id"}, 25, 24)

	c := countEnds(mcp.Ends, numFlowKinds)
	if c.N != 70 || c.Expected != 70 || c.By[endRPCError] != 20 || c.By[endCleanRetry] != 50 || c.Retry != 60 || c.Max != 7*time.Millisecond {
		t.Errorf("counts = %+v", c)
	}
	if c := countEnds(plain.Ends, flowJSONCall); c.N != 10 || c.By[endBare] != 10 || c.Statuses[502] != 10 || c.Expected != 0 {
		t.Errorf("plain JSON counts = %+v", c)
	}

	var b strings.Builder
	writeKillReport(&b, reportMeta{Title: "upstreamkill test", Command: "go run ./bench upstreamkill"}, cfg, []*killResult{plain, mcp})
	out := b.String()
	for _, s := range []string{
		"## upstreamkill test", "Command: `go run ./bench upstreamkill`",
		"| target | flows | open at the kill | JSON-RPC error with id | clean end with retry hint | clean end without hint | bare EOF or empty 5xx | hung (> 5s) | other | as aimed for |",
		"| plain | 70 | 70 | 0 | 0 | 0 | 70 | 0 | 0 | 0 of 70 | 3.50 / 7.00 | 14 → 14 | ok after 40.0 ms |",
		"| mcp_proxy | 70 | 70 | 20 | 50 | 0 | 0 | 0 | 0 | 70 of 70 | 3.50 / 7.00 | 25 → 24 |",
		"| mcp_proxy | JSON tools/call | 10 | 10 | 0 | 0 | 0 | 0 | 0 | 502×10 | 0 | 7.00 | 10 |",
		"| plain | streaming tools/call | 10 | 0 | 0 | 0 | 10 | 0 | 0 | 200×10 | 0 | 6.00 | 10 |",
		"- plain, JSON tools/call: `502, empty body` ×10",
		"- mcp_proxy, GET stream: `EOF after 0 events, retry hint` ×50",
		"| 70 of 70 flows end within 5s: calls with a JSON-RPC error carrying the id, GET streams cleanly with a retry hint | 70 of 70 (streaming calls 10 of 10, JSON calls 10 of 10, GET streams 50 of 50); 70 open at the kill | **met** |",
		"| Caddy's goroutines back to the baseline (after ≤ before) | 25 → 24 | **met** |",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("report lacks %q:\n%s", s, out)
		}
	}
	if strings.Contains(out, "**not met**") {
		t.Errorf("a goal failed:\n%s", out)
	}

	// A GET stream that hangs, a JSON call with an empty 502 and leaked
	// goroutines fail their goals; a second round adds a round column.
	mcp2 := killResultOf(targetMCP,
		flowEnd{Kind: flowGET, Outcome: endCleanRetry, Status: 200, Retry: true},
		flowEnd{Kind: flowStreamCall, Outcome: endRPCError, Status: 200},
		flowEnd{Kind: flowJSONCall, Outcome: endRPCError, Status: 502}, 25, 30)
	mcp2.Round = 2
	mcp2.Ends[0] = flowEnd{Kind: flowGET, Outcome: endHung, Status: 200, AfterKill: 5 * time.Second}
	mcp2.Ends[69] = flowEnd{Kind: flowJSONCall, Outcome: endBare, Status: 502}
	gs := killGoals(cfg, []*killResult{mcp, mcp2})
	if len(gs) != 8 {
		t.Fatalf("goals = %+v", gs)
	}
	for i, want := range []bool{true, true, true, true, false, false, true, false} {
		if !gs[i].Known || gs[i].Met != want {
			t.Errorf("goal %q: met %v (%s), want %v", gs[i].Goal, gs[i].Met, gs[i].Measured, want)
		}
	}
	if !strings.HasSuffix(gs[4].Goal, "(round 2)") || gs[4].Measured != "68 of 70 (streaming calls 10 of 10, JSON calls 9 of 10, GET streams 49 of 50); 70 open at the kill" {
		t.Errorf("round 2 goal: %q: %q", gs[4].Goal, gs[4].Measured)
	}
	b.Reset()
	writeKillReport(&b, reportMeta{Title: "two rounds"}, cfg, []*killResult{mcp, mcp2})
	if out := b.String(); !strings.Contains(out, "| round | target | flows |") || !strings.Contains(out, "| 2 | mcp_proxy | 70 | 70 | 19 | 49 | 0 | 1 | 1 | 0 | 68 of 70 | 3.50 / 5000 | 25 → 30 |") {
		t.Errorf("two rounds:\n%s", out)
	}
}

func TestStatusCounts(t *testing.T) {
	if got := statusCounts(map[int]int{502: 9, 0: 1, 200: 3}); got != "none×1, 200×3, 502×9" {
		t.Errorf("statusCounts = %q", got)
	}
	if got := goroutinePair(-1, 12); got != "– → 12" {
		t.Errorf("goroutinePair = %q", got)
	}
}

func TestParseFlagsUpstreamKill(t *testing.T) {
	flagOutput = io.Discard
	defer func() { flagOutput = os.Stderr }()
	o, err := parseFlags([]string{"upstreamkill"})
	if err != nil {
		t.Fatal(err)
	}
	if o.streams != 50 || o.streamCalls != 10 || o.jsonCalls != 10 || o.rounds != 1 || o.endBudget != 5*time.Second || o.slowTool != 30*time.Second || o.settle != 3*time.Second {
		t.Errorf("upstreamkill defaults: %+v", o)
	}
	if o, err = parseFlags([]string{"upstreamkill", "-rounds", "3", "-streams", "5"}); err != nil || o.rounds != 3 || o.streams != 5 {
		t.Errorf("upstreamkill -rounds 3 -streams 5: %+v, %v", o, err)
	}
	for _, bad := range [][]string{{"upstreamkill", "-slow-tool", "1s"}, {"upstreamkill", "-json-calls", "-1"}, {"upstreamkill", "-end-budget", "0s"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%q) accepted", bad)
		}
	}
}

func TestMockSlowTools(t *testing.T) {
	u := &upstream{slow: time.Millisecond}
	post := func(body, sid string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(body))
		setMCPHeaders(r.Header, sid)
		w := httptest.NewRecorder()
		u.ServeHTTP(w, r)
		return w
	}
	w := post(killInitializeBody, "")
	sid := w.Header().Get("Mcp-Session-Id")
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"protocolVersion":"2025-11-25"`) {
		t.Fatalf("initialize: %d %s", w.Code, w.Body)
	}
	if got := negotiatedVersion([]byte(`{"params":{"protocolVersion":"2099-01-01"}}`)); got != "2025-06-18" {
		t.Errorf("unknown version answered with %q", got)
	}
	req := func(kind flowKind, id int64) string {
		r, err := newKillRequest(t.Context(), kind, "http://x/mcp", sid, id)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("Mcp-Protocol-Version") != killProtocolVersion || r.Header.Get("Mcp-Session-Id") != sid {
			t.Errorf("headers %v", r.Header)
		}
		return string(b)
	}
	w = post(req(flowStreamCall, 1001), sid)
	body := w.Body.String()
	if w.Header().Get("Content-Type") != "text/event-stream" ||
		!strings.HasPrefix(body, "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1001,") ||
		!strings.HasSuffix(body, "\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1001,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"ok\"}]}}\n\n") {
		t.Errorf("slow_stream: %v\n%s", w.Header(), body)
	}
	sc := scanSSE(w.Body.Bytes(), 1001)
	if sc.events != 2 || !sc.resultForID || sc.partial {
		t.Errorf("scan of slow_stream = %+v", sc)
	}
	w = post(req(flowJSONCall, 2001), sid)
	if w.Code != 200 || w.Body.String() != `{"jsonrpc":"2.0","id":2001,"result":{"content":[{"type":"text","text":"ok"}]}}` {
		t.Errorf("slow_json: %d %s", w.Code, w.Body)
	}
	if w = post(string(toolsCallBody(nil, 5)), sid); w.Code != 200 || !strings.Contains(w.Body.String(), okMarker) {
		t.Errorf("other tool: %d %s", w.Code, w.Body)
	}
	if c := u.counts(); c.Served != 3 || c.Received != 3 || u.slowStreams.Load() != 0 || u.slowJSON.Load() != 0 {
		t.Errorf("counts %+v, running %d/%d", c, u.slowStreams.Load(), u.slowJSON.Load())
	}
	if !hasCompleteEvent([]byte("retry: 1\r\n\r\n")) || hasCompleteEvent([]byte("data: x\n")) {
		t.Error("hasCompleteEvent")
	}
}
