package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/governor"
	"github.com/mcpgate/mcpgate/resources"
)

//go:noinline
func panicHere(v any) { panic(v) }

// runRecovered runs f in a goroutine that defers recoverPanic, and waits
// for it.
func runRecovered(logger *zap.Logger, f func()) {
	var wg sync.WaitGroup
	wg.Go(func() {
		defer recoverPanic(logger, "test goroutine")
		f()
	})
	wg.Wait()
}

// TestRecoverPanic: a panic in a goroutine that defers recoverPanic is
// logged once at ERROR with where, the value and the stack of the panic,
// and counted; an aborted response is neither; no panic does nothing.
func TestRecoverPanic(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core)
	before := metrics.panicsRecovered.Value()

	runRecovered(logger, func() { panicHere("boom") })
	if got := metrics.panicsRecovered.Value() - before; got != 1 {
		t.Fatalf("panics_recovered_total moved by %v, want 1", got)
	}
	errs := logs.FilterLevelExact(zapcore.ErrorLevel).All()
	if len(errs) != 1 || errs[0].Message != "panic recovered" {
		t.Fatalf("ERROR lines %+v", errs)
	}
	fields := errs[0].ContextMap()
	if fields["where"] != "test goroutine" || fields["panic"] != "boom" {
		t.Errorf("fields %v", fields)
	}
	if stack, _ := fields["stack"].(string); !strings.Contains(stack, "panicHere") {
		t.Errorf("the stack does not show the panic site:\n%s", stack)
	}

	runRecovered(logger, func() { panicHere(http.ErrAbortHandler) })
	runRecovered(logger, func() {})
	if got := metrics.panicsRecovered.Value() - before; got != 1 {
		t.Errorf("panics_recovered_total moved by %v after an abort and a clean end, want 1", got)
	}
	if n := logs.FilterLevelExact(zapcore.ErrorLevel).Len(); n != 1 {
		t.Errorf("%d ERROR lines, want 1", n)
	}
}

// TestTaskPanicRecovered: a panic in a goroutine of a request's or
// session's task group is logged and counted through the root group's
// handler, as the governor installs it with the glue's Panic hook.
func TestTaskPanicRecovered(t *testing.T) {
	core, logs := observer.New(zapcore.ErrorLevel)
	logger := zap.New(core)
	root := resources.NewGroup(nil)
	defer root.Close()
	panicHook := governorHooks(logger).Panic
	root.SetPanicHandler(func(v any) { panicHook("task", v) })
	session := resources.NewGroup(root)
	defer session.Close()
	before := metrics.panicsRecovered.Value()
	session.Go(func(context.Context) { panicHere("pump") })
	session.Wait()
	if got := metrics.panicsRecovered.Value() - before; got != 1 {
		t.Fatalf("panics_recovered_total moved by %v, want 1", got)
	}
	all := logs.All()
	if len(all) != 1 || all[0].ContextMap()["where"] != "task" || !strings.Contains(all[0].ContextMap()["stack"].(string), "panicHere") {
		t.Fatalf("log %+v", all)
	}
}

// TestRefreshTickRecovers: a panic in one round of the governor's refresh
// loop is recovered, logged at ERROR with where it happened and counted,
// and the loop runs on. The hook that records the level in force panics
// once.
func TestRefreshTickRecovers(t *testing.T) {
	core, logs := observer.New(zapcore.ErrorLevel)
	hooks := governorHooks(zap.New(core))
	var armed atomic.Bool    // the next refresh panics
	var applied atomic.Int32 // refreshes since
	hooks.LevelApplied = func(admission.Level) {
		if armed.CompareAndSwap(true, false) {
			panicHere("level hook")
		}
		applied.Add(1)
	}
	before := metrics.panicsRecovered.Value()
	g := governor.New(hooks)
	defer g.Close()
	if err := g.Apply(governor.Settings{Refresh: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	deadline := time.Now().Add(5 * time.Second)
	for metrics.panicsRecovered.Value()-before < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the panic was not counted")
		}
		time.Sleep(time.Millisecond)
	}
	for since := applied.Load(); applied.Load() < since+2; {
		if time.Now().After(deadline) {
			t.Fatal("the refresh loop stopped after the panic")
		}
		time.Sleep(time.Millisecond)
	}
	if got := metrics.panicsRecovered.Value() - before; got != 1 {
		t.Fatalf("panics_recovered_total moved by %v, want 1", got)
	}
	all := logs.All()
	if len(all) != 1 || all[0].ContextMap()["where"] != "refresh loop" {
		t.Fatalf("log %+v", all)
	}
}

// TestSessionEndObserved: the end of a session observes its duration and
// the events and bytes relayed on it, once.
func TestSessionEndObserved(t *testing.T) {
	reg := resources.NewRegistry(resources.RegistryConfig{OnEnd: governorHooks(zap.NewNop()).SessionEnded})
	t0 := time.Now().Add(-90 * time.Second)
	s, err := reg.Open(resources.SessionInfo{Key: "k"}, t0, false)
	if err != nil {
		t.Fatal(err)
	}
	s.AddRelayed(300)
	s.AddRelayed(700)
	d0, e0, b0 := histogramOf(metrics.sessionDuration), histogramOf(metrics.sessionEvents), histogramOf(metrics.sessionBytes)
	reg.Remove("k", resources.CauseDeleted)
	reg.Remove("k", resources.CauseIdle)
	d1, e1, b1 := histogramOf(metrics.sessionDuration), histogramOf(metrics.sessionEvents), histogramOf(metrics.sessionBytes)
	if d1.count-d0.count != 1 || e1.count-e0.count != 1 || b1.count-b0.count != 1 {
		t.Fatalf("observations: duration %d, events %d, bytes %d; want 1 each", d1.count-d0.count, e1.count-e0.count, b1.count-b0.count)
	}
	if d := d1.sum - d0.sum; d < 90 || d > 120 {
		t.Errorf("duration observed %v s, want about 90", d)
	}
	if e, b := e1.sum-e0.sum, b1.sum-b0.sum; e != 2 || b != 1000 {
		t.Errorf("events %v, bytes %v; want 2 and 1000", e, b)
	}
}

// histogram is a histogram's sample count and sum.
type histogram struct {
	count uint64
	sum   float64
}

func histogramOf(h prometheus.Metric) histogram {
	var m dto.Metric
	if h.Write(&m) != nil {
		return histogram{}
	}
	return histogram{m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()}
}

// TestRefusalsOneSource: /mcp/status and caddy_mcp_refusals_total show
// the same numbers, the governor's counts, which the admission
// controllers, the level gate and the connection limit count into.
func TestRefusalsOneSource(t *testing.T) {
	g := newGlobalState(zap.NewNop())
	defer g.Destruct()
	if err := g.Apply(governor.Settings{MaxConnections: 1}); err != nil {
		t.Fatal(err)
	}
	globalMu.Lock()
	prev := globalCur
	globalCur = g
	globalMu.Unlock()
	defer func() {
		globalMu.Lock()
		globalCur = prev
		globalMu.Unlock()
	}()
	for range 2 { // an mcp_proxy, and the same after a reload
		ctrl, err := admission.New(admission.Config{Counts: g.Refusals()}, g.InflightLimit())
		if err != nil {
			t.Fatal(err)
		}
		ctrl.Refuse(admission.ReasonQueueFull)
	}
	g.Refusals().Add(admission.ReasonLevel)
	g.AdmitConnection()
	g.AdmitConnection()

	collected := map[string]uint64{}
	ch := make(chan prometheus.Metric, 32)
	refusals.Collect(ch)
	close(ch)
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		collected[d.GetLabel()[0].GetValue()] = uint64(d.GetCounter().GetValue())
	}
	shown := statusOf(g).Refusals
	if fmt.Sprint(collected) != fmt.Sprint(shown) {
		t.Fatalf("/metrics %v, /mcp/status %v", collected, shown)
	}
	if shown["queue_full"] != 2 || shown["level"] != 1 || shown["connections"] != 1 || len(shown) != admission.NumReasons+1 {
		t.Errorf("refusals %v", shown)
	}
}
