package sse

import (
	"bytes"
	"strconv"
	"strings"
)

// AppendEvent appends one event block to dst and returns the extended slice:
// an "id" line when id is not empty, an "event" line when name is not empty,
// one "data" line per line of data (data is split at "\n", "\r\n" and "\r";
// empty data gives a single empty "data" line, as in an MCP priming event),
// and the terminating blank line.
//
// A field value is written after ": ", so a value that starts with a space
// survives the parser's stripping of one space. CR and LF cannot appear in a
// field value and are removed from id and name; NUL would make a client
// ignore the id, and is removed from id. Parsing the result gives back the
// cleaned id and name and data with its line ends turned into "\n".
func AppendEvent(dst []byte, id, name string, data []byte) []byte {
	if hasKeep(id, true) {
		dst = appendField(dst, "id", id, true)
	}
	if hasKeep(name, false) {
		dst = appendField(dst, "event", name, false)
	}
	if bytes.IndexByte(data, '\n') < 0 && bytes.IndexByte(data, '\r') < 0 {
		dst = appendLine(dst, "data", data)
	} else {
		for {
			j := indexEOL(data)
			if j < 0 {
				dst = appendLine(dst, "data", data)
				break
			}
			dst = appendLine(dst, "data", data[:j])
			n, _ := terminator(data, j)
			data = data[j+n:]
		}
	}
	return append(dst, '\n')
}

// AppendCanonical appends ev written anew from the fields a client reads:
// an "id" line when the block had a valid id field (an empty one too: it
// resets the client's last event id), an "event" line when it had a name,
// a "retry" line when it had a valid one, one "data" line per line of
// Data when it had a data field (an empty one too: a client dispatches
// the event only then), and the blank line. Comment lines, unknown fields
// and the upstream's own line ends are left out. A block with none of
// these fields appends nothing.
func AppendCanonical(dst []byte, ev *Event) []byte {
	if !ev.HasID && ev.Name == "" && ev.Retry < 0 && !ev.HasData {
		return dst
	}
	if ev.HasID {
		dst = appendLine(dst, "id", ev.ID)
	}
	if ev.Name != "" {
		dst = appendLine(dst, "event", ev.Name)
	}
	if ev.Retry >= 0 {
		dst = append(dst, "retry: "...)
		dst = strconv.AppendInt(dst, int64(ev.Retry), 10)
		dst = append(dst, '\n')
	}
	for data, more := ev.Data, ev.HasData; more; {
		var line []byte
		line, data, more = bytes.Cut(data, []byte{'\n'})
		dst = appendLine(dst, "data", line)
	}
	return append(dst, '\n')
}

// AppendComment appends a comment-only block to dst and returns the extended
// slice: one comment line per line of text (split as in AppendEvent) and a
// blank line, e.g. ": keepalive\n\n". Empty text gives ":\n\n". Write it only
// between events: its blank line would end an event in progress.
func AppendComment(dst []byte, text string) []byte {
	for {
		j := strings.IndexAny(text, "\r\n")
		if j < 0 {
			dst = appendLine(dst, "", text)
			break
		}
		dst = appendLine(dst, "", text[:j])
		if text[j] == '\r' && j+1 < len(text) && text[j+1] == '\n' {
			j++
		}
		text = text[j+1:]
	}
	return append(dst, '\n')
}

// AppendRetry appends a block holding only a "retry" field, such as
// "retry: 3000\n\n", telling the client to wait ms milliseconds before
// reconnecting. A negative ms is written as 0.
func AppendRetry(dst []byte, ms int) []byte {
	dst = append(dst, "retry: "...)
	dst = strconv.AppendInt(dst, int64(max(ms, 0)), 10)
	return append(dst, '\n', '\n')
}

// appendLine appends "field: value\n", or "field:\n" for an empty value.
func appendLine[T string | []byte](dst []byte, field string, value T) []byte {
	dst = append(dst, field...)
	dst = append(dst, ':')
	if len(value) > 0 {
		dst = append(dst, ' ')
		dst = append(dst, value...)
	}
	return append(dst, '\n')
}

// hasKeep reports whether s has a byte that appendField keeps.
func hasKeep(s string, dropNUL bool) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c != '\r' && c != '\n' && (c != 0 || !dropNUL) {
			return true
		}
	}
	return false
}

// appendField appends "field: value\n" with CR, LF and, if dropNUL, NUL
// removed from value, which must keep at least one byte.
func appendField(dst []byte, field, value string, dropNUL bool) []byte {
	dst = append(dst, field...)
	dst = append(dst, ':', ' ')
	for i := 0; i < len(value); i++ {
		if c := value[i]; c == '\r' || c == '\n' || (c == 0 && dropNUL) {
			for i := 0; i < len(value); i++ {
				if c := value[i]; c != '\r' && c != '\n' && (c != 0 || !dropNUL) {
					dst = append(dst, c)
				}
			}
			return append(dst, '\n')
		}
	}
	dst = append(dst, value...)
	return append(dst, '\n')
}
