//go:build linux

package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// ---- upstreamkill ----

// killSetup describes the upstreamkill scenario's setup, one bullet each.
func killSetup(cfg killConfig) []string {
	return []string{
		"per target (and round) a fresh mock upstream process (the harness binary run again as `" + mockCommand + "`) on a fixed loopback port, and a fresh Caddy process serving only that target's site, with a loopback admin endpoint for /metrics; the targets run one after the other, in an order rotated by the round",
		fmt.Sprintf("%d sessions (initialize at %s), then, on a connection of its own each: %d GET SSE streams (`Accept: text/event-stream`; the mock sends `: open` and then a comment every 15 s); %d tools/call of `%s` (the mock answers `text/event-stream`, sends an `event: message` notifications/progress at once and its result after %s); %d tools/call of `%s` (the mock sends nothing until its `application/json` result after %s); every request carries `Mcp-Protocol-Version: %s` and every call its own JSON-RPC id",
			cfg.flows(), killProtocolVersion, cfg.Streams, cfg.StreamCalls, toolSlowStream, cfg.SlowTool, cfg.JSONCalls, toolSlowJSON, cfg.SlowTool, killProtocolVersion),
		"once every flow is in progress at the mock (its own count of open streams and running calls) and established at the client (a stream's header, a streaming call's first event, a JSON call's request written), the mock process gets SIGKILL",
		fmt.Sprintf("each flow's ending is recorded for %s after the kill: a call whose JSON body, or one of whose SSE events before the end, is a JSON-RPC error with its id counts as *JSON-RPC error with id*; an SSE response read to EOF after complete events is a *clean end*, *with retry hint* when a `retry:` field came before the end; a connection that drops (a read error, or EOF inside an event) or an error status without a JSON-RPC error in its body is *bare EOF / empty 5xx*; a flow still open after %s is *hung* and closed by the harness; anything else (an answer, an error for another id, a flow not open at the kill) is *other*", cfg.Budget, cfg.Budget),
		fmt.Sprintf("time to end = the flow's end (its last byte, or its error) − the moment SIGKILL was sent; then the mock is started again on the same port, as a supervisor would; Caddy's goroutines (`go_goroutines` from /metrics) are read before the flows open (the sessions' connections closed, and the mock's %s idle timeout past so that Caddy holds no upstream connection) and again %s after every flow ended, the mock restarted and a new session opened through the target (\"new session after the restart\": from the new mock listening to that session's answer)", mockIdleTimeout, max(cfg.Settle, mockIdleTimeout+time.Second)),
	}
}

// killGoals checks mcp_proxy's upstreamkill goals, per round.
func killGoals(cfg killConfig, results []*killResult) []goal {
	multi := killRounds(results) > 1
	var gs []goal
	for _, r := range results {
		if r.Target != targetMCP {
			continue
		}
		suffix := ""
		if multi {
			suffix = fmt.Sprintf(" (round %d)", r.Round)
		}
		all := countEnds(r.Ends, numFlowKinds)
		get := countEnds(r.Ends, flowGET)
		sc := countEnds(r.Ends, flowStreamCall)
		jc := countEnds(r.Ends, flowJSONCall)
		n := cfg.flows()
		gs = append(gs, goal{
			Goal:     fmt.Sprintf("%d of %d flows end within %s: calls with a JSON-RPC error carrying the id, GET streams cleanly with a retry hint%s", n, n, cfg.Budget, suffix),
			Known:    true,
			Met:      all.N == n && r.OpenAtKill == n && all.Expected == n,
			Measured: fmt.Sprintf("%d of %d (streaming calls %d of %d, JSON calls %d of %d, GET streams %d of %d); %d open at the kill", all.Expected, all.N, sc.Expected, sc.N, jc.Expected, jc.N, get.Expected, get.N, r.OpenAtKill),
		})
		gs = append(gs, goal{
			Goal: "no flow hung" + suffix, Known: true, Met: all.By[endHung] == 0,
			Measured: fmt.Sprintf("%d hung; the last flow ended %s ms after the kill", all.By[endHung], ms(all.Max)),
		})
		js := jc.Statuses
		gs = append(gs, goal{
			Goal: "JSON calls answered with 502 or 503" + suffix, Known: jc.N > 0,
			Met:      jc.N > 0 && js[502]+js[503] == jc.N,
			Measured: statusCounts(js),
		})
		g := goal{Goal: "Caddy's goroutines back to the baseline (after ≤ before)" + suffix}
		if r.GoroutinesBefore >= 0 && r.GoroutinesAfter >= 0 {
			g.Known, g.Met = true, r.GoroutinesAfter <= r.GoroutinesBefore
			g.Measured = fmt.Sprintf("%.0f → %.0f", r.GoroutinesBefore, r.GoroutinesAfter)
		}
		gs = append(gs, g)
	}
	return gs
}

// killRounds is the highest round of the results.
func killRounds(results []*killResult) int {
	n := 0
	for _, r := range results {
		n = max(n, r.Round)
	}
	return n
}

// statusCounts formats statuses as "502×10, none×2" (0 is "none": no
// response came), sorted.
func statusCounts(m map[int]int) string {
	if len(m) == 0 {
		return "–"
	}
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		s := fmt.Sprint(k)
		if k == 0 {
			s = "none"
		}
		parts = append(parts, fmt.Sprintf("%s×%d", s, m[k]))
	}
	return strings.Join(parts, ", ")
}

// goroutinePair formats "before → after", "–" for a missing sample.
func goroutinePair(a, b float64) string {
	f := func(v float64) string {
		if v < 0 {
			return "–"
		}
		return fmt.Sprintf("%.0f", v)
	}
	return f(a) + " → " + f(b)
}

// quietCell shows the CPU other processes used just before a run,
// marked when the quiet gate gave up waiting.
func quietCell(q quietness) string {
	s := pct(q.OthersBefore)
	if !q.Quiet {
		s += " (busy)"
	}
	return s
}

// recoveredCell says how soon a new session opened after the restart.
func recoveredCell(r *killResult) string {
	if r.Recovered < 0 {
		if r.RecoverErr != "" {
			return "failed: " + r.RecoverErr
		}
		return "–"
	}
	return "ok after " + ms(r.Recovered) + " ms"
}

// writeKillReport writes the upstreamkill results.
func writeKillReport(w io.Writer, meta reportMeta, cfg killConfig, results []*killResult) {
	writeMeta(w, meta)
	multi := killRounds(results) > 1
	lead := func(r *killResult, cells ...string) []string {
		if multi {
			return append([]string{fmt.Sprint(r.Round), r.Target}, cells...)
		}
		return append([]string{r.Target}, cells...)
	}
	head := func(cols ...string) []string {
		if multi {
			return append([]string{"round", "target"}, cols...)
		}
		return append([]string{"target"}, cols...)
	}
	first := 1
	if multi {
		first = 2
	}

	fmt.Fprintf(w, "### How the flows ended\n\n")
	hdr := head("flows", "open at the kill", "JSON-RPC error with id", "clean end with retry hint", "clean end without hint",
		"bare EOF or empty 5xx", fmt.Sprintf("hung (> %s)", cfg.Budget), "other", "as aimed for", "time to end p50 / max ms",
		"Caddy goroutines before → after", "new session after the restart", "other processes CPU before the run")
	t := mdTable{Header: hdr, Right: rightFrom(len(hdr), first)}
	for _, r := range results {
		c := countEnds(r.Ends, numFlowKinds)
		lat := endTimes(r.Ends)
		t.add(lead(r, fmt.Sprint(c.N), fmt.Sprint(r.OpenAtKill), fmt.Sprint(c.By[endRPCError]), fmt.Sprint(c.By[endCleanRetry]),
			fmt.Sprint(c.By[endClean]), fmt.Sprint(c.By[endBare]), fmt.Sprint(c.By[endHung]), fmt.Sprint(c.By[endOther]),
			fmt.Sprintf("%d of %d", c.Expected, c.N), ms(lat.P50)+" / "+ms(c.Max),
			goroutinePair(r.GoroutinesBefore, r.GoroutinesAfter), recoveredCell(r), quietCell(r.Before))...)
	}
	t.write(w)
	fmt.Fprintln(w)

	fmt.Fprintf(w, "### By kind of flow\n\n")
	hdr = head("flow", "flows", "JSON-RPC error with id", "clean end with retry hint", "clean end without hint",
		"bare EOF or empty 5xx", "hung", "other", "statuses", "`retry:` received", "time to end max ms", "mock held at the kill")
	k := mdTable{Header: hdr, Right: rightFrom(len(hdr), first+1)}
	for _, r := range results {
		for kind := range numFlowKinds {
			c := countEnds(r.Ends, kind)
			if c.N == 0 {
				continue
			}
			held := r.AtKill.Streams
			switch kind {
			case flowStreamCall:
				held = r.AtKill.StreamCalls
			case flowJSONCall:
				held = r.AtKill.JSONCalls
			}
			k.add(lead(r, kind.String(), fmt.Sprint(c.N), fmt.Sprint(c.By[endRPCError]), fmt.Sprint(c.By[endCleanRetry]),
				fmt.Sprint(c.By[endClean]), fmt.Sprint(c.By[endBare]), fmt.Sprint(c.By[endHung]), fmt.Sprint(c.By[endOther]),
				statusCounts(c.Statuses), fmt.Sprint(c.Retry), ms(c.Max), fmt.Sprint(held))...)
		}
	}
	k.write(w)
	fmt.Fprintln(w)

	fmt.Fprintf(w, "### Endings in detail\n\n")
	for _, r := range results {
		label := r.Target
		if multi {
			label += fmt.Sprintf(", round %d", r.Round)
		}
		for _, d := range endDetails(r.Ends) {
			fmt.Fprintf(w, "- %s, %s: `%s` ×%d\n", label, d.kind, d.detail, d.n)
		}
	}
	fmt.Fprintln(w)
	for _, r := range results {
		fmt.Fprintf(w, "<details><summary>Caddyfile (%s)</summary>\n\n```caddyfile\n%s```\n\n</details>\n\n", r.Target, r.Caddyfile)
		if multi {
			break // the rounds differ only in ports
		}
	}
	writeGoals(w, killGoals(cfg, results))
}

// endDetail is how many flows of a kind ended with one detail.
type endDetail struct {
	kind   flowKind
	detail string
	n      int
}

// endDetails groups flow endings by kind and detail, in kind order and
// then by count, most first.
func endDetails(ends []flowEnd) []endDetail {
	idx := map[endDetail]int{}
	var out []endDetail
	for _, e := range ends {
		key := endDetail{kind: e.Kind, detail: e.Detail}
		i, ok := idx[key]
		if !ok {
			i = len(out)
			idx[key] = i
			out = append(out, key)
		}
		out[i].n++
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].kind != out[j].kind {
			return out[i].kind < out[j].kind
		}
		return out[i].n > out[j].n
	})
	return out
}
