package caddymodule

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/relay"
)

// TestEnforce: a request whose messages are all denied is answered by the
// proxy as the upstream answers a call of something it lacks; a batch
// goes on without its denied requests, whose errors wait for the
// upstream's answer, its body and Content-Length rewritten to what is
// left.
func TestEnforce(t *testing.T) {
	h := &Handler{logger: zap.NewNop(), relay: new(relay.Proxy), Rules: []Rule{
		{Action: "deny", Kind: "tool", Targets: []string{"delete_*"}},
	}}
	if err := h.provisionGovernance(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	call := func(id int, name string) string {
		return `{"jsonrpc":"2.0","id":` + strconv.Itoa(id) + `,"method":"tools/call","params":{"name":"` + name + `"}}`
	}
	exchangeOf := func(body string) (*exchange, *httptest.ResponseRecorder) {
		r := requestWith("POST", body, "192.0.2.1", map[string]string{"Accept": "application/json, text/event-stream"})
		w := httptest.NewRecorder()
		x := &exchange{w: w, r: r, call: *callOf(t, body), decision: "allow", status: http.StatusOK}
		x.body.Whole = []byte(body)
		return x, w
	}

	// allowed: nothing happens
	x, w := exchangeOf(call(1, "add"))
	if h.enforce(x) || x.denied != nil || w.Code != http.StatusOK || w.Body.Len() != 0 {
		t.Fatalf("allowed call: denied %v, answered %d %q", x.denied, w.Code, w.Body)
	}

	// a single denied call: the proxy answers it
	x, w = exchangeOf(call(2, "delete_repo"))
	if !h.enforce(x) || x.decision != "deny" || x.rule == "" || x.status != http.StatusOK || x.code == 0 {
		t.Fatalf("denied call: decision %q rule %q status %d code %d", x.decision, x.rule, x.status, x.code)
	}
	var answer struct {
		ID    int                `json:"id"`
		Error struct{ Code int } `json:"error"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &answer); err != nil || answer.ID != 2 || answer.Error.Code != x.code {
		t.Fatalf("denied call answered %q (%v)", w.Body, err)
	}

	// a batch: the denied member is taken out, the rest goes on
	batch := "[" + call(3, "add") + "," + call(4, "delete_x") + "]"
	x, w = exchangeOf(batch)
	if h.enforce(x) || x.decision != "allow" || w.Body.Len() != 0 {
		t.Fatalf("batch: answered %q, decision %q", w.Body, x.decision)
	}
	sent, _ := io.ReadAll(x.r.Body)
	var left []map[string]any
	if err := json.Unmarshal(sent, &left); err != nil || len(left) != 1 || left[0]["id"] != 3.0 {
		t.Fatalf("batch sent on: %s (%v)", sent, err)
	}
	if x.r.ContentLength != int64(len(sent)) || x.r.Header.Get("Content-Length") != strconv.Itoa(len(sent)) ||
		len(x.call.Peek.Messages) != 1 || len(x.spliced) != 1 || len(x.denied) != 1 {
		t.Fatalf("batch: length %d / %q for %d bytes, %d messages, %d spliced", x.r.ContentLength,
			x.r.Header.Get("Content-Length"), len(sent), len(x.call.Peek.Messages), len(x.spliced))
	}

	// a batch of denied members only: the proxy answers every one
	x, w = exchangeOf("[" + call(5, "delete_a") + "," + call(6, "delete_b") + "]")
	var answers []map[string]any
	if !h.enforce(x) || json.Unmarshal(w.Body.Bytes(), &answers) != nil || len(answers) != 2 {
		t.Fatalf("all denied: %q", w.Body)
	}
}
