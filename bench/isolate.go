//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// The overload scenario runs every measurement in a harness process of its
// own (-fresh-harness, on by default). A target that collapses under
// overload (thousands of requests timing out at the generator, and
// abandoned at the mock) leaves the harness process behind it slower at
// issuing requests on schedule for a while, in ways the quiet gate does
// not see; an open-loop latency counts that lateness. Measured in one
// process, mcp_proxy's refusal p99 at 10× right after plain's collapse was
// 20–34 ms, against 7–12 ms in a harness process that had not run plain.
// The parent starts the harness again for each target and multiple, in
// the usual rotated order, with that one measurement to make
// (-targets, -multiples, -result-file), and reads its result.

// childResult is what a harness process running one overload measurement
// writes to its -result-file.
type childResult struct {
	Caddyfile string
	Results   []*overloadResult
}

func writeChildResult(path, caddyfile string, results []*overloadResult) error {
	b, err := json.Marshal(childResult{Caddyfile: caddyfile, Results: results})
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// runOverloadIsolated runs the overload scenario with one harness process
// per measurement; args are the command line's. It returns the Caddyfile
// of the first measurement (every one uses the same, on other ports) and
// the results in the order they ran.
func runOverloadIsolated(ctx context.Context, args []string, bin string, o *options, names []string, mults []float64, logf func(string, ...any)) (string, []*overloadResult, error) {
	self, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "mcpgate-bench-runs-")
	if err != nil {
		return "", nil, err
	}
	defer os.RemoveAll(dir)
	var caddyfile string
	var out []*overloadResult
	profiled := false
	for k, mult := range mults {
		for _, name := range rotate(names, k) {
			file := filepath.Join(dir, fmt.Sprintf("%s-%d.json", name, k))
			child := append(slices.Clone(args),
				"-targets", name, "-multiples", strconv.FormatFloat(mult, 'g', -1, 64),
				"-caddy", bin, "-result-file", file, "-out", "")
			// A CPU or heap profile covers the first measurement of its
			// target only, as in one process.
			if o.cpuprofile != "" || o.heapprofile != "" {
				if name != o.profileTarget || profiled {
					child = append(child, "-cpuprofile=", "-heapprofile=")
				} else {
					profiled = true
				}
			}
			cmd := exec.CommandContext(ctx, self, child...)
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				return "", out, fmt.Errorf("overload: %s at %s: harness process: %w", name, fmtMultiple(mult), err)
			}
			b, err := os.ReadFile(file)
			if err != nil {
				return "", out, err
			}
			var cr childResult
			if err := json.Unmarshal(b, &cr); err != nil {
				return "", out, fmt.Errorf("overload: %s at %s: reading its result: %w", name, fmtMultiple(mult), err)
			}
			if caddyfile == "" {
				caddyfile = cr.Caddyfile
			}
			out = append(out, cr.Results...)
			if err := ctx.Err(); err != nil {
				return caddyfile, out, err
			}
		}
	}
	return caddyfile, out, nil
}

// overloadConfigOf is the overload scenario's setup from the flags.
func overloadConfigOf(o *options, mults []float64) overloadConfig {
	return overloadConfig{
		Multiples: mults, Capacity: capacityPerSecond(o.capacity, o.service), Duration: o.duration,
		Deadline: o.deadline, MaxOutstanding: o.maxOutstanding, Sessions: o.sessions,
	}
}

// writeOverloadOutput writes the overload plots and report.
func writeOverloadOutput(o *options, meta reportMeta, cfg overloadConfig, results []*overloadResult, logf func(string, ...any)) error {
	plots, err := writePlots(o, cfg, results)
	if err != nil {
		return err
	}
	upDesc := fmt.Sprintf("mock upstream: service time %s, capacity %s", o.service, capDesc(o.capacity, o.service))
	meta.Title = fmt.Sprintf("overload: open loop at %s × %.0f/s", o.multiples, cfg.Capacity)
	meta.Setup = []string{
		upDesc + " behind an unbounded FIFO queue that never sheds",
		fmt.Sprintf("open loop: requests scheduled at a fixed rate for %s per target and multiple; latency and the %s client deadline count from each request's scheduled send time (no coordinated omission)", o.duration, o.deadline),
		"goodput = 200s within the deadline, per second of the run; the 2nd-half column counts requests scheduled in the second half only",
		fmt.Sprintf("%d sessions per target, used round-robin; at most %d requests in flight (the excess is \"not sent\")", o.sessions, o.maxOutstanding),
		"before each window the client opens 25 ms worth of keep-alive connections (64 to 512) with concurrent pings, as a long-running client population has them open; the pings are not counted",
		"at each multiple the targets run in an order rotated by the multiple's index",
		freshDesc(o.freshCaddy, o.freshHarness),
		"mcp_proxy admitted = requests sent minus its 503/429 refusals (client view), and the count of its request-duration histogram for heavy requests (server view, from /metrics)",
	}
	if err := prependPlotDir(&plots, o.out); err != nil {
		return err
	}
	var report strings.Builder
	writeOverloadReport(&report, meta, cfg, results, plots)
	return writeOut(o, report.String(), logf)
}
