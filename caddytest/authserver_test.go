package caddytest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// authServer is an OAuth 2.1 authorization server on loopback for the
// tests: RFC 8414 metadata, a JWKS whose keys can be rotated or made
// unreachable, RFC 7591 dynamic registration, an authorization endpoint
// that grants every request to the user the test named, and a token
// endpoint (authorization code with PKCE, refresh token) issuing RS256
// JWTs for the requested resource.
type authServer struct {
	*httptest.Server
	t testing.TB

	mu        sync.Mutex
	keys      []signingKey // published; the last one signs
	codes     map[string]grant
	refreshes map[string]grant
	user      string // who the authorization endpoint grants to
	clients   map[string]bool
	// scopes lists the scope of each authorization request, in order.
	scopes []string

	jwksDown    atomic.Bool
	jwksHits    atomic.Int64
	tokenHits   atomic.Int64
	refreshHits atomic.Int64
	// expiresIn, when set, is the expires_in of the tokens issued;
	// expireNext makes the next token issued one that expired ten minutes
	// ago, whatever its expires_in says.
	expiresIn  atomic.Int64
	expireNext atomic.Bool
}

type signingKey struct {
	kid  string
	priv *rsa.PrivateKey
}

// grant is what an authorization code or refresh token stands for.
type grant struct {
	user, resource, scope, challenge string
}

func startAuthServer(t testing.TB) *authServer {
	t.Helper()
	as := &authServer{t: t, codes: map[string]grant{}, refreshes: map[string]grant{}, clients: map[string]bool{}, user: "alice"}
	as.rotate()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/oauth-authorization-server", as.metadata)
	mux.HandleFunc("GET /jwks", as.jwks)
	mux.HandleFunc("POST /register", as.register)
	mux.HandleFunc("GET /authorize", as.authorize)
	mux.HandleFunc("POST /token", as.token)
	as.Server = httptest.NewServer(mux)
	t.Cleanup(as.Close)
	return as
}

// issuer is the server's issuer identifier.
func (as *authServer) issuer() string { return as.URL }

// rotate publishes a new signing key, which signs from now on; the old
// keys stay published.
func (as *authServer) rotate() string {
	priv := as.newKey()
	as.mu.Lock()
	defer as.mu.Unlock()
	kid := "k" + string(rune('0'+len(as.keys)))
	as.keys = append(as.keys, signingKey{kid: kid, priv: priv})
	return kid
}

// newKey generates an RSA key.
func (as *authServer) newKey() *rsa.PrivateKey {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		as.t.Fatal(err)
	}
	return priv
}

// mint signs claims with the current key (alg RS256, typ JWT).
func (as *authServer) mint(claims map[string]any) string {
	as.mu.Lock()
	k := as.keys[len(as.keys)-1]
	as.mu.Unlock()
	return signWith(as.t, jose.RS256, jose.JSONWebKey{Key: k.priv, KeyID: k.kid}, claims)
}

// signWith signs claims as a compact JWT.
func signWith(t testing.TB, alg jose.SignatureAlgorithm, key jose.JSONWebKey, claims map[string]any) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// claims are the claims of a valid token for user at resource with scope.
func (as *authServer) claims(user, resource, scope string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": as.issuer(), "sub": user, "aud": resource, "scope": scope,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"email": user + "@example.com",
	}
}

// tokenFor mints a valid token.
func (as *authServer) tokenFor(user, resource, scope string) string {
	return as.mint(as.claims(user, resource, scope))
}

func (as *authServer) metadata(w http.ResponseWriter, _ *http.Request) {
	writeJSONTest(w, map[string]any{
		"issuer":                                as.issuer(),
		"authorization_endpoint":                as.URL + "/authorize",
		"token_endpoint":                        as.URL + "/token",
		"jwks_uri":                              as.URL + "/jwks",
		"registration_endpoint":                 as.URL + "/register",
		"response_types_supported":              []string{"code"},
		"grant_types_supported":                 []string{"authorization_code", "refresh_token"},
		"code_challenge_methods_supported":      []string{"S256"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_post"},
		"scopes_supported":                      []string{"mcp:read", "mcp:admin", "offline_access"},
	})
}

func (as *authServer) jwks(w http.ResponseWriter, _ *http.Request) {
	as.jwksHits.Add(1)
	if as.jwksDown.Load() {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	as.mu.Lock()
	var set jose.JSONWebKeySet
	for _, k := range as.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: &k.priv.PublicKey, KeyID: k.kid, Algorithm: "RS256", Use: "sig"})
	}
	as.mu.Unlock()
	w.Header().Set("Cache-Control", "max-age=3600")
	writeJSONTest(w, set)
}

// register registers a client (RFC 7591) under a new client_id.
func (as *authServer) register(w http.ResponseWriter, r *http.Request) {
	var md map[string]any
	if err := json.NewDecoder(r.Body).Decode(&md); err != nil {
		http.Error(w, "bad registration", http.StatusBadRequest)
		return
	}
	id := rand.Text()
	as.mu.Lock()
	as.clients[id] = true
	as.mu.Unlock()
	md["client_id"] = id
	md["token_endpoint_auth_method"] = "none"
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(md)
}

// authorize grants the request to the current user at once, redirecting
// with a code bound to the PKCE challenge and the resource.
func (as *authServer) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("response_type") != "code" || q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" {
		http.Error(w, "bad authorization request", http.StatusBadRequest)
		return
	}
	code := rand.Text()
	as.mu.Lock()
	as.scopes = append(as.scopes, q.Get("scope"))
	as.codes[code] = grant{user: as.user, resource: q.Get("resource"), scope: q.Get("scope"), challenge: q.Get("code_challenge")}
	as.mu.Unlock()
	to, err := url.Parse(q.Get("redirect_uri"))
	if err != nil {
		http.Error(w, "bad redirect_uri", http.StatusBadRequest)
		return
	}
	v := to.Query()
	v.Set("code", code)
	v.Set("state", q.Get("state"))
	to.RawQuery = v.Encode()
	http.Redirect(w, r, to.String(), http.StatusFound)
}

// token exchanges a code (checking the PKCE verifier) or a refresh token
// for a new access token.
func (as *authServer) token(w http.ResponseWriter, r *http.Request) {
	as.tokenHits.Add(1)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	as.mu.Lock()
	var g grant
	var ok bool
	switch r.PostForm.Get("grant_type") {
	case "authorization_code":
		code := r.PostForm.Get("code")
		g, ok = as.codes[code]
		delete(as.codes, code)
		sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
		ok = ok && base64.RawURLEncoding.EncodeToString(sum[:]) == g.challenge
	case "refresh_token":
		as.refreshHits.Add(1)
		g, ok = as.refreshes[r.PostForm.Get("refresh_token")]
	}
	// A resource named at the token endpoint is the one authorized (RFC
	// 8707 §2.2).
	ok = ok && (r.PostForm.Get("resource") == "" || r.PostForm.Get("resource") == g.resource)
	refresh := rand.Text()
	if ok {
		as.refreshes[refresh] = g
	}
	as.mu.Unlock()
	if !ok {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"invalid_grant"}`))
		return
	}
	claims := as.claims(g.user, g.resource, g.scope)
	if as.expireNext.Swap(false) {
		claims["exp"] = time.Now().Add(-10 * time.Minute).Unix()
	}
	expiresIn := as.expiresIn.Load()
	if expiresIn == 0 {
		expiresIn = 3600
	}
	writeJSONTest(w, map[string]any{
		"access_token": as.mint(claims), "token_type": "Bearer",
		"expires_in": expiresIn, "refresh_token": refresh, "scope": g.scope,
	})
}

func writeJSONTest(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// unsignedToken is claims under {"alg":"none"} with an empty signature.
func unsignedToken(claims map[string]any) string {
	head := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	body, _ := json.Marshal(claims)
	return head + "." + base64.RawURLEncoding.EncodeToString(body) + "."
}

// tampered is tok with its payload replaced by claims, keeping the
// original signature.
func tampered(tok string, claims map[string]any) string {
	parts := strings.Split(tok, ".")
	body, _ := json.Marshal(claims)
	parts[1] = base64.RawURLEncoding.EncodeToString(body)
	return strings.Join(parts, ".")
}
