//go:build linux

// Command bench is mcpgate's side-by-side benchmark harness: it builds
// Caddy with the mcpgate modules, starts a mock MCP upstream in-process and
// one Caddy process with two sites (plain reverse_proxy and mcp_proxy) in
// front of it, and measures the upstream alone, plain reverse_proxy and
// mcp_proxy in the same run, so machine noise hits all three alike. The
// post and streams scenarios can measure a third site as well, mcp_auth
// in front of mcp_proxy (-targets …,mcp_auth), with a token the harness
// signs itself. With -baseline <caddy binary>, post, streams, idle and
// idleedge can also measure the same mcp_proxy site served by a second
// Caddy process started from that binary (-targets …,baseline), for a
// comparison across commits within one run.
//
// It builds on Linux only: it reads Caddy's memory, CPU time and open
// descriptors from /proc, and ties the processes it starts to its own
// life with Pdeathsig.
//
// Usage:
//
//	go run ./bench post     [flags]   closed loop: N clients POST tools/call
//	go run ./bench overload [flags]   open loop at multiples of upstream capacity
//	go run ./bench burst    [flags]   closed loop jumping from 10 to 1,000 clients
//	go run ./bench streams  [flags]   1 KiB events on 100 GET SSE streams (or SSE answers to POSTs)
//	go run ./bench idle     [flags]   5,000 idle GET SSE streams, one Caddy per target
//	go run ./bench upstreamkill [flags]   SIGKILL of the upstream under 70 open flows
//	go run ./bench idleedge [flags]   POST, wait the upstream's idle timeout ±5ms, POST: 502s of pooled connections
//
// Run `go run ./bench -h` for the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Target names.
const (
	targetDirect = "direct"
	targetPlain  = "plain"
	targetMCP    = "mcp_proxy"
	// targetAuth is mcp_auth in front of mcp_proxy, on a site of its own.
	targetAuth = "mcp_auth"
	// targetBase is the mcp_proxy site served by a second Caddy process
	// started from the -baseline binary.
	targetBase = "baseline"
)

// Stream kinds of the streams scenario.
const (
	// kindGet: each stream is a session's GET SSE stream.
	kindGet = "get"
	// kindAnswer: each stream is the text/event-stream answer to a POST
	// tools/call of the mock's stream tool.
	kindAnswer = "answer"
)

// Requests of the post scenario.
const (
	// postCallTool: tools/call of the mock's echo tool.
	postCallTool = "call"
	// postCallList: tools/list.
	postCallList = "list"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == mockCommand {
		// The mock upstream as a process of its own (upstreamkill).
		if err := runMockProcess(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// options are the command-line flags.
type options struct {
	scenario       string
	concurrency    int
	duration       time.Duration
	warmup         time.Duration
	rounds         int
	timeout        time.Duration
	service        time.Duration
	capacity       int
	multiples      string
	freshCaddy     bool
	freshHarness   bool
	resultFile     string
	deadline       time.Duration
	maxOutstanding int
	sessions       int
	targets        string
	mcpBlock       string
	plainBlock     string
	authBlock      string
	policyBlock    string
	out            string
	appendOut      bool
	svgdir         string
	caddyBin       string
	baselineBin    string
	cpuprofile     string
	heapprofile    string
	profileTarget  string
	quiet          bool
	quietMax       float64
	quietWait      time.Duration
	busyRetries    int

	global          string
	svgname         string
	clients         int
	clientsBefore   int
	burstWarm       time.Duration
	burstBackoff    time.Duration
	streams         int
	eventSize       int
	streamRate      float64
	streamModes     string
	streamKind      string
	postCall        string
	openConcurrency int
	settle          time.Duration
	hold            time.Duration
	idleSteps       string
	steps           []int // parsed idleSteps
	streamCalls     int
	jsonCalls       int
	endBudget       time.Duration
	slowTool        time.Duration
	upstreamIdle    time.Duration
	edgeJitter      time.Duration
	seed            int64
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(flagOutput)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./bench <post|overload|burst|streams|idle|upstreamkill|idleedge> [flags]\n\nflags:\n")
		fs.PrintDefaults()
	}
	fs.IntVar(&o.concurrency, "concurrency", 32, "post: concurrent closed-loop clients")
	fs.DurationVar(&o.duration, "duration", 0, "measured time per target (and per multiple); default 10s for post, 5s for overload")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "post: warm-up per target before measuring")
	fs.IntVar(&o.rounds, "rounds", 3, "post, upstreamkill: rounds; each round runs every target once, order rotated per round (default 1 for upstreamkill); idleedge: POST, wait, POST rounds per target, 1..1000 (default 70)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "post, idleedge: per-request client timeout")
	var service optDuration
	var capacity optInt
	fs.Var(&service, "service", "upstream service time per tools/call (default 0 for post, 20ms for overload)")
	fs.Var(&capacity, "capacity", "upstream tools/call in service at once, the excess waits in an unbounded FIFO; 0 = unlimited (default 0 for post, 16 for overload)")
	fs.StringVar(&o.multiples, "multiples", "1,2,5,10", "overload: offered load as multiples of upstream capacity (capacity/service)")
	fs.BoolVar(&o.freshCaddy, "fresh-caddy", true, "overload: restart Caddy before every measurement, so that one target's backlog, heap and service level do not fall on the next")
	fs.BoolVar(&o.freshHarness, "fresh-harness", true, "overload: run every measurement in a harness process of its own (generator, mock upstream and Caddy), so that one target's collapse does not fall on the next")
	fs.StringVar(&o.resultFile, "result-file", "", "overload: write the results as JSON to this file instead of a report (what -fresh-harness runs in each harness process)")
	fs.DurationVar(&o.deadline, "deadline", time.Second, "overload: client deadline per request, counted from its scheduled send time")
	fs.IntVar(&o.maxOutstanding, "max-outstanding", 20000, "overload: most requests in flight; the excess is counted as not sent")
	fs.IntVar(&o.sessions, "sessions", 64, "overload: MCP sessions opened per target and used round-robin")
	fs.StringVar(&o.targets, "targets", "direct,plain,mcp_proxy", "targets to measure, comma-separated: direct, plain, mcp_proxy, mcp_auth (post and streams: mcp_auth in front of mcp_proxy, every request with a bearer token the harness signs), baseline (post, streams, idle and idleedge, with -baseline: the mcp_proxy site served by a second Caddy process started from the -baseline binary)")
	fs.StringVar(&o.mcpBlock, "mcp-block", "", `subdirectives inserted inside "mcp_proxy <upstream> { }"; ";" or newline separated`)
	fs.StringVar(&o.plainBlock, "plain-block", "", `subdirectives inserted inside "reverse_proxy <upstream> { }"; ";" or newline separated`)
	fs.StringVar(&o.authBlock, "auth-block", "", `mcp_auth target: subdirectives inserted inside "mcp_auth { }" after its issuer, resource and key; ";" or newline separated`)
	fs.StringVar(&o.policyBlock, "policy-block", "", `mcp_auth target: subdirectives inserted inside its "mcp_proxy <upstream> { }" after the -mcp-block lines; ";" or newline separated`)
	fs.StringVar(&o.out, "out", "", "write the Markdown report to this file (default: stdout)")
	fs.BoolVar(&o.appendOut, "append", false, "append to -out instead of replacing it")
	fs.StringVar(&o.svgdir, "svgdir", "bench/out", "overload, streams, idle: directory for the SVG plots (bench/out is gitignored; use bench/results for BENCHMARKS.md)")
	fs.StringVar(&o.caddyBin, "caddy", "", "use this Caddy binary instead of building ./cmd/caddy")
	fs.StringVar(&o.baselineBin, "baseline", "", "post, streams, idle, idleedge: a Caddy binary (e.g. ./cmd/caddy built at an older commit) for the baseline target: the same mcp_proxy site (-mcp-block, -global) served by a second Caddy process started from it, in front of the same mock upstream")
	fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the Caddy process, taken over the first measurement of -profile-target (enables the admin endpoint on a loopback port)")
	fs.StringVar(&o.heapprofile, "heapprofile", "", "write a heap profile of the Caddy process, taken at 80 % of the first measurement of -profile-target")
	fs.StringVar(&o.profileTarget, "profile-target", targetMCP, "target whose first measurement -cpuprofile covers: plain, mcp_proxy, mcp_auth or baseline")
	fs.BoolVar(&o.quiet, "q", false, "no progress lines on stderr")
	fs.Float64Var(&o.quietMax, "quiet-max", 0.3, "before each measurement wait until processes other than the bench use at most this many cores; 0 disables")
	fs.IntVar(&o.busyRetries, "busy-retries", 2, "repeat a measurement during which other processes used more than -quiet-max cores, at most this many times")
	fs.DurationVar(&o.quietWait, "quiet-wait", time.Minute, "longest wait for a quiet machine before each measurement; it measures anyway after that")
	fs.StringVar(&o.global, "global", "", `global options inserted into the Caddyfile's global block, e.g. "mcp { session_memory 32MiB }"`)
	fs.StringVar(&o.svgname, "svgname", "", "overload, streams, idle: base name of the SVG plots (overload: <name>-goodput.svg, <name>-p99.svg; streams: <name>-<mode>-events.svg; idle: <name>-memory.svg); default the scenario's name")
	fs.IntVar(&o.clients, "clients", 1000, "burst: closed-loop clients after the jump")
	fs.IntVar(&o.clientsBefore, "clients-before", 10, "burst: closed-loop clients before the jump")
	fs.DurationVar(&o.burstWarm, "burst-warm", 2*time.Second, "burst: time with -clients-before clients before the jump")
	fs.DurationVar(&o.burstBackoff, "burst-backoff", 0, "burst: pause of a client after a 503/429 before its next request (0: none)")
	fs.IntVar(&o.streams, "streams", 0, "streams/idle/upstreamkill: GET SSE streams, each with its own session (default 100 for streams, 5000 for idle, 50 for upstreamkill)")
	fs.IntVar(&o.eventSize, "event-size", 1024, "streams: bytes of each SSE event on the wire")
	fs.Float64Var(&o.streamRate, "stream-rate", 50000, "streams, paced mode: events per second over all streams")
	fs.StringVar(&o.streamModes, "stream-modes", "saturation,paced", "streams: modes to run, comma-separated: saturation, paced")
	fs.StringVar(&o.postCall, "post-call", postCallTool, "post: what each request is: call (tools/call of the mock's echo tool) or list (tools/list, answered with the mock's 20 tools; mcp_proxy filters the list when rules deny some of them)")
	fs.StringVar(&o.streamKind, "stream-kind", kindGet, "streams: get (each stream a session's GET SSE stream) or answer (each stream the text/event-stream answer to a POST tools/call of the mock's stream tool, ended by the call's result)")
	fs.IntVar(&o.openConcurrency, "open-concurrency", 256, "idle/burst: sessions and streams opening at once")
	fs.DurationVar(&o.settle, "settle", 3*time.Second, "idle: wait after the last stream opened before the first sample; upstreamkill: wait after every flow ended before Caddy's goroutines are counted again")
	fs.DurationVar(&o.hold, "hold", 20*time.Second, "idle: second sample this long after the last stream opened (past the 15 s keepalives)")
	fs.IntVar(&o.streamCalls, "stream-calls", 10, "upstreamkill: tools/call whose answer streams as SSE, running when the upstream is killed")
	fs.IntVar(&o.jsonCalls, "json-calls", 10, "upstreamkill: tools/call waiting for a JSON answer when the upstream is killed")
	fs.DurationVar(&o.endBudget, "end-budget", 5*time.Second, "upstreamkill: time after the kill within which every flow must end; a flow still open then is hung")
	fs.DurationVar(&o.slowTool, "slow-tool", 30*time.Second, "upstreamkill: time the mock's slow tools take to answer (longer than opening every flow)")
	var upstreamIdle optDuration
	fs.Var(&upstreamIdle, "upstream-idle", "idleedge: the mock upstream's keep-alive idle timeout (its http.Server IdleTimeout), and the wait between a round's two POSTs, 10ms..1m (default 5s, as Node's http and uvicorn)")
	fs.DurationVar(&o.edgeJitter, "edge-jitter", edgeMaxJitter, "idleedge: the wait is -upstream-idle plus a uniform jitter in ±this, 0..5ms and at most half of -upstream-idle")
	fs.Int64Var(&o.seed, "seed", 1, "idleedge: seed of the jitter; every target gets the same sequence")
	fs.StringVar(&o.idleSteps, "idle-steps", "", "idle: stream counts at which Caddy's RSS and goroutines are sampled while the streams open, ascending, e.g. 1000,2000,5000 (-streams is always the last); each step waits -settle before its sample; default 5 equal steps")

	// The scenario may come first (go run ./bench post -rounds 1) or after
	// the flags.
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		o.scenario, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.scenario == "" && fs.NArg() > 0 {
		o.scenario = fs.Arg(0)
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return nil, err
		}
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	roundsSet := false
	fs.Visit(func(f *flag.Flag) { roundsSet = roundsSet || f.Name == "rounds" })
	if upstreamIdle.set {
		if o.scenario != "idleedge" {
			return nil, errors.New("-upstream-idle: only the idleedge scenario has it")
		}
		o.upstreamIdle = upstreamIdle.d
	}
	o.service, o.capacity = -1, -1
	if service.set {
		o.service = service.d
	}
	if capacity.set {
		o.capacity = capacity.n
	}
	switch o.scenario {
	case "post":
		if o.duration == 0 {
			o.duration = 10 * time.Second
		}
		if o.service < 0 {
			o.service = 0
		}
		if o.capacity < 0 {
			o.capacity = 0
		}
	case "overload":
		if o.duration == 0 {
			o.duration = 5 * time.Second
		}
		if o.service < 0 {
			o.service = 20 * time.Millisecond
		}
		if o.capacity < 0 {
			o.capacity = 16
		}
		if o.service <= 0 || o.capacity <= 0 {
			return nil, errors.New("overload needs a finite upstream capacity: -service > 0 and -capacity > 0")
		}
	case "burst":
		if o.duration == 0 {
			o.duration = 5 * time.Second
		}
		if o.service < 0 {
			o.service = 20 * time.Millisecond
		}
		if o.capacity < 0 {
			o.capacity = 16
		}
		if o.clientsBefore < 0 || o.clientsBefore >= o.clients || o.clients > 5000 {
			return nil, errors.New("burst needs 0 ≤ -clients-before < -clients ≤ 5000")
		}
	case "streams", "idle":
		if o.duration == 0 {
			o.duration = 5 * time.Second
		}
		if o.service < 0 {
			o.service = 0
		}
		if o.capacity < 0 {
			o.capacity = 0
		}
		if o.streams == 0 {
			o.streams = 100
			if o.scenario == "idle" {
				o.streams = 5000
			}
		}
		if o.streams < 1 || o.streams > 9000 {
			return nil, errors.New("-streams: want 1..9000 (2 fds per proxied stream under RLIMIT_NOFILE 20000)")
		}
		if o.eventSize < 200 || o.eventSize > 1<<20 {
			return nil, errors.New("-event-size: want 200..1048576")
		}
		if o.streamRate <= 0 {
			return nil, errors.New("-stream-rate must be positive")
		}
		if o.openConcurrency < 1 || o.openConcurrency > 4096 {
			return nil, errors.New("-open-concurrency: want 1..4096")
		}
		if o.settle <= 0 || o.hold < 0 || o.settle > 10*time.Minute || o.hold > 10*time.Minute {
			return nil, errors.New("-settle must be positive; -settle and -hold at most 10m")
		}
		if o.scenario == "idle" {
			steps, err := parseIdleSteps(o.idleSteps, o.streams)
			if err != nil {
				return nil, err
			}
			o.steps = steps
		}
	case "upstreamkill":
		if o.streams == 0 {
			o.streams = 50
		}
		if !roundsSet {
			o.rounds = 1
		}
		if o.duration == 0 {
			o.duration = o.endBudget // not used; keeps the common checks below
		}
		if o.streams < 0 || o.streamCalls < 0 || o.jsonCalls < 0 || o.streams+o.streamCalls+o.jsonCalls < 1 || o.streams+o.streamCalls+o.jsonCalls > 2000 {
			return nil, errors.New("upstreamkill: -streams, -stream-calls and -json-calls must be ≥ 0, 1..2000 flows in all")
		}
		if o.endBudget <= 0 || o.endBudget > 10*time.Minute || o.settle <= 0 || o.settle > 10*time.Minute {
			return nil, errors.New("upstreamkill: -end-budget and -settle must be positive and at most 10m")
		}
		if o.slowTool < 5*time.Second {
			return nil, errors.New("upstreamkill: -slow-tool must be at least 5s, so that every call still runs when the upstream is killed")
		}
	case "idleedge":
		if err := edgeFlags(o, roundsSet); err != nil {
			return nil, err
		}
	case "":
		fs.Usage()
		return nil, errors.New("no scenario: want post, overload, burst, streams, idle, upstreamkill or idleedge")
	default:
		return nil, fmt.Errorf("unknown scenario %q: want post, overload, burst, streams, idle, upstreamkill or idleedge", o.scenario)
	}
	if o.concurrency < 1 || o.concurrency > 10000 {
		return nil, fmt.Errorf("-concurrency %d: want 1..10000", o.concurrency)
	}
	if o.scenario != "idleedge" && (o.rounds < 1 || o.rounds > 100) {
		return nil, fmt.Errorf("-rounds %d: want 1..100", o.rounds)
	}
	if o.duration <= 0 || o.duration > time.Hour || o.warmup < 0 || o.warmup > time.Hour {
		return nil, errors.New("-duration and -warmup must be positive and at most 1h")
	}
	if o.maxOutstanding < 1 || o.sessions < 1 || o.sessions > 10000 {
		return nil, errors.New("-max-outstanding and -sessions must be positive (sessions at most 10000)")
	}
	if o.deadline <= 0 || o.timeout <= 0 {
		return nil, errors.New("-deadline and -timeout must be positive")
	}
	switch o.streamKind {
	case kindGet:
	case kindAnswer:
		if o.scenario != "streams" {
			return nil, fmt.Errorf("-stream-kind %s: only the streams scenario has it", kindAnswer)
		}
	default:
		return nil, fmt.Errorf("-stream-kind %q: want get or answer", o.streamKind)
	}
	switch o.postCall {
	case postCallTool:
	case postCallList:
		if o.scenario != "post" {
			return nil, fmt.Errorf("-post-call %s: only the post scenario has it", postCallList)
		}
	default:
		return nil, fmt.Errorf("-post-call %q: want call or list", o.postCall)
	}
	return o, nil
}

// flagOutput receives usage and flag errors; tests silence it.
var flagOutput io.Writer = os.Stderr

// optDuration is a duration flag whose default depends on the scenario.
type optDuration struct {
	d   time.Duration
	set bool
}

func (v *optDuration) String() string {
	if v == nil || !v.set {
		return ""
	}
	return v.d.String()
}

func (v *optDuration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return fmt.Errorf("want a duration ≥ 0 such as 20ms")
	}
	v.d, v.set = d, true
	return nil
}

// optInt is an int flag whose default depends on the scenario.
type optInt struct {
	n   int
	set bool
}

func (v *optInt) String() string {
	if v == nil || !v.set {
		return ""
	}
	return strconv.Itoa(v.n)
}

func (v *optInt) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("want an integer ≥ 0")
	}
	v.n, v.set = n, true
	return nil
}

// parseTargets validates a -targets list.
func parseTargets(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, t := range strings.Split(s, ",") {
		t = strings.TrimSpace(t)
		switch t {
		case "":
			continue
		case "mcp", "mcp-proxy":
			t = targetMCP
		case "auth", "mcp-auth":
			t = targetAuth
		case targetDirect, targetPlain, targetMCP, targetAuth, targetBase:
		default:
			return nil, fmt.Errorf("unknown target %q: want direct, plain, mcp_proxy, mcp_auth or baseline", t)
		}
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no targets")
	}
	return out, nil
}

// benchEnv is the running system under test.
type benchEnv struct {
	up    *upstream
	caddy *caddyProc
	gate  quietGate
	logf  func(string, ...any)
	// busyRetries is how often a measurement disturbed by other
	// processes is repeated.
	busyRetries int
	// admin is Caddy's loopback admin address, for /metrics.
	admin string
	// base and baseAdmin are the baseline target's Caddy process and its
	// admin address; nil and "" when the baseline is not measured.
	base      *caddyProc
	baseAdmin string
	// restart, when set, replaces caddy with a fresh process serving the
	// same configuration.
	restart func() error
}

// measure runs one measurement with run and runs it again, at most
// env.busyRetries times, a second apart, while other processes used more
// CPU during it than the quiet gate allows (usage tells how much). It
// returns the result kept and how often it was repeated.
func measure[R any](ctx context.Context, env *benchEnv, tgt target, profile *profileReq, run func() (R, error), usage func(R) windowUsage) (R, int, error) {
	for attempt := 0; ; attempt++ {
		res, err := run()
		if err != nil || !env.disturbed(usage(res)) || attempt >= env.busyRetries {
			return res, attempt, err
		}
		profile.retake()
		env.logf("  other processes used %.2f cores during the run; measuring %s again", usage(res).Others(), tgt.Name)
		if !pause(ctx, time.Second) {
			return res, attempt, ctx.Err()
		}
	}
}

// freshDesc describes how overload measurements share Caddy and the
// harness.
func freshDesc(freshCaddy, freshHarness bool) string {
	switch {
	case freshHarness:
		return "every measurement runs in a harness process of its own (-fresh-harness), with its own generator, mock upstream and Caddy: each target and multiple starts from fresh processes, Caddy at the full service level"
	case freshCaddy:
		return "Caddy is restarted before every measurement (-fresh-caddy): each target and multiple starts from a fresh Caddy process at the full service level; the generator and the mock run in one harness process throughout (-fresh-harness=false)"
	}
	return "one Caddy process serves every measurement in turn (-fresh-caddy=false, -fresh-harness=false)"
}

// disturbed reports whether other processes used more CPU during a
// measurement than the quiet gate allows.
func (e *benchEnv) disturbed(u windowUsage) bool {
	return e.gate.MaxOthers > 0 && u.Others() > e.gate.MaxOthers
}

// settle waits for a quiet machine before a measurement and reports the
// CPU other processes used just before it and whether that was quiet.
func (e *benchEnv) settle(ctx context.Context, tgt target) quietness {
	// The generator and the mock share this process: the garbage of the
	// previous measurement (plain's overload leaves thousands of timed-out
	// requests) is collected now, not during the next target's window.
	runtime.GC()
	others, ok := e.gate.wait(ctx, e.caddyPID(tgt), e.logf)
	// The service level is process-wide: another target's overload in the
	// same Caddy can leave it raised for a moment after the machine is
	// quiet. Each measurement starts at the full level.
	if e.gate.MaxOthers > 0 && !waitLevelFull(ctx, e.adminFor(tgt), 15*time.Second) {
		e.logf("  service level still above full after 15s; measuring anyway")
	}
	return quietness{OthersBefore: others, Quiet: ok}
}

// quietness is the machine's state just before a measurement.
type quietness struct {
	OthersBefore float64
	Quiet        bool
}

// caddyPID is the Caddy process to watch while tgt runs (also for direct,
// where it shows Caddy idle): the baseline's own process for the
// baseline, the main one for every other target.
func (e *benchEnv) caddyPID(tgt target) int {
	if tgt.Name == targetBase && e.base != nil {
		return e.base.pid()
	}
	if e.caddy == nil {
		return 0
	}
	return e.caddy.pid()
}

// adminFor is the admin address of the Caddy process that serves tgt.
func (e *benchEnv) adminFor(tgt target) string {
	if tgt.Name == targetBase {
		return e.baseAdmin
	}
	return e.admin
}

// profileReq takes one CPU profile (and, if asked, one heap profile) of
// Caddy through its admin endpoint.
type profileReq struct {
	file, target, admin string
	heapFile            string
	taken               bool
	justTaken           bool // the latest measurement was profiled
	ch                  chan error
}

// start begins a profile of the given duration if target is the one asked
// for and none was taken yet.
func (p *profileReq) start(target string, d time.Duration) {
	if p == nil {
		return
	}
	p.justTaken = false
	if p.taken || (p.file == "" && p.heapFile == "") || target != p.target {
		return
	}
	p.taken, p.justTaken = true, true
	p.ch = make(chan error, 2)
	secs := max(1, int(d.Round(time.Second)/time.Second))
	if p.heapFile == "" {
		p.ch <- nil
	} else {
		go func() {
			time.Sleep(d * 8 / 10)
			p.ch <- fetchTo(fmt.Sprintf("http://%s/debug/pprof/heap", p.admin), p.heapFile, 30*time.Second)
		}()
	}
	if p.file == "" {
		p.ch <- nil
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs)*time.Second+30*time.Second)
		defer cancel()
		url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.admin, secs)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			p.ch <- fmt.Errorf("cpu profile: %w", err)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			p.ch <- fmt.Errorf("cpu profile: status %d: %s", resp.StatusCode, b)
			return
		}
		f, err := os.Create(p.file)
		if err != nil {
			p.ch <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		p.ch <- err
	}()
}

// retake allows the profile to be taken again when the latest
// measurement, which it covered, was discarded.
func (p *profileReq) retake() {
	if p != nil && p.justTaken && p.ch == nil {
		p.taken = false
	}
}

// wait returns the result of the profiles started in the current
// measurement, if any.
func (p *profileReq) wait() error {
	if p == nil || p.ch == nil {
		return nil
	}
	err1, err2 := <-p.ch, <-p.ch
	p.ch = nil
	if err1 != nil {
		return err1
	}
	return err2
}

// fetchTo saves the body of a GET into file.
func fetchTo(url, file string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile: status %d", resp.StatusCode)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// raiseNoFile sets the RLIMIT_NOFILE soft limit to the hard limit; Caddy,
// started later, inherits it.
func raiseNoFile() error {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	return nil
}

// fdBudget is the most requests that may be outstanding at once without
// running the harness out of file descriptors: two each (client and mock
// side), besides the overload client's idle pool (also two each) and
// 1,000 spare.
func fdBudget() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return 0
	}
	return max(1, (int(rl.Cur)-1000-2*overloadIdlePool)/2)
}

// shellQuote quotes a word for a POSIX shell when it needs quoting.
func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	if strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=,:@%+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func commandLine(args []string) string {
	parts := []string{"go", "run", "./bench"}
	for _, a := range args {
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

func run(args []string) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	names, err := parseTargets(o.targets)
	if err != nil {
		return err
	}
	if slices.Contains(names, targetAuth) && o.scenario != "post" && o.scenario != "streams" {
		return fmt.Errorf("target %s: only the post and streams scenarios measure it", targetAuth)
	}
	logf := func(format string, a ...any) {
		if !o.quiet {
			fmt.Fprintf(os.Stderr, format+"\n", a...)
		}
	}
	measureBase := slices.Contains(names, targetBase)
	if measureBase {
		switch o.scenario {
		case "post", "streams", "idle", "idleedge":
		default:
			return fmt.Errorf("target %s: only the post, streams, idle and idleedge scenarios measure it", targetBase)
		}
		if o.baselineBin == "" {
			return fmt.Errorf("target %s needs -baseline <caddy binary>", targetBase)
		}
		if o.baselineBin, err = checkBinary(o.baselineBin); err != nil {
			return fmt.Errorf("-baseline: %w", err)
		}
	} else if o.baselineBin != "" {
		logf("-baseline is set but -targets has no %s: the baseline binary is not used", targetBase)
	}
	if err := raiseNoFile(); err != nil {
		logf("warning: cannot raise RLIMIT_NOFILE: %v", err)
	}
	// Every outstanding request can hold two descriptors in the harness:
	// its client connection and, at the mock, the upstream connection.
	if limit := fdBudget(); limit > 0 && o.maxOutstanding > limit {
		logf("-max-outstanding %d lowered to %d to fit RLIMIT_NOFILE", o.maxOutstanding, limit)
		o.maxOutstanding = limit
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	root, err := moduleRoot()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "mcpgate-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	bin := o.caddyBin
	build := "prebuilt binary " + o.caddyBin
	if bin == "" {
		build = "`go build ./cmd/caddy` of " + gitDescribe(ctx, root)
		logf("building ./cmd/caddy ...")
		if bin, err = buildCaddy(ctx, root, tmp); err != nil {
			return err
		}
	}

	if measureBase {
		build += "; baseline: " + binaryDesc(o.baselineBin)
	}
	meta := reportMeta{
		Build:   build,
		Command: commandLine(args),
		Date:    time.Now(),
		Machine: readMachine(),
	}
	if o.scenario == "overload" && o.freshHarness && o.resultFile == "" {
		mults, err := parseMultiples(o.multiples)
		if err != nil {
			return err
		}
		cf, results, err := runOverloadIsolated(ctx, args, bin, o, names, mults, logf)
		if err != nil {
			return err
		}
		meta.Caddyfile = cf
		return writeOverloadOutput(o, meta, overloadConfigOf(o, mults), results, logf)
	}

	if o.scenario == "upstreamkill" {
		return runUpstreamKillMain(ctx, o, names, bin, tmp, meta, logf)
	}

	mock := mockOptions{}
	if o.scenario == "idleedge" {
		mock = mockOptions{IdleTimeout: o.upstreamIdle, Stateless: true}
		// The requests carry no session: the mcp_proxy sites (and the
		// baseline's) let them through.
		o.mcpBlock = edgeMCPBlock(o.mcpBlock)
	}
	up, err := startUpstream(o.service, o.capacity, mock)
	if err != nil {
		return err
	}
	defer up.close()

	upDesc := fmt.Sprintf("mock upstream: service time %s, capacity %s", o.service, capDesc(o.capacity, o.service))
	gate := quietGate{MaxOthers: o.quietMax, MaxWait: o.quietWait}
	var report strings.Builder

	if o.scenario == "idle" {
		// One fresh Caddy per target, one after the other: RSS is per
		// process.
		ie := &idleEnv{
			bench: &benchEnv{up: up, gate: gate, logf: logf, busyRetries: o.busyRetries},
			bin:   bin, baseBin: o.baselineBin, tmp: tmp,
			params:   caddyfileParams{Upstream: up.addr, PlainBlock: o.plainBlock, MCPBlock: o.mcpBlock, Global: o.global},
			heapFile: o.heapprofile, profileTarget: o.profileTarget,
		}
		cfg := idleConfig{Streams: o.streams, OpenConcurrency: o.openConcurrency, Settle: o.settle, Hold: o.hold, Steps: o.steps}
		results, err := runIdleScenario(ctx, ie, names, cfg, logf)
		if err != nil {
			return err
		}
		plots, err := writeIdlePlot(o, results)
		if err != nil {
			return err
		}
		if err := prependPlotDir(&plots, o.out); err != nil {
			return err
		}
		meta.Title = fmt.Sprintf("idle: %d idle GET SSE streams, one fresh Caddy per target", o.streams)
		meta.Setup = []string{
			"mock upstream in the harness process: every GET stream gets its headers and a `: open` comment at once, then a `: keepalive` comment every 15 s",
			fmt.Sprintf("per target a fresh Caddy process serving only that target's site, with a loopback admin endpoint for /metrics; %d sessions (initialize, over %d keep-alive connections closed afterwards, each from its own loopback address 127.0.1.x, so that the sessions belong to that many clients), then one GET stream per session on its own connection, at most %d opening at once", o.streams, sessionConns, o.openConcurrency),
			fmt.Sprintf("samples of Caddy: before any session, after the sessions, %s and %s after the last stream opened, and 3 s after every stream was closed; RSS from /proc/<pid>/status VmRSS, goroutines and heap from /metrics, fds from /proc/<pid>/fd", o.settle, o.hold),
			fmt.Sprintf("memory against streams: the streams open in steps up to %s; after each step's last stream opened the harness waits %s and samples Caddy before opening the next step's (the last step's sample is the one %s after the last stream opened)", joinInts(o.steps), o.settle, o.settle),
			"per-stream growth = (RSS with every stream open − RSS before any session) ÷ streams, the larger of the two samples; it includes the session",
		}
		if measureBase {
			meta.Setup = append(meta.Setup, fmt.Sprintf("baseline: the mcp_proxy target's site and Caddyfile, in a fresh Caddy process started from the -baseline binary %s", o.baselineBin))
		}
		writeIdleReport(&report, meta, results, plots)
		return writeOut(o, report.String(), logf)
	}

	plainPort, err := freePort()
	if err != nil {
		return err
	}
	mcpPort, err := freePort()
	if err != nil {
		return err
	}
	ap, err := freePort()
	if err != nil {
		return err
	}
	params := caddyfileParams{
		Upstream: up.addr, PlainPort: plainPort, MCPPort: mcpPort,
		PlainBlock: o.plainBlock, MCPBlock: o.mcpBlock, Global: o.global,
		// A loopback admin endpoint serves /metrics (and the CPU profile).
		AdminAddr: fmt.Sprintf("127.0.0.1:%d", ap),
	}
	ports := []int{plainPort, mcpPort}
	// The mcp_auth site exists only when it is measured, so that the
	// Caddyfile of the other runs stays as it was.
	var issuer *benchIssuer
	if slices.Contains(names, targetAuth) {
		if params.AuthPort, err = freePort(); err != nil {
			return err
		}
		if issuer, err = newBenchIssuer(tmp, authResource(params.AuthPort), time.Now()); err != nil {
			return err
		}
		params.AuthKeyFile, params.AuthBlock, params.PolicyBlock = issuer.KeyFile, o.authBlock, o.policyBlock
		ports = append(ports, params.AuthPort)
	}
	prof := &profileReq{file: o.cpuprofile, target: o.profileTarget, admin: params.AdminAddr}
	if o.cpuprofile != "" {
		if prof.file, err = filepath.Abs(o.cpuprofile); err != nil {
			return err
		}
	}
	if o.heapprofile != "" {
		if prof.heapFile, err = filepath.Abs(o.heapprofile); err != nil {
			return err
		}
	}
	cf := caddyfile(params)
	meta.Caddyfile = cf
	cfPath := filepath.Join(tmp, "Caddyfile")
	if err := os.WriteFile(cfPath, []byte(cf), 0o644); err != nil {
		return err
	}
	logf("starting caddy (plain :%d, mcp_proxy :%d, upstream %s) ...", plainPort, mcpPort, up.addr)
	if issuer != nil {
		logf("  and mcp_auth in front of mcp_proxy on :%d", params.AuthPort)
	}
	cp, err := startCaddy(ctx, bin, cfPath, tmp, ports)
	if err != nil {
		return err
	}
	env := &benchEnv{up: up, caddy: cp, gate: gate, logf: logf, busyRetries: o.busyRetries, admin: params.AdminAddr}
	defer func() { env.caddy.stop() }()
	var baseURL string
	if measureBase {
		// The baseline: the mcp_proxy site alone, with the same block and
		// global options, in a second Caddy process of its own (own admin
		// endpoint, own pid for the CPU figures), started and stopped
		// like the first.
		bcf, port, err := startBaseline(ctx, env, o, up.addr, tmp, logf)
		if err != nil {
			return err
		}
		defer env.base.stop()
		meta.BaseCaddyfile = bcf
		baseURL = fmt.Sprintf("http://127.0.0.1:%d/mcp", port)
		if o.profileTarget == targetBase {
			prof.admin = env.baseAdmin
		}
	}
	if o.scenario == "overload" && o.freshCaddy {
		env.restart = func() error {
			env.caddy.stop()
			next, err := startCaddy(ctx, bin, cfPath, tmp, ports)
			if err != nil {
				return err
			}
			env.caddy = next
			return nil
		}
	}

	urls := map[string]string{
		targetDirect: "http://" + up.addr + "/mcp",
		targetPlain:  fmt.Sprintf("http://127.0.0.1:%d/mcp", plainPort),
		targetMCP:    fmt.Sprintf("http://127.0.0.1:%d/mcp", mcpPort),
	}
	if issuer != nil {
		urls[targetAuth] = authResource(params.AuthPort)
	}
	if measureBase {
		urls[targetBase] = baseURL
	}
	var targets []target
	for _, n := range names {
		t := target{Name: n, URL: urls[n]}
		if n == targetAuth {
			t.Token = issuer.Token
		}
		targets = append(targets, t)
	}

	switch o.scenario {
	case "post":
		cfg := postConfig{Concurrency: o.concurrency, Warmup: o.warmup, Duration: o.duration, Rounds: o.rounds, Timeout: o.timeout, List: o.postCall == postCallList}
		rounds, err := runPostScenario(ctx, env, targets, cfg, prof, logf)
		if err != nil {
			return err
		}
		method := "tools/call"
		if cfg.List {
			method = "tools/list"
		}
		meta.Title = fmt.Sprintf("post: closed loop, %d clients, %s, service %s", o.concurrency, method, o.service)
		procs := "one Caddy process serves both sites"
		if issuer != nil {
			procs = "one Caddy process serves the three sites"
		}
		if measureBase {
			procs += " (and a second one the baseline's, below)"
		}
		meta.Setup = []string{
			upDesc,
			fmt.Sprintf("%d concurrent clients, each with its own session (initialize first) and its own keep-alive connection; POST %s in a closed loop", o.concurrency, method),
			fmt.Sprintf("per target: %s warm-up, then %s measured (only calls that start and end in the window count; latency is of the 200s)", o.warmup, o.duration),
			fmt.Sprintf("%d rounds; every round runs every target once, in an order rotated by the round", o.rounds),
			procs + "; generator, mock upstream and Caddy share the machine; CPU is % of one core over the window",
		}
		if cfg.List {
			meta.Setup = append(meta.Setup, "each request is a tools/list; the mock answers every one with the same "+strconv.Itoa(len(mockTools))+" tools ("+strconv.Itoa(len(mockToolsList))+" bytes: "+strings.Join(mockTools, ", ")+"), each with a description and an input schema; a 200 counts when its body names the echo tool")
		}
		if issuer != nil {
			meta.Setup = append(meta.Setup, authSetup(o, params.AuthPort))
		}
		if measureBase {
			meta.Setup = append(meta.Setup, baseSetup(o))
		}
		writePostReport(&report, meta, rounds, names)
	case "overload":
		mults, err := parseMultiples(o.multiples)
		if err != nil {
			return err
		}
		cfg := overloadConfigOf(o, mults)
		results, err := runOverloadScenario(ctx, env, targets, cfg, prof, logf)
		if err != nil {
			return err
		}
		if o.resultFile != "" {
			return writeChildResult(o.resultFile, cf, results)
		}
		return writeOverloadOutput(o, meta, cfg, results, logf)
	case "burst":
		cfg := burstConfig{
			Before: o.clientsBefore, Clients: o.clients, Warm: o.burstWarm, Duration: o.duration,
			Timeout: o.timeout, Backoff: o.burstBackoff, OpenConcurrency: min(o.openConcurrency, 64), Bin: time.Second,
		}
		results, err := runBurstScenario(ctx, env, targets, cfg, logf)
		if err != nil {
			return err
		}
		meta.Title = fmt.Sprintf("burst: %d → %d closed-loop clients, tools/call, upstream %d × %s", o.clientsBefore, o.clients, o.capacity, o.service)
		backoff := "immediately (no backoff)"
		if o.burstBackoff > 0 {
			backoff = "after " + o.burstBackoff.String()
		}
		meta.Setup = []string{
			upDesc + " behind an unbounded FIFO queue that never sheds",
			fmt.Sprintf("%d clients, each with its own session and its own keep-alive connection, both made before the run; %d clients run a closed loop for %s, then the other %d join at one instant (the jump) and all run for %s", o.clients, o.clientsBefore, o.burstWarm, o.clients-o.clientsBefore, o.duration),
			fmt.Sprintf("client timeout %s per request; after a 503/429 a client sends its next request %s; no request starts after the window, and the harness waits for every request in flight to end, so every request is counted once", o.timeout, backoff),
			"refused share = (503 + 429) ÷ requests started after the jump; the timeline bins requests by completion time",
		}
		writeBurstReport(&report, meta, results)
	case "streams":
		modes, err := parseModes(o.streamModes)
		if err != nil {
			return err
		}
		cfg := streamsConfig{Streams: o.streams, EventSize: o.eventSize, Duration: o.duration, Rate: o.streamRate, Modes: modes, Kind: o.streamKind, Drain: 30 * time.Second, MaxLat: 200_000}
		results, err := runStreamsScenario(ctx, env, targets, cfg, prof, logf)
		if err != nil {
			return err
		}
		meta.Title = fmt.Sprintf("streams: %d GET SSE streams, %d-byte events", o.streams, o.eventSize)
		open := fmt.Sprintf("%d sessions per target, each with a GET SSE stream (`Accept: text/event-stream`, `Mcp-Protocol-Version: %s`); all open before the mock starts emitting", o.streams, protocolVersion)
		end := "then the mock ends each response"
		if o.streamKind == kindAnswer {
			meta.Title = fmt.Sprintf("streams: %d SSE answers to POST tools/call, %d-byte events", o.streams, o.eventSize)
			open = fmt.Sprintf("%d sessions per target, each with one POST `tools/call` of the mock's `%s` tool (`Accept: application/json, text/event-stream`, `Mcp-Protocol-Version: %s`), which the mock answers with `text/event-stream`: the headers and a `: open` comment at once, then the events below; all answers open before the mock starts emitting", o.streams, toolStream, protocolVersion)
			end = "then the mock sends the call's JSON-RPC result (`{\"jsonrpc\":\"2.0\",\"id\":<id>,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"ok\"}]}}`) as the last event and ends each response; the clients count that result, and any JSON-RPC error, apart from the events"
		}
		meta.Setup = []string{
			open,
			fmt.Sprintf("each event is `data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":\"info\",\"data\":{\"seq\":N,\"ts\":<send time, ns>,\"pad\":\"x…\"}}}`, %d bytes on the wire, written and flushed on its own by the mock", o.eventSize),
			fmt.Sprintf("saturation: every stream emits as fast as its writes go through, for %s; paced: %.0f events/s in total (%.0f per stream, streams staggered evenly), for %s; %s", o.duration, o.streamRate, o.streamRate/float64(o.streams), o.duration, end),
			"delivered/s = events received inside the emission window ÷ its length; the clients check every event's sequence (gaps, reordering), its size, and that the stream ends cleanly with every event the mock sent",
			"latency = client receive time − the send timestamp in the event (same clock: mock and clients live in the harness); proxy-added = a target's percentile minus direct's",
			"Caddy CPU is % of one core from the start of the emission until every stream ended; per event = that CPU time ÷ events received",
		}
		if issuer != nil {
			meta.Setup = append(meta.Setup, authSetup(o, params.AuthPort))
		}
		if measureBase {
			meta.Setup = append(meta.Setup, baseSetup(o))
		}
		plots, err := writeStreamsPlots(o, results)
		if err != nil {
			return err
		}
		if err := prependPlotDir(&plots, o.out); err != nil {
			return err
		}
		writeStreamsReport(&report, meta, results, plots)
	case "idleedge":
		cfg := edgeConfigOf(o)
		results, err := runEdgeScenario(ctx, env, targets, cfg, logf)
		if err != nil {
			return err
		}
		meta.Title = edgeTitle(cfg)
		meta.Setup = edgeSetup(cfg, upDesc)
		if measureBase {
			meta.Setup = append(meta.Setup, edgeBaseSetup(o.baselineBin))
		}
		writeEdgeReport(&report, meta, cfg, results)
	}
	return writeOut(o, report.String(), logf)
}

// writeOut writes the report to -out, or to stdout.
func writeOut(o *options, report string, logf func(string, ...any)) error {
	if o.out == "" {
		_, err := io.WriteString(os.Stdout, report)
		return err
	}
	flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if o.appendOut {
		flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	f, err := os.OpenFile(o.out, flags, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(f, report); err != nil {
		f.Close()
		return err
	}
	logf("report written to %s", o.out)
	return f.Close()
}

// parseModes validates a -stream-modes list.
func parseModes(s string) ([]string, error) {
	var out []string
	for _, m := range strings.Split(s, ",") {
		switch m = strings.TrimSpace(m); m {
		case "":
		case modeSaturation, modePaced:
			out = append(out, m)
		default:
			return nil, fmt.Errorf("unknown stream mode %q: want saturation or paced", m)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no stream modes")
	}
	return out, nil
}

// gitDescribe names the source tree: HEAD's short hash, and whether the
// working tree has changes.
func gitDescribe(ctx context.Context, root string) string {
	out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "the working tree (not a git checkout)"
	}
	desc := "commit " + strings.TrimSpace(string(out))
	st, err := exec.CommandContext(ctx, "git", "-C", root, "status", "--porcelain").Output()
	if err != nil {
		return desc
	}
	for _, line := range strings.Split(string(st), "\n") {
		// The harness and its report do not change the binary.
		if len(line) > 3 && !strings.HasPrefix(line[3:], "bench/") && line[3:] != "BENCHMARKS.md" {
			return desc + " with uncommitted changes"
		}
	}
	return desc
}

func capDesc(capacity int, service time.Duration) string {
	if capacity == 0 {
		return "unlimited"
	}
	if c := capacityPerSecond(capacity, service); c > 0 {
		return fmt.Sprintf("%d in service at once (%.0f tools/call per second)", capacity, c)
	}
	return fmt.Sprintf("%d in service at once", capacity)
}

// writePlots writes the overload SVGs into -svgdir and returns their paths.
func writePlots(o *options, cfg overloadConfig, results []*overloadResult) ([]string, error) {
	if len(results) == 0 {
		return nil, nil
	}
	if err := os.MkdirAll(o.svgdir, 0o755); err != nil {
		return nil, err
	}
	g, p := overloadCharts(cfg, results)
	if b := strings.TrimSpace(o.mcpBlock); b != "" {
		g.Subtitle = "mcp_proxy { " + b + " }"
		p.Subtitle = g.Subtitle
	}
	base := o.svgname
	if base == "" {
		base = "overload"
	}
	var paths []string
	for name, c := range map[string]*lineChart{base + "-goodput.svg": g, base + "-p99.svg": p} {
		path := filepath.Join(o.svgdir, name)
		if err := os.WriteFile(path, c.SVG(), 0o644); err != nil {
			return nil, err
		}
		paths = append(paths, path)
	}
	if paths[0] > paths[1] {
		paths[0], paths[1] = paths[1], paths[0]
	}
	return paths, nil
}

// writeStreamsPlots writes the streams scenario's events-per-second SVGs,
// one per mode, into -svgdir and returns their paths.
func writeStreamsPlots(o *options, results []*streamsResult) ([]string, error) {
	if len(results) == 0 {
		return nil, nil
	}
	if err := os.MkdirAll(o.svgdir, 0o755); err != nil {
		return nil, err
	}
	base := o.svgname
	if base == "" {
		base = "streams"
	}
	modes, charts := streamsCharts(results)
	var paths []string
	for i, c := range charts {
		kind := "GET SSE streams"
		if o.streamKind == kindAnswer {
			kind = "SSE answers to POST tools/call"
		}
		c.Subtitle = fmt.Sprintf("%d %s, %d-byte events, %s bins", o.streams, kind, o.eventSize, rateBin)
		if b := strings.TrimSpace(o.mcpBlock); b != "" {
			c.Subtitle += "; mcp_proxy { " + b + " }"
		}
		path := filepath.Join(o.svgdir, base+"-"+modes[i]+"-events.svg")
		if err := os.WriteFile(path, c.SVG(), 0o644); err != nil {
			return nil, err
		}
		paths = append(paths, path)
	}
	return paths, nil
}

// writeIdlePlot writes the idle scenario's memory-against-streams SVG
// into -svgdir and returns its path.
func writeIdlePlot(o *options, results []*idleResult) ([]string, error) {
	if len(results) == 0 {
		return nil, nil
	}
	if err := os.MkdirAll(o.svgdir, 0o755); err != nil {
		return nil, err
	}
	c := idleChart(results)
	c.Subtitle = fmt.Sprintf("%d sessions, then their GET streams in steps; one fresh Caddy per target", o.streams)
	if b := strings.TrimSpace(o.mcpBlock); b != "" {
		c.Subtitle += "; mcp_proxy { " + b + " }"
	}
	base := o.svgname
	if base == "" {
		base = "idle"
	}
	path := filepath.Join(o.svgdir, base+"-memory.svg")
	if err := os.WriteFile(path, c.SVG(), 0o644); err != nil {
		return nil, err
	}
	return []string{path}, nil
}

// joinInts formats counts as "250, 500, 1000".
func joinInts(ns []int) string {
	parts := make([]string, len(ns))
	for i, n := range ns {
		parts[i] = strconv.Itoa(n)
	}
	return strings.Join(parts, ", ")
}

// prependPlotDir makes the plot paths relative to the report's directory,
// so the Markdown links work from where the report lives.
func prependPlotDir(plots *[]string, out string) error {
	base := "."
	if out != "" {
		base = filepath.Dir(out)
	}
	for i, p := range *plots {
		rel, err := relPath(base, p)
		if err != nil {
			return err
		}
		(*plots)[i] = rel
	}
	return nil
}

func relPath(base, target string) (string, error) {
	ab, err := filepath.Abs(base)
	if err != nil {
		return "", err
	}
	at, err := filepath.Abs(target)
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(ab, at)
	if err != nil {
		return "", err
	}
	return filepath.ToSlash(rel), nil
}
