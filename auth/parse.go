package auth

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
)

// ParseKey reads a verification key: a JSON Web Key, or a PEM public key
// or certificate. A kid or alg that is not empty replaces the key's own.
func ParseKey(data []byte, kid, alg string) (jose.JSONWebKey, error) {
	var jwk jose.JSONWebKey
	if json.Valid(data) {
		if err := json.Unmarshal(data, &jwk); err != nil {
			return jwk, err
		}
		return withKeyInfo(jwk, kid, alg), nil
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return jwk, errors.New("no PEM block")
	}
	var err error
	if block.Type == "CERTIFICATE" {
		var cert *x509.Certificate
		if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
			jwk.Key = cert.PublicKey
		}
	} else {
		jwk.Key, err = x509.ParsePKIXPublicKey(block.Bytes)
	}
	if err != nil {
		return jwk, err
	}
	return withKeyInfo(jwk, kid, alg), nil
}

// SecretKey reads an HMAC secret, the base64 of at least 32 bytes, for
// alg (HS256, HS384 or HS512), with the key id kid.
func SecretKey(b64, kid, alg string) (jose.JSONWebKey, error) {
	var jwk jose.JSONWebKey
	secret, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(secret) < 32 {
		return jwk, errors.New("secret: want the base64 of at least 32 bytes")
	}
	if !isHMAC(jose.SignatureAlgorithm(alg)) {
		return jwk, errors.New("a secret needs alg HS256, HS384 or HS512")
	}
	jwk.Key = secret
	return withKeyInfo(jwk, kid, alg), nil
}

func withKeyInfo(jwk jose.JSONWebKey, kid, alg string) jose.JSONWebKey {
	if kid != "" {
		jwk.KeyID = kid
	}
	if alg != "" {
		jwk.Algorithm = alg
	}
	return jwk
}

// Bearer reads the token of an Authorization header of the Bearer scheme
// (the scheme's name in any case); another scheme, or none, gives "",
// which Verify answers with the plain challenge a client starts its
// authorization from.
func Bearer(header string) string {
	scheme, tok, _ := strings.Cut(header, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

// ResourceURL is the resource a request to path addresses when none is
// configured: the request's scheme and Host with path as the client wrote
// it, a trailing slash included (a client refuses metadata whose resource
// is not the URL it used, RFC 9728 §3.3), the root's alone dropped.
func ResourceURL(r *http.Request, path string) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if path == "/" {
		path = ""
	}
	return scheme + "://" + r.Host + path
}

// ResourceAudiences are the audiences a token for resource may name: the
// resource, and the same URI with its trailing slash added or removed,
// which clients and authorization servers write either way for one
// endpoint.
func ResourceAudiences(resource string) []string {
	if other, ok := strings.CutSuffix(resource, "/"); ok {
		return []string{resource, other}
	}
	return []string{resource, resource + "/"}
}

// SupportedScopes is the scopes_supported of the metadata: configured
// when it is not empty, else the scopes of required and of every rule;
// in order, without repeats.
func SupportedScopes(configured, required []string, rules []ScopeRule) []string {
	var out []string
	add := func(l []string) {
		for _, s := range l {
			if !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	if len(configured) > 0 {
		add(configured)
		return out
	}
	add(required)
	for i := range rules {
		add(rules[i].Scopes)
	}
	return out
}

// ServeMetadata answers a GET or HEAD for the metadata document md, which
// clients of any origin may read and cache for five minutes.
func ServeMetadata(w http.ResponseWriter, r *http.Request, md *Metadata) {
	body := md.JSON()
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "max-age=300")
	hdr.Set("Access-Control-Allow-Origin", "*")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
