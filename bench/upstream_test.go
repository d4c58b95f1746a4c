//go:build linux

package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// mockPost sends a POST with body, in session sid ("" for none), to the
// mock's handler through an httptest.ResponseRecorder: no listener, no
// network.
func mockPost(u *upstream, body, sid string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(body))
	setMCPHeaders(r.Header, sid)
	w := httptest.NewRecorder()
	u.ServeHTTP(w, r)
	return w
}

func TestMockUpstreamHandler(t *testing.T) {
	u := &upstream{}
	post := func(body, sid string) *httptest.ResponseRecorder { return mockPost(u, body, sid) }
	w := post(initializeBody, "")
	sid := w.Header().Get("Mcp-Session-Id")
	if w.Code != 200 || len(sid) != 32 || !strings.Contains(w.Body.String(), `"id":0,"result"`) {
		t.Fatalf("initialize: %d %q %s", w.Code, sid, w.Body)
	}
	w = post(string(toolsCallBody(nil, 7)), sid)
	if w.Code != 200 || w.Body.String() != `{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"ok"}]}}` ||
		w.Header().Get("Content-Type") != "application/json" {
		t.Errorf("tools/call: %d %s %v", w.Code, w.Body, w.Header())
	}
	if w = post(string(toolsCallBody(nil, 8)), "nope"); w.Code != 404 {
		t.Errorf("unknown session: %d", w.Code)
	}
	if w = post(`{"jsonrpc":"2.0","method":"notifications/initialized"}`, sid); w.Code != 202 {
		t.Errorf("notification: %d", w.Code)
	}
	if w = post(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7}}`, sid); w.Code != 202 {
		t.Errorf("cancelled: %d", w.Code)
	}
	if w = post(`{`, sid); w.Code != 400 {
		t.Errorf("bad JSON: %d", w.Code)
	}
	w = post(string(toolsListBody(nil, 9)), sid)
	var list struct {
		ID     int `json:"id"`
		Result struct {
			Tools []struct {
				Name string `json:"name"`
			} `json:"tools"`
		} `json:"result"`
	}
	if w.Code != 200 || json.Unmarshal(w.Body.Bytes(), &list) != nil || list.ID != 9 ||
		len(list.Result.Tools) != len(mockTools) || !strings.Contains(w.Body.String(), listMarker) {
		t.Errorf("tools/list: %d %.200s", w.Code, w.Body)
	}
	if w = post(string(toolsListBody(nil, 10)), "nope"); w.Code != 404 {
		t.Errorf("tools/list, unknown session: %d", w.Code)
	}
	c := u.counts()
	if c.Inits != 1 || c.Received != 4 || c.Served != 2 || c.BadSession != 2 || c.Other != 2 || c.Cancelled != 1 {
		t.Errorf("counts = %+v", c)
	}
}

func TestMockUpstreamCancelledWhileQueued(t *testing.T) {
	u := &upstream{capacity: 1, slots: make(chan struct{}, 1), service: time.Hour}
	u.slots <- struct{}{} // the only slot is taken
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if u.serve(ctx) {
		t.Error("served a cancelled request")
	}
	if u.busy() != 0 || u.peakQueue.Load() != 1 {
		t.Errorf("busy %d, peak queue %d", u.busy(), u.peakQueue.Load())
	}
	if got := capacityPerSecond(16, 20*time.Millisecond); got != 800 {
		t.Errorf("capacity = %v", got)
	}
}
