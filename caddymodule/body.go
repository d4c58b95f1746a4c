package caddymodule

import (
	"time"

	"github.com/dustin/go-humanize"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/resources"
)

// Defaults of the request body bounds.
const (
	defaultMaxBody     = 4 << 20
	defaultBodyTimeout = 10 * time.Second
)

// bodyLimits returns the bounds mcp.ReadBody reads a POST body within,
// its head's buffer reserved from memory; a refusal for want of memory
// counts as backpressure.
func bodyLimits(maxPeek, maxBody int64, timeout time.Duration, memory *resources.Budget) mcp.BodyLimits {
	return mcp.BodyLimits{
		MaxPeek: maxPeek, MaxBody: maxBody, MaxBodyText: humanSize(maxBody), Timeout: timeout,
		Reserve: func(n int64) bool {
			if memory.Reserve(n) {
				return true
			}
			metrics.backpressure.Inc()
			return false
		},
		Release: memory.Release,
	}
}

// humanSize writes a byte count for a message, such as "4.0 MiB".
func humanSize(n int64) string { return humanize.IBytes(uint64(n)) }
