package mcp

import (
	"encoding/json"
	"fmt"
	"strings"
)

// maxNesting is the deepest nesting of arrays and objects encoding/json
// accepts; the stream check refuses deeper input the same way.
const maxNesting = 10000

// States of the stream check. The states up to stDone are between tokens,
// where whitespace is skipped.
const (
	stValue      uint8 = iota // a value must follow
	stValueOrEnd              // after '[': a value or ']'
	stKeyOrEnd                // after '{': a key or '}'
	stKey                     // after ',' in an object: a key
	stColon                   // after a key: ':'
	stAfter                   // after a value inside a container: ',' or the closer
	stDone                    // after the top-level value: whitespace only
	stString                  // inside a string
	stEscape                  // after a backslash
	stHex1                    // \u and 0 hex digits read
	stHex2
	stHex3
	stHex4
	stNeg    // after '-'
	stZero   // after a leading 0
	stInt    // in the integer digits
	stDot    // after '.'
	stFrac   // in the fraction digits
	stExp    // after 'e' or 'E'
	stExpSgn // after the exponent sign
	stExpDig // in the exponent digits
	stLit    // inside true, false or null
	stLitEnd // after a literal: a delimiter must follow
)

// Object contexts the message check tracks, at depths 1 to 3.
const (
	ctxNone uint8 = iota
	ctxEnvelope
	ctxParams
	ctxMeta
	ctxRef // params.ref
)

// strCap bounds the raw bytes of a key or value the message check keeps:
// a longer key cannot decode to a member name (each of their at most 39
// characters takes at most 6 bytes, as \uXXXX).
const strCap = 256

// maxTrailing bounds the whitespace a CheckedBody holds back after the
// message's closing brace until the body ends.
const maxTrailing = 4096

// streamCheck is an incremental JSON validator: bytes are pushed in chunks
// of any size and it keeps only a fixed amount of state (a bit per open
// container, up to maxNesting). It accepts exactly what json.Valid
// accepts, and additionally requires valid UTF-8 inside strings.
//
// With track set it also reads a single JSON-RPC message the way
// ParseEnvelope does, and refuses what ParseEnvelope's reading of the
// first boundary bytes could not have seen: see CheckedBody.
type streamCheck struct {
	off   int64 // offset of the next byte
	st    uint8
	inKey bool   // the string being scanned is an object key
	lit   string // the rest of the literal being scanned
	need  uint8  // UTF-8 continuation bytes still expected
	lo    byte   // range of the next continuation byte
	hi    byte
	depth int
	obj   [maxNesting/64 + 1]uint64 // bit d: the container at depth d is an object

	track    bool
	boundary int64
	ctx      [4]uint8 // context of the object open at depths 1 to 3
	cur      [4]int8  // member whose value is being read in that object, -1 for another key
	next     uint8    // context of the container about to open

	buffering bool
	bufOver   bool
	bufEsc    bool
	bufLen    int
	buf       [strCap + 2]byte // the string being kept, with its quotes

	envSeen     uint8  // bits of the envelope members met
	parSeen     uint16 // bits of the params members met
	metaSeen    bool   // the _meta version key was met
	refSeen     uint8  // bits of the params.ref members met
	jsonrpc     bool   // "jsonrpc":"2.0" was read
	methodNotif bool   // the method starts with "notifications/"
	methodRef   bool   // the method is completion/complete, whose params.ref the peek reads
	refBad      error  // a params.ref, or a member of it, of the wrong type: refused for completion/complete only
	idEarly     bool   // the id's value ended before the boundary
	idType      byte   // first byte of the id's value
	closedEarly bool   // the message object closed before the boundary
	// lateID is the raw JSON of an id whose value ended at or after the
	// boundary, as the body holds it: a number, or a string of at most
	// strCap bytes between its quotes ("" for a longer one, or null).
	lateID string
}

// newMessageCheck returns a stream check that reads one JSON-RPC message
// and treats what starts at or after boundary as unseen by the peek.
func newMessageCheck(boundary int64) *streamCheck {
	return &streamCheck{track: true, boundary: boundary}
}

func (v *streamCheck) isObject(d int) bool { return v.obj[d>>6]&(1<<(d&63)) != 0 }

// tracked reports whether the object open at depth d is one whose members
// the message check reads.
func (v *streamCheck) tracked(d int) bool {
	return v.track && d >= 1 && d <= 3 && v.ctx[d] != ctxNone
}

func (v *streamCheck) syntaxError(i int) error {
	return fmt.Errorf("%w: invalid JSON at byte %d", ErrMalformed, v.off+int64(i))
}

func (v *streamCheck) utf8Error(i int) error {
	return fmt.Errorf("%w at byte %d", errInvalidUTF8, v.off+int64(i))
}

// keep appends string bytes to the kept string, up to strCap.
func (v *streamCheck) keep(b []byte) {
	if !v.buffering || v.bufOver {
		return
	}
	if v.bufLen+len(b) > strCap+1 {
		v.bufOver = true
		n := copy(v.buf[v.bufLen:strCap+1], b)
		v.bufLen += n
		return
	}
	v.bufLen += copy(v.buf[v.bufLen:], b)
}

func (v *streamCheck) keepByte(c byte) {
	if v.buffering && !v.bufOver {
		if v.bufLen >= strCap+1 {
			v.bufOver = true
			return
		}
		v.buf[v.bufLen] = c
		v.bufLen++
	}
}

// startKeep starts keeping the string whose opening quote was just read.
func (v *streamCheck) startKeep() {
	v.buffering = true
	v.bufOver = false
	v.bufEsc = false
	v.buf[0] = '"'
	v.bufLen = 1
}

// startKeepNumber starts keeping the number whose first byte c was just
// read (the id's, which safeIntegerID checks once it ends).
func (v *streamCheck) startKeepNumber(c byte) {
	v.buffering = true
	v.bufOver = false
	v.bufEsc = false
	v.bufLen = 0
	v.keepByte(c)
}

// kept returns the kept string decoded, and false when it was longer than
// strCap.
func (v *streamCheck) kept() ([]byte, bool, error) {
	v.buffering = false
	if v.bufOver {
		return nil, false, nil
	}
	raw := v.buf[1:v.bufLen]
	if !v.bufEsc {
		return raw, true, nil
	}
	v.buf[v.bufLen] = '"'
	// A copy: the decoder must not keep the check's buffer alive.
	quoted := append([]byte(nil), v.buf[:v.bufLen+1]...)
	k, err := decodeKey(quoted[1:len(quoted)-1], quoted, true)
	return k, err == nil, err
}

// write pushes the next bytes of the input. It returns the index in p of
// the byte that closed the top-level value, or -1 when it did not close
// in p, and the first violation met.
func (v *streamCheck) write(p []byte) (closeAt int, err error) {
	closeAt, err = v.scan(p)
	v.off += int64(len(p))
	return closeAt, err
}

// scan runs the state machine over p. The frequent steps, between tokens
// and along a string, are taken here; the others are methods of their
// own. Those that read numbers and literals read up to their end (or the
// end of p) and return the index of the last byte they consumed: the byte
// that ends a number or literal is left to the state that follows.
func (v *streamCheck) scan(p []byte) (int, error) {
	closeAt := -1
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c <= ' ' && v.st <= stDone && isSpace(c) {
			continue // whitespace between tokens
		}
		var err error
		closed := false
		switch v.st {
		case stString:
			if v.need > 0 {
				err = v.continuation(c, i)
				break
			}
			j := i // plain bytes are kept in one run
			for j < len(p) && !stringSpecial(p[j]) {
				j++
			}
			v.keep(p[i:j])
			if j == len(p) {
				return closeAt, nil
			}
			i = j
			if p[i] == '"' {
				err = v.stringEnd(i)
			} else {
				err = v.stringByte(p[i], i)
			}
		case stEscape:
			err = v.escape(c, i)
		case stHex1, stHex2, stHex3, stHex4:
			err = v.hexDigit(c, i)
		case stValue, stValueOrEnd:
			closed, err = v.value(c, i)
		case stKeyOrEnd, stKey:
			if c == '"' {
				v.startKey()
			} else {
				closed, err = v.keyOrEnd(c, i)
			}
		case stColon:
			if c == ':' {
				v.st = stValue
			} else {
				err = v.syntaxError(i)
			}
		case stAfter:
			if c == ',' {
				v.nextMember()
			} else {
				closed, err = v.closer(c, i)
			}
		case stDone: // only whitespace may follow, skipped above
			err = v.syntaxError(i)
		case stLit:
			i, err = v.literal(p, i)
		case stLitEnd:
			err = v.scalarEnd(i)
			i-- // the delimiter is read again in the new state
		default: // the number states
			i, err = v.number(p, i)
		}
		if err != nil {
			return closeAt, err
		}
		if closed {
			closeAt = i
		}
	}
	return closeAt, nil
}

// stringByte reads c, at p[i], a byte of a string other than a plain byte
// or its closing quote.
func (v *streamCheck) stringByte(c byte, i int) error {
	switch {
	case c == '\\':
		v.st = stEscape
		v.bufEsc = true
		v.keepByte(c)
		return nil
	case c < 0x20:
		return v.syntaxError(i)
	}
	return v.utf8Lead(c, i)
}

// stringSpecial reports whether c, in a string, is anything but a plain
// byte kept as it is: a quote, a backslash, a control or a non-ASCII byte.
func stringSpecial(c byte) bool {
	return c < 0x20 || c == '"' || c == '\\' || c >= 0x80
}

// utf8Lead reads c, at p[i], as the first byte of a multi-byte UTF-8
// sequence in a string, and sets the continuation bytes it calls for.
func (v *streamCheck) utf8Lead(c byte, i int) error {
	switch {
	case c >= 0xC2 && c <= 0xDF:
		v.need, v.lo, v.hi = 1, 0x80, 0xBF
	case c == 0xE0:
		v.need, v.lo, v.hi = 2, 0xA0, 0xBF
	case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
		v.need, v.lo, v.hi = 2, 0x80, 0xBF
	case c == 0xED:
		v.need, v.lo, v.hi = 2, 0x80, 0x9F
	case c == 0xF0:
		v.need, v.lo, v.hi = 3, 0x90, 0xBF
	case c >= 0xF1 && c <= 0xF3:
		v.need, v.lo, v.hi = 3, 0x80, 0xBF
	case c == 0xF4:
		v.need, v.lo, v.hi = 3, 0x80, 0x8F
	default:
		return v.utf8Error(i)
	}
	v.keepByte(c)
	return nil
}

// continuation reads c, at p[i], as the next continuation byte of a UTF-8
// sequence in a string.
func (v *streamCheck) continuation(c byte, i int) error {
	if c < v.lo || c > v.hi {
		return v.utf8Error(i)
	}
	v.need--
	v.lo, v.hi = 0x80, 0xBF
	v.keepByte(c)
	return nil
}

// escape reads c, at p[i], the byte after a backslash in a string.
func (v *streamCheck) escape(c byte, i int) error {
	switch c {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		v.st = stString
	case 'u':
		v.st = stHex1
	default:
		return v.syntaxError(i)
	}
	v.keepByte(c)
	return nil
}

// hexDigit reads c, at p[i], one of the four hex digits of a \u escape.
func (v *streamCheck) hexDigit(c byte, i int) error {
	if !isHex(c) {
		return v.syntaxError(i)
	}
	if v.st == stHex4 {
		v.st = stString
	} else {
		v.st++
	}
	v.keepByte(c)
	return nil
}

// value reads c, at p[i], where a value must start (or, after '[', the
// array may end), and reports whether it closed the top-level value.
func (v *streamCheck) value(c byte, i int) (closed bool, err error) {
	if c == ']' && v.st == stValueOrEnd {
		return v.closeContainer(i)
	}
	if !isValueStart(c) {
		return false, v.syntaxError(i)
	}
	if v.track && v.depth <= 3 {
		if err := v.valueBegin(c, v.off+int64(i)); err != nil {
			return false, err
		}
	}
	switch {
	case c == '{' || c == '[':
		return false, v.open(c, i)
	case c == '"':
		v.st = stString
		v.inKey = false
	case c == '-':
		v.st = stNeg
	case c == '0':
		v.st = stZero
	case c >= '1' && c <= '9':
		v.st = stInt
	case c == 't':
		v.st, v.lit = stLit, "rue"
	case c == 'f':
		v.st, v.lit = stLit, "alse"
	case c == 'n':
		v.st, v.lit = stLit, "ull"
	default:
		return false, v.syntaxError(i)
	}
	return false, nil
}

// open opens the object or array whose opening c is at p[i].
func (v *streamCheck) open(c byte, i int) error {
	if v.depth >= maxNesting {
		return fmt.Errorf("%w at byte %d", errTooDeep, v.off+int64(i))
	}
	v.depth++
	d := v.depth
	if c == '{' {
		v.obj[d>>6] |= 1 << (d & 63)
		v.st = stKeyOrEnd
	} else {
		v.obj[d>>6] &^= 1 << (d & 63)
		v.st = stValueOrEnd
	}
	if v.track && d <= 3 {
		v.ctx[d] = ctxNone
		if c == '{' {
			v.ctx[d] = v.next
		}
		v.cur[d] = -1
	}
	return nil
}

// startKey starts reading an object's key, whose opening quote was read.
func (v *streamCheck) startKey() {
	v.st = stString
	v.inKey = true
	if v.tracked(v.depth) {
		v.startKeep()
	}
}

// keyOrEnd reads c, at p[i], where an object's key must start, when it is
// not the key's opening quote: right after '{' the object may end. It
// reports whether that closed the top-level value.
func (v *streamCheck) keyOrEnd(c byte, i int) (closed bool, err error) {
	if c == '}' && v.st == stKeyOrEnd {
		return v.closeObject(i)
	}
	return false, v.syntaxError(i)
}

// nextMember moves past the ',' after a value inside a container.
func (v *streamCheck) nextMember() {
	if v.isObject(v.depth) {
		v.st = stKey
	} else {
		v.st = stValue
	}
}

// closer reads c, at p[i], after a value inside a container, when it is
// not a ',': it must close the container. It reports whether that closed
// the top-level value.
func (v *streamCheck) closer(c byte, i int) (closed bool, err error) {
	inObject := v.isObject(v.depth)
	switch {
	case c == '}' && inObject:
		return v.closeObject(i)
	case c == ']' && !inObject:
		return v.closeContainer(i)
	}
	return false, v.syntaxError(i)
}

// number reads the bytes of a number from p[i] on. A byte that cannot
// continue a complete number ends it and is left to the state that
// follows; number returns the index of the last byte it consumed.
func (v *streamCheck) number(p []byte, i int) (int, error) {
	for ; i < len(p); i++ {
		c := p[i]
		digit := c >= '0' && c <= '9'
		switch v.st {
		case stNeg:
			switch {
			case c == '0':
				v.st = stZero
			case digit:
				v.st = stInt
			default:
				return i, v.syntaxError(i)
			}
		case stDot, stExpSgn:
			if !digit {
				return i, v.syntaxError(i)
			}
			if v.st == stDot {
				v.st = stFrac
			} else {
				v.st = stExpDig
			}
		case stExp:
			switch {
			case c == '+' || c == '-':
				v.st = stExpSgn
			case digit:
				v.st = stExpDig
			default:
				return i, v.syntaxError(i)
			}
		default: // stZero, stInt, stFrac, stExpDig
			switch {
			case digit && v.st != stZero:
			case c == '.' && (v.st == stZero || v.st == stInt):
				v.st = stDot
			case (c == 'e' || c == 'E') && v.st != stExpDig:
				v.st = stExp
			default:
				return i - 1, v.scalarEnd(i)
			}
		}
		v.keepByte(c)
	}
	return len(p) - 1, nil
}

// literal reads the bytes of true, false or null from p[i] on, and returns
// the index of the last byte it read.
func (v *streamCheck) literal(p []byte, i int) (int, error) {
	for ; i < len(p); i++ {
		if p[i] != v.lit[0] {
			return i, v.syntaxError(i)
		}
		v.lit = v.lit[1:]
		if v.lit == "" {
			v.st = stLitEnd
			return i, nil
		}
	}
	return len(p) - 1, nil
}

// isValueStart reports whether c can start a JSON value.
func isValueStart(c byte) bool {
	switch c {
	case '{', '[', '"', '-', 't', 'f', 'n':
		return true
	}
	return c >= '0' && c <= '9'
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// afterValue moves past a complete value.
func (v *streamCheck) afterValue() {
	if v.depth == 0 {
		v.st = stDone
	} else {
		v.st = stAfter
	}
}

// scalarEnd ends a number or literal at the delimiter at p[i].
func (v *streamCheck) scalarEnd(i int) error {
	v.afterValue()
	if v.tracked(v.depth) {
		return v.valueEnd(v.depth, v.off+int64(i))
	}
	return nil
}

// stringEnd ends the string whose closing quote is p[i].
func (v *streamCheck) stringEnd(i int) error {
	if v.inKey {
		v.inKey = false
		v.st = stColon
		if v.tracked(v.depth) {
			return v.keyEnd(v.depth)
		}
		return nil
	}
	v.afterValue()
	if v.tracked(v.depth) {
		return v.valueEnd(v.depth, v.off+int64(i))
	}
	return nil
}

// closeObject closes the object open at the current depth with the '}'
// at p[i], and reports whether that closed the top-level value.
func (v *streamCheck) closeObject(i int) (bool, error) {
	if v.tracked(v.depth) && v.ctx[v.depth] == ctxEnvelope {
		if err := v.messageEnd(v.off + int64(i)); err != nil {
			return false, err
		}
	}
	return v.closeContainer(i)
}

// closeContainer pops the container at the current depth (the caller
// checked its kind) and reports whether that closed the top-level value.
func (v *streamCheck) closeContainer(i int) (bool, error) {
	v.depth--
	if v.depth == 0 {
		v.st = stDone
		return true, nil
	}
	v.st = stAfter
	if v.tracked(v.depth) {
		return false, v.valueEnd(v.depth, v.off+int64(i))
	}
	return false, nil
}

// end reports whether the input pushed so far is one complete JSON value
// (and, with track, one acceptable message).
func (v *streamCheck) end() error {
	switch v.st {
	case stDone:
		return nil
	case stZero, stInt, stFrac, stExpDig, stLitEnd:
		if v.depth == 0 {
			return nil
		}
	case stString, stEscape, stHex1, stHex2, stHex3, stHex4:
		if v.need > 0 {
			return fmt.Errorf("%w at byte %d", errInvalidUTF8, v.off)
		}
	}
	return fmt.Errorf("%w: unexpected end of JSON at byte %d", ErrMalformed, v.off)
}

// valueBegin notes c, the first byte of a value, at offset pos.
func (v *streamCheck) valueBegin(c byte, pos int64) error {
	if !v.track {
		return nil
	}
	v.next = ctxNone
	d := v.depth
	if d == 0 {
		switch c {
		case '{':
			v.next = ctxEnvelope
			return nil
		case '[':
			return ErrBatchTooLarge
		}
		return ErrNotEnvelope
	}
	if !v.tracked(d) || !v.isObject(d) {
		return nil
	}
	m := int(v.cur[d])
	if m < 0 {
		return nil
	}
	switch v.ctx[d] {
	case ctxEnvelope:
		return v.envelopeValueBegin(c, m, pos)
	case ctxParams:
		return v.paramsValueBegin(c, m)
	case ctxMeta:
		if !isStringOrNull(c) {
			return errMetaVersionType
		}
	case ctxRef:
		if !isStringOrNull(c) && v.refBad == nil {
			v.refBad = refMemberTypeError(m)
		}
	}
	return nil
}

// isStringOrNull reports whether c, the first byte of a valid value,
// starts a string or null.
func isStringOrNull(c byte) bool { return c == '"' || c == 'n' }

// envelopeValueBegin notes c, the first byte of the value of the
// envelope's member m, at offset pos.
func (v *streamCheck) envelopeValueBegin(c byte, m int, pos int64) error {
	if pos >= v.boundary && (m == envParams || m == envResult || m == envError) {
		// ParseEnvelope reads these from the head when their value
		// starts in it.
		return lateKey(setEnvelope, m)
	}
	str := c == '"'
	switch m {
	case envJSONRPC:
		if !str {
			return ErrJSONRPCVersion
		}
		v.startKeep()
	case envMethod:
		if !str {
			return errMethodType
		}
		v.startKeep()
	case envID:
		if !isStringOrNull(c) && c != '-' && (c < '0' || c > '9') {
			return ErrInvalidID
		}
		v.idType = c
		switch {
		case str:
			v.startKeep() // for lateID
		case c != 'n':
			v.startKeepNumber(c)
		}
	case envParams:
		switch c {
		case '{':
			v.next = ctxParams
		case 'n':
		default:
			return errParamsType
		}
	}
	return nil
}

// paramsValueBegin notes c, the first byte of the value of the params
// member m.
func (v *streamCheck) paramsValueBegin(c byte, m int) error {
	switch m {
	case parName, parURI, parProtocolVersion:
		if !isStringOrNull(c) {
			return paramTypeError(m)
		}
	case parMeta:
		switch c {
		case '{':
			v.next = ctxMeta
		case 'n':
		default:
			return errMetaType
		}
	case parRef:
		switch c {
		case '{':
			v.next = ctxRef
		case 'n':
		default:
			if v.refBad == nil {
				v.refBad = errRefType
			}
		}
	}
	return nil
}

// keyEnd reads the key that just ended in the tracked object at depth d.
func (v *streamCheck) keyEnd(d int) error {
	v.cur[d] = -1
	key, ok, err := v.kept()
	if err != nil || !ok {
		return err
	}
	var set memberSet
	switch v.ctx[d] {
	case ctxEnvelope:
		set = setEnvelope
	case ctxParams:
		set = setParams
	case ctxRef:
		set = setRef
	default:
		set = setMeta
	}
	m, exact, _ := classifyKey(key, set)
	if m < 0 {
		return nil
	}
	if !exact {
		return ambiguousKey(set, key, m, false)
	}
	switch set {
	case setEnvelope:
		if v.envSeen&(1<<m) != 0 {
			return ambiguousKey(set, key, m, true)
		}
		v.envSeen |= 1 << m
	case setParams:
		if v.parSeen&(1<<m) != 0 {
			return ambiguousKey(set, key, m, true)
		}
		v.parSeen |= 1 << m
	case setRef:
		if v.refSeen&(1<<m) != 0 {
			return ambiguousKey(set, key, m, true)
		}
		v.refSeen |= 1 << m
	default:
		if v.metaSeen {
			return ambiguousKey(set, key, m, true)
		}
		v.metaSeen = true
	}
	v.cur[d] = int8(m)
	return nil
}

// valueEnd notes the end of the value of the current member of the
// tracked object at depth d; pos is the offset of its last byte (a string's
// closing quote, a container's closer) or of the delimiter after a number
// or literal, the first offset at which ParseEnvelope knows the value.
func (v *streamCheck) valueEnd(d int, pos int64) error {
	m := int(v.cur[d])
	v.cur[d] = -1
	if m < 0 {
		return nil
	}
	early := pos < v.boundary
	switch v.ctx[d] {
	case ctxEnvelope:
		switch m {
		case envJSONRPC:
			s, ok, err := v.kept()
			if err != nil {
				return err
			}
			if !ok || string(s) != "2.0" {
				return ErrJSONRPCVersion
			}
			v.jsonrpc = true
		case envMethod:
			if !early {
				return lateKey(setEnvelope, m)
			}
			v.methodRef = v.keptEquals(methodComplete)
			v.methodNotif = v.keptHasPrefix("notifications/")
		case envID:
			v.idEarly = early
			switch v.idType {
			case 'n':
			case '"':
				v.buffering = false
				if !early && !v.bufOver {
					v.lateID = string(v.buf[:v.bufLen]) + `"`
				}
			default:
				v.buffering = false
				if v.bufOver || !safeIntegerID(v.buf[:v.bufLen]) {
					return errNumberID
				}
				if !early {
					v.lateID = string(v.buf[:v.bufLen])
				}
			}
		}
	case ctxParams:
		switch m {
		case parName, parURI, parProtocolVersion, parRequestID, parCursor:
			if !early {
				return lateKey(setParams, m)
			}
		case parRef:
			// The peek reads the ref of a completion/complete only; a
			// method not read yet will come late itself.
			if !early && (v.methodRef || v.envSeen&(1<<envMethod) == 0) {
				return lateKey(setParams, m)
			}
		}
	case ctxMeta:
		if !early {
			return lateKey(setMeta, 0)
		}
	}
	return nil
}

// keptEquals reports whether the kept string, decoded, is s. It leaves
// the string kept, for keptHasPrefix.
func (v *streamCheck) keptEquals(s string) bool {
	if v.bufOver {
		return false
	}
	raw := v.buf[1:v.bufLen]
	if !v.bufEsc {
		return string(raw) == s
	}
	q := make([]byte, 0, len(raw)+2)
	q = append(append(append(q, '"'), raw...), '"')
	var d string
	return json.Unmarshal(q, &d) == nil && d == s
}

// keptHasPrefix reports whether the kept string, decoded, starts with
// prefix. Of a string longer than strCap the kept start is decoded, cut
// before an escape the cap split.
func (v *streamCheck) keptHasPrefix(prefix string) bool {
	v.buffering = false
	raw := v.buf[1:v.bufLen]
	if v.bufOver {
		raw = v.buf[1 : strCap+1]
		for k := 0; k < len(raw); k++ {
			if raw[k] != '\\' {
				continue
			}
			n := 2
			if k+1 < len(raw) && raw[k+1] == 'u' {
				n = 6
			}
			if k+n > len(raw) {
				raw = raw[:k]
				break
			}
			k += n - 1
		}
	}
	if !v.bufEsc {
		return strings.HasPrefix(string(raw), prefix)
	}
	q := make([]byte, 0, len(raw)+2)
	q = append(append(append(q, '"'), raw...), '"')
	var s string
	if json.Unmarshal(q, &s) != nil {
		return false
	}
	return strings.HasPrefix(s, prefix)
}

// messageEnd applies the rules about the whole message when its closing
// brace, at offset pos, is read.
func (v *streamCheck) messageEnd(pos int64) error {
	v.closedEarly = pos < v.boundary
	has := func(m int) bool { return v.envSeen&(1<<m) != 0 }
	if !v.jsonrpc {
		return ErrJSONRPCVersion
	}
	if v.methodRef && v.refBad != nil {
		return v.refBad
	}
	method, result, errMember, id := has(envMethod), has(envResult), has(envError), has(envID)
	switch {
	case method && (result || errMember):
		return errMethodAndResult
	case result && errMember:
		return errResultAndError
	case method:
		if v.closedEarly {
			return nil
		}
		if id && !v.idEarly && (v.methodNotif || v.idType == 'n') {
			// The peek read a notification, or a request whose id it
			// did not see: an id that turns it into something else is
			// not allowed to arrive late.
			return lateKey(setEnvelope, envID)
		}
		if !id && !v.methodNotif {
			return errRequestWithoutID
		}
	case result || errMember:
		if !id || (v.idType == 'n' && !errMember) {
			return errResponseID
		}
	default:
		return ErrNotEnvelope
	}
	return nil
}
