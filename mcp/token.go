package mcp

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
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
}

// Limits of what a token may carry.
const (
	// MaxUpstreamSessionID caps the length of an upstream's session id.
	MaxUpstreamSessionID = 512
	// MaxTokenLength caps the length of a token a client may present; a
	// longer one is refused before any decoding.
	MaxTokenLength = 1400
	maxUpstreamLen = 255
	keySize        = 32
	tokenVersion   = 1
)

// openBufPool holds Open's scratch buffers: a token's text, then its
// decoded bytes.
var openBufPool = sync.Pool{New: func() any { return new([2 * MaxTokenLength]byte) }}

// Token errors. Each answers 404: the client re-initializes.
var (
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
}

var tokenAAD = []byte("mcpgate session token v1")

// GenerateKey returns a new random 32-byte key.
func GenerateKey() []byte {
	k := make([]byte, keySize)
	_, _ = rand.Read(k) // crypto/rand never fails on supported platforms
	return k
}

// ParseKey turns a configured key into 32 bytes of key material. A value
// that is base64 (standard or URL alphabet, padded or not) of exactly 32
// bytes is used as is; any other value of at least 32 characters is a
// passphrase stretched with HKDF-SHA256 (cheap on purpose: it runs once at
// provisioning, never per request).
func ParseKey(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == keySize {
			return b, nil
		}
	}
	if len(s) < keySize {
		return nil, fmt.Errorf("session key must be base64 of 32 bytes or a passphrase of at least 32 characters")
	}
	return hkdf.Key(sha256.New, []byte(s), nil, "mcpgate session key", keySize)
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
		s.keys = append(s.keys, sealKey{id: sum[0], aead: aead})
	}
	return s, nil
}

// Seal returns the token for sess: base64url without padding of a key id,
// a random nonce and the AES-GCM ciphertext. Every character is in the
// visible ASCII range that MCP requires of session ids.
func (s *Sealer) Seal(sess *Session) (string, error) {
	if len(sess.Upstream) > maxUpstreamLen || len(sess.UpstreamID) > MaxUpstreamSessionID || len(sess.Version) > 32 {
		return "", errors.New("session fields too long to seal")
	}
	k := s.keys[0]
	var buf [1 + 12 + 64 + maxUpstreamLen + MaxUpstreamSessionID + 32 + 16]byte
	out := buf[:0]
	out = append(out, k.id)
	nonce := buf[1:13]
	_, _ = rand.Read(nonce)
	out = out[:13]
	pt := make([]byte, 0, 16+len(sess.Upstream)+len(sess.UpstreamID)+len(sess.Version))
	pt = append(pt, tokenVersion, byte(sess.Kind))
	pt = binary.AppendUvarint(pt, uint64(sess.Expires.Unix()))
	pt = appendField(pt, sess.Upstream)
	pt = appendField(pt, sess.UpstreamID)
	pt = appendField(pt, sess.Version)
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
	for _, k := range s.keys {
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
	if !ok {
		return nil, ErrTokenInvalid
	}
	if !now.Before(sess.Expires) {
		return sess, ErrTokenExpired
	}
	return sess, nil
}

func decodeSession(pt []byte) (*Session, bool) {
	if len(pt) < 2 || pt[0] != tokenVersion {
		return nil, false
	}
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
	return sess, len(pt) == 0
}

func readField(b []byte) (string, []byte, bool) {
	l, n := binary.Uvarint(b)
	if n <= 0 || l > uint64(len(b)-n) {
		return "", nil, false
	}
	return string(b[n : n+int(l)]), b[n+int(l):], true
}
