//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// overloadIdlePool is how many idle keep-alive connections the open-loop
// client keeps.
const overloadIdlePool = 2048

// overloadConfig is the open-loop scenario's setup.
type overloadConfig struct {
	Multiples      []float64
	Capacity       float64 // upstream capacity per second; rate = multiple × Capacity
	Duration       time.Duration
	Deadline       time.Duration // per request, from its scheduled send time
	MaxOutstanding int
	Sessions       int
}

// overloadResult is one target's figures at one multiple.
type overloadResult struct {
	Target   string
	Multiple float64
	Rate     float64 // scheduled per second
	Duration time.Duration

	Scheduled, NotSent    int64
	OK, OKSecondHalf      int64 // 200s with the expected body within the deadline
	Timeouts, Errors      int64
	BadBody               int64
	FirstError            string        // the first transport error, if any
	Status                map[int]int64 // non-200 statuses
	RetryAfter            int64         // refusals (503/429) that carried Retry-After
	Admitted, Refused     latencySummary
	MaxLag                time.Duration // worst lateness of the scheduler
	PeakOutstanding       int64
	Upstream              upstreamCounts
	UpstreamPeakQueue     int64
	Usage                 windowUsage
	Before                quietness
	Reruns                int // runs discarded because other processes disturbed them
	UpstreamDrained       bool
	UpstreamDrainDuration time.Duration
	Metrics               mcpCounters // mcp_proxy's counters over the run (every target: they move only for mcp_proxy)
	Levels                levelPeak   // mcp_proxy's service level and pressures during the run
}

// refusals is the 503s and 429s the client got.
func (r *overloadResult) refusals() int64 {
	return r.Status[http.StatusServiceUnavailable] + r.Status[http.StatusTooManyRequests]
}

// admittedByClientView is what the proxy let through as the client sees
// it: every request sent but the refusals.
func (r *overloadResult) admittedByClientView() int64 {
	return r.Scheduled - r.NotSent - r.refusals()
}

func (r *overloadResult) offered() float64 { return float64(r.Scheduled) / r.Duration.Seconds() }
func (r *overloadResult) sent() float64 {
	return float64(r.Scheduled-r.NotSent) / r.Duration.Seconds()
}
func (r *overloadResult) goodput() float64 { return float64(r.OK) / r.Duration.Seconds() }
func (r *overloadResult) goodputSecondHalf() float64 {
	return float64(r.OKSecondHalf) / (r.Duration.Seconds() / 2)
}

// schedule returns the send time of request i at rate per second.
func schedule(start time.Time, i int64, rate float64) time.Time {
	return start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
}

// recorder collects open-loop results from many goroutines.
type recorder struct {
	mu                 sync.Mutex
	admitted, refused  []time.Duration
	ok, ok2            int64
	timeouts, errs     int64
	badBody, retryAftr int64
	status             map[int]int64
	firstErr           error
}

// runOverload offers tools/call at rate per second for cfg.Duration. Each
// request has a scheduled send time; the scheduler issues it at that time
// (or as soon after as it can), and its latency and deadline count from the
// scheduled time, so a slow generator or a slow server cannot hide queueing
// (no coordinated omission).
func runOverload(ctx context.Context, env *benchEnv, tgt target, mult float64, cfg overloadConfig, profile *profileReq) (*overloadResult, error) {
	rate := mult * cfg.Capacity
	tr := newTransport(overloadIdlePool)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	n := int64(rate * cfg.Duration.Seconds())
	res := &overloadResult{Target: tgt.Name, Multiple: mult, Rate: rate, Duration: cfg.Duration, Scheduled: n}
	rec := &recorder{status: map[int]int64{}}
	var outstanding atomic.Int64
	var peak atomic.Int64
	var wg sync.WaitGroup

	res.Before = env.settle(ctx, tgt)
	sids := make([]string, cfg.Sessions)
	for i := range sids {
		sid, err := initializeRetrying(ctx, client, tgt.URL)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tgt.Name, err)
		}
		sids[i] = sid
	}
	// A long-running client population has its connections open: warm
	// as many as the window is likely to need, so that the measurement
	// does not start with a storm of TCP handshakes.
	if err := warmConnections(ctx, client, tgt.URL, sids[0], warmConns(rate)); err != nil {
		return nil, fmt.Errorf("%s: %w", tgt.Name, err)
	}
	env.up.resetPeak()
	up0 := env.up.counts()
	m0 := scrape(ctx, env.admin)
	lw := env.watchFor(tgt)
	win := startWindow(env.caddyPID(tgt))
	start := time.Now().Add(20 * time.Millisecond)
	half := start.Add(cfg.Duration / 2)
	profile.start(tgt.Name, cfg.Duration)

	var i int64
	for i < n && ctx.Err() == nil {
		now := time.Now()
		// Issue every request whose time has come.
		for ; i < n; i++ {
			at := schedule(start, i, rate)
			if at.After(now) {
				break
			}
			res.MaxLag = max(res.MaxLag, now.Sub(at))
			if outstanding.Load() >= int64(cfg.MaxOutstanding) {
				res.NotSent++
				continue
			}
			o := outstanding.Add(1)
			for p := peak.Load(); o > p && !peak.CompareAndSwap(p, o); p = peak.Load() {
			}
			sid := sids[i%int64(len(sids))]
			id := i + 1
			wg.Go(func() {
				defer outstanding.Add(-1)
				cctx, cancel := context.WithDeadline(ctx, at.Add(cfg.Deadline))
				defer cancel()
				var buf bytes.Buffer
				r := doCall(cctx, client, tgt.URL, sid, toolsCallBody(nil, id), &buf)
				lat := time.Since(at)
				rec.add(r, lat, cfg.Deadline, at.Before(half))
			})
		}
		if i < n {
			d := time.Until(schedule(start, i, rate))
			if d > 0 {
				pause(ctx, min(d, 5*time.Millisecond))
			}
		}
	}
	// Every request ends by its deadline; wait for them, bounded.
	waitCh := make(chan struct{})
	go func() { wg.Wait(); close(waitCh) }()
	select {
	case <-waitCh:
	case <-time.After(cfg.Deadline + 30*time.Second):
		return nil, fmt.Errorf("%s: requests still outstanding 30s after their deadline", tgt.Name)
	}
	res.Usage = win.stop()
	res.Levels = lw.stop()
	if err := profile.wait(); err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	// Let the upstream finish or drop what it still holds, so its counts
	// are complete.
	t0 := time.Now()
	res.UpstreamDrained = env.up.waitIdle(ctx, 20*time.Second)
	res.UpstreamDrainDuration = time.Since(t0)
	res.Upstream = env.up.counts().sub(up0)
	res.UpstreamPeakQueue = env.up.resetPeak()
	res.PeakOutstanding = peak.Load()
	res.Metrics = mcpDelta(m0, scrape(ctx, env.admin))

	res.OK, res.OKSecondHalf = rec.ok, rec.ok2
	res.Timeouts, res.Errors, res.BadBody = rec.timeouts, rec.errs, rec.badBody
	res.Status, res.RetryAfter = rec.status, rec.retryAftr
	if rec.firstErr != nil {
		res.FirstError = rec.firstErr.Error()
	}
	res.Admitted = summarize(rec.admitted)
	res.Refused = summarize(rec.refused)
	return res, nil
}

func (rec *recorder) add(r callResult, lat, deadline time.Duration, firstHalf bool) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	switch r.out {
	case outOK:
		if lat > deadline {
			rec.timeouts++
			return
		}
		rec.ok++
		if !firstHalf {
			rec.ok2++
		}
		rec.admitted = append(rec.admitted, lat)
	case outStatus:
		rec.status[r.status]++
		if r.status == http.StatusServiceUnavailable || r.status == http.StatusTooManyRequests {
			rec.refused = append(rec.refused, lat)
			if r.retryAfter {
				rec.retryAftr++
			}
		}
	case outBadBody:
		rec.badBody++
	case outTimeout:
		rec.timeouts++
	default:
		rec.errs++
		if rec.firstErr == nil {
			rec.firstErr = r.err
		}
	}
}

// runOverloadScenario runs every target at every multiple; at each
// multiple the targets run in an order rotated by the multiple's index.
func runOverloadScenario(ctx context.Context, env *benchEnv, targets []target, cfg overloadConfig, profile *profileReq, logf func(string, ...any)) ([]*overloadResult, error) {
	var out []*overloadResult
	for k, mult := range cfg.Multiples {
		for _, tgt := range rotate(targets, k) {
			res, reruns, err := measure(ctx, env, tgt, profile, func() (*overloadResult, error) {
				logf("overload: %s at %s (%.0f/s) ...", tgt.Name, fmtMultiple(mult), mult*cfg.Capacity)
				if env.restart != nil {
					if err := env.restart(); err != nil {
						return nil, fmt.Errorf("restarting caddy: %w", err)
					}
				}
				return runOverload(ctx, env, tgt, mult, cfg, profile)
			}, func(r *overloadResult) windowUsage { return r.Usage })
			if err != nil {
				return out, err
			}
			res.Reruns = reruns
			logf("  %s: goodput %.0f/s (2nd half %.0f/s), 503 %d, 429 %d, timeouts %d, errors %d, not sent %d, upstream %d recv / %d served",
				tgt.Name, res.goodput(), res.goodputSecondHalf(), res.Status[503], res.Status[429],
				res.Timeouts, res.Errors, res.NotSent, res.Upstream.Received, res.Upstream.Served)
			if res.FirstError != "" {
				logf("  first error: %s", res.FirstError)
			}
			out = append(out, res)
			if !pause(ctx, time.Second) {
				return out, ctx.Err()
			}
		}
	}
	return out, nil
}
