package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// Bounds and defaults of an Introspector.
const (
	// MaxCached bounds the introspection results kept.
	MaxCached = 10000
	// DefaultCacheTTL is how long an active result is kept at most (and
	// never past the token's expiry).
	DefaultCacheTTL = time.Minute
	// RefusalTTL is how long a refused token (not active, expired, for
	// another resource or issuer, without a principal) is remembered as
	// refused (at most CacheTTL): a client repeating a bad token does not
	// make the endpoint be asked again at each request.
	RefusalTTL = 10 * time.Second
	// DefaultMaxInFlight is how many introspection requests an
	// Introspector sends at once when MaxInFlight is 0.
	DefaultMaxInFlight = 32
	// DefaultMaxPerClient is how many checks of one client (see
	// WithClient) may be in flight or waiting for a slot at once when
	// MaxPerClient is 0.
	DefaultMaxPerClient = 4
	// MaxSlotWait is how long a check waits for a request slot while
	// they are all busy (at most the Client's timeout) before it is
	// refused with ErrBusy.
	MaxSlotWait = 2 * time.Second
	// maxIntrospectionBytes caps an introspection answer.
	maxIntrospectionBytes = 64 << 10
)

// Introspector checks opaque tokens with an OAuth 2.0 Token Introspection
// endpoint (RFC 7662), caching each accepted result by the SHA-256 of the
// token and the audiences it was accepted for, for at most CacheTTL and
// never past the token's expiry, and each refusal but that of a token
// not valid yet for RefusalTTL (at most CacheTTL). It sends at most
// MaxInFlight requests at once: a check that finds them all busy waits
// for one to end, up to MaxSlotWait or its context's end, and then fails
// with a 503 (ErrBusy), so that clients sending new tokens at every
// request make the endpoint answer no more than that many at a time. Of
// them, one client (named with WithClient) may hold MaxPerClient at most,
// counting those waiting for a slot; its next check is refused at once
// with a 429 (ErrClientBusy), so that one client cannot take every slot.
// It is safe for concurrent use.
type Introspector struct {
	// URL is the introspection endpoint.
	URL string
	// ClientID and ClientSecret authenticate the resource server to it
	// (HTTP Basic).
	ClientID, ClientSecret string
	// Client sends the requests; nil means one with a 5 s timeout.
	Client *http.Client
	// CacheTTL: see DefaultCacheTTL. Negative disables caching, of
	// refusals too.
	CacheTTL time.Duration
	// MaxInFlight bounds the requests sent at once; 0 means
	// DefaultMaxInFlight.
	MaxInFlight int
	// MaxPerClient bounds the checks of one client in flight or waiting
	// for a slot; 0 means DefaultMaxPerClient, negative no bound.
	MaxPerClient int

	cache   principalCache
	refused ttlCache[*Error]
	once    sync.Once
	slots   chan struct{}
	// clients counts the checks of each client in flight or waiting for
	// a slot; an entry lives while its client has one, so the map holds
	// at most one per check under way.
	clientsMu sync.Mutex
	clients   map[string]int
}

// ErrClientBusy is the refusal of a check whose client (see WithClient)
// already has MaxPerClient checks in flight or waiting: the token was not
// checked, and the client should retry. It must not be modified.
var ErrClientBusy = &Error{Status: http.StatusTooManyRequests, Code: "temporarily_unavailable",
	Description: "too many of this client's tokens are being checked; retry shortly"}

type clientKey struct{}

// WithClient returns ctx naming the client a check is for (its address,
// or any key that stands for one client), for MaxPerClient.
func WithClient(ctx context.Context, client string) context.Context {
	return context.WithValue(ctx, clientKey{}, client)
}

// ErrBusy is the refusal of a check that found every introspection
// request slot busy for as long as it could wait (or whose context ended
// while it waited): the token was not checked, and the client should
// retry. Like every *Error Check returns, it may be shared between
// callers: it must not be modified.
var ErrBusy = &Error{Status: http.StatusServiceUnavailable, Code: "temporarily_unavailable",
	Description: "too many tokens are being checked; retry shortly"}

// introspection is the answer of an introspection endpoint.
type introspection struct {
	Active *bool           `json:"active"` // required (RFC 7662)
	Scope  string          `json:"scope"`
	Iss    string          `json:"iss"`
	Aud    json.RawMessage `json:"aud"`
	Exp    int64           `json:"exp"`
	Nbf    int64           `json:"nbf"`
}

// Check introspects token (or answers from the cache) and checks that it
// is active, not expired, issued by one of issuers (when any), for one of
// audiences, and names its principal in principalClaim (sub when empty)
// as a non-empty string. A result is cached for the audiences it was
// checked against: the same token presented for another resource is
// checked again. The *Error of a refusal may be shared between callers
// (a remembered refusal): it must not be modified.
func (in *Introspector) Check(ctx context.Context, token string, audiences, issuers []string, principalClaim string, now time.Time) (*Principal, error) {
	key := cacheKey(token, audiences)
	if p, ok := in.cache.get(key, now); ok {
		return p, nil
	}
	if e, ok := in.refused.get(key, now); ok {
		return nil, e
	}
	res, claims, err := in.introspectInSlot(ctx, token)
	switch err {
	case errNoSlot:
		return nil, ErrBusy
	case errClientBusy:
		return nil, ErrClientBusy
	}
	if err != nil {
		return nil, &Error{Status: http.StatusUnauthorized, Code: "invalid_token", Description: "the token could not be checked",
			Cause: fmt.Errorf("introspection: %w", err)}
	}
	p, e := in.judge(res, claims, audiences, issuers, principalClaim, now)
	if e != nil {
		if e != errNotYetValid {
			in.storeRefusal(key, e, now)
		}
		return nil, e
	}
	in.store(key, p, now)
	return p, nil
}

// errNotYetValid refuses a token before its nbf; unlike the other
// refusals it is not remembered, as the token becomes valid.
var errNotYetValid = invalid("the token is not valid yet")

// judge checks an introspection answer against the accepted audiences and
// issuers, and returns its principal.
func (in *Introspector) judge(res *introspection, claims map[string]any, audiences, issuers []string, principalClaim string, now time.Time) (*Principal, *Error) {
	if !*res.Active {
		return nil, invalid("the token is not active")
	}
	exp := time.Unix(res.Exp, 0)
	if res.Exp != 0 && !now.Before(exp) {
		return nil, invalid("the token has expired")
	}
	if res.Nbf != 0 && now.Before(time.Unix(res.Nbf, 0)) {
		return nil, errNotYetValid
	}
	if len(issuers) > 0 && !slices.Contains(issuers, res.Iss) {
		return nil, invalid("the token's issuer is not accepted")
	}
	if len(audiences) > 0 && !audienceMatches(res.Aud, audiences) {
		return nil, invalid("the token was not issued for this resource")
	}
	id, ierr := principalID(claims, principalClaim, issuers)
	if ierr != nil {
		return nil, ierr
	}
	p := &Principal{ID: id, Scopes: strings.Fields(res.Scope), Claims: claims}
	if res.Exp != 0 {
		p.Expires = exp
	}
	return p, nil
}

// acquire takes a request slot, waiting for one while they are all busy,
// up to MaxSlotWait (at most the Client's timeout) or until ctx ends;
// false when none came.
func (in *Introspector) acquire(ctx context.Context) bool {
	in.once.Do(func() {
		n := in.MaxInFlight
		if n <= 0 {
			n = DefaultMaxInFlight
		}
		in.slots = make(chan struct{}, n)
	})
	select {
	case in.slots <- struct{}{}:
		return true
	default:
	}
	d := MaxSlotWait
	if t := in.client().Timeout; t > 0 {
		d = min(d, t)
	}
	wait := time.NewTimer(d)
	defer wait.Stop()
	select {
	case in.slots <- struct{}{}:
		return true
	case <-wait.C:
	case <-ctx.Done():
	}
	return false
}

// client is the HTTP client requests are sent with.
func (in *Introspector) client() *http.Client {
	if in.Client != nil {
		return in.Client
	}
	return defaultIntrospectionClient
}

// defaultIntrospectionClient sends the requests of an Introspector
// without a Client.
var defaultIntrospectionClient = &http.Client{Timeout: DefaultFetchTimeout}

// errNoSlot: no request slot came in time; errClientBusy: the client has
// all the checks it may have.
var (
	errNoSlot     = errors.New("no introspection request slot")
	errClientBusy = errors.New("the client's introspection checks are at their bound")
)

// introspectInSlot asks the endpoint about token in a request slot, or
// fails with errNoSlot, or errClientBusy.
func (in *Introspector) introspectInSlot(ctx context.Context, token string) (*introspection, map[string]any, error) {
	if client, _ := ctx.Value(clientKey{}).(string); client != "" && in.MaxPerClient >= 0 {
		if !in.enter(client) {
			return nil, nil, errClientBusy
		}
		defer in.leave(client)
	}
	if !in.acquire(ctx) {
		return nil, nil, errNoSlot
	}
	defer func() { <-in.slots }()
	return in.introspect(ctx, token)
}

// enter counts a check of client, unless it has MaxPerClient already.
func (in *Introspector) enter(client string) bool {
	limit := in.MaxPerClient
	if limit == 0 {
		limit = DefaultMaxPerClient
	}
	in.clientsMu.Lock()
	defer in.clientsMu.Unlock()
	if in.clients[client] >= limit {
		return false
	}
	if in.clients == nil {
		in.clients = make(map[string]int)
	}
	in.clients[client]++
	return true
}

// leave counts the end of a check of client.
func (in *Introspector) leave(client string) {
	in.clientsMu.Lock()
	defer in.clientsMu.Unlock()
	if in.clients[client]--; in.clients[client] <= 0 {
		delete(in.clients, client)
	}
}

// introspect asks the endpoint about token.
func (in *Introspector) introspect(ctx context.Context, token string) (*introspection, map[string]any, error) {
	form := url.Values{"token": {token}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, in.URL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if in.ClientID != "" {
		req.SetBasicAuth(url.QueryEscape(in.ClientID), url.QueryEscape(in.ClientSecret))
	}
	resp, err := in.client().Do(req)
	if err != nil {
		return nil, nil, redactURL(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("introspection answered %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIntrospectionBytes))
	if err != nil {
		return nil, nil, err
	}
	var res introspection
	var claims map[string]any
	if err := json.Unmarshal(body, &res); err != nil {
		return nil, nil, fmt.Errorf("decoding introspection: %w", err)
	}
	if res.Active == nil {
		// null, {} or an error object: not an answer about the token.
		return nil, nil, errors.New("introspection answer without \"active\"")
	}
	_ = json.Unmarshal(body, &claims)
	return &res, claims, nil
}

// store caches an active result until the earlier of CacheTTL and the
// token's expiry, keeping at most MaxCached entries.
func (in *Introspector) store(key [32]byte, p *Principal, now time.Time) {
	ttl := in.CacheTTL
	if ttl < 0 {
		return
	}
	if ttl == 0 {
		ttl = DefaultCacheTTL
	}
	until := now.Add(ttl)
	if !p.Expires.IsZero() && p.Expires.Before(until) {
		until = p.Expires
	}
	in.cache.put(key, p, until, now, MaxCached)
}

// storeRefusal remembers a refusal for RefusalTTL (at most CacheTTL),
// keeping at most MaxCached.
func (in *Introspector) storeRefusal(key [32]byte, e *Error, now time.Time) {
	ttl := RefusalTTL
	if in.CacheTTL < 0 {
		return
	}
	if in.CacheTTL > 0 {
		ttl = min(ttl, in.CacheTTL)
	}
	in.refused.put(key, e, now.Add(ttl), now, MaxCached)
}

// redactURL drops the query and user info from the address a request
// error names: an endpoint's address may carry a key, and the error goes
// to the log.
func redactURL(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	u, perr := url.Parse(ue.URL)
	if perr != nil {
		return &url.Error{Op: ue.Op, URL: "(address withheld)", Err: ue.Err}
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment = nil, "", false, ""
	return &url.Error{Op: ue.Op, URL: u.String(), Err: ue.Err}
}

// audienceMatches reports whether an aud value (a string or a list)
// names one of audiences.
func audienceMatches(raw json.RawMessage, audiences []string) bool {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return slices.Contains(audiences, one)
	}
	var list []string
	if json.Unmarshal(raw, &list) == nil {
		for _, a := range list {
			if slices.Contains(audiences, a) {
				return true
			}
		}
	}
	return false
}
