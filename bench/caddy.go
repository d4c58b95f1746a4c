//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// moduleRoot finds the directory holding go.mod, from the working
// directory upwards.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 64 {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", errors.New("go.mod not found above the working directory; run from the repository")
}

// buildCaddy builds ./cmd/caddy into dir and returns the binary's path.
func buildCaddy(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "caddy")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/caddy")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building caddy: %w\n%s", err, out)
	}
	return bin, nil
}

// caddyfileParams is what the generated Caddyfile needs.
type caddyfileParams struct {
	Upstream   string // host:port of the mock
	PlainPort  int
	MCPPort    int
	AdminAddr  string // "" for admin off
	PlainBlock string // inserted inside reverse_proxy { }
	MCPBlock   string // inserted inside mcp_proxy { }
	Global     string // global options, inserted inside the global block

	// The mcp_auth site: mcp_auth in front of mcp_proxy, on AuthPort (0:
	// no such site). Its mcp_proxy gets MCPBlock and then PolicyBlock.
	AuthPort    int
	AuthKeyFile string // the PEM public key mcp_auth verifies tokens with
	AuthBlock   string // inserted inside mcp_auth { } after the issuer, resource and key
	PolicyBlock string // inserted inside this site's mcp_proxy { } after MCPBlock
}

// authResource is the resource URI of the mcp_auth site on port: the
// audience of its tokens.
func authResource(port int) string {
	return fmt.Sprintf("http://127.0.0.1:%d/mcp", port)
}

// caddyfile renders the Caddyfile: one process, two sites (three with
// mcp_auth). A site whose port is 0 is left out (the idle scenario runs
// one target per process).
func caddyfile(p caddyfileParams) string {
	var b strings.Builder
	admin := "admin off"
	if p.AdminAddr != "" {
		admin = "admin " + p.AdminAddr
	}
	fmt.Fprintf(&b, "{\n\t%s\n\tauto_https off\n\tpersist_config off\n\tlog {\n\t\toutput discard\n\t}\n", admin)
	for _, line := range splitBlock(p.Global) {
		fmt.Fprintf(&b, "\t%s\n", line)
	}
	b.WriteString("}\n")
	// handler writes "\t<directive> <args>", with a block of lines if
	// there are any.
	handler := func(directive, args string, lines []string) {
		fmt.Fprintf(&b, "\t%s", directive)
		if args != "" {
			b.WriteString(" " + args)
		}
		if len(lines) > 0 {
			b.WriteString(" {\n")
			for _, line := range lines {
				fmt.Fprintf(&b, "\t\t%s\n", line)
			}
			b.WriteString("\t}")
		}
		b.WriteString("\n")
	}
	site := func(port int, directive, block string) {
		if port == 0 {
			return
		}
		fmt.Fprintf(&b, "\nhttp://127.0.0.1:%d {\n", port)
		handler(directive, p.Upstream, splitBlock(block))
		b.WriteString("}\n")
	}
	site(p.PlainPort, "reverse_proxy", p.PlainBlock)
	site(p.MCPPort, "mcp_proxy", p.MCPBlock)
	if p.AuthPort != 0 {
		fmt.Fprintf(&b, "\nhttp://127.0.0.1:%d {\n", p.AuthPort)
		handler("mcp_auth", "", append([]string{
			"issuer " + authIssuer,
			"resource " + authResource(p.AuthPort),
			fmt.Sprintf("key file %s kid %s alg RS256", p.AuthKeyFile, authKeyID),
		}, splitBlock(p.AuthBlock)...))
		handler("mcp_proxy", p.Upstream, append(splitBlock(p.MCPBlock), splitBlock(p.PolicyBlock)...))
		b.WriteString("}\n")
	}
	return b.String()
}

// splitBlock turns a flag value into indented Caddyfile lines. Newlines
// and ";" separate subdirectives, and braces open and close nested blocks
// on their own lines, so that from a shell
//
//	-mcp-block "max_inflight 16; transport http { keepalive 30s }"
//
// becomes valid Caddyfile. Quoted text ("..." or `...`) is kept as is.
func splitBlock(s string) []string {
	var out []string
	var cur strings.Builder
	depth := 0
	flush := func() {
		if l := strings.TrimSpace(cur.String()); l != "" {
			out = append(out, strings.Repeat("\t", max(depth, 0))+l)
		}
		cur.Reset()
	}
	var quote rune
	for _, r := range s {
		if quote != 0 {
			cur.WriteRune(r)
			if r == quote {
				quote = 0
			}
			continue
		}
		switch r {
		case '"', '`':
			quote = r
			cur.WriteRune(r)
		case ';', '\n':
			flush()
		case '{':
			cur.WriteRune(r)
			flush()
			depth++
		case '}':
			flush()
			depth--
			cur.WriteRune(r)
			flush()
		default:
			cur.WriteRune(r)
		}
	}
	flush()
	return out
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// soloCaddy is a Caddy process started for one site: its Caddyfile, the
// site's port and the admin address.
type soloCaddy struct {
	proc  *caddyProc
	cf    string
	port  int
	admin string
}

// startSoloCaddy picks a free port for a site and one for the admin
// endpoint, writes the Caddyfile site builds from them into dir, and
// starts bin on it.
func startSoloCaddy(ctx context.Context, bin, dir string, site func(port int, admin string) caddyfileParams) (*soloCaddy, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	ap, err := freePort()
	if err != nil {
		return nil, err
	}
	admin := fmt.Sprintf("127.0.0.1:%d", ap)
	cf := caddyfile(site(port, admin))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cf), 0o644); err != nil {
		return nil, err
	}
	cp, err := startCaddy(ctx, bin, path, dir, []int{port})
	if err != nil {
		return nil, err
	}
	return &soloCaddy{proc: cp, cf: cf, port: port, admin: admin}, nil
}

// siteOnly returns p serving only tgtName's site (plain or the mcp_proxy
// site) on port, with its admin endpoint at admin.
func siteOnly(p caddyfileParams, tgtName string, port int, admin string) caddyfileParams {
	p.PlainPort, p.MCPPort = 0, 0
	if tgtName == targetPlain {
		p.PlainPort = port
	} else {
		p.MCPPort = port
	}
	p.AdminAddr = admin
	return p
}

// caddyProc is a running Caddy process.
type caddyProc struct {
	cmd    *exec.Cmd
	stderr *tailBuffer
	done   chan struct{} // closed when the process has exited
	err    error         // Wait's result, valid after done
	once   sync.Once
}

// startCaddy runs `caddy run --config <file> --adapter caddyfile` and
// waits for every port in ports to accept connections.
func startCaddy(ctx context.Context, bin, config, workdir string, ports []int) (*caddyProc, error) {
	cmd := exec.Command(bin, "run", "--config", config, "--adapter", "caddyfile")
	cmd.Dir = workdir
	// Keep Caddy's data and config directories inside the temporary dir.
	cmd.Env = append(os.Environ(),
		"XDG_DATA_HOME="+filepath.Join(workdir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(workdir, "config"),
		"HOME="+workdir,
	)
	p := &caddyProc{cmd: cmd, stderr: &tailBuffer{max: 64 << 10}, done: make(chan struct{})}
	cmd.Stdout = p.stderr
	cmd.Stderr = p.stderr
	// Die with the harness even if it is killed without running defers.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting caddy: %w", err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for _, port := range ports {
		addr := "127.0.0.1:" + strconv.Itoa(port)
		for {
			c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-p.done:
				return nil, fmt.Errorf("caddy exited before listening (%v):\n%s", p.err, p.stderr.String())
			case <-ctx.Done():
				p.stop()
				return nil, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				p.stop()
				return nil, fmt.Errorf("caddy did not listen on %s within 30s:\n%s", addr, p.stderr.String())
			}
		}
	}
	return p, nil
}

// pid returns the process id.
func (p *caddyProc) pid() int { return p.cmd.Process.Pid }

// alive reports whether the process is still running.
func (p *caddyProc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop ends the process: SIGTERM, then SIGKILL after 3 s. Safe to call
// more than once.
func (p *caddyProc) stop() {
	p.once.Do(func() {
		if !p.alive() {
			return
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.Clone(t.buf))
}

// procSample is a process's CPU time and resident memory.
type procSample struct {
	CPU time.Duration // user + system
	RSS int64         // bytes
}

// clockTicks is USER_HZ, 100 on every Linux this runs on.
const clockTicks = 100

// readProc reads /proc/<pid>/stat and /proc/<pid>/status.
func readProc(pid int) (procSample, error) {
	var s procSample
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return s, errors.New("bad /proc stat")
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return s, errors.New("short /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	s.CPU = time.Duration(ut+st) * time.Second / clockTicks
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	s.RSS = statusKiB(string(status), "VmRSS:") << 10
	return s, nil
}

// statusKiB returns a "<key> <n> kB" value of a /proc status-like file.
func statusKiB(text, key string) int64 {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, _ := strconv.ParseInt(f[0], 10, 64)
				return v
			}
		}
	}
	return 0
}

// procMonitor samples a process while a measurement runs.
type procMonitor struct {
	pid     int
	start   procSample
	startT  time.Time
	peakRSS int64
	stopCh  chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
}

// procUsage is what a monitor saw: average CPU (1.0 = one core) and peak
// RSS.
type procUsage struct {
	CPU     float64
	PeakRSS int64
}

func monitorProc(pid int) *procMonitor {
	m := &procMonitor{pid: pid, stopCh: make(chan struct{}), startT: time.Now()}
	if pid <= 0 {
		return m
	}
	m.start, _ = readProc(pid)
	m.peakRSS = m.start.RSS
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-m.stopCh:
				return
			case <-t.C:
				if s, err := readProc(pid); err == nil {
					m.mu.Lock()
					m.peakRSS = max(m.peakRSS, s.RSS)
					m.mu.Unlock()
				}
			}
		}
	}()
	return m
}

func (m *procMonitor) stop() procUsage {
	if m.pid <= 0 {
		return procUsage{}
	}
	close(m.stopCh)
	m.wg.Wait()
	end, err := readProc(m.pid)
	el := time.Since(m.startT)
	u := procUsage{PeakRSS: max(m.peakRSS, end.RSS)}
	if err == nil && el > 0 {
		u.CPU = float64(end.CPU-m.start.CPU) / float64(el)
	}
	return u
}

// sysCPU is the machine's aggregate CPU time from /proc/stat, in ticks.
type sysCPU struct{ Busy, Total int64 }

// parseSysCPU reads the aggregate "cpu" line of /proc/stat text; busy is
// everything but idle and iowait.
func parseSysCPU(stat string) (sysCPU, error) {
	for _, line := range strings.Split(stat, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] != "cpu" {
			continue
		}
		var s sysCPU
		for i, v := range f[1:] {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return sysCPU{}, fmt.Errorf("bad /proc/stat field %q", v)
			}
			// guest and guest_nice (fields 9 and 10) are already in user.
			if i >= 8 {
				break
			}
			s.Total += n
			if i != 3 && i != 4 { // idle, iowait
				s.Busy += n
			}
		}
		return s, nil
	}
	return sysCPU{}, errors.New("no cpu line in /proc/stat")
}

func readSysCPU() sysCPU {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return sysCPU{}
	}
	s, _ := parseSysCPU(string(b))
	return s
}

// busyCores is how many cores were busy on average between two samples.
func busyCores(a, b sysCPU, ncpu int) float64 {
	if b.Total <= a.Total {
		return 0
	}
	return float64(b.Busy-a.Busy) / float64(b.Total-a.Total) * float64(ncpu)
}

// usageWindow watches Caddy, the harness and the whole machine over a
// measurement window.
type usageWindow struct {
	caddy, self *procMonitor
	sys0        sysCPU
}

// windowUsage is what a usageWindow saw. CPU figures are in cores (1.0 =
// one core busy).
type windowUsage struct {
	Caddy, Harness procUsage
	Machine        float64 // all processes, from /proc/stat
}

// Others is the CPU used by processes other than Caddy and the harness.
func (u windowUsage) Others() float64 {
	return max(0, u.Machine-u.Caddy.CPU-u.Harness.CPU)
}

func startWindow(caddyPID int) *usageWindow {
	return &usageWindow{caddy: monitorProc(caddyPID), self: monitorProc(os.Getpid()), sys0: readSysCPU()}
}

func (w *usageWindow) stop() windowUsage {
	if w == nil {
		return windowUsage{}
	}
	return windowUsage{
		Caddy:   w.caddy.stop(),
		Harness: w.self.stop(),
		Machine: busyCores(w.sys0, readSysCPU(), runtime.NumCPU()),
	}
}

// caddyIdleCPU is the most CPU (in cores) an idle Caddy may use while the
// quiet gate waits: its refresh loop and timers, not a backlog.
const caddyIdleCPU = 0.15

// harnessIdleCPU is the most CPU (in cores) the harness may use while the
// quiet gate waits: the mock's and the generator's housekeeping.
const harnessIdleCPU = 0.10

// quietGate waits before a measurement until processes outside the bench
// leave the machine mostly idle, so another workload on a shared machine
// does not land in one target's window only.
type quietGate struct {
	MaxOthers float64       // cores other processes may use; <= 0 disables the gate
	MaxWait   time.Duration // give up waiting after this long and measure anyway
}

// wait samples the machine in 500 ms windows until the busy cores not
// used by Caddy or the harness drop to MaxOthers or below. It returns the
// last sample's figure and whether the machine was quiet.
func (g quietGate) wait(ctx context.Context, caddyPID int, logf func(string, ...any)) (float64, bool) {
	if g.MaxOthers <= 0 {
		return 0, true
	}
	deadline := time.Now().Add(g.MaxWait)
	logged := false
	for {
		w := startWindow(caddyPID)
		if !pause(ctx, 500*time.Millisecond) {
			w.stop()
			return 0, false
		}
		u := w.stop()
		others := u.Others()
		// Caddy and the harness itself must be idle too: a previous
		// measurement's backlog (another target's overload drains through
		// the same Caddy, and its timed-out requests through the
		// generator and the mock) would otherwise fall on this one.
		if others <= g.MaxOthers && u.Caddy.CPU <= caddyIdleCPU && u.Harness.CPU <= harnessIdleCPU {
			return others, true
		}
		if time.Now().After(deadline) {
			logf("  machine still busy (other processes use %.2f cores, Caddy %.2f, the harness %.2f); measuring anyway", others, u.Caddy.CPU, u.Harness.CPU)
			return others, others <= g.MaxOthers
		}
		if !logged {
			logf("  waiting for a quiet machine (other processes use %.2f cores, Caddy %.2f, the harness %.2f) ...", others, u.Caddy.CPU, u.Harness.CPU)
			logged = true
		}
	}
}
