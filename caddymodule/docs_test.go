package caddymodule

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/governor"
	"github.com/mcpgate/mcpgate/policy"
	"github.com/mcpgate/mcpgate/resources"
)

// docDuration writes a duration the way the docs do: 24h, 5m, 250ms.
func docDuration(d time.Duration) string {
	s := d.String() // 24h0m0s, 5m0s, 250ms
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// docSize writes a size the way the docs do: 64KiB, 1MiB.
func docSize(n int64) string {
	s := strings.Replace(humanize.IBytes(uint64(n)), ".0 ", " ", 1)
	return strings.Replace(s, " ", "", 1)
}

// TestDocumentedDefaults checks the defaults README.md and RUNBOOK.md give
// against the code's: each directive's row in the README's tables must
// show the value the code uses when the directive is absent.
func TestDocumentedDefaults(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	runbook, err := os.ReadFile("../RUNBOOK.md")
	if err != nil {
		t.Fatal(err)
	}
	th := admission.DefaultThresholds
	defaults := map[string]string{
		// mcp_proxy
		"session_lifetime":   docDuration(defaultSessionLifetime),
		"max_peek":           docSize(defaultMaxPeek),
		"max_body":           docSize(defaultMaxBody),
		"body_timeout":       docDuration(defaultBodyTimeout),
		"max_event_size":     docSize(defaultMaxEvent),
		"stream_buffer":      fmt.Sprintf("%d %s", defaultQueueEvents, docSize(defaultQueueBytes)),
		"write_timeout":      docDuration(defaultWriteTimeout),
		"keepalive":          docDuration(defaultKeepalive),
		"replay":             fmt.Sprintf("%d %s %s", defaultReplayEvents, docSize(defaultReplayBytes), docDuration(defaultReplayAge)),
		"retry_hint":         docDuration(defaultRetry),
		"drain":              docDuration(defaultDrain),
		"client_ipv6_prefix": fmt.Sprint(admission.DefaultIPv6PrefixBits),
		// mcp_proxy's audit block
		"max_argument_size": docSize(policy.DefaultMaxArguments),
		"degraded_sample":   fmt.Sprint(policy.DefaultDegradedSample),
		// mcp
		"session_memory":       docSize(resources.DefaultSessionMemory),
		"session_idle_timeout": docDuration(resources.DefaultIdleTimeout),
		"refresh":              docDuration(governor.DefaultRefresh),
		"levels":               fmt.Sprintf("%.2f %.2f %.2f %.2f", th.Degraded, th.Essential, th.Protective, th.Hysteresis),
		"degraded_fraction":    fmt.Sprint(governor.DefaultDegradedFraction),
		"goroutine_ceiling":    fmt.Sprint(governor.DefaultGoroutineCeiling),
		"sched_latency_target": docDuration(governor.DefaultSchedLatencyTarget),
		"max_sessions":         fmt.Sprint(governor.DefaultMaxSessions),
		"client_max_sessions":  fmt.Sprint(governor.MinClientMaxSessions),
	}
	for name, want := range defaults {
		rows := 0
		for line := range strings.SplitSeq(string(readme), "\n") {
			cells := strings.Split(strings.ReplaceAll(line, `\|`, "/"), "|")
			if len(cells) < 4 {
				continue
			}
			first := strings.TrimSpace(cells[1])
			if !strings.HasPrefix(first, "`"+name+" ") && !strings.HasPrefix(first, "`"+name+"`") &&
				!strings.Contains(first, "{ "+name+" ") {
				continue
			}
			rows++
			def := cells[2]
			if strings.Contains(first, "{ "+name+" ") {
				def = cells[3] // the Limits table: limit | directive | default | …
			}
			if !strings.Contains(def, "`"+want+"`") {
				t.Errorf("README: %s default %q, the code's is %q", name, strings.TrimSpace(def), want)
			}
		}
		if rows == 0 {
			t.Errorf("README: no table row documents %s (default %s)", name, want)
		}
	}
	for _, phrase := range []string{
		// audit's queue shares its name with mcp_proxy's own
		fmt.Sprintf("| `queue <n>` | `%d` | records waiting", policy.DefaultAuditQueue),
		fmt.Sprintf("is closed after %s instead of reverse_proxy's 2m", docDuration(defaultUpstreamIdle)),
	} {
		if !strings.Contains(string(readme), phrase) {
			t.Errorf("README does not say %q", phrase)
		}
	}
	for _, phrase := range []string{
		fmt.Sprintf("twice `sched_latency_target` (2 × %s)", docDuration(governor.DefaultSchedLatencyTarget)),
		fmt.Sprintf("`stream_buffer`, %d events / %s, or `write_timeout`, %s", defaultQueueEvents, docSize(defaultQueueBytes), docDuration(defaultWriteTimeout)),
		fmt.Sprintf("within `drain` (%s)", docDuration(defaultDrain)),
		fmt.Sprintf("`refresh` intervals (%s)", docDuration(governor.DefaultRefresh)),
		fmt.Sprintf("thresholds default to %.2f (degraded), %.2f (essential) and %.2f\n(protective)", th.Degraded, th.Essential, th.Protective),
	} {
		if !strings.Contains(strings.ToLower(string(runbook)), strings.ToLower(phrase)) {
			t.Errorf("RUNBOOK does not say %q", phrase)
		}
	}
}
