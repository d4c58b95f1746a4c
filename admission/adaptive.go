package admission

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// AdaptiveConfig configures an Adaptive controller. A zero field takes its
// default.
type AdaptiveConfig struct {
	// InitialLimit is the limit before the first update. Default: 20.
	InitialLimit int
	// MinLimit is the lowest limit the controller sets. Default: 4.
	MinLimit int
	// MaxLimit is the highest limit the controller sets. Default: 1000.
	MaxLimit int
	// Smoothing is the weight s of a new estimate in the limit's moving
	// average, in (0, 1]. Default: 0.2.
	Smoothing float64
	// RTTTolerance is how much slower than the long-term RTT the short-term
	// RTT may be before the limit shrinks; at least 1. Default: 1.5.
	RTTTolerance float64
	// QueueSize is the fixed headroom added to the limit at every update, so
	// the limit can grow while latency is flat. Default: 4.
	QueueSize int
	// LongWindow is the length, in update windows, of the exponential
	// moving average that forms the long-term RTT. Default: 600.
	LongWindow int
	// WindowSamples is the least number of samples an update window holds.
	// Default: 10.
	WindowSamples int
	// UpdateInterval is the least duration of an update window. A negative
	// value removes the time condition, so the limit updates every
	// WindowSamples samples. Default: 100ms.
	UpdateInterval time.Duration
	// ProbeInterval is the number of consecutive update windows that reach
	// the limit after which the controller runs a probe window at a quarter
	// of the limit to re-measure the no-load RTT (see Adaptive). A negative
	// value disables probing. Default: 60.
	ProbeInterval int
}

// Adaptive is a gradient concurrency controller after Netflix's Gradient2: it
// compares the short-term RTT of recent requests with a long-term RTT and
// shrinks the in-flight limit when requests get slower, or grows it by a
// fixed headroom while they do not.
//
// Samples are grouped into update windows. A window closes, and the limit is
// updated, at the first sample that finds the window holding at least
// WindowSamples samples and (unless UpdateInterval is negative) at least
// UpdateInterval old. With q = QueueSize, s = Smoothing, t = RTTTolerance,
// an update computes, in this order:
//
//	shortRTT = mean RTT of the window's samples that were not dropped
//	longRTT  = mean of shortRTT over the first min(10, LongWindow) windows,
//	           then longRTT + (shortRTT − longRTT)·2/(LongWindow+1)
//	if longRTT > 2·shortRTT:      longRTT = 0.95·longRTT
//	gradient = clamp(t·longRTT/shortRTT, 0.5, 1)
//	if at least half the window's samples were dropped:
//	                              gradient = 0.5, RTTs left unchanged
//	else if no sample carries an RTT: gradient = 1, RTTs left unchanged
//	newLimit = limit·gradient + q
//	if maxInflight < limit/2:     newLimit = min(newLimit, limit)
//	limit    = limit·(1−s) + newLimit·s
//	limit    = clamp(limit, MinLimit, MaxLimit)
//
// where maxInflight is the largest inflight passed to Sample in the window:
// the limit does not grow while it is far from being used, but still
// shrinks. The decay keeps the long-term RTT from staying inflated after a
// latency spike. The published limit is the float limit rounded down. The
// fixed headroom q (rather than Envoy's sqrt(limit)) keeps growth linear and
// slow: 0.8 per window with the defaults. At equilibrium against an upstream
// that queues beyond its capacity C, the limit settles near t·C + q when the
// long-term RTT is the upstream's no-load RTT.
//
// Probing. Gradient2's long-term RTT follows the short-term RTT, so under
// sustained overload, when the limit is always full and the upstream's queue
// makes every request slower, the long-term RTT learns the queueing delay
// and the limit drifts upward without end. To anchor it, after ProbeInterval
// consecutive windows in which the limit was reached (maxInflight ≥ limit),
// the controller runs one probe window with the published limit lowered to
// max(limit/4, MinLimit) (skipped when that is not below the limit). The probe window measures the mean RTT of the
// samples that started at or below the probe limit (requests that started
// earlier are ignored; drops are ignored), closes like any window once it
// holds WindowSamples of them, then sets
//
//	longRTT = min(longRTT, probeRTT)
//
// and restores the limit without any other update. A probe window gives up,
// changing nothing, after 2·limit + 4·WindowSamples samples, which happens
// when the caller does not enforce the limit. A genuinely slower upstream is
// still learned through the moving average, at Gradient2's pace.
//
// Sample takes a mutex and does not allocate. Attach a Limiter to have every
// change of the published limit applied to it. All methods are safe for
// concurrent use.
type Adaptive struct {
	cfg   AdaptiveConfig
	cur   atomic.Int64 // the integer limit, read without the mutex
	mu    sync.Mutex
	limit float64

	longRTT   float64 // nanoseconds
	longCount int     // windows averaged into longRTT so far

	winStart    time.Time
	winSamples  int
	winDropped  int
	winRTTs     int
	winSum      float64 // nanoseconds
	winInflight int

	bound      int  // consecutive limit-bound windows
	probing    bool // the current window is a probe
	probeLimit int  // the limit applied during the probe

	target *Limiter
}

// NewAdaptive returns an Adaptive controller with cfg, defaults filled in and
// values out of range corrected (MaxLimit at least MinLimit, InitialLimit
// within them).
func NewAdaptive(cfg AdaptiveConfig) *Adaptive {
	if cfg.MinLimit <= 0 {
		cfg.MinLimit = 4
	}
	if cfg.MaxLimit <= 0 {
		cfg.MaxLimit = 1000
	}
	cfg.MaxLimit = max(cfg.MaxLimit, cfg.MinLimit)
	if cfg.InitialLimit <= 0 {
		cfg.InitialLimit = 20
	}
	cfg.InitialLimit = min(max(cfg.InitialLimit, cfg.MinLimit), cfg.MaxLimit)
	if !(cfg.Smoothing > 0 && cfg.Smoothing <= 1) {
		cfg.Smoothing = 0.2
	}
	if !(cfg.RTTTolerance >= 1) || math.IsInf(cfg.RTTTolerance, 1) {
		cfg.RTTTolerance = 1.5
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 4
	}
	if cfg.LongWindow <= 0 {
		cfg.LongWindow = 600
	}
	if cfg.WindowSamples <= 0 {
		cfg.WindowSamples = 10
	}
	if cfg.UpdateInterval == 0 {
		cfg.UpdateInterval = 100 * time.Millisecond
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = 60
	}
	a := &Adaptive{cfg: cfg, limit: float64(cfg.InitialLimit)}
	a.cur.Store(int64(cfg.InitialLimit))
	return a
}

// Config returns the configuration in use, defaults filled in.
func (a *Adaptive) Config() AdaptiveConfig { return a.cfg }

// Limit returns the published in-flight limit: the controller's limit, or
// the lowered limit while a probe window runs.
func (a *Adaptive) Limit() int { return int(a.cur.Load()) }

// Attach makes every later update call l.SetLimit with the new limit, and
// sets l's limit now. Attach(nil) detaches.
func (a *Adaptive) Attach(l *Limiter) {
	a.mu.Lock()
	a.target = l
	if l != nil {
		l.SetLimit(a.Limit())
	}
	a.mu.Unlock()
}

// Sample records a completed request: rtt is how long the upstream took,
// inflight the number of requests in flight when it started (such as
// Limiter.InFlight after acquiring), and dropped whether it failed in a way
// that says nothing about service time or signals overload (a timeout, a
// refused connection, a 502/503/504). Requests refused by the admission
// controller itself must not be sampled. Non-positive RTTs of requests that
// were not dropped are counted but carry no RTT.
func (a *Adaptive) Sample(rtt time.Duration, inflight int, dropped bool) {
	a.mu.Lock()
	a.winSamples++
	if inflight > a.winInflight {
		a.winInflight = inflight
	}
	switch {
	case dropped:
		a.winDropped++
	case rtt <= 0:
	case a.probing && inflight > a.probeLimit:
		// Started before the probe: not a low-load sample.
	default:
		a.winRTTs++
		a.winSum += float64(rtt)
	}
	if a.probing {
		a.probeSample()
	} else if a.winSamples >= a.cfg.WindowSamples {
		if a.cfg.UpdateInterval > 0 {
			now := time.Now()
			if a.winStart.IsZero() {
				a.winStart = now
			}
			if now.Sub(a.winStart) >= a.cfg.UpdateInterval {
				a.update()
				a.winStart = now
			}
		} else {
			a.update()
		}
	}
	a.mu.Unlock()
}

// probeSample closes a probe window once it holds WindowSamples low-load
// samples and is UpdateInterval old, or gives up after enough samples that
// the limit should have been applied (the caller may not enforce it). It
// requires mu.
func (a *Adaptive) probeSample() {
	done := a.winRTTs >= a.cfg.WindowSamples
	if done && a.cfg.UpdateInterval > 0 {
		now := time.Now()
		if now.Sub(a.winStart) < a.cfg.UpdateInterval {
			return
		}
		a.winStart = now
	}
	if !done && a.winSamples < 2*int(a.limit)+4*a.cfg.WindowSamples {
		return
	}
	if done {
		a.longRTT = min(a.longRTT, a.winSum/float64(a.winRTTs))
	}
	a.probing = false
	a.bound = 0
	a.resetWindow()
	a.apply(int(a.limit))
}

// update closes the window and applies the formula in the type's doc. It
// requires mu.
func (a *Adaptive) update() {
	cfg := &a.cfg
	gradient := 1.0
	switch {
	case 2*a.winDropped >= a.winSamples:
		gradient = 0.5
	case a.winRTTs > 0:
		short := a.winSum / float64(a.winRTTs)
		if a.longCount < min(10, cfg.LongWindow) {
			a.longCount++
			a.longRTT += (short - a.longRTT) / float64(a.longCount)
		} else {
			a.longRTT += (short - a.longRTT) * 2 / float64(cfg.LongWindow+1)
		}
		if a.longRTT > 2*short {
			a.longRTT *= 0.95
		}
		gradient = min(max(cfg.RTTTolerance*a.longRTT/short, 0.5), 1)
	}
	newLimit := a.limit*gradient + float64(cfg.QueueSize)
	if float64(a.winInflight) < a.limit/2 {
		newLimit = min(newLimit, a.limit)
	}
	a.limit = a.limit*(1-cfg.Smoothing) + newLimit*cfg.Smoothing
	a.limit = min(max(a.limit, float64(cfg.MinLimit)), float64(cfg.MaxLimit))

	if a.winInflight >= int(a.cur.Load()) {
		a.bound++
	} else {
		a.bound = 0
	}
	a.resetWindow()

	n := int(a.limit)
	if a.cfg.ProbeInterval > 0 && a.bound >= a.cfg.ProbeInterval && a.longCount > 0 {
		a.bound = 0
		if p := max(n/4, a.cfg.MinLimit); p < n {
			a.probing = true
			a.probeLimit = p
			n = p
		}
	}
	a.apply(n)
}

// resetWindow empties the window's accumulators. It requires mu.
func (a *Adaptive) resetWindow() {
	a.winSamples, a.winDropped, a.winRTTs, a.winSum, a.winInflight = 0, 0, 0, 0, 0
}

// apply publishes n as the current limit. It requires mu.
func (a *Adaptive) apply(n int) {
	if int64(n) != a.cur.Load() {
		a.cur.Store(int64(n))
		if a.target != nil {
			a.target.SetLimit(n)
		}
	}
}
