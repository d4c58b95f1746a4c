package governor

import (
	"sync"
	"testing"
	"time"

	"github.com/mcpgate/mcpgate/admission"
)

// TestPinDuringTick: an operator's pin that lands while the
// refresh loop is between sampling the level and applying it (a window
// as long as the synchronous LevelChanged hook: logging and Caddy events,
// whose handlers may be slow webhooks or exec) is not overwritten by the
// tick: the actions applied last, the service_level gauge and the last
// level-change event are the pinned level's, not the level the tick
// sampled before the pin.
func TestPinDuringTick(t *testing.T) {
	var mu sync.Mutex
	var applied []admission.Level
	var changes [][2]admission.Level
	block := make(chan struct{})
	entered := make(chan struct{})
	first := true
	g := New(Hooks{
		LevelChanged: func(from, to admission.Level, _ float64, _ bool) {
			mu.Lock()
			changes = append(changes, [2]admission.Level{from, to})
			wait := first
			first = false
			mu.Unlock()
			if wait {
				close(entered)
				<-block // a slow event handler
			}
		},
		LevelApplied: func(l admission.Level) {
			mu.Lock()
			applied = append(applied, l)
			mu.Unlock()
		},
	})
	t.Cleanup(g.Close)
	if err := g.Apply(Settings{Refresh: time.Hour, IdleTimeout: 10 * time.Minute, DegradedFraction: 0.25}); err != nil {
		t.Fatal(err)
	}
	g.levels.SetMonitors(g.injected)
	g.Injected().Set(0.9) // essential
	done := make(chan struct{})
	go func() { defer close(done); g.tick(time.Now()) }()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("tick did not change the level")
	}
	now := time.Now()
	g.Pin(admission.LevelFull, now.Add(time.Hour), now) // operator holds full during a false alarm
	close(block)
	<-done

	mu.Lock()
	defer mu.Unlock()
	if g.Level() != admission.LevelFull {
		t.Fatalf("level %v, want the pinned full", g.Level())
	}
	var problems []string
	if last := applied[len(applied)-1]; last != admission.LevelFull {
		problems = append(problems, "last level applied (service_level gauge, governance) is "+last.String())
	}
	if idle := g.Sessions().IdleTimeout(); idle != 10*time.Minute {
		problems = append(problems, "idle timeout "+idle.String()+" (the essential level's), want 10m0s")
	}
	if last := changes[len(changes)-1]; last[1] != admission.LevelFull {
		problems = append(problems, "last level change reported "+last[0].String()+">"+last[1].String())
	}
	for _, p := range problems {
		t.Errorf("pinned full while the tick applied essential: %s", p)
	}
	t.Logf("changes %v, applied %v", changes, applied)
}
