package caddytest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

var (
	caddyBinOnce sync.Once
	caddyBin     string
	caddyBinErr  error
)

// builtCaddy returns the path of a Caddy binary with mcpgate's modules:
// $MCPGATE_CADDY_BIN when set, else one built from ./cmd/caddy.
func builtCaddy(t *testing.T) string {
	t.Helper()
	caddyBinOnce.Do(func() {
		if p := os.Getenv("MCPGATE_CADDY_BIN"); p != "" {
			caddyBin = p
			return
		}
		dir, err := os.MkdirTemp("", "mcpgate-caddy")
		if err != nil {
			caddyBinErr = err
			return
		}
		caddyBin = filepath.Join(dir, "caddy")
		out, err := exec.Command("go", "build", "-o", caddyBin, "../cmd/caddy").CombinedOutput()
		if err != nil {
			caddyBinErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if caddyBinErr != nil {
		t.Fatal(caddyBinErr)
	}
	return caddyBin
}

// startCaddyProcess runs the built binary with a Caddyfile until the test
// ends, and waits for port to accept connections.
func startCaddyProcess(t *testing.T, caddyfile string, port int) *exec.Cmd {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(builtCaddy(t), "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+dir, "XDG_DATA_HOME="+dir)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if cmd.ProcessState == nil {
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("caddy process logs:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy process did not listen on %d", port)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// alternator sends each request to the next of several proxies in turn,
// as a load balancer in front of Caddy replicas would.
type alternator struct {
	hosts []string
	n     atomic.Int64
}

func (a *alternator) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.Host = a.hosts[int(a.n.Add(1))%len(a.hosts)]
	r.Host = r.URL.Host
	return http.DefaultTransport.RoundTrip(r)
}

// TestReplicasShareSessions runs two Caddy instances (this process and a
// separate Caddy process) with the same session key in front of two
// stateful upstreams: every request alternates between the instances, and
// every session keeps working.
func TestReplicasShareSessions(t *testing.T) {
	a, b := startTwoUpstreams(t)
	const key = "replica-shared-key-replica-shared-key"
	site := func(port int) string {
		return fmt.Sprintf("http://127.0.0.1:%d {\n\tmcp_proxy %s %s {\n\t\tsession_key %q\n\t\tlb_policy round_robin\n\t}\n}\n", port, a.addr(), b.addr(), key)
	}
	p1, p2 := freePort(t), freePort(t)
	loadCaddyfile(t, site(p1))
	startCaddyProcess(t, "{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n}\n"+site(p2), p2)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hc := &http.Client{Transport: &alternator{hosts: []string{fmt.Sprintf("127.0.0.1:%d", p1), fmt.Sprintf("127.0.0.1:%d", p2)}}}
	for i := range 6 {
		client := mcp.NewClient(&mcp.Implementation{Name: "replica", Version: "1"}, nil)
		cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: fmt.Sprintf("http://127.0.0.1:%d/mcp", p1), HTTPClient: hc, MaxRetries: 1, DisableStandaloneSSE: true}, nil)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		for j := range 4 {
			want := fmt.Sprintf("%d-%d", i, j)
			if got, err := echo(ctx, cs, want); err != nil || got != want {
				t.Fatalf("session %d call %d: %q %v", i, j, got, err)
			}
		}
		cs.Close()
	}
	assertBothUsed(t, "sessions did not use both upstreams", a, b)
}

// TestReplicaKeyRotationSteps follows the rotation of session_key across
// replicas that README and RUNBOOK give, with two sites standing for two
// replicas of one upstream: while one replica has the new key only as an
// older one, sessions move both ways; once it puts the new key first and
// the other still holds it as an older one, they still do; and the
// rotation's hazard holds as documented: a replica that puts the new key
// first before the other holds it makes its sessions 404 there.
func TestReplicaKeyRotationSteps(t *testing.T) {
	up := startUpstream(t, "up", nil)
	const current, next = "current-session-key-current-session-key", "next-session-key-next-session-key-next!!"
	keys := func(k ...string) string {
		q := make([]string, len(k))
		for i := range k {
			q[i] = strconv.Quote(k[i])
		}
		return strings.Join(q, " ")
	}
	load := func(a, b string) (string, string) {
		pa, pb := freePort(t), freePort(t)
		loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tsession_key %s\n\t}\n}\n:%d {\n\tmcp_proxy %s {\n\t\tsession_key %s\n\t}\n}\n",
			pa, up.addr(), a, pb, up.addr(), b))
		return proxyURL(pa) + "/mcp", proxyURL(pb) + "/mcp"
	}
	both := func(step, a, b string) {
		t.Helper()
		for i, urls := range [][2]string{{a, b}, {b, a}} {
			sid := rawSession(t, urls[0], nil)
			if st, body := sessionEcho(t, urls[1], sid, 2+i); st != http.StatusOK {
				t.Errorf("%s: a session of one replica on the other (%d): %d %s", step, i, st, body)
			}
		}
	}
	a, b := load(keys(current, next), keys(current))
	both("step 1, the new key added after the current one on one replica", a, b)
	a, b = load(keys(next, current), keys(current, next))
	both("step 2, the new key first on one, held as an older key by the other", a, b)
	a, b = load(keys(next, current), keys(current))
	sid := rawSession(t, a, nil)
	if st, body := sessionEcho(t, b, sid, 9); st != http.StatusNotFound {
		t.Errorf("the new key first before the other replica holds it: %d %s, want 404", st, body)
	}
}

// TestReplicaForgetEvicted: with `evicted_sessions forget` on both
// replicas, a session initialized through replica B and then used only
// through replica A lives on: B's idle expiry frees it on B without
// deleting it upstream (with `delete`, the default, A's next request got
// the upstream's 404 once B's timeout passed), and B adopts it again at
// its next request.
func TestReplicaForgetEvicted(t *testing.T) {
	up := startUpstream(t, "shared", nil)
	const key = "replica-shared-key-replica-shared-key"
	global := "\tmcp {\n\t\tsession_idle_timeout 1s\n\t\trefresh 50ms\n\t\tevicted_sessions forget\n\t}\n"
	site := func(port int) string {
		return fmt.Sprintf("http://127.0.0.1:%d {\n\tmcp_proxy %s {\n\t\tsession_key %q\n\t}\n}\n", port, up.addr(), key)
	}
	pa, pb := freePort(t), freePort(t)
	loadCaddyfileWith(t, global, site(pa)) // replica A: this process
	startCaddyProcess(t, "{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n"+global+"}\n"+site(pb), pb)

	sid := rawSession(t, proxyURL(pb)+"/mcp", nil) // initialize through B
	urlA := proxyURL(pa) + "/mcp"
	start := time.Now()
	for i := 2; time.Since(start) < 3*time.Second; i++ {
		if st, b := sessionEcho(t, urlA, sid, i); st != http.StatusOK {
			t.Fatalf("call %d through replica A, %v after the initialize on B: %d %s",
				i, time.Since(start).Round(100*time.Millisecond), st, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st, b := sessionEcho(t, proxyURL(pb)+"/mcp", sid, 99); st != http.StatusOK {
		t.Errorf("the session through replica B after B's idle expiry: %d %s", st, b)
	}
}
