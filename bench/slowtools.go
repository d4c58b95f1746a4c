//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// The mock's slow tools, and the mock as a process of its own that the
// upstreamkill scenario can SIGKILL and start again on the same port.
//
// With slow tools on (upstream.slow > 0) two tool names answer late:
// slow_stream answers with text/event-stream, sends a
// notifications/progress event at once and its result after upstream.slow;
// slow_json sends nothing until its application/json result after
// upstream.slow. Both count themselves while they run, so that the harness
// knows when every call is in progress upstream.

// Tool names of the slow tools.
const (
	toolSlowStream = "slow_stream"
	toolSlowJSON   = "slow_json"
)

// knownVersions are the protocol versions the mock answers initialize
// with when a client asks for them.
var knownVersions = map[string]bool{"2025-03-26": true, "2025-06-18": true, "2025-11-25": true}

// negotiatedVersion is the protocolVersion the mock answers an initialize
// body with: the client's when the mock knows it, else 2025-06-18.
func negotiatedVersion(body []byte) string {
	var m struct {
		Params struct {
			ProtocolVersion string `json:"protocolVersion"`
		} `json:"params"`
	}
	if json.Unmarshal(body, &m) == nil && knownVersions[m.Params.ProtocolVersion] {
		return m.Params.ProtocolVersion
	}
	return "2025-06-18"
}

// serveSlowTool answers a tools/call of a slow tool and reports true; it
// reports false, writing nothing, for any other tool.
func (u *upstream) serveSlowTool(w http.ResponseWriter, r *http.Request, id json.RawMessage, body []byte) bool {
	var m struct {
		Params struct {
			Name string `json:"name"`
		} `json:"params"`
	}
	if json.Unmarshal(body, &m) != nil {
		return false
	}
	rid := string(idOrNull(id))
	result := `{"jsonrpc":"2.0","id":` + rid + `,"result":{"content":[{"type":"text","text":"ok"}]}}`
	ctx := r.Context()
	switch m.Params.Name {
	case toolSlowStream:
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		progress := `event: message` + "\n" + `data: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":` + rid + `,"progress":0,"total":1,"message":"working"}}` + "\n\n"
		if _, err := io.WriteString(w, progress); err != nil || rc.Flush() != nil {
			u.abandoned.Add(1)
			return true
		}
		u.slowStreams.Add(1)
		defer u.slowStreams.Add(-1)
		if !sleepCtx(ctx, u.slow) {
			u.abandoned.Add(1)
			return true
		}
		u.served.Add(1)
		_, _ = io.WriteString(w, "event: message\ndata: "+result+"\n\n")
		_ = rc.Flush()
		return true
	case toolSlowJSON:
		u.slowJSON.Add(1)
		defer u.slowJSON.Add(-1)
		if !sleepCtx(ctx, u.slow) {
			u.abandoned.Add(1)
			return true
		}
		u.served.Add(1)
		writeJSON(w, http.StatusOK, result)
		return true
	}
	return false
}

// mockState is what the mock process reports at mockStatePath: the
// flows it holds open now.
type mockState struct {
	PID         int   `json:"pid"`
	Streams     int64 `json:"streams"`      // GET streams open
	StreamCalls int64 `json:"stream_calls"` // slow_stream calls in progress
	JSONCalls   int64 `json:"json_calls"`   // slow_json calls in progress
	Inits       int64 `json:"inits"`        // initialize requests answered
}

// mockStatePath is where the mock process answers with its mockState;
// every other path is the mock itself.
const mockStatePath = "/bench/state"

// mockCommand is the hidden subcommand that runs the mock upstream as a
// process of its own: `bench _mock-upstream -addr 127.0.0.1:N`.
const mockCommand = "_mock-upstream"

// mockIdleTimeout is how long the mock process keeps an idle keep-alive
// connection: short, so that the proxy's idle upstream connections are
// gone before a goroutine baseline is taken.
const mockIdleTimeout = time.Second

// runMockProcess serves the mock upstream, with slow tools, on the
// address of the -addr flag until SIGTERM or SIGINT.
func runMockProcess(args []string) error {
	fs := flag.NewFlagSet(mockCommand, flag.ContinueOnError)
	addr := fs.String("addr", "", "loopback host:port to listen on")
	slow := fs.Duration("slow-tool", 30*time.Second, "time the slow tools take before answering")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *slow <= 0 {
		return errors.New("-addr and a positive -slow-tool are required")
	}
	// The port was in use a moment ago (the killed process held it);
	// binding may need a few tries while the kernel lets go of it.
	var ln net.Listener
	var err error
	for try := 0; try < 50; try++ {
		if ln, err = net.Listen("tcp", *addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("mock upstream: %w", err)
	}
	u := newUpstream(ln, 0, 0)
	u.slow = *slow
	u.srv.IdleTimeout = mockIdleTimeout
	u.srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == mockStatePath {
			b, _ := json.Marshal(mockState{
				PID: os.Getpid(), Streams: u.streamsOpen.Load(), StreamCalls: u.slowStreams.Load(),
				JSONCalls: u.slowJSON.Load(), Inits: u.inits.Load(),
			})
			writeJSON(w, http.StatusOK, string(b))
			return
		}
		u.ServeHTTP(w, r)
	})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	go func() {
		<-sig
		_ = u.srv.Close()
	}()
	if err := u.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// mockProc is the mock upstream running as a child process.
type mockProc struct {
	cmd    *exec.Cmd
	addr   string
	stderr *tailBuffer
	done   chan struct{} // closed when the process has exited
	once   sync.Once
}

// startMockProc starts the harness binary self as the mock upstream on
// addr and waits until it answers at mockStatePath.
func startMockProc(ctx context.Context, self, addr string, slow time.Duration) (*mockProc, error) {
	cmd := exec.Command(self, mockCommand, "-addr", addr, "-slow-tool", slow.String())
	p := &mockProc{cmd: cmd, addr: addr, stderr: &tailBuffer{max: 16 << 10}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stderr, p.stderr
	// Die with the harness even if it is killed without running defers.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the mock upstream: %w", err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := p.state(ctx); err == nil {
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("the mock upstream exited before listening on %s:\n%s", addr, p.stderr.String())
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("the mock upstream did not listen on %s within 15s:\n%s", addr, p.stderr.String())
		}
	}
}

// stateClient asks the mock process for its state, on a connection of
// its own each time so that no idle connection of the harness lingers.
var stateClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}

// state asks the mock process what it holds open.
func (p *mockProc) state(ctx context.Context) (mockState, error) {
	var st mockState
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr+mockStatePath, nil)
	if err != nil {
		return st, err
	}
	resp, err := stateClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("mock state: status %d", resp.StatusCode)
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&st)
	return st, err
}

// pid returns the process id.
func (p *mockProc) pid() int { return p.cmd.Process.Pid }

// kill sends SIGKILL and waits until the process is gone.
func (p *mockProc) kill() {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	})
}

// stop ends the process: SIGTERM, then SIGKILL after 3 s. Safe to call
// more than once, and after kill.
func (p *mockProc) stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// exitedBy reports how the process ended, for logs: "" while it runs.
func (p *mockProc) exitedBy() string {
	select {
	case <-p.done:
	default:
		return ""
	}
	if st := p.cmd.ProcessState; st != nil {
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "signal " + strconv.Itoa(int(ws.Signal()))
		}
		return st.String()
	}
	return "exited"
}
