//go:build linux

package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// ---- idleedge ----

func edgeTitle(cfg edgeConfig) string {
	return fmt.Sprintf("idleedge: POST, wait the upstream's %s idle timeout ±%s, POST; %d rounds per target", cfg.UpstreamIdle, cfg.Jitter, cfg.Rounds)
}

// edgeSetup describes the idleedge scenario's setup, one bullet each.
func edgeSetup(cfg edgeConfig, upDesc string) []string {
	return []string{
		fmt.Sprintf("%s, in the harness process, without sessions (it answers tools/list without `Mcp-Session-Id`); its http.Server closes a keep-alive connection idle for %s (`IdleTimeout`; Node's http and uvicorn close one after 5s)", upDesc, cfg.UpstreamIdle),
		"one Caddy process serves the plain and mcp_proxy sites (their upstream connection pools are apart); the mcp_proxy sites have `require_session off`; plain keeps reverse_proxy's default 2m idle timeout for upstream connections, mcp_proxy its build's default (4s since 8527871) unless `-mcp-block` sets `transport http { keepalive }`",
		fmt.Sprintf("a round: POST `tools/list` (`Mcp-Protocol-Version: %s`, no session), wait %s + a jitter uniform in ±%s (seed %d; every target the same sequence), POST `tools/list` again; each request on a new connection to Caddy, so only the proxy's upstream connection is reused; %d rounds per target, the targets side by side, each in a loop of its own", protocolVersion, cfg.UpstreamIdle, cfg.Jitter, cfg.Seed, cfg.Rounds),
		fmt.Sprintf("client timeout %s per request; a status is counted once the whole answer was read; *other* is any status but 200 and 502, and no response at all (a transport error or the timeout)", cfg.Timeout),
	}
}

// writeEdgeReport writes the idleedge results.
func writeEdgeReport(w io.Writer, meta reportMeta, cfg edgeConfig, run *edgeRun) {
	writeMeta(w, meta)
	fmt.Fprintf(w, "### Second POST after the upstream's idle timeout\n\n")
	hdr := []string{"target", "rounds", "second POST 200", "second POST 502", "second POST other", "first POST failures", "upstream idle timeout", "jitter", "non-200 statuses (second; first)"}
	t := mdTable{Header: hdr, Right: rightFrom(len(hdr), 1)}
	t.Right[len(hdr)-1] = false
	for _, r := range run.Results {
		rounds := fmt.Sprint(r.Rounds)
		if r.Rounds < cfg.Rounds {
			rounds = fmt.Sprintf("%d of %d", r.Rounds, cfg.Rounds)
		}
		t.add(r.Target, rounds, fmt.Sprint(r.Second[http.StatusOK]), fmt.Sprint(r.Second[http.StatusBadGateway]), fmt.Sprint(r.secondOther()),
			fmt.Sprint(r.firstFailures()), cfg.UpstreamIdle.String(), "±"+cfg.Jitter.String(),
			nonOKCounts(r.Second)+"; "+nonOKCounts(r.First))
	}
	t.write(w)
	fmt.Fprintln(w)
	for _, r := range run.Results {
		if len(r.Failed) > 0 {
			fmt.Fprintf(w, "- %s, rounds whose second POST failed (round: jitter ms, status): %s\n", r.Target, failList(r.Failed, 30))
		}
		if r.FirstErr != "" {
			fmt.Fprintf(w, "- %s, first transport error: `%s`\n", r.Target, r.FirstErr)
		}
	}
	busy := ""
	if !run.Before.Quiet {
		busy = " (the quiet gate gave up waiting)"
	}
	fmt.Fprintf(w, "- other processes used %s of one core just before the run%s and %s on average during it; Caddy %s, the harness %s\n\n",
		pct(run.Before.OthersBefore), busy, pct(run.Usage.Others()), pct(run.Usage.Caddy.CPU), pct(run.Usage.Harness.CPU))
}

// nonOKCounts formats the statuses other than 200 as "none×1, 502×3"
// (none: no response), or "–".
func nonOKCounts(m map[int]int) string {
	other := map[int]int{}
	for st, n := range m {
		if st != http.StatusOK && n > 0 {
			other[st] = n
		}
	}
	return statusCounts(other)
}

// edgeBaseSetup is the report's setup line for the baseline target.
func edgeBaseSetup(bin string) string {
	return fmt.Sprintf("baseline: the mcp_proxy site with the mcp_proxy target's block and global options (the second Caddyfile below), served by a second Caddy process started from the -baseline binary %s, in front of the same mock upstream; its idle timeout for upstream connections is that build's default", bin)
}

// failList formats at most max failed rounds as "12: −1.32 ms 502, …".
func failList(fs []edgeFail, max int) string {
	parts := make([]string, 0, min(len(fs), max)+1)
	for i, f := range fs {
		if i == max {
			parts = append(parts, fmt.Sprintf("… %d more", len(fs)-max))
			break
		}
		st := fmt.Sprint(f.Status)
		if f.Status == 0 {
			st = "none"
		}
		parts = append(parts, fmt.Sprintf("%d: %+.2f ms %s", f.Round, float64(f.Jitter)/float64(time.Millisecond), st))
	}
	return strings.Join(parts, ", ")
}
