package mcp

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

func testSealer(t testing.TB, keys ...[]byte) *Sealer {
	t.Helper()
	if len(keys) == 0 {
		keys = [][]byte{GenerateKey()}
	}
	s, err := NewSealer(keys)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTokenRoundTrip(t *testing.T) {
	s := testSealer(t)
	now := time.Unix(1_800_000_000, 0)
	in := &Session{Kind: TokenSession, Upstream: "10.0.0.1:8080", UpstreamID: "abc-123", Version: Version20251125, Expires: now.Add(time.Hour)}
	tok, err := s.Seal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !ValidSessionID(tok) {
		t.Fatalf("token %q is not a valid session id", tok)
	}
	out, err := s.Open(tok, now)
	if err != nil {
		t.Fatal(err)
	}
	if *out != *in {
		t.Fatalf("opened %+v, sealed %+v", out, in)
	}
	// Each seal uses a fresh nonce.
	tok2, _ := s.Seal(in)
	if tok2 == tok {
		t.Fatal("two seals gave the same token")
	}
}

func TestTokenRefusals(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s := testSealer(t)
	tok, _ := s.Seal(&Session{Kind: TokenSession, Upstream: "u:1", UpstreamID: "x", Expires: now.Add(time.Minute)})

	if _, err := s.Open(tok, now.Add(time.Minute)); !errors.Is(err, ErrTokenExpired) {
		t.Errorf("expired: err = %v", err)
	}
	b := []byte(tok)
	b[len(b)/2] ^= 1
	if b[len(b)/2] == '-' || b[len(b)/2] == '_' || (b[len(b)/2] >= '0' && b[len(b)/2] <= 'z') {
		if _, err := s.Open(string(b), now); !errors.Is(err, ErrTokenInvalid) {
			t.Errorf("tampered: err = %v", err)
		}
	}
	other := testSealer(t)
	if _, err := other.Open(tok, now); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("foreign key: err = %v", err)
	}
	for _, bad := range []string{"", "!!!", strings.Repeat("A", MaxTokenLength+1), "AAAA"} {
		if _, err := s.Open(bad, now); !errors.Is(err, ErrTokenInvalid) {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
}

func TestTokenRotation(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	oldKey, newKey := GenerateKey(), GenerateKey()
	old := testSealer(t, oldKey)
	tok, _ := old.Seal(&Session{Kind: TokenSession, Upstream: "u:1", UpstreamID: "x", Expires: now.Add(time.Hour)})
	rotated := testSealer(t, newKey, oldKey)
	if _, err := rotated.Open(tok, now); err != nil {
		t.Fatalf("old token under rotated keys: %v", err)
	}
	tok2, _ := rotated.Seal(&Session{Kind: TokenSession, Upstream: "u:1", UpstreamID: "y", Expires: now.Add(time.Hour)})
	if _, err := old.Open(tok2, now); err == nil {
		t.Fatal("a token sealed with the new key opened with the old one alone")
	}
}

func TestParseKey(t *testing.T) {
	if _, err := ParseKey("short"); err == nil {
		t.Error("short passphrase accepted")
	}
	k1, err := ParseKey(strings.Repeat("p", 40))
	if err != nil || len(k1) != 32 {
		t.Fatalf("passphrase: %v", err)
	}
	k2, _ := ParseKey(strings.Repeat("p", 40))
	if string(k1) != string(k2) {
		t.Error("passphrase derivation is not stable")
	}
	// The documented derivation: scrypt, N=2^15, r=8, p=1, salt
	// "mcpgate session key v2". Replicas derive the same key from it.
	if got := hex.EncodeToString(k1); got != "e41e6ba6592d036dbc084c40e95a8cb36bed3e0f7f0f1f187cfb1f45023a882a" {
		t.Errorf("passphrase key %s does not follow the documented derivation", got)
	}
	if k, err := ParseKey("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="); err != nil || k[31] != 31 {
		t.Errorf("base64 key: %v %v", k, err)
	}
}

func TestValidSessionID(t *testing.T) {
	for id, want := range map[string]bool{
		"abc": true, "a b": false, "": false, "\x7f": false, "é": false,
		strings.Repeat("a", MaxUpstreamSessionID): true, strings.Repeat("a", MaxUpstreamSessionID+1): false,
	} {
		if got := ValidSessionID(id); got != want {
			t.Errorf("ValidSessionID(%q) = %v", id, got)
		}
	}
}

func BenchmarkTokenOpen(b *testing.B) {
	s := testSealer(b)
	now := time.Now()
	tok, _ := s.Seal(&Session{Kind: TokenSession, Upstream: "127.0.0.1:9001", UpstreamID: "6MP7KQGMD44FUJEBX3YXENYGDG", Expires: now.Add(time.Hour)})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Open(tok, now); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzOpenToken feeds arbitrary strings to the opener: it must never panic
// and never accept anything but a token it sealed.
func FuzzOpenToken(f *testing.F) {
	key := make([]byte, 32)
	s, _ := NewSealer([][]byte{key})
	now := time.Unix(1_800_000_000, 0)
	good, _ := s.Seal(&Session{Kind: TokenSession, Upstream: "u:1", UpstreamID: "x", Expires: now.Add(time.Hour)})
	f.Add(good)
	f.Add("")
	f.Add("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Fuzz(func(t *testing.T, tok string) {
		sess, err := s.Open(tok, now)
		if err == nil && tok != good {
			// Only re-encodings of the same bytes may open.
			if sess.UpstreamID != "x" || sess.Upstream != "u:1" {
				t.Fatalf("forged token %q opened as %+v", tok, sess)
			}
		}
	})
}

func TestTokenFieldsAndFormat1(t *testing.T) {
	s, err := NewSealer([][]byte{GenerateKey()})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	in := &Session{Kind: TokenLegacy, Upstream: "10.0.0.1:80", UpstreamID: "k", Version: Version20241105,
		Expires: now.Add(time.Hour).Truncate(time.Second), Endpoint: "/message?sessionId=abc", Principal: "\x01\x02"}
	tok, err := s.Seal(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Open(tok, now)
	if err != nil || *out != *in {
		t.Fatalf("round trip: %+v %v", out, err)
	}
	// Every field at its cap still makes a token within MaxTokenLength.
	full := &Session{Kind: TokenSession, Upstream: strings.Repeat("u", maxUpstreamLen), UpstreamID: strings.Repeat("i", MaxUpstreamSessionID),
		Version: strings.Repeat("v", maxVersionLen), Expires: now.Add(time.Hour), Endpoint: strings.Repeat("e", MaxEndpoint), Principal: strings.Repeat("p", maxPrincipal)}
	if tok, err := s.Seal(full); err != nil || len(tok) > MaxTokenLength {
		t.Fatalf("full token: %d %v", len(tok), err)
	} else if _, err := s.Open(tok, now); err != nil {
		t.Fatalf("full token does not open: %v", err)
	}
	full.Endpoint += "e"
	if _, err := s.Seal(full); err != ErrTooLong {
		t.Errorf("over-long endpoint sealed: %v", err)
	}
	// A token of the first format (no endpoint, no principal) opens.
	k := s.keys[0]
	pt := []byte{1, byte(TokenSession)}
	pt = binary.AppendUvarint(pt, uint64(now.Add(time.Hour).Unix()))
	pt = appendField(pt, "up:1")
	pt = appendField(pt, "sid")
	pt = appendField(pt, Version20250618)
	nonce := make([]byte, 12)
	raw := append([]byte{k.id}, nonce...)
	raw = k.aead.Seal(raw, nonce, pt, tokenAAD)
	old, err := s.Open(base64.RawURLEncoding.EncodeToString(raw), now)
	if err != nil || old.UpstreamID != "sid" || old.Upstream != "up:1" || old.Endpoint != "" {
		t.Errorf("format 1 token: %+v %v", old, err)
	}
}

func TestPrincipalBinding(t *testing.T) {
	k1, k2 := GenerateKey(), GenerateKey()
	old, _ := NewSealer([][]byte{k1})
	now := time.Now()
	in := &Session{Kind: TokenSession, Upstream: "u:1", UpstreamID: "s", Expires: now.Add(time.Hour), Principal: old.Bind("alice")}
	tok, err := old.Seal(in)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(in.Principal, "alice") || len(in.Principal) != 16 {
		t.Errorf("binding %q", in.Principal)
	}
	// After a rotation the token, sealed under the older key, still binds
	// alice and nobody else.
	rotated, _ := NewSealer([][]byte{k2, k1})
	sess, err := rotated.Open(tok, now)
	if err != nil {
		t.Fatal(err)
	}
	if !rotated.Bound(sess, "alice") || rotated.Bound(sess, "bob") || rotated.Bound(sess, "") {
		t.Error("binding under the older key")
	}
	anon := &Session{Kind: TokenSession, Upstream: "u:1", UpstreamID: "s", Expires: now.Add(time.Hour)}
	atok, _ := rotated.Seal(anon)
	asess, _ := rotated.Open(atok, now)
	if !rotated.Bound(asess, "") || rotated.Bound(asess, "alice") {
		t.Error("an unbound session")
	}
	if rotated.Bind("alice") == old.Bind("alice") {
		t.Error("bindings do not depend on the key")
	}
}
