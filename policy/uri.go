package policy

import (
	"path"
	"strings"
)

// CanonicalURI returns a resource URI as an upstream reads it, where that
// reading may differ from the bytes written: leading and trailing control
// characters and spaces trimmed and tabs and newlines removed (the WHATWG
// URL parser of JavaScript servers), the scheme and the authority
// lowercased, a scheme's default port dropped, the authority of a file
// URI dropped (file://localhost/x and file://any/x are file:///x to a
// reader of the path, and so are file:/x and file:x), `\` read as `/` in
// the schemes WHATWG treats as special (file, http, https, ws, wss, ftp),
// any run of slashes after http, https, ws, wss or ftp read as `//` (as
// WHATWG does: https:/host/x and https:host/x are https://host/x), the
// fragment dropped, every
// percent-escape decoded (Go's url.URL.Path, Node's fileURLToPath) and, in
// a path that starts with `/`, dot segments and repeated slashes removed
// (a trailing slash kept). A URI already in that form is returned as it
// is.
//
// The form is for matching only: it may not parse as a URI again (a
// decoded `?` or `#` stays in the path).
func CanonicalURI(uri string) string {
	return canonicalURI(uri, false)
}

// GlobURI reports whether the URI target matches the glob pattern in any
// of the readings decide judges a URI in: target as written or canonical
// (CanonicalURI), against pattern as written or canonical. A requirement
// that names URIs (a scope rule, say) applies by it wherever an upstream
// may read the URI as one it names.
func GlobURI(pattern, target string) bool {
	if Glob(pattern, target) {
		return true
	}
	canon, canonPat := CanonicalURI(target), canonicalPattern(pattern)
	return canon != target && Glob(pattern, canon) ||
		canonPat != pattern && (Glob(canonPat, target) || Glob(canonPat, canon))
}

// canonicalPattern is CanonicalURI for a glob pattern over URIs: `\` is
// the glob's escape, not a path separator, and a `*`, `?` or `\` that a
// percent-escape decodes to is escaped, so it matches only itself.
func canonicalPattern(pattern string) string {
	return canonicalURI(pattern, true)
}

func canonicalURI(s string, pattern bool) string {
	s = strings.TrimFunc(s, func(r rune) bool { return r <= ' ' })
	if strings.ContainsAny(s, "\t\n\r") {
		s = strings.NewReplacer("\t", "", "\n", "", "\r", "").Replace(s)
	}
	scheme, rest := splitScheme(s)
	if !pattern && specialScheme(scheme) {
		rest = strings.ReplaceAll(rest, `\`, "/")
	}
	if i := strings.IndexByte(rest, '#'); i >= 0 {
		rest = rest[:i]
	}
	var b strings.Builder
	b.Grow(len(s))
	if scheme != "" {
		b.WriteString(strings.ToLower(scheme))
		b.WriteByte(':')
	}
	file := strings.EqualFold(scheme, "file")
	switch {
	case specialScheme(scheme) && !file:
		// WHATWG reads any run of slashes after such a scheme, none
		// included, as the start of the authority.
		rest = "//" + strings.TrimLeft(rest, "/")
	case file && !strings.HasPrefix(rest, "/"):
		rest = "/" + rest // file:etc/x is file:///etc/x
	}
	if strings.HasPrefix(rest, "//") {
		rest = rest[2:]
		end := strings.IndexAny(rest, "/?")
		if end < 0 {
			end = len(rest)
		}
		b.WriteString("//")
		if !file {
			b.WriteString(authority(strings.ToLower(percentDecode(rest[:end], pattern)), scheme))
		}
		rest = rest[end:]
	} else if file && strings.HasPrefix(rest, "/") {
		b.WriteString("//") // file:/x is file:///x
	}
	p, query, hasQuery := strings.Cut(rest, "?")
	p = percentDecode(p, pattern)
	if strings.HasPrefix(p, "/") {
		clean := path.Clean(p)
		if strings.HasSuffix(p, "/") && clean != "/" {
			clean += "/"
		}
		p = clean
	}
	b.WriteString(p)
	if hasQuery {
		b.WriteByte('?')
		b.WriteString(percentDecode(query, pattern))
	}
	if out := b.String(); out != s {
		return out
	}
	return s
}

// splitScheme splits a URI's scheme (RFC 3986: a letter, then letters,
// digits, `+`, `-`, `.`) from the rest after its colon; a URI without one
// is all rest.
func splitScheme(s string) (scheme, rest string) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.'):
		case i > 0 && c == ':':
			return s[:i], s[i+1:]
		default:
			return "", s
		}
	}
	return "", s
}

// authority returns a URI's authority without the default port of its
// scheme.
func authority(a, scheme string) string {
	port := ""
	switch strings.ToLower(scheme) {
	case "http", "ws":
		port = ":80"
	case "https", "wss":
		port = ":443"
	case "ftp":
		port = ":21"
	}
	if port != "" {
		a = strings.TrimSuffix(a, port)
	}
	return a
}

// specialScheme reports a scheme in whose URIs the WHATWG URL parser reads
// `\` as `/`.
func specialScheme(scheme string) bool {
	switch strings.ToLower(scheme) {
	case "file", "http", "https", "ws", "wss", "ftp":
		return true
	}
	return false
}

// percentDecode decodes every well-formed percent-escape of s; a `%` not
// followed by two hex digits stays. In a pattern, a decoded `*`, `?` or
// `\` is escaped with `\`.
func percentDecode(s string, pattern bool) string {
	if strings.IndexByte(s, '%') < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			c := unhex(s[i+1])<<4 | unhex(s[i+2])
			if pattern && (c == '*' || c == '?' || c == '\\') {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
