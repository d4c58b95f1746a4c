package mcp

import (
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
