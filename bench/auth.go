//go:build linux

package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// The mcp_auth target's issuer and token. The harness is the issuer: it
// makes a signing key at start, gives mcp_auth the public half as a static
// key, and signs one access token that every client of the target sends.
const (
	authIssuer  = "https://bench.issuer.example"
	authKeyID   = "bench"
	authSubject = "bench-user"
	authScope   = "mcp"
	authKeyFile = "bench-signing.pem"
	// authTokenLife is the token's lifetime, longer than any run.
	authTokenLife = 24 * time.Hour
)

// benchIssuer is the signing key and the token of one harness run.
type benchIssuer struct {
	KeyFile string // the PEM public key mcp_auth verifies with
	Token   string // the RS256 access token, for resource
}

// newBenchIssuer makes an RSA-2048 key, writes its public half to
// dir/bench-signing.pem (PKIX, "PUBLIC KEY") and signs one RS256 JWT for
// resource: iss authIssuer, sub authSubject, aud resource, scope
// authScope, valid from now for authTokenLife.
func newBenchIssuer(dir, resource string, now time.Time) (*benchIssuer, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("mcp_auth signing key: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("mcp_auth public key: %w", err)
	}
	file := filepath.Join(dir, authKeyFile)
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	tok, err := signToken(key, resource, now)
	if err != nil {
		return nil, err
	}
	return &benchIssuer{KeyFile: file, Token: tok}, nil
}

// signToken signs the harness's access token for resource with key.
func signToken(key *rsa.PrivateKey, resource string, now time.Time) (string, error) {
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: authKeyID}},
		(&jose.SignerOptions{}).WithType("JWT"),
	)
	if err != nil {
		return "", fmt.Errorf("mcp_auth token signer: %w", err)
	}
	claims := jwt.Claims{
		Issuer:    authIssuer,
		Subject:   authSubject,
		Audience:  jwt.Audience{resource},
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now),
		Expiry:    jwt.NewNumericDate(now.Add(authTokenLife)),
	}
	tok, err := jwt.Signed(signer).Claims(claims).Claims(map[string]any{"scope": authScope}).Serialize()
	if err != nil {
		return "", fmt.Errorf("mcp_auth token: %w", err)
	}
	return tok, nil
}

// client returns an HTTP client for tgt over tr. A target with a token
// gets it on every request, initialize included, as
// `Authorization: Bearer <token>`.
func (t target) client(tr http.RoundTripper) *http.Client {
	if t.Token == "" {
		return &http.Client{Transport: tr}
	}
	return &http.Client{Transport: bearerTransport{base: tr, value: []string{"Bearer " + t.Token}}}
}

// bearerTransport adds an Authorization header to every request. It
// sends a shallow copy of the request with its own header map, as a
// RoundTripper must not change the caller's request.
type bearerTransport struct {
	base  http.RoundTripper
	value []string // "Bearer <token>", shared by every request (read only)
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	h := make(http.Header, len(r.Header)+1)
	for k, v := range r.Header {
		h[k] = v
	}
	h["Authorization"] = b.value
	r2 := *r
	r2.Header = h
	return b.base.RoundTrip(&r2)
}

// authSetup is the report's setup line for the mcp_auth target on port.
func authSetup(o *options, port int) string {
	block := "the same mcp_proxy block as the mcp_proxy site"
	if strings.TrimSpace(o.policyBlock) != "" {
		block += ", then the -policy-block lines"
	}
	return fmt.Sprintf("mcp_auth: mcp_auth in front of mcp_proxy (%s) on a site of its own; the harness made an RSA-2048 key at start (its public half is the Caddyfile's key file) and signed one RS256 token with it (iss %s, sub %s, aud %s, scope %s, valid %s); every request to this target, initialize included, carries it as `Authorization: Bearer`, so after its first verification mcp_auth finds the token in its cache of verified tokens",
		block, authIssuer, authSubject, authResource(port), authScope, authTokenLife)
}
