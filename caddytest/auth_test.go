package caddytest

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	sdkauth "github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/modelcontextprotocol/go-sdk/oauthex"
	"golang.org/x/crypto/bcrypt"

	"github.com/mcpgate/mcpgate/internal/demo"
)

// seenHeaders records the headers of the requests an upstream gets.
type seenHeaders struct {
	mu   sync.Mutex
	list []http.Header
}

func (s *seenHeaders) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.list = append(s.list, r.Header.Clone())
		s.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

// all returns every value of field the upstream saw, and whether any
// request carried Authorization.
func (s *seenHeaders) all(field string) (values []string, authorization bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.list {
		if v := h.Get(field); v != "" {
			values = append(values, v)
		}
		if h.Get("Authorization") != "" {
			authorization = true
		}
	}
	return values, authorization
}

// authSite is a site on port with mcp_auth (trusting as) in front of
// mcp_proxy to up, which passes the principal and the tool as headers.
func authSite(port int, as *authServer, up, authLines, proxyLines string) string {
	return fmt.Sprintf(`:%d {
	mcp_auth {
		issuer %s
		jwks_url %s/jwks
		jwks_min_refresh 1ms
%s	}
	mcp_proxy %s {
		header_up X-User {http.auth.user.id}
		header_up X-Tool {http.mcp.tool}
		session_key shared-test-passphrase-of-32-characters
%s	}
}
`, port, as.issuer(), as.URL, authLines, up, proxyLines)
}

// authFront is a site on port with mcp_auth (trusting as, with
// authLines) in front of the handlers of rest.
func authFront(port int, as *authServer, authLines, rest string) string {
	return fmt.Sprintf(":%d {\n\tmcp_auth {\n\t\tissuer %s\n\t\tjwks_url %s/jwks\n%s\t}\n%s}\n", port, as.issuer(), as.URL, authLines, rest)
}

// bearerHdr is the headers of an MCP POST with a bearer token.
func bearerHdr(tok string) map[string]string {
	h := map[string]string{"MCP-Protocol-Version": "2025-06-18"}
	if tok != "" {
		h["Authorization"] = "Bearer " + tok
	}
	return h
}

var toolsListBody = rpcRequest(2, "tools/list")

// toolCall is a tools/call of tool, id 3, with a text argument.
func toolCall(tool string) string { return callBody("3", tool, `{"text":"hi"}`) }

// TestAuthTokens checks what mcp_auth does with each kind of token: the
// ones it must refuse get 401 and a challenge pointing at the metadata,
// and none of them reaches the upstream; a valid one passes without its
// Authorization header.
func TestAuthTokens(t *testing.T) {
	as := startAuthServer(t)
	var seen seenHeaders
	up := startUpstreamHandler(t, "up", seen.wrap(demo.Handler(demo.NewServer("up"), "/sse", &mcp.StreamableHTTPOptions{Stateless: true})))
	port := freePort(t)
	loadCaddyfile(t, authSite(port, as, up.addr(), "", "\t\trequire_session off\n"))
	endpoint := proxyURL(port) + "/mcp"
	resource := endpoint
	mdURL := proxyURL(port) + "/.well-known/oauth-protected-resource/mcp"

	valid := as.claims("alice", resource, "mcp:read")
	with := func(k string, v any) map[string]any {
		c := map[string]any{}
		for k, v := range valid {
			c[k] = v
		}
		c[k] = v
		return c
	}
	as.mu.Lock()
	pub := as.keys[0]
	as.mu.Unlock()
	der, err := x509.MarshalPKIXPublicKey(&pub.priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	good := as.mint(valid)
	cases := []struct {
		name, token string
		authz       string // the whole Authorization header, when not Bearer token
		errCode     string // the challenge's error, "" for none
	}{
		{name: "missing"},
		{name: "basic scheme", authz: "Basic YWxpY2U6c2VjcmV0"},
		{name: "expired", token: as.mint(with("exp", time.Now().Add(-10*time.Minute).Unix())), errCode: "invalid_token"},
		{name: "not yet valid", token: as.mint(with("nbf", time.Now().Add(10*time.Minute).Unix())), errCode: "invalid_token"},
		{name: "wrong audience", token: as.mint(with("aud", "http://other.example/mcp")), errCode: "invalid_token"},
		{name: "wrong issuer", token: as.mint(with("iss", "http://evil.example")), errCode: "invalid_token"},
		{name: "alg none", token: unsignedToken(valid), errCode: "invalid_token"},
		{name: "tampered", token: tampered(good, with("sub", "admin")), errCode: "invalid_token"},
		{name: "unknown key", token: signWith(t, jose.RS256, jose.JSONWebKey{Key: mustRSA(t), KeyID: "nope"}, valid), errCode: "invalid_token"},
		{name: "HMAC with the public key", token: signWith(t, jose.HS256, jose.JSONWebKey{Key: der, KeyID: pub.kid}, valid), errCode: "invalid_token"},
		{name: "garbage", token: "not.a.jwt", errCode: "invalid_token"},
		// Without a principal, the request would be nobody's: its
		// sessions those of every other such token and of anonymous
		// requests.
		{name: "no sub", token: as.mint(with("sub", nil)), errCode: "invalid_token"},
		{name: "empty sub", token: as.mint(with("sub", "")), errCode: "invalid_token"},
	}
	before := up.requests.Load()
	for _, c := range cases {
		hdr := bearerHdr(c.token)
		if c.authz != "" {
			hdr["Authorization"] = c.authz
		}
		status, h, body := rawPost(t, endpoint, toolCall("echo"), hdr)
		if status != http.StatusUnauthorized {
			t.Errorf("%s: status %d, want 401 (%s)", c.name, status, body)
			continue
		}
		chal := h.Get("WWW-Authenticate")
		if !strings.HasPrefix(chal, "Bearer ") || !strings.Contains(chal, `resource_metadata="`+mdURL+`"`) {
			t.Errorf("%s: challenge %q lacks resource_metadata=%q", c.name, chal, mdURL)
		}
		if hasErr := strings.Contains(chal, "error="); (c.errCode != "") != hasErr || !strings.Contains(chal, c.errCode) {
			t.Errorf("%s: challenge %q, want error %q", c.name, chal, c.errCode)
		}
		if !strings.Contains(body, `"jsonrpc":"2.0"`) {
			t.Errorf("%s: body %q is not a JSON-RPC error", c.name, body)
		}
	}
	if n := up.requests.Load() - before; n != 0 {
		t.Errorf("the upstream got %d refused requests", n)
	}

	status, _, body := rawPost(t, endpoint, toolCall("echo"), bearerHdr(good))
	if status != http.StatusOK || !strings.Contains(body, "hi") {
		t.Fatalf("valid token: %d %s", status, body)
	}
	users, authz := seen.all("X-User")
	if authz {
		t.Error("the upstream saw an Authorization header")
	}
	if len(users) != 1 || users[0] != "alice" {
		t.Errorf("X-User upstream = %q, want [alice]", users)
	}
	if tools, _ := seen.all("X-Tool"); len(tools) != 1 || tools[0] != "echo" {
		t.Errorf("X-Tool upstream = %q, want [echo]", tools)
	}
}

func mustRSA(t *testing.T) any {
	t.Helper()
	return (&authServer{t: t}).newKey()
}

// TestAuthMetadataAndKeys checks the Protected Resource Metadata, scope
// step-up, and the JWKS cache: a rotated key is picked up without a
// reload, and the JWKS server being down fails nothing signed by a key
// already held.
func TestAuthMetadataAndKeys(t *testing.T) {
	as := startAuthServer(t)
	up := startUpstream(t, "up", &mcp.StreamableHTTPOptions{Stateless: true})
	port := freePort(t)
	loadCaddyfile(t, authSite(port, as, up.addr(),
		"\t\tscope tools/call:delete_* mcp:admin\n\t\tscopes_supported mcp:read mcp:admin\n\t\tresource_name \"Test MCP\"\n",
		"\t\trequire_session off\n"))
	base := proxyURL(port)
	endpoint := base + "/mcp"

	for path, resource := range map[string]string{
		"/.well-known/oauth-protected-resource/mcp": endpoint,
		"/.well-known/oauth-protected-resource":     base,
	} {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		status, h, body := do(t, req)
		var md struct {
			Resource             string   `json:"resource"`
			AuthorizationServers []string `json:"authorization_servers"`
			ScopesSupported      []string `json:"scopes_supported"`
			BearerMethods        []string `json:"bearer_methods_supported"`
			ResourceName         string   `json:"resource_name"`
		}
		if status != http.StatusOK || !strings.HasPrefix(h.Get("Content-Type"), "application/json") || json.Unmarshal([]byte(body), &md) != nil {
			t.Fatalf("GET %s: %d %s", path, status, body)
		}
		if md.Resource != resource || len(md.AuthorizationServers) != 1 || md.AuthorizationServers[0] != as.issuer() ||
			strings.Join(md.ScopesSupported, " ") != "mcp:read mcp:admin" || strings.Join(md.BearerMethods, " ") != "header" ||
			md.ResourceName != "Test MCP" {
			t.Errorf("GET %s: metadata %s", path, body)
		}
	}

	// The 403 names the scope delete_repo needs, then the scopes of this
	// resource the token holds: a client authorizing again for exactly
	// these (as the MCP specification has it take them) keeps mcp:read.
	reader := as.tokenFor("alice", endpoint, "mcp:read openid")
	status, h, body := rawPost(t, endpoint, toolCall("delete_repo"), bearerHdr(reader))
	chal := h.Get("WWW-Authenticate")
	if status != http.StatusForbidden || !strings.Contains(chal, `error="insufficient_scope"`) || !strings.Contains(chal, `scope="mcp:admin mcp:read"`) {
		t.Errorf("delete_repo with mcp:read: %d %q %s", status, chal, body)
	}
	if !strings.Contains(body, `"id":3`) {
		t.Errorf("the 403 does not answer the request's id: %s", body)
	}
	batch := "[" + toolCall("echo") + "," + callBody("4", "delete_all", "{}") + "]"
	if status, _, body := rawPost(t, endpoint, batch, map[string]string{"Authorization": "Bearer " + reader, "MCP-Protocol-Version": "2025-03-26"}); status != http.StatusForbidden {
		t.Errorf("a batch hiding delete_all: %d %s", status, body)
	}
	if status, _, body := rawPost(t, endpoint, toolCall("echo"), bearerHdr(reader)); status != http.StatusOK {
		t.Errorf("echo with mcp:read: %d %s", status, body)
	}
	admin := as.tokenFor("alice", endpoint, "mcp:read mcp:admin")
	if status, _, body := rawPost(t, endpoint, toolCall("delete_repo"), bearerHdr(admin)); status == http.StatusForbidden || status == http.StatusUnauthorized {
		t.Errorf("delete_repo with mcp:admin: %d %s", status, body)
	}

	// A new signing key: its first token makes mcp_auth fetch the JWKS
	// again.
	fetches := as.jwksHits.Load()
	as.rotate()
	time.Sleep(5 * time.Millisecond) // past jwks_min_refresh
	rotated := as.tokenFor("alice", endpoint, "mcp:read")
	if status, _, body := rawPost(t, endpoint, toolCall("echo"), bearerHdr(rotated)); status != http.StatusOK {
		t.Fatalf("token signed by a rotated-in key: %d %s", status, body)
	}
	if as.jwksHits.Load() == fetches {
		t.Error("the JWKS was not fetched again for the new key")
	}

	// The JWKS server goes down: tokens of the keys held still pass.
	as.jwksDown.Store(true)
	for _, tok := range []string{reader, rotated, as.tokenFor("bob", endpoint, "mcp:read")} {
		if status, _, body := rawPost(t, endpoint, toolCall("echo"), bearerHdr(tok)); status != http.StatusOK {
			t.Errorf("with the JWKS server down: %d %s", status, body)
		}
	}
}

// TestAuthScopeGlobsCrossSlash checks that a scope rule's globs match as
// the policy rules' do, `*` across `/`: the README's
// `scope resources/read:secret://* mcp:secrets` covers a URI of several
// segments, and `scope * mcp:basic` every method, so a token without the
// scope is refused before the upstream.
func TestAuthScopeGlobsCrossSlash(t *testing.T) {
	as := startAuthServer(t)
	var reached atomic.Int64
	up := startUpstreamHandler(t, "up", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":3,"result":{}}`)
	}))
	port := freePort(t)
	loadCaddyfile(t, authFront(port, as, "\t\tscope resources/read:secret://* mcp:secrets\n\t\tscope * mcp:basic\n",
		"\treverse_proxy "+up.addr()+"\n"))
	endpoint := proxyURL(port) + "/mcp"
	read := func(uri string) string {
		return fmt.Sprintf(`{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":%q}}`, uri)
	}
	reader := as.tokenFor("alice", endpoint, "mcp:read mcp:basic")
	for _, uri := range []string{"secret://db", "secret://db/password"} {
		status, h, body := rawPost(t, endpoint, read(uri), bearerHdr(reader))
		if status != http.StatusForbidden || !strings.Contains(h.Get("WWW-Authenticate"), `scope="mcp:secrets mcp:basic"`) {
			t.Errorf("resources/read %s without mcp:secrets: %d %q %s", uri, status, h.Get("WWW-Authenticate"), body)
		}
	}
	if status, _, body := rawPost(t, endpoint, toolCall("echo"), bearerHdr(as.tokenFor("alice", endpoint, "mcp:read"))); status != http.StatusForbidden {
		t.Errorf("tools/call under `scope * mcp:basic` without mcp:basic: %d %s", status, body)
	}
	if n := reached.Load(); n != 0 {
		t.Errorf("the upstream was reached %d times", n)
	}
	if status, _, body := rawPost(t, endpoint, read("secret://db/password"), bearerHdr(as.tokenFor("alice", endpoint, "mcp:basic mcp:secrets"))); status != http.StatusOK {
		t.Errorf("resources/read with mcp:secrets: %d %s", status, body)
	}
}

// TestAuthScopesUnreadableBody checks mcp_auth's scope rules in front of a
// plain reverse_proxy: a POST whose messages it cannot read (a body in
// another charset or content coding, which a server may decode into other
// messages, or not declared as JSON at all) is refused, not passed
// unchecked.
func TestAuthScopesUnreadableBody(t *testing.T) {
	as := startAuthServer(t)
	up := startUpstream(t, "up", &mcp.StreamableHTTPOptions{Stateless: true})
	port := freePort(t)
	loadCaddyfile(t, authFront(port, as, "\t\tscope tools/call:delete_* mcp:admin\n", "\treverse_proxy "+up.addr()+"\n"))
	endpoint := proxyURL(port) + "/mcp"
	reader := as.tokenFor("alice", endpoint, "mcp:read")
	// The name read as UTF-8 is "echo"; read as UTF-7, a later "name"
	// member appears, which JSON.parse takes.
	smuggled := `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{},"x":"+ACI-,+ACI-name+ACI-:+ACI-delete_repo"}}`
	before := up.requests.Load()
	// The last two are read as UTF-7 by Node's content-type package
	// (Express's JSON parser, the TypeScript SDK), as UTF-8 by Go's mime,
	// which folds charset* into charset.
	for _, ct := range []string{"application/json; charset=utf-7", "application/json; charset=utf-16", "text/plain",
		"application/json; charset=utf-7; charset*=utf-8''utf-8", "application/json; charset*=utf-8''utf-8; charset=utf-7"} {
		hdr := bearerHdr(reader)
		hdr["Content-Type"] = ct
		if status, _, body := rawPost(t, endpoint, smuggled, hdr); status != http.StatusUnsupportedMediaType {
			t.Errorf("%s: %d %s, want 415", ct, status, body)
		}
	}
	// Express's JSON body parser inflates a body declared gzip.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte(toolCall("delete_repo")))
	_ = zw.Close()
	hdr := bearerHdr(reader)
	hdr["Content-Encoding"] = "gzip"
	if status, rh, body := rawPost(t, endpoint, gz.String(), hdr); status != http.StatusUnsupportedMediaType || rh.Get("Accept-Encoding") != "identity" {
		t.Errorf("a gzip body: %d (Accept-Encoding %q) %s, want 415 with Accept-Encoding identity", status, rh.Get("Accept-Encoding"), body)
	}
	if n := up.requests.Load() - before; n != 0 {
		t.Errorf("the upstream got %d unchecked requests", n)
	}
	if status, _, body := rawPost(t, endpoint, toolCall("echo"), bearerHdr(reader)); status != http.StatusOK {
		t.Errorf("echo in UTF-8: %d %s", status, body)
	}
}

// TestAuthSessionBinding checks that a session belongs to the principal
// that opened it, across token refreshes and replicas sharing the session
// key.
func TestAuthSessionBinding(t *testing.T) {
	as := startAuthServer(t)
	up := startUpstream(t, "up", nil)
	port, replica, open := freePort(t), freePort(t), freePort(t)
	// open is a site without mcp_auth sharing the session key.
	loadCaddyfile(t, authSite(port, as, up.addr(), "\t\tresource http://mcp.test/mcp\n", "")+
		authSite(replica, as, up.addr(), "\t\tresource http://mcp.test/mcp\n", "")+
		proxySite(open, up.addr(), "\t\tsession_key shared-test-passphrase-of-32-characters\n"))
	const resource = "http://mcp.test/mcp"
	alice := as.tokenFor("alice", resource, "mcp:read")
	bob := as.tokenFor("bob", resource, "mcp:read")

	sid := openSessionAs(t, proxyURL(port)+"/mcp", alice)
	asks := []struct {
		name, url, token string
		want             int
	}{
		{"alice", proxyURL(port), alice, http.StatusOK},
		{"alice, refreshed token", proxyURL(port), as.tokenFor("alice", resource, "mcp:read mcp:admin"), http.StatusOK},
		{"alice at the replica", proxyURL(replica), alice, http.StatusOK},
		{"bob", proxyURL(port), bob, http.StatusNotFound},
		{"bob at the replica", proxyURL(replica), bob, http.StatusNotFound},
		{"no principal", proxyURL(open), "", http.StatusNotFound},
	}
	for _, a := range asks {
		hdr := bearerHdr(a.token)
		hdr["Mcp-Session-Id"] = sid
		status, _, body := rawPost(t, a.url+"/mcp", toolsListBody, hdr)
		if status != a.want {
			t.Errorf("%s presents alice's session: %d, want %d (%s)", a.name, status, a.want, body)
		}
	}
	// An unauthenticated session presented with a principal is unknown.
	anon := openSessionAs(t, proxyURL(open)+"/mcp", "")
	hdr := bearerHdr(alice)
	hdr["Mcp-Session-Id"] = anon
	if status, _, body := rawPost(t, proxyURL(port)+"/mcp", toolsListBody, hdr); status != http.StatusNotFound {
		t.Errorf("an anonymous session presented by alice: %d (%s)", status, body)
	}
}

// openSessionAs initializes a session at endpoint with tok and returns
// its id.
func openSessionAs(t *testing.T, endpoint, tok string) string {
	t.Helper()
	hdr := bearerHdr(tok)
	delete(hdr, "MCP-Protocol-Version")
	status, h, body := rawPost(t, endpoint, initializeBody, hdr)
	sid := h.Get("Mcp-Session-Id")
	if status != http.StatusOK || sid == "" {
		t.Fatalf("initialize: %d %s", status, body)
	}
	hdr = bearerHdr(tok)
	hdr["Mcp-Session-Id"] = sid
	if status, _, body := rawPost(t, endpoint, notifyInitialized, hdr); status != http.StatusAccepted {
		t.Fatalf("initialized: %d %s", status, body)
	}
	return sid
}

// TestAuthPlaceholderMatcher routes by the tool a request calls: an
// expression matcher on {http.mcp.tool}, which mcp_auth sets, refuses one
// tool before mcp_proxy.
func TestAuthPlaceholderMatcher(t *testing.T) {
	as := startAuthServer(t)
	up := startUpstream(t, "up", &mcp.StreamableHTTPOptions{Stateless: true})
	port := freePort(t)
	loadCaddyfile(t, authFront(port, as, "", `	@delete expression {http.mcp.tool} == "delete_repo"
	respond @delete "refused by policy: {http.mcp.method} {http.mcp.tool} by {http.auth.user.id}" 403
	mcp_proxy `+up.addr()+` {
		require_session off
	}
`))
	endpoint := proxyURL(port) + "/mcp"
	tok := as.tokenFor("alice", endpoint, "")
	before := up.requests.Load()
	status, _, body := rawPost(t, endpoint, toolCall("delete_repo"), bearerHdr(tok))
	if status != http.StatusForbidden || body != "refused by policy: tools/call delete_repo by alice" {
		t.Errorf("delete_repo: %d %q", status, body)
	}
	// The name escaped in JSON is the same tool.
	status, _, body = rawPost(t, endpoint, strings.Replace(toolCall("delete_repo"), "delete_repo", `delete\u005frepo`, 1), bearerHdr(tok))
	if status != http.StatusForbidden {
		t.Errorf("delete_repo escaped: %d %q", status, body)
	}
	if n := up.requests.Load() - before; n != 0 {
		t.Errorf("the upstream got %d refused calls", n)
	}
	if status, _, body := rawPost(t, endpoint, toolCall("echo"), bearerHdr(tok)); status != http.StatusOK {
		t.Errorf("echo: %d %s", status, body)
	}
}

// TestAuthSDKClientFlow runs the go-sdk's OAuth client against mcp_auth:
// it discovers the metadata from the 401, runs the authorization code
// flow with PKCE at the authorization server, and calls a tool with the
// token it got; also with the endpoint written with a trailing slash,
// where the metadata the 401 names must give that URL as the resource
// (RFC 9728 §3.3), which the go-sdk checks.
func TestAuthSDKClientFlow(t *testing.T) {
	as := startAuthServer(t)
	var seen seenHeaders
	up := startUpstreamHandler(t, "up", seen.wrap(demo.Handler(demo.NewServer("up"), "/sse", nil)))
	port := freePort(t)
	loadCaddyfile(t, authSite(port, as, up.addr(), "\t\tscopes_supported mcp:read\n", ""))

	for _, endpoint := range []string{proxyURL(port) + "/mcp", proxyURL(port) + "/mcp/"} {
		ctx, cs := connectOAuth(t, endpoint, &sdkauth.AuthorizationCodeHandlerConfig{
			PreregisteredClient: &oauthex.ClientCredentials{ClientID: "e2e",
				ClientSecretAuth: &oauthex.ClientSecretAuth{ClientSecret: "e2e-secret"}},
			RedirectURL: "http://127.0.0.1:1/callback",
		})
		if got, err := echo(ctx, cs, "through oauth"); err != nil || got != "through oauth" {
			t.Fatalf("%s: echo: %q %v", endpoint, got, err)
		}
	}
	if as.tokenHits.Load() == 0 {
		t.Error("the client never asked the token endpoint")
	}
	users, authz := seen.all("X-User")
	if authz {
		t.Error("the upstream saw the client's Authorization header")
	}
	if len(users) == 0 || users[len(users)-1] != "alice" {
		t.Errorf("X-User = %q, want alice", users)
	}
}

// connectOAuth opens a session at endpoint with the go-sdk's OAuth client
// configured by cfg, which authorizes at once (followAuthorization); the
// context bounds the test's calls.
func connectOAuth(t *testing.T, endpoint string, cfg *sdkauth.AuthorizationCodeHandlerConfig) (context.Context, *mcp.ClientSession) {
	t.Helper()
	cfg.AuthorizationCodeFetcher = followAuthorization
	cfg.Client = &http.Client{Timeout: 10 * time.Second}
	handler, err := sdkauth.NewAuthorizationCodeHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	client := mcp.NewClient(&mcp.Implementation{Name: "e2e-oauth", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: endpoint, OAuthHandler: handler, MaxRetries: 1}, nil)
	if err != nil {
		t.Fatalf("connect to %s with OAuth: %v", endpoint, err)
	}
	t.Cleanup(func() { _ = cs.Close() })
	return ctx, cs
}

// followAuthorization is the go-sdk's AuthorizationCodeFetcher for an
// authorization server that approves at once: it follows the
// authorization URL and takes the code and state from the redirect.
func followAuthorization(ctx context.Context, args *sdkauth.AuthorizationArgs) (*sdkauth.AuthorizationResult, error) {
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Timeout: 10 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, args.URL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode != http.StatusFound {
		return nil, fmt.Errorf("authorize: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	return &sdkauth.AuthorizationResult{Code: loc.Query().Get("code"), State: loc.Query().Get("state")}, nil
}

// TestBasicAuthSessionBinding binds sessions to the principal of Caddy's
// own basic_auth: mcp_proxy reads {http.auth.user.id} whoever sets it.
func TestBasicAuthSessionBinding(t *testing.T) {
	up := startUpstream(t, "up", nil)
	port := freePort(t)
	hash := func(pw string) string {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return string(h)
	}
	loadCaddyfile(t, fmt.Sprintf(`:%d {
	basic_auth {
		alice %s
		bob %s
	}
	mcp_proxy %s
}
`, port, hash("alice-pw"), hash("bob-pw"), up.addr()))
	endpoint := proxyURL(port) + "/mcp"
	basic := func(user string) map[string]string {
		return map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+user+"-pw"))}
	}
	hdr := basic("alice")
	status, h, body := rawPost(t, endpoint, initializeBody, hdr)
	sid := h.Get("Mcp-Session-Id")
	if status != http.StatusOK || sid == "" {
		t.Fatalf("initialize as alice: %d %s", status, body)
	}
	for user, want := range map[string]int{"alice": http.StatusAccepted, "bob": http.StatusNotFound} {
		hdr := basic(user)
		hdr["Mcp-Session-Id"] = sid
		hdr["MCP-Protocol-Version"] = sessionVersion
		if status, _, body := rawPost(t, endpoint, notifyInitialized, hdr); status != want {
			t.Errorf("%s presents alice's session: %d, want %d (%s)", user, status, want, body)
		}
	}
}

// TestTracingPropagation checks that with Caddy's tracing on, the W3C
// trace context of a request reaches the upstream, in the same trace.
func TestTracingPropagation(t *testing.T) {
	t.Setenv("OTEL_TRACES_EXPORTER", "none")
	var seen seenHeaders
	up := startUpstreamHandler(t, "up", seen.wrap(demo.Handler(demo.NewServer("up"), "/sse", &mcp.StreamableHTTPOptions{Stateless: true})))
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(`:%d {
	tracing {
		span mcp
	}
	mcp_proxy %s {
		require_session off
	}
}
`, port, up.addr()))
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	hdr := map[string]string{"MCP-Protocol-Version": "2025-06-18", "traceparent": "00-" + traceID + "-00f067aa0ba902b7-01"}
	if status, _, body := rawPost(t, proxyURL(port)+"/mcp", toolCall("echo"), hdr); status != http.StatusOK {
		t.Fatalf("echo: %d %s", status, body)
	}
	parents, _ := seen.all("Traceparent")
	if len(parents) != 1 || !strings.HasPrefix(parents[0], "00-"+traceID+"-") || strings.Contains(parents[0], "00f067aa0ba902b7") {
		t.Errorf("traceparent upstream = %q, want trace %s with Caddy's span as parent", parents, traceID)
	}
}

// TestForwardAuthSessionBinding binds sessions to the user an external
// authentication service names through forward_auth, with mcp_proxy's
// principal set to the copied header; a client cannot forge the header.
func TestForwardAuthSessionBinding(t *testing.T) {
	authsvc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, ok := map[string]string{"alice-key": "alice", "bob-key": "bob"}[r.Header.Get("X-Api-Key")]
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Remote-User", user)
	}))
	t.Cleanup(authsvc.Close)
	up := startUpstream(t, "up", nil)
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(`:%d {
	forward_auth %s {
		uri /check
		copy_headers Remote-User
	}
	mcp_proxy %s {
		principal {http.request.header.Remote-User}
	}
}
`, port, strings.TrimPrefix(authsvc.URL, "http://"), up.addr()))
	endpoint := proxyURL(port) + "/mcp"
	status, h, body := rawPost(t, endpoint, initializeBody, map[string]string{"X-Api-Key": "alice-key"})
	sid := h.Get("Mcp-Session-Id")
	if status != http.StatusOK || sid == "" {
		t.Fatalf("initialize as alice: %d %s", status, body)
	}
	for _, c := range []struct {
		name string
		hdr  map[string]string
		want int
	}{
		{"alice", map[string]string{"X-Api-Key": "alice-key"}, http.StatusAccepted},
		{"bob", map[string]string{"X-Api-Key": "bob-key"}, http.StatusNotFound},
		{"bob claiming to be alice", map[string]string{"X-Api-Key": "bob-key", "Remote-User": "alice"}, http.StatusNotFound},
	} {
		c.hdr["Mcp-Session-Id"] = sid
		c.hdr["MCP-Protocol-Version"] = sessionVersion
		if status, _, body := rawPost(t, endpoint, notifyInitialized, c.hdr); status != c.want {
			t.Errorf("%s presents alice's session: %d, want %d (%s)", c.name, status, c.want, body)
		}
	}
}
