//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// postConfig is the closed-loop scenario's setup.
type postConfig struct {
	Concurrency int
	Warmup      time.Duration
	Duration    time.Duration
	Rounds      int
	Timeout     time.Duration // per request
	// List sends tools/list instead of tools/call.
	List bool
}

// postResult is one target's figures in one round.
type postResult struct {
	Target   string
	Round    int // 1-based
	OK       int64
	RPS      float64
	Lat      latencySummary // of the 200s completed in the window
	Timeouts int64
	Errors   int64 // transport errors
	BadBody  int64
	Status   map[int]int64 // non-200 statuses
	Upstream upstreamCounts
	Usage    windowUsage
	Levels   levelPeak
	Before   quietness
	Window   time.Duration // the measured duration
	Reruns   int           // measurements discarded because other processes disturbed them
	FirstErr string        // a transport error, if any
}

// caddyCPUPerReq is Caddy's CPU time per successful request over the
// window: the proxy's cost, less sensitive to machine noise than req/s.
func (r *postResult) caddyCPUPerReq() time.Duration {
	if r.OK == 0 || r.Target == targetDirect {
		return 0
	}
	return time.Duration(r.Usage.Caddy.CPU * float64(r.Window) / float64(r.OK))
}

func (r *postResult) non200() int64 {
	var n int64
	for _, c := range r.Status {
		n += c
	}
	return n
}

// maxCallsPerClient bounds every client loop besides its deadline.
const maxCallsPerClient = 50_000_000

// clientStats is what one closed-loop client collects.
type clientStats struct {
	lat                        []time.Duration
	ok, timeouts, errs, badBod int64
	status                     map[int]int64
	firstErr                   error
}

// runPost runs one target once: Concurrency clients, each with its own
// session and transport, POST tools/call in a closed loop for Warmup +
// Duration; only calls that start and finish inside the measurement window
// count.
func runPost(ctx context.Context, env *benchEnv, tgt target, cfg postConfig, round int, profile *profileReq) (*postResult, error) {
	clients := make([]*http.Client, cfg.Concurrency)
	transports := make([]*http.Transport, cfg.Concurrency)
	for i := range clients {
		transports[i] = newTransport(cfg.Concurrency)
		clients[i] = tgt.client(transports[i])
	}
	defer func() {
		for _, t := range transports {
			t.CloseIdleConnections()
		}
	}()

	// Open one session per client, all at once.
	sids := make([]string, cfg.Concurrency)
	errs := make([]error, cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() { sids[i], errs[i] = initialize(ctx, clients[i], tgt.URL) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tgt.Name, err)
		}
	}

	before := env.settle(ctx, tgt)
	start := time.Now()
	mStart := start.Add(cfg.Warmup)
	mEnd := mStart.Add(cfg.Duration)
	stats := make([]clientStats, cfg.Concurrency)
	runCtx, cancel := context.WithDeadline(ctx, mEnd.Add(cfg.Timeout))
	defer cancel()
	for i := range clients {
		stats[i] = clientStats{lat: make([]time.Duration, 0, 4096), status: map[int]int64{}}
		wg.Go(func() {
			st := &stats[i]
			var body []byte
			var buf bytes.Buffer
			for n := range int64(maxCallsPerClient) {
				t0 := time.Now()
				if !t0.Before(mEnd) || runCtx.Err() != nil {
					return
				}
				id := int64(i)*1_000_000_000 + n + 1
				marker := okMarker
				if cfg.List {
					body, marker = toolsListBody(body[:0], id), listMarker
				} else {
					body = toolsCallBody(body[:0], id)
				}
				cctx, ccancel := context.WithTimeout(runCtx, cfg.Timeout)
				res := doPost(cctx, clients[i], tgt.URL, sids[i], body, marker, &buf)
				ccancel()
				t1 := time.Now()
				if t0.Before(mStart) || t1.After(mEnd) {
					continue
				}
				switch res.out {
				case outOK:
					st.ok++
					st.lat = append(st.lat, t1.Sub(t0))
				case outStatus:
					st.status[res.status]++
				case outBadBody:
					st.badBod++
				case outTimeout:
					st.timeouts++
				default:
					st.errs++
					if st.firstErr == nil {
						st.firstErr = res.err
					}
				}
			}
		})
	}

	// Measure the process figures over the window only.
	var up0, up1 upstreamCounts
	var win *usageWindow
	var lw *levelWatch
	if sleepUntil(ctx, mStart) {
		up0 = env.up.counts()
		win = startWindow(env.caddyPID(tgt))
		lw = env.watchFor(tgt)
		profile.start(tgt.Name, cfg.Duration)
		if sleepUntil(ctx, mEnd) {
			up1 = env.up.counts()
		}
	}
	usage := win.stop()
	levels := lw.stop()
	wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	res := &postResult{Target: tgt.Name, Round: round, Status: map[int]int64{}, Upstream: up1.sub(up0), Usage: usage, Levels: levels, Before: before, Window: cfg.Duration}
	var all []time.Duration
	for i := range stats {
		st := &stats[i]
		res.OK += st.ok
		res.Timeouts += st.timeouts
		res.Errors += st.errs
		res.BadBody += st.badBod
		if st.firstErr != nil && res.FirstErr == "" {
			res.FirstErr = st.firstErr.Error()
		}
		for k, v := range st.status {
			res.Status[k] += v
		}
		all = append(all, st.lat...)
	}
	res.Lat = summarize(all)
	res.RPS = float64(res.OK) / cfg.Duration.Seconds()
	if err := profile.wait(); err != nil {
		return nil, err
	}
	return res, nil
}

// runPostScenario runs every target once per round, in an order rotated
// by the round, and returns the results by round.
func runPostScenario(ctx context.Context, env *benchEnv, targets []target, cfg postConfig, profile *profileReq, logf func(string, ...any)) ([][]*postResult, error) {
	var rounds [][]*postResult
	for r := range cfg.Rounds {
		var row []*postResult
		for _, tgt := range rotate(targets, r) {
			res, reruns, err := measure(ctx, env, tgt, profile, func() (*postResult, error) {
				logf("post: round %d/%d, %s ...", r+1, cfg.Rounds, tgt.Name)
				return runPost(ctx, env, tgt, cfg, r+1, profile)
			}, func(p *postResult) windowUsage { return p.Usage })
			if err != nil {
				return rounds, err
			}
			res.Reruns = reruns
			logf("  %s: %.0f req/s, p50 %s ms, p99 %s ms, non-200 %d, errors %d, 200 without the result %d, timeouts %d",
				tgt.Name, res.RPS, ms(res.Lat.P50), ms(res.Lat.P99), res.non200(), res.Errors, res.BadBody, res.Timeouts)
			if res.FirstErr != "" {
				logf("  first error: %s", res.FirstErr)
			}
			row = append(row, res)
			if !pause(ctx, 500*time.Millisecond) {
				return rounds, ctx.Err()
			}
		}
		rounds = append(rounds, row)
	}
	return rounds, nil
}

// postMedian is a target's median over rounds.
type postMedian struct {
	Target             string
	RPS                float64
	P50, P90, P99, Max time.Duration
	CaddyCPU           float64
	CPUPerReq          time.Duration // Caddy CPU per request
}

// medianOfRounds takes each figure's median over rounds, per target, in
// the order of targets.
func medianOfRounds(rounds [][]*postResult, targets []string) []postMedian {
	var out []postMedian
	for _, name := range targets {
		var rps, cpu []float64
		var p50, p90, p99, mx, cpr []time.Duration
		for _, row := range rounds {
			for _, r := range row {
				if r.Target != name {
					continue
				}
				rps = append(rps, r.RPS)
				cpu = append(cpu, r.Usage.Caddy.CPU)
				p50 = append(p50, r.Lat.P50)
				p90 = append(p90, r.Lat.P90)
				p99 = append(p99, r.Lat.P99)
				mx = append(mx, r.Lat.Max)
				cpr = append(cpr, r.caddyCPUPerReq())
			}
		}
		if len(rps) == 0 {
			continue
		}
		out = append(out, postMedian{
			Target: name, RPS: median(rps), CaddyCPU: median(cpu),
			P50: medianDuration(p50), P90: medianDuration(p90), P99: medianDuration(p99), Max: medianDuration(mx),
			CPUPerReq: medianDuration(cpr),
		})
	}
	return out
}

// goalCheck is the goal: mcp_proxy within 1.10× of plain
// reverse_proxy on p99 and at least 0.90× its throughput.
type goalCheck struct {
	P99Ratio, RPSRatio float64
	Holds              bool
	OK                 bool // both targets were measured
}

const (
	goalMaxP99Ratio = 1.10
	goalMinRPSRatio = 0.90
)

// The mcp_auth goal: mcp_auth in front of mcp_proxy within 1.15× of
// mcp_proxy alone on p99 and at least 0.90× its throughput.
const (
	authGoalMaxP99Ratio = 1.15
	authGoalMinRPSRatio = 0.90
)

func checkGoal(meds []postMedian) goalCheck {
	return compareMedians(meds, targetMCP, targetPlain, goalMaxP99Ratio, goalMinRPSRatio)
}

// checkAuthGoal compares mcp_auth with mcp_proxy.
func checkAuthGoal(meds []postMedian) goalCheck {
	return compareMedians(meds, targetAuth, targetMCP, authGoalMaxP99Ratio, authGoalMinRPSRatio)
}

// medianFor returns the medians of target, or nil when it did not run.
func medianFor(meds []postMedian, target string) *postMedian {
	for i := range meds {
		if meds[i].Target == target {
			return &meds[i]
		}
	}
	return nil
}

// compareMedians checks target against base: p99 at most maxP99 times
// base's, and req/s at least minRPS times base's.
func compareMedians(meds []postMedian, target, base string, maxP99, minRPS float64) goalCheck {
	b, t := medianFor(meds, base), medianFor(meds, target)
	if b == nil || t == nil || b.P99 == 0 || b.RPS == 0 {
		return goalCheck{}
	}
	g := goalCheck{
		OK:       true,
		P99Ratio: float64(t.P99) / float64(b.P99),
		RPSRatio: t.RPS / b.RPS,
	}
	g.Holds = g.P99Ratio <= maxP99 && g.RPSRatio >= minRPS
	return g
}

// sleepUntil sleeps until t; false if ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	return pause(ctx, time.Until(t))
}

// pause sleeps for d; false if ctx ended first.
func pause(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}
