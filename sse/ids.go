package sse

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
)

// ProxyIDMarker starts every prefix NewIDPrefix makes, so an event id the
// proxy assigned is told apart from one of the upstream's: a client's
// Last-Event-ID the proxy no longer holds must not reach the upstream.
const ProxyIDMarker = "mcpgate-"

// NewIDPrefix returns a fresh prefix for the ids of one stream's events
// (StreamConfig.IDPrefix), unique in practice across streams and
// processes.
func NewIDPrefix() string {
	var b [9]byte
	_, _ = rand.Read(b[:])
	return ProxyIDMarker + base64.RawURLEncoding.EncodeToString(b[:]) + "-"
}

// IsProxyID reports whether an event id was assigned under a prefix of
// NewIDPrefix.
func IsProxyID(id string) bool { return strings.HasPrefix(id, ProxyIDMarker) }
