package governor

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/resources"
)

// TestStatus: the snapshot reports the limits in force beside their
// usage, the level, its pin and the pressures, the refusals and the
// evictions by cause.
func TestStatus(t *testing.T) {
	r := newRecord()
	g := newGovernor(t, r, Settings{MaxInflight: 7, MaxStreams: 8, MaxConnections: 9,
		MemoryLimit: 64 << 20, SessionMemory: 1 << 20, IdleTimeout: time.Minute})
	now := time.Now()
	for _, k := range []string{"a", "b", "c"} {
		if _, err := g.Sessions().Open(sessionInfo(k, "2025-06-18"), now, false); err != nil {
			t.Fatal(err)
		}
	}
	g.Sessions().Remove("c", resources.CauseOperator)
	if !g.InflightLimit().TryAcquire() || !g.AdmitConnection() {
		t.Fatal("no slot")
	}
	g.Refusals().Add(admission.ReasonQueueFull)
	g.Injected().Set(0.7777)
	g.tick(now)
	g.Pin(admission.LevelEssential, now.Add(time.Hour), now)

	st := g.Status()
	u := st.Resources
	if u.Sessions != (Pair{2, 64}) || u.RequestsInFlight != (Pair{1, 7}) || u.Streams != (Pair{0, 8}) ||
		u.Connections != (Pair{1, 9}) || u.Memory.Limit != 64<<20 || u.Memory.Used <= 0 || u.ClientMaxSessions != 16 {
		t.Errorf("resources %+v", u)
	}
	if st.Level != "essential" || st.Computed != "degraded" || !st.Pinned || !st.PinnedUntil.Equal(now.Add(time.Hour)) {
		t.Errorf("levels %+v", st.LevelView)
	}
	if st.Pressure != 0.778 || st.Monitors[g.Injected().Name()] != 0.778 || st.Thresholds.Degraded == 0 {
		t.Errorf("pressure %v, monitors %v, thresholds %+v", st.Pressure, st.Monitors, st.Thresholds)
	}
	if st.Refusals["queue_full"] != 1 || st.Evictions["operator"] != 1 || st.Changes["degraded"] != 1 {
		t.Errorf("refusals %v, evictions %v, changes %v", st.Refusals, st.Evictions, st.Changes)
	}
	if _, ok := st.Evictions["deleted"]; ok || st.Counters["sessions_deleted"] != 0 {
		t.Errorf("deleted sessions counted as evictions: %v, counters %v", st.Evictions, st.Counters)
	}
	g.Unpin(now)
	if lv := g.Levels(); lv.Pinned || !lv.PinnedUntil.IsZero() || lv.Level != "degraded" {
		t.Errorf("unpinned %+v", lv)
	}
	body, err := json.Marshal(g.Status())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["pinned_until"]; ok || m["level"] != "degraded" || m["resources"] == nil || m["governance"] == nil {
		t.Errorf("JSON %s", body)
	}
}
