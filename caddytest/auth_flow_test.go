package caddytest

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	sdkauth "github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/modelcontextprotocol/go-sdk/oauthex"

	"github.com/mcpgate/mcpgate/internal/demo"
)

// TestAuthSDKClientUnderPath runs the go-sdk's OAuth client through the
// whole flow against mcp_auth configured as the README shows, under /mcp
// with a matcher that covers the path-suffixed metadata: the 401 names the
// metadata, the client registers dynamically and authorizes for the scope
// the 401 names; a tool needing another scope gets 403 and the client
// steps up; a token the client finds expired is refreshed, and one only
// the server finds expired (401 invalid_token) makes the client authorize
// again, all in the same session; another user's token presenting that
// session gets 404.
func TestAuthSDKClientUnderPath(t *testing.T) {
	as := startAuthServer(t)
	// oauth2 takes a token for expired 10s before its expiry: these
	// are refreshed a second after they are issued.
	as.expiresIn.Store(11)
	var seen seenHeaders
	up := startUpstreamHandler(t, "up", seen.wrap(demo.Handler(demo.NewServer("up"), "/sse", nil)))
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(`:%d {
	@auth path /mcp* /.well-known/oauth-protected-resource*
	mcp_auth @auth {
		issuer %s
		jwks_url %s/jwks
		require_scope mcp:read
		scope tools/call:add mcp:admin
	}
	mcp_proxy /mcp* %s {
		session_key shared-test-passphrase-of-32-characters
		header_up X-User {http.auth.user.id}
	}
}
`, port, as.issuer(), as.URL, up.addr()))
	endpoint := proxyURL(port) + "/mcp"

	ctx, cs := connectOAuth(t, endpoint, &sdkauth.AuthorizationCodeHandlerConfig{
		DynamicClientRegistrationConfig: &sdkauth.DynamicClientRegistrationConfig{Metadata: &oauthex.ClientRegistrationMetadata{
			ClientName: "e2e-dcr", RedirectURIs: []string{"http://127.0.0.1:1/callback"},
			GrantTypes: []string{"authorization_code", "refresh_token"}, TokenEndpointAuthMethod: "none",
		}},
	})
	authorizations := func() ([]string, int) {
		as.mu.Lock()
		defer as.mu.Unlock()
		return slices.Clone(as.scopes), len(as.clients)
	}
	if got, clients := authorizations(); len(got) != 1 || got[0] != "mcp:read" || clients != 1 {
		t.Fatalf("authorized for %q with %d registered clients, want once for mcp:read after a registration", got, clients)
	}
	sid := cs.ID()
	if got, err := echo(ctx, cs, "authorized"); err != nil || got != "authorized" {
		t.Fatalf("echo: %q %v", got, err)
	}

	// Step-up: add needs mcp:admin.
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "add", Arguments: map[string]any{"a": 2, "b": 40}})
	if err != nil || res.IsError {
		t.Fatalf("add after step-up: %+v %v", res, err)
	}
	got, _ := authorizations()
	if len(got) != 2 || !slices.Equal(slices.Sorted(slices.Values(strings.Fields(got[1]))), []string{"mcp:admin", "mcp:read"}) {
		t.Errorf("authorizations %q, want a second one for mcp:read and mcp:admin", got)
	}

	// The client refreshes a token it holds for expired.
	time.Sleep(1100 * time.Millisecond)
	refreshes := as.refreshHits.Load()
	if got, err := echo(ctx, cs, "refreshed"); err != nil || got != "refreshed" {
		t.Fatalf("echo with a refreshed token: %q %v", got, err)
	}
	if as.refreshHits.Load() == refreshes {
		t.Error("the token was not refreshed")
	}

	// The refreshed token has expired for the server: 401 invalid_token,
	// and the client authorizes again.
	as.expireNext.Store(true)
	time.Sleep(1100 * time.Millisecond)
	if got, err := echo(ctx, cs, "reauthorized"); err != nil || got != "reauthorized" {
		t.Fatalf("echo after a token expired at the server: %q %v", got, err)
	}
	if got, _ := authorizations(); len(got) != 3 {
		t.Errorf("authorizations %q, want a third after the expired token", got)
	}
	if cs.ID() != sid {
		t.Error("the session changed")
	}
	users, authz := seen.all("X-User")
	if authz || len(users) == 0 || slices.ContainsFunc(users, func(u string) bool { return u != "alice" }) {
		t.Errorf("upstream saw X-User %q (Authorization: %v), want only alice", users, authz)
	}

	// The session is alice's.
	for user, want := range map[string]int{"alice": http.StatusOK, "bob": http.StatusNotFound} {
		hdr := bearerHdr(as.tokenFor(user, endpoint, "mcp:read"))
		hdr["Mcp-Session-Id"] = sid
		if status, _, body := rawPost(t, endpoint, toolsListBody, hdr); status != want {
			t.Errorf("%s presents alice's session: %d, want %d (%s)", user, status, want, body)
		}
	}
}

// TestAuthUnderHandlePath puts mcp_auth inside handle_path blocks, one MCP
// server under /mcp and another under /other on one site: the resource
// of each is the URL its clients use, before handle_path strips the
// prefix, so the 401 points at the path-suffixed metadata, that metadata
// names /mcp, and a token for one server is refused at the other (a token
// for the site's root too).
func TestAuthUnderHandlePath(t *testing.T) {
	as := startAuthServer(t)
	up := startUpstream(t, "up", &mcp.StreamableHTTPOptions{Stateless: true})
	port := freePort(t)
	authBlock := fmt.Sprintf("mcp_auth {\n\t\t\tissuer %s\n\t\t\tjwks_url %s/jwks\n\t\t}", as.issuer(), as.URL)
	loadCaddyfile(t, fmt.Sprintf(`:%[1]d {
	handle /.well-known/oauth-protected-resource* {
		%[2]s
	}
	handle_path /mcp* {
		%[2]s
		mcp_proxy %[3]s {
			require_session off
		}
	}
	handle_path /other* {
		%[2]s
		mcp_proxy %[3]s {
			require_session off
		}
	}
}
`, port, authBlock, up.addr()))
	base := proxyURL(port)
	endpoint := base + "/mcp"

	status, h, body := rawPost(t, endpoint, toolCall("echo"), bearerHdr(""))
	mdURL := base + "/.well-known/oauth-protected-resource/mcp"
	if chal := h.Get("WWW-Authenticate"); status != http.StatusUnauthorized || !strings.Contains(chal, `resource_metadata="`+mdURL+`"`) {
		t.Fatalf("no token: %d %q %s, want 401 naming %s", status, chal, body, mdURL)
	}
	req, _ := http.NewRequest(http.MethodGet, mdURL, nil)
	if status, _, body := do(t, req); status != http.StatusOK || !strings.Contains(body, `"resource":"`+endpoint+`"`) {
		t.Errorf("metadata: %d %s, want resource %s", status, body, endpoint)
	}
	for _, c := range []struct {
		name, url, aud string
		want           int
	}{
		{"/mcp's token at /mcp", endpoint, endpoint, http.StatusOK},
		{"/mcp's token at /other", base + "/other", endpoint, http.StatusUnauthorized},
		{"the root's token at /mcp", endpoint, base, http.StatusUnauthorized},
		{"the root's token at /other", base + "/other", base, http.StatusUnauthorized},
	} {
		if status, _, body := rawPost(t, c.url, toolCall("echo"), bearerHdr(as.tokenFor("alice", c.aud, ""))); status != c.want {
			t.Errorf("%s: %d, want %d (%s)", c.name, status, c.want, body)
		}
	}
}
