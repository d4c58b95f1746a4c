package caddytest

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpgate/mcpgate/internal/demo"
)

// TestAuthKeysBoundToIssuers checks mcp_auth with two issuers, A by its
// JWKS and B by a static key: each key verifies only its own issuer's
// tokens, so B's key cannot sign for A's admin nor A's for B's; and the
// principal is qualified by the issuer, in {http.auth.user.id} and in the
// session binding, so that A's alice and B's alice are two users.
func TestAuthKeysBoundToIssuers(t *testing.T) {
	asA, asB := startAuthServer(t), startAuthServer(t)
	var seen seenHeaders
	up := startUpstreamHandler(t, "up", seen.wrap(demo.Handler(demo.NewServer("up"), "/sse", nil)))
	asB.mu.Lock()
	privB := asB.keys[0].priv
	asB.mu.Unlock()
	der, err := x509.MarshalPKIXPublicKey(&privB.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pemB := t.TempDir() + "/b.pem"
	if err := os.WriteFile(pemB, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	const resource = "http://mcp.test/mcp"
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(`:%d {
	mcp_auth {
		issuer %[2]s %[3]s
		jwks_url %[2]s/jwks
		jwks_issuer %[2]s
		key file %[4]s kid b-key issuer %[3]s
		resource %[5]s
	}
	mcp_proxy %[6]s {
		header_up X-User {http.auth.user.id}
		session_key shared-test-passphrase-of-32-characters
	}
}
`, port, asA.issuer(), asB.issuer(), pemB, resource, up.addr()))
	endpoint := proxyURL(port) + "/mcp"
	mintB := func(c map[string]any) string {
		return signWith(t, jose.RS256, jose.JSONWebKey{Key: privB, KeyID: "b-key"}, c)
	}
	aliceA := asA.tokenFor("alice", resource, "mcp:read")
	aliceB := mintB(asB.claims("alice", resource, "mcp:read"))

	sid := openSessionAs(t, endpoint, aliceA)
	hdr := bearerHdr(aliceA)
	hdr["Mcp-Session-Id"] = sid
	if status, _, body := rawPost(t, endpoint, toolsListBody, hdr); status != http.StatusOK {
		t.Fatalf("A's alice in her session: %d %s", status, body)
	}
	hdr = bearerHdr(aliceB)
	hdr["Mcp-Session-Id"] = sid
	if status, _, body := rawPost(t, endpoint, toolsListBody, hdr); status != http.StatusNotFound {
		t.Errorf("B's alice presents A's alice's session: %d, want 404 (%s)", status, body)
	}
	openSessionAs(t, endpoint, aliceB)
	users, _ := seen.all("X-User")
	got := map[string]bool{}
	for _, u := range users {
		got[u] = true
	}
	if len(got) != 2 || !got[asA.issuer()+" alice"] || !got[asB.issuer()+" alice"] {
		t.Errorf("X-User upstream %q, want %q and %q", users, asA.issuer()+" alice", asB.issuer()+" alice")
	}

	forged := asB.claims("admin", resource, "mcp:read mcp:admin")
	forged["iss"] = asA.issuer()
	if status, h, _ := rawPost(t, endpoint, toolsListBody, bearerHdr(mintB(forged))); status != http.StatusUnauthorized {
		t.Errorf("B's key signing for A's admin: %d, want 401 (%q)", status, h.Get("WWW-Authenticate"))
	}
	forged = asA.claims("admin", resource, "mcp:read mcp:admin")
	forged["iss"] = asB.issuer()
	if status, h, _ := rawPost(t, endpoint, toolsListBody, bearerHdr(asA.mint(forged))); status != http.StatusUnauthorized {
		t.Errorf("A's key signing for B's admin: %d, want 401 (%q)", status, h.Get("WWW-Authenticate"))
	}
}

// TestAuthConfigRefused checks that mcp_auth refuses, at load, a
// configuration that would let a token through unchecked: a static key
// that could sign for either of two issuers, a JWKS beside static keys
// without the issuers it signs for, a scope rule whose glob is malformed
// (it would require no scope).
func TestAuthConfigRefused(t *testing.T) {
	for _, c := range []struct{ name, lines, want string }{
		{"key of either issuer", "issuer https://a.example https://b.example\n\t\tkey secret MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY= alg HS256", "name the one the key signs for"},
		{"JWKS beside a bound key", "issuer https://a.example https://b.example\n\t\tjwks_url https://a.example/jwks\n\t\tkey secret MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY= alg HS256 issuer https://b.example", "jwks_issuer"},
		{"malformed scope glob", "jwks_url https://a.example/jwks\n\t\tscope `tools/call:delete_\\` mcp:admin", "scope rule 1"},
	} {
		cf := testCaddyfile("off", "", fmt.Sprintf(":%d {\n\tmcp_auth {\n\t\t%s\n\t}\n\trespond ok\n}\n", freePort(t), c.lines))
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
		if err == nil {
			if err = caddy.Load(cfg, true); err == nil {
				_ = caddy.Stop()
			}
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error mentioning %q", c.name, err, c.want)
		}
	}
}

// TestAuthFetchErrorsStayInLog checks that an introspection endpoint that
// cannot be reached is not described to the client: the 401's challenge
// and body say only that the token could not be checked, never the
// endpoint's address, its query, or the dial error.
func TestAuthFetchErrorsStayInLog(t *testing.T) {
	dead := freePort(t) // nothing listens
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(`:%d {
	mcp_auth {
		introspect "http://127.0.0.1:%d/internal/introspect?api_key=S3CRET"
		resource http://mcp.test/mcp
	}
	respond "ok"
}
`, port, dead))
	status, h, body := rawPost(t, proxyURL(port)+"/mcp", toolCall("echo"), bearerHdr("opaque-token"))
	chal := h.Get("WWW-Authenticate")
	if status != http.StatusUnauthorized || !strings.Contains(chal, `error_description="the token could not be checked"`) {
		t.Errorf("%d %q, want 401 saying the token could not be checked", status, chal)
	}
	for _, leak := range []string{"S3CRET", "/internal/introspect", "127.0.0.1", "dial"} {
		if strings.Contains(chal, leak) || strings.Contains(body, leak) {
			t.Errorf("%q reaches the client: %q %s", leak, chal, body)
		}
	}
}

// TestAuthReadmeMatcherServesMetadata checks the matcher the README gives
// mcp_auth: the metadata its 401 points at is served, so a client can
// find the authorization server (with `mcp_auth /mcp*` alone the
// well-known path is outside the matcher and answers 404).
func TestAuthReadmeMatcherServesMetadata(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var matcher string
	for line := range strings.SplitSeq(string(readme), "\n") {
		if strings.HasPrefix(line, "\t@auth path ") {
			matcher = strings.TrimSpace(line)
			break
		}
	}
	if !strings.Contains(matcher, "/.well-known/oauth-protected-resource") {
		t.Fatalf("README's mcp_auth matcher %q leaves the metadata out", matcher)
	}
	as := startAuthServer(t)
	up := startUpstream(t, "up", &mcp.StreamableHTTPOptions{Stateless: true})
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(`:%d {
	%s
	mcp_auth @auth {
		issuer %s
		jwks_url %s/jwks
		require_scope mcp
	}
	mcp_proxy /mcp* %s {
		require_session off
	}
}
`, port, matcher, as.issuer(), as.URL, up.addr()))
	_, h, _ := rawPost(t, proxyURL(port)+"/mcp", toolCall("echo"), bearerHdr(""))
	chal := h.Get("WWW-Authenticate")
	_, md, ok := strings.Cut(chal, `resource_metadata="`)
	md, _, _ = strings.Cut(md, `"`)
	if !ok {
		t.Fatalf("challenge %q names no metadata", chal)
	}
	req, _ := http.NewRequest(http.MethodGet, md, nil)
	status, rh, body := do(t, req)
	if status != http.StatusOK || !strings.Contains(rh.Get("Content-Type"), "json") || !strings.Contains(body, as.issuer()) {
		t.Errorf("GET %s (named by the 401): %d %q %s", md, status, rh.Get("Content-Type"), body)
	}
	if status, _, body := rawPost(t, proxyURL(port)+"/mcp", toolCall("echo"), bearerHdr(as.tokenFor("alice", proxyURL(port)+"/mcp", "mcp"))); status != http.StatusOK {
		t.Errorf("a valid token: %d %s", status, body)
	}
}
