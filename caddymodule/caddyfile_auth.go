package caddymodule

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/mcpgate/mcpgate/auth"
)

// UnmarshalCaddyfile sets up mcp_auth from Caddyfile tokens. Syntax:
//
//	mcp_auth [<matcher>] {
//		issuer                <url...>
//		authorization_servers <url...>
//		resource              <uri>
//		audience              <aud...>
//		jwks_url              <url>
//		jwks_issuer           <url...>
//		jwks_timeout          <duration>
//		jwks_refresh          <duration>
//		jwks_min_refresh      <duration>
//		jwks_max_stale        <duration>
//		key                   file|pem|jwk|secret <value> [kid <id>] [alg <alg>] [issuer <url>]...
//		algorithms            <alg...>
//		leeway                <duration>
//		principal_claim       <claim>
//		require_scope         <scope...>
//		scope                 <method>[:<target-glob>] <scope...>
//		scopes_supported      <scope...>
//		introspect            <url> [client_id <id>] [client_secret <secret>] [cache <duration>]
//		forward_token         on|off
//		resource_name         <name>
//	}
//
// key and scope may be given more than once; every other option once.
func (a *Auth) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	return parseBlock(d, a.options(), "mcp_auth option")
}

// options are mcp_auth's settings.
func (a *Auth) options() map[string]option {
	str := func(dst *string) option { return one(func(s string) error { *dst = s; return nil }) }
	return map[string]option{
		"issuer":                listOpt(&a.Issuers),
		"authorization_servers": listOpt(&a.AuthorizationServers),
		"resource":              str(&a.Resource),
		"audience":              listOpt(&a.Audiences),
		"jwks_url":              str(&a.JWKSURL),
		"jwks_issuer":           listOpt(&a.JWKSIssuers),
		"jwks_timeout":          durationOpt(&a.JWKSTimeout),
		"jwks_refresh":          durationOpt(&a.JWKSRefresh),
		"jwks_min_refresh":      durationOpt(&a.JWKSMinRefresh),
		"jwks_max_stale":        durationOpt(&a.JWKSMaxStale),
		"algorithms":            listOpt(&a.Algorithms),
		"leeway":                durationOpt(&a.Leeway),
		"principal_claim":       str(&a.PrincipalClaim),
		"require_scope":         listOpt(&a.RequiredScopes),
		"scopes_supported":      listOpt(&a.ScopesSupported),
		"resource_name":         str(&a.ResourceName),
		"forward_token":         one(func(s string) (err error) { a.ForwardToken, err = parseOnOff(s); return }),
		"key":                   {nargs: func(n int) bool { return n >= 2 && n%2 == 0 }, repeat: true, apply: a.parseKey},
		"scope": {nargs: atLeast(2), repeat: true, apply: func(args []string) error {
			method, target, _ := strings.Cut(args[0], ":")
			a.ScopeRules = append(a.ScopeRules, auth.ScopeRule{Method: method, Target: target, Scopes: args[1:]})
			return nil
		}},
		"introspect": {nargs: func(n int) bool { return n%2 == 1 }, apply: a.parseIntrospect},
	}
}

// parseKey parses `file|pem|jwk|secret <value> [kid <id>] [alg <alg>]
// [issuer <url>]...`, issuer given once per issuer the key signs for.
func (a *Auth) parseKey(args []string) error {
	var k StaticKey
	switch args[0] {
	case "file":
		k.File = args[1]
	case "pem":
		k.PEM = args[1]
	case "jwk":
		k.JWK = json.RawMessage(args[1])
	case "secret":
		k.Secret = args[1]
	default:
		return fmt.Errorf("%q: want file, pem, jwk or secret", args[0])
	}
	for i := 2; i+1 < len(args); i += 2 {
		switch args[i] {
		case "kid":
			k.KeyID = args[i+1]
		case "alg":
			k.Algorithm = args[i+1]
		case "issuer":
			k.Issuers = append(k.Issuers, args[i+1])
		default:
			return fmt.Errorf("%q: want kid, alg or issuer", args[i])
		}
	}
	a.Keys = append(a.Keys, k)
	return nil
}

// parseIntrospect parses `<url> [client_id <id>] [client_secret <secret>]
// [cache <duration>]`.
func (a *Auth) parseIntrospect(args []string) error {
	in := &IntrospectionConfig{URL: args[0]}
	for i := 1; i+1 < len(args); i += 2 {
		var err error
		switch args[i] {
		case "client_id":
			in.ClientID = args[i+1]
		case "client_secret":
			in.ClientSecret = args[i+1]
		case "cache":
			in.CacheTTL, err = parseDuration(args[i+1])
		default:
			err = fmt.Errorf("%q: want client_id, client_secret or cache", args[i])
		}
		if err != nil {
			return err
		}
	}
	a.Introspection = in
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Auth)(nil)
