package auth

import (
	"encoding/json"
	"strings"
)

// WellKnownPath is where Protected Resource Metadata is served (RFC 9728),
// at the root and, for a resource with a path, with that path appended.
const WellKnownPath = "/.well-known/oauth-protected-resource"

// Metadata is the Protected Resource Metadata document of RFC 9728.
type Metadata struct {
	Resource               string   `json:"resource"`
	AuthorizationServers   []string `json:"authorization_servers,omitempty"`
	ScopesSupported        []string `json:"scopes_supported,omitempty"`
	BearerMethodsSupported []string `json:"bearer_methods_supported"`
	ResourceName           string   `json:"resource_name,omitempty"`
	ResourceDocumentation  string   `json:"resource_documentation,omitempty"`
}

// JSON returns the document's JSON.
func (m *Metadata) JSON() []byte {
	if m.BearerMethodsSupported == nil {
		m.BearerMethodsSupported = []string{"header"}
	}
	b, _ := json.Marshal(m)
	return b
}

// MetadataURL returns the address of the metadata document of the
// resource at resourceURL (scheme://host/path): the well-known path with
// the resource's path appended, a trailing slash included, as RFC 9728
// §3.1 forms it.
func MetadataURL(resourceURL string) string {
	scheme, rest, ok := strings.Cut(resourceURL, "://")
	if !ok {
		return resourceURL
	}
	host, p, _ := strings.Cut(rest, "/")
	if p == "" {
		return scheme + "://" + host + WellKnownPath
	}
	return scheme + "://" + host + WellKnownPath + "/" + p
}

// ResourcePathOf reports whether a request path asks for Protected
// Resource Metadata, and for which resource path ("" for the root form).
func ResourcePathOf(requestPath string) (resourcePath string, ok bool) {
	if requestPath == WellKnownPath {
		return "", true
	}
	rest, ok := strings.CutPrefix(requestPath, WellKnownPath+"/")
	if !ok {
		return "", false
	}
	return "/" + rest, true
}

// Challenge returns the WWW-Authenticate value for a refusal: Bearer with
// the error (when the request carried a token), the needed scope, and the
// resource_metadata URL (RFC 9728 §5.1).
func Challenge(e *Error, metadataURL string) string {
	var b strings.Builder
	b.WriteString("Bearer")
	sep := " "
	add := func(k, v string) {
		if v == "" {
			return
		}
		b.WriteString(sep)
		b.WriteString(k)
		b.WriteString(`="`)
		b.WriteString(strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v))
		b.WriteString(`"`)
		sep = ", "
	}
	add("error", e.Code)
	if e.Code != "" {
		add("error_description", e.Description)
	}
	add("scope", e.Scope)
	add("resource_metadata", metadataURL)
	return b.String()
}
