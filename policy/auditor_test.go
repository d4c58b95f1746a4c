package policy

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/mcpgate/mcpgate/mcp"
)

// collect is a write func that keeps copies of the records written.
type collect struct {
	mu   sync.Mutex
	recs []Record
}

func (c *collect) write(r *Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recs = append(c.recs, *r)
}

func (c *collect) all() []Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Record(nil), c.recs...)
}

func TestNewAuditorDefaults(t *testing.T) {
	a, err := NewAuditor(AuditSettings{}, func(*Record) {})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(time.Second)
	got := a.Settings()
	if got.QueueSize != DefaultAuditQueue || got.MaxArgumentSize != DefaultMaxArguments || got.DegradedSample != DefaultDegradedSample {
		t.Fatalf("defaults %+v", got)
	}
	if _, err := NewAuditor(AuditSettings{Redact: []string{"/ok", "no-slash"}}, func(*Record) {}); err == nil || !strings.Contains(err.Error(), "no-slash") {
		t.Fatalf("a redact entry that is not a pointer: %v", err)
	}
}

func TestAuditorAudit(t *testing.T) {
	var c collect
	a, err := NewAuditor(AuditSettings{Arguments: true, Redact: []string{"/password"}, DegradedSample: 2}, c.write)
	if err != nil {
		t.Fatal(err)
	}
	call := []byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"login","arguments":{"user":"a","password":"p"}}}`)
	steps := []struct {
		rec    Record
		effort Effort
		msg    []byte
		want   AuditResult
	}{
		{Record{Method: "tools/call", Decision: "allow", Status: 200}, EffortFull, call, AuditWritten},
		{Record{Method: "tools/call", Decision: "allow", Status: 200}, EffortFull, nil, AuditWritten}, // a batch: no arguments
		{Record{Method: "tools/list", Decision: "allow", Status: 200}, EffortReduced, nil, AuditWritten},
		{Record{Method: "tools/list", Decision: "allow", Status: 200}, EffortReduced, nil, AuditSampledOut},
		{Record{Method: "tools/call", Decision: "allow", Status: 200}, EffortMinimal, call, AuditSampledOut},
		{Record{Method: "tools/call", Decision: "deny", Status: 200}, EffortMinimal, call, AuditWritten},
		{Record{Method: "ping", Decision: "allow", Status: 200}, EffortFull, call, AuditWritten}, // not a call: no arguments
	}
	for i, s := range steps {
		if got := a.Audit(&s.rec, s.effort, s.msg); got != s.want {
			t.Errorf("step %d: %v, want %v", i, got, s.want)
		}
	}
	if !a.Close(5 * time.Second) {
		t.Fatal("Close timed out with a sink that does not block")
	}
	recs := c.all()
	if len(recs) != 5 {
		t.Fatalf("%d records written, want 5", len(recs))
	}
	if got := string(recs[0].Arguments); got != `{"password":"REDACTED","user":"a"}` {
		t.Errorf("arguments %s", got)
	}
	for _, i := range []int{1, 2, 4} {
		if recs[i].Arguments != nil {
			t.Errorf("record %d (%s) has arguments %s", i, recs[i].Method, recs[i].Arguments)
		}
	}
	if got := a.Audit(&Record{Method: "ping", Decision: "allow"}, EffortFull, nil); got != AuditDropped || a.Dropped() != 1 {
		t.Errorf("after Close: %v, dropped %d", got, a.Dropped())
	}
}

func TestAuditorCloseBlockedSink(t *testing.T) {
	release := make(chan struct{})
	a, err := NewAuditor(AuditSettings{QueueSize: 1}, func(*Record) { <-release })
	if err != nil {
		t.Fatal(err)
	}
	a.Audit(&Record{Decision: "allow"}, EffortFull, nil)
	if a.Close(10 * time.Millisecond) {
		t.Fatal("Close reported the records written while the sink blocks")
	}
	close(release)
	var nilAuditor *Auditor
	if !nilAuditor.Close(0) {
		t.Fatal("a nil Auditor is not closed")
	}
}

// TestAuditorCloseBlockedSinkFreesQueue: an Auditor closed on a sink
// that stays stuck keeps only its writer goroutine, blocked in the one
// record it writes; the records queued behind it are dropped and counted,
// and Close leaves no goroutine of its own. Reloads on a stuck sink then
// cost a goroutine each, not a queue each.
func TestAuditorCloseBlockedSinkFreesQueue(t *testing.T) {
	const size = 64
	release := make(chan struct{})
	defer close(release)
	writing := make(chan struct{}, 1)
	a, err := NewAuditor(AuditSettings{QueueSize: size}, func(*Record) {
		select {
		case writing <- struct{}{}:
		default:
		}
		<-release
	})
	if err != nil {
		t.Fatal(err)
	}
	a.Audit(&Record{Decision: "allow"}, EffortFull, nil)
	<-writing
	for range size {
		if a.Audit(&Record{Decision: "allow", Arguments: json.RawMessage(`{"a":1}`)}, EffortFull, nil) != AuditWritten {
			t.Fatal("a record was not queued")
		}
	}
	before := runtime.NumGoroutine()
	if a.Close(10 * time.Millisecond) {
		t.Fatal("Close reported the records written while the sink blocks")
	}
	if got := len(a.writer.queue); got != 0 {
		t.Errorf("%d records still queued after Close gave up on the sink", got)
	}
	if got := a.Dropped(); got != size {
		t.Errorf("Dropped = %d, want the %d records queued", got, size)
	}
	// Let a goroutine Close started, if any, show up.
	time.Sleep(10 * time.Millisecond)
	if after := runtime.NumGoroutine(); after > before {
		t.Errorf("%d goroutines after Close, %d before", after, before)
	}
}

func TestAuditResultString(t *testing.T) {
	for r, want := range map[AuditResult]string{AuditWritten: "written", AuditDropped: "dropped", AuditSampledOut: "sampled_out"} {
		if r.String() != want {
			t.Errorf("%d: %q, want %q", r, r.String(), want)
		}
	}
}

// TestAuditorCapsClientFields: the fields of a record a client chooses
// are kept within MaxRecordField bytes, cut at a character boundary, and
// two values that differ only past the cut stay distinct.
func TestAuditorCapsClientFields(t *testing.T) {
	var c collect
	a, err := NewAuditor(AuditSettings{}, c.write)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("é", 20<<10)
	a.Audit(&Record{Decision: "allow", Method: "x/" + long + "a", Kind: "tool", Target: long + "a", Principal: long, Client: long}, EffortFull, nil)
	a.Audit(&Record{Decision: "allow", Method: "x/" + long + "b", Kind: "tool", Target: "short"}, EffortFull, nil)
	if !a.Close(5 * time.Second) {
		t.Fatal("Close timed out")
	}
	recs := c.all()
	if len(recs) != 2 {
		t.Fatalf("%d records", len(recs))
	}
	r := recs[0]
	for name, v := range map[string]string{"method": r.Method, "target": r.Target, "principal": r.Principal, "client": r.Client} {
		if len(v) > MaxRecordField || !utf8.ValidString(v) || !strings.Contains(v, "bytes, sha256:") {
			t.Errorf("%s: %d bytes, valid UTF-8 %v: %.60q", name, len(v), utf8.ValidString(v), v)
		}
	}
	if recs[0].Method == recs[1].Method {
		t.Error("two methods that differ past the cut give the same field")
	}
	if recs[1].Target != "short" {
		t.Errorf("a short target was changed: %q", recs[1].Target)
	}
}

// TestAuditorAuditBatch: a batch gives a record to each of its requests
// and notifications, responses skipped: each with its own method and
// target, the denied one with its rule and "deny", the others "allow"
// (even when the batch as a whole was recorded as denied), all with the
// batch's status and their place in it.
func TestAuditorAuditBatch(t *testing.T) {
	var c collect
	a, err := NewAuditor(AuditSettings{}, c.write)
	if err != nil {
		t.Fatal(err)
	}
	var p mcp.Peek
	body := `[{"jsonrpc":"2.0","id":1,"method":"ping"},` +
		`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"admin_reset"}},` +
		`{"jsonrpc":"2.0","id":9,"result":{}},` +
		`{"jsonrpc":"2.0","method":"notifications/progress"}]`
	if err := mcp.ParseEnvelope([]byte(body), true, &p); err != nil {
		t.Fatal(err)
	}
	var results []AuditResult
	base := &Record{Method: "POST", Decision: "deny", Rule: "r0", Status: 200, Kind: "tool", Target: "x"}
	a.AuditBatch(base, p.Messages, []Denial{{Index: 1, Kind: KindTool, Name: "admin_reset", Rule: "deny tool admin_*"}},
		EffortFull, func(r AuditResult) { results = append(results, r) })
	if !a.Close(5 * time.Second) {
		t.Fatal("Close timed out")
	}
	if len(results) != 3 {
		t.Fatalf("results %v, want 3", results)
	}
	want := []string{
		"ping   allow  1/4 200",
		"tools/call tool admin_reset deny deny tool admin_* 2/4 200",
		"notifications/progress   allow  4/4 200",
	}
	recs := c.all()
	for i, r := range recs {
		got := fmt.Sprintf("%s %s %s %s %s %d/%d %d", r.Method, r.Kind, r.Target, r.Decision, r.Rule, r.BatchIndex, r.BatchSize, r.Status)
		if i >= len(want) || got != want[i] {
			t.Errorf("record %d: %q", i, got)
		}
	}
	if len(recs) != len(want) {
		t.Errorf("%d records, want %d", len(recs), len(want))
	}
}
