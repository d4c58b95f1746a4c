package resources

import (
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func writeCgroup(t *testing.T, dir, current, max string) {
	t.Helper()
	if current != "" {
		if err := os.WriteFile(filepath.Join(dir, "memory.current"), []byte(current), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if max != "" {
		if err := os.WriteFile(filepath.Join(dir, "memory.max"), []byte(max), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCgroupMonitor(t *testing.T) {
	cases := []struct {
		name, current, max string
		want               float64
	}{
		{"half", "50\n", "100\n", 0.5},
		{"over", "300\n", "100\n", 1},
		{"unlimited", "50\n", "max\n", 0},
		{"missing max", "50\n", "", 0},
		{"missing current", "", "100\n", 0},
		{"garbage", "abc\n", "100\n", 0},
		{"oversized", strings.Repeat("9", 200), "100\n", 0},
		{"zero max", "0\n", "0\n", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeCgroup(t, dir, c.current, c.max)
			m := CgroupMonitor(dir)
			if got := m.Pressure(); got != c.want {
				t.Fatalf("Pressure = %v, want %v", got, c.want)
			}
			if m.Name() != "cgroup_memory" {
				t.Fatalf("Name = %q", m.Name())
			}
		})
	}
	// The files are reread at every sample.
	dir := t.TempDir()
	writeCgroup(t, dir, "10", "100")
	m := CgroupMonitor(dir)
	writeCgroup(t, dir, "90", "100")
	if got := m.Pressure(); got != 0.9 {
		t.Fatalf("Pressure after change = %v, want 0.9", got)
	}
	if CgroupMonitor(filepath.Join(dir, "absent")).Pressure() != 0 {
		t.Fatal("absent cgroup must read 0")
	}
}

func TestHeapMonitor(t *testing.T) {
	if got := HeapMonitor(func() int64 { return 0 }).Pressure(); got != 0 {
		t.Fatalf("no limit: %v", got)
	}
	if got := HeapMonitor(nil).Pressure(); got != 0 {
		t.Fatalf("nil limit: %v", got)
	}
	if got := HeapMonitor(func() int64 { return 1 }).Pressure(); got != 1 {
		t.Fatalf("tiny limit: %v, want 1", got)
	}
	m := HeapMonitor(func() int64 { return 1 << 50 })
	if got := m.Pressure(); got <= 0 || got >= 0.01 {
		t.Fatalf("huge limit: %v, want small positive", got)
	}
	if m.Name() != "heap" {
		t.Fatalf("Name = %q", m.Name())
	}
	if n := testing.AllocsPerRun(10, func() { m.Pressure() }); n != 0 {
		t.Fatalf("HeapMonitor allocates %v times", n)
	}
}

func TestBudgetAndRatioMonitors(t *testing.T) {
	b := NewBudget(200)
	b.Reserve(50)
	if m := BudgetMonitor(b); m.Pressure() != 0.25 || m.Name() != "budget" {
		t.Fatalf("budget monitor %s %v", m.Name(), m.Pressure())
	}
	used, limit := int64(30), int64(40)
	m := RatioMonitor("connections", func() int64 { return used }, func() int64 { return limit })
	if m.Name() != "connections" || m.Pressure() != 0.75 {
		t.Fatalf("ratio monitor %s %v", m.Name(), m.Pressure())
	}
	used = 80
	if m.Pressure() != 1 {
		t.Fatal("ratio over the limit must clamp to 1")
	}
	limit = 0
	if m.Pressure() != 0 {
		t.Fatal("no limit must read 0")
	}
	if RatioMonitor("x", nil, nil).Pressure() != 0 {
		t.Fatal("nil functions must read 0")
	}
}

func TestGoroutineMonitor(t *testing.T) {
	if GoroutineMonitor(0).Pressure() != 0 {
		t.Fatal("no ceiling must read 0")
	}
	if GoroutineMonitor(1).Pressure() != 1 {
		t.Fatal("ceiling 1 must saturate")
	}
	m := GoroutineMonitor(1 << 30)
	if got := m.Pressure(); got <= 0 || got > 0.001 || m.Name() != "goroutines" {
		t.Fatalf("%s %v", m.Name(), got)
	}
}

func TestSchedLatencyMonitor(t *testing.T) {
	m := SchedLatencyMonitor(time.Millisecond)
	if m.Name() != "sched_latency" {
		t.Fatalf("Name = %q", m.Name())
	}
	for range 3 {
		var wg sync.WaitGroup
		for range 4 * runtime.GOMAXPROCS(0) {
			wg.Go(func() {
				x := 0
				for i := range 100000 {
					x += i
				}
				_ = x
			})
		}
		wg.Wait()
		if got := m.Pressure(); got < 0 || got > 1 || math.IsNaN(got) {
			t.Fatalf("Pressure = %v, outside [0, 1]", got)
		}
	}
	if SchedLatencyMonitor(0).Pressure() != 0 {
		t.Fatal("no target must read 0")
	}
}

func TestDeltaQuantile(t *testing.T) {
	inf := math.Inf(1)
	buckets := []float64{math.Inf(-1), 0, 0.001, 0.002, 0.004, inf}
	cases := []struct {
		name         string
		prev, counts []uint64
		want         float64
		ok           bool
	}{
		{"empty", []uint64{0, 0, 0, 0, 0}, []uint64{0, 0, 0, 0, 0}, 0, false},
		{"no change", []uint64{1, 2, 3, 4, 5}, []uint64{1, 2, 3, 4, 5}, 0, false},
		{"all fast", []uint64{0, 0, 0, 0, 0}, []uint64{0, 100, 0, 0, 0}, 0.001, true},
		// 99 fast, 1 slow: p99 is the 99th sample, still fast.
		{"p99 fast", []uint64{0, 0, 0, 0, 0}, []uint64{0, 99, 0, 1, 0}, 0.001, true},
		// 98 fast, 2 slow: the 99th sample is slow.
		{"p99 slow", []uint64{0, 0, 0, 0, 0}, []uint64{0, 98, 0, 2, 0}, 0.004, true},
		// Only the difference counts: the old slow samples are ignored.
		{"delta", []uint64{0, 0, 0, 50, 0}, []uint64{0, 100, 0, 50, 0}, 0.001, true},
		{"open bucket", []uint64{0, 0, 0, 0, 0}, []uint64{0, 0, 0, 0, 10}, 0.004, true},
		{"underflow", []uint64{0, 0, 0, 0, 0}, []uint64{10, 0, 0, 0, 0}, 0, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := deltaQuantile(c.prev, c.counts, buckets, 0.99)
			if got != c.want || ok != c.ok {
				t.Fatalf("= %v %v, want %v %v", got, ok, c.want, c.ok)
			}
		})
	}
	// pressure = p99 / (2 × target): p99 at the target reads 0.5.
	if p := clamp01(0.001 / (2 * 0.001)); p != 0.5 {
		t.Fatalf("formula: %v", p)
	}
}

func TestInjected(t *testing.T) {
	var zero Injected
	if zero.Name() != "injected" || zero.Pressure() != 0 {
		t.Fatal("zero value")
	}
	m := NewInjected("test")
	m.Set(0.9)
	if m.Name() != "test" || m.Pressure() != 0.9 {
		t.Fatalf("%s %v", m.Name(), m.Pressure())
	}
	m.Set(7)
	if m.Pressure() != 1 {
		t.Fatal("Set must clamp to 1")
	}
	m.Set(math.NaN())
	if m.Pressure() != 0 {
		t.Fatal("NaN must read 0")
	}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 1000 {
				m.Set(float64((i+j)%10) / 10)
				if p := m.Pressure(); p < 0 || p > 1 {
					t.Errorf("Pressure = %v", p)
				}
			}
		})
	}
	wg.Wait()
}

func TestMemoryLimit(t *testing.T) {
	dir := t.TempDir()
	writeCgroup(t, dir, "1", "4096\n")
	if got := memoryLimit(1000, dir); got != 1000 {
		t.Fatalf("runtime limit set: %d, want 1000", got)
	}
	if got := memoryLimit(math.MaxInt64, dir); got != 4096 {
		t.Fatalf("no runtime limit: %d, want the cgroup's 4096", got)
	}
	writeCgroup(t, dir, "1", "max\n")
	if got := memoryLimit(math.MaxInt64, dir); got != 0 {
		t.Fatalf("unlimited cgroup: %d, want 0", got)
	}
	if got := memoryLimit(math.MaxInt64, filepath.Join(dir, "absent")); got != 0 {
		t.Fatalf("no cgroup: %d, want 0", got)
	}
	if DefaultMemoryLimit() < 0 {
		t.Fatal("DefaultMemoryLimit negative")
	}
}

// rawMonitor reads whatever it is given, in or out of [0, 1].
type rawMonitor float64

func (rawMonitor) Name() string        { return "raw" }
func (m rawMonitor) Pressure() float64 { return float64(m) }

// TestPressureOf: a monitor's reading is clamped to [0, 1], NaN read as 0.
func TestPressureOf(t *testing.T) {
	for _, tc := range []struct{ in, want float64 }{
		{0.4, 0.4}, {-1, 0}, {7, 1}, {math.NaN(), 0}, {math.Inf(1), 1}, {math.Inf(-1), 0},
	} {
		if got := PressureOf(rawMonitor(tc.in)); got != tc.want {
			t.Errorf("PressureOf(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
