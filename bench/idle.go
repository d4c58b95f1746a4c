//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// idleConfig is the idle scenario's setup: Streams sessions, each with an
// idle GET SSE stream held open, through one target per fresh Caddy
// process.
type idleConfig struct {
	Streams         int
	OpenConcurrency int           // initializes and GETs in flight at once
	Settle          time.Duration // wait after the last stream of a step opened before its sample
	Hold            time.Duration // second sample this long after the last open (after the first keepalives)
	// Steps are the stream counts at which Caddy is sampled while the
	// streams are opened, ascending; the last is Streams. The streams of
	// a step open, the harness waits Settle, samples, and opens the next
	// step's. The last step's sample is the Settled sample.
	Steps []int
}

// defaultIdleSteps is the number of equal steps the streams are opened in
// when -idle-steps is not given.
const defaultIdleSteps = 5

// parseIdleSteps parses an -idle-steps list ("1000,2000,5000") for
// streams streams: positive, strictly ascending counts of at most
// streams. streams itself is appended when the list stops short of it.
// An empty list means defaultIdleSteps equal steps.
func parseIdleSteps(s string, streams int) ([]int, error) {
	if streams < 1 {
		return nil, errors.New("no streams")
	}
	var out []int
	if strings.TrimSpace(s) == "" {
		for i := 1; i <= defaultIdleSteps; i++ {
			n := (i*streams + defaultIdleSteps - 1) / defaultIdleSteps
			if len(out) == 0 || n > out[len(out)-1] {
				out = append(out, n)
			}
		}
		return out, nil
	}
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-idle-steps: %q is not a positive stream count", f)
		}
		if n > streams {
			return nil, fmt.Errorf("-idle-steps: %d is more than -streams %d", n, streams)
		}
		if len(out) > 0 && n <= out[len(out)-1] {
			return nil, fmt.Errorf("-idle-steps: %d does not ascend", n)
		}
		out = append(out, n)
	}
	if out[len(out)-1] != streams {
		out = append(out, streams)
	}
	return out, nil
}

// sessionConns is how many keep-alive connections open the sessions.
const sessionConns = 16

// memPoint is Caddy's state at one moment.
type memPoint struct {
	RSS        int64
	Goroutines float64 // -1 when the metrics were not read
	HeapInuse  float64
	StackInuse float64
	FDs        int
}

func sampleCaddy(ctx context.Context, pid int, admin string) memPoint {
	p := memPoint{Goroutines: -1, HeapInuse: -1, StackInuse: -1, FDs: countFDs(pid)}
	if s, err := readProc(pid); err == nil {
		p.RSS = s.RSS
	}
	if m := scrape(ctx, admin); m != nil {
		p.Goroutines = m.get("go_goroutines")
		p.HeapInuse = m.get("go_memstats_heap_inuse_bytes")
		p.StackInuse = m.get("go_memstats_stack_inuse_bytes")
	}
	return p
}

// idleResult is one target's figures.
type idleResult struct {
	Target     string
	Streams    int
	Opened     int
	OpenErrs   int
	FirstErr   string
	OpenTime   time.Duration // from the first GET to the last stream's headers
	TTFB       latencySummary
	Base       memPoint      // before any session
	Sessions   memPoint      // after the sessions, before the streams
	Settled    memPoint      // Settle after the last stream opened
	Held       memPoint      // Hold after the last stream opened
	Closed     memPoint      // a few seconds after every stream was closed
	Steps      []idleStep    // samples while the streams were opened, one per step
	MockOpen   int64         // streams the mock held at the Settled sample
	Alive      int64         // client streams still open at the Held sample
	EndedEarly int64         // client streams that ended before the harness closed them
	CloseTime  time.Duration // until the mock saw every stream closed
	Metrics    mcpCounters
	Levels     levelPeak
	Usage      windowUsage
	Before     quietness
	Caddyfile  string
}

// idleStep is Caddy's state at one step of opening the streams.
type idleStep struct {
	Streams int      // streams the step opened up to
	Open    int64    // client streams open at the sample
	Mem     memPoint // Settle after the step's last stream opened
}

// perStream is (b − a) / n.
func perStream(a, b, n int64) float64 {
	if n <= 0 {
		return 0
	}
	return float64(b-a) / float64(n)
}

// growth returns the per-stream RSS growth from Base to the later of the
// Settled and Held samples (the larger).
func (r *idleResult) growth() float64 {
	return max(perStream(r.Base.RSS, r.Settled.RSS, int64(r.Opened)), perStream(r.Base.RSS, r.Held.RSS, int64(r.Opened)))
}

// idleEnv is what runIdle needs to start its own Caddy.
type idleEnv struct {
	bench *benchEnv
	bin   string
	tmp   string
	// baseBin is the -baseline binary, which the baseline target's Caddy
	// is started from ("" when the baseline is not measured).
	baseBin string
	params  caddyfileParams // Upstream, blocks and Global set; ports filled per target
	// heapFile, when set, receives a heap profile of the profileTarget's
	// Caddy at the held sample, and heapFile + ".goroutines.txt" its
	// goroutines grouped by stack.
	heapFile, profileTarget string
}

// runIdle starts a fresh Caddy that serves only tgtName, opens the
// sessions and streams through it, samples it, and stops it.
func runIdle(ctx context.Context, ie *idleEnv, tgtName string, cfg idleConfig, logf func(string, ...any)) (*idleResult, error) {
	bin := ie.bin
	if tgtName == targetBase {
		// The same site and Caddyfile as mcp_proxy's, from the other build.
		if ie.baseBin == "" {
			return nil, errors.New("target baseline needs -baseline")
		}
		bin = ie.baseBin
	}
	logf("idle: starting a fresh caddy for %s from %s ...", tgtName, bin)
	solo, err := startSoloCaddy(ctx, bin, filepath.Join(ie.tmp, "idle-"+tgtName),
		func(port int, admin string) caddyfileParams { return siteOnly(ie.params, tgtName, port, admin) })
	if err != nil {
		return nil, err
	}
	defer solo.proc.stop()
	port, cf, cp := solo.port, solo.cf, solo.proc
	env := *ie.bench
	env.caddy, env.admin = cp, solo.admin
	url := fmt.Sprintf("http://127.0.0.1:%d/mcp", port)
	tgt := target{Name: tgtName, URL: url}
	res := &idleResult{Target: tgtName, Streams: cfg.Streams, Caddyfile: cf}

	// Let the fresh process settle, then take the baseline.
	if !pause(ctx, time.Second) {
		return nil, ctx.Err()
	}
	res.Before = env.settle(ctx, tgt)
	m0 := scrape(ctx, env.admin)
	res.Base = sampleCaddy(ctx, cp.pid(), env.admin)
	win := startWindow(cp.pid())
	lw := env.watchFor(tgt)

	// Sessions, over a pool of keep-alive connections that is closed
	// afterwards so only the streams hold connections.
	// Few connections, so that their buffers do not count as session cost;
	// each from its own loopback address, so that the sessions count as
	// those of sessionConns clients, none of them near its own cap.
	itr := newSpreadTransport(sessionConns, sessionConns)
	ic := &http.Client{Transport: itr}
	sids := make([]string, cfg.Streams)
	var sessErr atomic.Pointer[error]
	ssem := make(chan struct{}, sessionConns)
	var wg sync.WaitGroup
	for i := range sids {
		if ctx.Err() != nil {
			break
		}
		ssem <- struct{}{}
		wg.Go(func() {
			defer func() { <-ssem }()
			sid, err := initialize(ctx, ic, url)
			if err != nil {
				sessErr.CompareAndSwap(nil, &err)
				return
			}
			sids[i] = sid
		})
	}
	wg.Wait()
	itr.CloseIdleConnections()
	if e := sessErr.Load(); e != nil {
		win.stop()
		return nil, fmt.Errorf("%s: sessions: %w", tgtName, *e)
	}
	if !pause(ctx, time.Second) {
		return nil, ctx.Err()
	}
	res.Sessions = sampleCaddy(ctx, cp.pid(), env.admin)

	// Streams, at most OpenConcurrency opening at once; each is read by its
	// own goroutine until the harness closes it.
	open0 := ie.bench.up.streamsOpen.Load()
	str := newTransport(0)
	str.MaxIdleConnsPerHost = -1 // a stream's connection is not reused
	defer str.CloseIdleConnections()
	sc := &http.Client{Transport: str}
	sem := make(chan struct{}, max(1, cfg.OpenConcurrency))
	streamCtx, closeStreams := context.WithCancel(ctx)
	defer closeStreams()
	ttfb := make([]time.Duration, cfg.Streams)
	var opened, openErrs, alive, endedEarly atomic.Int64
	var firstErr atomic.Pointer[error]
	var readers sync.WaitGroup
	var closing atomic.Bool
	t0 := time.Now()
	var lastOpen atomic.Int64
	var paused atomic.Int64 // settle time between steps, left out of OpenTime
	steps := cfg.Steps
	if len(steps) == 0 || steps[len(steps)-1] != cfg.Streams {
		steps = append(steps[:len(steps):len(steps)], cfg.Streams)
	}
	from := 0
	for si, upto := range steps {
		for i := from; i < upto && ctx.Err() == nil; i++ {
			sem <- struct{}{}
			wg.Go(func() {
				s := time.Now()
				resp, err := openStream(streamCtx, sc, url, sids[i])
				<-sem
				if err != nil {
					openErrs.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				ttfb[i] = time.Since(s)
				opened.Add(1)
				alive.Add(1)
				lastOpen.Store(int64(time.Since(t0)) - paused.Load())
				readers.Go(func() {
					defer resp.Body.Close()
					buf := make([]byte, 512)
					for {
						if _, err := resp.Body.Read(buf); err != nil {
							break
						}
					}
					alive.Add(-1)
					if !closing.Load() {
						endedEarly.Add(1)
					}
				})
			})
		}
		wg.Wait()
		from = upto
		if si == len(steps)-1 {
			break // the last step's sample is the Settled sample below
		}
		p0 := time.Now()
		if !pause(ctx, cfg.Settle) {
			return nil, ctx.Err()
		}
		st := idleStep{Streams: upto, Open: alive.Load(), Mem: sampleCaddy(ctx, cp.pid(), env.admin)}
		paused.Add(int64(time.Since(p0)))
		res.Steps = append(res.Steps, st)
		logf("  %s: %d streams open: RSS %s, goroutines %.0f", tgtName, st.Open, humanBytes(st.Mem.RSS), st.Mem.Goroutines)
	}
	res.Opened, res.OpenErrs = int(opened.Load()), int(openErrs.Load())
	res.OpenTime = time.Duration(lastOpen.Load())
	if e := firstErr.Load(); e != nil {
		res.FirstErr = (*e).Error()
	}
	var okTTFB []time.Duration
	for _, d := range ttfb {
		if d > 0 {
			okTTFB = append(okTTFB, d)
		}
	}
	res.TTFB = summarize(okTTFB)
	logf("  %s: %d streams open (%d errors) in %.1f s; waiting %s to settle", tgtName, res.Opened, res.OpenErrs, res.OpenTime.Seconds(), cfg.Settle)

	if !pause(ctx, cfg.Settle) {
		return nil, ctx.Err()
	}
	res.MockOpen = ie.bench.up.streamsOpen.Load() - open0
	res.Settled = sampleCaddy(ctx, cp.pid(), env.admin)
	res.Steps = append(res.Steps, idleStep{Streams: cfg.Streams, Open: alive.Load(), Mem: res.Settled})
	if cfg.Hold > cfg.Settle {
		if !pause(ctx, cfg.Hold-cfg.Settle) {
			return nil, ctx.Err()
		}
	}
	res.Held = sampleCaddy(ctx, cp.pid(), env.admin)
	res.Alive = alive.Load()
	if ie.heapFile != "" && tgtName == ie.profileTarget {
		if err := fetchTo("http://"+env.admin+"/debug/pprof/heap", ie.heapFile, 30*time.Second); err != nil {
			logf("  heap profile: %v", err)
		}
		if err := fetchTo("http://"+env.admin+"/debug/pprof/goroutine?debug=1", ie.heapFile+".goroutines.txt", 30*time.Second); err != nil {
			logf("  goroutine profile: %v", err)
		}
	}
	res.Usage = win.stop()
	res.Levels = lw.stop()
	res.Metrics = mcpDelta(m0, scrape(ctx, env.admin))

	// Close every stream and check that the proxy lets go of them.
	closing.Store(true)
	c0 := time.Now()
	closeStreams()
	readers.Wait()
	res.EndedEarly = endedEarly.Load()
	for deadline := time.Now().Add(30 * time.Second); ie.bench.up.streamsOpen.Load() > open0 && time.Now().Before(deadline); {
		if !pause(ctx, 20*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
	res.CloseTime = time.Since(c0)
	if !pause(ctx, 3*time.Second) {
		return nil, ctx.Err()
	}
	res.Closed = sampleCaddy(ctx, cp.pid(), env.admin)
	if left := ie.bench.up.streamsOpen.Load() - open0; left > 0 {
		logf("  %d upstream streams still open 30 s after the clients closed theirs", left)
	}
	if !cp.alive() {
		return res, errors.New("caddy exited during the run:\n" + cp.stderr.String())
	}
	return res, nil
}

// runIdleScenario runs each target in its own fresh Caddy, one after the
// other.
func runIdleScenario(ctx context.Context, ie *idleEnv, names []string, cfg idleConfig, logf func(string, ...any)) ([]*idleResult, error) {
	var out []*idleResult
	for _, name := range names {
		if name == targetDirect {
			continue // the mock lives in the harness: its RSS is not separable
		}
		res, err := runIdle(ctx, ie, name, cfg, logf)
		if err != nil {
			return out, err
		}
		logf("  %s: RSS %s → %s (sessions %s), %.1f KiB per stream; goroutines %.0f → %.0f",
			name, humanBytes(res.Base.RSS), humanBytes(max(res.Settled.RSS, res.Held.RSS)), humanBytes(res.Sessions.RSS), res.growth()/1024, res.Base.Goroutines, res.Held.Goroutines)
		out = append(out, res)
		if !pause(ctx, 2*time.Second) {
			return out, ctx.Err()
		}
	}
	return out, nil
}
