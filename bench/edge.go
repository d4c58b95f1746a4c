//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The idleedge scenario: a request sent through the proxy just as the
// upstream closes the idle keep-alive connection the proxy pooled. MCP
// servers on Node's http or uvicorn close an idle connection after 5s;
// reverse_proxy keeps one for 2m, mcp_proxy for 4s unless the http
// transport's keepalive is set. Per target, side by side: Rounds rounds of
// POST, a wait of the mock's idle timeout plus a jitter in ±Jitter, and a
// second POST, each on a client connection of its own, so that only the
// proxy's upstream connection is reused. A second POST that meets the
// upstream's close fails (502) unless the proxy sends it again.

// edgeMaxJitter is the default and the largest jitter of the wait.
const edgeMaxJitter = 5 * time.Millisecond

// Bounds of the idleedge flags.
const (
	edgeMinIdle   = 10 * time.Millisecond
	edgeMaxIdle   = time.Minute
	edgeMaxRounds = 1000
)

// edgeFlags checks and completes the idleedge flags.
func edgeFlags(o *options, roundsSet bool) error {
	if !roundsSet {
		o.rounds = 70
	}
	if o.rounds < 1 || o.rounds > edgeMaxRounds {
		return fmt.Errorf("-rounds %d: idleedge wants 1..%d", o.rounds, edgeMaxRounds)
	}
	if o.upstreamIdle == 0 {
		o.upstreamIdle = 5 * time.Second
	}
	if o.upstreamIdle < edgeMinIdle || o.upstreamIdle > edgeMaxIdle {
		return fmt.Errorf("-upstream-idle %s: want %s..%s", o.upstreamIdle, edgeMinIdle, edgeMaxIdle)
	}
	if o.edgeJitter < 0 || o.edgeJitter > edgeMaxJitter || o.edgeJitter > o.upstreamIdle/2 {
		return fmt.Errorf("-edge-jitter %s: want 0..%s and at most half of -upstream-idle", o.edgeJitter, edgeMaxJitter)
	}
	if o.timeout > time.Minute {
		return errors.New("-timeout: idleedge wants at most 1m")
	}
	if o.service < 0 {
		o.service = 0
	}
	if o.capacity < 0 {
		o.capacity = 0
	}
	if o.duration == 0 {
		o.duration = o.upstreamIdle // not used; keeps the common checks
	}
	return nil
}

// edgeMCPBlock is the mcp_proxy block of the idleedge sites: the
// requests carry no session, so require_session is off unless the block
// sets it.
func edgeMCPBlock(block string) string {
	if strings.Contains(block, "require_session") {
		return block
	}
	if strings.TrimSpace(block) == "" {
		return "require_session off"
	}
	return "require_session off; " + block
}

// edgeConfig is the idleedge scenario's setup.
type edgeConfig struct {
	Rounds       int
	UpstreamIdle time.Duration // the mock's idle timeout, and the wait
	Jitter       time.Duration // the wait is UpstreamIdle + uniform(−Jitter, +Jitter)
	Seed         int64
	Timeout      time.Duration // per request
}

func edgeConfigOf(o *options) edgeConfig {
	return edgeConfig{Rounds: o.rounds, UpstreamIdle: o.upstreamIdle, Jitter: o.edgeJitter, Seed: o.seed, Timeout: o.timeout}
}

// deadline bounds a target's whole run: every round's wait and both
// requests at their timeout, and a minute more.
func (c edgeConfig) deadline() time.Duration {
	return time.Duration(c.Rounds)*(c.UpstreamIdle+c.Jitter+2*c.Timeout) + time.Minute
}

// edgeJitters returns the jitter of each of n rounds: uniform in
// [−max, +max], from a source seeded with seed, so every target (and
// every run with the same seed) waits the same.
func edgeJitters(seed int64, n int, max time.Duration) []time.Duration {
	out := make([]time.Duration, n)
	if max <= 0 {
		return out
	}
	rng := rand.New(rand.NewSource(seed))
	for i := range out {
		out[i] = time.Duration(rng.Int63n(2*int64(max)+1)) - max
	}
	return out
}

// edgeResult is one target's figures.
type edgeResult struct {
	Target string
	Rounds int // rounds completed
	// First and Second count the statuses of the rounds' first and second
	// POSTs; 0 is no response (a transport error or the timeout).
	First, Second map[int]int
	// Failed are the rounds whose second POST was not a 200, with their
	// jitter.
	Failed   []edgeFail
	FirstErr string // the first transport error, if any
	Elapsed  time.Duration
}

// edgeFail is a round whose second POST was not a 200.
type edgeFail struct {
	Round  int // 1-based
	Jitter time.Duration
	Status int
}

func (r *edgeResult) secondOther() int {
	return r.Rounds - r.Second[http.StatusOK] - r.Second[http.StatusBadGateway]
}

func (r *edgeResult) firstFailures() int {
	n := 0
	for st, c := range r.First {
		if st != http.StatusOK {
			n += c
		}
	}
	return n
}

// edgeClient sends every request on a new connection to Caddy.
func edgeClient() *http.Client {
	return &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true, DisableCompression: true}}
}

// edgePost sends one tools/list without a session, as a 2025-06-18
// client of a server without sessions does, and reads the whole answer.
// It returns the status, 0 with the error when no complete answer came.
func edgePost(ctx context.Context, c *http.Client, url string, id int64, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(toolsListBody(nil, id)))
	if err != nil {
		return 0, err
	}
	setMCPHeaders(req.Header, "")
	req.Header["Mcp-Protocol-Version"] = []string{protocolVersion}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return 0, fmt.Errorf("status %d, body cut: %w", resp.StatusCode, err)
	}
	return resp.StatusCode, nil
}

// runEdge runs every round against one target.
func runEdge(ctx context.Context, tgt target, cfg edgeConfig, logf func(string, ...any)) *edgeResult {
	res := &edgeResult{Target: tgt.Name, First: map[int]int{}, Second: map[int]int{}}
	c := edgeClient()
	defer c.CloseIdleConnections()
	jitters := edgeJitters(cfg.Seed, cfg.Rounds, cfg.Jitter)
	start := time.Now()
	note := func(err error) {
		if err != nil && res.FirstErr == "" {
			res.FirstErr = err.Error()
		}
	}
	// A round counts once both of its POSTs are done; one cut by the
	// deadline (or an interrupt) does not.
	for i := range cfg.Rounds {
		if ctx.Err() != nil {
			break
		}
		first, err1 := edgePost(ctx, c, tgt.URL, int64(2*i+1), cfg.Timeout)
		if ctx.Err() != nil || !pause(ctx, cfg.UpstreamIdle+jitters[i]) {
			break
		}
		st, err2 := edgePost(ctx, c, tgt.URL, int64(2*i+2), cfg.Timeout)
		if ctx.Err() != nil {
			break
		}
		note(err1)
		note(err2)
		res.First[first]++
		res.Second[st]++
		res.Rounds++
		if st != http.StatusOK {
			res.Failed = append(res.Failed, edgeFail{Round: i + 1, Jitter: jitters[i], Status: st})
		}
		if (i+1)%10 == 0 || i+1 == cfg.Rounds {
			logf("  %s: %d/%d rounds: second POST 200 %d, 502 %d, other %d; first POST failures %d",
				tgt.Name, i+1, cfg.Rounds, res.Second[http.StatusOK], res.Second[http.StatusBadGateway], res.secondOther(), res.firstFailures())
		}
	}
	res.Elapsed = time.Since(start)
	return res
}

// edgeRun is the idleedge results and what the machine did meanwhile.
type edgeRun struct {
	Results []*edgeResult
	Before  quietness
	Usage   windowUsage
}

// runEdgeScenario runs the targets side by side, each in a goroutine of
// its own (their upstream connection pools are apart), and returns their
// results in the order of targets. direct is left out: each request
// would open its own connection to the mock.
func runEdgeScenario(ctx context.Context, env *benchEnv, targets []target, cfg edgeConfig, logf func(string, ...any)) (*edgeRun, error) {
	var proxied []target
	for _, t := range targets {
		if t.Name == targetDirect {
			logf("idleedge: %s is not measured (no proxy, no pooled connection)", targetDirect)
			continue
		}
		proxied = append(proxied, t)
	}
	if len(proxied) == 0 {
		return nil, errors.New("idleedge measures plain, mcp_proxy and baseline; -targets has none of them")
	}
	run := &edgeRun{}
	others, ok := env.gate.wait(ctx, env.caddyPID(proxied[0]), logf)
	run.Before = quietness{OthersBefore: others, Quiet: ok}
	logf("idleedge: %d rounds per target, upstream idle %s, jitter ±%s, targets %s side by side (about %s) ...",
		cfg.Rounds, cfg.UpstreamIdle, cfg.Jitter, targetNames(proxied), (time.Duration(cfg.Rounds) * cfg.UpstreamIdle).Round(time.Second))
	rctx, cancel := context.WithTimeout(ctx, cfg.deadline())
	defer cancel()
	win := startWindow(env.caddyPID(proxied[0]))
	run.Results = make([]*edgeResult, len(proxied))
	var wg sync.WaitGroup
	for i, t := range proxied {
		wg.Go(func() { run.Results[i] = runEdge(rctx, t, cfg, logf) })
	}
	wg.Wait()
	run.Usage = win.stop()
	if err := ctx.Err(); err != nil {
		return run, err
	}
	for _, r := range run.Results {
		if r.Rounds < cfg.Rounds {
			logf("  %s: %d of %d rounds completed within %s", r.Target, r.Rounds, cfg.Rounds, cfg.deadline())
		}
	}
	return run, nil
}

// targetNames joins the targets' names with commas.
func targetNames(ts []target) string {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.Name
	}
	return strings.Join(names, ", ")
}
