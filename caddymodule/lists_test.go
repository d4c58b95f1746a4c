package caddymodule

import (
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mcpgate/mcpgate/policy"
)

// TestFilterListPinsOverQuota: a new tool the pins have no room for (its
// upstream holds its quota) is dropped from the list with pin_tools drop
// and listed with warn, counted as over_quota (and, dropped, as a pin in
// list_items_filtered), with one WARN for the list.
func TestFilterListPinsOverQuota(t *testing.T) {
	g := newGlobalState(zap.NewNop())
	defer g.Destruct()
	const msg = `{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"},{"name":"c"},{"name":"d"}]}}`
	for _, warn := range []bool{false, true} {
		core, logs := observer.New(zapcore.WarnLevel)
		h := &Handler{logger: zap.New(core), app: &App{global: g},
			gov: &governance{pins: &policy.Pins{Max: 10, PerUpstream: 2}, pinWarn: warn}}
		overBefore := metrics.pinned.Value("over_quota")
		droppedBefore := metrics.listFiltered.Value("pin")
		for range 2 {
			out, ok := h.filterList("tools/list", []byte(msg), nil, "up", false)
			listed := string(out)
			if out == nil {
				listed = msg
			}
			if !ok || !strings.Contains(listed, `"a"`) || !strings.Contains(listed, `"b"`) ||
				strings.Contains(listed, `"c"`) == !warn || strings.Contains(listed, `"d"`) == !warn {
				t.Errorf("warn %v: listed %s (ok %v), want a and b, c and d only with warn", warn, listed, ok)
			}
		}
		if got := metrics.pinned.Value("over_quota") - overBefore; got != 4 {
			t.Errorf("warn %v: tool_pins_total{result=over_quota} grew by %v, want 4", warn, got)
		}
		wantDropped := 4.0
		if warn {
			wantDropped = 0
		}
		if got := metrics.listFiltered.Value("pin") - droppedBefore; got != wantDropped {
			t.Errorf("warn %v: list_items_filtered_total{reason=pin} grew by %v, want %v", warn, got, wantDropped)
		}
		entries := logs.FilterMessage("tools not pinned: no room for the upstream's pins").All()
		if len(entries) != 2 {
			t.Fatalf("warn %v: %d WARNs for 2 lists, want 2", warn, len(entries))
		}
		if f := entries[0].ContextMap(); f["tools"] != int64(2) || f["first_tool"] != "c" || f["listed"] != warn || f["upstream"] != "up" {
			t.Errorf("warn %v: WARN fields %v", warn, f)
		}
	}
}
