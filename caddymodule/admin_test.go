package caddymodule

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/admission"
)

// adminServe runs one admin request through the admin API handler.
func adminServe(t *testing.T, method, target, body string) (int, string) {
	t.Helper()
	var rd *strings.Reader
	if body != "" {
		rd = strings.NewReader(body)
	} else {
		rd = strings.NewReader("")
	}
	r := httptest.NewRequest(method, target, rd)
	w := httptest.NewRecorder()
	err := (&AdminAPI{logger: zap.NewNop()}).serve(w, r)
	if err != nil {
		if ae, ok := err.(caddy.APIError); ok {
			return ae.HTTPStatus, ae.Err.Error()
		}
		t.Fatalf("serve: %v", err)
	}
	return w.Code, w.Body.String()
}

// adminGlobal makes a fresh process-wide state the current one for the
// test.
func adminGlobal(t *testing.T) *globalState {
	t.Helper()
	g := newGlobalState(zap.NewNop())
	globalMu.Lock()
	prev := globalCur
	globalCur = g
	globalMu.Unlock()
	t.Cleanup(func() {
		globalMu.Lock()
		globalCur = prev
		globalMu.Unlock()
		g.Close()
	})
	return g
}

// TestAdminPinsQuery: DELETE /mcp/pins forgets one upstream's pins, or
// every pin without a query; an empty upstream (an unset shell variable)
// or another parameter (a typo) is refused and forgets nothing.
func TestAdminPinsQuery(t *testing.T) {
	t.Cleanup(func() { toolPins.Forget("") })
	setup := func() {
		toolPins.Forget("")
		toolPins.Check("10.0.0.1:3000", "a", json.RawMessage(`{"name":"a"}`))
		toolPins.Check("10.0.0.2:3000", "b", json.RawMessage(`{"name":"b"}`))
	}
	for _, target := range []string{"/mcp/pins?upstream=", "/mcp/pins?upstrem=10.0.0.1:3000", "/mcp/pins?upstream=10.0.0.1:3000&upstream=10.0.0.2:3000"} {
		setup()
		if st, body := adminServe(t, http.MethodDelete, target, ""); st != http.StatusBadRequest || toolPins.Len() != 2 {
			t.Errorf("DELETE %s: %d %s, %d pins left; want 400 and 2", target, st, strings.TrimSpace(body), toolPins.Len())
		}
	}
	setup()
	if st, _ := adminServe(t, http.MethodDelete, "/mcp/pins?upstream=10.0.0.1:3000", ""); st != http.StatusOK || toolPins.Len() != 1 {
		t.Errorf("DELETE of one upstream's pins: %d, %d pins left; want 200 and 1", st, toolPins.Len())
	}
	if st, _ := adminServe(t, http.MethodDelete, "/mcp/pins", ""); st != http.StatusOK || toolPins.Len() != 0 {
		t.Errorf("DELETE of every pin: %d, %d pins left; want 200 and 0", st, toolPins.Len())
	}
}

// TestAdminBodyOneJSONValue: an admin POST body holds one JSON object: a
// second value or trailing data is refused (400) rather than the first
// acted upon, and a body over the cap is refused (413), whatever fits
// under it.
func TestAdminBodyOneJSONValue(t *testing.T) {
	g := adminGlobal(t)
	for _, c := range []struct {
		path, body string
		want       int
	}{
		{"/mcp/level", `{"level":"full","duration":"5m"}{"level":"protective","duration":"1h"}`, http.StatusBadRequest},
		{"/mcp/level", `{"level":"full","duration":"5m"} garbage`, http.StatusBadRequest},
		{"/mcp/pressure", `{"pressure":0.1}{"pressure":0.99}`, http.StatusBadRequest},
		{"/mcp/pressure", `{"pressure":0.1}` + strings.Repeat(" ", 8<<10) + `x`, http.StatusRequestEntityTooLarge},
	} {
		if st, body := adminServe(t, http.MethodPost, c.path, c.body); st != c.want {
			t.Errorf("POST %s %.60q: %d %s, want %d", c.path, c.body, st, strings.TrimSpace(body), c.want)
		}
	}
	if g.Level() != admission.LevelFull || g.Injected().Pressure() != 0 {
		t.Errorf("a refused request acted: level %v, injected %v", g.Level(), g.Injected().Pressure())
	}
	if st, body := adminServe(t, http.MethodPost, "/mcp/level", `{"level":"degraded","duration":"1m"}`+"\n"); st != http.StatusOK {
		t.Errorf("a well-formed pin with a trailing newline: %d %s", st, body)
	}
	g.Unpin(time.Now())
}
