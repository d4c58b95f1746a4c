package mcp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
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
	// ID is the raw JSON of the id (`1`, `"a"`), empty when absent or
	// null. In a request read from the head of a body longer than the
	// peek, it is also empty when the id follows the head (CheckedBody
	// then makes sure it does).
	ID string
	// Name is the message's target, as its upstream reads it (the value
	// that the 2026-07-28 Mcp-Name header mirrors): params.uri of a
	// resources/read, resources/subscribe or resources/unsubscribe,
	// params.name of a tools/call or prompts/get, even when the message
	// holds the other member too; for another method params.name, or
	// params.uri when there is no name.
	Name string
	// ProtocolVersion is params.protocolVersion (an initialize request).
	ProtocolVersion string
	// MetaVersion is params._meta["io.modelcontextprotocol/protocolVersion"]
	// (every request of the stateless revision carries it).
	MetaVersion string
	// RequestID is the raw JSON of params.requestId (notifications/cancelled).
	RequestID string
	// RefType is params.ref.type of a completion/complete: RefPrompt,
	// RefResource, or another string the upstream will refuse; empty for
	// other methods, and when the completion names no type.
	RefType string
	// RefTarget is what params.ref of a completion/complete refers to, as
	// its upstream reads it: params.ref.name of a RefPrompt (the prompt
	// whose argument is completed), params.ref.uri of a RefResource (a URI
	// template), even when the ref holds the other member too; for another
	// type the name, or the uri when there is no name. Empty for other
	// methods. Name is not affected: a completion's Name stays
	// params.name or params.uri, as for any other method.
	RefTarget string
	// Subscriptions are the resource URIs a subscriptions/listen (the
	// 2026-07-28 replacement of resources/subscribe) subscribes to:
	// params.notifications.resourceSubscriptions, each subscribed to by
	// its upstream as by a resources/subscribe of it. Empty for other
	// methods.
	Subscriptions []string
}

// The types of params.ref of a completion/complete.
const (
	// RefPrompt refers to a prompt by params.ref.name.
	RefPrompt = "ref/prompt"
	// RefResource refers to a resource template by params.ref.uri.
	RefResource = "ref/resource"
)

// methodComplete is the method whose params.ref the peek reads.
const methodComplete = "completion/complete"

// methodListen is the method whose
// params.notifications.resourceSubscriptions the peek reads.
const methodListen = "subscriptions/listen"

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

// Peek errors. Each is a client error (HTTP 400 or 413); ClassifyBody and
// BodyRefusal map them to their answers.
var (
	// ErrMalformed is a body that is not valid JSON or not valid UTF-8
	// (HTTP 400, JSON-RPC parse error).
	ErrMalformed = errors.New("malformed JSON-RPC message")
	// ErrEmptyBody is a body with nothing but whitespace.
	ErrEmptyBody = errors.New("empty request body")
	// ErrNotEnvelope is JSON that is not a JSON-RPC message: not an
	// object, neither a method nor a result or error, both, or a member
	// of the wrong type. The error returned may say more; errors.Is
	// matches it with ErrNotEnvelope.
	ErrNotEnvelope = errors.New("not a JSON-RPC request, notification or response")
	// ErrBatchTooLong is a batch of more than MaxBatch messages.
	ErrBatchTooLong = fmt.Errorf("batch holds more than %d messages", MaxBatch)
	// ErrDuplicateID is a batch in which two requests have the same id,
	// written alike or not ("a" and "\u0061"): an answer could not be told
	// apart from the other's, nor a deadline or a denial held to one of
	// them (the MCP specification forbids a requestor to use an id twice
	// in a session). The error returned names the id; errors.Is matches it
	// with ErrDuplicateID.
	ErrDuplicateID = errors.New("two requests of the batch have the same id")
	// ErrTooLarge means the body is larger than the peek limit and the
	// envelope fields were not all found within it.
	ErrTooLarge = errors.New("JSON-RPC envelope not found within the peek limit")
	// ErrAmbiguous is a message that decoders may read differently: a key
	// of the message or of its params that repeats, exactly or up to case
	// folding, or that differs from a member the proxy reads only by case
	// folding ("Method", "paramſ"); the same in params.ref (a key that
	// repeats, or folds to "type", "name" or "uri"); in params._meta the
	// same for the protocol version key. Keys are compared once unescaped, so
	// "\u006dethod" is "method". The error returned names the key;
	// errors.Is matches it with ErrAmbiguous.
	ErrAmbiguous = errors.New("ambiguous JSON-RPC message")
	// ErrJSONRPCVersion is a message without "jsonrpc":"2.0".
	ErrJSONRPCVersion = errors.New(`invalid JSON-RPC version: "jsonrpc" must be "2.0"`)
	// ErrInvalidID is a message whose id is not a string, null, or an
	// integer that every peer reads alike (see safeIntegerID).
	ErrInvalidID = errors.New("JSON-RPC id must be a string, an integer or null")
	// ErrIDInUse is a request whose id is the id of a request of the same
	// session whose answer has not come (the MCP specification forbids a
	// requestor to use an id twice in a session): the proxy, which holds
	// the requests of a legacy session by their ids, could not tell the
	// two answers apart. The error returned names the id.
	ErrIDInUse = errors.New("the id is in use by a request of this session that has no answer yet")
	// ErrBatchTooLarge is a batch larger than the peek limit: every
	// message of a batch must be known before it is admitted (HTTP 413).
	ErrBatchTooLarge = errors.New("JSON-RPC batch larger than the peek limit")
	// ErrLateEnvelope is a body longer than the peek limit that holds,
	// after the part peeked, a member the proxy reads (a key of the
	// message other than a late "jsonrpc" or "id", a params member other
	// than "arguments", "_meta" and "ref", or the "ref" of a
	// completion/complete), or a late id that changes what the peek read.
	// CheckedBody reports it; it is a 413.
	ErrLateEnvelope = errors.New("JSON-RPC member after the peek limit")
	// ErrBodyTooLarge is a body longer than the limit given to
	// NewCheckedBody (HTTP 413).
	ErrBodyTooLarge = errors.New("request body too large")
)

// Refusals that are an ErrNotEnvelope or an ErrMalformed, with the reason.
var (
	errInvalidUTF8      = fmt.Errorf("%w: invalid UTF-8", ErrMalformed)
	errTooDeep          = fmt.Errorf("%w: nested deeper than %d", ErrMalformed, maxNesting)
	errTrailing         = fmt.Errorf("%w: more than %d bytes of whitespace after the message", ErrMalformed, maxTrailing)
	errMethodAndResult  = fmt.Errorf("%w: a message has both a method and a result or error", ErrNotEnvelope)
	errResultAndError   = fmt.Errorf("%w: a response has both a result and an error", ErrNotEnvelope)
	errResponseID       = fmt.Errorf("%w: a response needs an id (null only in an error response)", ErrNotEnvelope)
	errMethodType       = fmt.Errorf("%w: method must be a string", ErrNotEnvelope)
	errParamsType       = fmt.Errorf("%w: params must be an object", ErrNotEnvelope)
	errMetaType         = fmt.Errorf("%w: params._meta must be an object", ErrNotEnvelope)
	errMetaVersionType  = fmt.Errorf("%w: params._meta[%q] must be a string", ErrNotEnvelope, metaVersionKey)
	errNumberID         = fmt.Errorf("%w: a number id must be an integer of at most 2^53-1 in magnitude, without fraction or exponent", ErrInvalidID)
	errRequestWithoutID = fmt.Errorf("%w: in a body longer than the peek limit, a method that is not a notification needs an id", ErrNotEnvelope)
	errRefType          = fmt.Errorf("%w: params.ref must be an object", ErrNotEnvelope)
	errNotifType        = fmt.Errorf("%w: params.notifications must be an object", ErrNotEnvelope)
	errSubsType         = fmt.Errorf("%w: params.notifications.resourceSubscriptions must be an array of strings", ErrNotEnvelope)
	errListenLate       = fmt.Errorf("%w: a subscriptions/listen must end within the peek limit", ErrTooLarge)
	errParamTypes       = [...]error{
		parName:            fmt.Errorf("%w: params.name must be a string", ErrNotEnvelope),
		parURI:             fmt.Errorf("%w: params.uri must be a string", ErrNotEnvelope),
		parProtocolVersion: fmt.Errorf("%w: params.protocolVersion must be a string", ErrNotEnvelope),
	}
	errRefTypes = [...]error{
		refType: fmt.Errorf("%w: params.ref.type must be a string", ErrNotEnvelope),
		refName: fmt.Errorf("%w: params.ref.name must be a string", ErrNotEnvelope),
		refURI:  fmt.Errorf("%w: params.ref.uri must be a string", ErrNotEnvelope),
	}
)

func paramTypeError(m int) error { return errParamTypes[m] }

// refMemberTypeError is the refusal of member m of params.ref that is
// not a string or null.
func refMemberTypeError(m int) error { return errRefTypes[m] }

// keyError is an ErrAmbiguous or an ErrLateEnvelope that names the key.
type keyError struct {
	sentinel error
	msg      string
	member   bool // the key is (a spelling of) a member the proxy reads
}

func (e *keyError) Error() string        { return e.msg }
func (e *keyError) Is(target error) bool { return target == e.sentinel }

// objectName names the object of a member set in messages.
func (set memberSet) objectName() string {
	switch set {
	case setParams:
		return " in params"
	case setMeta:
		return " in params._meta"
	case setRef:
		return " in params.ref"
	case setNotif:
		return " in params.notifications"
	}
	return ""
}

// quoteKey quotes a key for a message, shortened to 64 bytes.
func quoteKey(key []byte) string {
	if len(key) > 64 {
		return strconv.Quote(string(key[:64])) + "…"
	}
	return strconv.Quote(string(key))
}

// ambiguousKey is the ErrAmbiguous of a key that repeats (dup) or that
// folds to member m of set.
func ambiguousKey(set memberSet, key []byte, m int, dup bool) error {
	var msg string
	switch {
	case dup:
		msg = "duplicate key " + quoteKey(key)
	case m >= 0:
		msg = "case-variant key " + quoteKey(key) + " of " + strconv.Quote(set.name(m))
	}
	return &keyError{sentinel: ErrAmbiguous, msg: ErrAmbiguous.Error() + ": " + msg + set.objectName(), member: m >= 0}
}

// lateKey is the ErrLateEnvelope of member m of set.
func lateKey(set memberSet, m int) error {
	return &keyError{sentinel: ErrLateEnvelope, msg: ErrLateEnvelope.Error() + ": " + strconv.Quote(set.name(m)) + set.objectName(), member: true}
}

// ParseEnvelope scans body, a whole request body (complete) or its first
// bytes (not complete), for the JSON-RPC envelopes it holds, reading each
// message the way a standard decoder (encoding/json) will: keys are
// unescaped before they are matched, and a message that decoders could
// read differently is refused (ErrAmbiguous). It copies only the short
// strings it returns.
//
// Every message must be a JSON object with "jsonrpc":"2.0" and either a
// string method (a request when it has a non-null id, else a
// notification) or one of result and error (a response, which needs an
// id; null only with error). An id must be a string, a number or null;
// params an object or null; params.name, params.uri and
// params.protocolVersion strings or null; params._meta an object or null;
// params.ref an object or null whose type, name and uri are strings or
// null (whatever the method: the keys of params.ref are checked like those
// of params, and its members read for a completion/complete, see
// Envelope.RefTarget). A complete body must be valid JSON and valid UTF-8.
//
// Two requests of a batch must not have the same id (ErrDuplicateID).
//
// A truncated body must be a valid prefix of one message (a batch must be
// complete: ErrBatchTooLarge) whose head holds its method (or a result or
// error), and for tools/call and prompts/get params.name, for
// resources/read, resources/subscribe and resources/unsubscribe
// params.uri, for completion/complete the whole of params.ref (else
// ErrTooLarge). The rest of such a body is checked by
// CheckedBody, which aborts it when it holds anything that would change
// this reading: "jsonrpc" and "id" may follow the head, everything else the
// peek reads must be in it. A request whose id follows the head is a
// request with an empty ID; a message whose method starts with
// "notifications/" is a notification unless the head shows an id.
func ParseEnvelope(body []byte, complete bool, into *Peek) error {
	into.Batch = false
	into.Messages = into.Messages[:0]
	into.Complete = complete
	if err := checkJSON(body, complete); err != nil {
		if complete && len(trimSpace(body)) == 0 {
			return ErrEmptyBody
		}
		return err
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
		if !complete {
			return ErrBatchTooLarge
		}
		s.i++
		s.ws()
		if s.b[s.i] == ']' {
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
			if s.b[s.i] == ']' {
				return uniqueRequestIDs(into.Messages)
			}
			s.i++ // ','
			s.ws()
		}
	}
	into.Messages = append(into.Messages, Envelope{})
	return s.message(&into.Messages[0])
}

// uniqueRequestIDs returns ErrDuplicateID, naming the id, when two
// requests of msgs have ids with the same IDKey. A response may have the
// id of a request: the client answers the server's ids, not its own.
func uniqueRequestIDs(msgs []Envelope) error {
	var seen map[string]struct{}
	for i := range msgs {
		m := &msgs[i]
		if m.Kind != KindRequest {
			continue
		}
		if seen == nil {
			seen = make(map[string]struct{}, len(msgs)-i)
		}
		key := IDKey(m.ID)
		if _, dup := seen[key]; dup {
			return fmt.Errorf("%w: %s", ErrDuplicateID, m.ID)
		}
		seen[key] = struct{}{}
	}
	return nil
}

// checkJSON refuses a body that is not valid JSON in valid UTF-8, or, not
// complete, not the beginning of such a body.
func checkJSON(body []byte, complete bool) error {
	var v streamCheck
	if _, err := v.write(body); err != nil {
		return err
	}
	if complete {
		return v.end()
	}
	return nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	return b
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// scanner walks JSON text that may end early. The text is valid JSON, or
// a valid prefix of it, so values it does not read are skipped with little
// care. It never recurses, so deep nesting costs no stack.
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
	end, escaped, ok := StringEnd(s.b, s.i)
	if !ok {
		return nil, false, errEOF
	}
	raw = s.b[s.i+1 : end-1]
	s.i = end
	return raw, escaped, nil
}

// StringEnd returns the offset just past the JSON string whose opening
// quote is b[i], and whether the string holds an escape; ok is false when
// b ends inside it. The string's bytes are not checked otherwise.
//
// The next quote ends the string unless a backslash before it starts an
// escape; both searches are bytes.IndexByte's, which a long string without
// escapes (an event's padding, a base64 blob) passes at memory speed.
func StringEnd(b []byte, i int) (end int, escaped, ok bool) {
	for j := i + 1; ; {
		q := bytes.IndexByte(b[j:], '"')
		if q < 0 {
			return 0, false, false
		}
		q += j
		bs := bytes.IndexByte(b[j:q], '\\')
		if bs < 0 {
			return q + 1, escaped, true
		}
		// Past the backslash and the byte it escapes (a quote, maybe).
		escaped = true
		j += bs + 2
	}
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

// ValueEnd returns the offset just past the JSON value that starts at
// b[i] (after any white space), found by its quotes and brackets alone;
// ok is false when b ends inside it. It does not check the value's
// syntax: it is for bytes json.Valid or the peek already accepted.
func ValueEnd(b []byte, i int) (end int, ok bool) {
	s := scanner{b: b, i: i}
	s.ws()
	if s.skip() != nil {
		return 0, false
	}
	return s.i, true
}

// nextKey reads the key of the next member of the object being scanned
// (first: none was read yet), decoded, and leaves s.i at its value. ok is
// false at the end of the object, whose closer it consumes.
func (s *scanner) nextKey(first bool) (key []byte, ok bool, err error) {
	s.ws()
	if s.eof() {
		return nil, false, errEOF
	}
	switch c := s.b[s.i]; {
	case c == '}':
		s.i++
		return nil, false, nil
	case !first && c == ',':
		s.i++
		s.ws()
	case !first:
		return nil, false, ErrMalformed
	}
	start := s.i
	raw, escaped, err := s.str()
	if err != nil {
		return nil, false, err
	}
	quoted := s.b[start:s.i]
	s.ws()
	if s.eof() {
		return nil, false, errEOF
	}
	if s.b[s.i] != ':' {
		return nil, false, ErrMalformed
	}
	s.i++
	s.ws()
	key, err = decodeKey(raw, quoted, escaped)
	return key, err == nil, err
}

// member reads the key of the next member of an object whose keys are
// checked by keys, and returns its member index in keys' set (-1 for
// another key) with s.i at its value, which has started. ok is false at
// the end of the object.
func (s *scanner) member(keys *objectKeys, first bool) (m int, ok bool, err error) {
	key, ok, err := s.nextKey(first)
	if err != nil || !ok {
		return -1, false, err
	}
	if m, err = keys.add(key); err != nil {
		return m, false, err
	}
	if s.eof() {
		return m, false, errEOF
	}
	return m, true, nil
}

// rawValue returns the raw bytes of the scalar or compound value at s.i.
func (s *scanner) rawValue() ([]byte, error) {
	start := s.i
	if err := s.skip(); err != nil {
		return nil, err
	}
	return s.b[start:s.i], nil
}

// stringValue reads the string at s.i, decoding escapes when present.
func (s *scanner) stringValue() (string, error) {
	start := s.i
	raw, esc, err := s.str()
	if err != nil {
		return "", err
	}
	if !esc {
		return internString(raw), nil
	}
	var out string
	if err := json.Unmarshal(s.b[start:s.i], &out); err != nil {
		return "", ErrMalformed
	}
	return out, nil
}

// optString reads a string or null at s.i (null reads as ""); ok is false
// for a value of another type, which is not consumed.
func (s *scanner) optString() (v string, ok bool, err error) {
	if s.eof() {
		return "", true, errEOF
	}
	switch s.b[s.i] {
	case '"':
		v, err = s.stringValue()
		return v, true, err
	case 'n':
		return "", true, s.skip()
	}
	return "", false, nil
}

// msgFacts is what the scan of one message object read.
type msgFacts struct {
	jsonrpc  bool // "jsonrpc":"2.0"
	method   bool
	id       bool // an id value (null too)
	idNull   bool
	result   bool // a result key
	errorKey bool // an error key
	name     bool // params.name (null too)
	uri      bool // params.uri (null too)
	ref      bool // params.ref, read to its end (null too)
	// The values of params.name and params.uri.
	nameValue, uriValue string
	// The values of params.ref.type, .name and .uri.
	refTypeValue, refNameValue, refURIValue string
	// refErr is a params.ref, or a member of it, of the wrong type: an
	// error for a completion/complete only.
	refErr error
	// subs are the strings of params.notifications.resourceSubscriptions;
	// subsErr is params.notifications, or that member, of the wrong type:
	// an error for a subscriptions/listen only.
	subs    []string
	subsErr error
}

// message scans one message object into env.
func (s *scanner) message(env *Envelope) error {
	var f msgFacts
	err := s.envelope(env, &f)
	if err != nil && err != errEOF {
		return err
	}
	env.Name = targetName(env.Method, f.nameValue, f.uriValue)
	if env.Method == methodComplete {
		if f.refErr != nil {
			return f.refErr
		}
		env.RefType = f.refTypeValue
		env.RefTarget = refTarget(f.refTypeValue, f.refNameValue, f.refURIValue)
	}
	closed := err == nil
	if env.Method == methodListen {
		if f.subsErr != nil {
			return f.subsErr
		}
		if !closed {
			// Its resources are all judged: the whole of it is read.
			return errListenLate
		}
		env.Subscriptions = f.subs
	}
	switch {
	case f.method && (f.result || f.errorKey):
		return errMethodAndResult
	case f.result && f.errorKey:
		return errResultAndError
	case f.result && f.id && f.idNull:
		return errResponseID
	}
	if closed {
		return f.kindOfWhole(env)
	}
	return f.kindOfHead(env)
}

// kindOfWhole sets the kind of a message read to its end.
func (f *msgFacts) kindOfWhole(env *Envelope) error {
	if !f.jsonrpc {
		return ErrJSONRPCVersion
	}
	switch {
	case f.method && f.id && !f.idNull:
		env.Kind = KindRequest
	case f.method:
		env.Kind = KindNotification
	case f.result || f.errorKey:
		if !f.id {
			return errResponseID
		}
		env.Kind = KindResponse
	default:
		return ErrNotEnvelope
	}
	return nil
}

// kindOfHead sets the kind of the head of a body longer than the peek:
// what the proxy decides on must be in it.
func (f *msgFacts) kindOfHead(env *Envelope) error {
	switch {
	case f.method:
		switch {
		case f.id && !f.idNull:
			env.Kind = KindRequest
		case f.id, strings.HasPrefix(env.Method, "notifications/"):
			env.Kind = KindNotification
		default:
			// The id follows; CheckedBody makes sure of it.
			env.Kind = KindRequest
		}
		switch env.Method {
		case "tools/call", "prompts/get":
			if !f.name {
				return ErrTooLarge
			}
		case "resources/read", "resources/subscribe", "resources/unsubscribe":
			if !f.uri {
				return ErrTooLarge
			}
		case methodComplete:
			if !f.ref {
				return ErrTooLarge
			}
		}
	case f.result || f.errorKey:
		env.Kind = KindResponse
	default:
		return ErrTooLarge
	}
	return nil
}

// targetName is the params member an upstream reads as the target of a
// message of method: params.uri for the resources methods, params.name
// for tools/call and prompts/get, whatever else the message holds; for
// another method, the name, or the uri without one.
func targetName(method, name, uri string) string {
	switch method {
	case "resources/read", "resources/subscribe", "resources/unsubscribe":
		return uri
	case "tools/call", "prompts/get":
		return name
	}
	if name != "" {
		return name
	}
	return uri
}

// refTarget is the member of params.ref an upstream reads as the target
// of a completion/complete whose ref has type typ: the name of a prompt,
// the uri of a resource template, whatever else the ref holds; for
// another type, the name, or the uri without one.
func refTarget(typ, name, uri string) string {
	switch typ {
	case RefPrompt:
		return name
	case RefResource:
		return uri
	}
	if name != "" {
		return name
	}
	return uri
}

// envelope scans the members of a message object.
func (s *scanner) envelope(env *Envelope, f *msgFacts) error {
	if s.eof() {
		return errEOF
	}
	if s.b[s.i] != '{' {
		return ErrNotEnvelope
	}
	s.i++
	keys := objectKeys{set: setEnvelope}
	for first := true; ; first = false {
		m, ok, err := s.member(&keys, first)
		if err != nil || !ok {
			return err
		}
		if err := s.envelopeValue(m, env, f); err != nil {
			return err
		}
	}
}

// envelopeValue scans the value of member m (-1 for another key) of a
// message object.
func (s *scanner) envelopeValue(m int, env *Envelope, f *msgFacts) error {
	c := s.b[s.i]
	switch m {
	case envJSONRPC:
		if c != '"' {
			return ErrJSONRPCVersion
		}
		err := s.version()
		f.jsonrpc = err == nil
		return err
	case envMethod:
		if c != '"' {
			return errMethodType
		}
		v, err := s.stringValue()
		if err != nil {
			return err
		}
		env.Method, f.method = v, true
		return nil
	case envID:
		if c != '"' && c != 'n' && c != '-' && (c < '0' || c > '9') {
			return ErrInvalidID
		}
		raw, err := s.rawValue()
		if err != nil {
			return err
		}
		if c != '"' && c != 'n' && !safeIntegerID(raw) {
			return errNumberID
		}
		f.id = true
		if c == 'n' {
			f.idNull = true
		} else {
			env.ID = string(raw)
		}
		return nil
	case envParams:
		switch c {
		case '{':
			return s.params(env, f)
		case 'n':
		default:
			return errParamsType
		}
	case envResult:
		// Known once the value starts: it may end past the head.
		f.result = true
	case envError:
		f.errorKey = true
	}
	return s.skip()
}

// maxSafeID is the largest magnitude of a number id: 2^53-1, the largest
// integer that every JSON peer reads exactly (JavaScript's numbers are
// doubles).
const maxSafeID = 1<<53 - 1

// safeIntegerID reports whether raw, a JSON number, is an integer id that
// every peer reads as the same value and writes back as raw: no fraction,
// no exponent, not -0, at most maxSafeID in magnitude. A server that
// decodes 1.0, 1e0 or 2^53+1 answers with another id (1, or a rounded
// one), whose answer the proxy would not match to its request.
func safeIntegerID(raw []byte) bool {
	digits := bytes.TrimPrefix(raw, []byte("-"))
	if len(digits) == 0 || len(digits) > 16 || digits[0] == '0' && (len(digits) > 1 || len(raw) > 1) {
		return false
	}
	var n uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + uint64(c-'0')
	}
	return n <= maxSafeID
}

// version reads the string at s.i, the value of "jsonrpc", which must be
// "2.0".
func (s *scanner) version() error {
	start := s.i
	raw, esc, err := s.str()
	if err != nil {
		return err
	}
	if esc {
		var v string
		if json.Unmarshal(s.b[start:s.i], &v) != nil || v != "2.0" {
			return ErrJSONRPCVersion
		}
	} else if string(raw) != "2.0" {
		return ErrJSONRPCVersion
	}
	return nil
}

// params scans the params object for the fields the proxy needs.
func (s *scanner) params(env *Envelope, f *msgFacts) error {
	s.i++ // '{'
	keys := objectKeys{set: setParams}
	for first := true; ; first = false {
		m, ok, err := s.member(&keys, first)
		if err != nil || !ok {
			return err
		}
		switch m {
		case parName, parURI, parProtocolVersion:
			v, isStr, err := s.optString()
			if !isStr {
				return paramTypeError(m)
			}
			if err != nil {
				return err
			}
			switch m {
			case parName:
				f.nameValue, f.name = v, true
			case parURI:
				f.uriValue, f.uri = v, true
			default:
				env.ProtocolVersion = v
			}
		case parRequestID:
			raw, err := s.rawValue()
			if err != nil {
				return err
			}
			env.RequestID = string(raw)
		case parMeta:
			switch s.b[s.i] {
			case '{':
				err = s.meta(env)
			case 'n':
				err = s.skip()
			default:
				return errMetaType
			}
			if err != nil {
				return err
			}
		case parRef:
			// Of the wrong type, refused for completion/complete only (see
			// message): another method's params may hold a ref of its own.
			if err := s.optObject(func() error { return s.ref(f) }, &f.refErr, errRefType); err != nil {
				return err
			}
			f.ref = true
		case parNotifications:
			// Of the wrong type, refused for subscriptions/listen only.
			if err := s.optObject(func() error { return s.notifications(f) }, &f.subsErr, errNotifType); err != nil {
				return err
			}
		default:
			if err := s.skip(); err != nil {
				return err
			}
		}
	}
}

// optObject scans the value at s.i with scan when it is an object, skips
// it when it is null, and otherwise skips it and notes bad in *wrongType,
// an error for the one method that reads the member.
func (s *scanner) optObject(scan func() error, wrongType *error, bad error) error {
	switch s.b[s.i] {
	case '{':
		return scan()
	case 'n':
		return s.skip()
	}
	*wrongType = bad
	return s.skip()
}

// notifications scans params.notifications (a subscriptions/listen's
// filter) for its resourceSubscriptions.
func (s *scanner) notifications(f *msgFacts) error {
	return s.members(setNotif, func(int) error {
		switch s.b[s.i] {
		case '[':
			return s.subscriptions(f)
		case 'n':
			return s.skip()
		}
		if f.subsErr == nil {
			f.subsErr = errSubsType
		}
		return s.skip()
	})
}

// members scans the object at s.i, whose keys are checked as set's
// (ambiguous ones refused), calling each for the value of every member of
// set it holds; each must read the value. Other members are skipped.
func (s *scanner) members(set memberSet, each func(m int) error) error {
	s.i++ // '{'
	keys := objectKeys{set: set}
	for first := true; ; first = false {
		m, ok, err := s.member(&keys, first)
		if err != nil || !ok {
			return err
		}
		if m < 0 {
			err = s.skip()
		} else {
			err = each(m)
		}
		if err != nil {
			return err
		}
	}
}

// subscriptions reads the array of resource URIs at s.i.
func (s *scanner) subscriptions(f *msgFacts) error {
	s.i++ // '['
	for first := true; ; first = false {
		s.ws()
		if s.eof() {
			return errEOF
		}
		if s.b[s.i] == ']' {
			s.i++
			return nil
		}
		if !first {
			if s.b[s.i] != ',' {
				return ErrMalformed
			}
			s.i++
			s.ws()
			if s.eof() {
				return errEOF
			}
		}
		if s.b[s.i] != '"' {
			if f.subsErr == nil {
				f.subsErr = errSubsType
			}
			if err := s.skip(); err != nil {
				return err
			}
			continue
		}
		v, err := s.stringValue()
		if err != nil {
			return err
		}
		f.subs = append(f.subs, v)
	}
}

// ref scans params.ref (a completion/complete's reference) for its type,
// name and uri.
func (s *scanner) ref(f *msgFacts) error {
	return s.members(setRef, func(m int) error {
		v, isStr, err := s.optString()
		if !isStr {
			if f.refErr == nil {
				f.refErr = refMemberTypeError(m)
			}
			return s.skip()
		}
		if err != nil {
			return err
		}
		switch m {
		case refType:
			f.refTypeValue = v
		case refName:
			f.refNameValue = v
		default:
			f.refURIValue = v
		}
		return nil
	})
}

// meta scans params._meta for the protocol version.
func (s *scanner) meta(env *Envelope) error {
	s.i++ // '{'
	seen := false
	for first := true; ; first = false {
		key, ok, err := s.nextKey(first)
		if err != nil || !ok {
			return err
		}
		if m, exact, _ := classifyKey(key, setMeta); m == 0 {
			if !exact {
				return ambiguousKey(setMeta, key, m, false)
			}
			if seen {
				return ambiguousKey(setMeta, key, m, true)
			}
			seen = true
			v, isStr, err := s.optString()
			if !isStr {
				return errMetaVersionType
			}
			if err != nil {
				return err
			}
			env.MetaVersion = v
			continue
		}
		if err := s.skip(); err != nil {
			return err
		}
	}
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
		"notifications/roots/list_changed", RefPrompt, RefResource,
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
