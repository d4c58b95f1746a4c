package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseKey(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "issuer"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<32, 0)}
	cert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	jwk, err := json.Marshal(map[string]string{"kty": "EC", "crv": "P-256", "kid": "own",
		"x": base64.RawURLEncoding.EncodeToString(k.PublicKey.X.FillBytes(make([]byte, 32))),
		"y": base64.RawURLEncoding.EncodeToString(k.PublicKey.Y.FillBytes(make([]byte, 32)))})
	if err != nil {
		t.Fatal(err)
	}
	forms := map[string][]byte{
		"pkix": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"cert": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert}),
		"jwk":  jwk,
	}
	for name, data := range forms {
		got, err := ParseKey(data, "", "")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		pub, ok := got.Key.(*ecdsa.PublicKey)
		if !ok || !pub.Equal(&k.PublicKey) {
			t.Errorf("%s: key %T is not the issuer's", name, got.Key)
		}
		got, err = ParseKey(data, "k1", "ES256")
		if err != nil || got.KeyID != "k1" || got.Algorithm != "ES256" {
			t.Errorf("%s with kid and alg: %q %q %v", name, got.KeyID, got.Algorithm, err)
		}
	}
	if got, _ := ParseKey(jwk, "", ""); got.KeyID != "own" {
		t.Errorf("a JWK's own kid is kept without one given: %q", got.KeyID)
	}
	for _, bad := range []string{"", "not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", `{"kty":"EC"}`} {
		if _, err := ParseKey([]byte(bad), "", ""); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestSecretKey(t *testing.T) {
	secret := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("s", 32)))
	k, err := SecretKey(secret, "h1", "HS256")
	if err != nil || k.KeyID != "h1" || k.Algorithm != "HS256" || len(k.Key.([]byte)) != 32 {
		t.Fatalf("%+v %v", k, err)
	}
	short := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("s", 31)))
	for _, c := range []struct{ b64, alg string }{{short, "HS256"}, {"%%%", "HS256"}, {secret, "RS256"}, {secret, ""}, {secret, "HS999"}} {
		if _, err := SecretKey(c.b64, "", c.alg); err == nil {
			t.Errorf("secret %q alg %q accepted", c.b64, c.alg)
		}
	}
}

func TestBearer(t *testing.T) {
	for h, want := range map[string]string{
		"Bearer abc":    "abc",
		"bearer abc":    "abc",
		"BEARER  abc  ": "abc",
		"Basic abc":     "",
		"Bearer":        "",
		"":              "",
		"Bearerabc":     "",
	} {
		if got := Bearer(h); got != want {
			t.Errorf("Bearer(%q) = %q, want %q", h, got, want)
		}
	}
}

func TestResourceURLAndScopes(t *testing.T) {
	r := httptest.NewRequest("GET", "http://mcp.example.com/mcp/", nil)
	if got := ResourceURL(r, "/mcp/"); got != "http://mcp.example.com/mcp/" {
		t.Errorf("ResourceURL %q", got)
	}
	for resource, want := range map[string]string{
		"http://mcp.example.com/mcp/": "http://mcp.example.com/mcp/ http://mcp.example.com/mcp",
		"http://mcp.example.com/mcp":  "http://mcp.example.com/mcp http://mcp.example.com/mcp/",
		"http://mcp.example.com":      "http://mcp.example.com http://mcp.example.com/",
	} {
		if got := strings.Join(ResourceAudiences(resource), " "); got != want {
			t.Errorf("ResourceAudiences(%s) = %s, want %s", resource, got, want)
		}
	}
	r = httptest.NewRequest("GET", "https://mcp.example.com/", nil)
	if got := ResourceURL(r, "/"); got != "https://mcp.example.com" {
		t.Errorf("ResourceURL over TLS %q", got)
	}
	rules := []ScopeRule{{Method: "tools/*", Scopes: []string{"tools", "read"}}, {Method: "x", Scopes: []string{"admin"}}}
	if got := SupportedScopes(nil, []string{"read"}, rules); !reflect.DeepEqual(got, []string{"read", "tools", "admin"}) {
		t.Errorf("SupportedScopes from rules %q", got)
	}
	if got := SupportedScopes([]string{"a", "b", "a"}, []string{"read"}, rules); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("SupportedScopes configured %q", got)
	}
}

func TestServeMetadata(t *testing.T) {
	md := &Metadata{Resource: resource, ScopesSupported: []string{"read"}}
	for _, method := range []string{"GET", "HEAD"} {
		w := httptest.NewRecorder()
		ServeMetadata(w, httptest.NewRequest(method, WellKnownPath, nil), md)
		h := w.Result().Header
		if w.Code != 200 || h.Get("Content-Type") != "application/json" || h.Get("Access-Control-Allow-Origin") != "*" || h.Get("Cache-Control") != "max-age=300" {
			t.Fatalf("%s: %d %v", method, w.Code, h)
		}
		var got Metadata
		if method == "GET" {
			if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || got.Resource != resource || got.BearerMethodsSupported[0] != "header" {
				t.Errorf("GET body %s: %v", w.Body, err)
			}
		} else if w.Body.Len() != 0 || h.Get("Content-Length") == "0" {
			t.Errorf("HEAD: body %d bytes, Content-Length %s", w.Body.Len(), h.Get("Content-Length"))
		}
	}
}
