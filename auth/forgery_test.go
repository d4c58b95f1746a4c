package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// signRaw signs payload bytes as they are, with extra protected headers
// and, when embed, the key embedded as a jwk header.
func signRaw(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string, payload []byte, extra map[jose.HeaderKey]any, embed bool) string {
	t.Helper()
	opts := &jose.SignerOptions{EmbedJWK: embed}
	for k, v := range extra {
		opts = opts.WithHeader(k, v)
	}
	var sk jose.SigningKey
	if kid != "" {
		sk = jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: key, KeyID: kid}}
	} else {
		sk = jose.SigningKey{Algorithm: alg, Key: key}
	}
	s, err := jose.NewSigner(sk, opts)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	out, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }

// TestVerifyRefusesForgedTokens: no header trick makes a token verify
// with another key than the one configured for its kid and algorithm
// (HMAC keyed with the public key's bytes, another key type under the
// kid, an embedded jwk, jku, x5u, x5c, crit), and jku or x5u are never
// fetched; a payload that is not one plain claims object, and claims of
// the wrong type or value, are refused; the usual accepted forms pass.
func TestVerifyRefusesForgedTokens(t *testing.T) {
	now := time.Now()
	iss := newRSAIssuer(t, "k1")
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecIss := &issuer{t: t, key: ecKey, kid: "ec1", alg: jose.ES256}
	ecPub := ecIss.public()
	ecPub.Algorithm = "" // a JWKS key without alg
	rsaPub := iss.public()
	rsaPub.Algorithm = ""
	srv := newJWKS(t, rsaPub, ecPub)
	v := &Verifier{Keys: &KeySet{URL: srv.URL}, Issuers: []string{"https://as.example.com"},
		Algorithms: []jose.SignatureAlgorithm{jose.RS256, jose.PS256, jose.ES256, jose.HS256}}
	good := claims(now, nil)
	if _, err := v.Verify(context.Background(), iss.token(good), []string{resource}, now); err != nil {
		t.Fatalf("baseline: %v", err)
	}
	attacker, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, _ := x509.MarshalPKIXPublicKey(&iss.key.(*rsa.PrivateKey).PublicKey)
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	nBytes := iss.key.(*rsa.PrivateKey).PublicKey.N.Bytes()
	jwkJSON, _ := json.Marshal(rsaPub)
	payload := mustJSON(good)
	// self-signed cert for x5c
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "as.example.com"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}
	certDER, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &attacker.PublicKey, attacker)
	var jkuHits atomic.Int64
	jku := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		jkuHits.Add(1)
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &attacker.PublicKey, KeyID: "k1"}}})
	}))
	defer jku.Close()
	cases := map[string]string{
		"HS256 keyed with DER of RSA pub, kid k1":   signRaw(t, jose.HS256, der, "k1", payload, nil, false),
		"HS256 keyed with PEM of RSA pub":           signRaw(t, jose.HS256, pemBytes, "k1", payload, nil, false),
		"HS256 keyed with n bytes":                  signRaw(t, jose.HS256, nBytes, "", payload, nil, false),
		"HS256 keyed with the JWK JSON":             signRaw(t, jose.HS256, jwkJSON, "k1", payload, nil, false),
		"RS256 by attacker, kid naming the EC key":  signRaw(t, jose.RS256, attacker, "ec1", payload, nil, false),
		"ES256 by attacker, kid naming the RSA key": signRaw(t, jose.ES256, mustEC(), "k1", payload, nil, false),
		"embedded jwk of the attacker, no kid":      signRaw(t, jose.RS256, attacker, "", payload, nil, true),
		"jku to attacker JWKS":                      signRaw(t, jose.RS256, attacker, "k1", payload, map[jose.HeaderKey]any{"jku": jku.URL}, false),
		"x5u to attacker":                           signRaw(t, jose.RS256, attacker, "k1", payload, map[jose.HeaderKey]any{"x5u": jku.URL}, false),
		"x5c self-signed attacker cert":             signRaw(t, jose.RS256, attacker, "", payload, map[jose.HeaderKey]any{"x5c": []string{base64.StdEncoding.EncodeToString(certDER)}}, false),
		"crit unknown":                              signRaw(t, jose.RS256, iss.key, "k1", payload, map[jose.HeaderKey]any{"crit": []string{"foo"}, "foo": 1}, false),
		"crit exp":                                  signRaw(t, jose.RS256, iss.key, "k1", payload, map[jose.HeaderKey]any{"crit": []string{"exp"}}, false),
		"duplicate sub in payload":                  signRaw(t, jose.RS256, iss.key, "k1", []byte(strings.Replace(string(payload), `"sub":"alice"`, `"sub":"alice","sub":"admin"`, 1)), nil, false),
		"duplicate aud in payload":                  signRaw(t, jose.RS256, iss.key, "k1", []byte(strings.Replace(string(payload), `"sub":"alice"`, `"sub":"alice","aud":"https://x"`, 1)), nil, false),
		"nested JWT as payload":                     signRaw(t, jose.RS256, iss.key, "k1", mustJSON(iss.token(good)), map[jose.HeaderKey]any{"cty": "JWT"}, false),
		"payload not an object":                     signRaw(t, jose.RS256, iss.key, "k1", []byte(`[1]`), nil, false),
		"unknown kid":                               signRaw(t, jose.RS256, attacker, "zz", payload, nil, false),
		"JWE-shaped 5 parts":                        "a.b.c.d.e",
		"two dots, empty":                           "..",
		"alg None (case)":                           base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"None"}`)) + "." + base64.RawURLEncoding.EncodeToString(payload) + ".",
	}
	for name, tok := range cases {
		if p, err := v.Verify(context.Background(), tok, []string{resource}, now); err == nil {
			t.Errorf("%s: ACCEPTED as %q", name, p.ID)
		}
	}
	if jkuHits.Load() != 0 {
		t.Errorf("jku/x5u fetched %d times", jkuHits.Load())
	}
	// Claims edge cases (signed by the real key).
	claimCases := map[string]map[string]any{
		"aud trailing slash":   {"aud": resource + "/"},
		"aud upper host":       {"aud": "https://MCP.example.com/mcp"},
		"aud empty string":     {"aud": ""},
		"aud empty list":       {"aud": []string{}},
		"aud number":           {"aud": 1},
		"aud missing":          {"aud": nil},
		"iss trailing slash":   {"iss": "https://as.example.com/"},
		"iss case":             {"iss": "https://AS.example.com"},
		"iss missing":          {"iss": nil},
		"iss list":             {"iss": []string{"https://as.example.com"}},
		"exp string":           {"exp": fmt.Sprint(now.Add(time.Hour).Unix())},
		"exp huge":             {"exp": 1e300},
		"exp 2^63":             {"exp": 9.3e18},
		"exp negative":         {"exp": -1},
		"exp zero":             {"exp": 0},
		"exp null":             {"exp": json.RawMessage("null")},
		"nbf huge negative ok": {"nbf": -9.3e18},
		"nbf future":           {"nbf": now.Add(2 * time.Minute).Unix()},
		"nbf near int64 max":   {"nbf": 9.2e18},
		"iat future":           {"iat": now.Add(2 * time.Minute).Unix()},
		"iat string":           {"iat": "1"},
		"sub number":           {"sub": 7},
		"sub object":           {"sub": map[string]any{"a": 1}},
	}
	for name, over := range claimCases {
		tok := iss.token(claims(now, over))
		if p, err := v.Verify(context.Background(), tok, []string{resource}, now); err == nil {
			t.Errorf("claims %s: ACCEPTED as %q", name, p.ID)
		}
	}
	// Accepted, as they should be.
	for name, over := range map[string]map[string]any{
		"aud list":   {"aud": []string{"https://x", resource}},
		"exp float":  {"exp": float64(now.Add(time.Hour).Unix()) + 0.5},
		"in leeway":  {"exp": now.Add(-20 * time.Second).Unix()},
		"typ absent": {},
	} {
		if _, err := v.Verify(context.Background(), iss.token(claims(now, over)), []string{resource}, now); err != nil {
			t.Errorf("%s refused: %v", name, err)
		}
	}
}

func mustEC() *ecdsa.PrivateKey { k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader); return k }

// TestVerifyRefusesHMACWithPublicKey: a public key configured with alg
// HS256 by mistake does not become an HMAC secret: a token signed HS256
// with the key's PEM or DER is refused.
func TestVerifyRefusesHMACWithPublicKey(t *testing.T) {
	now := time.Now()
	iss := newRSAIssuer(t, "")
	der, _ := x509.MarshalPKIXPublicKey(&iss.key.(*rsa.PrivateKey).PublicKey)
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	k, err := ParseKey(pemBytes, "", "HS256")
	if err != nil {
		t.Fatal(err)
	}
	v := &Verifier{Keys: NewStaticKeySet([]jose.JSONWebKey{k}), Algorithms: []jose.SignatureAlgorithm{jose.HS256, jose.RS256}}
	for _, key := range [][]byte{der, pemBytes} {
		tok := signRaw(t, jose.HS256, key, "", mustJSON(claims(now, nil)), nil, false)
		if _, err := v.Verify(context.Background(), tok, []string{resource}, now); err == nil {
			t.Error("HS256 with the PEM/DER of a key configured alg HS256 accepted")
		}
	}
}
