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

// burstConfig is the burst scenario's setup: Before closed-loop clients
// run for Warm, then Clients−Before more join at one instant (the jump)
// and all run for Duration. Every client has its own session and its own
// connection, both made before the jump.
type burstConfig struct {
	Before, Clients int
	Warm, Duration  time.Duration
	Timeout         time.Duration // per request
	Backoff         time.Duration // pause after a refusal before the next request; 0 = none
	OpenConcurrency int           // initializes at once while the sessions are made
	Bin             time.Duration // timeline bin width
}

// burstCall is one request's record, offsets from the jump.
type burstCall struct {
	start, end time.Duration
	out        outcome
	status     int
}

// burstCounts tallies outcomes.
type burstCounts struct {
	Issued, OK, S503, S429, OtherStatus, BadBody, Errors, Timeouts int64
}

func (c *burstCounts) add(b burstCall) {
	c.Issued++
	switch b.out {
	case outOK:
		c.OK++
	case outStatus:
		switch b.status {
		case http.StatusServiceUnavailable:
			c.S503++
		case http.StatusTooManyRequests:
			c.S429++
		default:
			c.OtherStatus++
		}
	case outBadBody:
		c.BadBody++
	case outTimeout:
		c.Timeouts++
	default:
		c.Errors++
	}
}

// answered is every outcome counted: it equals Issued when no request
// was lost.
func (c burstCounts) answered() int64 {
	return c.OK + c.S503 + c.S429 + c.OtherStatus + c.BadBody + c.Errors + c.Timeouts
}

func (c burstCounts) refused() int64 { return c.S503 + c.S429 }

// refusedShare is the refused fraction of the requests counted.
func (c burstCounts) refusedShare() float64 {
	if c.Issued == 0 {
		return 0
	}
	return float64(c.refused()) / float64(c.Issued)
}

// burstBin is one timeline bin, by completion time.
type burstBin struct {
	From time.Duration // offset from the jump
	burstCounts
}

// burstResult is one target's figures.
type burstResult struct {
	Target  string
	Clients int

	OKInWindow int64       // 200s that completed inside the burst window
	Warm       burstCounts // requests started before the jump
	After      burstCounts // requests started at or after the jump
	SecondHalf burstCounts // requests started in the second half of the burst window
	OKLat      latencySummary
	RefLat     latencySummary
	Timeline   []burstBin
	FirstErr   string
	Unfinished int64 // requests still running after the final wait (lost)

	Upstream          upstreamCounts
	UpstreamPeakQueue int64
	UpstreamDrained   bool
	Metrics           mcpCounters
	Levels            levelPeak
	Usage             windowUsage
	Before            quietness
	Reruns            int
	Duration          time.Duration
}

// runBurst runs one target: sessions first, then Before clients, then the
// jump to Clients.
func runBurst(ctx context.Context, env *benchEnv, tgt target, cfg burstConfig) (*burstResult, error) {
	clients := make([]*http.Client, cfg.Clients)
	transports := make([]*http.Transport, cfg.Clients)
	for i := range clients {
		transports[i] = newTransport(2)
		clients[i] = &http.Client{Transport: transports[i]}
	}
	defer func() {
		for _, t := range transports {
			t.CloseIdleConnections()
		}
	}()
	// Every client opens its session on its own connection, which stays
	// open for its calls.
	sids := make([]string, cfg.Clients)
	errs := make([]error, cfg.Clients)
	sem := make(chan struct{}, max(1, cfg.OpenConcurrency))
	var wg sync.WaitGroup
	for i := range clients {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			sids[i], errs[i] = initialize(ctx, clients[i], tgt.URL)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tgt.Name, err)
		}
	}

	res := &burstResult{Target: tgt.Name, Clients: cfg.Clients, Duration: cfg.Duration}
	res.Before = env.settle(ctx, tgt)
	env.up.resetPeak()
	up0 := env.up.counts()
	m0 := scrape(ctx, env.admin)
	lw := env.watchFor(tgt)
	win := startWindow(env.caddyPID(tgt))

	t0 := time.Now().Add(20 * time.Millisecond)
	jump := t0.Add(cfg.Warm)
	end := jump.Add(cfg.Duration)
	runCtx, cancel := context.WithDeadline(ctx, end.Add(cfg.Timeout+5*time.Second))
	defer cancel()
	records := make([][]burstCall, cfg.Clients)
	var firstErrMu sync.Mutex
	var firstErr error
	for i := range clients {
		startAt := t0
		if i >= cfg.Before {
			startAt = jump
		}
		wg.Go(func() {
			if !sleepUntil(runCtx, startAt) {
				return
			}
			var body []byte
			var buf bytes.Buffer
			recs := make([]burstCall, 0, 64)
			for n := range int64(maxCallsPerClient) {
				s := time.Now()
				if !s.Before(end) || runCtx.Err() != nil {
					break
				}
				body = toolsCallBody(body[:0], int64(i)*1_000_000_000+n+1)
				cctx, ccancel := context.WithTimeout(runCtx, cfg.Timeout)
				r := doCall(cctx, clients[i], tgt.URL, sids[i], body, &buf)
				ccancel()
				e := time.Now()
				recs = append(recs, burstCall{start: s.Sub(jump), end: e.Sub(jump), out: r.out, status: r.status})
				if r.out == outError && r.err != nil {
					firstErrMu.Lock()
					if firstErr == nil {
						firstErr = r.err
					}
					firstErrMu.Unlock()
				}
				if cfg.Backoff > 0 && r.out == outStatus && (r.status == 503 || r.status == 429) {
					if !sleepUntil(runCtx, time.Now().Add(cfg.Backoff)) {
						break
					}
				}
			}
			records[i] = recs
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Until(end) + cfg.Timeout + 30*time.Second):
		cancel()
		<-done
	}
	res.Usage = win.stop()
	res.Levels = lw.stop()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	res.UpstreamDrained = env.up.waitIdle(ctx, 20*time.Second)
	res.Upstream = env.up.counts().sub(up0)
	res.UpstreamPeakQueue = env.up.resetPeak()
	res.Metrics = mcpDelta(m0, scrape(ctx, env.admin))
	if firstErr != nil {
		res.FirstErr = firstErr.Error()
	}
	summarizeBurst(res, records, cfg)
	return res, nil
}

// summarizeBurst fills the counts, latencies and timeline from the
// per-client records.
func summarizeBurst(res *burstResult, records [][]burstCall, cfg burstConfig) {
	bin := cfg.Bin
	if bin <= 0 {
		bin = time.Second
	}
	half := cfg.Duration / 2
	var okLat, refLat []time.Duration
	bins := map[int]*burstBin{}
	for _, recs := range records {
		for _, c := range recs {
			if c.start < 0 {
				res.Warm.add(c)
				continue
			}
			res.After.add(c)
			if c.start >= half {
				res.SecondHalf.add(c)
			}
			switch {
			case c.out == outOK:
				okLat = append(okLat, c.end-c.start)
				if c.end <= cfg.Duration {
					res.OKInWindow++
				}
			case c.out == outStatus && (c.status == 503 || c.status == 429):
				refLat = append(refLat, c.end-c.start)
			}
			k := int(c.end / bin)
			b := bins[k]
			if b == nil {
				b = &burstBin{From: time.Duration(k) * bin}
				bins[k] = b
			}
			b.add(c)
		}
	}
	res.OKLat = summarize(okLat)
	res.RefLat = summarize(refLat)
	lo, hi := 0, -1
	for k := range bins {
		if hi < lo {
			lo, hi = k, k
		}
		lo, hi = min(lo, k), max(hi, k)
	}
	for k := lo; k <= hi; k++ {
		if b := bins[k]; b != nil {
			res.Timeline = append(res.Timeline, *b)
		} else {
			res.Timeline = append(res.Timeline, burstBin{From: time.Duration(k) * bin})
		}
	}
}

// runBurstScenario runs every target once, repeating a run other
// processes disturbed.
func runBurstScenario(ctx context.Context, env *benchEnv, targets []target, cfg burstConfig, logf func(string, ...any)) ([]*burstResult, error) {
	var out []*burstResult
	for _, tgt := range targets {
		res, reruns, err := measure(ctx, env, tgt, nil, func() (*burstResult, error) {
			logf("burst: %s, %d → %d clients ...", tgt.Name, cfg.Before, cfg.Clients)
			return runBurst(ctx, env, tgt, cfg)
		}, func(r *burstResult) windowUsage { return r.Usage })
		if err != nil {
			return out, err
		}
		res.Reruns = reruns
		a := res.After
		logf("  %s: after the jump %d issued: 200 %d, 503 %d, 429 %d, other %d, errors %d, timeouts %d (refused %.1f %%); 200 p50/p99 %s/%s ms",
			tgt.Name, a.Issued, a.OK, a.S503, a.S429, a.OtherStatus+a.BadBody, a.Errors, a.Timeouts, 100*a.refusedShare(), ms(res.OKLat.P50), ms(res.OKLat.P99))
		if res.FirstErr != "" {
			logf("  first error: %s", res.FirstErr)
		}
		out = append(out, res)
		if !pause(ctx, 2*time.Second) {
			return out, ctx.Err()
		}
	}
	return out, nil
}
