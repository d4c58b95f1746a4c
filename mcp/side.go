package mcp

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
)

// HasSessionDelete reports whether a session negotiated at version ends
// with an HTTP DELETE: the session era (2025-03-26 up to 2026-07-28). A
// legacy session ends with its SSE stream, and the stateless revision has
// no sessions.
func HasSessionDelete(version string) bool {
	era, ok := EraOf(version)
	return ok && era == EraSession
}

// SideHeaders returns the MCP headers of the DELETE that ends an evicted
// session upstream: the upstream's session id and the negotiated version,
// when known. (A notifications/cancelled goes with the headers of the
// request it cancels: see CancelHeaders.)
func SideHeaders(upstreamID, version string) http.Header {
	h := make(http.Header, 4)
	if upstreamID != "" {
		h.Set(HeaderSessionID, upstreamID)
	}
	if version != "" {
		h.Set(HeaderProtocolVersion, version)
	}
	return h
}

// SameID reports whether got, a raw JSON-RPC id, is id written the same
// way or another way (see IDKey), as a server that decodes ids and writes
// them again answers with it ("a" for "\u0061").
func SameID(got []byte, id string) bool {
	if string(got) == id {
		return true
	}
	return (bytes.IndexByte(got, '\\') >= 0 || strings.IndexByte(id, '\\') >= 0) && IDKey(string(got)) == IDKey(id)
}

// IDKey returns the key under which a raw JSON-RPC id (an Envelope's ID,
// or ResponseID's) equals the same id written another way: a string is
// compared once unescaped ("\u0061" is "a"), a number as written; a
// string id and a number never share a key.
func IDKey(raw string) string {
	if len(raw) < 2 || raw[0] != '"' {
		return raw
	}
	if strings.IndexByte(raw, '\\') < 0 {
		return raw[:len(raw)-1]
	}
	var s string
	if json.Unmarshal([]byte(raw), &s) != nil {
		return raw
	}
	return `"` + s
}

// ResponseID returns the raw JSON id of data, the data of one SSE event,
// when it is a JSON-RPC response (a result or an error) with a non-null
// id; id is a sub-slice of data. It reads only the top-level keys of the
// message and skips their values without decoding them; a message that is
// not one well-formed JSON object up to its last key is not a response.
// err is ErrAmbiguous (and ok false) when a top-level key differs from
// "id", "result" or "error" only as encoding/json's matching ignores
// (case, Unicode folding): a decoder may read another id, or an answer,
// where this reading sees none.
func ResponseID(data []byte) (id []byte, ok bool, err error) {
	s := scanner{b: data}
	s.ws()
	if s.eof() || s.b[s.i] != '{' {
		return nil, false, nil
	}
	s.i++
	var answer bool
	for first := true; ; first = false {
		key, more, kerr := s.nextKey(first)
		if kerr != nil || !more {
			ok = kerr == nil && answer && len(id) > 0 && string(id) != "null"
			if !ok {
				id = nil
			}
			return id, ok, nil
		}
		switch string(key) {
		case "id":
			if id, kerr = s.rawValue(); kerr != nil {
				return nil, false, nil
			}
			continue
		case "result", "error":
			answer = true
		case "jsonrpc":
		default:
			if m, _, _ := classifyKey(key, setEnvelope); m == envID || m == envResult || m == envError {
				return nil, false, ambiguousKey(setEnvelope, key, m, false)
			}
		}
		if s.skip() != nil {
			return nil, false, nil
		}
	}
}

// CancelHeaders returns the headers of a notifications/cancelled the proxy
// posts for a client request that had header h: the client's own (its
// session, version and credentials) but those of its body (see
// DropBodyHeaders) and its Last-Event-ID, for a JSON body of the proxy's.
func CancelHeaders(h http.Header) http.Header {
	hdr := h.Clone()
	DropBodyHeaders(hdr)
	hdr.Del(HeaderLastEventID)
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Accept", "application/json, text/event-stream")
	return hdr
}

// DropBodyHeaders removes from h, the header of a client's POST, the
// fields that describe its body or how it is sent: every Content-* field
// (its type, length, encoding, digest...), Digest, Repr-Digest, Expect,
// Trailer and Transfer-Encoding. A request of the proxy's own built from
// the POST, with a body of its own or none, would otherwise claim them:
// an upstream that checks a digest would refuse it, and one that sees
// Expect: 100-continue would answer it.
func DropBodyHeaders(h http.Header) {
	for k := range h {
		if ck := http.CanonicalHeaderKey(k); strings.HasPrefix(ck, "Content-") || slices.Contains(bodyFields, ck) {
			delete(h, k)
		}
	}
}

// bodyFields are the header fields of a body, or of how it is sent,
// besides the Content-* ones.
var bodyFields = []string{"Digest", "Repr-Digest", "Expect", "Trailer", "Transfer-Encoding"}

// SessionKey names a session in the proxy's registries: its upstream and
// the upstream's own session id, which every token of the session shares.
func SessionKey(upstream, upstreamID string) string {
	return upstream + " " + upstreamID
}

// maxSessionHost bounds the Host a session keeps for its DELETE.
const maxSessionHost = 255

// SessionHost is a Host header as a session keeps it for its DELETE:
// empty when longer than a host name can be (the DELETE then goes with
// the upstream's).
func SessionHost(host string) string {
	if len(host) > maxSessionHost {
		return ""
	}
	return host
}

// SessionEndpoint is the path of request r as a session keeps it for its
// DELETE, empty when longer than a token may carry (MaxEndpoint).
func SessionEndpoint(r *http.Request) string {
	p := r.URL.EscapedPath()
	if len(p) > MaxEndpoint {
		return ""
	}
	return p
}

// MethodProgress is the method of a progress notification.
const MethodProgress = "notifications/progress"

// HoldsProgress reports whether data, the data of one SSE event (one
// JSON-RPC message, or an array of them), is or holds a progress
// notification: a message whose method is notifications/progress, not
// any message that holds those words (a log line of a client's text).
func HoldsProgress(data []byte) bool {
	if !bytes.Contains(data, []byte(MethodProgress)) {
		return false
	}
	var p Peek
	if ParseEnvelope(data, true, &p) != nil {
		return false
	}
	for i := range p.Messages {
		if m := &p.Messages[i]; m.Kind == KindNotification && m.Method == MethodProgress {
			return true
		}
	}
	return false
}
