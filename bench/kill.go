//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The upstreamkill scenario: flows held open through the proxy when the
// upstream process is SIGKILLed. Per target and round: a fresh mock
// upstream process and a fresh Caddy serving only that target's site;
// sessions; Streams GET SSE streams, StreamCalls tools/call whose answer
// streams as SSE (a progress event, then a long wait) and JSONCalls
// tools/call waiting for a JSON answer, one session and one connection
// each; once every flow is in progress upstream the mock is SIGKILLed and
// each flow's ending is recorded for Budget; then the mock starts again on
// the same port, as a supervisor would restart it.

// killProtocolVersion is the MCP-Protocol-Version of the scenario's
// requests: the first revision whose clients are sent `retry:` hints.
const killProtocolVersion = "2025-11-25"

// killInitializeBody opens a session at killProtocolVersion.
const killInitializeBody = `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"` + killProtocolVersion + `","capabilities":{},"clientInfo":{"name":"mcpgate-bench","version":"1.0.0"}}}`

// killConfig is the upstreamkill scenario's setup.
type killConfig struct {
	Streams     int // GET SSE streams
	StreamCalls int // tools/call answered as SSE, running at the kill
	JSONCalls   int // tools/call waiting for a JSON answer at the kill
	Rounds      int
	// Budget is how long after the kill each flow may take to end; a flow
	// still open then is hung.
	Budget time.Duration
	// SlowTool is how long the mock's slow tools take to answer: longer
	// than the time to open every flow, so every call runs at the kill.
	SlowTool time.Duration
	// Settle is the wait after every flow ended (and the mock restarted)
	// before Caddy's goroutines are counted again.
	Settle time.Duration
	// Establish is the longest wait for every flow to be in progress
	// upstream; the kill comes then anyway.
	Establish time.Duration
}

func (c killConfig) flows() int { return c.Streams + c.StreamCalls + c.JSONCalls }

// killResult is one target's figures in one round.
type killResult struct {
	Target string
	Round  int // 1-based
	Ends   []flowEnd
	// AtKill is what the mock held open just before the kill.
	AtKill mockState
	// OpenAtKill counts the flows the client had established at the kill.
	OpenAtKill int
	// Goroutines of Caddy (go_goroutines) before the flows were opened and
	// Settle after every flow ended; -1 when not scraped.
	GoroutinesBefore, GoroutinesAfter float64
	// Restart is the time from the kill until the new mock process
	// answered on the same port.
	Restart time.Duration
	// Recovered is the time from the restart until a new session opened
	// through the target; -1 when none did.
	Recovered  time.Duration
	RecoverErr string
	Before     quietness
	Caddyfile  string
}

// killCounts tallies flow endings by outcome.
type killCounts struct {
	N   int
	By  [numOutcomes]int
	Max time.Duration // longest time from the kill to a flow's end (hung: the budget)
	// Expected counts the flows that ended as mcp_proxy aims for their
	// kind (JSON-RPC error with the id for calls, clean end with a retry
	// hint for GET streams).
	Expected int
	Statuses map[int]int
	Retry    int // SSE responses that carried a `retry:` field
}

// countEnds tallies the flow endings of kind k, or of every kind when k
// is numFlowKinds.
func countEnds(ends []flowEnd, k flowKind) killCounts {
	c := killCounts{Statuses: map[int]int{}}
	for _, e := range ends {
		if k != numFlowKinds && e.Kind != k {
			continue
		}
		c.N++
		c.By[e.Outcome]++
		if e.Outcome == e.Kind.expected() {
			c.Expected++
		}
		c.Statuses[e.Status]++
		if e.Retry {
			c.Retry++
		}
		c.Max = max(c.Max, e.AfterKill)
	}
	return c
}

// endTimes are the times from the kill to each flow's end.
func endTimes(ends []flowEnd) latencySummary {
	var ds []time.Duration
	for _, e := range ends {
		if e.AfterKill >= 0 {
			ds = append(ds, e.AfterKill)
		}
	}
	return summarize(ds)
}

// killEnv is what runKill needs to start its processes.
type killEnv struct {
	bench  *benchEnv // gate, logf and busy retries; caddy and admin set per run
	bin    string    // Caddy
	self   string    // the harness binary, run as the mock process
	tmp    string
	params caddyfileParams // blocks and Global set; upstream and ports filled per run
}

// killFlow is one flow while it runs.
type killFlow struct {
	rec    flowRecord
	sid    string
	cancel context.CancelFunc
	done   chan struct{} // closed when the flow's goroutine is over
	// open is set once the client side is established: a GET stream's
	// header, a streaming call's first event, a JSON call's request sent.
	open atomic.Bool
}

// runKill runs the scenario once for tgtName.
func runKill(ctx context.Context, ke *killEnv, tgtName string, round int, cfg killConfig) (*killResult, error) {
	logf := ke.bench.logf
	upPort, err := freePort()
	if err != nil {
		return nil, err
	}
	upAddr := fmt.Sprintf("127.0.0.1:%d", upPort)
	up, err := startMockProc(ctx, ke.self, upAddr, cfg.SlowTool)
	if err != nil {
		return nil, err
	}
	// up is replaced by the restarted process; stop whichever runs.
	defer func() { up.stop() }()

	p := ke.params
	p.Upstream = upAddr
	sc, err := startSoloCaddy(ctx, ke.bin, filepath.Join(ke.tmp, fmt.Sprintf("kill-%s-%d", tgtName, round)),
		func(port int, admin string) caddyfileParams { return siteOnly(p, tgtName, port, admin) })
	if err != nil {
		return nil, err
	}
	defer sc.proc.stop()
	port, cf := sc.port, sc.cf
	logf("upstreamkill: %s, round %d: mock upstream pid %d on %s, fresh caddy on :%d", tgtName, round, up.pid(), upAddr, port)
	env := *ke.bench
	env.caddy, env.admin = sc.proc, sc.admin
	url := fmt.Sprintf("http://127.0.0.1:%d/mcp", port)
	tgt := target{Name: tgtName, URL: url}
	res := &killResult{Target: tgtName, Round: round, Caddyfile: cf, Recovered: -1}

	if !pause(ctx, time.Second) {
		return nil, ctx.Err()
	}
	res.Before = env.settle(ctx, tgt)

	// One session per flow, over a few keep-alive connections closed
	// afterwards.
	n := cfg.flows()
	itr := newTransport(sessionConns)
	ic := &http.Client{Transport: itr}
	sids := make([]string, n)
	errs := make([]error, n)
	sem := make(chan struct{}, sessionConns)
	var wg sync.WaitGroup
	for i := range sids {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			sids[i], errs[i] = killInitialize(ctx, ic, url)
		})
	}
	wg.Wait()
	itr.CloseIdleConnections()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%s: sessions: %w", tgtName, err)
	}
	// The mock closes idle keep-alive connections after mockIdleTimeout:
	// Caddy holds no upstream connection when the baseline is taken.
	if !pause(ctx, mockIdleTimeout+time.Second) {
		return nil, ctx.Err()
	}
	res.GoroutinesBefore = goroutinesOf(scrape(ctx, env.admin))

	// The flows, each on a connection of its own.
	ftr := newTransport(0)
	ftr.MaxIdleConnsPerHost = -1
	defer ftr.CloseIdleConnections()
	fc := &http.Client{Transport: ftr}
	flows := make([]*killFlow, n)
	for i := range flows {
		f := &killFlow{sid: sids[i], done: make(chan struct{})}
		switch {
		case i < cfg.Streams:
			f.rec.Kind = flowGET
		case i < cfg.Streams+cfg.StreamCalls:
			f.rec.Kind, f.rec.ID = flowStreamCall, int64(1001+i-cfg.Streams)
		default:
			f.rec.Kind, f.rec.ID = flowJSONCall, int64(2001+i-cfg.Streams-cfg.StreamCalls)
		}
		var fctx context.Context
		fctx, f.cancel = context.WithCancel(ctx)
		flows[i] = f
		go f.run(fctx, fc, url)
	}
	defer func() {
		for _, f := range flows {
			f.cancel()
			<-f.done
		}
	}()

	// Wait until every flow is established on both sides.
	var st mockState
	deadline := time.Now().Add(cfg.Establish)
	for {
		s, err := up.state(ctx)
		if err == nil {
			st = s
		}
		open := 0
		for _, f := range flows {
			if f.open.Load() {
				open++
			}
		}
		if err == nil && open == n && s.Streams >= int64(cfg.Streams) && s.StreamCalls >= int64(cfg.StreamCalls) && s.JSONCalls >= int64(cfg.JSONCalls) {
			break
		}
		if time.Now().After(deadline) {
			logf("  not every flow is in progress after %s (client side %d of %d; mock: %d streams, %d streaming calls, %d JSON calls); killing anyway",
				cfg.Establish, open, n, st.Streams, st.StreamCalls, st.JSONCalls)
			break
		}
		if !pause(ctx, 20*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
	res.AtKill = st
	openAtKill := make([]bool, n)
	for i, f := range flows {
		openAtKill[i] = f.open.Load()
		if openAtKill[i] {
			res.OpenAtKill++
		}
	}

	// Kill, and watch every flow end within the budget.
	kill := time.Now()
	up.kill()
	logf("  mock upstream SIGKILLed (%s) with %d of %d flows open", up.exitedBy(), res.OpenAtKill, n)
	end := kill.Add(cfg.Budget)
	hung := make([]bool, n)
	for i, f := range flows {
		select {
		case <-f.done:
		case <-time.After(time.Until(end)):
			hung[i] = true
		}
	}
	for i, f := range flows {
		if hung[i] {
			f.cancel()
		}
	}
	for i, f := range flows {
		select {
		case <-f.done:
		case <-time.After(10 * time.Second):
			return nil, fmt.Errorf("%s: a %s did not end 10 s after the harness closed it", tgtName, f.rec.Kind)
		}
		f.rec.Hung, f.rec.Open = hung[i], openAtKill[i]
		res.Ends = append(res.Ends, classifyFlow(&f.rec, kill, cfg.Budget))
	}

	// The supervisor's restart on the same port.
	next, err := startMockProc(ctx, ke.self, upAddr, cfg.SlowTool)
	if err != nil {
		return nil, fmt.Errorf("restarting the mock upstream: %w", err)
	}
	up = next
	res.Restart = time.Since(kill)
	restarted := time.Now()
	ftr.CloseIdleConnections()

	// A new session through the target, on a connection closed afterwards
	// (the upstream connection it leaves in Caddy's pool is closed by the
	// mock's idle timeout, well before the goroutines are counted).
	rc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	for try := 0; ; try++ {
		if _, err := killInitialize(ctx, rc, url); err == nil {
			res.Recovered = time.Since(restarted)
			break
		} else if try >= 20 {
			res.RecoverErr = err.Error()
			break
		}
		if !pause(ctx, 100*time.Millisecond) {
			return nil, ctx.Err()
		}
	}

	if !pause(ctx, max(cfg.Settle, mockIdleTimeout+time.Second)) {
		return nil, ctx.Err()
	}
	res.GoroutinesAfter = goroutinesOf(scrape(ctx, env.admin))
	if !sc.proc.alive() {
		return res, errors.New("caddy exited during the run:\n" + sc.proc.stderr.String())
	}
	return res, nil
}

// goroutinesOf returns go_goroutines of a scrape, -1 without one.
func goroutinesOf(p promSample) float64 {
	if p == nil {
		return -1
	}
	if _, ok := p["go_goroutines"]; !ok {
		return -1
	}
	return p.get("go_goroutines")
}

// run opens the flow and reads it until it ends or ctx is cancelled.
func (f *killFlow) run(ctx context.Context, c *http.Client, url string) {
	defer close(f.done)
	r := &f.rec
	req, err := newKillRequest(ctx, r.Kind, url, f.sid, r.ID)
	if err != nil {
		r.Err, r.Ended = err, time.Now()
		return
	}
	if r.Kind == flowJSONCall {
		req = req.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			WroteRequest: func(i httptrace.WroteRequestInfo) {
				if i.Err == nil {
					f.open.Store(true)
				}
			},
		}))
	}
	resp, err := c.Do(req)
	if err != nil {
		r.Err, r.Ended = err, time.Now()
		return
	}
	defer resp.Body.Close()
	r.Status, r.ContentType = resp.StatusCode, resp.Header.Get("Content-Type")
	if r.Kind == flowGET && resp.StatusCode == http.StatusOK && isEventStream(r.ContentType) {
		f.open.Store(true)
	}
	buf := make([]byte, 4<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if room := maxFlowBody - len(r.Body); room > 0 {
				r.Body = append(r.Body, buf[:min(n, room)]...)
			}
			if r.Kind == flowStreamCall && !f.open.Load() && resp.StatusCode == http.StatusOK && hasCompleteEvent(r.Body) {
				f.open.Store(true)
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				r.Err = err
			}
			break
		}
	}
	r.Ended = time.Now()
}

// hasCompleteEvent reports whether an SSE body holds a blank line, the end
// of its first event.
func hasCompleteEvent(b []byte) bool {
	return bytes.Contains(b, []byte("\n\n")) || bytes.Contains(b, []byte("\r\n\r\n"))
}

// newKillRequest makes a flow's request: a GET stream, or a tools/call of
// the slow tool for its kind.
func newKillRequest(ctx context.Context, kind flowKind, url, sid string, id int64) (*http.Request, error) {
	if kind == flowGET {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		req.Header["Accept"] = []string{"text/event-stream"}
		req.Header["Mcp-Protocol-Version"] = []string{killProtocolVersion}
		req.Header["Mcp-Session-Id"] = []string{sid}
		return req, nil
	}
	tool := toolSlowJSON
	if kind == flowStreamCall {
		tool = toolSlowStream
	}
	body := `{"jsonrpc":"2.0","id":` + strconv.FormatInt(id, 10) + `,"method":"tools/call","params":{"name":"` + tool + `","arguments":{},"_meta":{"progressToken":` + strconv.FormatInt(id, 10) + `}}}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader([]byte(body)))
	if err != nil {
		return nil, err
	}
	setMCPHeaders(req.Header, sid)
	req.Header["Mcp-Protocol-Version"] = []string{killProtocolVersion}
	return req, nil
}

// killInitialize opens a session at killProtocolVersion and returns its
// Mcp-Session-Id.
func killInitialize(ctx context.Context, c *http.Client, url string) (string, error) {
	return initializeWith(ctx, c, url, killInitializeBody)
}

// runKillScenario runs every target once per round, in an order rotated
// by the round, each against a fresh mock process and a fresh Caddy.
func runKillScenario(ctx context.Context, ke *killEnv, names []string, cfg killConfig) ([]*killResult, error) {
	logf := ke.bench.logf
	var proxied []string
	for _, n := range names {
		if n != targetDirect { // the mock is what gets killed: no proxy to measure
			proxied = append(proxied, n)
		}
	}
	if len(proxied) == 0 {
		return nil, errors.New("upstreamkill measures plain and mcp_proxy; -targets has neither")
	}
	var out []*killResult
	for round := 1; round <= cfg.Rounds; round++ {
		for _, name := range rotate(proxied, round-1) {
			res, err := runKill(ctx, ke, name, round, cfg)
			if err != nil {
				return out, err
			}
			c := countEnds(res.Ends, numFlowKinds)
			logf("  %s: %d flows: %d JSON-RPC error with id, %d clean + retry, %d clean, %d bare, %d hung, %d other; max %s ms; goroutines %.0f → %.0f",
				name, c.N, c.By[endRPCError], c.By[endCleanRetry], c.By[endClean], c.By[endBare], c.By[endHung], c.By[endOther],
				ms(c.Max), res.GoroutinesBefore, res.GoroutinesAfter)
			out = append(out, res)
			if !pause(ctx, time.Second) {
				return out, ctx.Err()
			}
		}
	}
	return out, nil
}

// killEstablish is the longest wait for every flow to be in progress.
const killEstablish = 15 * time.Second

// runUpstreamKillMain runs the upstreamkill scenario from the flags and
// writes its report.
func runUpstreamKillMain(ctx context.Context, o *options, names []string, bin, tmp string, meta reportMeta, logf func(string, ...any)) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cfg := killConfig{
		Streams: o.streams, StreamCalls: o.streamCalls, JSONCalls: o.jsonCalls, Rounds: o.rounds,
		Budget: o.endBudget, SlowTool: o.slowTool, Settle: o.settle, Establish: killEstablish,
	}
	ke := &killEnv{
		bench: &benchEnv{gate: quietGate{MaxOthers: o.quietMax, MaxWait: o.quietWait}, logf: logf, busyRetries: o.busyRetries},
		bin:   bin, self: self, tmp: tmp,
		params: caddyfileParams{PlainBlock: o.plainBlock, MCPBlock: o.mcpBlock, Global: o.global},
	}
	results, err := runKillScenario(ctx, ke, names, cfg)
	if err != nil {
		return err
	}
	meta.Title = fmt.Sprintf("upstreamkill: SIGKILL of the upstream under %d GET streams, %d streaming and %d JSON tools/call", cfg.Streams, cfg.StreamCalls, cfg.JSONCalls)
	meta.Setup = killSetup(cfg)
	var report bytes.Buffer
	writeKillReport(&report, meta, cfg, results)
	return writeOut(o, report.String(), logf)
}
