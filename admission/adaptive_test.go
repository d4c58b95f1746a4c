package admission

import (
	"testing"
	"time"
)

// upstream is a simulated server: capacity requests run at once with base
// latency; beyond that, requests queue and latency grows in proportion.
type upstream struct {
	capacity int
	base     time.Duration
}

func (u upstream) rtt(inflight int) time.Duration {
	if inflight <= u.capacity {
		return u.base
	}
	return time.Duration(float64(u.base) * float64(inflight) / float64(u.capacity))
}

// drive feeds n samples from u under a demand far above capacity (the
// limiter is always full) and returns the range of limits seen over the
// second half, outside probe windows.
func drive(a *Adaptive, u upstream, n int) (lo, hi int) {
	demand := 10 * u.capacity
	lo, hi = 1<<31-1, 0
	for i := range n {
		inflight := min(a.Limit(), demand)
		a.Sample(u.rtt(inflight), inflight, false)
		if i >= n/2 && !a.probing {
			lo, hi = min(lo, a.Limit()), max(hi, a.Limit())
		}
	}
	return lo, hi
}

func TestAdaptiveConverges(t *testing.T) {
	for _, capacity := range []int{20, 50, 200} {
		a := NewAdaptive(AdaptiveConfig{UpdateInterval: -1})
		normal := upstream{capacity, 20 * time.Millisecond}
		check := func(phase string, lo, hi int) {
			t.Helper()
			t.Logf("capacity %d, %s: limit ranged over [%d, %d]", capacity, phase, lo, hi)
			if lo < capacity/2 || hi > 2*capacity {
				t.Errorf("capacity %d, %s: limit ranged over [%d, %d], want within [%d, %d]",
					capacity, phase, lo, hi, capacity/2, 2*capacity)
			}
		}
		lo, hi := drive(a, normal, 20000)
		check("start", lo, hi)

		// The upstream degrades: a fifth of the capacity, four times slower.
		degraded := upstream{capacity / 5, 4 * normal.base}
		lo, hi = drive(a, degraded, 20000)
		t.Logf("capacity %d, degraded to %d: limit ranged over [%d, %d]", capacity, degraded.capacity, lo, hi)
		if hi > 2*degraded.capacity+a.Config().QueueSize {
			t.Errorf("capacity %d, degraded to %d: limit up to %d", capacity, degraded.capacity, hi)
		}
		if lo < a.Config().MinLimit {
			t.Errorf("capacity %d: limit %d below MinLimit", capacity, lo)
		}

		// It recovers, and the limit climbs back.
		degradedHi := hi
		lo, hi = drive(a, normal, 20000)
		check("recovered", lo, hi)
		if lo <= degradedHi {
			t.Errorf("capacity %d: limit did not recover above %d (lowest %d)", capacity, degradedHi, lo)
		}

		// Intrinsically slower (every request three times slower, same
		// capacity): the long-term RTT follows and the limit stays near
		// capacity.
		lo, hi = drive(a, upstream{capacity, 3 * normal.base}, 40000)
		check("slower", lo, hi)
		lo, hi = drive(a, normal, 20000)
		check("back to base", lo, hi)
	}
}

func TestAdaptiveMinLimit(t *testing.T) {
	a := NewAdaptive(AdaptiveConfig{UpdateInterval: -1, MinLimit: 6})
	// An upstream that serves one request at a time: every extra request in
	// flight only adds latency. The limit sinks towards MinLimit and no
	// further.
	u := upstream{capacity: 1, base: 5 * time.Millisecond}
	lo, hi := 1<<31-1, 0
	for i := range 20000 {
		inflight := a.Limit()
		a.Sample(u.rtt(inflight), inflight, false)
		if a.Limit() < 6 {
			t.Fatalf("limit %d below MinLimit", a.Limit())
		}
		if i >= 10000 {
			lo, hi = min(lo, a.Limit()), max(hi, a.Limit())
		}
	}
	if lo != 6 || hi > 20 {
		t.Fatalf("limit ranged over [%d, %d], want from MinLimit 6 to at most 20", lo, hi)
	}
}

func TestAdaptiveMaxLimit(t *testing.T) {
	a := NewAdaptive(AdaptiveConfig{UpdateInterval: -1, MaxLimit: 50, ProbeInterval: -1})
	for range 20000 {
		a.Sample(time.Millisecond, a.Limit(), false)
	}
	if a.Limit() != 50 {
		t.Fatalf("limit %d, want MaxLimit 50", a.Limit())
	}
}

func TestAdaptiveNoGrowthWhenIdle(t *testing.T) {
	a := NewAdaptive(AdaptiveConfig{UpdateInterval: -1, InitialLimit: 40})
	for range 5000 {
		a.Sample(time.Millisecond, 5, false) // far below half the limit
	}
	if a.Limit() != 40 {
		t.Fatalf("limit %d, want 40 (no growth while mostly unused)", a.Limit())
	}
	// Still shrinks when latency rises.
	for range 1000 {
		a.Sample(10*time.Millisecond, 5, false)
	}
	if a.Limit() >= 40 {
		t.Fatalf("limit %d did not shrink", a.Limit())
	}
}

func TestAdaptiveDrops(t *testing.T) {
	a := NewAdaptive(AdaptiveConfig{UpdateInterval: -1, InitialLimit: 100})
	for range 200 {
		a.Sample(time.Millisecond, 100, false)
	}
	before := a.Limit()
	for range 200 {
		a.Sample(time.Millisecond, a.Limit(), true)
	}
	if a.Limit() >= before {
		t.Fatalf("limit %d not below %d after a run of drops", a.Limit(), before)
	}
	// A few drops mixed into good samples do not shrink it.
	a = NewAdaptive(AdaptiveConfig{UpdateInterval: -1, InitialLimit: 100, ProbeInterval: -1})
	for i := range 2000 {
		a.Sample(time.Millisecond, a.Limit(), i%10 == 0)
	}
	if a.Limit() <= 100 {
		t.Fatalf("limit %d shrank under 10%% drops with flat latency", a.Limit())
	}
}

func TestAdaptiveUpdateInterval(t *testing.T) {
	a := NewAdaptive(AdaptiveConfig{UpdateInterval: time.Hour})
	for range 1000 {
		a.Sample(time.Millisecond, a.Limit(), false)
	}
	// No window closes before it is an hour old.
	if a.Limit() != 20 {
		t.Fatalf("limit %d changed more than once within the interval", a.Limit())
	}
}

func TestAdaptiveDefaults(t *testing.T) {
	cfg := NewAdaptive(AdaptiveConfig{}).Config()
	want := AdaptiveConfig{
		InitialLimit: 20, MinLimit: 4, MaxLimit: 1000, Smoothing: 0.2, RTTTolerance: 1.5,
		QueueSize: 4, LongWindow: 600, WindowSamples: 10, UpdateInterval: 100 * time.Millisecond,
		ProbeInterval: 60,
	}
	if cfg != want {
		t.Fatalf("defaults = %+v, want %+v", cfg, want)
	}
	cfg = NewAdaptive(AdaptiveConfig{InitialLimit: 5000, MinLimit: 10, MaxLimit: 5, RTTTolerance: 0.5}).Config()
	if cfg.MaxLimit != 10 || cfg.InitialLimit != 10 || cfg.RTTTolerance != 1.5 {
		t.Fatalf("corrected = %+v", cfg)
	}
}

func TestAdaptiveAttach(t *testing.T) {
	a := NewAdaptive(AdaptiveConfig{UpdateInterval: -1, InitialLimit: 30})
	l := NewLimiter(1, 0, 0)
	a.Attach(l)
	if l.Limit() != 30 {
		t.Fatalf("Limiter limit %d after Attach, want 30", l.Limit())
	}
	u := upstream{capacity: 50, base: 10 * time.Millisecond}
	for range 5000 {
		inflight := a.Limit()
		a.Sample(u.rtt(inflight), inflight, false)
		if l.Limit() != a.Limit() {
			t.Fatalf("Limiter limit %d, controller %d", l.Limit(), a.Limit())
		}
	}
	a.Attach(nil)
	old := l.Limit()
	for range 5000 {
		a.Sample(time.Second, a.Limit(), false)
	}
	if l.Limit() != old {
		t.Fatal("a detached Limiter was changed")
	}
}

func TestAdaptiveSampleAllocs(t *testing.T) {
	a := NewAdaptive(AdaptiveConfig{})
	a.Attach(NewLimiter(1, 4, time.Second))
	if n := testing.AllocsPerRun(10000, func() { a.Sample(time.Millisecond, 10, false) }); n != 0 {
		t.Fatalf("Sample: %v allocs", n)
	}
}

func BenchmarkAdaptiveSample(b *testing.B) {
	a := NewAdaptive(AdaptiveConfig{})
	a.Attach(NewLimiter(1, 4, time.Second))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			a.Sample(time.Millisecond, 10, false)
		}
	})
}

// TestAdaptiveProbeStopsDrift shows why probing exists: without it, the
// long-term RTT learns the queueing delay under sustained overload and the
// limit drifts far above capacity.
func TestAdaptiveProbeStopsDrift(t *testing.T) {
	u := upstream{capacity: 50, base: 20 * time.Millisecond}
	_, hi := drive(NewAdaptive(AdaptiveConfig{UpdateInterval: -1, ProbeInterval: -1}), u, 40000)
	if hi <= 4*u.capacity {
		t.Errorf("without probing the limit reached only %d; the drift this test documents is gone", hi)
	}
	_, hi = drive(NewAdaptive(AdaptiveConfig{UpdateInterval: -1}), u, 40000)
	if hi > 2*u.capacity {
		t.Errorf("with probing the limit reached %d, above %d", hi, 2*u.capacity)
	}
}

func TestAdaptiveProbeWindow(t *testing.T) {
	a := NewAdaptive(AdaptiveConfig{UpdateInterval: -1, InitialLimit: 100, ProbeInterval: 5})
	// Flat latency at a full limit: after 5 windows a probe lowers the limit.
	probed := false
	for range 200 {
		a.Sample(10*time.Millisecond, a.Limit(), false)
		if a.probing {
			probed = true
			if a.Limit() != a.probeLimit || a.probeLimit >= int(a.limit) {
				t.Fatalf("probe limit %d, published %d, limit %v", a.probeLimit, a.Limit(), a.limit)
			}
		}
	}
	if !probed {
		t.Fatal("no probe window ran")
	}
	// A probe that never sees low-load samples gives up and restores the
	// limit.
	a = NewAdaptive(AdaptiveConfig{UpdateInterval: -1, InitialLimit: 100, ProbeInterval: 5})
	for a.bound < 4 {
		a.Sample(10*time.Millisecond, 1000, false)
	}
	for !a.probing {
		a.Sample(10*time.Millisecond, 1000, false)
	}
	long := a.longRTT
	for a.probing {
		a.Sample(time.Millisecond, 1000, false) // the caller ignores the limit
	}
	if a.longRTT != long || a.Limit() != int(a.limit) {
		t.Fatalf("failed probe changed longRTT %v -> %v or left limit %d (want %d)", long, a.longRTT, a.Limit(), int(a.limit))
	}
}

func TestAdaptiveNoRTT(t *testing.T) {
	a := NewAdaptive(AdaptiveConfig{UpdateInterval: -1, InitialLimit: 40, ProbeInterval: -1})
	for range 100 {
		a.Sample(0, 40, false)
	}
	if a.Limit() < 40 {
		t.Fatalf("limit %d shrank on samples without RTT", a.Limit())
	}
}
