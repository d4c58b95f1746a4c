package admission

import (
	"math"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"
)

type fakeMonitor struct {
	name string
	v    atomic.Uint64
}

func (f *fakeMonitor) Name() string      { return f.name }
func (f *fakeMonitor) Pressure() float64 { return math.Float64frombits(f.v.Load()) }
func (f *fakeMonitor) set(v float64)     { f.v.Store(math.Float64bits(v)) }

func TestLevelsUpAndDown(t *testing.T) {
	mem := &fakeMonitor{name: "memory"}
	conns := &fakeMonitor{name: "connections"}
	var changes []Level
	m, err := NewLoadManager(DefaultThresholds, func(_, to Level, _ float64, _ bool) { changes = append(changes, to) }, mem, conns)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(0, 0)
	steps := []struct {
		mem, conns float64
		want       Level
	}{
		{0.1, 0.1, LevelFull},
		{0.70, 0.1, LevelDegraded},
		{0.1, 0.86, LevelEssential}, // the highest any monitor asks for
		{0.96, 0.2, LevelProtective},
		{0.91, 0.2, LevelProtective}, // within hysteresis of 0.95
		{0.89, 0.2, LevelEssential},
		{0.81, 0.2, LevelEssential}, // within hysteresis of 0.85
		{0.79, 0.2, LevelDegraded},
		{0.66, 0.2, LevelDegraded},
		{0.64, 0.2, LevelFull},
		{1.5, math.NaN(), LevelProtective}, // clamped
		{-1, 0, LevelFull},
	}
	for i, s := range steps {
		mem.set(s.mem)
		conns.set(s.conns)
		if got := m.Sample(now); got != s.want || m.Level() != s.want {
			t.Fatalf("step %d (%v, %v): level %v, want %v", i, s.mem, s.conns, got, s.want)
		}
	}
	want := []Level{LevelDegraded, LevelEssential, LevelProtective, LevelEssential, LevelDegraded, LevelFull, LevelProtective, LevelFull}
	if len(changes) != len(want) {
		t.Fatalf("changes %v, want %v", changes, want)
	}
	for i := range want {
		if changes[i] != want[i] {
			t.Fatalf("changes %v, want %v", changes, want)
		}
	}
}

// TestLevelsNoFlapping drives the pressure with ±0.02 noise around each
// threshold: the level changes once on the way up and never flaps.
func TestLevelsNoFlapping(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, th := range []float64{0.70, 0.85, 0.95} {
		mon := &fakeMonitor{name: "noise"}
		changes := 0
		m, _ := NewLoadManager(DefaultThresholds, func(_, _ Level, _ float64, _ bool) { changes++ }, mon)
		mon.set(th + 0.001)
		m.Sample(time.Unix(0, 0))
		start := m.Level()
		changes = 0
		for range 10_000 {
			mon.set(th + (rng.Float64()*2-1)*0.02)
			m.Sample(time.Unix(0, 0))
		}
		if changes != 0 || m.Level() != start {
			t.Errorf("threshold %v: %d level changes under noise (ended at %v, started at %v)", th, changes, m.Level(), start)
		}
	}
}

func TestLevelPin(t *testing.T) {
	mon := &fakeMonitor{name: "m"}
	m, _ := NewLoadManager(DefaultThresholds, nil, mon)
	now := time.Unix(100, 0)
	m.Pin(LevelEssential, now.Add(time.Minute), now)
	if m.Level() != LevelEssential {
		t.Fatalf("pinned level %v", m.Level())
	}
	mon.set(0.99)
	if l := m.Sample(now.Add(time.Second)); l != LevelEssential {
		t.Fatalf("pin ignored: %v", l)
	}
	if st := m.Status(); !st.Pinned || st.Computed != LevelProtective {
		t.Fatalf("status %+v", st)
	}
	mon.set(0)
	if l := m.Sample(now.Add(2 * time.Minute)); l != LevelFull {
		t.Fatalf("pin did not expire: %v", l)
	}
	m.Pin(LevelProtective, now.Add(time.Hour), now)
	m.Unpin(now)
	if m.Level() != LevelFull {
		t.Fatalf("unpin: %v", m.Level())
	}
}

func TestThresholdsValidate(t *testing.T) {
	for _, th := range []Thresholds{
		{0.9, 0.8, 0.95, 0.05}, {0, 0.5, 0.9, 0}, {0.5, 0.6, 1.1, 0}, {0.5, 0.6, 0.7, 0.5},
	} {
		if th.Validate() == nil {
			t.Errorf("%+v accepted", th)
		}
	}
	if DefaultThresholds.Validate() != nil {
		t.Error("defaults refused")
	}
	if l, err := ParseLevel("essential"); err != nil || l != LevelEssential {
		t.Errorf("ParseLevel: %v %v", l, err)
	}
	if _, err := ParseLevel("panic"); err == nil {
		t.Error("ParseLevel accepted junk")
	}
}

func BenchmarkLevel(b *testing.B) {
	m, _ := NewLoadManager(DefaultThresholds, nil)
	b.ReportAllocs()
	for b.Loop() {
		_ = m.Level()
	}
}
