package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// DefaultLeeway is the clock skew allowed on exp, nbf and iat.
const DefaultLeeway = 30 * time.Second

// DefaultAlgorithms are the signature algorithms accepted when none are
// configured: the asymmetric ones.
var DefaultAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// Principal is who an access token stands for.
type Principal struct {
	// ID is the value of the configured principal claim (sub by
	// default), never empty. When the Verifier accepts more than one
	// issuer, it is the token's issuer, a space, and that value, e.g.
	// "https://as-b.example.com alice".
	ID string
	// Scopes are the token's scopes.
	Scopes []string
	// Claims are the token's claims, for placeholders and rules.
	Claims map[string]any
	// Expires is when the token stops being valid; zero when unknown.
	Expires time.Time
}

// HasScopes reports whether the principal holds every scope of want.
func (p *Principal) HasScopes(want []string) bool {
	for _, w := range want {
		if !slices.Contains(p.Scopes, w) {
			return false
		}
	}
	return true
}

// Error is a refused token, with what the WWW-Authenticate challenge and
// the HTTP status must say (RFC 6750 §3).
type Error struct {
	// Status is 401 (no, or an invalid, token) or 403 (insufficient scope).
	Status int
	// Code is the RFC 6750 error code: "" for a request without a token,
	// invalid_token, invalid_request or insufficient_scope.
	Code string
	// Description explains the refusal; it never holds the token.
	Description string
	// Scope lists the scopes the request needs, space-separated.
	Scope string
	// Cause is why a token could not be checked (the JWKS or the
	// introspection endpoint failing), for the operator's log: it may
	// name internal addresses, so it never goes to the client, whose
	// Description stays fixed.
	Cause error
}

func (e *Error) Error() string { return e.Description }

// Unwrap returns the Cause.
func (e *Error) Unwrap() error { return e.Cause }

// Errors returned by Verifier.Verify, each an *Error.
var (
	ErrNoToken = &Error{Status: http.StatusUnauthorized, Description: "no bearer token"}
)

func invalid(format string, args ...any) *Error {
	return &Error{Status: http.StatusUnauthorized, Code: "invalid_token", Description: fmt.Sprintf(format, args...)}
}

// Verifier validates access tokens for one protected resource.
type Verifier struct {
	// Keys verifies signed JWTs; nil accepts no JWT.
	Keys *KeySet
	// Introspection checks opaque tokens (and JWTs when Keys is nil);
	// nil accepts no opaque token.
	Introspection *Introspector
	// Issuers lists the accepted iss values; empty accepts any. With more
	// than one, a principal's ID is qualified by its issuer (see
	// Principal.ID); an issuer should then hold no space, for the ID to
	// name one issuer's principal only.
	Issuers []string
	// Algorithms are the accepted JWS algorithms; empty means
	// DefaultAlgorithms. "none" is never accepted.
	Algorithms []jose.SignatureAlgorithm
	// Leeway is the clock skew allowed; zero means DefaultLeeway.
	Leeway time.Duration
	// PrincipalClaim names the claim the principal's id comes from, in a
	// JWT or an introspection answer; empty means "sub". A token whose
	// claim is missing, empty or not a string is refused.
	PrincipalClaim string
	// RequiredScopes must all be held by every token.
	RequiredScopes []string
	// KnownScopes are this resource's scopes: a token lacking one of
	// RequiredScopes gets a 403 that names them, then those of
	// KnownScopes it holds (see StepUp).
	KnownScopes []string
	// NoCache turns off the cache of verified tokens.
	NoCache bool

	cache principalCache // verified JWTs, until they expire
}

// Verify checks token for the resource whose identifiers (its URI, and
// any configured audience) are audiences: a token is accepted only when
// its aud names one of them. It returns the principal, or an *Error,
// which may be shared between callers and must not be modified.
func (v *Verifier) Verify(ctx context.Context, token string, audiences []string, now time.Time) (*Principal, error) {
	if token == "" {
		return nil, ErrNoToken
	}
	var p *Principal
	var err error
	key := cacheKey(token, audiences)
	if !v.NoCache {
		p, _ = v.cache.get(key, now)
	}
	if p != nil {
		// A verified token is verified again only once it expires.
	} else if strings.Count(token, ".") == 2 && v.Keys != nil {
		p, err = v.verifyJWT(ctx, token, audiences, now)
		if err == nil && !v.NoCache && !p.Expires.IsZero() {
			v.cache.put(key, p, p.Expires, now, MaxVerified)
		}
	} else if v.Introspection != nil {
		p, err = v.Introspection.Check(ctx, token, audiences, v.Issuers, v.PrincipalClaim, now)
	} else {
		return nil, invalid("the token is not a signed JWT")
	}
	if err != nil {
		return nil, err
	}
	if !p.HasScopes(v.RequiredScopes) {
		return nil, StepUp(&Error{Status: http.StatusForbidden, Code: "insufficient_scope",
			Description: "the token lacks a required scope", Scope: strings.Join(v.RequiredScopes, " ")}, p, v.KnownScopes)
	}
	return p, nil
}

// verifyJWT verifies a JWS compact token and its claims.
func (v *Verifier) verifyJWT(ctx context.Context, token string, audiences []string, now time.Time) (*Principal, error) {
	algs := v.Algorithms
	if len(algs) == 0 {
		algs = DefaultAlgorithms
	}
	tok, err := jwt.ParseSigned(token, algs)
	if err != nil {
		return nil, invalid("the token is not a signed JWT with an accepted algorithm")
	}
	if len(tok.Headers) != 1 {
		return nil, invalid("the token must have one signature")
	}
	hdr := tok.Headers[0]
	// The issuer the token claims narrows the keys to those bound to it;
	// the claim is checked against the key once verified.
	var claimed struct {
		Iss string `json:"iss"`
	}
	_ = tok.UnsafeClaimsWithoutVerification(&claimed)
	key, err := v.Keys.key(ctx, hdr.KeyID, jose.SignatureAlgorithm(hdr.Algorithm), claimed.Iss, now)
	if err != nil {
		e := invalid("%v", ErrUnknownKey)
		if err != ErrUnknownKey {
			e.Cause = err // the JWKS could not be fetched
		}
		return nil, e
	}
	var std jwt.Claims
	var all map[string]any
	if err := tok.Claims(key.JSONWebKey, &std, &all); err != nil {
		return nil, invalid("the token's signature does not verify")
	}
	if err := v.checkClaims(std, audiences, now); err != nil {
		return nil, err
	}
	if len(key.issuers) > 0 && !slices.Contains(key.issuers, std.Issuer) {
		return nil, invalid("the token's issuer is not accepted for its key")
	}
	return v.principal(all, std.Expiry)
}

// checkClaims checks iss, aud, exp, nbf and iat.
func (v *Verifier) checkClaims(c jwt.Claims, audiences []string, now time.Time) error {
	if len(v.Issuers) > 0 && !slices.Contains(v.Issuers, c.Issuer) {
		return invalid("the token's issuer is not accepted")
	}
	if c.Expiry == nil {
		return invalid("the token has no expiry")
	}
	leeway := v.Leeway
	if leeway <= 0 {
		leeway = DefaultLeeway
	}
	err := c.ValidateWithLeeway(jwt.Expected{AnyAudience: jwt.Audience(audiences), Time: now}, leeway)
	switch {
	case errors.Is(err, jwt.ErrExpired):
		return invalid("the token has expired")
	case errors.Is(err, jwt.ErrNotValidYet), errors.Is(err, jwt.ErrIssuedInTheFuture):
		return invalid("the token is not valid yet")
	case errors.Is(err, jwt.ErrInvalidAudience):
		return invalid("the token was not issued for this resource")
	case err != nil:
		return invalid("the token's claims are invalid")
	}
	return nil
}

// principal builds the principal from a token's claims, or refuses a
// token without a principal.
func (v *Verifier) principal(claims map[string]any, exp *jwt.NumericDate) (*Principal, error) {
	id, err := principalID(claims, v.PrincipalClaim, v.Issuers)
	if err != nil {
		return nil, err
	}
	p := &Principal{ID: id, Claims: claims, Scopes: scopesOf(claims)}
	if exp != nil {
		p.Expires = exp.Time()
	}
	return p, nil
}

// principalID is the value of a token's principal claim (claim, or sub
// when empty), which must be a non-empty string: a token without one
// stands for nobody in particular, and an id of another type has no
// exact string form (a JSON number is decoded to a float64, in which
// distinct large ids are equal). When more than one issuer is accepted,
// the id is the token's issuer, a space, and the claim's value, so that
// two issuers' users of the same name are not one principal.
func principalID(claims map[string]any, claim string, issuers []string) (string, *Error) {
	if claim == "" {
		claim = "sub"
	}
	switch id := claims[claim].(type) {
	case string:
		if id == "" {
			break
		}
		if len(issuers) > 1 {
			iss, _ := claims["iss"].(string)
			return iss + " " + id, nil
		}
		return id, nil
	case nil:
	default:
		return "", invalid("the token's %s is not a string", claim)
	}
	return "", invalid("the token has no %s", claim)
}

// scopesOf reads the scope claim (a space-separated string, RFC 8693) or
// scp (a list, as some providers issue).
func scopesOf(claims map[string]any) []string {
	if s, ok := claims["scope"].(string); ok {
		return strings.Fields(s)
	}
	var out []string
	switch l := claims["scp"].(type) {
	case []any:
		for _, x := range l {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
	case string:
		out = strings.Fields(l)
	}
	return out
}

// claimString writes a claim value as a string.
func claimString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case nil:
		return ""
	case float64, bool, json.Number:
		return fmt.Sprint(x)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// ClaimString writes a claim value as a placeholder shows it: strings as
// they are, numbers and booleans in their JSON form, lists joined with
// commas, objects as JSON.
func ClaimString(v any) string {
	if l, ok := v.([]any); ok {
		parts := make([]string, len(l))
		for i, x := range l {
			parts[i] = claimString(x)
		}
		return strings.Join(parts, ",")
	}
	return claimString(v)
}
