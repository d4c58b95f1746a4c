package admission

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpgate/mcpgate/resources"
)

// Level is a service level: how much of its work the proxy still does.
type Level uint8

// Service levels, from everything on to only finishing what is in flight.
const (
	// LevelFull: everything on.
	LevelFull Level = iota
	// LevelDegraded: replay rings and stream queues shrink, idle timeouts
	// scale down, optional work stops.
	LevelDegraded
	// LevelEssential: new sessions are refused; existing ones keep working.
	LevelEssential
	// LevelProtective: only in-flight work and open streams continue; new
	// requests are refused and idle streams are closed.
	LevelProtective
)

// NumLevels is the number of service levels.
const NumLevels = 4

// String returns the level's lowercase name ("unknown" for an
// out-of-range value).
func (l Level) String() string { return nameOf(l, levelNames[:]) }

// nameOf returns the name of v, an enumerated value, from its names indexed
// by value: "unknown" for a value out of range.
func nameOf[T ~uint8](v T, names []string) string {
	if int(v) < len(names) {
		return names[v]
	}
	return "unknown"
}

// levelNames are the levels' names, indexed by Level.
var levelNames = [NumLevels]string{
	LevelFull:       "full",
	LevelDegraded:   "degraded",
	LevelEssential:  "essential",
	LevelProtective: "protective",
}

// ParseLevel parses a level name as String writes it.
func ParseLevel(s string) (Level, error) {
	for l := LevelFull; l < NumLevels; l++ {
		if l.String() == s {
			return l, nil
		}
	}
	return LevelFull, fmt.Errorf("unknown service level %q", s)
}

// Thresholds are the pressures at which each level is entered. A level is
// left only when the pressure falls Hysteresis below its threshold, so
// noise around a threshold does not make the level flap.
type Thresholds struct {
	Degraded, Essential, Protective float64
	Hysteresis                      float64
}

// DefaultThresholds are 0.70, 0.85 and 0.95 with a hysteresis of 0.05.
var DefaultThresholds = Thresholds{Degraded: 0.70, Essential: 0.85, Protective: 0.95, Hysteresis: 0.05}

// Validate checks that the thresholds rise and lie in (0, 1].
func (t Thresholds) Validate() error {
	if !(0 < t.Degraded && t.Degraded < t.Essential && t.Essential < t.Protective && t.Protective <= 1) {
		return fmt.Errorf("level thresholds must rise within (0, 1]: %v, %v, %v", t.Degraded, t.Essential, t.Protective)
	}
	if t.Hysteresis < 0 || t.Hysteresis >= t.Degraded {
		return fmt.Errorf("level hysteresis %v must be in [0, %v)", t.Hysteresis, t.Degraded)
	}
	return nil
}

func (t Thresholds) of(l Level) float64 {
	switch l {
	case LevelDegraded:
		return t.Degraded
	case LevelEssential:
		return t.Essential
	case LevelProtective:
		return t.Protective
	}
	return 0
}

// Next returns the level for pressure p when the current level is cur:
// the highest level whose threshold p reaches, or, when that is lower than
// cur, the highest level at or below cur whose threshold p still reaches
// within the hysteresis.
func (t Thresholds) Next(cur Level, p float64) Level {
	up := LevelFull
	for l := LevelProtective; l > LevelFull; l-- {
		if p >= t.of(l) {
			up = l
			break
		}
	}
	if up >= cur {
		return up
	}
	for l := cur; l > up; l-- {
		if p >= t.of(l)-t.Hysteresis {
			return l
		}
	}
	return up
}

// MonitorPressure is one monitor's last sample.
type MonitorPressure struct {
	Name     string  `json:"name"`
	Pressure float64 `json:"pressure"`
}

// LoadManager computes the service level from its monitors: the level is
// the highest any monitor asks for, with the thresholds' hysteresis. An
// operator can pin a level for a while. Level is a lock-free read for the
// request path; Sample runs from one goroutine at the refresh interval.
type LoadManager struct {
	th       Thresholds
	monitors []resources.Monitor

	level atomic.Uint32

	mu        sync.Mutex
	computed  Level // the level from pressure alone
	last      []MonitorPressure
	pinned    bool
	pinLevel  Level
	pinUntil  time.Time
	changes   [NumLevels]uint64 // level changes, by level entered
	onChange  func(from, to Level, pressure float64, pinned bool)
	lastPress float64
}

// NewLoadManager returns a manager over monitors with thresholds th.
// onChange, when not nil, is called (from Sample, without locks held) on
// every level change.
func NewLoadManager(th Thresholds, onChange func(from, to Level, pressure float64, pinned bool), monitors ...resources.Monitor) (*LoadManager, error) {
	if err := th.Validate(); err != nil {
		return nil, err
	}
	return &LoadManager{th: th, monitors: monitors, onChange: onChange, last: make([]MonitorPressure, len(monitors))}, nil
}

// SetThresholds replaces the thresholds (a config reload); the level is
// recomputed at the next Sample.
func (m *LoadManager) SetThresholds(th Thresholds) error {
	if err := th.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	m.th = th
	m.mu.Unlock()
	return nil
}

// SetMonitors replaces the monitors (a config reload).
func (m *LoadManager) SetMonitors(monitors ...resources.Monitor) {
	m.mu.Lock()
	m.monitors = monitors
	m.mu.Unlock()
}

// Level returns the current service level.
func (m *LoadManager) Level() Level { return Level(m.level.Load()) }

// Sample reads every monitor and updates the level. It returns the level
// in force.
func (m *LoadManager) Sample(now time.Time) Level {
	m.mu.Lock()
	monitors := m.monitors
	m.mu.Unlock()
	p := 0.0
	samples := make([]MonitorPressure, len(monitors))
	for i, mon := range monitors {
		v := resources.PressureOf(mon)
		samples[i] = MonitorPressure{Name: mon.Name(), Pressure: v}
		p = max(p, v)
	}
	m.mu.Lock()
	m.last = samples
	m.lastPress = p
	m.computed = m.th.Next(m.computed, p)
	from, to, pinned := m.applyLocked(now)
	m.mu.Unlock()
	if from != to && m.onChange != nil {
		m.onChange(from, to, p, pinned)
	}
	return to
}

// applyLocked sets the level in force from the computed one and the pin.
func (m *LoadManager) applyLocked(now time.Time) (from, to Level, pinned bool) {
	if m.pinned && !now.Before(m.pinUntil) {
		m.pinned = false
	}
	to = m.computed
	if m.pinned {
		to = m.pinLevel
	}
	from = Level(m.level.Swap(uint32(to)))
	if from != to {
		m.changes[to]++
	}
	return from, to, m.pinned
}

// Pin holds level l until the given time, whatever the pressure; the
// level changes at once.
func (m *LoadManager) Pin(l Level, until, now time.Time) {
	m.mu.Lock()
	m.pinned, m.pinLevel, m.pinUntil = true, l, until
	from, to, pinned := m.applyLocked(now)
	p := m.lastPress
	m.mu.Unlock()
	if from != to && m.onChange != nil {
		m.onChange(from, to, p, pinned)
	}
}

// Unpin releases a pinned level; the computed level applies at once.
func (m *LoadManager) Unpin(now time.Time) {
	m.mu.Lock()
	m.pinned = false
	from, to, pinned := m.applyLocked(now)
	p := m.lastPress
	m.mu.Unlock()
	if from != to && m.onChange != nil {
		m.onChange(from, to, p, pinned)
	}
}

// Status is a snapshot of the manager's state.
type Status struct {
	Level     Level             `json:"-"`
	Computed  Level             `json:"-"`
	Pressure  float64           `json:"pressure"`
	Monitors  []MonitorPressure `json:"monitors"`
	Pinned    bool              `json:"pinned"`
	PinUntil  time.Time         `json:"pinned_until,omitzero"`
	Changes   [NumLevels]uint64 `json:"-"`
	Threshold Thresholds        `json:"-"`
}

// Status returns a snapshot of the levels, pressures and pin.
func (m *LoadManager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Status{
		Level: m.Level(), Computed: m.computed, Pressure: m.lastPress,
		Monitors: append([]MonitorPressure(nil), m.last...),
		Pinned:   m.pinned, PinUntil: m.pinUntil, Changes: m.changes, Threshold: m.th,
	}
}
