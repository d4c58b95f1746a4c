package mcp

import (
	"bytes"
	"encoding/json"
	"net/http"
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

// SideHeaders returns the MCP headers of a request the proxy sends of its
// own accord in a session (a DELETE, a notifications/cancelled): the
// upstream's session id and the negotiated version, when known.
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

// CancelledBody returns a notifications/cancelled message for the request
// with the raw JSON id requestID, and the headers to post it with in a
// session (see SideHeaders).
func CancelledBody(requestID, reason string) []byte {
	return AppendCancelled(nil, requestID, reason)
}

// AnswersRequest reports whether data, the data of one SSE event, is the
// JSON-RPC response (a result or an error) to the request whose raw JSON
// id is id. It reads only the top-level keys of the message and skips
// their values without decoding them.
func AnswersRequest(data []byte, id string) bool {
	got, ok := ResponseID(data)
	if !ok {
		return false
	}
	if string(got) == id {
		return true
	}
	// The same string id written another way ("\u0061" for "a"), as a
	// server that decodes ids and writes them again answers it.
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
func ResponseID(data []byte) (id []byte, ok bool) {
	s := scanner{b: data}
	s.ws()
	if s.eof() || s.b[s.i] != '{' {
		return nil, false
	}
	s.i++
	var answer bool
	for first := true; ; first = false {
		key, more, err := s.nextKey(first)
		if err != nil || !more {
			ok = err == nil && answer && len(id) > 0 && string(id) != "null"
			if !ok {
				id = nil
			}
			return id, ok
		}
		switch string(key) {
		case "id":
			if id, err = s.rawValue(); err != nil {
				return nil, false
			}
			continue
		case "result", "error":
			answer = true
		}
		if s.skip() != nil {
			return nil, false
		}
	}
}
