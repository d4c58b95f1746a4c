package caddymodule

import (
	"fmt"
	"net/http"
	"path"
	"time"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
)

// deadlineFor returns the deadline step of a POST's requests (0 for
// none, and for other methods): see policy.Deadlines.For.
func (h *Handler) deadlineFor(r *http.Request, call *mcp.Call) time.Duration {
	if r.Method != http.MethodPost {
		return 0
	}
	return h.deadlines.For(call.Peek.Messages, call.Peek.Batch)
}

// provisionDeadlines reads request_timeout and the tools' timeouts,
// refusing a malformed pattern of a tool rule with a timeout, which would
// match no tool (admission checks those with a limit).
func (h *Handler) provisionDeadlines() error {
	h.deadlines = policy.Deadlines{Request: time.Duration(h.RequestTimeout)}
	for _, t := range h.Tools {
		if t.Timeout <= 0 {
			continue
		}
		if _, err := path.Match(t.Pattern, ""); err != nil || t.Pattern == "" {
			return fmt.Errorf("tool %q: a malformed or empty pattern: %v", t.Pattern, err)
		}
		h.deadlines.Tools = append(h.deadlines.Tools, policy.ToolTimeout{Pattern: t.Pattern, Timeout: time.Duration(t.Timeout)})
	}
	return nil
}
