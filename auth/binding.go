package auth

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"
)

// KeyBinding is what a configuration says of the issuers its keys sign
// for (see KeySet.AddStaticFor and KeySet.Issuers).
type KeyBinding struct {
	// Issuers are the accepted issuers; none accepts any.
	Issuers []string
	// KeyIssuers holds, for each static key in order, the issuers it is
	// bound to.
	KeyIssuers [][]string
	// JWKS reports a JWKS URL configured, whose keys are bound to
	// JWKSIssuers.
	JWKS        bool
	JWKSIssuers []string
}

// Check refuses keys that could sign for an issuer they do not belong to:
// with several issuers, a static key must name its own, and so must the
// JWKS beside static keys; a key's issuers must be accepted ones. With
// several issuers, one holding a space is refused, as the principal
// "<issuer> <claim>" would not name one issuer's user only.
func (b *KeyBinding) Check() error {
	several := len(b.Issuers) > 1
	for i, issuers := range b.KeyIssuers {
		if several && len(issuers) == 0 {
			return fmt.Errorf("key %d: with several issuers, name the one the key signs for (key … issuer <url>): "+
				"a key of one issuer must not sign tokens of another", i)
		}
		if err := b.accepted(fmt.Sprintf("key %d", i), issuers); err != nil {
			return err
		}
	}
	if !b.JWKS && len(b.JWKSIssuers) > 0 {
		return errors.New("jwks_issuers without jwks_url")
	}
	if several && b.JWKS && len(b.KeyIssuers) > 0 && len(b.JWKSIssuers) == 0 {
		return errors.New("with several issuers and static keys, name the issuers the jwks_url signs for (jwks_issuer <url...>): " +
			"a key of one issuer must not sign tokens of another")
	}
	if err := b.accepted("jwks_issuers", b.JWKSIssuers); err != nil {
		return err
	}
	if several {
		for _, iss := range b.Issuers {
			if strings.ContainsFunc(iss, unicode.IsSpace) {
				return fmt.Errorf("issuer %q: with several issuers, an issuer may not hold a space", iss)
			}
		}
	}
	return nil
}

// accepted refuses an issuer of what's keys that is not an accepted one.
func (b *KeyBinding) accepted(what string, issuers []string) error {
	for _, iss := range issuers {
		if len(b.Issuers) > 0 && !slices.Contains(b.Issuers, iss) {
			return fmt.Errorf("%s: issuer %q is not one of the accepted issuers %q", what, iss, b.Issuers)
		}
	}
	return nil
}
