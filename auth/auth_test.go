package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const resource = "https://mcp.example.com/mcp"

type issuer struct {
	t   *testing.T
	key any
	kid string
	alg jose.SignatureAlgorithm
}

func newRSAIssuer(t *testing.T, kid string) *issuer {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &issuer{t: t, key: k, kid: kid, alg: jose.RS256}
}

func (i *issuer) public() jose.JSONWebKey {
	var pub any
	switch k := i.key.(type) {
	case *rsa.PrivateKey:
		pub = &k.PublicKey
	case *ecdsa.PrivateKey:
		pub = &k.PublicKey
	}
	return jose.JSONWebKey{Key: pub, KeyID: i.kid, Algorithm: string(i.alg), Use: "sig"}
}

func (i *issuer) token(claims map[string]any) string {
	i.t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: i.alg, Key: jose.JSONWebKey{Key: i.key, KeyID: i.kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		i.t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		i.t.Fatal(err)
	}
	return tok
}

func claims(now time.Time, over map[string]any) map[string]any {
	c := map[string]any{
		"iss": "https://as.example.com", "sub": "alice", "aud": resource,
		"exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "scope": "mcp:read mcp:tools",
	}
	for k, v := range over {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func TestVerifyJWT(t *testing.T) {
	now := time.Now()
	iss := newRSAIssuer(t, "k1")
	other := newRSAIssuer(t, "k1")
	v := &Verifier{Keys: NewStaticKeySet([]jose.JSONWebKey{iss.public()}), Issuers: []string{"https://as.example.com"}}
	ok := iss.token(claims(now, nil))
	p, err := v.Verify(context.Background(), ok, []string{resource}, now)
	if err != nil || p.ID != "alice" || !p.HasScopes([]string{"mcp:tools"}) || p.Claims["iss"] != "https://as.example.com" {
		t.Fatalf("valid token: %+v %v", p, err)
	}
	parts := strings.Split(ok, ".")
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"mallory","aud":"`+resource+`","exp":9999999999}`)) + "." + parts[2]
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."
	// HS256 keyed with the RSA public key's bytes: the classic algorithm
	// confusion.
	der, _ := x509.MarshalPKIXPublicKey(iss.public().Key)
	hs, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: der}, nil)
	confused, _ := jwt.Signed(hs).Claims(claims(now, nil)).Serialize()
	for name, tok := range map[string]string{
		"expired":         iss.token(claims(now, map[string]any{"exp": now.Add(-time.Hour).Unix()})),
		"not yet valid":   iss.token(claims(now, map[string]any{"nbf": now.Add(time.Hour).Unix()})),
		"no expiry":       iss.token(claims(now, map[string]any{"exp": nil})),
		"wrong audience":  iss.token(claims(now, map[string]any{"aud": "https://other.example.com/mcp"})),
		"wrong issuer":    iss.token(claims(now, map[string]any{"iss": "https://evil.example.com"})),
		"other key":       other.token(claims(now, nil)),
		"tampered":        tampered,
		"alg none":        none,
		"hmac confusion":  confused,
		"garbage":         "not.a.token",
		"opaque, no intr": "opaque-token",
	} {
		_, err := v.Verify(context.Background(), tok, []string{resource}, now)
		var ae *Error
		if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized || ae.Code != "invalid_token" {
			t.Errorf("%s: %v", name, err)
		}
		if ae != nil && strings.Contains(ae.Description, tok) {
			t.Errorf("%s: the error holds the token", name)
		}
	}
	// Leeway: expired 10s ago passes with the default 30s.
	if _, err := v.Verify(context.Background(), iss.token(claims(now, map[string]any{"exp": now.Add(-10 * time.Second).Unix()})), []string{resource}, now); err != nil {
		t.Errorf("within leeway: %v", err)
	}
	if _, err := v.Verify(context.Background(), "", []string{resource}, now); err != ErrNoToken {
		t.Errorf("no token: %v", err)
	}
	v.RequiredScopes = []string{"mcp:admin"}
	_, err = v.Verify(context.Background(), ok, []string{resource}, now)
	var ae *Error
	if !errors.As(err, &ae) || ae.Status != http.StatusForbidden || ae.Code != "insufficient_scope" || ae.Scope != "mcp:admin" {
		t.Errorf("insufficient scope: %v", err)
	}
	// The resource's scopes the token holds follow, for a client that
	// authorizes again for exactly those named to keep them.
	v.KnownScopes = []string{"mcp:admin", "mcp:tools", "mcp:other"}
	_, err = v.Verify(context.Background(), ok, []string{resource}, now)
	if !errors.As(err, &ae) || ae.Status != http.StatusForbidden || ae.Scope != "mcp:admin mcp:tools" {
		t.Errorf("insufficient scope with known scopes: %v, scope %q", err, ae.Scope)
	}
}

func TestVerifyECAndClaim(t *testing.T) {
	now := time.Now()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	iss := &issuer{t: t, key: k, kid: "ec", alg: jose.ES256}
	v := &Verifier{Keys: NewStaticKeySet([]jose.JSONWebKey{iss.public()}), PrincipalClaim: "email"}
	p, err := v.Verify(context.Background(), iss.token(claims(now, map[string]any{"email": "alice@example.com", "scope": nil, "scp": []any{"a", "b"}})), []string{resource}, now)
	if err != nil || p.ID != "alice@example.com" || !p.HasScopes([]string{"a", "b"}) {
		t.Fatalf("%+v %v", p, err)
	}
	// An algorithm outside the allow-list is refused.
	v.Algorithms = []jose.SignatureAlgorithm{jose.RS256}
	if _, err := v.Verify(context.Background(), iss.token(claims(now, nil)), []string{resource}, now); err == nil {
		t.Error("ES256 accepted with only RS256 allowed")
	}
}

// TestVerifyRefusesTokenWithoutPrincipal: a token whose principal claim
// is missing, empty or not a string is refused as invalid_token naming
// the claim. An empty id would be "no principal" to the session binding,
// which every such token would share with anonymous requests, and a
// number decodes to a float64, in which distinct large ids are equal.
func TestVerifyRefusesTokenWithoutPrincipal(t *testing.T) {
	now := time.Now()
	iss := newRSAIssuer(t, "k1")
	for _, c := range []struct {
		claim string
		over  map[string]any
		want  string
	}{
		{"", map[string]any{"sub": nil}, "the token has no sub"},
		{"", map[string]any{"sub": ""}, "the token has no sub"},
		{"email", nil, "the token has no email"},
		{"uid", map[string]any{"uid": int64(1234567890123456789)}, "the token's uid is not a string"},
		{"uid", map[string]any{"uid": 1234567}, "the token's uid is not a string"},
		{"groups", map[string]any{"groups": []string{"a"}}, "the token's groups is not a string"},
	} {
		v := &Verifier{Keys: NewStaticKeySet([]jose.JSONWebKey{iss.public()}), PrincipalClaim: c.claim}
		p, err := v.Verify(context.Background(), iss.token(claims(now, c.over)), []string{resource}, now)
		var ae *Error
		if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized || ae.Code != "invalid_token" || ae.Description != c.want {
			t.Errorf("claim %q, %v: %+v %v, want invalid_token %q", c.claim, c.over, p, err, c.want)
		}
	}
	v := &Verifier{Keys: NewStaticKeySet([]jose.JSONWebKey{iss.public()}), PrincipalClaim: "uid"}
	if p, err := v.Verify(context.Background(), iss.token(claims(now, map[string]any{"uid": "1234567890123456789"})), []string{resource}, now); err != nil || p.ID != "1234567890123456789" {
		t.Errorf("a string uid: %+v %v", p, err)
	}
}

// jwksServer serves a key set that the test can change, counting fetches
// and failing on demand.
type jwksServer struct {
	*httptest.Server
	keys    atomic.Value // []jose.JSONWebKey
	fetches atomic.Int64
	down    atomic.Bool
}

func newJWKS(t *testing.T, keys ...jose.JSONWebKey) *jwksServer {
	s := &jwksServer{}
	s.keys.Store(keys)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		if s.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: s.keys.Load().([]jose.JSONWebKey)})
	}))
	t.Cleanup(s.Close)
	return s
}

func TestJWKSRotationAndStale(t *testing.T) {
	now := time.Now()
	k1, k2 := newRSAIssuer(t, "k1"), newRSAIssuer(t, "k2")
	srv := newJWKS(t, k1.public())
	v := &Verifier{Keys: &KeySet{URL: srv.URL, MinRefresh: time.Minute, Refresh: time.Hour, MaxStale: 2 * time.Hour}}
	ctx := context.Background()
	if _, err := v.Verify(ctx, k1.token(claims(now, nil)), []string{resource}, now); err != nil {
		t.Fatalf("k1: %v", err)
	}
	// A second token with the cached key costs no fetch.
	if _, err := v.Verify(ctx, k1.token(claims(now, nil)), []string{resource}, now); err != nil || srv.fetches.Load() != 1 {
		t.Fatalf("cached k1: %v, %d fetches", err, srv.fetches.Load())
	}
	// The issuer rotates to k2: a token with the unknown kid fetches the
	// set again, once per MinRefresh at most.
	srv.keys.Store([]jose.JSONWebKey{k1.public(), k2.public()})
	if _, err := v.Verify(ctx, k2.token(claims(now, nil)), []string{resource}, now.Add(2*time.Minute)); err != nil {
		t.Fatalf("rotated k2: %v", err)
	}
	unknown := newRSAIssuer(t, "k3")
	for range 5 {
		if _, err := v.Verify(ctx, unknown.token(claims(now, nil)), []string{resource}, now.Add(150*time.Second)); err == nil {
			t.Fatal("unknown key accepted")
		}
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Errorf("%d fetches, want 2: the unknown key came within MinRefresh of the last fetch", n)
	}
	if _, err := v.Verify(ctx, unknown.token(claims(now, nil)), []string{resource}, now.Add(200*time.Second)); err == nil {
		t.Fatal("unknown key accepted")
	}
	if n := srv.fetches.Load(); n != 3 {
		t.Errorf("%d fetches, want 3: one more for the unknown key past MinRefresh", n)
	}
	// The JWKS server goes down: cached keys keep working past their
	// refresh, within MaxStale; then they do not.
	srv.down.Store(true)
	later := now.Add(2*time.Minute + time.Hour + 30*time.Minute)
	if _, err := v.Verify(ctx, k1.token(claims(later, nil)), []string{resource}, later); err != nil {
		t.Errorf("stale key while the JWKS is down: %v", err)
	}
	muchLater := now.Add(5 * time.Hour)
	if _, err := v.Verify(ctx, k1.token(claims(muchLater, nil)), []string{resource}, muchLater); err == nil {
		t.Error("keys served past MaxStale")
	}
}

// A client that goes away while the JWKS is being fetched for its token
// stops waiting, but the fetch goes on for the others: the next token is
// verified with the keys it brought, without another fetch.
func TestJWKSFetchOutlivesItsCaller(t *testing.T) {
	now := time.Now()
	iss := newRSAIssuer(t, "k1")
	arrived, release := make(chan struct{}), make(chan struct{})
	var fetches atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fetches.Add(1) == 1 {
			close(arrived)
			<-release
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{iss.public()}})
	}))
	defer srv.Close()
	v := &Verifier{Keys: &KeySet{URL: srv.URL, MinRefresh: time.Minute}}
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := v.Verify(ctx, iss.token(claims(now, nil)), []string{resource}, now)
		first <- err
	}()
	<-arrived
	cancel()
	if err := <-first; err == nil {
		t.Error("the caller that went away was answered with a principal")
	}
	close(release)
	if _, err := v.Verify(context.Background(), iss.token(claims(now, map[string]any{"jti": "2"})), []string{resource}, now); err != nil {
		t.Errorf("the next token, within MinRefresh: %v", err)
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
}

// TestKeySetPrefersExactKid: a static key without a kid does not hide
// the JWKS: a token naming a kid no static key has is checked against the
// JWKS's key of that kid, and falls back on the kid-less static key only
// when the JWKS has none; a static key of the token's kid is used without
// fetching the JWKS.
func TestKeySetPrefersExactKid(t *testing.T) {
	now := time.Now()
	jwksIss, kidless, named := newRSAIssuer(t, "k1"), newRSAIssuer(t, ""), newRSAIssuer(t, "s1")
	srv := newJWKS(t, jwksIss.public())
	ks := &KeySet{URL: srv.URL}
	ks.AddStatic(kidless.public(), named.public())
	v := &Verifier{Keys: ks, NoCache: true}
	ctx := context.Background()
	if _, err := v.Verify(ctx, named.token(claims(now, nil)), []string{resource}, now); err != nil || srv.fetches.Load() != 0 {
		t.Errorf("static key of the token's kid: %v, %d JWKS fetches", err, srv.fetches.Load())
	}
	if _, err := v.Verify(ctx, jwksIss.token(claims(now, nil)), []string{resource}, now); err != nil || srv.fetches.Load() != 1 {
		t.Errorf("JWKS key k1 beside a kid-less static key: %v, %d JWKS fetches", err, srv.fetches.Load())
	}
	other := &issuer{t: t, key: kidless.key, kid: "elsewhere", alg: jose.RS256}
	if _, err := v.Verify(ctx, other.token(claims(now, nil)), []string{resource}, now); err != nil {
		t.Errorf("kid-less static key, token naming a kid nobody has: %v", err)
	}
	stranger := newRSAIssuer(t, "k1")
	if _, err := v.Verify(ctx, stranger.token(claims(now, nil)), []string{resource}, now); err == nil {
		t.Error("a token of an unknown key naming the JWKS's kid accepted")
	}
}

// TestKeysBoundToIssuers: with several issuers, a key verifies only the
// tokens of the issuers it is bound to: one issuer's key signing a token
// that claims another issuer is refused, whether the key is static or
// from the JWKS; kid-less static keys of different issuers are told apart
// by the token's issuer; and the principal is qualified by the issuer, so
// that the two issuers' "alice" are two principals.
func TestKeysBoundToIssuers(t *testing.T) {
	now := time.Now()
	const issA, issB = "https://a.example.com", "https://b.example.com"
	jwksA, keyB, kidlessA, kidlessB := newRSAIssuer(t, "a1"), newRSAIssuer(t, "b1"), newRSAIssuer(t, ""), newRSAIssuer(t, "")
	srv := newJWKS(t, jwksA.public())
	ks := &KeySet{URL: srv.URL, Issuers: []string{issA}}
	ks.AddStaticFor([]string{issB}, keyB.public())
	v := &Verifier{Keys: ks, Issuers: []string{issA, issB}, NoCache: true}
	kidless := &KeySet{}
	kidless.AddStaticFor([]string{issA}, kidlessA.public())
	kidless.AddStaticFor([]string{issB}, kidlessB.public())
	vKidless := &Verifier{Keys: kidless, Issuers: []string{issA, issB}, NoCache: true}
	ctx := context.Background()
	for _, c := range []struct {
		name string
		v    *Verifier
		key  *issuer
		iss  string
		id   string // "" for refused
	}{
		{"A's JWKS key, iss A", v, jwksA, issA, issA + " alice"},
		{"B's static key, iss B", v, keyB, issB, issB + " alice"},
		{"B's static key, iss A", v, keyB, issA, ""},
		{"A's JWKS key, iss B", v, jwksA, issB, ""},
		{"A's kid-less key, iss A", vKidless, kidlessA, issA, issA + " alice"},
		{"B's kid-less key, iss B", vKidless, kidlessB, issB, issB + " alice"},
		{"B's kid-less key, iss A", vKidless, kidlessB, issA, ""},
	} {
		p, err := c.v.Verify(ctx, c.key.token(claims(now, map[string]any{"iss": c.iss})), []string{resource}, now)
		switch {
		case c.id == "" && err == nil:
			t.Errorf("%s: accepted as %q", c.name, p.ID)
		case c.id != "" && (err != nil || p.ID != c.id):
			t.Errorf("%s: %+v %v, want principal %q", c.name, p, err, c.id)
		}
	}
	// One issuer: the principal is the claim alone.
	one := &Verifier{Keys: NewStaticKeySet([]jose.JSONWebKey{keyB.public()}), Issuers: []string{issB}}
	if p, err := one.Verify(ctx, keyB.token(claims(now, map[string]any{"iss": issB})), []string{resource}, now); err != nil || p.ID != "alice" {
		t.Errorf("one issuer: %+v %v, want principal alice", p, err)
	}
}

func TestJWKSRefusesSymmetricKeys(t *testing.T) {
	now := time.Now()
	secret := []byte("0123456789abcdef0123456789abcdef")
	srv := newJWKS(t, jose.JSONWebKey{Key: secret, KeyID: "s", Algorithm: "HS256"})
	v := &Verifier{Keys: &KeySet{URL: srv.URL}, Algorithms: []jose.SignatureAlgorithm{jose.HS256}}
	s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: jose.JSONWebKey{Key: secret, KeyID: "s"}}, nil)
	tok, _ := jwt.Signed(s).Claims(claims(now, nil)).Serialize()
	if _, err := v.Verify(context.Background(), tok, []string{resource}, now); err == nil {
		t.Error("HMAC key from a JWKS accepted")
	}
	// A static secret, configured on purpose, verifies HS256.
	v.Keys = NewStaticKeySet([]jose.JSONWebKey{{Key: secret, KeyID: "s", Algorithm: "HS256"}})
	if _, err := v.Verify(context.Background(), tok, []string{resource}, now); err != nil {
		t.Errorf("static HMAC secret: %v", err)
	}
}

func TestIntrospection(t *testing.T) {
	now := time.Now()
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		id, secret, _ := r.BasicAuth()
		if id != "rs" || secret != "pw" || r.FormValue("token") == "" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		switch r.FormValue("token") {
		case "good":
			_, _ = w.Write([]byte(`{"active":true,"sub":"bob","scope":"mcp:read","aud":["` + resource + `"],"exp":` + jsonInt(now.Add(30*time.Second).Unix()) + `}`))
		case "other-aud":
			_, _ = w.Write([]byte(`{"active":true,"sub":"bob","aud":"https://x.example"}`))
		default:
			_, _ = w.Write([]byte(`{"active":false}`))
		}
	}))
	defer srv.Close()
	v := &Verifier{Introspection: &Introspector{URL: srv.URL, ClientID: "rs", ClientSecret: "pw", CacheTTL: time.Minute}}
	ctx := context.Background()
	for range 3 {
		p, err := v.Verify(ctx, "good", []string{resource}, now)
		if err != nil || p.ID != "bob" || !p.HasScopes([]string{"mcp:read"}) {
			t.Fatalf("good: %+v %v", p, err)
		}
	}
	if calls.Load() != 1 {
		t.Errorf("%d introspections for one token, want 1 (cached)", calls.Load())
	}
	// A result is cached for the resource it was checked for: the token
	// presented to another resource is introspected again, and refused.
	if p, err := v.Verify(ctx, "good", []string{"https://other.example/mcp"}, now); err == nil || calls.Load() != 2 {
		t.Errorf("cached token for another resource: %+v %v, %d calls", p, err, calls.Load())
	}
	calls.Store(1)
	// The cache never outlives the token (30s here, though CacheTTL is 1m).
	if _, err := v.Verify(ctx, "good", []string{resource}, now.Add(40*time.Second)); err == nil || calls.Load() != 2 {
		t.Errorf("past the token's expiry: %v, %d calls", err, calls.Load())
	}
	for _, tok := range []string{"revoked", "other-aud"} {
		if _, err := v.Verify(ctx, tok, []string{resource}, now); err == nil {
			t.Errorf("%s accepted", tok)
		}
	}
}

// TestIntrospectionPrincipalClaim: the principal of an introspected
// token is its answer's PrincipalClaim, as for a JWT; an answer without
// it (RFC 7662 makes sub optional: a client-credentials token often has
// none) is refused, not taken as an empty principal all such tokens
// would share.
func TestIntrospectionPrincipalClaim(t *testing.T) {
	now := time.Now()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch tok := r.FormValue("token"); tok {
		case "user":
			_, _ = w.Write([]byte(`{"active":true,"sub":"u-123","username":"alice","aud":"` + resource + `"}`))
		case "numeric":
			_, _ = w.Write([]byte(`{"active":true,"sub":"u-1","uid":12345678901234567,"aud":"` + resource + `"}`))
		default:
			_, _ = w.Write([]byte(`{"active":true,"client_id":"` + tok + `","aud":"` + resource + `"}`))
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	for _, c := range []struct{ claim, token, id, err string }{
		{"username", "user", "alice", ""},
		{"", "user", "u-123", ""},
		{"", "client-a", "", "the token has no sub"},
		{"client_id", "client-a", "client-a", ""},
		{"uid", "numeric", "", "the token's uid is not a string"},
	} {
		v := &Verifier{Introspection: &Introspector{URL: srv.URL}, PrincipalClaim: c.claim}
		p, err := v.Verify(ctx, c.token, []string{resource}, now)
		switch {
		case c.err == "" && (err != nil || p.ID != c.id):
			t.Errorf("claim %q, token %s: %+v %v, want principal %q", c.claim, c.token, p, err, c.id)
		case c.err != "" && (err == nil || err.Error() != c.err):
			t.Errorf("claim %q, token %s: %+v %v, want %q", c.claim, c.token, p, err, c.err)
		}
	}
}

// TestFetchErrorsStayOutOfDescriptions: when the introspection endpoint
// or the JWKS cannot be reached, the client's description is fixed; the
// cause, for the operator's log, names the endpoint without its query or
// user info, where a key may sit.
func TestFetchErrorsStayOutOfDescriptions(t *testing.T) {
	now := time.Now()
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close() // nothing listens there any more
	secretURL := strings.Replace(dead.URL, "http://", "http://user:S3CRET@", 1) + "/internal?api_key=S3CRET"
	ctx := context.Background()
	iss := newRSAIssuer(t, "k1")
	for _, c := range []struct {
		name  string
		v     *Verifier
		token string
		want  string
	}{
		{"introspection", &Verifier{Introspection: &Introspector{URL: secretURL}}, "opaque", "the token could not be checked"},
		{"JWKS", &Verifier{Keys: &KeySet{URL: secretURL}}, iss.token(claims(now, nil)), "no key for the token's key id"},
	} {
		_, err := c.v.Verify(ctx, c.token, []string{resource}, now)
		var ae *Error
		if !errors.As(err, &ae) || ae.Description != c.want || ae.Cause == nil {
			t.Fatalf("%s: %#v, want %q with a cause", c.name, err, c.want)
		}
		if cause := ae.Cause.Error(); strings.Contains(cause, "S3CRET") || !strings.Contains(cause, strings.TrimPrefix(dead.URL, "http://")+"/internal") {
			t.Errorf("%s: cause %q, want the endpoint without its query and user info", c.name, cause)
		}
	}
}

func jsonInt(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestMetadataAndChallenge(t *testing.T) {
	if got := MetadataURL("https://mcp.example.com/mcp"); got != "https://mcp.example.com/.well-known/oauth-protected-resource/mcp" {
		t.Errorf("MetadataURL: %s", got)
	}
	if got := MetadataURL("https://mcp.example.com/mcp/"); got != "https://mcp.example.com/.well-known/oauth-protected-resource/mcp/" {
		t.Errorf("MetadataURL with a trailing slash: %s", got)
	}
	for _, root := range []string{"https://mcp.example.com", "https://mcp.example.com/"} {
		if got := MetadataURL(root); got != "https://mcp.example.com/.well-known/oauth-protected-resource" {
			t.Errorf("MetadataURL root %s: %s", root, got)
		}
	}
	if p, ok := ResourcePathOf("/.well-known/oauth-protected-resource/mcp"); !ok || p != "/mcp" {
		t.Errorf("ResourcePathOf: %q %v", p, ok)
	}
	if _, ok := ResourcePathOf("/.well-known/oauth-protected-resourcex"); ok {
		t.Error("ResourcePathOf matched a longer name")
	}
	m := Metadata{Resource: resource, AuthorizationServers: []string{"https://as.example.com"}, ScopesSupported: []string{"mcp:read"}}
	var back map[string]any
	if err := json.Unmarshal(m.JSON(), &back); err != nil || back["resource"] != resource || back["bearer_methods_supported"].([]any)[0] != "header" {
		t.Errorf("metadata: %s", m.JSON())
	}
	md := "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
	if got := Challenge(ErrNoToken, md); got != `Bearer resource_metadata="`+md+`"` {
		t.Errorf("no token: %s", got)
	}
	if got := Challenge(invalid(`bad "x"`), md); got != `Bearer error="invalid_token", error_description="bad \"x\"", resource_metadata="`+md+`"` {
		t.Errorf("invalid: %s", got)
	}
	if got := Challenge(InsufficientScope([]string{"a", "b"}), md); !strings.Contains(got, `error="insufficient_scope"`) || !strings.Contains(got, `scope="a b"`) {
		t.Errorf("scope: %s", got)
	}
}

// TestRequiredScopes: every rule whose method and target globs match
// adds its scopes, in rule order, without repeats; an empty method glob matches only a request without a
// method, and a rule without a target glob any target.
func TestRequiredScopes(t *testing.T) {
	rules := []ScopeRule{
		{Method: "tools/call", Target: "delete_*", Scopes: []string{"admin"}},
		{Method: "tools/*", Scopes: []string{"tools", "admin"}},
		{Method: "", Scopes: []string{"stream"}},
	}
	for _, c := range []struct{ method, target, want string }{
		{"tools/call", "delete_repo", "admin tools"},
		{"tools/call", "echo", "tools admin"},
		{"resources/read", "x", ""},
		{"", "", "stream"},
	} {
		if got := strings.Join(RequiredScopes(rules, c.method, c.target), " "); got != c.want {
			t.Errorf("RequiredScopes(%q, %q) = %q, want %q", c.method, c.target, got, c.want)
		}
	}
}

// BenchmarkVerifyFirst verifies a token's signature each time (RS256).
func BenchmarkVerifyFirst(b *testing.B) {
	now := time.Now()
	iss := newRSAIssuer(&testing.T{}, "k1")
	tok := iss.token(claims(now, nil))
	v := &Verifier{Keys: NewStaticKeySet([]jose.JSONWebKey{iss.public()}), NoCache: true}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(context.Background(), tok, []string{resource}, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyCached is a client's every request after its first with
// the same token.
func BenchmarkVerifyCached(b *testing.B) {
	now := time.Now()
	iss := newRSAIssuer(&testing.T{}, "k1")
	tok := iss.token(claims(now, nil))
	v := &Verifier{Keys: NewStaticKeySet([]jose.JSONWebKey{iss.public()})}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(context.Background(), tok, []string{resource}, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSignatureAlone is the standard library's check of one
// signature over a SHA-256 digest, for each family a JWT's alg can name:
// the floor under BenchmarkVerifyFirst on the machine it runs on.
func BenchmarkSignatureAlone(b *testing.B) {
	digest := sha256.Sum256([]byte("header.payload"))
	b.Run("RS256", func(b *testing.B) {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			b.Fatal(err)
		}
		sig, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, digest[:])
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := rsa.VerifyPKCS1v15(&k.PublicKey, crypto.SHA256, digest[:], sig); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ES256", func(b *testing.B) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		sig, err := ecdsa.SignASN1(rand.Reader, k, digest[:])
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if !ecdsa.VerifyASN1(&k.PublicKey, digest[:], sig) {
				b.Fatal("ES256 signature refused")
			}
		}
	})
	b.Run("EdDSA", func(b *testing.B) {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		msg := []byte("header.payload")
		sig := ed25519.Sign(priv, msg)
		for b.Loop() {
			if !ed25519.Verify(pub, msg, sig) {
				b.Fatal("EdDSA signature refused")
			}
		}
	})
}

// TestPrincipalCacheBound checks that the cache holds at most its limit:
// expired entries go first; a cache full of live ones makes room for a
// sixteenth more at once.
func TestPrincipalCacheBound(t *testing.T) {
	now := time.Now()
	var c principalCache
	key := func(i int) [32]byte { return cacheKey(fmt.Sprint(i), nil) }
	const limit = 64
	for i := range limit {
		c.put(key(i), &Principal{ID: fmt.Sprint(i)}, now.Add(time.Hour), now, limit)
	}
	c.put(key(limit), &Principal{}, now.Add(time.Hour), now, limit)
	if n := len(c.m); n != limit-limit/16 {
		t.Fatalf("%d entries after a put into a full cache, want %d", n, limit-limit/16)
	}
	if _, ok := c.get(key(limit), now); !ok {
		t.Fatal("the new entry is not kept")
	}
	for i := range limit/16 - 1 {
		c.put(key(1000+i), &Principal{}, now.Add(time.Hour), now, limit)
	}
	if n := len(c.m); n != limit-1 {
		t.Fatalf("%d entries, want %d", n, limit-1)
	}
	// Once they expire, a put drops them all.
	later := now.Add(2 * time.Hour)
	c.put(key(-1), &Principal{}, later.Add(time.Hour), later, limit)
	c.put(key(-2), &Principal{}, later.Add(time.Hour), later, limit)
	if n := len(c.m); n != 2 {
		t.Fatalf("%d entries after the others expired, want 2", n)
	}
}
