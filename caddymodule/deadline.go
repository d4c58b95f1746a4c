package caddymodule

import (
	"net/http"
	"path"
	"time"

	"github.com/mcpgate/mcpgate/mcp"
)

// deadlineFor returns the deadline step of a POST's requests (0 for
// none): for a single request, the timeout of the first tool rule that
// matches its tool and has one, else request_timeout, also when its id
// follows the peek (the relay reads it from the body); for a batch, the
// largest step of its requests that have one, which the batch's other
// requests share: the batch is answered, or ends, as a whole.
func (h *Handler) deadlineFor(r *http.Request, call *mcp.Call) time.Duration {
	if r.Method != http.MethodPost {
		return 0
	}
	if !call.Peek.Batch {
		if first := call.First(); first.Kind == mcp.KindRequest {
			return h.stepOf(first)
		}
		return 0
	}
	var step time.Duration
	for i := range call.Peek.Messages {
		if m := &call.Peek.Messages[i]; m.Kind == mcp.KindRequest && m.ID != "" {
			step = max(step, h.stepOf(m))
		}
	}
	return step
}

// stepOf returns the deadline step of request m: the timeout of the first
// tool rule that matches its tool and has one, else request_timeout.
func (h *Handler) stepOf(m *mcp.Envelope) time.Duration {
	if m.Method == "tools/call" {
		for _, t := range h.Tools {
			if ok, _ := path.Match(t.Pattern, m.Name); ok && t.Timeout > 0 {
				return time.Duration(t.Timeout)
			}
		}
	}
	return h.requestTimeout
}
