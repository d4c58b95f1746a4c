package caddymodule

import (
	"net/http"
	"path"
	"time"

	"github.com/mcpgate/mcpgate/mcp"
)

// deadlineFor returns the deadline step of a request: the timeout of the
// first tool rule that matches its tool and has one, else
// request_timeout; 0 for none. Only single requests have one.
func (h *Handler) deadlineFor(r *http.Request, call *mcp.Call) time.Duration {
	first := call.First()
	if r.Method != http.MethodPost || call.Peek.Batch || first.Kind != mcp.KindRequest || first.ID == "" {
		return 0
	}
	if first.Method == "tools/call" {
		for _, t := range h.Tools {
			if ok, _ := path.Match(t.Pattern, first.Name); ok && t.Timeout > 0 {
				return time.Duration(t.Timeout)
			}
		}
	}
	return h.requestTimeout
}
