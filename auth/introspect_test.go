package auth

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestIntrospectionRemembersRefusals: a refused token is refused again
// from memory for RefusalTTL (at most CacheTTL), for the audiences it was
// checked against; a token not valid yet, or one the endpoint could not
// be asked about, is asked about again; a negative CacheTTL remembers
// nothing.
func TestIntrospectionRemembersRefusals(t *testing.T) {
	now := time.Now()
	var calls atomic.Int64
	var down atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if down.Load() {
			http.Error(w, "down", http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		switch r.FormValue("token") {
		case "no-answer":
			_, _ = w.Write([]byte(`{"error":"server_error"}`))
		case "later":
			fmt.Fprintf(w, `{"active":true,"sub":"bob","nbf":%d}`, now.Add(time.Hour).Unix())
		case "other-aud":
			_, _ = w.Write([]byte(`{"active":true,"sub":"bob","aud":"https://x.example"}`))
		default:
			_, _ = w.Write([]byte(`{"active":false}`))
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	aud := []string{resource}
	check := func(in *Introspector, tok string, aud []string, at time.Time) {
		t.Helper()
		if p, err := in.Check(ctx, tok, aud, nil, "", at); err == nil {
			t.Fatalf("%s accepted: %+v", tok, p)
		}
	}
	asked := func(what string, want int64) {
		t.Helper()
		if n := calls.Swap(0); n != want {
			t.Errorf("%s: the endpoint was asked %d times, want %d", what, n, want)
		}
	}
	in := &Introspector{URL: srv.URL}
	for range 20 {
		check(in, "bogus", aud, now)
		check(in, "other-aud", aud, now)
	}
	asked("two refused tokens twenty times each", 2)
	check(in, "bogus", []string{"https://other.example/mcp"}, now)
	asked("a refused token for another resource", 1)
	check(in, "bogus", aud, now.Add(RefusalTTL))
	asked("a refused token past RefusalTTL", 1)
	for range 3 {
		check(in, "later", aud, now)
	}
	asked("a token not valid yet, three times", 3)
	for range 3 {
		if _, err := in.Check(ctx, "no-answer", aud, nil, "", now); err == nil || !strings.Contains(err.Error(), "could not be checked") {
			t.Fatalf("an answer without \"active\": %v, want the token could not be checked", err)
		}
	}
	asked("an answer without \"active\", three times", 3)
	down.Store(true)
	for range 3 {
		check(in, "unasked", aud, now)
	}
	asked("a token the endpoint failed to answer for, three times", 3)
	down.Store(false)

	short := &Introspector{URL: srv.URL, CacheTTL: time.Second}
	check(short, "bogus", aud, now)
	check(short, "bogus", aud, now.Add(time.Second))
	asked("with a CacheTTL shorter than RefusalTTL", 2)
	none := &Introspector{URL: srv.URL, CacheTTL: -1}
	for range 3 {
		check(none, "bogus", aud, now)
	}
	asked("with caching off", 3)
}

// TestIntrospectionInFlightBound: however many new tokens arrive at once,
// at most MaxInFlight introspection requests are in flight; the others
// wait for a slot and then are checked, and one that cannot wait (its
// context ends) is refused with ErrBusy, a 503.
func TestIntrospectionInFlightBound(t *testing.T) {
	const limit, checks = 4, 24
	release := make(chan struct{})
	var inFlight, most atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		<-release
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"active":true,"sub":"` + r.FormValue("token") + `"}`))
	}))
	defer srv.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	in := &Introspector{URL: srv.URL, MaxInFlight: limit, Client: &http.Client{Timeout: time.Minute}}
	now := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, checks)
	for i := range checks {
		wg.Go(func() {
			tok := fmt.Sprint("t", i)
			p, err := in.Check(context.Background(), tok, nil, nil, "", now)
			if err == nil && p.ID != tok {
				err = fmt.Errorf("%s: principal %q", tok, p.ID)
			}
			errs <- err
		})
	}
	// Wait (bounded) until the endpoint holds its limit of requests and
	// the other checks wait for a slot.
	for i := 0; i < 500 && (inFlight.Load() < limit || len(in.slots) < limit); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := inFlight.Load(); n != limit {
		t.Fatalf("%d requests in flight, want %d", n, limit)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := in.Check(ctx, "impatient", nil, nil, "", now); err != ErrBusy {
		t.Errorf("a check that cannot wait for a slot: %v, want ErrBusy", err)
	}
	if ErrBusy.Status != http.StatusServiceUnavailable {
		t.Errorf("ErrBusy is a %d", ErrBusy.Status)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if m := most.Load(); m > limit {
		t.Errorf("%d requests were in flight at once, want at most %d", m, limit)
	}
}

// panickingTransport panics on every request, as a faulty custom
// transport might.
type panickingTransport struct{}

func (panickingTransport) RoundTrip(*http.Request) (*http.Response, error) { panic("transport") }

// TestIntrospectionSlotOnPanic: a request slot is given back even when
// the request panics (a recovered panic must not leak slots until every
// check is refused).
func TestIntrospectionSlotOnPanic(t *testing.T) {
	in := &Introspector{URL: "http://127.0.0.1:1/introspect", MaxInFlight: 1, Client: &http.Client{Transport: panickingTransport{}}}
	for i := range 3 {
		func() {
			defer func() { _ = recover() }()
			_, _ = in.Check(context.Background(), fmt.Sprint("t", i), nil, nil, "", time.Now())
		}()
		if n := len(in.slots); n != 0 {
			t.Fatalf("after panic %d: %d slots held", i+1, n)
		}
	}
}

// TestIntrospectionPerClientBound: one client may have MaxPerClient checks
// under way; its next is refused at once with ErrClientBusy (a 429) while
// another client's check still gets a slot, and a check that names no
// client is bounded by MaxInFlight only. A client's count ends with its
// checks.
func TestIntrospectionPerClientBound(t *testing.T) {
	release := make(chan struct{})
	var inFlight atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inFlight.Add(1)
		defer inFlight.Add(-1)
		if strings.HasPrefix(r.FormValue("token"), "slow") {
			<-release
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"active":true,"sub":"u"}`))
	}))
	defer srv.Close()
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free()
	in := &Introspector{URL: srv.URL, MaxInFlight: 8, MaxPerClient: 2, Client: &http.Client{Timeout: time.Minute}}
	now := time.Now()
	a := WithClient(context.Background(), "192.0.2.1")
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() { _, _ = in.Check(a, fmt.Sprint("slow-a", i), nil, nil, "", now) })
	}
	for i := 0; i < 500 && inFlight.Load() < 2; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := in.Check(a, "third-of-a", nil, nil, "", now); err != ErrClientBusy {
		t.Errorf("a client's third check: %v, want ErrClientBusy", err)
	}
	if ErrClientBusy.Status != http.StatusTooManyRequests {
		t.Errorf("ErrClientBusy is a %d", ErrClientBusy.Status)
	}
	b := WithClient(context.Background(), "192.0.2.2")
	if p, err := in.Check(b, "of-b", nil, nil, "", now); err != nil || p.ID != "u" {
		t.Errorf("another client's check: %+v %v", p, err)
	}
	for i := range 3 {
		if _, err := in.Check(context.Background(), fmt.Sprint("anonymous", i), nil, nil, "", now); err != nil {
			t.Errorf("a check naming no client: %v", err)
		}
	}
	free()
	wg.Wait()
	if p, err := in.Check(a, "after", nil, nil, "", now); err != nil || p.ID != "u" {
		t.Errorf("the client's check once its others ended: %+v %v", p, err)
	}
	in.clientsMu.Lock()
	n := len(in.clients)
	in.clientsMu.Unlock()
	if n != 0 {
		t.Errorf("%d clients counted with no check under way", n)
	}
}
