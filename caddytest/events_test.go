package caddytest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

func init() {
	caddy.RegisterModule(eventRecorder{})
}

// recordedEvents receives the events eventRecorder handles.
var recordedEvents = make(chan caddy.Event, 64)

// eventRecorder is an events handler for tests: it passes every event it
// gets to recordedEvents.
type eventRecorder struct{}

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.mcpgate_test_recorder", New: func() caddy.Module { return eventRecorder{} }}
}

func (eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	select {
	case recordedEvents <- e:
	default:
	}
	return nil
}

// TestEvents: a service level change and a session's eviction are Caddy
// events that `events` subscriptions receive, with their data.
func TestEvents(t *testing.T) {
	up := startUpstream(t, "up", nil)
	port, adminPort := freePort(t), freePort(t)
	cf := fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n%s}\n", adminPort, opsGlobal) + opsSite(port, up.addr(), "")
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(cfg, &m)
	m["apps"].(map[string]any)["events"] = map[string]any{"subscriptions": []any{map[string]any{
		"events":   []string{"mcp_level_changed", "mcp_session_evicted"},
		"handlers": []any{map[string]any{"handler": "mcpgate_test_recorder"}},
	}}}
	cfg, _ = json.Marshal(m)
	for len(recordedEvents) > 0 {
		<-recordedEvents
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })

	next := func(name string) caddy.Event {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case e := <-recordedEvents:
				if e.Name() == name {
					return e
				}
			case <-deadline:
				t.Fatalf("no %s event", name)
			}
		}
	}
	pinLevel(t, adminPort, "essential")
	e := next("mcp_level_changed")
	if e.Data["to"] != "essential" || e.Data["from"] != "full" || e.Data["pinned"] != true {
		t.Errorf("mcp_level_changed data: %v", e.Data)
	}
	adminCall(t, adminPort, http.MethodDelete, "/mcp/level", "")

	rawSession(t, proxyURL(port)+"/mcp", nil)
	var page struct {
		Sessions []struct{ ID string } `json:"sessions"`
	}
	adminJSON(t, adminPort, http.MethodGet, "/mcp/sessions", "", http.StatusOK, &page)
	if len(page.Sessions) != 1 {
		t.Fatalf("sessions: %+v", page)
	}
	adminCall(t, adminPort, http.MethodDelete, "/mcp/sessions/"+page.Sessions[0].ID, "")
	e = next("mcp_session_evicted")
	if e.Data["session"] != page.Sessions[0].ID || e.Data["cause"] != "operator" || e.Data["upstream"] != up.addr() {
		t.Errorf("mcp_session_evicted data: %v", e.Data)
	}
}
