package mcp

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/scrypt"
)

// TokenKind tells what a sealed token stands for.
type TokenKind uint8

const (
	// TokenSession is a Streamable HTTP session: the client sends it as
	// Mcp-Session-Id.
	TokenSession TokenKind = 1
	// TokenLegacy routes the POSTs of a legacy HTTP+SSE session to the
	// upstream that holds its GET stream; it travels in the endpoint URL.
	TokenLegacy TokenKind = 2
)

// Session is what a sealed token carries.
type Session struct {
	Kind TokenKind
	// Upstream is the dial address of the upstream that created the
	// session, as the reverse proxy names it.
	Upstream string
	// UpstreamID is the upstream's own session id (empty for legacy
	// route tokens).
	UpstreamID string
	// Version is the protocol version the session negotiated, when known.
	Version string
	// Expires is when the token stops opening (second precision).
	Expires time.Time
	// Endpoint is, in a legacy route token, the upstream's POST endpoint
	// (path and query, as its endpoint event named it): the upstream's
	// own session id travels sealed in it and never reaches the client.
	Endpoint string
	// Principal is a keyed hash of the principal the session is bound to
	// (empty for a session opened without one); see Sealer.Bind.
	Principal string

	// key is the index of the sealer key that opened the token.
	key int
	// bound is the last principal Bound found the session bound to, so
	// the cached session of a busy client is not hashed again for every
	// request.
	bound atomic.Pointer[string]
}

// Limits of what a token may carry.
const (
	// MaxUpstreamSessionID caps the length of an upstream's session id.
	MaxUpstreamSessionID = 512
	// MaxEndpoint caps the length of a legacy endpoint a token carries.
	MaxEndpoint = 512
	// MaxTokenLength caps the length of a token a client may present; a
	// longer one is refused before any decoding. It fits a token with
	// every field at its cap.
	MaxTokenLength = 1920
	maxUpstreamLen = 255
	maxVersionLen  = 32
	maxPrincipal   = 64
	keySize        = 32
	// tokenVersion is the plaintext format sealed; tokens of format 1
	// (without Endpoint and Principal) still open.
	tokenVersion = 2
)

// openBufPool holds Open's scratch buffers: a token's text, then its
// decoded bytes.
var openBufPool = sync.Pool{New: func() any { return new([2 * MaxTokenLength]byte) }}

// Token errors. ErrTokenInvalid and ErrTokenExpired answer 404: the
// client re-initializes. ErrTooLong means a field does not fit a token.
var (
	ErrTooLong      = errors.New("session fields too long to seal")
	ErrTokenInvalid = errors.New("session token invalid")
	ErrTokenExpired = errors.New("session token expired")
)

// ValidSessionID reports whether id obeys the MCP rule for session ids
// (visible ASCII, 0x21–0x7E) and mcpgate's length cap.
func ValidSessionID(id string) bool {
	if id == "" || len(id) > MaxUpstreamSessionID {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			return false
		}
	}
	return true
}

// Sealer seals and opens session tokens with AES-256-GCM. The first key
// seals; every key opens, so keys can be rotated by prepending a new one
// and dropping the old one after the longest session lifetime. A Sealer is
// safe for concurrent use.
type Sealer struct {
	keys []sealKey
}

type sealKey struct {
	id   byte
	aead cipher.AEAD
	bind []byte // HMAC key of principal bindings, derived from the key
}

var tokenAAD = []byte("mcpgate session token v1")

// GenerateKey returns a new random 32-byte key.
func GenerateKey() []byte {
	k := make([]byte, keySize)
	_, _ = rand.Read(k) // crypto/rand never fails on supported platforms
	return k
}

// Parameters of the passphrase key derivation (scrypt). They are fixed, so
// every replica given the same passphrase derives the same key: N = 2^15,
// r = 8, p = 1 (32 MiB and some tens of milliseconds, once per passphrase
// and process), with a fixed salt.
const (
	kdfN    = 1 << 15
	kdfR    = 8
	kdfP    = 1
	kdfSalt = "mcpgate session key v2"
)

// derivedKeys caches the keys derived from passphrases, by the SHA-256 of
// the passphrase, so a config reload does not pay the derivation again.
var derivedKeys sync.Map // [32]byte → []byte

// ParseKey turns a configured key into 32 bytes of key material. A value
// that is base64 (standard or URL alphabet, padded or not) of exactly 32
// bytes is used as is; any other value of at least 32 characters is a
// passphrase, stretched with the memory-hard scrypt (see kdfN), so that a
// sealed token is no cheap oracle for guessing a human-chosen passphrase.
func ParseKey(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == keySize {
			return b, nil
		}
	}
	if len(s) < keySize {
		return nil, fmt.Errorf("session key must be base64 of 32 bytes or a passphrase of at least 32 characters")
	}
	id := sha256.Sum256([]byte(s))
	if k, ok := derivedKeys.Load(id); ok {
		return k.([]byte), nil
	}
	k, err := scrypt.Key([]byte(s), []byte(kdfSalt), kdfN, kdfR, kdfP, keySize)
	if err != nil {
		return nil, fmt.Errorf("deriving session key: %w", err)
	}
	derivedKeys.Store(id, k)
	return k, nil
}

// NewSealer returns a Sealer for the given 32-byte keys; the first seals.
func NewSealer(keys [][]byte) (*Sealer, error) {
	if len(keys) == 0 {
		return nil, errors.New("no session keys")
	}
	s := &Sealer{}
	for i, k := range keys {
		if len(k) != keySize {
			return nil, fmt.Errorf("session key %d: want %d bytes, have %d", i, keySize, len(k))
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, fmt.Errorf("session key %d: %w", i, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("session key %d: %w", i, err)
		}
		sum := sha256.Sum256(k)
		bind, err := hkdf.Key(sha256.New, k, nil, "mcpgate principal binding", sha256.Size)
		if err != nil {
			return nil, fmt.Errorf("session key %d: %w", i, err)
		}
		s.keys = append(s.keys, sealKey{id: sum[0], aead: aead, bind: bind})
	}
	return s, nil
}

// Seal returns the token for sess: base64url without padding of a key id,
// a random nonce and the AES-GCM ciphertext. Every character is in the
// visible ASCII range that MCP requires of session ids.
func (s *Sealer) Seal(sess *Session) (string, error) {
	if len(sess.Upstream) > maxUpstreamLen || len(sess.UpstreamID) > MaxUpstreamSessionID ||
		len(sess.Version) > maxVersionLen || len(sess.Endpoint) > MaxEndpoint || len(sess.Principal) > maxPrincipal {
		return "", ErrTooLong
	}
	k := s.keys[0]
	var buf [1 + 12 + 32 + maxUpstreamLen + MaxUpstreamSessionID + maxVersionLen + MaxEndpoint + maxPrincipal + 16]byte
	out := buf[:0]
	out = append(out, k.id)
	nonce := buf[1:13]
	_, _ = rand.Read(nonce)
	out = out[:13]
	pt := make([]byte, 0, 24+len(sess.Upstream)+len(sess.UpstreamID)+len(sess.Version)+len(sess.Endpoint)+len(sess.Principal))
	pt = append(pt, tokenVersion, byte(sess.Kind))
	pt = binary.AppendUvarint(pt, uint64(sess.Expires.Unix()))
	pt = appendField(pt, sess.Upstream)
	pt = appendField(pt, sess.UpstreamID)
	pt = appendField(pt, sess.Version)
	pt = appendField(pt, sess.Endpoint)
	pt = appendField(pt, sess.Principal)
	out = k.aead.Seal(out, nonce, pt, tokenAAD)
	return base64.RawURLEncoding.EncodeToString(out), nil
}

func appendField(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// Open authenticates and decodes a token. A token that fails to decode or
// authenticate is ErrTokenInvalid; one past its expiry is ErrTokenExpired.
func (s *Sealer) Open(token string, now time.Time) (*Session, error) {
	if len(token) == 0 || len(token) > MaxTokenLength {
		return nil, ErrTokenInvalid
	}
	// The token's text and its decoded bytes share one pooled buffer, and
	// the plaintext is opened in place: decodeSession copies what it keeps.
	bp := openBufPool.Get().(*[2 * MaxTokenLength]byte)
	defer openBufPool.Put(bp)
	src := append(bp[:0:MaxTokenLength], token...)
	n, err := base64.RawURLEncoding.Decode(bp[MaxTokenLength:], src)
	if err != nil || n < 1+12+16 {
		return nil, ErrTokenInvalid
	}
	data := bp[MaxTokenLength : MaxTokenLength+n]
	var pt []byte
	opened := 0
	for i, k := range s.keys {
		opened = i
		if k.id != data[0] {
			continue
		}
		if len(s.keys) > 1 {
			// A failed in-place open may have overwritten the
			// ciphertext the next key must try; open a copy instead.
			if p, err := k.aead.Open(src[:0], data[1:13], data[13:], tokenAAD); err == nil {
				pt = p
				break
			}
			continue
		}
		if p, err := k.aead.Open(data[13:13], data[1:13], data[13:], tokenAAD); err == nil {
			pt = p
			break
		}
	}
	if pt == nil {
		return nil, ErrTokenInvalid
	}
	sess, ok := decodeSession(pt)
	if ok {
		sess.key = opened
	}
	if !ok {
		return nil, ErrTokenInvalid
	}
	if !now.Before(sess.Expires) {
		return sess, ErrTokenExpired
	}
	return sess, nil
}

func decodeSession(pt []byte) (*Session, bool) {
	if len(pt) < 2 || (pt[0] != tokenVersion && pt[0] != 1) {
		return nil, false
	}
	format := pt[0]
	sess := &Session{Kind: TokenKind(pt[1])}
	pt = pt[2:]
	exp, n := binary.Uvarint(pt)
	if n <= 0 || exp > 1<<40 {
		return nil, false
	}
	sess.Expires = time.Unix(int64(exp), 0)
	pt = pt[n:]
	var ok bool
	if sess.Upstream, pt, ok = readField(pt); !ok {
		return nil, false
	}
	if sess.UpstreamID, pt, ok = readField(pt); !ok {
		return nil, false
	}
	if sess.Version, pt, ok = readField(pt); !ok {
		return nil, false
	}
	if format >= 2 {
		if sess.Endpoint, pt, ok = readField(pt); !ok {
			return nil, false
		}
		if sess.Principal, pt, ok = readField(pt); !ok {
			return nil, false
		}
	}
	return sess, len(pt) == 0
}

func readField(b []byte) (string, []byte, bool) {
	l, n := binary.Uvarint(b)
	if n <= 0 || l > uint64(len(b)-n) {
		return "", nil, false
	}
	return string(b[n : n+int(l)]), b[n+int(l):], true
}

// Bind returns the binding of a session to principal, as Session.Principal
// carries it: a keyed hash (HMAC-SHA256 with a key derived from the
// sealing key, truncated to 16 bytes), so a token tells nothing of its
// principal even to whoever holds it; "" for no principal.
func (s *Sealer) Bind(principal string) string {
	return bindWith(s.keys[0].bind, principal)
}

// Bound reports whether an opened session belongs to principal: both have
// none, or the session's binding is principal's under the key that sealed
// the token. The binding is the principal, not its credential, so a
// refreshed token of the same principal keeps its sessions.
func (s *Sealer) Bound(sess *Session, principal string) bool {
	if sess.Principal == "" || principal == "" {
		return sess.Principal == "" && principal == ""
	}
	if last := sess.bound.Load(); last != nil && *last == principal {
		return true
	}
	k := s.keys[min(max(sess.key, 0), len(s.keys)-1)]
	if !hmac.Equal([]byte(sess.Principal), []byte(bindWith(k.bind, principal))) {
		return false
	}
	sess.bound.Store(&principal)
	return true
}

func bindWith(key []byte, principal string) string {
	if principal == "" {
		return ""
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(principal))
	return string(m.Sum(nil)[:16])
}
