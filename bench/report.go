//go:build linux

package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"
)

// mdTable is a Markdown table.
type mdTable struct {
	Header []string
	// Right marks columns aligned right (numbers); by index.
	Right []bool
	Rows  [][]string
}

func (t *mdTable) add(cells ...string) { t.Rows = append(t.Rows, cells) }

// write renders the table. Cells have "|" escaped and newlines replaced,
// and short rows are padded.
func (t *mdTable) write(w io.Writer) {
	esc := func(s string) string {
		s = strings.ReplaceAll(s, "|", `\|`)
		return strings.ReplaceAll(s, "\n", " ")
	}
	n := len(t.Header)
	var b strings.Builder
	b.WriteString("|")
	for _, h := range t.Header {
		b.WriteString(" " + esc(h) + " |")
	}
	b.WriteString("\n|")
	for i := range n {
		if i < len(t.Right) && t.Right[i] {
			b.WriteString("---:|")
		} else {
			b.WriteString("---|")
		}
	}
	b.WriteString("\n")
	for _, row := range t.Rows {
		b.WriteString("|")
		for i := range n {
			c := ""
			if i < len(row) {
				c = row[i]
			}
			b.WriteString(" " + esc(c) + " |")
		}
		b.WriteString("\n")
	}
	io.WriteString(w, b.String())
}

// rightFrom marks every column from index i on as right-aligned.
func rightFrom(n, i int) []bool {
	r := make([]bool, n)
	for j := i; j < n; j++ {
		r[j] = true
	}
	return r
}

// machineInfo describes where the numbers were taken.
type machineInfo struct {
	NProc, GOMAXPROCS int
	Model             string
	MemTotal          int64 // bytes
	GoVersion         string
	Kernel            string
	NoFile            string // RLIMIT_NOFILE soft/hard after raising
}

func readMachine() machineInfo {
	m := machineInfo{
		NProc:      runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		GoVersion:  runtime.Version(),
		Model:      "unknown",
		Kernel:     "unknown",
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if s := cpuModel(string(b)); s != "" {
			m.Model = s
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.MemTotal = statusKiB(string(b), "MemTotal:") << 10
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil {
		m.NoFile = fmt.Sprintf("%d / %d", rl.Cur, rl.Max)
	}
	return m
}

// cpuModel returns the first "model name" of /proc/cpuinfo text.
func cpuModel(cpuinfo string) string {
	for _, line := range strings.Split(cpuinfo, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// humanBytes formats a byte count in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// usPerReq formats a per-request CPU time in microseconds, "–" for none.
func usPerReq(d time.Duration) string {
	if d <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", float64(d)/float64(time.Microsecond))
}

// usPerEvent formats a per-event CPU time in microseconds, "–" for none.
func usPerEvent(d time.Duration) string {
	if d <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", float64(d)/float64(time.Microsecond))
}

// pct formats a CPU share (1.0 = one core) as a percentage of one core.
func pct(v float64) string { return fmt.Sprintf("%.0f %%", v*100) }

// othersCell shows the CPU other processes used during a window, marked
// when the machine was already busy before it started.
func othersCell(u windowUsage, q quietness, reruns int) string {
	s := pct(u.Others())
	if !q.Quiet {
		s += fmt.Sprintf(" (busy before: %s)", pct(q.OthersBefore))
	}
	if reruns > 0 {
		s += fmt.Sprintf(" (%d disturbed run(s) discarded)", reruns)
	}
	return s
}

// reportMeta is the part of every report section that is not results.
type reportMeta struct {
	Title     string
	Build     string // where the Caddy binary came from
	Command   string
	Date      time.Time
	Machine   machineInfo
	Setup     []string // one bullet each
	Caddyfile string
	// BaseCaddyfile is the baseline process's Caddyfile, when the
	// baseline target ran beside the others.
	BaseCaddyfile string
}

func writeMeta(w io.Writer, m reportMeta) {
	fmt.Fprintf(w, "## %s\n\n", m.Title)
	fmt.Fprintf(w, "Command: `%s`\n\n", m.Command)
	t := mdTable{Header: []string{"Machine", ""}}
	t.add("date", m.Date.UTC().Format("2006-01-02 15:04 MST"))
	t.add("CPUs (nproc)", fmt.Sprintf("%d (GOMAXPROCS %d)", m.Machine.NProc, m.Machine.GOMAXPROCS))
	t.add("CPU model", m.Machine.Model)
	t.add("memory", humanBytes(m.Machine.MemTotal))
	t.add("Go", m.Machine.GoVersion)
	t.add("kernel", m.Machine.Kernel)
	t.add("RLIMIT_NOFILE", m.Machine.NoFile)
	if m.Build != "" {
		t.add("Caddy", m.Build)
	}
	t.write(w)
	fmt.Fprintln(w)
	for _, s := range m.Setup {
		fmt.Fprintf(w, "- %s\n", s)
	}
	if len(m.Setup) > 0 {
		fmt.Fprintln(w)
	}
	if m.Caddyfile != "" {
		fmt.Fprintf(w, "<details><summary>Caddyfile</summary>\n\n```caddyfile\n%s```\n\n</details>\n\n", m.Caddyfile)
	}
	if m.BaseCaddyfile != "" {
		fmt.Fprintf(w, "<details><summary>Caddyfile (baseline process)</summary>\n\n```caddyfile\n%s```\n\n</details>\n\n", m.BaseCaddyfile)
	}
}

// statusList formats non-200 counts as "404×3, 502×1", or "0".
func statusList(m map[int]int64) string {
	if len(m) == 0 {
		return "0"
	}
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d×%d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// writePostReport writes the closed-loop results.
func writePostReport(w io.Writer, meta reportMeta, rounds [][]*postResult, targets []string) {
	writeMeta(w, meta)

	fmt.Fprintf(w, "### Per round\n\n")
	t := mdTable{
		Header: []string{"round", "target", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "non-200", "errors", "timeouts", "Caddy CPU", "Caddy CPU µs/req", "generator+mock CPU", "other processes CPU", "mcp_proxy peak level (pressures ≥ 0.5)"},
		Right:  rightFrom(14, 2),
	}
	for _, row := range rounds {
		for _, r := range row {
			t.add(fmt.Sprint(r.Round), r.Target, rate(r.RPS), ms(r.Lat.P50), ms(r.Lat.P90), ms(r.Lat.P99), ms(r.Lat.Max),
				statusList(r.Status), fmt.Sprint(r.Errors+r.BadBody), fmt.Sprint(r.Timeouts), pct(r.Usage.Caddy.CPU), usPerReq(r.caddyCPUPerReq()), pct(r.Usage.Harness.CPU), othersCell(r.Usage, r.Before, r.Reruns), r.Levels.String())
		}
	}
	t.write(w)

	meds := medianOfRounds(rounds, targets)
	fmt.Fprintf(w, "\n### Median of %d rounds\n\n", len(rounds))
	plain, mcp := medianFor(meds, targetPlain), medianFor(meds, targetMCP)
	// With mcp_auth measured, its comparison with mcp_proxy gets columns
	// of its own.
	authGoal := checkAuthGoal(meds)
	m := mdTable{
		Header: []string{"target", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "req/s vs plain", "p99 vs plain", "Caddy CPU µs/req"},
		Right:  rightFrom(9, 1),
	}
	if authGoal.OK {
		m.Header = append(m.Header, "req/s vs mcp_proxy", "p99 vs mcp_proxy")
		m.Right = rightFrom(11, 1)
	}
	for _, md := range meds {
		rr, pr := "–", "–"
		if plain != nil {
			rr = ratio(md.RPS, plain.RPS)
			pr = ratio(float64(md.P99), float64(plain.P99))
		}
		row := []string{md.Target, rate(md.RPS), ms(md.P50), ms(md.P90), ms(md.P99), ms(md.Max), rr, pr, usPerReq(md.CPUPerReq)}
		if authGoal.OK {
			row = append(row, ratio(md.RPS, mcp.RPS), ratio(float64(md.P99), float64(mcp.P99)))
		}
		m.add(row...)
	}
	m.write(w)
	fmt.Fprintln(w)
	verdict := func(g goalCheck) string {
		if g.Holds {
			return "**holds**"
		}
		return "**does not hold**"
	}
	if g := checkGoal(meds); g.OK {
		fmt.Fprintf(w, "Goal (mcp_proxy p99 ≤ %.2f× plain reverse_proxy and req/s ≥ %.2f× plain, medians of rounds): "+
			"p99 %.2f×, req/s %.2f× — %s in this run.\n\n", goalMaxP99Ratio, goalMinRPSRatio, g.P99Ratio, g.RPSRatio, verdict(g))
	}
	if authGoal.OK {
		fmt.Fprintf(w, "Goal (mcp_auth in front of mcp_proxy: p99 ≤ %.2f× mcp_proxy and req/s ≥ %.2f× mcp_proxy, medians of rounds): "+
			"p99 %.2f×, req/s %.2f× — %s in this run.", authGoalMaxP99Ratio, authGoalMinRPSRatio, authGoal.P99Ratio, authGoal.RPSRatio, verdict(authGoal))
		if per := perRoundRatios(rounds, targetAuth, targetMCP); per != "" {
			fmt.Fprintf(w, " Per round (req/s, p99): %s.", per)
		}
		fmt.Fprintf(w, "\n\n")
	}
	writePostBaseline(w, rounds, meds)
}

// writePostBaseline compares mcp_proxy with the baseline build, when both
// ran: medians of rounds, and each round.
func writePostBaseline(w io.Writer, rounds [][]*postResult, meds []postMedian) {
	mcp, base := medianFor(meds, targetMCP), medianFor(meds, targetBase)
	if mcp == nil || base == nil {
		return
	}
	fmt.Fprintf(w, "mcp_proxy against the baseline build (mcp_proxy ÷ baseline, medians of rounds): req/s %s, p50 %s, p99 %s, Caddy CPU per request %s.",
		ratio(mcp.RPS, base.RPS), ratio(float64(mcp.P50), float64(base.P50)), ratio(float64(mcp.P99), float64(base.P99)), ratio(float64(mcp.CPUPerReq), float64(base.CPUPerReq)))
	if per := perRoundRatios(rounds, targetMCP, targetBase); per != "" {
		fmt.Fprintf(w, " Per round (req/s, p99): %s.", per)
	}
	fmt.Fprintf(w, "\n\n")
}

// perRoundRatios formats target's req/s and p99 against base's in each
// round where both ran: "1: 0.95× / 1.04×; 2: …".
func perRoundRatios(rounds [][]*postResult, target, base string) string {
	var parts []string
	var rps, p99 []float64
	for _, row := range rounds {
		var t, b *postResult
		for _, r := range row {
			switch r.Target {
			case target:
				t = r
			case base:
				b = r
			}
		}
		if t == nil || b == nil {
			continue
		}
		parts = append(parts, fmt.Sprintf("%d: %s / %s", t.Round, ratio(t.RPS, b.RPS), ratio(float64(t.Lat.P99), float64(b.Lat.P99))))
		if b.RPS > 0 && b.Lat.P99 > 0 {
			rps = append(rps, t.RPS/b.RPS)
			p99 = append(p99, float64(t.Lat.P99)/float64(b.Lat.P99))
		}
	}
	out := strings.Join(parts, "; ")
	if len(rps) > 1 {
		// The two targets of one round share the machine's state of that
		// moment, so the median of the paired ratios is less exposed to
		// drift over the run than the ratio of the medians.
		out += fmt.Sprintf("; median of the per-round ratios: %.2f× / %.2f×", median(rps), median(p99))
	}
	return out
}

// otherStatusCell lists the non-200 answers other than 503 and 429, and
// 200s without the expected body.
func otherStatusCell(r *overloadResult) string {
	other := map[int]int64{}
	for st, n := range r.Status {
		if st != http.StatusServiceUnavailable && st != http.StatusTooManyRequests {
			other[st] = n
		}
	}
	s := statusList(other)
	if r.BadBody > 0 {
		s += fmt.Sprintf(", bad body×%d", r.BadBody)
	}
	return s
}

// writeOverloadReport writes the open-loop results and links the plots.
func writeOverloadReport(w io.Writer, meta reportMeta, cfg overloadConfig, results []*overloadResult, plots []string) {
	writeMeta(w, meta)
	fmt.Fprintf(w, "### Client view\n\n")
	t := mdTable{
		Header: []string{"target", "load", "offered/s", "sent/s", "goodput/s", "% of capacity", "goodput/s 2nd half",
			"503", "429", "other non-200", "refusal p50 / p99 ms", "admitted p50 / p99 ms", "timeouts", "errors", "not sent"},
		Right: rightFrom(15, 2),
	}
	for _, r := range sortedOverload(results) {
		capPct := "–"
		if cfg.Capacity > 0 {
			capPct = fmt.Sprintf("%.0f %%", 100*r.goodput()/cfg.Capacity)
		}
		refusal := "–"
		if r.Refused.N > 0 {
			refusal = ms(r.Refused.P50) + " / " + ms(r.Refused.P99)
		}
		admitted := "–"
		if r.Admitted.N > 0 {
			admitted = ms(r.Admitted.P50) + " / " + ms(r.Admitted.P99)
		}
		t.add(r.Target, fmtMultiple(r.Multiple), rate(r.offered()), rate(r.sent()), rate(r.goodput()), capPct,
			rate(r.goodputSecondHalf()), fmt.Sprint(r.Status[503]), fmt.Sprint(r.Status[429]),
			otherStatusCell(r), refusal, admitted, fmt.Sprint(r.Timeouts), fmt.Sprint(r.Errors), fmt.Sprint(r.NotSent))
	}
	t.write(w)

	fmt.Fprintf(w, "\n### Server view\n\n")
	s := mdTable{
		Header: []string{"target", "load", "upstream received", "upstream served", "upstream abandoned", "upstream peak queue",
			"upstream drain after the run s", "notifications/cancelled at upstream", "503/429 with Retry-After", "Caddy CPU", "Caddy peak RSS", "generator+mock CPU", "other processes CPU", "peak outstanding", "scheduler max lag ms", "mcp_proxy peak level (pressures ≥ 0.5)"},
		Right: rightFrom(15, 2),
	}
	for _, r := range sortedOverload(results) {
		caddyCPU, caddyRSS := pct(r.Usage.Caddy.CPU), humanBytes(r.Usage.Caddy.PeakRSS)
		if r.Target == targetDirect {
			// Caddy idles while the upstream is hit directly; its RSS is
			// whatever earlier runs left.
			caddyCPU, caddyRSS = "–", "–"
		}
		drained := ""
		if !r.UpstreamDrained {
			drained = " (not drained)"
		}
		s.add(r.Target, fmtMultiple(r.Multiple), fmt.Sprint(r.Upstream.Received), fmt.Sprint(r.Upstream.Served)+drained,
			fmt.Sprint(r.Upstream.Abandoned), fmt.Sprint(r.UpstreamPeakQueue), fmt.Sprintf("%.1f", r.UpstreamDrainDuration.Seconds()), fmt.Sprint(r.Upstream.Cancelled), fmt.Sprint(r.RetryAfter),
			caddyCPU, caddyRSS, pct(r.Usage.Harness.CPU), othersCell(r.Usage, r.Before, r.Reruns), fmt.Sprint(r.PeakOutstanding), ms(r.MaxLag), r.Levels.String())
	}
	s.write(w)
	fmt.Fprintln(w)
	for _, r := range sortedOverload(results) {
		if r.FirstError != "" {
			fmt.Fprintf(w, "- %s at %s, first transport error: `%s`\n", r.Target, fmtMultiple(r.Multiple), r.FirstError)
		}
	}
	fmt.Fprintln(w)
	writeAdmissionTable(w, results)
	for _, p := range plots {
		fmt.Fprintf(w, "![%s](%s)\n\n", strings.TrimSuffix(p[strings.LastIndex(p, "/")+1:], ".svg"), p)
	}
	writeGoals(w, overloadGoals(cfg, results))
}

// sortedOverload orders results by target (in first-seen order) and then
// by multiple, whatever order they ran in.
func sortedOverload(rs []*overloadResult) []*overloadResult {
	order := map[string]int{}
	for _, r := range rs {
		if _, ok := order[r.Target]; !ok {
			order[r.Target] = len(order)
		}
	}
	out := append([]*overloadResult(nil), rs...)
	sort.SliceStable(out, func(i, j int) bool {
		if order[out[i].Target] != order[out[j].Target] {
			return order[out[i].Target] < order[out[j].Target]
		}
		return out[i].Multiple < out[j].Multiple
	})
	return out
}

// overloadCharts builds the goodput and p99 plots, one line per target.
func overloadCharts(cfg overloadConfig, results []*overloadResult) (goodput, p99 *lineChart) {
	goodput = &lineChart{
		Title:  "Goodput (200 within the deadline) vs offered load",
		XLabel: "offered load, multiple of upstream capacity",
		YLabel: "goodput per second",
		LogX:   true,
	}
	p99 = &lineChart{
		Title:  "Admitted (200) latency p99 vs offered load",
		XLabel: "offered load, multiple of upstream capacity",
		YLabel: "p99 latency, ms",
		LogX:   true,
	}
	if cfg.Capacity > 0 {
		goodput.HLines = append(goodput.HLines, hline{Y: cfg.Capacity, Label: fmt.Sprintf("capacity %.0f/s", cfg.Capacity)})
	}
	p99.HLines = append(p99.HLines, hline{Y: float64(cfg.Deadline) / float64(time.Millisecond), Label: "client deadline"})
	idx := map[string]int{}
	for _, r := range sortedOverload(results) {
		i, ok := idx[r.Target]
		if !ok {
			i = len(goodput.Series)
			idx[r.Target] = i
			goodput.Series = append(goodput.Series, series{Name: r.Target})
			p99.Series = append(p99.Series, series{Name: r.Target})
		}
		goodput.Series[i].X = append(goodput.Series[i].X, r.Multiple)
		goodput.Series[i].Y = append(goodput.Series[i].Y, r.goodput())
		if r.Admitted.N > 0 {
			p99.Series[i].X = append(p99.Series[i].X, r.Multiple)
			p99.Series[i].Y = append(p99.Series[i].Y, float64(r.Admitted.P99)/float64(time.Millisecond))
		}
	}
	for _, m := range cfg.Multiples {
		goodput.XTicks = append(goodput.XTicks, m)
	}
	p99.XTicks = goodput.XTicks
	return goodput, p99
}
