//go:build linux

package main

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

func TestCaddyfileAuthSite(t *testing.T) {
	got := caddyfile(caddyfileParams{
		Upstream: "127.0.0.1:9000", PlainPort: 8001, MCPPort: 8002, AuthPort: 8003,
		AuthKeyFile: "/tmp/x/bench-signing.pem", MCPBlock: "max_inflight 16",
		AuthBlock: "require_scope mcp; leeway 5s", PolicyBlock: "session_ttl 5m",
	})
	want := `
http://127.0.0.1:8002 {
	mcp_proxy 127.0.0.1:9000 {
		max_inflight 16
	}
}

http://127.0.0.1:8003 {
	mcp_auth {
		issuer https://bench.issuer.example
		resource http://127.0.0.1:8003/mcp
		key file /tmp/x/bench-signing.pem kid bench alg RS256
		require_scope mcp
		leeway 5s
	}
	mcp_proxy 127.0.0.1:9000 {
		max_inflight 16
		session_ttl 5m
	}
}
`
	if !strings.HasSuffix(got, want) {
		t.Errorf("caddyfile:\n%s\nwant it to end with:\n%s", got, want)
	}

	// Without blocks, mcp_proxy has none; without AuthPort, no third site.
	got = caddyfile(caddyfileParams{Upstream: "127.0.0.1:9000", MCPPort: 8002, AuthPort: 8003, AuthKeyFile: "/k.pem"})
	if !strings.HasSuffix(got, "\t\tkey file /k.pem kid bench alg RS256\n\t}\n\tmcp_proxy 127.0.0.1:9000\n}\n") {
		t.Errorf("caddyfile without blocks:\n%s", got)
	}
	if got := caddyfile(caddyfileParams{Upstream: "127.0.0.1:9000", PlainPort: 8001, MCPPort: 8002}); strings.Contains(got, "mcp_auth") {
		t.Errorf("mcp_auth site without AuthPort:\n%s", got)
	}
}

func TestBenchIssuerToken(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	resource := authResource(8003)
	iss, err := newBenchIssuer(dir, resource, now)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(iss.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		t.Fatalf("key file: %q", b)
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := pub.(*rsa.PublicKey); !ok || k.N.BitLen() != 2048 {
		t.Fatalf("public key: %T", pub)
	}

	tok, err := jwt.ParseSigned(iss.Token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	h := tok.Headers[0]
	if h.KeyID != "bench" || h.Algorithm != "RS256" || h.ExtraHeaders["typ"] != "JWT" {
		t.Errorf("header: %+v", h)
	}
	var std jwt.Claims
	var extra struct {
		Scope string `json:"scope"`
	}
	if err := tok.Claims(pub, &std, &extra); err != nil {
		t.Fatal(err)
	}
	if err := std.Validate(jwt.Expected{Issuer: "https://bench.issuer.example", Subject: "bench-user", AnyAudience: jwt.Audience{resource}, Time: now.Add(23 * time.Hour)}); err != nil {
		t.Error(err)
	}
	if std.Expiry.Time().Sub(std.IssuedAt.Time()) != 24*time.Hour || !std.NotBefore.Time().Equal(std.IssuedAt.Time()) {
		t.Errorf("times: iat %v nbf %v exp %v", std.IssuedAt, std.NotBefore, std.Expiry)
	}
	if extra.Scope != "mcp" {
		t.Errorf("scope %q", extra.Scope)
	}
}

func TestTargetClientSendsBearer(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Header.Get("Authorization")+"|"+r.Header.Get("Mcp-Session-Id"))
	}))
	defer srv.Close()
	for _, tgt := range []target{{Name: targetAuth, URL: srv.URL, Token: "tok"}, {Name: targetMCP, URL: srv.URL}} {
		req, _ := http.NewRequest(http.MethodPost, tgt.URL, strings.NewReader("{}"))
		setMCPHeaders(req.Header, "s1")
		resp, err := tgt.client(http.DefaultTransport).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if req.Header.Get("Authorization") != "" {
			t.Error("the caller's request was changed")
		}
	}
	if strings.Join(got, ",") != "Bearer tok|s1,|s1" {
		t.Errorf("server saw %q", got)
	}
}

func TestParseTargetsAuth(t *testing.T) {
	got, err := parseTargets("plain,mcp_proxy,mcp_auth,auth")
	if err != nil || strings.Join(got, ",") != "plain,mcp_proxy,mcp_auth" {
		t.Errorf("parseTargets = %v, %v", got, err)
	}
}

func TestWritePostReportAuth(t *testing.T) {
	rounds := samplePost()
	mk := func(round int, rps float64, p99 time.Duration) *postResult {
		return &postResult{Target: targetAuth, Round: round, RPS: rps, OK: int64(rps * 10),
			Lat:    latencySummary{N: int(rps * 10), P50: 4 * time.Millisecond, P90: p99 / 2, P99: p99, Max: 2 * p99},
			Status: map[int]int64{}, Before: quietness{Quiet: true}}
	}
	rounds[0] = append(rounds[0], mk(1, 6120, 15*time.Millisecond))
	rounds[1] = append(rounds[1], mk(2, 6210, 17*time.Millisecond))
	var b strings.Builder
	writePostReport(&b, reportMeta{Title: "post test"}, rounds, []string{targetDirect, targetPlain, targetMCP, targetAuth})
	out := b.String()
	for _, s := range []string{
		"| req/s vs plain | p99 vs plain | Caddy CPU µs/req | req/s vs mcp_proxy | p99 vs mcp_proxy |",
		"| mcp_proxy | 6850 | 4.00 | 7.25 | 14.5 | 29.0 | 0.96× | 1.07× | – | 1.00× | 1.00× |",
		"| mcp_auth | 6165 | 4.00 | 8.00 | 16.0 | 32.0 | 0.87× | 1.19× | – | 0.90× | 1.10× |",
		"p99 1.07×, req/s 0.96× — **holds** in this run.",
		"mcp_auth in front of mcp_proxy: p99 ≤ 1.15× mcp_proxy and req/s ≥ 0.90× mcp_proxy, medians of rounds): p99 1.10×, req/s 0.90× — **holds** in this run. Per round (req/s, p99): 1: 0.90× / 1.00×; 2: 0.90× / 1.21×; median of the per-round ratios: 0.90× / 1.11×.",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("report lacks %q:\n%s", s, out)
		}
	}
	// Without mcp_auth the table keeps its columns.
	b.Reset()
	writePostReport(&b, reportMeta{Title: "post test"}, samplePost(), []string{targetDirect, targetPlain, targetMCP})
	if strings.Contains(b.String(), "vs mcp_proxy") || strings.Contains(b.String(), "mcp_auth") {
		t.Errorf("mcp_auth columns without mcp_auth:\n%s", b.String())
	}
}
