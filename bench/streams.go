//go:build linux

package main

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Stream modes.
const (
	modeSaturation = "saturation"
	modePaced      = "paced"
)

// streamsConfig is the streams scenario's setup: Streams SSE streams,
// each with its own session; the mock emits EventSize-byte events on each
// for Duration, as fast as it can (saturation) or at Rate events per
// second in total (paced). A stream is the session's GET stream (Kind
// get) or the SSE answer to a POST tools/call of the mock's stream tool,
// which ends with the call's result (Kind answer).
type streamsConfig struct {
	Streams   int
	EventSize int
	Duration  time.Duration
	Rate      float64 // paced: events per second over all streams
	Modes     []string
	Kind      string        // kindGet or kindAnswer
	Drain     time.Duration // longest wait for the tail after the emission
	MaxLat    int           // latency samples kept per stream
}

// streamsResult is one target's figures in one mode.
type streamsResult struct {
	Target, Mode string
	Kind         string // kindGet or kindAnswer
	Streams      int
	Duration     time.Duration

	Sent                      int64 // events the mock wrote
	Received, InWindow        int64
	Gaps, Reordered, Corrupt  int64
	Comments                  int64
	CleanEnds, BrokenEnds     int
	Unfinished                int // streams cut by the harness after the drain wait
	FirstEndErr               string
	Lat                       latencySummary
	TailAfterWindow           time.Duration // last event received minus the window's end
	MockMaxLag                time.Duration
	MockLagged, MockWriteErrs int64
	Metrics                   mcpCounters
	Levels                    levelPeak
	Usage                     windowUsage
	UsageSpan                 time.Duration // how long Usage was measured
	Before                    quietness
	Reruns                    int
	// Rate is the events received per second over all streams, per
	// rateBin of the window.
	Rate []float64

	// Results and RPCErrors are the JSON-RPC responses the streams carried
	// (an answer stream ends with its call's result); FirstRPCError is
	// the first error's code and message.
	Results, RPCErrors int64
	FirstRPCError      string
}

func (r *streamsResult) deliveredPerSec() float64 {
	return float64(r.InWindow) / r.Duration.Seconds()
}

// lossless: every event the mock sent arrived once, in order, intact,
// every stream ended cleanly, and every answer stream carried its call's
// result and no error.
func (r *streamsResult) lossless() bool {
	if r.Kind == kindAnswer && (r.Results != int64(r.Streams) || r.RPCErrors != 0) {
		return false
	}
	return r.Received == r.Sent && r.Gaps == 0 && r.Reordered == 0 && r.Corrupt == 0 && r.BrokenEnds == 0 && r.Unfinished == 0
}

// cpuPerEvent is Caddy's CPU time per event received, over the time its
// CPU was measured; 0 when unknown.
func (r *streamsResult) cpuPerEvent() time.Duration {
	if r.Received == 0 || r.UsageSpan <= 0 || r.Target == targetDirect {
		return 0
	}
	return time.Duration(r.Usage.Caddy.CPU * float64(r.UsageSpan) / float64(r.Received))
}

// runStreams opens the streams through one target and runs one mode.
func runStreams(ctx context.Context, env *benchEnv, tgt target, mode string, cfg streamsConfig, profile *profileReq) (*streamsResult, error) {
	var interval time.Duration
	if mode == modePaced {
		interval = time.Duration(float64(cfg.Streams) / cfg.Rate * float64(time.Second))
	}
	plan := newStreamPlan(cfg.Duration, interval, cfg.Streams, cfg.EventSize)
	env.up.plan.Store(plan)
	defer env.up.plan.Store(nil)

	tr := newTransport(cfg.Streams + 16)
	tr.ReadBufferSize = 64 << 10
	defer tr.CloseIdleConnections()
	client := tgt.client(tr)
	streamCtx, cancelStreams := context.WithCancel(ctx)
	defer cancelStreams()

	// Open every session and stream; the mock holds each until the start.
	open0 := env.up.streamsOpen.Load()
	resps := make([]*http.Response, cfg.Streams)
	errs := make([]error, cfg.Streams)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range resps {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			sid, err := initialize(ctx, client, tgt.URL)
			if err != nil {
				errs[i] = err
				return
			}
			if cfg.Kind == kindAnswer {
				resps[i], errs[i] = openAnswer(streamCtx, client, tgt.URL, sid, int64(i)+1)
				return
			}
			resps[i], errs[i] = openStream(streamCtx, client, tgt.URL, sid)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			for _, r := range resps {
				if r != nil {
					r.Body.Close()
				}
			}
			return nil, fmt.Errorf("%s: %w", tgt.Name, err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); env.up.streamsOpen.Load()-open0 < int64(cfg.Streams); {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: only %d of %d streams reached the upstream", tgt.Name, env.up.streamsOpen.Load()-open0, cfg.Streams)
		}
		if !pause(ctx, 10*time.Millisecond) {
			return nil, ctx.Err()
		}
	}

	res := &streamsResult{Target: tgt.Name, Mode: mode, Kind: cfg.Kind, Streams: cfg.Streams, Duration: cfg.Duration}
	res.Before = env.settle(ctx, tgt)
	admin := env.adminFor(tgt)
	m0 := scrape(ctx, admin)
	lw := env.watchFor(tgt)
	win := startWindow(env.caddyPID(tgt))
	winFrom := time.Now()
	startAt := time.Now().Add(50 * time.Millisecond)
	windowEnd := startAt.Add(cfg.Duration)
	tallies := make([]*streamTally, cfg.Streams)
	payload := eventPayloadLen(cfg.EventSize)
	for i, resp := range resps {
		t := &streamTally{maxLat: cfg.MaxLat, windowFrom: startAt, windowTo: windowEnd, Bins: make([]int64, int(cfg.Duration/rateBin))}
		tallies[i] = t
		wg.Go(func() {
			defer resp.Body.Close()
			readStream(resp.Body, t, payload)
		})
	}
	plan.begin(startAt)
	profile.start(tgt.Name, cfg.Duration)
	var cutAt time.Time // when the harness cut streams still open
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Until(windowEnd) + cfg.Drain):
		cutAt = time.Now()
		cancelStreams()
		<-done
	case <-ctx.Done():
		cancelStreams()
		<-done
		return nil, ctx.Err()
	}
	res.Usage = win.stop()
	res.UsageSpan = time.Since(winFrom)
	res.Levels = lw.stop()
	if err := profile.wait(); err != nil {
		return nil, err
	}
	res.Metrics = mcpDelta(m0, scrape(ctx, admin))

	var lat []time.Duration
	var last time.Time
	res.Rate = make([]float64, int(cfg.Duration/rateBin))
	for _, t := range tallies {
		for b, n := range t.Bins {
			res.Rate[b] += float64(n) / rateBin.Seconds()
		}
		res.Received += t.Events
		res.InWindow += t.InWindow
		res.Gaps += t.Gaps
		res.Reordered += t.Reordered
		res.Corrupt += t.Corrupt
		res.Comments += t.Comments
		res.Results += t.Results
		res.RPCErrors += t.RPCErrors
		if res.FirstRPCError == "" {
			res.FirstRPCError = t.FirstRPCError
		}
		switch {
		case t.EndErr == nil:
			res.CleanEnds++
		case !cutAt.IsZero() && !t.Ended.Before(cutAt):
			res.Unfinished++
		default:
			res.BrokenEnds++
			if res.FirstEndErr == "" {
				res.FirstEndErr = t.EndErr.Error()
			}
		}
		if t.Last.After(last) {
			last = t.Last
		}
		lat = append(lat, t.Lat...)
	}
	res.Lat = summarize(lat)
	if !last.IsZero() {
		res.TailAfterWindow = max(0, last.Sub(windowEnd))
	}
	plan.mu.Lock()
	res.Sent, res.MockMaxLag, res.MockLagged, res.MockWriteErrs = plan.sent, plan.maxLag, plan.lagged, plan.writeEr
	plan.mu.Unlock()
	// Let the upstream handlers finish before the next run.
	for deadline := time.Now().Add(5 * time.Second); env.up.streamsOpen.Load() > open0 && time.Now().Before(deadline); {
		pause(ctx, 10*time.Millisecond)
	}
	return res, nil
}

// runStreamsScenario runs every mode for every target, target order
// rotated per mode.
func runStreamsScenario(ctx context.Context, env *benchEnv, targets []target, cfg streamsConfig, profile *profileReq, logf func(string, ...any)) ([]*streamsResult, error) {
	var out []*streamsResult
	for k, mode := range cfg.Modes {
		for _, tgt := range rotate(targets, k) {
			res, reruns, err := measure(ctx, env, tgt, profile, func() (*streamsResult, error) {
				logf("streams: %s, %s, %d streams ...", tgt.Name, mode, cfg.Streams)
				return runStreams(ctx, env, tgt, mode, cfg, profile)
			}, func(r *streamsResult) windowUsage { return r.Usage })
			if err != nil {
				return out, err
			}
			res.Reruns = reruns
			logf("  %s: sent %d, received %d (%.0f ev/s in the window), gaps %d, reordered %d, corrupt %d, broken %d, unfinished %d; latency p50/p99 %s/%s ms; Caddy CPU %s, %s µs/event",
				tgt.Name, res.Sent, res.Received, res.deliveredPerSec(), res.Gaps, res.Reordered, res.Corrupt, res.BrokenEnds, res.Unfinished, ms(res.Lat.P50), ms(res.Lat.P99), pct(res.Usage.Caddy.CPU), usPerEvent(res.cpuPerEvent()))
			if cfg.Kind == kindAnswer {
				logf("  %s: call results %d of %d, JSON-RPC errors %d", tgt.Name, res.Results, res.Streams, res.RPCErrors)
			}
			if res.FirstEndErr != "" {
				logf("  first broken stream: %s", res.FirstEndErr)
			}
			if res.FirstRPCError != "" {
				logf("  first JSON-RPC error: %s", res.FirstRPCError)
			}
			out = append(out, res)
			if !pause(ctx, time.Second) {
				return out, ctx.Err()
			}
		}
	}
	return out, nil
}
