//go:build linux

// The load scenarios of the resource manager (issue 5): gradual
// connections, a burst, memory bounds, a memory-ramp soak and a session
// leak check, each through a real Caddy in front of a hand-written MCP
// upstream on loopback.
//
// Scale: every count is multiplied by loadScale: 1 by default, 0.1 with
// -short, and under the race detector 0.2 for the in-process session leak
// test (the others run Caddy as a separate, uninstrumented process and
// keep their full scale). MCPGATE_LOAD_SCALE (a number in (0, 1])
// overrides it; MCPGATE_LOAD=0 skips the load tests. They take about 40s
// at full scale on 2 cores; CI runs them so, without -race, with
//
//	go test -count=1 -run 'Load' ./caddytest
//
// and the soak (about a minute more) with MCPGATE_SOAK=1 set.

package caddytest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// loadVersion is the protocol version the load clients speak.
const loadVersion = "2025-11-25"

// loadSchedOff is a line of the `mcp` global option that keeps the
// scheduler-latency monitor out of the way: at its default it reads the
// CPU contention of the whole machine (the test's own clients, other
// processes), and on a busy 2-core machine it alone raises the protective
// level, which refuses all new work; these tests are about memory,
// admission and sessions, not about that monitor.
const loadSchedOff = "\t\tsched_latency_target 10s\n"

// loadRaceEnabled reports whether the test binary was built with -race.
var loadRaceEnabled = sync.OnceValue(func() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
})

// loadScale returns the share of the full load a test runs (see the file
// comment), and skips the test when MCPGATE_LOAD=0. underRace is the
// share under the race detector: 1 for tests whose proxy is a separate
// (uninstrumented) Caddy process.
func loadScale(t *testing.T, underRace float64) float64 {
	t.Helper()
	if os.Getenv("MCPGATE_LOAD") == "0" {
		t.Skip("MCPGATE_LOAD=0")
	}
	if s := os.Getenv("MCPGATE_LOAD_SCALE"); s != "" {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f <= 0 || f > 1 {
			t.Fatalf("MCPGATE_LOAD_SCALE=%q: want a number in (0, 1]", s)
		}
		return f
	}
	switch {
	case testing.Short():
		return 0.1
	case loadRaceEnabled():
		return underRace
	}
	return 1
}

// loadScaled returns n×scale, at least lo.
func loadScaled(n int, scale float64, lo int) int {
	return max(int(float64(n)*scale+0.5), lo)
}

// raiseNoFile raises this process's soft limit of open files to the hard
// limit; subprocesses inherit it.
func raiseNoFile(t *testing.T) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
	}
}

// openSessions initializes n sessions at loadVersion through hc, workers
// at a time, and returns their tokens; it fails the test unless every
// one opened.
func openSessions(t *testing.T, ctx context.Context, hc *http.Client, url string, n, workers int) []string {
	t.Helper()
	toks := make([]string, n)
	var failed atomic.Value
	parallel(n, workers, func(i int) {
		tok, r := initSession(ctx, hc, url, loadVersion)
		if tok == "" {
			failed.CompareAndSwap(nil, fmt.Errorf("session %d: initialize: %v", i, r))
		}
		toks[i] = tok
	})
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	return toks
}

// loadEvents returns the text of n SSE events of exactly size bytes each
// (logging notifications padded with x).
func loadEvents(n, size int) string {
	head := `data: {"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"`
	tail := `"}}` + "\n\n"
	one := head + strings.Repeat("x", size-len(head)-len(tail)) + tail
	return strings.Repeat(one, n)
}

// loadBulk writes total bytes of size-byte events, batch events per write
// and flush: the first burst bytes at once, the rest one write every
// interval. It reports the first write error.
func loadBulk(w *fakeStream, total, burst, size, batch int, every time.Duration) error {
	chunk := loadEvents(batch, size)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for sent := 0; sent < total; sent += len(chunk) {
		if err := w.write(chunk); err != nil {
			return err
		}
		if sent < burst {
			continue
		}
		select {
		case <-w.ctx.Done():
			return w.ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// lockedBuffer collects a subprocess's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 64<<20 {
		return len(p), nil // bounded
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// loadProc is a Caddy running as a separate process, with its admin
// endpoint on a loopback port.
type loadProc struct {
	cmd    *exec.Cmd
	admin  string
	logs   *lockedBuffer
	stdin  io.WriteCloser
	exited chan struct{}
	mc     *http.Client
}

// startBuiltCaddy runs the Caddy binary built from ./cmd/caddy with the
// Caddyfile and extra environment (GOMEMLIMIT is never inherited).
func startBuiltCaddy(t *testing.T, caddyfile string, port, adminPort int, env ...string) *loadProc {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	return startLoadProc(t, dir, []string{builtCaddy(t), "run", "--config", path, "--adapter", "caddyfile"}, port, adminPort, env)
}

func startLoadProc(t *testing.T, dir string, argv []string, port, adminPort int, env []string) *loadProc {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOMEMLIMIT=") && !strings.HasPrefix(kv, "GOGC=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HOME="+dir, "XDG_CONFIG_HOME="+dir, "XDG_DATA_HOME="+dir)
	cmd.Env = append(cmd.Env, env...)
	p := &loadProc{cmd: cmd, admin: fmt.Sprintf("http://127.0.0.1:%d", adminPort), logs: new(lockedBuffer), exited: make(chan struct{}),
		mc: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.stdin = stdin
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.stdin.Close()
		select {
		case <-p.exited:
		case <-time.After(3 * time.Second):
			_ = cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			logs := p.logs.String()
			if len(logs) > 20000 {
				logs = "…" + logs[len(logs)-20000:]
			}
			t.Logf("caddy process logs:\n%s", logs)
		}
	})
	for _, pt := range []int{port, adminPort} {
		if !waitUntil(30*time.Second, 50*time.Millisecond, func() bool {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", pt), 200*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err == nil || p.dead()
		}) || p.dead() {
			t.Fatalf("caddy process did not listen on %d (exited: %v)\n%s", pt, p.dead(), p.logs.String())
		}
	}
	return p
}

// dead reports whether the process has exited.
func (p *loadProc) dead() bool { return isClosed(p.exited) }

// rss returns the process's resident set size in bytes.
func (p *loadProc) rss() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) < 1 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// metrics scrapes the admin endpoint's /metrics.
func (p *loadProc) metrics() (promText, error) {
	resp, err := p.mc.Get(p.admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %d", resp.StatusCode)
	}
	return parseMetrics(resp.Body)
}

// settle waits until the process's goroutine count holds still for three
// scrapes 100ms apart (at most about 5s), and returns it with the RSS.
func (p *loadProc) settle(t *testing.T) (goroutines float64, rss int64) {
	t.Helper()
	last, stable := -1.0, 0
	for i := 0; i < 50 && stable < 3; i++ {
		m, err := p.metrics()
		if err != nil {
			t.Fatalf("scraping the caddy process: %v", err)
		}
		g := metricValue(m, "go_goroutines")
		if g == last {
			stable++
		} else {
			last, stable = g, 0
		}
		time.Sleep(100 * time.Millisecond)
	}
	rss, err := p.rss()
	if err != nil {
		t.Fatal(err)
	}
	return last, rss
}

// TestLoadGradualConnections opens 10, 50, 100, 500 and 1,000 MCP clients,
// step by step, each with a session and a live GET SSE stream (keepalive
// comments every 2s) held on its one connection, through a Caddy process,
// and measures that process after each step: the RSS and goroutines it
// gained since before the first step, per connection, must stay under
// 1 MiB and 5.
func TestLoadGradualConnections(t *testing.T) {
	scale := loadScale(t, 1)
	raiseNoFile(t)
	var steps []int
	for _, n := range []int{10, 50, 100, 500, 1000} {
		if n = loadScaled(n, scale, 10); len(steps) == 0 || n > steps[len(steps)-1] {
			steps = append(steps, n)
		}
	}
	up := startFake(t, &fakeUpstream{name: "load", stream: eventThenIdle("", "hello")})
	port, aport := freePort(t), freePort(t)
	p := startBuiltCaddy(t, fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n\tmcp {\n%s\t}\n}\n:%d {\n\tmcp_proxy %s {\n\t\tkeepalive 2s\n\t}\n}\n",
		aport, loadSchedOff, port, up.addr()), port, aport)
	url := proxyURL(port) + "/mcp"
	// One transport for every client: a client's initialize and its GET
	// take the same pooled connection, so each client holds one.
	tr := &http.Transport{MaxIdleConnsPerHost: 4096, IdleConnTimeout: time.Minute, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	type client struct {
		cancel context.CancelFunc
		done   chan struct{}
	}
	var mu sync.Mutex
	var clients []*client
	defer func() {
		for _, c := range clients {
			c.cancel()
		}
	}()
	open := func(i int) error {
		tok, r := initSession(ctx, hc, url, loadVersion)
		if tok == "" {
			return fmt.Errorf("client %d: initialize: %v", i, r)
		}
		cctx, ccancel := context.WithCancel(ctx)
		resp, err := openStream(cctx, hc, url, tok, loadVersion, strconv.Itoa(i))
		if err != nil {
			ccancel()
			return err
		}
		c := &client{cancel: ccancel, done: make(chan struct{})}
		mu.Lock()
		clients = append(clients, c)
		mu.Unlock()
		first := make(chan error, 1)
		go func() {
			defer close(c.done)
			defer resp.Body.Close()
			first <- firstEvent(resp.Body)
			_, _ = io.Copy(io.Discard, resp.Body) // keepalives, until closed
		}()
		select {
		case err := <-first:
			return err
		case <-time.After(10 * time.Second):
			return fmt.Errorf("client %d: no first event within 10s", i)
		}
	}

	// Warm up (first connections, pools, lazily built state), then close.
	if err := open(-1); err != nil {
		t.Fatal(err)
	}
	clients[0].cancel()
	<-clients[0].done
	clients = clients[:0]
	tr.CloseIdleConnections()
	if !waitUntil(10*time.Second, 50*time.Millisecond, func() bool { return up.busy.Load() == 0 }) {
		t.Fatal("the warm-up stream stayed open upstream")
	}
	g0, rss0 := p.settle(t)
	t.Logf("baseline: %.0f goroutines, RSS %.1f MiB", g0, float64(rss0)/(1<<20))

	for _, n := range steps {
		from := len(clients)
		var failed atomic.Value
		parallel(n-from, 16, func(i int) {
			if err := open(from + i); err != nil {
				failed.CompareAndSwap(nil, err)
			}
		})
		if err, _ := failed.Load().(error); err != nil {
			t.Fatalf("step %d: %v", n, err)
		}
		tr.CloseIdleConnections() // none should be idle: each holds a stream
		if !waitUntil(10*time.Second, 50*time.Millisecond, func() bool {
			m, err := p.metrics()
			return err == nil && int(metricValue(m, "caddy_mcp_streams_active")) == n && int(up.busy.Load()) == n
		}) {
			m, _ := p.metrics()
			t.Fatalf("step %d: %v streams active in the proxy, %d upstream", n, metricValue(m, "caddy_mcp_streams_active"), up.busy.Load())
		}
		g, rss := p.settle(t)
		perG := (g - g0) / float64(n)
		perMem := float64(rss-rss0) / float64(n)
		t.Logf("%5d connections: %6.0f goroutines (%+.2f per connection), RSS %7.1f MiB (%+.1f KiB per connection)",
			n, g, perG, float64(rss)/(1<<20), perMem/1024)
		if perG >= 5 {
			t.Errorf("%d connections: %.2f goroutines per connection, want < 5", n, perG)
		}
		if perMem >= 1<<20 {
			t.Errorf("%d connections: %.0f KiB per connection, want < 1 MiB", n, perMem/1024)
		}
	}

	for _, c := range clients {
		c.cancel()
	}
	for _, c := range clients {
		<-c.done
	}
	tr.CloseIdleConnections()
	if !waitUntil(10*time.Second, 50*time.Millisecond, func() bool {
		m, err := p.metrics()
		return err == nil && metricValue(m, "caddy_mcp_streams_active") == 0 && up.busy.Load() == 0
	}) {
		t.Errorf("streams still open 10s after every client closed (upstream %d)", up.busy.Load())
	}
	g, rss := p.settle(t)
	t.Logf("after closing: %.0f goroutines, RSS %.1f MiB", g, float64(rss)/(1<<20))
}

// TestLoadBurst runs 10 clients in a closed loop, then 1,000 at once for
// 3s, against an upstream that serves 16 tool calls at a time, 20ms each
// (800 calls/s). Every request must get an answer or a refusal, and fewer
// than 10% of the burst may be refused.
//
// The proxy admits what the upstream can do (max_inflight 16) and queues
// the rest: `queue 1000 5s` holds one request of every client of the burst
// (a closed-loop client has at most one outstanding), so a burst is
// absorbed instead of refused. Waiters are served newest first, so under a
// standing queue the oldest wait longest: the whole burst plus draining
// the queue (about 1,000 / 800 per second), about 4.5s here, within the 5s
// deadline. A longer burst would turn the oldest waiters into timeouts,
// which is the point of the deadline: a client that waited 5s has given
// up.
//
// Caddy runs as its own process, and with the scheduler-latency monitor
// out of the way (loadSchedOff): in this process that monitor measures
// the 1,000 client goroutines of the test itself, reads 1.0 at the jump,
// and the protective level then refuses every call of the burst.
func TestLoadBurst(t *testing.T) {
	scale := loadScale(t, 1)
	raiseNoFile(t)
	const (
		capacity = 16
		work     = 20 * time.Millisecond
		warm     = 10
		warmFor  = time.Second
		burstFor = 3 * time.Second
	)
	clients := loadScaled(1000, scale, 50)
	var running, peak atomic.Int64
	up := startFake(t, &fakeUpstream{name: "load", on: map[string]func(*fakeCall){"tools/call": func(c *fakeCall) {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(work)
		running.Add(-1)
		c.text("ok")
	}}})
	port, aport := freePort(t), freePort(t)
	p := startBuiltCaddy(t, fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n\tmcp {\n%s\t}\n}\n:%d {\n\tmcp_proxy %s {\n\t\tmax_inflight %d\n\t\tqueue 1000 5s\n\t}\n}\n",
		aport, loadSchedOff, port, up.addr(), capacity), port, aport)
	url := proxyURL(port) + "/mcp"
	tr := &http.Transport{MaxIdleConnsPerHost: clients + 64, IdleConnTimeout: time.Minute, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	toks := openSessions(t, ctx, hc, url, clients, 32)
	m0, err := p.metrics()
	if err != nil {
		t.Fatal(err)
	}

	type phase struct {
		sent, ok, refused, failed atomic.Int64
		mu                        sync.Mutex
		lat                       []time.Duration
		reasons                   map[string]int
		firstErr                  atomic.Value
	}
	phases := [2]*phase{{reasons: map[string]int{}}, {reasons: map[string]int{}}}
	start := time.Now()
	jump := start.Add(warmFor)
	end := jump.Add(burstFor)
	var maxLevel atomic.Int64
	stopSampling := sampleEvery(50*time.Millisecond, func() {
		if m, err := p.metrics(); err == nil {
			if l := int64(metricValue(m, "caddy_mcp_service_level")); l > maxLevel.Load() {
				maxLevel.Store(l)
			}
		}
	})
	loop := func(i int) {
		for n := 0; ; n++ {
			now := time.Now()
			if !now.Before(end) {
				return
			}
			ph := phases[0]
			if !now.Before(jump) {
				ph = phases[1]
			}
			ph.sent.Add(1)
			rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
			r := post(rctx, hc, url, callBody(strconv.Itoa(n+2), "work", "{}"), sessionHeaders(toks[i], loadVersion))
			rcancel()
			d := time.Since(now)
			switch {
			case r.ok():
				ph.ok.Add(1)
				ph.mu.Lock()
				ph.lat = append(ph.lat, d)
				ph.mu.Unlock()
			case r.refused():
				ph.refused.Add(1)
				var e struct {
					Error struct{ Message string }
				}
				_ = json.Unmarshal([]byte(r.body), &e)
				ph.mu.Lock()
				ph.reasons[fmt.Sprintf("%d %s", r.status, e.Error.Message)]++
				ph.mu.Unlock()
			default:
				ph.failed.Add(1)
				ph.firstErr.CompareAndSwap(nil, fmt.Sprintf("client %d: %v after %v", i, r, d.Round(time.Millisecond)))
			}
		}
	}
	var wg sync.WaitGroup
	for i := range warm {
		wg.Go(func() { loop(i) })
	}
	time.Sleep(time.Until(jump))
	for i := warm; i < clients; i++ {
		wg.Go(func() { loop(i) })
	}
	wg.Wait()
	took := time.Since(jump)
	stopSampling()
	m1, err := p.metrics()
	if err != nil {
		t.Fatal(err)
	}

	for k, name := range []string{"warm-up", "burst"} {
		ph, n := phases[k], warm
		if k == 1 {
			n = clients
		}
		slices.Sort(ph.lat)
		q := func(f float64) time.Duration {
			if len(ph.lat) == 0 {
				return 0
			}
			return ph.lat[min(len(ph.lat)-1, int(f*float64(len(ph.lat))))].Round(time.Millisecond)
		}
		t.Logf("%s (%d clients): %d sent, %d answered (p50 %v, p99 %v, max %v), %d refused %v, %d failed",
			name, n, ph.sent.Load(), ph.ok.Load(), q(0.5), q(0.99), q(1), ph.refused.Load(), ph.reasons, ph.failed.Load())
		if ph.failed.Load() != 0 || ph.sent.Load() != ph.ok.Load()+ph.refused.Load() {
			t.Errorf("%s: %d transport errors or lost requests (first: %v)", name, ph.sent.Load()-ph.ok.Load()-ph.refused.Load(), ph.firstErr.Load())
		}
	}
	b := phases[1]
	t.Logf("burst: %.0f calls/s answered over %v (upstream capacity %d/s); upstream peak concurrency %d; highest service level %d; proxy queue waits: %.0f",
		float64(b.ok.Load())/took.Seconds(), took.Round(time.Millisecond), int(capacity*time.Second/work), peak.Load(), maxLevel.Load(),
		metricValue(m1, "caddy_mcp_queue_wait_seconds")-metricValue(m0, "caddy_mcp_queue_wait_seconds"))
	if phases[0].refused.Load() != 0 {
		t.Errorf("%d of the warm-up calls refused", phases[0].refused.Load())
	}
	if share := float64(b.refused.Load()) / float64(max(b.sent.Load(), 1)); share >= 0.10 {
		t.Errorf("%.1f%% of the burst refused, want < 10%%", 100*share)
	}
	if peak.Load() > capacity {
		t.Errorf("upstream saw %d concurrent calls, max_inflight is %d", peak.Load(), capacity)
	}
}

// TestLoadMemoryBounds runs 500 SSE sessions through a Caddy process with
// `mcp { memory_limit 100MB session_memory 1MiB refresh 100ms }`, session
// caps set above the 500 sessions (the default would be the 95 that fit
// the limit at their full quota; here they overcommit it on purpose): half hold
// a GET stream (its queue fills), half a tool call answered with an SSE
// stream whose replay ring keeps up to 1 MiB (`replay 1000 1MiB 1m`), and
// once every stream is open the upstream sends each 1 MB of 1 KiB events:
// half at once, the rest at 400 KiB/s. One client in five reads
// everything, one reads 4 KiB every 20ms, the others stop reading after
// the first event (4 KiB receive buffers; the proxy's kernel send buffers
// are capped at 16 KiB with mcp_connections write_buffer, else loopback
// would park 4 MiB per connection in the kernel and no write would ever
// block). The held bytes, sampled from /metrics all along, must never
// exceed the limit, reservations must have been refused (backpressure),
// and the process must be alive and serving at the end, with every byte
// released once the sessions are deleted.
func TestLoadMemoryBounds(t *testing.T) {
	scale := loadScale(t, 1)
	raiseNoFile(t)
	const (
		perStream = 1_000_000
		evSize    = 1024
		// Half a megabyte at once (together 2.5 times the limit, faster
		// than the 100ms refresh can shed it), then 16 KiB every 40ms, so
		// the run lasts long enough for /metrics, slow on a saturated
		// process, to be sampled many times.
		burst = perStream / 2
		pace  = 40 * time.Millisecond
	)
	sessions := loadScaled(500, scale, 40)
	// The limit is not scaled: it is also what the heap monitor measures
	// the whole process against, and a few tens of MB is Caddy at rest.
	const limitMB = 100
	limit := float64(limitMB) * 1e6

	startBulk := make(chan struct{})
	// Every stream, a GET or the SSE answer to a tools/call, says hello,
	// then waits for the bulk.
	hello := func(s *fakeStream) error {
		if err := s.event("", logNote("hello")); err != nil {
			return err
		}
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case <-startBulk:
		}
		return loadBulk(s, perStream, burst, evSize, 16, pace)
	}
	up := startFake(t, &fakeUpstream{name: "load", stream: hello, on: map[string]func(*fakeCall){"tools/call": func(c *fakeCall) {
		if hello(c.sse()) == nil {
			c.text("done")
		}
	}}})
	port, aport := freePort(t), freePort(t)
	cf := fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n"+
		"\tservers {\n\t\tlistener_wrappers {\n\t\t\tmcp_connections {\n\t\t\t\twrite_buffer 16KiB\n\t\t\t}\n\t\t}\n\t}\n"+
		"\tmcp {\n\t\tmemory_limit %dMB\n\t\tsession_memory 1MiB\n\t\tmax_sessions 1000\n\t\tclient_max_sessions 0\n\t\trefresh 100ms\n"+loadSchedOff+"\t}\n}\n"+
		":%d {\n\tmcp_proxy %s {\n\t\tstream_buffer 2000 1MiB\n\t\treplay 1000 1MiB 1m\n\t}\n}\n", aport, limitMB, port, up.addr())
	p := startBuiltCaddy(t, cf, port, aport)
	base := proxyURL(port)
	url := base + "/mcp"
	m0, err := p.metrics()
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	toks := openSessions(t, ctx, hc, url, sessions, 16)
	var setupErr atomic.Value

	fast := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DisableCompression: true}}
	slow := tinyRecvBufClient()
	const (
		kindFast = iota
		kindPaced
		kindStalled
	)
	kindOf := func(i int) int { return min(i%5, kindStalled) }
	bodies := make([]io.ReadCloser, sessions)
	var readers sync.WaitGroup
	var stop atomic.Bool
	parallel(sessions, 16, func(i int) {
		hc := slow
		if kindOf(i) == kindFast {
			hc = fast
		}
		var resp *http.Response
		var err error
		if i%2 == 0 {
			resp, err = openStream(ctx, hc, url, toks[i], loadVersion, strconv.Itoa(i))
		} else {
			resp, err = openPost(ctx, hc, url, callBody("2", "bulk", "{}"), sessionHeaders(toks[i], loadVersion))
			resp, err = sseOnly(fmt.Sprintf("tools/call %d", i), resp, err)
		}
		if err == nil {
			err = firstEvent(resp.Body)
		}
		if err != nil {
			setupErr.CompareAndSwap(nil, fmt.Errorf("stream %d: %v", i, err))
			return
		}
		bodies[i] = resp.Body
		switch kindOf(i) {
		case kindFast:
			readers.Go(func() { _, _ = io.Copy(io.Discard, resp.Body) })
		case kindPaced:
			readers.Go(func() {
				buf := make([]byte, 4096)
				for !stop.Load() {
					if _, err := resp.Body.Read(buf); err != nil {
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
		}
	})
	defer func() {
		for _, b := range bodies {
			if b != nil {
				b.Close()
			}
		}
	}()
	if err, _ := setupErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	if n := up.busy.Load(); int(n) != sessions {
		t.Fatalf("%d streams open upstream, want %d", n, sessions)
	}

	// Sample the held bytes until every upstream stream has ended. A
	// scrape of a saturated process takes hundreds of milliseconds, so
	// four samplers scrape side by side.
	var (
		smu               sync.Mutex
		maxHeld, maxLevel float64
		samples           int
		samplers          []func()
	)
	for k := range 4 {
		if k > 0 {
			time.Sleep(5 * time.Millisecond)
		}
		samplers = append(samplers, sampleEvery(20*time.Millisecond, func() {
			if m, err := p.metrics(); err == nil {
				smu.Lock()
				samples++
				maxHeld = max(maxHeld, metricValue(m, "caddy_mcp_held_bytes"))
				maxLevel = max(maxLevel, metricValue(m, "caddy_mcp_service_level"))
				smu.Unlock()
			}
		}))
	}
	began := time.Now()
	close(startBulk)
	ended := waitUntil(90*time.Second, 50*time.Millisecond, func() bool { return up.busy.Load() == 0 || p.dead() })
	took := time.Since(began)
	for _, stop := range samplers {
		stop()
	}
	if p.dead() {
		t.Fatal("the caddy process exited during the run")
	}
	if !ended {
		t.Fatalf("%d upstream streams still running %v after the bulk began", up.busy.Load(), took.Round(time.Millisecond))
	}
	m1, err := p.metrics()
	if err != nil {
		t.Fatal(err)
	}
	delta := func(name string) float64 { return metricValue(m1, name) - metricValue(m0, name) }
	t.Logf("%d sessions (%d MB sent by the upstream) over %v: held bytes peaked at %.1f MB of the %.0f MB limit (%d samples); "+
		"%.0f refused reservations, %.0f slow consumers cut, %.0f protective resets, %.0f MB relayed; highest level %v",
		sessions, sessions*perStream/1e6, took.Round(time.Millisecond), maxHeld/1e6, limit/1e6, samples,
		delta("caddy_mcp_backpressure_total"), delta("caddy_mcp_slow_consumer_disconnects_total"),
		delta("caddy_mcp_protective_resets_total"), delta("caddy_mcp_relayed_bytes_total")/1e6, maxLevel)
	if maxHeld > limit {
		t.Errorf("held bytes reached %.0f, over the %.0f limit", maxHeld, limit)
	}
	if samples == 0 {
		// A scrape of a saturated process can take most of a second, but
		// a run without a single sample checked nothing.
		t.Error("the held bytes were never sampled during the run")
	}
	// Refused reservations are not required: the relay writes events
	// through and stops reading an upstream whose client is behind, so
	// the flood is held back by flow control rather than queued, and the
	// replay rings take what the budget leaves.

	// Clients leave and end their sessions: every byte comes back.
	stop.Store(true)
	for i, b := range bodies {
		if b != nil {
			b.Close()
			bodies[i] = nil
		}
	}
	readers.Wait()
	var delErr atomic.Value
	parallel(sessions, 16, func(i int) {
		if r := deleteSession(ctx, hc, url, toks[i], loadVersion); r.err != nil || r.status != http.StatusOK {
			delErr.CompareAndSwap(nil, fmt.Errorf("DELETE %d: %v", i, r))
		}
	})
	if err, _ := delErr.Load().(error); err != nil {
		t.Error(err)
	}
	var held, streams float64
	if !waitUntil(15*time.Second, 50*time.Millisecond, func() bool {
		m, err := p.metrics()
		if err != nil {
			return false
		}
		held, streams = metricValue(m, "caddy_mcp_held_bytes"), metricValue(m, "caddy_mcp_streams_active")
		return held == 0 && streams == 0
	}) {
		t.Errorf("held bytes %.0f and %.0f streams active 15s after every session was deleted", held, streams)
	}
	// Alive and serving: a new session is answered, or refused by the
	// service level while the process's heap is still over its thresholds.
	r := post(ctx, hc, url, initAt(1, loadVersion), nil)
	m2, err := p.metrics()
	if p.dead() || err != nil || !(r.ok() || r.refused()) {
		t.Fatalf("the caddy process is not serving at the end: dead %v, metrics %v, initialize %v", p.dead(), err, r)
	}
	rss, _ := p.rss()
	t.Logf("at the end: initialize %d, level %.0f, RSS %.1f MiB", r.status, metricValue(m2, "caddy_mcp_service_level"), float64(rss)/(1<<20))
}

// levelChange is one service level change from the process's log.
type levelChange struct {
	at       float64
	from, to string
	pressure float64
}

// levelChanges parses the "service level raised/lowered" lines of a
// Caddy JSON log.
func levelChanges(logs string) []levelChange {
	var out []levelChange
	for line := range strings.SplitSeq(logs, "\n") {
		if !strings.Contains(line, "service level ") {
			continue
		}
		var e struct {
			TS       float64 `json:"ts"`
			Msg      string  `json:"msg"`
			From     string  `json:"from"`
			To       string  `json:"to"`
			Pressure float64 `json:"pressure"`
		}
		if json.Unmarshal([]byte(line), &e) == nil && strings.HasPrefix(e.Msg, "service level") {
			out = append(out, levelChange{e.TS, e.From, e.To, e.Pressure})
		}
	}
	return out
}

// TestLoadMemoryRamp is a soak (about a minute; MCPGATE_SOAK=1 runs it):
// a Caddy process with GOMEMLIMIT=512MiB and `mcp { refresh 100ms
// max_sessions 0 client_max_sessions 0 }` gets new sessions at a steady pace, each with a tool call whose SSE
// answer leaves about 800 KiB in its replay ring, until twice as many
// sessions as the memory limit holds have been tried. The RSS must never
// exceed the limit by more than 10%, the essential level must come before
// the protective one, and once the clients have gone (streams closed,
// sessions deleted) the level must be back to full within 30s.
func TestLoadMemoryRamp(t *testing.T) {
	if testing.Short() || os.Getenv("MCPGATE_SOAK") != "1" {
		t.Skip("a soak of about a minute; MCPGATE_SOAK=1 runs it")
	}
	raiseNoFile(t)
	const (
		memLimit = 512 << 20
		events   = 100
		evSize   = 8 << 10
		pace     = 15 * time.Millisecond
	)
	perSession := events * evSize
	attempts := 2 * memLimit / perSession

	chunk := loadEvents(events, evSize)
	up := startFake(t, &fakeUpstream{name: "load", stream: eventThenIdle("", "hello"), on: map[string]func(*fakeCall){"tools/call": func(c *fakeCall) {
		if s := c.sse(); s.write(chunk) == nil {
			_ = s.idle(nil) // the call runs until the proxy or client ends it
		}
	}}})
	port, aport := freePort(t), freePort(t)
	// No session caps: the memory is what this ramp runs into, not the
	// session table (whose default follows the memory limit), and every
	// session comes from one client address.
	p := startBuiltCaddy(t, fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n\tmcp {\n\t\trefresh 100ms\n\t\tmax_sessions 0\n\t\tclient_max_sessions 0\n%s\t}\n}\n:%d {\n\tmcp_proxy %s\n}\n",
		aport, loadSchedOff, port, up.addr()), port, aport, "GOMEMLIMIT=512MiB")
	base := proxyURL(port)
	url := base + "/mcp"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	type sample struct {
		at          time.Duration
		rss         int64
		level, held float64
	}
	var (
		smu     sync.Mutex
		samples []sample
	)
	start := time.Now()
	stopSampling := sampleEvery(100*time.Millisecond, func() {
		rss, _ := p.rss()
		s := sample{at: time.Since(start), rss: rss, level: -1}
		if m, err := p.metrics(); err == nil {
			s.level, s.held = metricValue(m, "caddy_mcp_service_level"), metricValue(m, "caddy_mcp_held_bytes")
		}
		smu.Lock()
		samples = append(samples, s)
		smu.Unlock()
	})
	lastLevel := func() float64 {
		smu.Lock()
		defer smu.Unlock()
		if len(samples) == 0 {
			return -1
		}
		return samples[len(samples)-1].level
	}

	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	streamer := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DisableCompression: true}}
	var (
		mu                        sync.Mutex
		toks                      []string
		cancels                   []context.CancelFunc
		opened, refused, cutShort atomic.Int64
		failed                    atomic.Value
		readers                   sync.WaitGroup
	)
	tick := time.NewTicker(pace)
	parallel(attempts, 8, func(i int) {
		<-tick.C
		tok, r := initSession(ctx, hc, url, loadVersion)
		if tok == "" {
			if r.refused() {
				refused.Add(1)
			} else {
				failed.CompareAndSwap(nil, fmt.Errorf("initialize %d: %v", i, r))
			}
			return
		}
		mu.Lock()
		toks = append(toks, tok)
		mu.Unlock()
		sctx, scancel := context.WithCancel(ctx)
		resp, err := openPost(sctx, streamer, url, callBody("2", "fill", "{}"), sessionHeaders(tok, loadVersion))
		if err != nil {
			scancel()
			failed.CompareAndSwap(nil, fmt.Errorf("tools/call %d: %v", i, err))
			return
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			scancel()
			if resp.StatusCode == http.StatusServiceUnavailable {
				refused.Add(1)
			} else {
				failed.CompareAndSwap(nil, fmt.Errorf("tools/call %d: %d %s", i, resp.StatusCode, b))
			}
			return
		}
		mu.Lock()
		cancels = append(cancels, scancel)
		mu.Unlock()
		got := make(chan int, 1)
		readers.Go(func() {
			defer resp.Body.Close()
			n := 0
			err := readEvents(resp.Body, func(ev sseEvent) error {
				if !ev.comment && ev.retry < 0 {
					if n++; n == events {
						got <- n
					}
				}
				return nil
			})
			if n < events {
				got <- n
			}
			_ = err
		})
		select {
		case n := <-got:
			if n < events {
				cutShort.Add(1) // the proxy closed the stream early (shed load)
			}
			opened.Add(1)
		case <-time.After(30 * time.Second):
			failed.CompareAndSwap(nil, fmt.Errorf("tools/call %d: not every event within 30s", i))
		}
	})
	tick.Stop()
	rampEnd := time.Since(start)
	time.Sleep(2 * time.Second) // hold the load a moment

	// The load stops: every client closes its stream and deletes its
	// session, as a client that shuts down does.
	stopAt := time.Since(start)
	mu.Lock()
	for _, c := range cancels {
		c()
	}
	allToks := slices.Clone(toks)
	mu.Unlock()
	readers.Wait()
	parallel(len(allToks), 16, func(i int) { _ = deleteSession(ctx, hc, url, allToks[i], loadVersion) })
	tr.CloseIdleConnections()
	recovered := waitUntil(30*time.Second, 100*time.Millisecond, func() bool { return lastLevel() == 0 })
	recoveredAt := time.Since(start)
	time.Sleep(300 * time.Millisecond)
	stopSampling()
	if err, _ := failed.Load().(error); err != nil {
		t.Error(err)
	}
	mEnd, err := p.metrics()
	if err != nil {
		t.Fatalf("the caddy process does not answer at the end: %v", err)
	}
	// What the heap monitor reads: the memory the Go runtime holds
	// (mapped minus returned to the OS), against the limit.
	heapPressure := (metricValue(mEnd, "go_memstats_sys_bytes") - metricValue(mEnd, "go_memstats_heap_released_bytes")) / memLimit
	endState := fmt.Sprintf("held %.0f bytes, %.0f sessions, heap monitor about %.2f (heap in use %.0f MiB), RSS %.0f MiB",
		metricValue(mEnd, "caddy_mcp_held_bytes"), metricValue(mEnd, "caddy_mcp_sessions_active"), heapPressure,
		metricValue(mEnd, "go_memstats_heap_inuse_bytes")/(1<<20), float64(samples[len(samples)-1].rss)/(1<<20))

	var maxRSS int64
	var timeline []string
	prev := -2.0
	for _, s := range samples {
		maxRSS = max(maxRSS, s.rss)
		if s.level != prev {
			timeline = append(timeline, fmt.Sprintf("%v:%v (held %.0f MiB, RSS %.0f MiB)", s.at.Round(100*time.Millisecond), s.level, s.held/(1<<20), float64(s.rss)/(1<<20)))
			prev = s.level
		}
	}
	changes := levelChanges(p.logs.String())
	var seq []string
	for _, c := range changes {
		seq = append(seq, fmt.Sprintf("%s→%s@%.2f", c.from, c.to, c.pressure))
	}
	t.Logf("%d sessions tried over %v: %d opened (%d cut short), %d refused; load stopped at %v",
		attempts, rampEnd.Round(time.Millisecond), opened.Load(), cutShort.Load(), refused.Load(), stopAt.Round(time.Millisecond))
	t.Logf("RSS peaked at %.1f MiB (GOMEMLIMIT 512 MiB, bound %.1f MiB)", float64(maxRSS)/(1<<20), 1.1*512)
	t.Logf("level samples: %s", strings.Join(timeline, ", "))
	t.Logf("level changes logged: %s", strings.Join(seq, " "))
	if float64(maxRSS) > 1.1*memLimit {
		t.Errorf("RSS reached %.1f MiB, over GOMEMLIMIT by more than 10%%", float64(maxRSS)/(1<<20))
	}
	essential, protective := -1, -1
	for i, c := range changes {
		if c.to == "essential" && essential < 0 {
			essential = i
		}
		if c.to == "protective" && protective < 0 {
			protective = i
		}
	}
	switch {
	case essential < 0:
		t.Errorf("the essential level was never entered (changes: %v)", seq)
	case protective >= 0 && protective < essential:
		t.Errorf("protective entered before essential (changes: %v)", seq)
	}
	if recovered {
		t.Logf("back to full %v after the load stopped; %s", (recoveredAt - stopAt).Round(100*time.Millisecond), endState)
		return
	}
	t.Errorf("level %v 30s after the load stopped, want full (0); %s", lastLevel(), endState)
}

// TestLoadSessionLeak creates 10,000 sessions through mcp_proxy and
// abandons them (no DELETE), with `mcp { session_idle_timeout 4s refresh
// 50ms }`, reloading the config halfway while a session created before
// the reload keeps being used. Every session must expire, the upstream
// must get a DELETE for each, and the proxy's sessions, held bytes and
// goroutines must come back to where they were.
func TestLoadSessionLeak(t *testing.T) {
	scale := loadScale(t, 0.2)
	raiseNoFile(t)
	total := loadScaled(10000, scale, 200)
	up := startFake(t, &fakeUpstream{name: "load", stream: eventThenIdle("", "hello")})
	port := freePort(t)
	// The idle timeout is longer than a config reload takes on a loaded
	// machine (seconds under -race), so the session pinged across the
	// reload cannot idle out while the reload holds its pings.
	global := "\tmcp {\n\t\tsession_idle_timeout 4s\n\t\trefresh 50ms\n" + loadSchedOff + "\t}\n"
	site := fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, up.addr())
	loadCaddyfileWith(t, global, site)
	url := proxyURL(port) + "/mcp"
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// A client whose request is refused by the service level (503 with
	// Retry-After) tries again a moment later; a refusal is not a failure
	// of what this test checks, and it is counted.
	var failed, levelRefusals atomic.Int64
	var firstErr atomic.Value
	create := func(n int) {
		parallel(n, 32, func(int) {
			for try := 0; ; try++ {
				tok, r := initSession(ctx, hc, url, loadVersion)
				switch {
				case tok != "":
					return
				case r.refused() && try < 100:
					levelRefusals.Add(1)
					time.Sleep(20 * time.Millisecond)
					continue
				}
				failed.Add(1)
				firstErr.CompareAndSwap(nil, r.String())
				return
			}
		})
	}
	drained := func(d time.Duration) bool {
		return waitUntil(d, 50*time.Millisecond, func() bool {
			return liveMetric(t, "caddy_mcp_sessions_active") == 0 && liveMetric(t, "caddy_mcp_held_bytes") == 0 &&
				liveMetric(t, "caddy_mcp_goroutines_owned") == 0 && up.live() == 0
		})
	}
	// Goroutines are counted with every connection to the upstream closed
	// (up.CloseClientConnections), so the idle pools of the proxy's
	// transports, which a reload leaves open until their idle timeout as
	// plain reverse_proxy does, do not count; anything else left running
	// by a session does. The baseline comes after a warm-up.
	settled := func() int {
		tr.CloseIdleConnections()
		up.CloseClientConnections()
		runtime.GC()
		return settledGoroutines()
	}
	create(64)
	if !drained(15 * time.Second) {
		t.Fatalf("the warm-up sessions did not expire: %v active, %d upstream", liveMetric(t, "caddy_mcp_sessions_active"), up.live())
	}
	baseline := settled()
	created0, deletes0 := up.created.Load(), up.deletedKnown.Load()
	began := time.Now()

	create(total / 2)
	// A session created before the reload is used on both sides of it,
	// every 100ms so that it never idles out.
	keep, r := initSession(ctx, hc, url, loadVersion)
	if keep == "" {
		t.Fatalf("initialize: %v", r)
	}
	var before, after, pingRefused, pingFailed, hiccups atomic.Int64
	var pingErr atomic.Value
	reloaded := make(chan struct{})
	pinged := make(chan struct{})
	go func() {
		defer close(pinged)
		for i := 0; after.Load() < 3 && i < 300; i++ {
			done := false
			select {
			case <-reloaded:
				done = true
			default:
			}
			// Right after a reload a new connection can meet the old
			// listener as it closes (see do in harness_test.go): a dial
			// reset or an EOF before any answer is tried again.
			r := post(ctx, rawClient, url, rpcRequest(100+i, "ping"), sessionHeaders(keep, loadVersion))
			for try := 0; try < 5 && r.err != nil && (isDialReset(r.err) || errors.Is(r.err, io.EOF)); try++ {
				hiccups.Add(1)
				time.Sleep(50 * time.Millisecond)
				r = post(ctx, rawClient, url, rpcRequest(100+i, "ping"), sessionHeaders(keep, loadVersion))
			}
			switch {
			case r.ok() && done:
				after.Add(1)
			case r.ok():
				before.Add(1)
			case r.refused():
				pingRefused.Add(1)
			default:
				pingFailed.Add(1)
				pingErr.CompareAndSwap(nil, r.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	if !waitUntil(10*time.Second, 10*time.Millisecond, func() bool { return before.Load() >= 2 }) {
		t.Fatalf("the session to keep does not answer pings (%d refused, first failure %v)", pingRefused.Load(), pingErr.Load())
	}
	tr.CloseIdleConnections()
	reloadAt := time.Now()
	loadCaddyfileWith(t, global, site)
	reloadTook := time.Since(reloadAt)
	close(reloaded)
	<-pinged
	if pingFailed.Load() != 0 || after.Load() < 3 {
		t.Errorf("a session created before the reload: %d pings answered before it, %d after, %d refused, %d failed (first: %v)",
			before.Load(), after.Load(), pingRefused.Load(), pingFailed.Load(), pingErr.Load())
	}
	create(total - total/2)
	createdIn := time.Since(began)
	tr.CloseIdleConnections()
	if failed.Load() != 0 {
		t.Errorf("%d of %d initializes failed (first: %v)", failed.Load(), total, firstErr.Load())
	}

	if !drained(30 * time.Second) {
		t.Errorf("30s after the last session was created: %v sessions active, %v held bytes, %v owned goroutines, %d upstream sessions not deleted",
			liveMetric(t, "caddy_mcp_sessions_active"), liveMetric(t, "caddy_mcp_held_bytes"), liveMetric(t, "caddy_mcp_goroutines_owned"), up.live())
	}
	drainedIn := time.Since(began) - createdIn
	created, deleted := up.created.Load()-created0, up.deletedKnown.Load()-deletes0
	if deleted != created {
		t.Errorf("the upstream got a DELETE for %d of its %d sessions", deleted, created)
	}
	now := settled()
	conns := map[string]bool{}
	for _, s := range up.since(0) {
		if s.method == http.MethodDelete {
			conns[s.remote] = true
		}
	}
	t.Logf("%d sessions created in %v (%d refused by the service level and retried; reload took %v; pings on a session across it: %d before, %d after, %d refused, %d connections reset by the reload and retried), "+
		"all expired %v later; the upstream got DELETEs for %d of %d sessions, over %d connections; goroutines %d before, %d after; evictions %v",
		created, createdIn.Round(time.Millisecond), levelRefusals.Load(), reloadTook.Round(time.Millisecond), before.Load(), after.Load(), pingRefused.Load(), hiccups.Load(),
		drainedIn.Round(time.Millisecond), deleted, created, len(conns), baseline, now, liveMetric(t, "caddy_mcp_session_evictions_total"))
	if now > baseline+10 {
		t.Errorf("%d goroutines after every session expired, baseline %d (+10 allowed)\n%s", now, baseline, goroutineDump())
	}
}
