//go:build linux

package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// goal is one of the goals with its measured figure.
type goal struct {
	Goal, Measured string
	Met            bool
	Known          bool // false: not measured in this run
}

func writeGoals(w io.Writer, goals []goal) {
	if len(goals) == 0 {
		return
	}
	t := mdTable{Header: []string{"goal (mcp_proxy)", "measured", "verdict"}}
	for _, g := range goals {
		v := "not measured"
		if g.Known {
			v = "**met**"
			if !g.Met {
				v = "**not met**"
			}
		}
		t.add(g.Goal, g.Measured, v)
	}
	fmt.Fprintf(w, "### Goals\n\n")
	t.write(w)
	fmt.Fprintln(w)
}

// ---- overload ----

// overloadGoals checks mcp_proxy's overload goals.
func overloadGoals(cfg overloadConfig, results []*overloadResult) []goal {
	at := map[float64]*overloadResult{}
	for _, r := range results {
		if r.Target == targetMCP {
			at[r.Multiple] = r
		}
	}
	var gs []goal
	good := func(m, minFrac float64) {
		g := goal{Goal: fmt.Sprintf("goodput ≥ %.0f %% of capacity (%.0f/s) at %s", 100*minFrac, cfg.Capacity, fmtMultiple(m))}
		if r := at[m]; r != nil && cfg.Capacity > 0 {
			f := r.goodput() / cfg.Capacity
			g.Known, g.Met = true, f >= minFrac
			g.Measured = fmt.Sprintf("%.0f/s = %.1f %% (2nd half %.0f/s)", r.goodput(), 100*f, r.goodputSecondHalf())
		}
		gs = append(gs, g)
	}
	good(2, 0.90)
	good(5, 0.90)
	good(10, 0.85)
	refusal := func(m float64, limit time.Duration) {
		g := goal{Goal: fmt.Sprintf("refusal latency p99 ≤ %s ms at %s", ms(limit), fmtMultiple(m))}
		if r := at[m]; r != nil {
			g.Known = true
			if r.Refused.N == 0 {
				g.Met = true
				g.Measured = "no refusals"
			} else {
				g.Met = r.Refused.P99 <= limit
				g.Measured = fmt.Sprintf("%s ms (p50 %s ms, %d refusals)", ms(r.Refused.P99), ms(r.Refused.P50), r.Refused.N)
			}
		}
		gs = append(gs, g)
	}
	refusal(5, 5*time.Millisecond)
	refusal(10, 15*time.Millisecond)
	if base := at[1]; base != nil && base.Admitted.N > 0 {
		for _, m := range cfg.Multiples {
			if m == 1 || at[m] == nil {
				continue
			}
			r := at[m]
			g := goal{Goal: fmt.Sprintf("admitted p99 at %s ≤ 2× the 1× figure (%s ms)", fmtMultiple(m), ms(base.Admitted.P99)), Known: true}
			g.Met = r.Admitted.N > 0 && r.Admitted.P99 <= 2*base.Admitted.P99
			g.Measured = fmt.Sprintf("%s ms = %.2f×", ms(r.Admitted.P99), float64(r.Admitted.P99)/float64(base.Admitted.P99))
			gs = append(gs, g)
		}
	}
	for _, m := range cfg.Multiples {
		r := at[m]
		if r == nil {
			continue
		}
		adm := r.admittedByClientView()
		g := goal{Goal: fmt.Sprintf("the upstream receives no refused request at %s (received ≤ admitted)", fmtMultiple(m)), Known: true}
		g.Met = r.Upstream.Received <= adm
		g.Measured = fmt.Sprintf("received %d, admitted %d (sent %d − refused %d)", r.Upstream.Received, adm, r.Scheduled-r.NotSent, r.refusals())
		if r.Metrics.Scraped {
			g.Measured += fmt.Sprintf("; /metrics: %.0f heavy admitted", r.Metrics.AdmittedHeavy)
		}
		gs = append(gs, g)
	}
	return gs
}

// writeAdmissionTable shows upstream received vs mcp_proxy admitted, and
// the proxy's own counters.
func writeAdmissionTable(w io.Writer, results []*overloadResult) {
	t := mdTable{
		Header: []string{"load", "sent", "refused (503+429)", "admitted (client view)", "admitted heavy (/metrics)", "refusals by reason (/metrics)", "upstream received", "received − admitted", "notifications/cancelled sent / at upstream", "service level changes"},
		Right:  rightFrom(10, 1),
	}
	any := false
	for _, r := range sortedOverload(results) {
		if r.Target != targetMCP {
			continue
		}
		any = true
		adm := r.admittedByClientView()
		heavy, reasons, cancels, levels := "–", "–", fmt.Sprintf("– / %d", r.Upstream.Cancelled), "–"
		if r.Metrics.Scraped {
			heavy = fmt.Sprintf("%.0f", r.Metrics.AdmittedHeavy)
			reasons = floatMap(r.Metrics.Refusals)
			cancels = fmt.Sprintf("%.0f / %d", r.Metrics.CancelsSent, r.Upstream.Cancelled)
			levels = floatMap(r.Metrics.LevelChanges)
		}
		t.add(fmtMultiple(r.Multiple), fmt.Sprint(r.Scheduled-r.NotSent), fmt.Sprint(r.refusals()), fmt.Sprint(adm), heavy, reasons,
			fmt.Sprint(r.Upstream.Received), fmt.Sprint(r.Upstream.Received-adm), cancels, levels)
	}
	if !any {
		return
	}
	fmt.Fprintf(w, "### mcp_proxy: admitted vs received upstream\n\n")
	t.write(w)
	fmt.Fprintln(w)
}

// ---- burst ----

func writeBurstReport(w io.Writer, meta reportMeta, results []*burstResult) {
	writeMeta(w, meta)
	fmt.Fprintf(w, "### Outcomes of the requests started after the jump\n\n")
	t := mdTable{
		Header: []string{"target", "issued", "answered", "200", "503", "429", "other status", "errors", "timeouts", "refused share", "refused, 2nd half", "200 p50 / p99 / max ms", "refusal p50 / p99 ms", "200/s in the window"},
		Right:  rightFrom(14, 1),
	}
	for _, r := range results {
		a, h := r.After, r.SecondHalf
		refLat := "–"
		if r.RefLat.N > 0 {
			refLat = ms(r.RefLat.P50) + " / " + ms(r.RefLat.P99)
		}
		t.add(r.Target, fmt.Sprint(a.Issued), fmt.Sprint(a.answered()), fmt.Sprint(a.OK), fmt.Sprint(a.S503), fmt.Sprint(a.S429),
			fmt.Sprint(a.OtherStatus+a.BadBody), fmt.Sprint(a.Errors), fmt.Sprint(a.Timeouts),
			fmt.Sprintf("%.1f %%", 100*a.refusedShare()), fmt.Sprintf("%.1f %%", 100*h.refusedShare()),
			ms(r.OKLat.P50)+" / "+ms(r.OKLat.P99)+" / "+ms(r.OKLat.Max), refLat, rate(float64(r.OKInWindow)/r.Duration.Seconds()))
	}
	t.write(w)

	fmt.Fprintf(w, "\n### Server view\n\n")
	s := mdTable{
		Header: []string{"target", "before the jump: issued / 200 / other", "upstream received", "upstream served", "upstream abandoned", "upstream peak queue", "notifications/cancelled at upstream", "mcp_proxy refusals (/metrics)", "service level changes", "Caddy CPU", "Caddy peak RSS", "generator+mock CPU", "other processes CPU", "mcp_proxy peak level (pressures ≥ 0.5)"},
		Right:  rightFrom(13, 2),
	}
	for _, r := range results {
		refs, levels := "–", "–"
		if r.Target == targetMCP && r.Metrics.Scraped {
			refs, levels = floatMap(r.Metrics.Refusals), floatMap(r.Metrics.LevelChanges)
		}
		caddyCPU, caddyRSS := pct(r.Usage.Caddy.CPU), humanBytes(r.Usage.Caddy.PeakRSS)
		if r.Target == targetDirect {
			caddyCPU, caddyRSS = "–", "–"
		}
		wc := r.Warm
		served := fmt.Sprint(r.Upstream.Served)
		if !r.UpstreamDrained {
			served += " (not drained)"
		}
		s.add(r.Target, fmt.Sprintf("%d / %d / %d", wc.Issued, wc.OK, wc.Issued-wc.OK), fmt.Sprint(r.Upstream.Received), served,
			fmt.Sprint(r.Upstream.Abandoned), fmt.Sprint(r.UpstreamPeakQueue), fmt.Sprint(r.Upstream.Cancelled), refs, levels,
			caddyCPU, caddyRSS, pct(r.Usage.Harness.CPU), othersCell(r.Usage, r.Before, r.Reruns), r.Levels.String())
	}
	s.write(w)
	fmt.Fprintln(w)
	for _, r := range results {
		if r.FirstErr != "" {
			fmt.Fprintf(w, "- %s, first transport error: `%s`\n", r.Target, r.FirstErr)
		}
	}

	fmt.Fprintf(w, "\n### Timeline after the jump (by completion time; 200 / refused / errors+timeouts)\n\n")
	maxBins := 0
	for _, r := range results {
		maxBins = max(maxBins, len(r.Timeline))
	}
	hdr := []string{"second"}
	for _, r := range results {
		hdr = append(hdr, r.Target)
	}
	tl := mdTable{Header: hdr, Right: rightFrom(len(hdr), 1)}
	for i := range maxBins {
		var from time.Duration = -1
		row := []string{""}
		for _, r := range results {
			if i < len(r.Timeline) {
				b := r.Timeline[i]
				if from < 0 {
					from = b.From
				}
				row = append(row, fmt.Sprintf("%d / %d / %d", b.OK, b.refused(), b.Errors+b.Timeouts+b.OtherStatus+b.BadBody))
			} else {
				row = append(row, "")
			}
		}
		if from >= 0 {
			row[0] = fmt.Sprintf("%.0f–%.0f", from.Seconds(), from.Seconds()+1)
		}
		tl.add(row...)
	}
	tl.write(w)
	fmt.Fprintln(w)
	writeGoals(w, burstGoals(results))
}

func burstGoals(results []*burstResult) []goal {
	var gs []goal
	for _, r := range results {
		if r.Target != targetMCP {
			continue
		}
		a := r.After
		gs = append(gs,
			goal{Goal: "every request gets an answer or a refusal (errors = 0, none lost)", Known: true,
				Met:      a.Errors == 0 && a.answered() == a.Issued && a.Timeouts == 0,
				Measured: fmt.Sprintf("%d issued, %d answered; errors %d, timeouts %d, other status %d", a.Issued, a.answered(), a.Errors, a.Timeouts, a.OtherStatus+a.BadBody)},
			goal{Goal: "refused share < 10 % after the jump", Known: true, Met: a.refusedShare() < 0.10,
				Measured: fmt.Sprintf("%.1f %% (%d of %d; 2nd half of the window %.1f %%)", 100*a.refusedShare(), a.refused(), a.Issued, 100*r.SecondHalf.refusedShare())},
		)
	}
	return gs
}

// ---- streams ----

func writeStreamsReport(w io.Writer, meta reportMeta, results []*streamsResult, plots []string) {
	writeMeta(w, meta)
	defer func() {
		for _, p := range plots {
			fmt.Fprintf(w, "![%s](%s)\n\n", strings.TrimSuffix(p[strings.LastIndex(p, "/")+1:], ".svg"), p)
		}
	}()
	byMode := map[string][]*streamsResult{}
	var modes []string
	for _, r := range results {
		if _, ok := byMode[r.Mode]; !ok {
			modes = append(modes, r.Mode)
		}
		byMode[r.Mode] = append(byMode[r.Mode], r)
	}
	for _, mode := range modes {
		rs := sortedByTarget(byMode[mode])
		var direct, plain, mcp, base *streamsResult
		answers := false
		for _, r := range rs {
			switch r.Target {
			case targetDirect:
				direct = r
			case targetPlain:
				plain = r
			case targetMCP:
				mcp = r
			case targetBase:
				base = r
			}
			answers = answers || r.Kind == kindAnswer
		}
		fmt.Fprintf(w, "### %s\n\n", mode)
		t := mdTable{
			Header: []string{"target", "sent by the mock", "received", "delivered/s (window)", "vs plain", "gaps", "reordered", "corrupt", "streams: clean / broken / cut", "latency p50 / p99 / max ms", "proxy-added p50 / p99 ms", "tail after the window ms"},
			Right:  rightFrom(12, 1),
		}
		if answers {
			t.Header = append(t.Header, "call results / JSON-RPC errors")
			t.Right = rightFrom(13, 1)
		}
		for _, r := range rs {
			vs := "–"
			if plain != nil {
				vs = ratio(r.deliveredPerSec(), plain.deliveredPerSec())
			}
			added := "–"
			if direct != nil && r.Target != targetDirect {
				added = signedMs(r.Lat.P50-direct.Lat.P50) + " / " + signedMs(r.Lat.P99-direct.Lat.P99)
			}
			row := []string{r.Target, fmt.Sprint(r.Sent), fmt.Sprint(r.Received), rate(r.deliveredPerSec()), vs,
				fmt.Sprint(r.Gaps), fmt.Sprint(r.Reordered), fmt.Sprint(r.Corrupt),
				fmt.Sprintf("%d / %d / %d", r.CleanEnds, r.BrokenEnds, r.Unfinished),
				ms(r.Lat.P50) + " / " + ms(r.Lat.P99) + " / " + ms(r.Lat.Max), added, ms(r.TailAfterWindow)}
			if answers {
				row = append(row, fmt.Sprintf("%d / %d", r.Results, r.RPCErrors))
			}
			t.add(row...)
		}
		t.write(w)
		fmt.Fprintln(w)
		s := mdTable{
			Header: []string{"target", "Caddy CPU", "Caddy CPU µs/event", "Caddy peak RSS", "generator+mock CPU", "other processes CPU", "mock: events > 1 ms behind schedule / worst ms", "mock write errors", "mcp_proxy: slow-consumer cuts / backpressure / keepalives", "service level changes", "mcp_proxy peak level (pressures ≥ 0.5)"},
			Right:  rightFrom(10, 1),
		}
		for _, r := range rs {
			caddyCPU, perEvent, caddyRSS := pct(r.Usage.Caddy.CPU), usPerEvent(r.cpuPerEvent()), humanBytes(r.Usage.Caddy.PeakRSS)
			if r.Target == targetDirect {
				caddyCPU, perEvent, caddyRSS = "–", "–", "–"
			}
			mc, lv := "–", "–"
			if isMCPTarget(r.Target) && r.Metrics.Scraped {
				mc = fmt.Sprintf("%.0f / %.0f / %.0f", r.Metrics.SlowConsumers, r.Metrics.Backpressure, r.Metrics.Keepalives)
				lv = floatMap(r.Metrics.LevelChanges)
			}
			lag := "–"
			if r.Mode == modePaced {
				lag = fmt.Sprintf("%d / %s", r.MockLagged, ms(r.MockMaxLag))
			}
			s.add(r.Target, caddyCPU, perEvent, caddyRSS, pct(r.Usage.Harness.CPU), othersCell(r.Usage, r.Before, r.Reruns), lag, fmt.Sprint(r.MockWriteErrs), mc, lv, r.Levels.String())
		}
		s.write(w)
		fmt.Fprintln(w)
		if mcp != nil && base != nil {
			fmt.Fprintf(w, "mcp_proxy against the baseline build (mcp_proxy ÷ baseline): delivered/s %s, latency p50 %s, p99 %s, Caddy CPU per event %s.\n\n",
				ratio(mcp.deliveredPerSec(), base.deliveredPerSec()), ratio(float64(mcp.Lat.P50), float64(base.Lat.P50)), ratio(float64(mcp.Lat.P99), float64(base.Lat.P99)),
				ratio(float64(mcp.cpuPerEvent()), float64(base.cpuPerEvent())))
		}
		for _, r := range rs {
			if r.FirstEndErr != "" {
				fmt.Fprintf(w, "- %s, first broken stream: `%s`\n", r.Target, r.FirstEndErr)
			}
			if r.FirstRPCError != "" {
				fmt.Fprintf(w, "- %s, first JSON-RPC error on a stream: `%s`\n", r.Target, r.FirstRPCError)
			}
		}
		fmt.Fprintln(w)
	}
	writeGoals(w, streamsGoals(results))
}

func signedMs(d time.Duration) string {
	if d < 0 {
		return "−" + ms(-d)
	}
	return "+" + ms(d)
}

func sortedByTarget(rs []*streamsResult) []*streamsResult {
	order := map[string]int{targetDirect: 0, targetPlain: 1, targetMCP: 2, targetAuth: 3, targetBase: 4}
	out := append([]*streamsResult(nil), rs...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && order[out[j].Target] < order[out[j-1].Target]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func streamsGoals(results []*streamsResult) []goal {
	find := func(mode, tgt string) *streamsResult {
		for _, r := range results {
			if r.Mode == mode && r.Target == tgt {
				return r
			}
		}
		return nil
	}
	var gs []goal
	if m := find(modeSaturation, targetMCP); m != nil {
		g := goal{Goal: "saturation: delivered events/s ≥ 0.90× plain"}
		if p := find(modeSaturation, targetPlain); p != nil && p.deliveredPerSec() > 0 {
			r := m.deliveredPerSec() / p.deliveredPerSec()
			g.Known, g.Met = true, r >= 0.90
			g.Measured = fmt.Sprintf("%.0f vs %.0f ev/s = %.2f×", m.deliveredPerSec(), p.deliveredPerSec(), r)
		}
		gs = append(gs, g)
		gs = append(gs, goal{Goal: "saturation: no gaps (every event sent arrives once, in order, intact)", Known: true, Met: m.lossless(),
			Measured: fmt.Sprintf("sent %d, received %d, gaps %d, reordered %d, corrupt %d, broken streams %d, cut %d", m.Sent, m.Received, m.Gaps, m.Reordered, m.Corrupt, m.BrokenEnds, m.Unfinished)})
	}
	if m := find(modePaced, targetMCP); m != nil {
		g := goal{Goal: "paced: proxy-added latency p99 ≤ 5 ms"}
		if d := find(modePaced, targetDirect); d != nil {
			added := m.Lat.P99 - d.Lat.P99
			g.Known, g.Met = true, added <= 5*time.Millisecond
			g.Measured = fmt.Sprintf("%s ms (p99 %s ms vs direct %s ms; p50 added %s ms)", signedMs(added), ms(m.Lat.P99), ms(d.Lat.P99), signedMs(m.Lat.P50-d.Lat.P50))
			if p := find(modePaced, targetPlain); p != nil {
				g.Measured += fmt.Sprintf("; plain adds %s ms", signedMs(p.Lat.P99-d.Lat.P99))
			}
		}
		gs = append(gs, g)
		gs = append(gs, goal{Goal: "paced: no gaps", Known: true, Met: m.lossless(),
			Measured: fmt.Sprintf("sent %d, received %d, gaps %d", m.Sent, m.Received, m.Gaps)})
	}
	return gs
}

// ---- idle ----

func kib(v float64) string { return fmt.Sprintf("%.1f", v/1024) }

func goroutinesCell(a, b float64, n int) string {
	if a < 0 || b < 0 || n <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f → %.0f (%.2f per stream)", a, b, (b-a)/float64(n))
}

func writeIdleReport(w io.Writer, meta reportMeta, results []*idleResult, plots []string) {
	writeMeta(w, meta)
	t := mdTable{
		Header: []string{"target", "streams open", "open errors", "open time s", "headers p50 / p99 ms", "RSS before", "RSS sessions only", "RSS settled", "RSS held", "RSS per stream KiB (incl. session)", "of which session KiB", "goroutines", "heap in use per stream KiB", "stacks per stream KiB", "Caddy fds", "RSS 3 s after closing all"},
		Right:  rightFrom(16, 1),
	}
	var plain, mcp, base *idleResult
	for _, r := range results {
		switch r.Target {
		case targetPlain:
			plain = r
		case targetMCP:
			mcp = r
		case targetBase:
			base = r
		}
	}
	for _, r := range results {
		n := int64(r.Opened)
		heap, stack := "–", "–"
		if r.Base.HeapInuse >= 0 && r.Held.HeapInuse >= 0 && n > 0 {
			heap = kib((r.Held.HeapInuse - r.Base.HeapInuse) / float64(n))
			stack = kib((r.Held.StackInuse - r.Base.StackInuse) / float64(n))
		}
		t.add(r.Target, fmt.Sprint(r.Opened), fmt.Sprint(r.OpenErrs), fmt.Sprintf("%.1f", r.OpenTime.Seconds()),
			ms(r.TTFB.P50)+" / "+ms(r.TTFB.P99),
			humanBytes(r.Base.RSS), humanBytes(r.Sessions.RSS), humanBytes(r.Settled.RSS), humanBytes(r.Held.RSS),
			kib(r.growth()), kib(perStream(r.Base.RSS, r.Sessions.RSS, n)),
			goroutinesCell(r.Base.Goroutines, r.Held.Goroutines, r.Opened), heap, stack,
			fmt.Sprintf("%d → %d", r.Base.FDs, r.Held.FDs), humanBytes(r.Closed.RSS))
	}
	t.write(w)
	fmt.Fprintln(w)
	s := mdTable{
		Header: []string{"target", "mock streams open at the sample", "client streams alive at the end", "ended early", "closed: upstream streams gone after s", "goroutines 3 s after closing", "keepalives sent (/metrics)", "service level changes", "mcp_proxy peak level (pressures ≥ 0.5)", "Caddy CPU over the run", "other processes CPU"},
		Right:  rightFrom(10, 1),
	}
	for _, r := range results {
		g := "–"
		if r.Closed.Goroutines >= 0 {
			g = fmt.Sprintf("%.0f", r.Closed.Goroutines)
		}
		ka, lv := "–", "–"
		if isMCPTarget(r.Target) && r.Metrics.Scraped {
			ka, lv = fmt.Sprintf("%.0f", r.Metrics.Keepalives), floatMap(r.Metrics.LevelChanges)
		}
		s.add(r.Target, fmt.Sprint(r.MockOpen), fmt.Sprint(r.Alive), fmt.Sprint(r.EndedEarly), fmt.Sprintf("%.1f", r.CloseTime.Seconds()),
			g, ka, lv, r.Levels.String(), pct(r.Usage.Caddy.CPU), othersCell(r.Usage, r.Before, 0))
	}
	s.write(w)
	fmt.Fprintln(w)
	for _, r := range results {
		if r.FirstErr != "" {
			fmt.Fprintf(w, "- %s, first open error: `%s`\n", r.Target, r.FirstErr)
		}
	}
	if mcp != nil && base != nil {
		fmt.Fprintf(w, "mcp_proxy against the baseline build (mcp_proxy ÷ baseline): RSS per stream %s vs %s KiB = %s",
			kib(mcp.growth()), kib(base.growth()), ratio(mcp.growth(), base.growth()))
		if n, b := int64(mcp.Opened), int64(base.Opened); n > 0 && b > 0 && mcp.Base.Goroutines >= 0 && mcp.Held.Goroutines >= 0 && base.Base.Goroutines >= 0 && base.Held.Goroutines >= 0 {
			gm := (mcp.Held.Goroutines - mcp.Base.Goroutines) / float64(n)
			gb := (base.Held.Goroutines - base.Base.Goroutines) / float64(b)
			fmt.Fprintf(w, "; goroutines per stream %.2f vs %.2f", gm, gb)
		}
		if mcp.Base.HeapInuse >= 0 && mcp.Held.HeapInuse >= 0 && base.Base.HeapInuse >= 0 && base.Held.HeapInuse >= 0 && mcp.Opened > 0 && base.Opened > 0 {
			hm := (mcp.Held.HeapInuse - mcp.Base.HeapInuse) / float64(mcp.Opened)
			hb := (base.Held.HeapInuse - base.Base.HeapInuse) / float64(base.Opened)
			fmt.Fprintf(w, "; heap in use per stream %s vs %s KiB = %s", kib(hm), kib(hb), ratio(hm, hb))
		}
		fmt.Fprintf(w, ".\n\n")
	}
	writeIdleSteps(w, results)
	for _, p := range plots {
		fmt.Fprintf(w, "![%s](%s)\n\n", strings.TrimSuffix(p[strings.LastIndex(p, "/")+1:], ".svg"), p)
	}
	for _, r := range results {
		fmt.Fprintf(w, "<details><summary>Caddyfile (%s)</summary>\n\n```caddyfile\n%s```\n\n</details>\n\n", r.Target, r.Caddyfile)
	}
	var gs []goal
	for _, r := range results {
		if r.Target != targetMCP {
			continue
		}
		g1 := goal{Goal: "RSS growth ≤ 40 KiB per stream (session included)", Known: r.Opened > 0, Met: r.growth() <= 40*1024,
			Measured: fmt.Sprintf("%s KiB per stream (%d streams)", kib(r.growth()), r.Opened)}
		g2 := goal{Goal: "RSS growth per stream ≤ 1.2× plain's"}
		if plain != nil && plain.growth() > 0 {
			x := r.growth() / plain.growth()
			g2.Known, g2.Met = true, x <= 1.2
			g2.Measured = fmt.Sprintf("%s vs %s KiB = %.2f×", kib(r.growth()), kib(plain.growth()), x)
		}
		gs = append(gs, g1, g2)
	}
	writeGoals(w, gs)
}

// mib converts bytes to MiB.
func mib(b int64) float64 { return float64(b) / (1 << 20) }

// idlePoints returns a target's memory against open streams: the sample
// with every session made and no stream open, then one per step.
func idlePoints(r *idleResult) (open []int64, mem []memPoint) {
	open, mem = []int64{0}, []memPoint{r.Sessions}
	for _, st := range r.Steps {
		open = append(open, st.Open)
		mem = append(mem, st.Mem)
	}
	return open, mem
}

// writeIdleSteps writes Caddy's memory and goroutines at each step of
// opening the streams, one row per target and step.
func writeIdleSteps(w io.Writer, results []*idleResult) {
	stepped := false
	for _, r := range results {
		stepped = stepped || len(r.Steps) > 0
	}
	if !stepped {
		return
	}
	fmt.Fprintf(w, "### Memory against streams\n\n")
	t := mdTable{
		Header: []string{"target", "streams open", "RSS", "RSS over sessions only", "KiB per stream", "KiB per stream since the previous step", "goroutines", "goroutines per stream", "heap in use"},
		Right:  rightFrom(9, 1),
	}
	for _, r := range results {
		open, mem := idlePoints(r)
		base := mem[0]
		for i := range open {
			perStreamKiB, stepKiB, gPer := "–", "–", "–"
			if open[i] > 0 {
				perStreamKiB = kib(perStream(base.RSS, mem[i].RSS, open[i]))
				if base.Goroutines >= 0 && mem[i].Goroutines >= 0 {
					gPer = fmt.Sprintf("%.2f", (mem[i].Goroutines-base.Goroutines)/float64(open[i]))
				}
			}
			if i > 0 && open[i] > open[i-1] {
				stepKiB = kib(perStream(mem[i-1].RSS, mem[i].RSS, open[i]-open[i-1]))
			}
			g, heap := "–", "–"
			if mem[i].Goroutines >= 0 {
				g = fmt.Sprintf("%.0f", mem[i].Goroutines)
			}
			if mem[i].HeapInuse >= 0 {
				heap = humanBytes(int64(mem[i].HeapInuse))
			}
			t.add(r.Target, fmt.Sprint(open[i]), humanBytes(mem[i].RSS), humanBytes(mem[i].RSS-base.RSS), perStreamKiB, stepKiB, g, gPer, heap)
		}
	}
	t.write(w)
	fmt.Fprintln(w)
}

// streamsCharts plots the events delivered per second over each mode's
// window, one line per target, one chart per mode in first-seen order.
func streamsCharts(results []*streamsResult) (modes []string, charts []*lineChart) {
	byMode := map[string]*lineChart{}
	for _, r := range results {
		c, ok := byMode[r.Mode]
		if !ok {
			c = &lineChart{
				Title:       "Events delivered per second, " + r.Mode,
				XLabel:      "seconds into the window",
				YLabel:      "events/s (all streams)",
				XTickFormat: fmtTick,
			}
			byMode[r.Mode] = c
			modes = append(modes, r.Mode)
			charts = append(charts, c)
		}
		s := series{Name: r.Target}
		for b, v := range r.Rate {
			s.X = append(s.X, float64(b+1)*rateBin.Seconds())
			s.Y = append(s.Y, v)
		}
		c.Series = append(c.Series, s)
	}
	return modes, charts
}

// idleChart plots Caddy's RSS against the streams open, one line per
// target.
func idleChart(results []*idleResult) *lineChart {
	c := &lineChart{
		Title:       "Memory against streams: Caddy RSS with idle SSE streams open",
		XLabel:      "idle GET SSE streams open (every session made before the first)",
		YLabel:      "RSS, MiB",
		XTickFormat: fmtTick,
	}
	ticks := map[float64]bool{}
	for _, r := range results {
		open, mem := idlePoints(r)
		s := series{Name: r.Target}
		for i := range open {
			s.X = append(s.X, float64(open[i]))
			s.Y = append(s.Y, mib(mem[i].RSS))
		}
		c.Series = append(c.Series, s)
		ticks[0] = true
		for _, st := range r.Steps {
			ticks[float64(st.Streams)] = true
		}
	}
	for x := range ticks {
		c.XTicks = append(c.XTicks, x)
	}
	sort.Float64s(c.XTicks)
	return c
}
