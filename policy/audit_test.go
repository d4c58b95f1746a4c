package policy

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestWriterWrites(t *testing.T) {
	var mu sync.Mutex
	var got []string
	w := NewWriter(0, func(r *Record) {
		mu.Lock()
		got = append(got, r.Target)
		mu.Unlock()
	})
	for i := range 100 {
		if !w.Log(&Record{Target: fmt.Sprint(i)}) {
			t.Fatalf("Log %d dropped with a queue of %d", i, DefaultQueueSize)
		}
	}
	w.Close()
	if len(got) != 100 || got[0] != "0" || got[99] != "99" {
		t.Fatalf("wrote %d records: %v", len(got), got)
	}
	if w.Written() != 100 || w.Dropped() != 0 {
		t.Fatalf("Written = %d, Dropped = %d; want 100, 0", w.Written(), w.Dropped())
	}
	if w.Log(&Record{}) {
		t.Fatal("Log after Close queued")
	}
	if w.Dropped() != 1 {
		t.Fatalf("Dropped = %d, want 1", w.Dropped())
	}
	w.Close() // a second Close returns at once
	if w.Log(nil) {
		t.Fatal("Log(nil) = true")
	}
}

// TestWriterCopies checks that the record written is the one logged, not
// the caller's record as changed after Log.
func TestWriterCopies(t *testing.T) {
	release := make(chan struct{})
	written := make(chan Record, 2)
	w := NewWriter(4, func(r *Record) {
		<-release
		written <- *r
	})
	r := &Record{Principal: "alice", Method: "tools/call", Status: 200}
	w.Log(r)
	r.Principal, r.Status = "mallory", 500
	w.Log(r)
	close(release)
	w.Close()
	if a, b := <-written, <-written; a.Principal != "alice" || a.Status != 200 || b.Principal != "mallory" || b.Status != 500 {
		t.Fatalf("wrote %+v and %+v", a, b)
	}
}

// TestWriterBlocked checks that Log neither blocks nor grows the queue when
// write is stuck, and that Close writes what was queued once write
// returns.
func TestWriterBlocked(t *testing.T) {
	const size = 8
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	w := NewWriter(size, func(*Record) {
		select {
		case started <- struct{}{}:
		default:
		}
		<-release
	})
	w.Log(&Record{})
	<-started // the writer holds one record, blocked in write
	const n = 10000
	start := time.Now()
	accepted := 0
	for range n {
		if w.Log(&Record{Method: "tools/call"}) {
			accepted++
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("%d Logs with a blocked writer took %v", n, d)
	}
	if accepted != size {
		t.Fatalf("queued %d records with write blocked, want the queue size %d", accepted, size)
	}
	if got := w.Dropped(); got != n-size {
		t.Fatalf("Dropped = %d, want %d", got, n-size)
	}
	// Close waits for write: unblock it first.
	close(release)
	done := make(chan struct{})
	go func() { w.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	if got := w.Written(); got != size+1 {
		t.Fatalf("Written = %d, want %d", got, size+1)
	}
}

func TestWriterConcurrentClose(t *testing.T) {
	w := NewWriter(16, func(*Record) {})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 1000 {
				w.Log(&Record{})
			}
		})
	}
	time.Sleep(time.Millisecond)
	w.Close()
	wg.Wait()
	if w.Written()+w.Dropped() != 4000 {
		t.Fatalf("Written %d + Dropped %d != 4000", w.Written(), w.Dropped())
	}
}

func TestRedact(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		pointers []string
		max      int
		want     string // "" for nil
	}{
		{"no pointers compacts", `{ "b" : 1, "a" : [1, 2] }`, nil, 0, `{"b":1,"a":[1,2]}`},
		{"member", `{"user":"u","password":"p"}`, []string{"/password"}, 0, `{"password":"REDACTED","user":"u"}`},
		{"nested", `{"auth":{"token":"t","kind":"bearer"}}`, []string{"/auth/token"}, 0, `{"auth":{"kind":"bearer","token":"REDACTED"}}`},
		{"object value", `{"auth":{"token":"t"},"x":1}`, []string{"/auth"}, 0, `{"auth":"REDACTED","x":1}`},
		{"array index", `{"keys":["a","b","c"]}`, []string{"/keys/1"}, 0, `{"keys":["a","REDACTED","c"]}`},
		{"index out of range", `{"keys":["a"]}`, []string{"/keys/1"}, 0, `{"keys":["a"]}`},
		{"leading zero index", `{"keys":["a","b"]}`, []string{"/keys/01"}, 0, `{"keys":["a","b"]}`},
		{"dash index", `{"keys":["a"]}`, []string{"/keys/-"}, 0, `{"keys":["a"]}`},
		{"index into object", `{"0":"a","1":"b"}`, []string{"/1"}, 0, `{"0":"a","1":"REDACTED"}`},
		{"escapes", `{"a/b":1,"c~d":2,"e":3}`, []string{"/a~1b", "/c~0d"}, 0, `{"a/b":"REDACTED","c~d":"REDACTED","e":3}`},
		{"empty name", `{"":1,"a":2}`, []string{"/"}, 0, `{"":"REDACTED","a":2}`},
		{"whole value", `{"a":1}`, []string{"/a", ""}, 0, `"REDACTED"`},
		{"unresolved skipped", `{"a":1}`, []string{"/b", "/a/c", "/a/0"}, 0, `{"a":1}`},
		{"malformed pointer skipped", `{"a":1}`, []string{"a", "/~2"}, 0, `{"a":1}`},
		{"through a scalar", `{"a":"text"}`, []string{"/a/b"}, 0, `{"a":"text"}`},
		{"duplicate member redacted once", `{"p":"1","p":"2"}`, []string{"/p"}, 0, `{"p":"REDACTED"}`},
		{"numbers as written", `{"n":1.50,"big":123456789012345678901234567890}`, []string{"/x"}, 0, `{"big":123456789012345678901234567890,"n":1.50}`},
		{"no HTML escaping", `{"q":"a<b>&c"}`, []string{"/x"}, 0, `{"q":"a<b>&c"}`},
		{"invalid JSON", `{"a":`, nil, 0, ""},
		{"invalid JSON with pointers", `{"a":`, []string{"/a"}, 0, ""},
		{"trailing data", `{"a":1} {}`, []string{"/a"}, 0, ""},
		{"trailing data, no pointers", `{"a":1} {}`, nil, 0, ""},
		{"fits", `{"a":1}`, nil, 7, `{"a":1}`},
		{"truncated", `{"a":12}`, nil, 7, `"TRUNCATED (8 bytes)"`},
		{"truncated after redaction", `{"secret":"a very long secret value"}`, []string{"/secret"}, 20, `"TRUNCATED (21 bytes)"`},
		{"redaction makes it fit", `{"secret":"a very long secret value"}`, []string{"/secret"}, 21, `{"secret":"REDACTED"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Redact(json.RawMessage(tt.in), tt.pointers, tt.max)
			if tt.want == "" {
				if got != nil {
					t.Fatalf("Redact = %s, want nil", got)
				}
				return
			}
			if string(got) != tt.want {
				t.Fatalf("Redact = %s, want %s", got, tt.want)
			}
			if !json.Valid(got) {
				t.Fatalf("Redact output is not JSON: %s", got)
			}
		})
	}
}

func TestRedactDoesNotLeak(t *testing.T) {
	in := `{"a":{"password":"hunter2","list":[{"password":"hunter2"}]}}`
	got := string(Redact(json.RawMessage(in), []string{"/a/password", "/a/list/0/password"}, 0))
	if strings.Contains(got, "hunter2") {
		t.Fatalf("Redact left the secret: %s", got)
	}
}

func TestValidPointer(t *testing.T) {
	tests := []struct {
		p  string
		ok bool
	}{
		{"", true},
		{"/", true},
		{"/a/b", true},
		{"/a~0b/c~1d", true},
		{"/0/-", true},
		{"a", false},
		{"/a~", false},
		{"/a~2", false},
		{"#/a", false},
	}
	for _, tt := range tests {
		if err := ValidPointer(tt.p); (err == nil) != tt.ok {
			t.Errorf("ValidPointer(%q) = %v, want ok %v", tt.p, err, tt.ok)
		}
	}
}
