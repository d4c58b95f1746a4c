package governor

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/resources"
	"github.com/mcpgate/mcpgate/sse"
)

// hangBound is how long a test waits for something that should happen at
// once before it declares a hang. It is not a timing assertion.
const hangBound = 5 * time.Second

// waitFor polls cond until it holds, failing the test after hangBound.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangBound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// record is what a Governor reported through its hooks.
type record struct {
	mu         sync.Mutex
	changes    []string // "from>to"
	applied    []admission.Level
	ended      []resources.Cause
	evicted    []resources.Cause
	idle       int
	resets     int
	skipped    int
	panics     []string // "where: value"
	deleted    chan resources.SessionInfo
	deleteSent bool
	deleteGate chan struct{} // when not nil, DeleteSession waits for it (or ctx)
}

func newRecord() *record {
	return &record{deleted: make(chan resources.SessionInfo, 64), deleteSent: true}
}

// hooks returns Hooks that record into r.
func (r *record) hooks() Hooks {
	lock := func(f func()) { r.mu.Lock(); defer r.mu.Unlock(); f() }
	return Hooks{
		LevelChanged: func(from, to admission.Level, _ float64, _ bool) {
			lock(func() { r.changes = append(r.changes, from.String()+">"+to.String()) })
		},
		LevelApplied: func(l admission.Level) { lock(func() { r.applied = append(r.applied, l) }) },
		SessionEnded: func(_ *resources.Session, c resources.Cause, _ time.Time) {
			lock(func() { r.ended = append(r.ended, c) })
		},
		SessionEvicted:   func(_ *resources.Session, c resources.Cause) { lock(func() { r.evicted = append(r.evicted, c) }) },
		IdleExpired:      func(n int) { lock(func() { r.idle += n }) },
		ProtectiveResets: func(n int) { lock(func() { r.resets += n }) },
		DeleteSkipped:    func() { lock(func() { r.skipped++ }) },
		Panic: func(where string, v any) {
			lock(func() { r.panics = append(r.panics, fmt.Sprintf("%s: %v", where, v)) })
		},
		DeleteSession: func(ctx context.Context, info resources.SessionInfo) bool {
			if r.deleteGate != nil {
				select {
				case <-r.deleteGate:
				case <-ctx.Done():
					return true
				}
			}
			r.deleted <- info
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.deleteSent
		},
	}
}

// read runs f with r locked.
func (r *record) read(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f()
}

// newGovernor returns a Governor reporting to r whose refresh loop does
// not tick during the test (the test calls tick itself), with only the
// injected monitor, so the level follows the test alone. The test's end
// closes it.
func newGovernor(t *testing.T, r *record, s Settings) *Governor {
	t.Helper()
	g := New(r.hooks())
	t.Cleanup(g.Close)
	if s.Refresh == 0 {
		s.Refresh = time.Hour
	}
	if err := g.Apply(s); err != nil {
		t.Fatal(err)
	}
	g.levels.SetMonitors(g.injected)
	return g
}

// sessionInfo is the info of a session of the given protocol version.
func sessionInfo(key, version string) resources.SessionInfo {
	return resources.SessionInfo{Key: key, Upstream: "up:1", Version: version, UpstreamID: "u-" + key, Endpoint: "/mcp"}
}

func TestLevelFollowsPressure(t *testing.T) {
	r := newRecord()
	g := newGovernor(t, r, Settings{IdleTimeout: 10 * time.Minute, DegradedFraction: 0.25})
	now := time.Now()
	if g.Level() != admission.LevelFull || g.DegradedFraction() != 1 || g.Sessions().IdleTimeout() != 10*time.Minute {
		t.Fatalf("at rest: level %v, fraction %v, idle %v", g.Level(), g.DegradedFraction(), g.Sessions().IdleTimeout())
	}
	g.Injected().Set(0.9)
	g.tick(now)
	if g.Level() != admission.LevelEssential {
		t.Fatalf("level %v at pressure 0.9, want essential", g.Level())
	}
	if g.DegradedFraction() != 0.25 || g.Sessions().IdleTimeout() != 150*time.Second {
		t.Errorf("essential: fraction %v, idle %v; want 0.25 and 2m30s", g.DegradedFraction(), g.Sessions().IdleTimeout())
	}
	g.Injected().Set(0)
	g.tick(now.Add(time.Second))
	if g.Level() != admission.LevelFull || g.Sessions().IdleTimeout() != 10*time.Minute {
		t.Errorf("back at rest: level %v, idle %v", g.Level(), g.Sessions().IdleTimeout())
	}
	r.read(func() {
		if strings.Join(r.changes, " ") != "full>essential essential>full" {
			t.Errorf("level changes %v", r.changes)
		}
		if n := len(r.applied); n < 3 || r.applied[n-2] != admission.LevelEssential || r.applied[n-1] != admission.LevelFull {
			t.Errorf("levels applied %v", r.applied)
		}
	})
}

// TestRefreshLoop: the loop samples the monitors at the refresh interval
// Apply sets, a new interval taking effect at once.
func TestRefreshLoop(t *testing.T) {
	r := newRecord()
	g := newGovernor(t, r, Settings{})
	g.Injected().Set(1)
	if err := g.Apply(Settings{Refresh: 5 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if g.Refresh() != 5*time.Millisecond {
		t.Fatalf("Refresh() = %v", g.Refresh())
	}
	waitFor(t, "the loop to reach the protective level", func() bool { return g.Level() == admission.LevelProtective })
}

func TestPinAppliesLevel(t *testing.T) {
	r := newRecord()
	g := newGovernor(t, r, Settings{IdleTimeout: time.Minute})
	now := time.Now()
	g.Pin(admission.LevelDegraded, now.Add(time.Hour), now)
	if g.Level() != admission.LevelDegraded || g.Sessions().IdleTimeout() != 30*time.Second {
		t.Fatalf("pinned: level %v, idle %v", g.Level(), g.Sessions().IdleTimeout())
	}
	if st := g.LevelStatus(); !st.Pinned || st.Computed != admission.LevelFull {
		t.Errorf("status %+v", st)
	}
	g.Unpin(now)
	if g.Level() != admission.LevelFull || g.Sessions().IdleTimeout() != time.Minute {
		t.Fatalf("unpinned: level %v, idle %v", g.Level(), g.Sessions().IdleTimeout())
	}
}

func TestApplySettings(t *testing.T) {
	r := newRecord()
	g := newGovernor(t, r, Settings{
		MaxInflight: 7, MaxStreams: 8, MaxConnections: 9,
		MemoryLimit: 64 << 20, SessionMemory: 1 << 20,
		Thresholds: admission.Thresholds{Degraded: 0.6, Essential: 0.8, Protective: 0.9},
		MaxDrain:   time.Millisecond,
	})
	if g.InflightLimit().Limit() != 7 || g.StreamLimit().Limit() != 8 || g.ConnLimit().Limit() != 9 {
		t.Errorf("limits %d %d %d", g.InflightLimit().Limit(), g.StreamLimit().Limit(), g.ConnLimit().Limit())
	}
	if g.Memory().Limit() != 64<<20 || g.Sessions().MaxSessions() != 64 || g.Sessions().ClientMaxSessions() != 16 {
		t.Errorf("memory %d, sessions %d, per client %d", g.Memory().Limit(), g.Sessions().MaxSessions(), g.Sessions().ClientMaxSessions())
	}
	want := admission.Thresholds{Degraded: 0.6, Essential: 0.8, Protective: 0.9, Hysteresis: 0.05}
	if th := g.LevelStatus().Threshold; th != want {
		t.Errorf("thresholds %+v, want %+v", th, want)
	}
	for _, bad := range []Settings{
		{Thresholds: admission.Thresholds{Degraded: 0.9, Essential: 0.8}},
		{DegradedFraction: 1.5},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", bad)
		}
		if err := g.Apply(bad); err == nil || g.InflightLimit().Limit() != 7 {
			t.Errorf("Apply(%+v) = %v, limit %d; want an error and nothing changed", bad, err, g.InflightLimit().Limit())
		}
	}
}

func TestSessionCaps(t *testing.T) {
	for _, tc := range []struct {
		max, client         int
		memory              int64
		wantMax, wantClient int
		name                string
	}{
		{0, 0, 0, DefaultMaxSessions, DefaultMaxSessions / 10, "defaults, no memory limit"},
		{0, 0, 64 << 20, 64, MinClientMaxSessions, "from the memory limit, client floor"},
		{0, 0, 1 << 10, 1, MinClientMaxSessions, "at least one session"},
		{500, 0, 0, 500, 50, "a tenth per client"},
		{-1, 0, 64 << 20, 0, 0, "sessions off: clients off"},
		{-1, 5, 0, 0, 5, "a client cap alone"},
		{100, -1, 0, 100, 0, "client cap off"},
	} {
		m, c := SessionCaps(tc.max, tc.client, tc.memory, 1<<20)
		if m != tc.wantMax || c != tc.wantClient {
			t.Errorf("%s: SessionCaps(%d, %d, %d) = %d, %d; want %d, %d", tc.name, tc.max, tc.client, tc.memory, m, c, tc.wantMax, tc.wantClient)
		}
	}
}

// TestEvictionDeletesUpstream: an evicted session of the session era is
// deleted upstream through DeleteSession, on a worker; a session its
// client deleted, or a legacy one, is not.
func TestEvictionDeletesUpstream(t *testing.T) {
	r := newRecord()
	g := newGovernor(t, r, Settings{})
	now := time.Now()
	for _, key := range []string{"evicted", "deleted", "legacy"} {
		version := mcp.Version20250618
		if key == "legacy" {
			version = mcp.Version20241105
		}
		if _, err := g.Sessions().Open(sessionInfo(key, version), now, false); err != nil {
			t.Fatal(err)
		}
	}
	g.Sessions().Remove("deleted", resources.CauseDeleted)
	g.Sessions().Remove("legacy", resources.CauseOperator)
	g.Sessions().Remove("evicted", resources.CauseCapacity)
	select {
	case info := <-r.deleted:
		if info.Key != "evicted" || info.UpstreamID != "u-evicted" {
			t.Fatalf("deleted %+v", info)
		}
	case <-time.After(hangBound):
		t.Fatal("the evicted session was not deleted upstream")
	}
	select {
	case info := <-r.deleted:
		t.Fatalf("%s deleted upstream too", info.Key)
	case <-time.After(20 * time.Millisecond):
	}
	r.read(func() {
		if fmt.Sprint(r.evicted) != "[operator capacity]" || len(r.ended) != 3 || r.skipped != 0 {
			t.Errorf("evicted %v, ended %v, skipped %d", r.evicted, r.ended, r.skipped)
		}
	})
}

// TestForgetEvictedKeepsUpstream: with ForgetEvicted, a session evicted
// for idleness is forgotten here (its eviction is reported) but neither
// deleted upstream nor tombstoned; an operator's eviction still is both.
func TestForgetEvictedKeepsUpstream(t *testing.T) {
	r := newRecord()
	g := newGovernor(t, r, Settings{ForgetEvicted: true})
	if _, err := g.Sessions().Open(sessionInfo("evicted", mcp.Version20250618), time.Now(), false); err != nil {
		t.Fatal(err)
	}
	g.Sessions().Remove("evicted", resources.CauseIdle)
	select {
	case info := <-r.deleted:
		t.Fatalf("%s deleted upstream", info.Key)
	case <-time.After(50 * time.Millisecond):
	}
	r.read(func() {
		if fmt.Sprint(r.evicted) != "[idle]" {
			t.Errorf("evicted %v", r.evicted)
		}
	})
	// The operator's eviction ends the session as ever: deleted upstream
	// and tombstoned; the others leave no tombstone.
	if g.Sessions().WasEvicted("evicted") {
		t.Error("an idle eviction tombstoned the key")
	}
	if _, err := g.Sessions().Open(sessionInfo("operator", mcp.Version20250618), time.Now(), false); err != nil {
		t.Fatal(err)
	}
	g.Sessions().Remove("operator", resources.CauseOperator)
	select {
	case info := <-r.deleted:
		if info.Key != "operator" {
			t.Fatalf("deleted %+v", info)
		}
	case <-time.After(hangBound):
		t.Fatal("the operator's eviction was not deleted upstream")
	}
	if !g.Sessions().WasEvicted("operator") {
		t.Error("the operator's eviction left no tombstone")
	}
	// Applying the default makes evictions delete and tombstone again.
	if err := g.Apply(Settings{}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Sessions().Open(sessionInfo("idle", mcp.Version20250618), time.Now(), false); err != nil {
		t.Fatal(err)
	}
	g.Sessions().Remove("idle", resources.CauseIdle)
	select {
	case info := <-r.deleted:
		if info.Key != "idle" {
			t.Fatalf("deleted %+v", info)
		}
	case <-time.After(hangBound):
		t.Fatal("with the default applied, an idle eviction was not deleted upstream")
	}
	if !g.Sessions().WasEvicted("idle") {
		t.Error("with the default applied, an idle eviction left no tombstone")
	}
}

// TestDeleteQueueBounded: while every worker is busy, evictions fill the
// bounded queue and those past it are reported skipped; a session
// DeleteSession cannot route is reported skipped too.
func TestDeleteQueueBounded(t *testing.T) {
	r := newRecord()
	r.deleteGate = make(chan struct{})
	r.deleted = make(chan resources.SessionInfo, deleteWorkers+deleteQueue+10)
	g := newGovernor(t, r, Settings{MaxSessions: -1})
	now := time.Now()
	const extra = 5
	n := deleteWorkers + deleteQueue + extra
	for i := range n {
		key := fmt.Sprint(i)
		if _, err := g.Sessions().Open(sessionInfo(key, mcp.Version20250618), now, false); err != nil {
			t.Fatal(err)
		}
		g.Sessions().Remove(key, resources.CauseOperator)
		if i == deleteWorkers-1 {
			// Every worker holds one session before the queue fills.
			waitFor(t, "the workers to take a session each", func() bool { return len(g.deletes) == 0 })
		}
	}
	r.read(func() {
		if r.skipped != extra {
			t.Errorf("%d skipped, want %d", r.skipped, extra)
		}
	})
	r.mu.Lock()
	r.deleteSent = false
	r.mu.Unlock()
	close(r.deleteGate)
	waitFor(t, "every queued delete", func() bool { return len(r.deleted) == deleteWorkers+deleteQueue })
	waitFor(t, "the unroutable deletes to be counted", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.skipped > extra
	})
}

// discard is a client that takes every write.
type discard struct{}

func (discard) Write(p []byte) (int, error)      { return len(p), nil }
func (discard) Flush() error                     { return nil }
func (discard) SetWriteDeadline(time.Time) error { return nil }

// openStream adds to g's open streams a stream whose replay ring holds
// events of the given total size, attached to a client.
func openStream(t *testing.T, g *Governor, events int) (*sse.Attachment, *sse.Stream) {
	t.Helper()
	s := sse.NewStream(sse.StreamConfig{ReplayEvents: 1000, ReplayBytes: 1 << 20, QueueEvents: 16, QueueBytes: 1 << 16})
	pr, pw := io.Pipe()
	s.SetCloser(func() { pw.Close() })
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Pump(pr) }()
	a, _ := s.Attach(discard{}, "", 0)
	go func() { _ = a.Wait(context.Background()) }()
	for i := range events {
		fmt.Fprintf(pw, "id: %d\ndata: x\n\n", i)
	}
	waitFor(t, "the events to be relayed", func() bool { return s.UpstreamLastID() == fmt.Sprint(events-1) || events == 0 })
	forget := g.OpenStreams().Add(a, s, true)
	t.Cleanup(func() { forget(); s.Close(); <-done; s.Discard() })
	return a, s
}

// TestProtectiveResets: each refresh at the protective level resets the
// largest open streams, protectiveResetsPerTick at most, and reports how
// many.
func TestProtectiveResets(t *testing.T) {
	r := newRecord()
	g := newGovernor(t, r, Settings{})
	now := time.Now()
	var atts []*sse.Attachment
	for i := range protectiveResetsPerTick + 2 {
		a, _ := openStream(t, g, 1+i%3)
		atts = append(atts, a)
	}
	g.tick(now)
	r.read(func() {
		if r.resets != 0 {
			t.Fatalf("%d resets at the full level", r.resets)
		}
	})
	g.Injected().Set(1)
	g.tick(now.Add(time.Second))
	r.read(func() {
		if r.resets != protectiveResetsPerTick {
			t.Fatalf("%d resets in the first protective refresh, want %d", r.resets, protectiveResetsPerTick)
		}
	})
	g.tick(now.Add(2 * time.Second))
	r.read(func() {
		if r.resets != protectiveResetsPerTick+2 {
			t.Fatalf("%d resets after two protective refreshes, want %d", r.resets, protectiveResetsPerTick+2)
		}
	})
	for _, a := range atts {
		if !a.Closed() {
			t.Fatal("a stream was left open at the protective level")
		}
	}
}

// TestIdleSessionsExpire: a refresh expires idle sessions and reports
// how many.
func TestIdleSessionsExpire(t *testing.T) {
	r := newRecord()
	g := newGovernor(t, r, Settings{IdleTimeout: time.Minute})
	now := time.Now()
	if _, err := g.Sessions().Open(sessionInfo("old", mcp.Version20250618), now.Add(-time.Hour), false); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Sessions().Open(sessionInfo("new", mcp.Version20250618), now, false); err != nil {
		t.Fatal(err)
	}
	g.tick(now)
	r.read(func() {
		if r.idle != 1 || fmt.Sprint(r.evicted) != "[idle]" {
			t.Errorf("idle %d, evicted %v", r.idle, r.evicted)
		}
	})
	if g.Sessions().Len() != 1 {
		t.Errorf("%d sessions left, want 1", g.Sessions().Len())
	}
}

// TestTickPanicRecovered: a panic in a refresh is reported and the next
// refresh runs.
func TestTickPanicRecovered(t *testing.T) {
	r := newRecord()
	hooks := r.hooks()
	var boom bool
	applied := hooks.LevelApplied
	hooks.LevelApplied = func(l admission.Level) {
		if boom {
			boom = false
			panic("level hook")
		}
		applied(l)
	}
	g := New(hooks)
	defer g.Close()
	if err := g.Apply(Settings{Refresh: time.Hour}); err != nil {
		t.Fatal(err)
	}
	g.levels.SetMonitors(g.injected)
	boom = true
	g.tick(time.Now())
	g.Injected().Set(1)
	g.tick(time.Now())
	r.read(func() {
		if fmt.Sprint(r.panics) != "[refresh loop: level hook]" {
			t.Errorf("panics %v", r.panics)
		}
	})
	if g.Level() != admission.LevelProtective {
		t.Errorf("level %v after the refresh that followed the panic", g.Level())
	}
}

// TestTaskPanicReported: a panic in a goroutine of the task group, or of
// a session's group, ends that goroutine and is reported.
func TestTaskPanicReported(t *testing.T) {
	r := newRecord()
	g := newGovernor(t, r, Settings{})
	s, err := g.Sessions().Open(sessionInfo("s", mcp.Version20250618), time.Now(), false)
	if err != nil {
		t.Fatal(err)
	}
	s.Group().Go(func(context.Context) { panic("pump") })
	s.Group().Wait()
	r.read(func() {
		if fmt.Sprint(r.panics) != "[task: pump]" {
			t.Errorf("panics %v", r.panics)
		}
	})
}

func TestFinishStreams(t *testing.T) {
	r := newRecord()
	g := newGovernor(t, r, Settings{MaxDrain: time.Millisecond})
	if !g.FinishStreams(0) {
		t.Fatal("FinishStreams with no stream open reported streams closed")
	}
	a, _ := openStream(t, g, 1)
	if g.FinishStreams(time.Millisecond) {
		t.Fatal("FinishStreams reported no stream left open")
	}
	if !a.Closed() {
		t.Fatal("the open stream was not closed")
	}
}

func TestConnections(t *testing.T) {
	r := newRecord()
	g := newGovernor(t, r, Settings{MaxConnections: 1})
	if !g.AdmitConnection() || g.AdmitConnection() {
		t.Fatal("want one connection admitted and the next refused")
	}
	g.ReleaseConnection()
	if !g.AdmitConnection() {
		t.Fatal("a released slot was not reused")
	}
	if g.ConnectionRefusals() != 1 || g.ConnLimit().InFlight() != 1 {
		t.Errorf("refusals %d, in flight %d", g.ConnectionRefusals(), g.ConnLimit().InFlight())
	}
}

// TestRefusalsByReason: the refusals of every Controller counting into
// the governor's counts, and the refused connections, by reason name.
func TestRefusalsByReason(t *testing.T) {
	r := newRecord()
	g := newGovernor(t, r, Settings{MaxConnections: 1})
	for range 2 {
		ctrl, err := admission.New(admission.Config{Counts: g.Refusals()}, g.InflightLimit())
		if err != nil {
			t.Fatal(err)
		}
		ctrl.Refuse(admission.ReasonQueueFull)
	}
	g.Refusals().Add(admission.ReasonLevel)
	g.AdmitConnection()
	g.AdmitConnection()
	got := g.RefusalsByReason()
	if len(got) != admission.NumReasons+1 {
		t.Errorf("%d reasons, want %d: %v", len(got), admission.NumReasons+1, got)
	}
	if got["queue_full"] != 2 || got["level"] != 1 || got[ReasonConnections] != 1 || got["capacity"] != 0 {
		t.Errorf("refusals %v", got)
	}
}

// TestCloseStopsEverything: Close ends the refresh loop, the delete
// workers and, through the task group's context, every task; the
// goroutine count returns to where it was.
func TestCloseStopsEverything(t *testing.T) {
	before := runtime.NumGoroutine()
	g := New(newRecord().hooks())
	if err := g.Apply(Settings{Refresh: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		g.Tasks().Go(func(ctx context.Context) { <-ctx.Done() })
	}
	if g.Tasks().Count() != 3 {
		t.Fatalf("%d tasks", g.Tasks().Count())
	}
	g.Close()
	g.Close()
	g.Tasks().Wait()
	if g.Tasks().Go(func(context.Context) {}) {
		t.Error("the task group accepted a goroutine after Close")
	}
	waitFor(t, "the goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}
