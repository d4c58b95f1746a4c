package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/resources"
)

// sealResponse runs on every upstream response, before reverse_proxy copies
// its headers to the client, and makes sure no upstream session id reaches
// the client unsealed or unregistered: the id of the request's own session
// becomes the client's token again; a new id starts a session only on an
// initialize answer, where it is sealed into a new token and registered;
// any other id is dropped. An initialize answer whose id cannot be carried
// (empty, not visible ASCII, too long, repeated) is replaced by a 502 with
// a JSON-RPC error, and the upstream session is deleted. It returns the
// response to hand on, which may be a replacement.
func (st *State) sealResponse(req *http.Request, resp *http.Response, upstream string) *http.Response {
	hdr := resp.Header
	ids := hdr.Values(mcp.HeaderSessionID)
	if len(ids) == 0 {
		if st.p.RequireSession && st.call.IsInitialize() && st.res.Session == nil && resp.StatusCode/100 == 2 {
			st.p.warnSessionless(upstream)
		}
		return resp
	}
	p := st.p
	if st.res.Session != nil && st.res.Session.Kind == mcp.TokenSession && len(ids) == 1 && ids[0] == st.res.Session.UpstreamID {
		hdr.Set(mcp.HeaderSessionID, st.res.Token)
		return resp
	}
	hdr.Del(mcp.HeaderSessionID)
	if !st.call.IsInitialize() || st.res.Session != nil || resp.StatusCode < 200 || resp.StatusCode > 299 {
		st.p.Metrics.UpstreamID("dropped")
		if c := p.Logger.Check(zap.DebugLevel, "upstream session id on an answer that starts no session dropped"); c != nil {
			c.Write(zap.String("method", st.call.First().Method))
		}
		return resp
	}
	sid := ids[0]
	if len(ids) != 1 || !mcp.ValidSessionID(sid) || upstream == "" {
		st.p.Metrics.UpstreamID("unusable")
		p.Logger.Warn("upstream session id cannot be carried; initialize answered with 502",
			zap.String("upstream", upstream), zap.Int("ids", len(ids)), zap.Int("length", len(sid)))
		if len(ids) == 1 && sid != "" && validHeaderValue(sid) {
			st.deleteUpstreamSession(req, sid)
		}
		return st.replaceResponse(resp, http.StatusBadGateway, mcp.CodeInternalError,
			"the upstream's session id cannot be carried by the proxy")
	}
	version := st.call.First().ProtocolVersion
	if version == "" {
		version = st.call.Version
	}
	version = mcp.SessionVersion(version)
	sess := &mcp.Session{
		Kind:       mcp.TokenSession,
		Upstream:   upstream,
		UpstreamID: sid,
		Version:    version,
		Expires:    p.Now().Add(p.SessionLifetime),
		Principal:  p.Sealer.Bind(st.Principal),
	}
	tok, err := p.Sealer.Seal(sess)
	if err != nil {
		st.p.Metrics.UpstreamID("unusable")
		p.Logger.Warn("cannot seal upstream session id; initialize answered with 502", zap.Error(err))
		st.deleteUpstreamSession(req, sid)
		return st.replaceResponse(resp, http.StatusBadGateway, mcp.CodeInternalError,
			"the upstream's session id cannot be carried by the proxy")
	}
	if err := p.openSession(st, req, upstream, sid, version); err != nil {
		st.deleteUpstreamSession(req, sid)
		ref := p.SessionTableRefusal(err, "")
		return st.replaceResponse(resp, ref.Status, ref.Code, ref.Message)
	}
	hdr.Set(mcp.HeaderSessionID, tok)
	st.p.Metrics.SessionCreated()
	return resp
}

// validHeaderValue reports whether v can be sent as a header value.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// bodyBoundHeaders are the fields of an answer that name the exact bytes
// of its body: a digest or an entity tag. They go with a body the proxy
// changes or writes itself, which they would misname.
var bodyBoundHeaders = []string{"Content-Digest", "Repr-Digest", "Digest", "Content-MD5", "ETag"}

// dropBodyBound removes bodyBoundHeaders from h.
func dropBodyBound(h http.Header) {
	for _, k := range bodyBoundHeaders {
		h.Del(k)
	}
}

// replaceResponse closes resp's body and returns, in its place, an answer
// of the proxy's own with a JSON-RPC error for the request (see
// errorAnswer).
func (st *State) replaceResponse(resp *http.Response, status, code int, msg string) *http.Response {
	if resp.Body != nil {
		_ = resp.Body.Close()
	}
	body := st.errorAnswer(code, msg)
	st.code.Store(int32(code))
	hdr := http.Header{}
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		hdr.Set("Retry-After", RetryAfter)
	}
	st.status = status
	return &http.Response{
		Status:        strconv.Itoa(status) + " " + http.StatusText(status),
		StatusCode:    status,
		Proto:         resp.Proto,
		ProtoMajor:    resp.ProtoMajor,
		ProtoMinor:    resp.ProtoMinor,
		Header:        hdr,
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       resp.Request,
	}
}

// errorAnswer is the proxy's answer in place of the upstream's: a
// JSON-RPC error for the request or, for a batch, an array that holds an
// error for each request the upstream was sent and the errors of the
// batch's denied requests.
func (st *State) errorAnswer(code int, msg string) []byte {
	if !st.call.Peek.Batch {
		return mcp.AppendError(nil, st.requestID(), code, msg)
	}
	answers := slices.Clone(st.Spliced)
	for _, id := range st.upstreamIDs() {
		answers = append(answers, mcp.AppendError(nil, id, code, msg))
	}
	if len(answers) == 0 {
		return mcp.AppendError(nil, "", code, msg)
	}
	return mcp.AppendBatch(nil, answers)
}

// bodiless returns a copy of req, the upstream request of a POST, under
// ctx, as a request of method without a body: none of the POST's body
// framing goes with it (a chunked POST would make it chunked too, with an
// empty body, and announce its trailers), nor the header fields of its
// body (mcp.DropBodyHeaders).
func bodiless(ctx context.Context, req *http.Request, method string) *http.Request {
	out := req.Clone(ctx)
	out.Method = method
	out.Body, out.ContentLength, out.GetBody = http.NoBody, 0, nil
	out.TransferEncoding, out.Trailer = nil, nil
	mcp.DropBodyHeaders(out.Header)
	return out
}

// deleteUpstreamSession ends an upstream session the proxy will not use,
// with a DELETE sent like req (same upstream, transport and headers), in
// the background if a side-request slot is free.
func (st *State) deleteUpstreamSession(req *http.Request, sid string) {
	del := bodiless(context.WithoutCancel(req.Context()), req, http.MethodDelete)
	del.Header.Set(mcp.HeaderSessionID, sid)
	p := st.p
	inner, logger := p.Inner, p.Logger
	p.goSide("upstream session delete", func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, sideTimeout)
		defer cancel()
		resp, err := inner.RoundTrip(del.WithContext(ctx))
		if err != nil {
			logger.Debug("deleting an unusable upstream session failed", zap.Error(err))
			return
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		_ = resp.Body.Close()
	})
}

// openSession records a session the upstream just created, or reports
// why it cannot be.
func (p *Proxy) openSession(st *State, req *http.Request, upstream, sid, version string) error {
	g := p.Gov
	info := resources.SessionInfo{
		Key: mcp.SessionKey(upstream, sid), Upstream: upstream, Version: version, UpstreamID: sid,
		ClientKey: st.ClientKey, Endpoint: mcp.SessionEndpoint(st.r), Host: mcp.SessionHost(st.r.Host),
	}
	_, err := g.Sessions().Open(info, time.Now(), g.Level() == admission.LevelProtective)
	if errors.Is(err, resources.ErrExists) {
		// The upstream handed out an id that is live already: the same
		// session.
		return nil
	}
	if err != nil {
		if c := p.Logger.Check(zap.DebugLevel, "new session not registered"); c != nil {
			c.Write(zap.Error(err))
		}
	}
	return err
}

// isEventStream reports whether a response's media type is
// text/event-stream, ignoring case and parameters.
func isEventStream(h http.Header) bool {
	ct := h.Get("Content-Type")
	const mt = "text/event-stream"
	if len(ct) < len(mt) || !strings.EqualFold(ct[:len(mt)], mt) {
		return false
	}
	rest := strings.TrimLeft(ct[len(mt):], " \t")
	return rest == "" || rest[0] == ';'
}

// isJSONAnswer reports whether a client may read a response as JSON:
// no media type, application/json, application/json-rpc or a +json type,
// whatever their parameters (well-formed or not).
func isJSONAnswer(h http.Header) bool {
	ct := h.Get("Content-Type")
	if ct == "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	if mt == "" && err != nil {
		mt, _, _ = strings.Cut(ct, ";")
		mt = strings.ToLower(strings.TrimSpace(mt))
	}
	return mt == "application/json" || mt == "application/json-rpc" || strings.HasSuffix(mt, "+json")
}

// openLegacy registers the session of a legacy (2024-11-05) HTTP+SSE
// stream the upstream just opened. The stream is the session: it is in
// flight while the stream is open and leaves the registry when it ends.
// It reports false when the session cannot be registered.
func (st *State) openLegacy(upstream string) bool {
	p := st.p
	g := p.Gov
	var b [12]byte
	_, _ = rand.Read(b[:])
	id := "legacy-" + base64.RawURLEncoding.EncodeToString(b[:])
	info := resources.SessionInfo{
		Key: mcp.SessionKey(upstream, id), Upstream: upstream, Version: mcp.Version20241105, UpstreamID: id,
		ClientKey: st.ClientKey,
	}
	s, err := g.Sessions().Open(info, time.Now(), g.Level() == admission.LevelProtective)
	if err != nil {
		st.p.Metrics.SessionRefused("full")
		return false
	}
	end := s.Begin()
	st.mu.Lock()
	st.Session, st.legacyID, st.legacyUpstream = s, id, upstream
	st.legacyEnd = func() {
		end()
		// The upstream's session ended with its stream: a later POST to
		// its endpoint gets 404 (see admission.TrackSession), as the
		// upstream would give, or never give (the TypeScript SDK's
		// server leaves it unanswered).
		g.Sessions().RemoveEnded(info.Key)
	}
	st.mu.Unlock()
	st.p.Metrics.SessionCreated()
	return true
}

// rewriteEndpoint maps a legacy endpoint URL under the proxy's origin and
// route prefix. The upstream's endpoint, with the upstream's session id in
// its query, is sealed into the route token the URL carries, so the client
// never sees it.
func (st *State) rewriteEndpoint(r *http.Request, data string) (string, bool) {
	p := st.p
	upstreamEP, clientPath, err := mcp.MapEndpoint(data, r.URL.Path, st.RoutePrefix)
	if err != nil {
		p.Logger.Warn("legacy endpoint event not rewritten", zap.Error(err))
		return "", false
	}
	if p.LegacyParams != nil {
		_, query := mcp.SplitEndpoint(upstreamEP)
		p.LegacyParams.Note(query)
	}
	st.mu.Lock()
	id, upstream := st.legacyID, st.legacyUpstream
	st.mu.Unlock()
	tok, err := p.Sealer.Seal(&mcp.Session{
		Kind:       mcp.TokenLegacy,
		Upstream:   upstream,
		UpstreamID: id,
		Version:    mcp.Version20241105,
		Expires:    p.Now().Add(p.SessionLifetime),
		Endpoint:   upstreamEP,
		Principal:  p.Sealer.Bind(st.Principal),
	})
	if err != nil {
		st.p.Metrics.UpstreamID("unusable")
		p.Logger.Warn("legacy endpoint cannot be sealed; stream closed", zap.Error(err), zap.Int("length", len(upstreamEP)))
		return "", false
	}
	return mcp.EndpointURL(clientPath, tok), true
}

// SessionTableRefusal answers a session the registry could not take: 429
// when the client holds its share of sessions, 503 when the table is
// full, both with Retry-After, and counts it.
func (p *Proxy) SessionTableRefusal(err error, id string) *mcp.Refusal {
	if errors.Is(err, resources.ErrClientFull) {
		p.Metrics.SessionRefused("client_full")
		return mcp.Refuse(http.StatusTooManyRequests, mcp.CodeServerError, id,
			"too many sessions for this client (client_max_sessions), retry after "+RetryAfter+"s")
	}
	p.Metrics.SessionRefused("full")
	return mcp.Refuse(http.StatusServiceUnavailable, mcp.CodeServerError, id,
		"session limit reached, retry after "+RetryAfter+"s")
}
