package mcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Kind is the JSON-RPC message kind.
type Kind uint8

// Message kinds.
const (
	KindInvalid Kind = iota
	KindRequest
	KindNotification
	KindResponse
)

// String returns the kind's lowercase name.
func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "request"
	case KindNotification:
		return "notification"
	case KindResponse:
		return "response"
	}
	return "invalid"
}

// Envelope is what the peek learns about one JSON-RPC message without
// decoding its payload.
type Envelope struct {
	// Kind is request, notification or response.
	Kind Kind
	// Method is the method of a request or notification.
	Method string
	// ID is the raw JSON of the id (`1`, `"a"`), empty when absent.
	ID string
	// Name is params.name, or params.uri when there is no name (the value
	// that the 2026-07-28 Mcp-Name header mirrors).
	Name string
	// ProtocolVersion is params.protocolVersion (an initialize request).
	ProtocolVersion string
	// MetaVersion is params._meta["io.modelcontextprotocol/protocolVersion"]
	// (every request of the stateless revision carries it).
	MetaVersion string
	// RequestID is the raw JSON of params.requestId (notifications/cancelled).
	RequestID string
}

// Peek is the result of scanning a request body.
type Peek struct {
	// Batch is true when the body is a JSON array of messages.
	Batch bool
	// Messages holds the envelopes in body order; one unless Batch.
	Messages []Envelope
	// Complete is true when the whole body was scanned.
	Complete bool
}

// First returns the first message's envelope.
func (p *Peek) First() *Envelope {
	if len(p.Messages) == 0 {
		return &Envelope{}
	}
	return &p.Messages[0]
}

// MaxBatch bounds the number of messages a batch may hold.
const MaxBatch = 256

// Peek errors. Each is a client error (HTTP 400 or 413).
var (
	ErrMalformed    = errors.New("malformed JSON-RPC message")
	ErrEmptyBody    = errors.New("empty request body")
	ErrNotEnvelope  = errors.New("not a JSON-RPC request, notification or response")
	ErrBatchTooLong = fmt.Errorf("batch holds more than %d messages", MaxBatch)
	// ErrTooLarge means the body is larger than the peek limit and the
	// envelope fields were not all found within it.
	ErrTooLarge = errors.New("JSON-RPC envelope not found within the peek limit")
)

// ParseEnvelope scans body, a whole request body (complete) or its first
// bytes (not complete), for the JSON-RPC envelopes it holds. It copies only
// the short strings it returns. A complete body must be valid JSON; a
// truncated one must at least hold every message's method or id.
func ParseEnvelope(body []byte, complete bool, into *Peek) error {
	into.Batch = false
	into.Messages = into.Messages[:0]
	into.Complete = complete
	if complete && !json.Valid(body) {
		if len(trimSpace(body)) == 0 {
			return ErrEmptyBody
		}
		return ErrMalformed
	}
	s := scanner{b: body}
	s.ws()
	if s.eof() {
		if complete {
			return ErrEmptyBody
		}
		return ErrTooLarge
	}
	if s.b[s.i] == '[' {
		into.Batch = true
		s.i++
		s.ws()
		if !s.eof() && s.b[s.i] == ']' {
			return ErrNotEnvelope
		}
		for {
			if len(into.Messages) == MaxBatch {
				return ErrBatchTooLong
			}
			into.Messages = append(into.Messages, Envelope{})
			if err := s.message(&into.Messages[len(into.Messages)-1]); err != nil {
				return err
			}
			s.ws()
			if s.eof() {
				return ErrTooLarge
			}
			if s.b[s.i] == ']' {
				return nil
			}
			if s.b[s.i] != ',' {
				return ErrMalformed
			}
			s.i++
			s.ws()
		}
	}
	into.Messages = append(into.Messages, Envelope{})
	return s.message(&into.Messages[0])
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	return b
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// scanner walks JSON text that may end early. It never recurses, so deep
// nesting costs no stack.
type scanner struct {
	b []byte
	i int
}

var errEOF = errors.New("truncated")

func (s *scanner) eof() bool { return s.i >= len(s.b) }

func (s *scanner) ws() {
	for s.i < len(s.b) && isSpace(s.b[s.i]) {
		s.i++
	}
}

// str reads a JSON string at s.i and returns its raw contents (between the
// quotes) and whether it holds escapes.
func (s *scanner) str() (raw []byte, escaped bool, err error) {
	if s.eof() {
		return nil, false, errEOF
	}
	if s.b[s.i] != '"' {
		return nil, false, ErrMalformed
	}
	start := s.i + 1
	for j := start; j < len(s.b); j++ {
		switch s.b[j] {
		case '\\':
			escaped = true
			j++
		case '"':
			s.i = j + 1
			return s.b[start:j], escaped, nil
		}
	}
	return nil, false, errEOF
}

// skip moves past one JSON value of any type.
func (s *scanner) skip() error {
	if s.eof() {
		return errEOF
	}
	switch c := s.b[s.i]; c {
	case '"':
		_, _, err := s.str()
		return err
	case '{', '[':
		depth := 0
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '"':
				if _, _, err := s.str(); err != nil {
					return err
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					s.i++
					return nil
				}
			}
			s.i++
		}
		return errEOF
	default:
		start := s.i
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				if s.i == start {
					return ErrMalformed
				}
				return nil
			}
			s.i++
		}
		return errEOF
	}
}

// object walks the members of an object at s.i, calling member for each key
// with s.i at the value; member must consume the value.
func (s *scanner) object(member func(key []byte, escaped bool) error) error {
	s.ws()
	if s.eof() {
		return errEOF
	}
	if s.b[s.i] != '{' {
		return ErrNotEnvelope
	}
	s.i++
	s.ws()
	if !s.eof() && s.b[s.i] == '}' {
		s.i++
		return nil
	}
	for {
		s.ws()
		key, esc, err := s.str()
		if err != nil {
			return err
		}
		s.ws()
		if s.eof() {
			return errEOF
		}
		if s.b[s.i] != ':' {
			return ErrMalformed
		}
		s.i++
		s.ws()
		if err := member(key, esc); err != nil {
			return err
		}
		s.ws()
		if s.eof() {
			return errEOF
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case '}':
			s.i++
			return nil
		default:
			return ErrMalformed
		}
	}
}

// rawValue returns the raw bytes of the scalar or compound value at s.i.
func (s *scanner) rawValue() ([]byte, error) {
	start := s.i
	if err := s.skip(); err != nil {
		return nil, err
	}
	return s.b[start:s.i], nil
}

// stringValue reads a string value, decoding escapes when present; a
// non-string value is skipped and reported as absent.
func (s *scanner) stringValue() (string, bool, error) {
	if s.eof() {
		return "", false, errEOF
	}
	if s.b[s.i] != '"' {
		return "", false, s.skip()
	}
	raw, esc, err := s.str()
	if err != nil {
		return "", false, err
	}
	if !esc {
		return internString(raw), true, nil
	}
	var out string
	if err := json.Unmarshal(s.b[s.i-len(raw)-2:s.i], &out); err != nil {
		return "", false, ErrMalformed
	}
	return out, true, nil
}

// message scans one message object into env.
func (s *scanner) message(env *Envelope) error {
	var hasMethod, hasID, hasResult bool
	var seen uint8 // envelope keys already met: a repeat is ambiguous
	err := s.object(func(key []byte, esc bool) error {
		if esc {
			return s.skip()
		}
		if bit := envelopeKeyBit(key); bit != 0 {
			if seen&bit != 0 {
				return ErrMalformed
			}
			seen |= bit
		}
		switch string(key) {
		case "method":
			m, ok, err := s.stringValue()
			if err != nil {
				return err
			}
			env.Method, hasMethod = m, ok
			return nil
		case "id":
			raw, err := s.rawValue()
			if err != nil {
				return err
			}
			if string(raw) != "null" {
				env.ID, hasID = string(raw), true
			}
			return nil
		case "result", "error":
			hasResult = true
			return s.skip()
		case "params":
			return s.params(env)
		}
		return s.skip()
	})
	if err == errEOF {
		// A truncated message is good enough when what admission needs
		// is known: the method, or that it is a response. An id may
		// still follow the part seen, so a method without an id is a
		// request unless its name says notification.
		switch {
		case hasMethod && !hasID && !strings.HasPrefix(env.Method, "notifications/"):
			env.Kind = KindRequest
			return nil
		case hasMethod, hasResult && hasID:
			err = nil
		default:
			return ErrTooLarge
		}
	}
	if err != nil {
		return err
	}
	switch {
	case hasMethod && hasID:
		env.Kind = KindRequest
	case hasMethod:
		env.Kind = KindNotification
	case hasResult && hasID:
		env.Kind = KindResponse
	case hasResult:
		env.Kind = KindResponse
	default:
		return ErrNotEnvelope
	}
	return nil
}

// params scans the params object for the fields the proxy needs.
func (s *scanner) params(env *Envelope) error {
	if s.eof() {
		return errEOF
	}
	if s.b[s.i] != '{' {
		return s.skip()
	}
	var name, uri string
	var seen uint8
	err := s.object(func(key []byte, esc bool) error {
		if esc {
			return s.skip()
		}
		if bit := paramsKeyBit(key); bit != 0 {
			if seen&bit != 0 {
				return ErrMalformed
			}
			seen |= bit
		}
		var err error
		switch string(key) {
		case "name":
			name, _, err = s.stringValue()
		case "uri":
			uri, _, err = s.stringValue()
		case "protocolVersion":
			env.ProtocolVersion, _, err = s.stringValue()
		case "requestId":
			var raw []byte
			raw, err = s.rawValue()
			env.RequestID = string(raw)
		case "_meta":
			err = s.meta(env)
		default:
			err = s.skip()
		}
		return err
	})
	if name != "" {
		env.Name = name
	} else {
		env.Name = uri
	}
	return err
}

// envelopeKeyBit numbers the envelope keys the peek reads. A message that
// repeats one is refused: JSON parsers disagree on which copy wins, and the
// proxy must decide on the same value the upstream will use.
func envelopeKeyBit(key []byte) uint8 {
	switch string(key) {
	case "method":
		return 1
	case "id":
		return 2
	case "params":
		return 4
	case "result":
		return 8
	case "error":
		return 16
	}
	return 0
}

// paramsKeyBit numbers the params keys the peek reads, like envelopeKeyBit.
func paramsKeyBit(key []byte) uint8 {
	switch string(key) {
	case "name":
		return 1
	case "uri":
		return 2
	case "protocolVersion":
		return 4
	case "requestId":
		return 8
	case "_meta":
		return 16
	}
	return 0
}

// metaVersionKey is the _meta key that carries the protocol version in the
// stateless revision.
const metaVersionKey = "io.modelcontextprotocol/protocolVersion"

func (s *scanner) meta(env *Envelope) error {
	if s.eof() {
		return errEOF
	}
	if s.b[s.i] != '{' {
		return s.skip()
	}
	return s.object(func(key []byte, esc bool) error {
		if !esc && string(key) == metaVersionKey {
			v, _, err := s.stringValue()
			env.MetaVersion = v
			return err
		}
		return s.skip()
	})
}

// knownStrings holds method names and versions seen on every request, so
// the peek can return them without allocating.
var knownStrings = func() map[string]string {
	m := make(map[string]string)
	for _, s := range []string{
		"initialize", "ping", "tools/list", "tools/call", "resources/list",
		"resources/read", "resources/templates/list", "resources/subscribe",
		"resources/unsubscribe", "prompts/list", "prompts/get",
		"completion/complete", "logging/setLevel", "sampling/createMessage",
		"elicitation/create", "roots/list", "server/discover",
		"subscriptions/listen", "tasks/get", "tasks/list", "tasks/cancel",
		"tasks/result", "notifications/initialized", "notifications/cancelled",
		"notifications/progress", "notifications/message",
		"notifications/roots/list_changed",
		Version20241105, Version20250326, Version20250618, Version20251125,
		Version20260728,
	} {
		m[s] = s
	}
	return m
}()

func internString(b []byte) string {
	if s, ok := knownStrings[string(b)]; ok {
		return s
	}
	return string(b)
}
