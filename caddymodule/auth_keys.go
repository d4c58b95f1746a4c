package caddymodule

import (
	"encoding/json"
	"os"

	"github.com/caddyserver/caddy/v2"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/mcpgate/mcpgate/auth"
)

// The key and introspection settings of mcp_auth.

// StaticKey is one static verification key.
type StaticKey struct {
	// File is a file holding a PEM public key, certificate, or JWK. One
	// of File, PEM, JWK and Secret is required; of several, the first of
	// Secret, JWK, File and PEM is used.
	File string `json:"file,omitempty"`
	// PEM is a PEM public key or certificate, inline. Default: none.
	PEM string `json:"pem,omitempty"`
	// JWK is a JSON Web Key, inline. Default: none.
	JWK json.RawMessage `json:"jwk,omitempty"`
	// Secret is the base64 of an HMAC secret; Algorithm must name an HS
	// algorithm. Default: none.
	Secret string `json:"secret,omitempty"`
	// KeyID is the key id tokens name (kid). A token naming a kid gets
	// the static key of that kid, else the JWKS's; a key without a kid
	// serves tokens naming no kid, and tokens naming a kid that neither
	// the other static keys nor the JWKS hold. Default: empty.
	KeyID string `json:"kid,omitempty"`
	// Algorithm restricts the key to one algorithm, e.g. RS256. Default:
	// any of Algorithms the key's type can verify.
	Algorithm string `json:"alg,omitempty"`
	// Issuers lists the issuers whose tokens the key verifies, each one
	// of mcp_auth's Issuers: a token of another iss signed with it is
	// refused, so that one issuer's key cannot sign for another. Default:
	// mcp_auth's one issuer, or any issuer when it names none; required
	// when it names several.
	Issuers []string `json:"issuers,omitempty"`
}

// IntrospectionConfig configures RFC 7662 introspection. Each mcp_auth
// handler sends at most 32 introspection requests at once, and has at
// most 4 checks of one client (its address, an IPv6 one by its /64)
// under way, counting those waiting for a request: a request whose token
// is not cached gets 429 with Retry-After when its client has 4 already,
// and 503 with Retry-After when it waited 2s for a request to end
// (`caddy_mcp_auth_refusals_total`'s reason temporarily_unavailable), so
// that clients sending new tokens cannot load the endpoint without bound,
// nor one client take every request.
type IntrospectionConfig struct {
	// URL is the introspection endpoint; placeholders such as {env.X}
	// are replaced. Required.
	URL string `json:"url"`
	// ClientID, with ClientSecret, authenticates this resource server to
	// the endpoint (HTTP Basic); placeholders such as {env.X} are
	// replaced. Default: none (the endpoint is called without
	// credentials).
	ClientID string `json:"client_id,omitempty"`
	// ClientSecret is the secret of ClientID (HTTP Basic); placeholders
	// such as {env.CLIENT_SECRET} are replaced. Default: none.
	ClientSecret string `json:"client_secret,omitempty"`
	// CacheTTL is how long an accepted token's result is kept at most
	// (never past the token's expiry); a refused token (not active,
	// expired, for another resource or issuer, without a principal) is
	// remembered as refused for 10s, or CacheTTL when shorter, but one
	// not valid yet (nbf) is not. A negative CacheTTL keeps nothing.
	// Default: 1m.
	CacheTTL caddy.Duration `json:"cache_ttl,omitempty"`
}

// load reads a static key as a JWK.
func (k StaticKey) load(repl *caddy.Replacer) (jose.JSONWebKey, error) {
	switch {
	case k.Secret != "":
		return auth.SecretKey(repl.ReplaceKnown(k.Secret, ""), k.KeyID, k.Algorithm)
	case len(k.JWK) > 0:
		return auth.ParseKey(k.JWK, k.KeyID, k.Algorithm)
	case k.File != "":
		data, err := os.ReadFile(k.File)
		if err != nil {
			return jose.JSONWebKey{}, err
		}
		return auth.ParseKey(data, k.KeyID, k.Algorithm)
	}
	return auth.ParseKey([]byte(k.PEM), k.KeyID, k.Algorithm)
}
