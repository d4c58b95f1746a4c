package relay

import (
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/sse"
)

// Denials writes the answers of requests whose messages the access rules
// all denied the way a handler's upstreams answer calls of things they do
// not have: in the form (JSON or SSE) and with the headers of their last
// answers to POSTs, which Answer notes when the rules are enforced.
type Denials struct {
	sse     atomic.Bool // the last answer to a POST was an SSE stream
	headers [2]atomic.Pointer[answerTemplate]
	seen    atomic.Uint64
}

// answerTemplate is what a denial copies of an upstream's answer: its
// headers that are the same for every caller (templateHeaders) and the
// Via that reverse_proxy adds.
type answerTemplate struct {
	header http.Header
	via    string
	// session: the answer carried the session's id.
	session bool
}

// templateHeaders are the fields of an upstream's answer a denial copies:
// those that describe the server and the kind of answer, the same for
// every caller. The template is shared by every caller of the handler, so
// the others, which may name one request or one caller (a request id,
// trace context, a caller's rate limit, a cookie, a digest of the body),
// are left out: a denial never carries what an upstream told another
// caller.
var templateHeaders = []string{
	"Access-Control-Allow-Credentials", "Access-Control-Allow-Origin", "Access-Control-Expose-Headers",
	"Cache-Control", "Content-Language", "Content-Security-Policy", "Content-Type",
	"Cross-Origin-Embedder-Policy", "Cross-Origin-Opener-Policy", "Cross-Origin-Resource-Policy",
	"Permissions-Policy", "Pragma", "Referrer-Policy", "Server", "Strict-Transport-Security",
	"Timing-Allow-Origin", "Vary", "X-Accel-Buffering", "X-Content-Type-Options", "X-Frame-Options",
	"X-Powered-By", "X-Xss-Protection",
}

// Note keeps the headers of an upstream's 200 answer to a POST, the
// first one of each kind and then one in 256.
func (d *Denials) Note(resp *http.Response, streamed bool) {
	d.sse.Store(streamed)
	slot := d.slot(streamed)
	if slot.Load() != nil && d.seen.Add(1)%256 != 0 {
		return
	}
	hdr := http.Header{}
	for _, k := range templateHeaders {
		if v := resp.Header[k]; len(v) > 0 {
			hdr[k] = append([]string(nil), v...)
		}
	}
	slot.Store(&answerTemplate{header: hdr, session: resp.Header.Get(mcp.HeaderSessionID) != "",
		via: strconv.Itoa(resp.ProtoMajor) + "." + strconv.Itoa(resp.ProtoMinor) + " Caddy"})
}

// slot holds the template of the JSON answers, or of the SSE ones.
func (d *Denials) slot(streamed bool) *atomic.Pointer[answerTemplate] {
	if streamed {
		return &d.headers[1]
	}
	return &d.headers[0]
}

// headersFor sets a denial's headers as an upstream's answer of the
// kind has them, through reverse_proxy: its own headers, the session's id
// (the client's token) when answers carry it, Caddy's Via and no Server.
func (d *Denials) headersFor(hdr http.Header, streamed bool, token string) {
	t := d.slot(streamed).Load()
	if t == nil {
		return
	}
	hdr.Del("Server")
	for k, v := range t.header {
		hdr[k] = append([]string(nil), v...)
	}
	hdr["Via"] = append(hdr["Via"], t.via)
	if t.session && token != "" {
		hdr.Set(mcp.HeaderSessionID, token)
	}
}

// Write answers request r (call, in session res), whose messages are all
// denied, with answers, the errors of its denied requests, and returns
// the status it wrote: a notification is accepted (202) and dropped; a
// request gets its errors in a JSON answer, or as events of an SSE answer
// when the upstreams answer that way (or the client accepts nothing
// else), or, in a legacy session whose stream the process relays,
// accepted (202) with its errors sent on the stream.
func (d *Denials) Write(w http.ResponseWriter, r *http.Request, call *mcp.Call, res mcp.Resolution, answers [][]byte) int {
	hdr := w.Header()
	if len(answers) == 0 || SendOnLegacyStream(res, answers) {
		w.WriteHeader(http.StatusAccepted)
		return http.StatusAccepted
	}
	accept := r.Header.Get("Accept")
	if (d.sse.Load() || !strings.Contains(accept, "application/json")) && strings.Contains(accept, "text/event-stream") {
		hdr.Set("Content-Type", "text/event-stream")
		hdr.Set("Cache-Control", "no-cache")
		d.headersFor(hdr, true, res.Token)
		w.WriteHeader(http.StatusOK)
		// A relayed answer's events carry the proxy's ids where the
		// client can resume them; so do these.
		prefix := ""
		if mcp.Resumable(r.Method, call, res.Session != nil, false) {
			prefix = sse.NewIDPrefix()
		}
		var buf []byte
		for i, a := range answers {
			id := ""
			if prefix != "" {
				id = prefix + strconv.Itoa(i+1)
			}
			buf = sse.AppendEvent(buf, id, "message", a)
		}
		_, _ = w.Write(buf)
		return http.StatusOK
	}
	body := answers[0]
	if call.Peek.Batch {
		body = mcp.AppendBatch(nil, answers)
	}
	hdr.Set("Content-Type", "application/json")
	d.headersFor(hdr, false, res.Token)
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	return http.StatusOK
}
