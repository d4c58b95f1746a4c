package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/resources"
)

// Placeholders mcp_proxy sets as soon as it knows each fact (see Handler).
const (
	phMethod    = "http.mcp.method"
	phTool      = "http.mcp.tool"
	phResource  = "http.mcp.resource"
	phPrompt    = "http.mcp.prompt"
	phVersion   = "http.mcp.version"
	phSession   = "http.mcp.session"
	phRequestID = "http.mcp.request_id"
)

// setCallFacts makes what the classification learnt of a request
// placeholders, and attributes of the request's trace span (the
// OpenTelemetry semantic conventions for MCP) when it is being traced.
func setCallFacts(r *http.Request, call *mcp.Call) {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		return
	}
	first := call.First()
	version := call.Version
	if version == "" {
		version = first.ProtocolVersion
	}
	id := mcp.IDText(first.ID)
	target, targetKey := "", ""
	switch first.Method {
	case "tools/call":
		target, targetKey = first.Name, phTool
	case "prompts/get":
		target, targetKey = first.Name, phPrompt
	case "resources/read", "resources/subscribe", "resources/unsubscribe":
		target, targetKey = first.Name, phResource
	case "completion/complete":
		// The prompt or resource template whose argument it completes,
		// as the access rules judge it (policy.RefOf).
		switch first.RefType {
		case mcp.RefPrompt:
			target, targetKey = first.RefTarget, phPrompt
		case mcp.RefResource:
			target, targetKey = first.RefTarget, phResource
		}
	}
	for _, kv := range [...][2]string{{phMethod, first.Method}, {targetKey, target}, {phVersion, version}, {phRequestID, id}} {
		if kv[0] != "" && kv[1] != "" {
			repl.Set(kv[0], kv[1])
		}
	}
	span := trace.SpanFromContext(r.Context())
	if !span.IsRecording() {
		return
	}
	attrs := make([]attribute.KeyValue, 0, 5)
	if first.Method != "" {
		attrs = append(attrs, attribute.String("mcp.method.name", first.Method))
	}
	if targetKey == phTool {
		attrs = append(attrs, attribute.String("gen_ai.tool.name", target))
	}
	if targetKey == phResource && first.Method != "completion/complete" {
		// A completion's is a URI template, not a resource's URI.
		attrs = append(attrs, attribute.String("mcp.resource.uri", target))
	}
	if id != "" {
		attrs = append(attrs, attribute.String("jsonrpc.request.id", id))
	}
	if version != "" {
		attrs = append(attrs, attribute.String("mcp.protocol.version", version))
	}
	span.SetAttributes(attrs...)
}

// setSessionFacts makes the request's session a placeholder (and a span
// attribute): a short stable hash of it, the id /mcp/sessions shows, never
// its token; and the session's version when the request named none.
func setSessionFacts(r *http.Request, res mcp.Resolution) {
	if res.Session == nil {
		return
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		return
	}
	id := resources.SessionID(res.Key)
	repl.Set(phSession, id)
	if _, ok := repl.Get(phVersion); !ok && res.Session.Version != "" {
		repl.Set(phVersion, res.Session.Version)
	}
	if span := trace.SpanFromContext(r.Context()); span.IsRecording() {
		span.SetAttributes(attribute.String("mcp.session.id", id))
	}
}
