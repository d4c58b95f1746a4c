package resources

import (
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Monitor reports how close one resource is to its limit as a pressure in
// [0, 1]: 0 is no pressure (or no limit known), 1 is at or past the limit.
// The load manager polls its monitors and takes the maximum. Pressure is
// cheap enough to call a few times a second and safe for concurrent use.
type Monitor interface {
	// Name identifies the monitor in metrics and the status API.
	Name() string
	// Pressure returns the current pressure in [0, 1].
	Pressure() float64
}

// PressureOf reads m's pressure clamped to [0, 1], NaN as 0, so a monitor
// that breaks its contract cannot make the service level, or the status
// that shows it, unreadable.
func PressureOf(m Monitor) float64 { return clamp01(m.Pressure()) }

// DefaultCgroupRoot is the directory CgroupMonitor and DefaultMemoryLimit
// read the cgroup v2 memory files from: the process's own cgroup when the
// container runtime mounts its cgroup namespace there.
const DefaultCgroupRoot = "/sys/fs/cgroup"

// funcMonitor is a Monitor made of a name and a function.
type funcMonitor struct {
	name string
	f    func() float64
}

func (m *funcMonitor) Name() string      { return m.name }
func (m *funcMonitor) Pressure() float64 { return clamp01(m.f()) }

// HeapMonitor returns a monitor named "heap" of the Go runtime's memory
// against limit(), in bytes; its pressure is 0 when limit() is zero or
// less (or limit is nil). limit is read at every sample, so a limit changed at run time is
// followed; DefaultMemoryLimit is the usual choice.
//
// The memory counted is what the process needs, not what it has mapped:
// the live heap as of the last garbage collection ("/gc/heap/live:bytes")
// plus goroutine stacks ("/memory/classes/heap/stacks:bytes") and runtime
// metadata ("/memory/classes/metadata/other:bytes"). Garbage does not
// count, so pressure falls as soon as the load that made it is gone. Since
// the live heap is only measured by a collection, and an idle process
// collects rarely, a sample that reads 0.7 or more forces a collection (at
// most every 5 seconds) and measures again. Reading the metrics does not
// stop the world and does not allocate.
func HeapMonitor(limit func() int64) Monitor {
	m := &heapMonitor{limit: limit}
	m.samples[0].Name = "/gc/heap/live:bytes"
	m.samples[1].Name = "/memory/classes/heap/stacks:bytes"
	m.samples[2].Name = "/memory/classes/metadata/other:bytes"
	return m
}

// heapGCThreshold is the pressure at which HeapMonitor forces a collection
// to measure the live heap again, and heapGCInterval how often at most.
const (
	heapGCThreshold = 0.7
	heapGCInterval  = 5 * time.Second
)

type heapMonitor struct {
	limit   func() int64
	mu      sync.Mutex
	samples [3]metrics.Sample // guarded by mu
	lastGC  time.Time         // guarded by mu
}

func (m *heapMonitor) Name() string { return "heap" }

func (m *heapMonitor) Pressure() float64 {
	if m.limit == nil {
		return 0
	}
	limit := m.limit()
	if limit <= 0 {
		return 0
	}
	p := float64(m.bytes()) / float64(limit)
	if p >= heapGCThreshold {
		m.mu.Lock()
		collect := time.Since(m.lastGC) >= heapGCInterval
		if collect {
			m.lastGC = time.Now()
		}
		m.mu.Unlock()
		if collect {
			runtime.GC()
			p = float64(m.bytes()) / float64(limit)
		}
	}
	return clamp01(p)
}

// bytes returns the memory HeapMonitor counts.
func (m *heapMonitor) bytes() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	metrics.Read(m.samples[:])
	return uint64Value(m.samples[0]) + uint64Value(m.samples[1]) + uint64Value(m.samples[2])
}

func uint64Value(s metrics.Sample) uint64 {
	if s.Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s.Value.Uint64()
}

// CgroupMonitor returns a monitor named "cgroup_memory" of the cgroup v2
// files memory.current ÷ memory.max in the directory root (empty:
// DefaultCgroupRoot). Its pressure is 0 when either file is missing or
// unreadable, or memory.max is "max" (no limit). Both files are read at
// every sample, at most 64 bytes each. memory.current counts the page
// cache of the cgroup too, which the kernel reclaims before it kills, so
// this monitor reads higher than the process's own memory.
func CgroupMonitor(root string) Monitor {
	if root == "" {
		root = DefaultCgroupRoot
	}
	current := filepath.Join(root, "memory.current")
	limit := filepath.Join(root, "memory.max")
	return &funcMonitor{name: "cgroup_memory", f: func() float64 {
		lim, ok := readCgroupInt(limit)
		if !ok || lim <= 0 {
			return 0
		}
		cur, ok := readCgroupInt(current)
		if !ok {
			return 0
		}
		return float64(cur) / float64(lim)
	}}
}

// readCgroupInt reads a cgroup v2 single-value file holding a byte count.
// It reports false for a missing or malformed file and for "max".
func readCgroupInt(path string) (int64, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	var buf [64]byte
	n, err := io.ReadFull(f, buf[:])
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return 0, false
	}
	s := strings.TrimSpace(string(buf[:n]))
	if s == "" || s == "max" {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, false
	}
	return v, true
}

// BudgetMonitor returns a monitor named "budget" of b's bytes in use
// against its limit (Budget.Pressure).
func BudgetMonitor(b *Budget) Monitor {
	return &funcMonitor{name: "budget", f: b.Pressure}
}

// RatioMonitor returns a monitor called name of used() ÷ limit(), such as
// open connections against the connection limit. Its pressure is 0 when
// limit() is zero or less, or either function is nil.
func RatioMonitor(name string, used, limit func() int64) Monitor {
	return &funcMonitor{name: name, f: func() float64 {
		if used == nil || limit == nil {
			return 0
		}
		l := limit()
		if l <= 0 {
			return 0
		}
		return float64(used()) / float64(l)
	}}
}

// GoroutineMonitor returns a monitor named "goroutines" of
// runtime.NumGoroutine() ÷ ceiling. Its pressure is 0 when ceiling is zero
// or less.
func GoroutineMonitor(ceiling int) Monitor {
	return &funcMonitor{name: "goroutines", f: func() float64 {
		if ceiling <= 0 {
			return 0
		}
		return float64(runtime.NumGoroutine()) / float64(ceiling)
	}}
}

// SchedLatencyMonitor returns a monitor named "sched_latency" of how long
// runnable goroutines wait for a CPU, against target.
//
// At each sample it reads the runtime/metrics histogram
// "/sched/latencies:seconds", subtracts the counts of the previous sample
// (the first sample counts since the process started), and takes the 99th
// percentile p99 of that difference, as the upper bound of the bucket it
// falls in (the lower bound for the open last bucket). The pressure is
//
//	clamp(p99 ÷ (2 × target), 0, 1)
//
// so p99 at target reads 0.5 and p99 at twice the target or more reads 1.
// A sample with no scheduling since the previous one reads 0, and so does
// a target of zero or less. Samples are serialized; the monitor keeps one
// copy of the histogram's counts (a few hundred buckets).
func SchedLatencyMonitor(target time.Duration) Monitor {
	m := &schedMonitor{target: target.Seconds()}
	m.sample[0].Name = "/sched/latencies:seconds"
	// The first sample is a baseline: the histogram counts since the
	// process started, which says nothing about now.
	m.p99()
	return m
}

type schedMonitor struct {
	target float64 // seconds
	mu     sync.Mutex
	sample [1]metrics.Sample // guarded by mu
	prev   []uint64          // counts at the previous sample; guarded by mu
}

func (m *schedMonitor) Name() string { return "sched_latency" }

func (m *schedMonitor) Pressure() float64 {
	if m.target <= 0 {
		return 0
	}
	p99, ok := m.p99()
	if !ok {
		return 0
	}
	return clamp01(p99 / (2 * m.target))
}

// p99 samples the histogram and returns the 99th percentile latency in
// seconds since the previous sample, and false when there was none.
func (m *schedMonitor) p99() (float64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	metrics.Read(m.sample[:])
	if m.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0, false
	}
	h := m.sample[0].Value.Float64Histogram()
	if len(m.prev) != len(h.Counts) {
		m.prev = make([]uint64, len(h.Counts))
	}
	p99, ok := deltaQuantile(m.prev, h.Counts, h.Buckets, 0.99)
	copy(m.prev, h.Counts)
	return p99, ok
}

// deltaQuantile returns the q quantile of the histogram counts − prev
// (bucket i spans buckets[i] to buckets[i+1]) as the upper bound of the
// bucket it falls in, or its lower bound for an open last bucket, never
// below 0. It reports false when counts − prev is empty.
func deltaQuantile(prev, counts []uint64, buckets []float64, q float64) (float64, bool) {
	var total uint64
	for i, c := range counts {
		total += c - min(prev[i], c)
	}
	if total == 0 {
		return 0, false
	}
	rank := max(uint64(math.Ceil(q*float64(total))), 1)
	var seen uint64
	for i, c := range counts {
		seen += c - min(prev[i], c)
		if seen >= rank {
			v := buckets[i+1]
			if math.IsInf(v, 1) {
				v = buckets[i]
			}
			return max(v, 0), true
		}
	}
	return 0, false
}

// Injected is a monitor whose pressure is set by hand, for tests that
// drive service levels deterministically (like Envoy's injected resource
// monitor). The zero value reads 0 and is named "injected". It is safe for
// concurrent use.
type Injected struct {
	name string
	bits atomic.Uint64
}

// NewInjected returns an injected monitor called name reading 0.
func NewInjected(name string) *Injected { return &Injected{name: name} }

// Name returns the monitor's name.
func (m *Injected) Name() string {
	if m.name == "" {
		return "injected"
	}
	return m.name
}

// Set makes the monitor read v, clamped to [0, 1].
func (m *Injected) Set(v float64) { m.bits.Store(math.Float64bits(clamp01(v))) }

// Pressure returns the value last Set.
func (m *Injected) Pressure() float64 { return math.Float64frombits(m.bits.Load()) }

// DefaultMemoryLimit returns the memory limit the process should stay
// under, in bytes: the Go runtime's soft memory limit when one is set
// (GOMEMLIMIT or debug.SetMemoryLimit), else the cgroup v2 memory.max under
// DefaultCgroupRoot, else 0 (unknown).
func DefaultMemoryLimit() int64 {
	return memoryLimit(debug.SetMemoryLimit(-1), DefaultCgroupRoot)
}

func memoryLimit(runtimeLimit int64, cgroupRoot string) int64 {
	if runtimeLimit > 0 && runtimeLimit != math.MaxInt64 {
		return runtimeLimit
	}
	if v, ok := readCgroupInt(filepath.Join(cgroupRoot, "memory.max")); ok && v > 0 {
		return v
	}
	return 0
}

// Interface guards.
var (
	_ Monitor = (*funcMonitor)(nil)
	_ Monitor = (*heapMonitor)(nil)
	_ Monitor = (*schedMonitor)(nil)
	_ Monitor = (*Injected)(nil)
)

// Smoothed averages a monitor's last n samples, so one noisy sample
// cannot move the service level alone.
func Smoothed(m Monitor, n int) Monitor {
	return &smoothed{m: m, last: make([]float64, max(n, 1))}
}

type smoothed struct {
	m    Monitor
	mu   sync.Mutex
	last []float64 // ring of the last samples; guarded by mu
	i, n int
}

func (s *smoothed) Name() string { return s.m.Name() }

func (s *smoothed) Pressure() float64 {
	v := s.m.Pressure()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last[s.i] = v
	s.i = (s.i + 1) % len(s.last)
	s.n = min(s.n+1, len(s.last))
	sum := 0.0
	for _, x := range s.last[:s.n] {
		sum += x
	}
	return sum / float64(s.n)
}

// Capped limits a monitor's pressure to at most ceiling, for a signal that
// may ask for a level but must not reach the ones above.
func Capped(m Monitor, ceiling float64) Monitor {
	return &funcMonitor{name: m.Name(), f: func() float64 { return min(m.Pressure(), ceiling) }}
}
