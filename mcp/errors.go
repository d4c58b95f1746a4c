package mcp

import (
	"strconv"
	"unicode/utf8"
)

// JSON-RPC and MCP error codes mcpgate sends.
const (
	CodeParseError     = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInternalError  = -32603
	// CodeServerError is the generic implementation-defined server error
	// the SDKs use for transport-level refusals.
	CodeServerError = -32000
	// CodeSessionNotFound is what the TypeScript SDK answers (with HTTP
	// 404) for an unknown or terminated session.
	CodeSessionNotFound = -32001
	// CodeHeaderMismatch is the 2026-07-28 HeaderMismatch error.
	CodeHeaderMismatch = -32020
)

// AppendError appends a JSON-RPC error response to dst. id is the raw JSON
// of the request id, or empty for an error that has none (written as
// null). The message is escaped as a JSON string.
func AppendError(dst []byte, id string, code int, message string) []byte {
	dst = append(dst, `{"jsonrpc":"2.0","id":`...)
	if id == "" {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, id...)
	}
	dst = append(dst, `,"error":{"code":`...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, `,"message":`...)
	dst = AppendString(dst, message)
	return append(dst, "}}"...)
}

// AppendCancelled appends a notifications/cancelled message for the
// request with the given raw JSON id.
func AppendCancelled(dst []byte, requestID, reason string) []byte {
	dst = append(dst, `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":`...)
	dst = append(dst, requestID...)
	dst = append(dst, `,"reason":`...)
	dst = AppendString(dst, reason)
	return append(dst, "}}"...)
}

// AppendString appends s as a JSON string literal; invalid UTF-8 becomes
// U+FFFD.
func AppendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c < 0x20 || c == 0x7f:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}
