package policy

import (
	"strings"
	"sync"
	"testing"
	"time"
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

func TestAuditResultString(t *testing.T) {
	for r, want := range map[AuditResult]string{AuditWritten: "written", AuditDropped: "dropped", AuditSampledOut: "sampled_out"} {
		if r.String() != want {
			t.Errorf("%d: %q, want %q", r, r.String(), want)
		}
	}
}
