package mcp

import "net/http"

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
	return ok && string(got) == id
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
