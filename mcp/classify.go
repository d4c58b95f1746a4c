package mcp

import (
	"errors"
	"net/http"
)

// Call is what the proxy knows about a request after classification.
type Call struct {
	// Era is the transport era the request belongs to.
	Era Era
	// Version is the MCP-Protocol-Version header, or for an initialize
	// without it the version the client asks for.
	Version string
	// Peek holds the envelopes of a POST body.
	Peek Peek
}

// First returns the first message of a POST (an empty envelope otherwise).
func (c *Call) First() *Envelope { return c.Peek.First() }

// IsInitialize reports whether the request is an initialize request.
func (c *Call) IsInitialize() bool {
	f := c.First()
	return f.Kind == KindRequest && f.Method == "initialize"
}

// Refusal is a request mcpgate answers itself with an HTTP status and a
// JSON-RPC error body.
type Refusal struct {
	Status  int
	Code    int
	Message string
	// ID is the raw JSON id of the request, when known.
	ID string
	// Batch, when set, is the body in place of the one error: the
	// answers of a batch, an error for each of its requests.
	Batch []byte
	// Header holds header fields the answer carries besides its
	// Content-Type and Content-Length, or nil.
	Header http.Header
}

func (r *Refusal) Error() string { return r.Message }

// Body returns the JSON-RPC error body of the refusal.
func (r *Refusal) Body() []byte {
	if r.Batch != nil {
		return r.Batch
	}
	return AppendError(make([]byte, 0, 96+len(r.Message)), r.ID, r.Code, r.Message)
}

// Refuse builds a Refusal.
func Refuse(status, code int, id, msg string) *Refusal {
	return &Refusal{Status: status, Code: code, Message: msg, ID: id}
}

// BodyRefusal is the answer to a body ParseEnvelope or CheckedBody refused
// with err: 413 for a body too large to read (ErrTooLarge,
// ErrBatchTooLarge, ErrLateEnvelope, ErrBodyTooLarge), 400 with a JSON-RPC
// parse error for ErrMalformed and ErrEmptyBody, and 400 with an invalid
// request error otherwise (ErrAmbiguous, ErrJSONRPCVersion, ErrInvalidID,
// ErrNotEnvelope, ErrBatchTooLong, ErrDuplicateID).
func BodyRefusal(err error) *Refusal {
	switch {
	case errors.Is(err, ErrTooLarge), errors.Is(err, ErrBatchTooLarge),
		errors.Is(err, ErrLateEnvelope), errors.Is(err, ErrBodyTooLarge):
		return Refuse(http.StatusRequestEntityTooLarge, CodeInvalidRequest, "", err.Error())
	case errors.Is(err, ErrAmbiguous):
		return Refuse(http.StatusBadRequest, CodeInvalidRequest, "", err.Error())
	case errors.Is(err, ErrMalformed), errors.Is(err, ErrEmptyBody):
		return Refuse(http.StatusBadRequest, CodeParseError, "", "parse error: "+err.Error())
	default:
		return Refuse(http.StatusBadRequest, CodeInvalidRequest, "", "invalid request: "+err.Error())
	}
}

// singleHeaders are the MCP headers the proxy reads, which a request may
// carry once each: of two values a server may read another than the
// proxy did (the go-sdk reads the first, Node.js joins them).
var singleHeaders = [...]string{HeaderSessionID, HeaderProtocolVersion, HeaderMethod, HeaderName, HeaderLastEventID}

// ClassifyHeaders sets the era and version of a request from its headers.
// An invalid MCP-Protocol-Version, or a second value of a header the
// proxy reads (see singleHeaders), is refused with 400.
func ClassifyHeaders(h http.Header, c *Call) *Refusal {
	for _, k := range singleHeaders {
		if len(h[k]) > 1 {
			return Refuse(http.StatusBadRequest, CodeInvalidRequest, "", "Bad Request: more than one "+k+" header")
		}
	}
	c.Version = ProtocolVersion(h)
	c.Era = EraUnknown
	if c.Version == "" {
		return nil
	}
	era, ok := EraOf(c.Version)
	if !ok {
		return Refuse(http.StatusBadRequest, CodeInvalidRequest, "", "invalid MCP-Protocol-Version header")
	}
	c.Era = era
	return nil
}

// ClassifyBody applies the body rules of the request's era to a peeked
// POST body: batches only where the version allows them, and for the
// stateless revision the mirrored headers checked against the body. A body
// that could not be peeked is refused with its reason. It must follow
// ClassifyHeaders.
func ClassifyBody(h http.Header, peekErr error, c *Call) *Refusal {
	if peekErr != nil {
		return BodyRefusal(peekErr)
	}
	first := c.First()
	if c.Version == "" && first.Kind == KindRequest && first.Method == "initialize" && first.ProtocolVersion != "" {
		if era, ok := EraOf(first.ProtocolVersion); ok {
			c.Era = era
		}
	}
	if c.Peek.Batch {
		if c.Era == EraStateless || !AllowsBatch(c.Version) {
			return Refuse(http.StatusBadRequest, CodeInvalidRequest, "", "JSON-RPC batches are not allowed at protocol version "+c.Version)
		}
		for i := range c.Peek.Messages {
			if c.Peek.Messages[i].Method == "initialize" {
				return Refuse(http.StatusBadRequest, CodeInvalidRequest, "", "initialize must not be part of a batch")
			}
		}
		return nil
	}
	if c.Era == EraStateless {
		if err := CheckMirroredHeaders(h, c.Version, first); err != nil {
			return Refuse(http.StatusBadRequest, CodeHeaderMismatch, first.ID, err.Error())
		}
	}
	return nil
}

// BatchRefusal refuses a batch where the request's version, or else its
// session's (sessionVersion, "" without a session), forbids batches (see
// BatchAllowed); nil when the batch is allowed.
func BatchRefusal(c *Call, sessionVersion string) *Refusal {
	if BatchAllowed(c.Version, sessionVersion) {
		return nil
	}
	version := sessionVersion
	if c.Version != "" {
		version = c.Version
	}
	return Refuse(http.StatusBadRequest, CodeInvalidRequest, "", "JSON-RPC batches are not allowed at protocol version "+version)
}
