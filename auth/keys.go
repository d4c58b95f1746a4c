package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Bounds and defaults of a KeySet.
const (
	// MaxJWKSBytes caps a JWKS document.
	MaxJWKSBytes = 1 << 20
	// MaxJWKSKeys caps the keys kept from one JWKS document.
	MaxJWKSKeys = 100
	// DefaultRefresh is how long a JWKS document is used before it is
	// fetched again, when its answer sets no max-age.
	DefaultRefresh = time.Hour
	// DefaultMinRefresh is how often, at most, the JWKS is fetched because
	// a token names a key it does not hold.
	DefaultMinRefresh = time.Minute
	// DefaultMaxStale is how long keys are served after their document
	// expired while fetching it again fails.
	DefaultMaxStale = 24 * time.Hour
	// DefaultFetchTimeout bounds one fetch of the JWKS.
	DefaultFetchTimeout = 5 * time.Second
)

// ErrUnknownKey means no key matches the token's key id.
var ErrUnknownKey = errors.New("no key for the token's key id")

// KeySet finds the key a token was signed with: among static keys, or in
// a JWKS document fetched from URL, cached, fetched again when it expires
// or when a token names an unknown key (at most once per MinRefresh), and
// served stale for at most MaxStale while fetching fails. Each key may be
// bound to the issuers whose tokens it verifies, so that one issuer's key
// cannot sign for another. It is safe for concurrent use.
type KeySet struct {
	// URL is the JWKS document's address; empty for static keys only.
	URL string
	// Issuers are the issuers whose tokens the JWKS's keys verify; empty
	// means any the Verifier accepts.
	Issuers []string
	// Client fetches the JWKS; nil means a client with FetchTimeout.
	Client *http.Client
	// Refresh, MinRefresh, MaxStale and FetchTimeout: see the defaults.
	Refresh, MinRefresh, MaxStale, FetchTimeout time.Duration

	static []boundKey

	mu        sync.Mutex
	keys      []boundKey    // from the last good fetch
	fetched   time.Time     // when keys were fetched
	expires   time.Time     // when keys should be fetched again
	attempted time.Time     // last fetch attempt
	fetching  chan struct{} // closed when the fetch in progress ends
	lastErr   error
}

// boundKey is a key with the issuers whose tokens it verifies (any the
// Verifier accepts, when none).
type boundKey struct {
	jose.JSONWebKey
	issuers []string
}

// NewStaticKeySet returns a key set of the given keys only, each for any
// issuer. A key with no key id matches any token; a symmetric key must
// have its algorithm set.
func NewStaticKeySet(keys []jose.JSONWebKey) *KeySet {
	s := &KeySet{}
	s.AddStatic(keys...)
	return s
}

// AddStatic adds keys that are always available besides the JWKS, each
// verifying tokens of any issuer the Verifier accepts.
func (s *KeySet) AddStatic(keys ...jose.JSONWebKey) { s.AddStaticFor(nil, keys...) }

// AddStaticFor adds keys that are always available besides the JWKS,
// each verifying only tokens whose iss is one of issuers (any the
// Verifier accepts, when issuers is empty).
func (s *KeySet) AddStaticFor(issuers []string, keys ...jose.JSONWebKey) {
	for _, k := range keys {
		s.static = append(s.static, boundKey{JSONWebKey: k, issuers: slices.Clone(issuers)})
	}
}

// Key returns the key that may verify alg for a token naming the key id
// kid, fetching the JWKS as its freshness, MinRefresh and MaxStale allow.
// A token naming a kid gets the static key of that kid, else the JWKS's
// key of that kid, and only when neither holds one a static key without a
// kid: such a key does not hide the JWKS. A token naming no kid gets the
// one key that may verify alg, static keys first. Key does not look at
// the issuers keys are bound to; Verifier does.
func (s *KeySet) Key(ctx context.Context, kid string, alg jose.SignatureAlgorithm, now time.Time) (jose.JSONWebKey, error) {
	k, err := s.key(ctx, kid, alg, "", now)
	return k.JSONWebKey, err
}

// key is Key for a token that claims the issuer iss (not yet verified;
// "" for any): keys bound to other issuers are passed over, and the JWKS
// is not consulted when its keys are bound to other issuers. The key
// returned says which issuers it verifies, for the caller to check
// against the verified claim.
func (s *KeySet) key(ctx context.Context, kid string, alg jose.SignatureAlgorithm, iss string, now time.Time) (boundKey, error) {
	useJWKS := s.URL != "" && (iss == "" || len(s.Issuers) == 0 || slices.Contains(s.Issuers, iss))
	if k, ok := pick(s.static, kid, alg, iss, true, kid != "" && useJWKS); ok {
		return k, nil
	}
	if !useJWKS {
		return boundKey{}, ErrUnknownKey
	}
	k, err := s.fromJWKS(ctx, kid, alg, now)
	if err != nil && kid != "" {
		// No key of that kid anywhere: a static key without one.
		if k, ok := pick(s.static, kid, alg, iss, true, false); ok {
			return k, nil
		}
	}
	return k, err
}

// fromJWKS returns the JWKS's key for kid and alg, bound to Issuers.
func (s *KeySet) fromJWKS(ctx context.Context, kid string, alg jose.SignatureAlgorithm, now time.Time) (boundKey, error) {
	s.mu.Lock()
	keys, fresh := s.keys, now.Before(s.expires)
	s.mu.Unlock()
	if k, ok := pick(keys, kid, alg, "", false, false); ok && fresh {
		k.issuers = s.Issuers
		return k, nil
	}
	// Expired, or no such key: fetch again if allowed, then look again,
	// serving stale keys while the fetch fails.
	err := s.refresh(ctx, now)
	s.mu.Lock()
	keys, stale := s.keys, now.Sub(s.expires) <= s.maxStale()
	s.mu.Unlock()
	if k, ok := pick(keys, kid, alg, "", false, false); ok && (err == nil || stale) {
		k.issuers = s.Issuers
		return k, nil
	}
	if err != nil {
		return boundKey{}, fmt.Errorf("%w (fetching keys: %v)", ErrUnknownKey, err)
	}
	return boundKey{}, ErrUnknownKey
}

// pick finds the key for kid and alg, among those bound to iss (when not
// empty): the key of that kid, else, unless exact, the one key without a
// kid that may verify alg (for a token without a kid, the one key of any
// kid). Keys from a JWKS are never symmetric: an HMAC algorithm only ever
// verifies with a static secret.
func pick(keys []boundKey, kid string, alg jose.SignatureAlgorithm, iss string, allowSymmetric, exact bool) (boundKey, bool) {
	var found boundKey
	n := 0
	for _, k := range keys {
		if kid != "" && k.KeyID != kid && (exact || k.KeyID != "") {
			continue
		}
		if iss != "" && len(k.issuers) > 0 && !slices.Contains(k.issuers, iss) {
			continue
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if k.Algorithm != "" && k.Algorithm != string(alg) {
			continue
		}
		_, symmetric := k.Key.([]byte)
		if symmetric != isHMAC(alg) || (symmetric && !allowSymmetric) {
			continue
		}
		if kid != "" && k.KeyID == kid {
			return k, true
		}
		found = k
		n++
	}
	return found, n == 1
}

func isHMAC(alg jose.SignatureAlgorithm) bool {
	return alg == jose.HS256 || alg == jose.HS384 || alg == jose.HS512
}

func (s *KeySet) maxStale() time.Duration {
	if s.MaxStale > 0 {
		return s.MaxStale
	}
	return DefaultMaxStale
}

// refresh fetches the JWKS unless the last attempt is under MinRefresh
// old (then it reports that attempt's error). Concurrent callers share one
// fetch, which runs on its own goroutine, bounded by FetchTimeout: a
// caller that goes away stops waiting for it but does not cut it short,
// so one client leaving cannot fail the fetch for the others until
// MinRefresh has passed.
func (s *KeySet) refresh(ctx context.Context, now time.Time) error {
	s.mu.Lock()
	wait := s.fetching
	if wait == nil {
		min := s.MinRefresh
		if min <= 0 {
			min = DefaultMinRefresh
		}
		if !s.attempted.IsZero() && now.Sub(s.attempted) < min {
			err := s.lastErr
			s.mu.Unlock()
			return err
		}
		s.attempted = now
		wait = make(chan struct{})
		s.fetching = wait
		go s.fetchAndKeep(context.WithoutCancel(ctx), now, wait)
	}
	s.mu.Unlock()
	select {
	case <-wait:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// fetchAndKeep fetches the JWKS and keeps the keys or the error, then
// closes done.
func (s *KeySet) fetchAndKeep(ctx context.Context, now time.Time, done chan struct{}) {
	keys, maxAge, err := s.fetch(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fetching = nil
	close(done)
	s.lastErr = err
	if err != nil {
		return
	}
	if maxAge <= 0 {
		maxAge = s.Refresh
		if maxAge <= 0 {
			maxAge = DefaultRefresh
		}
	}
	s.keys, s.fetched, s.expires = keys, now, now.Add(maxAge)
}

// fetch gets and parses the JWKS document, and its max-age.
func (s *KeySet) fetch(ctx context.Context) ([]boundKey, time.Duration, error) {
	timeout := s.FetchTimeout
	if timeout <= 0 {
		timeout = DefaultFetchTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	client := s.Client
	if client == nil {
		client = &http.Client{Timeout: timeout}
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, redactURL(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, fmt.Errorf("JWKS answered %s", resp.Status)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "" && !strings.Contains(mt, "json") {
		return nil, 0, fmt.Errorf("JWKS is %s, not JSON", mt)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxJWKSBytes+1))
	if err != nil {
		return nil, 0, err
	}
	if len(body) > MaxJWKSBytes {
		return nil, 0, errors.New("JWKS document too large")
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, 0, fmt.Errorf("decoding JWKS: %w", err)
	}
	keys := make([]boundKey, 0, min(len(set.Keys), MaxJWKSKeys))
	for _, k := range set.Keys {
		if len(keys) == MaxJWKSKeys {
			break
		}
		if _, symmetric := k.Key.([]byte); symmetric || !k.Valid() {
			continue
		}
		keys = append(keys, boundKey{JSONWebKey: k.Public()})
	}
	return keys, maxAge(resp.Header.Get("Cache-Control")), nil
}

// maxAge reads max-age from a Cache-Control header, bounded to a minute
// at least and a day at most; 0 when absent.
func maxAge(cc string) time.Duration {
	for part := range strings.SplitSeq(cc, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || !strings.EqualFold(k, "max-age") {
			continue
		}
		secs, err := strconv.Atoi(strings.Trim(v, `"`))
		if err != nil || secs < 0 {
			return 0
		}
		return min(max(time.Duration(secs)*time.Second, time.Minute), 24*time.Hour)
	}
	return 0
}
