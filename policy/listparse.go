package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/mcpgate/mcpgate/mcp"
)

// The one-pass reader of a list result behind FilterList, and the JSON
// helpers it shares with the rest of the package.

// span is where a value lies in the message: msg[start:end].
type span struct{ start, end int }

// member is one member of a JSON object: its name, decoded, and where its
// value lies.
type member struct {
	name string
	val  span
}

// object is the members of a JSON object, in order.
type object []member

// item is one item of the list: its key and where it lies.
type item struct {
	key  string
	span span
}

// listParser reads a list response in one pass over msg, which json.Valid
// has checked before: a valid message needs no decoder to find where its
// values begin and end, only its strings' quotes and its brackets. Member
// names are decoded as encoding/json decodes them (json.Unmarshal when
// one has an escape or bytes that are not UTF-8). It descends into result
// and result.<array> (when they are an object and an array); every other
// value is skipped whole.
type listParser struct {
	msg                []byte
	i                  int // the read position in msg
	arrayName, keyName string

	result     object // the members of result, when resultRead
	resultRead bool
	items      []item // the items of result.<array>, when itemsRead
	itemsRead  bool
	scratch    object // an item's members, reused from item to item
}

func (p *listParser) bytes(s span) []byte { return p.msg[s.start:s.end:s.end] }

func (p *listParser) isNull(s span) bool { return string(p.bytes(s)) == "null" }

// isString reports whether the value at sp is the JSON string s.
func (p *listParser) isString(sp span, s string) bool {
	raw := p.bytes(sp)
	var v string
	return len(raw) > 0 && raw[0] == '"' && json.Unmarshal(raw, &v) == nil && v == s
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

func (p *listParser) startsWith(i int, c byte) bool { return i < len(p.msg) && p.msg[i] == c }

// errCut is what the walk reports if msg ends inside a value, which a
// message json.Valid accepted does not.
var errCut = errors.New("unexpected end of JSON input")

// ws moves past white space and returns the byte there (0 at the end).
func (p *listParser) ws() byte {
	p.i = skipSpace(p.msg, p.i)
	if p.i < len(p.msg) {
		return p.msg[p.i]
	}
	return 0
}

// skip moves past the value at p.i.
func (p *listParser) skip() error {
	end, ok := mcp.ValueEnd(p.msg, p.i)
	if !ok {
		return errCut
	}
	p.i = end
	return nil
}

// name reads the member name at p.i.
func (p *listParser) name() (string, error) {
	start := p.i
	if !p.startsWith(start, '"') {
		return "", errors.New("member name is not a string")
	}
	end, escaped, ok := mcp.StringEnd(p.msg, start)
	if !ok {
		return "", errCut
	}
	p.i = end
	if raw := p.msg[start+1 : end-1]; !escaped && utf8.Valid(raw) {
		return string(raw), nil
	}
	var name string
	if err := json.Unmarshal(p.msg[start:p.i], &name); err != nil {
		return "", err
	}
	return name, nil
}

// invalid returns the error for a message json.Valid refused, as a
// decoder reading it describes it.
func invalid(msg []byte) error {
	dec := json.NewDecoder(bytes.NewReader(msg))
	if err := dec.Decode(new(json.RawMessage)); err != nil {
		return err
	}
	if err := expectEOF(dec); err != nil {
		return err
	}
	return errors.New("invalid JSON")
}

// message reads the whole message.
func (p *listParser) message() (object, error) {
	if !json.Valid(p.msg) {
		return nil, fmt.Errorf("message: %w", invalid(p.msg))
	}
	p.ws()
	top, err := p.object(nil, func(name string, start int) (bool, error) {
		if name != "result" || !p.startsWith(start, '{') {
			return false, nil
		}
		var err error
		if p.result, err = p.object(nil, p.resultMember); err != nil {
			return false, fmt.Errorf("result: %w", err)
		}
		p.resultRead = true
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("message: %w", err)
	}
	if p.ws() != 0 {
		return nil, errors.New("message: data after the JSON value")
	}
	return top, nil
}

// resultMember reads the list array of result.
func (p *listParser) resultMember(name string, start int) (bool, error) {
	if name != p.arrayName || !p.startsWith(start, '[') {
		return false, nil
	}
	p.i++
	if p.ws() == ']' {
		p.i++
		p.itemsRead = true
		return true, nil
	}
	for n := 0; ; n++ {
		start := p.i
		if !p.startsWith(start, '{') {
			return false, fmt.Errorf("%s[%d]: not a JSON object", p.arrayName, n)
		}
		var err error
		if p.scratch, err = p.object(p.scratch[:0], nil); err != nil {
			return false, fmt.Errorf("%s[%d]: %w", p.arrayName, n, err)
		}
		key, err := p.itemKey(p.scratch)
		if err != nil {
			return false, fmt.Errorf("%s[%d]: %w", p.arrayName, n, err)
		}
		p.items = append(p.items, item{key: key, span: span{start, p.i}})
		c := p.ws()
		p.i++
		if c == ']' {
			p.itemsRead = true
			return true, nil
		}
		if c != ',' {
			return false, errCut
		}
		p.ws()
	}
}

// itemKey returns the string value of an item's key member.
func (p *listParser) itemKey(obj object) (string, error) {
	i, err := obj.find(p.keyName)
	if err != nil {
		return "", err
	}
	if i < 0 {
		return "", fmt.Errorf("no %s member", p.keyName)
	}
	var key string
	if raw := p.bytes(obj[i].val); len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &key) != nil {
		return "", fmt.Errorf("%s is not a string", p.keyName)
	}
	return key, nil
}

// foldScanMax is the number of members up to which object looks for names
// equal but for case by comparing each name with the earlier ones; past
// it, it keeps a set of folded names.
const foldScanMax = 16

// object reads the JSON object at p.i, appending its members to obj. For
// each member, descend (when not nil) may read the value itself, starting
// at offset start (p.i), and then returns true; other values are skipped.
// Two member names that are equal or equal under Unicode case folding are
// an error.
func (p *listParser) object(obj object, descend func(name string, start int) (bool, error)) (object, error) {
	if !p.startsWith(p.i, '{') {
		return nil, errors.New("not a JSON object")
	}
	p.i++
	if p.ws() == '}' {
		p.i++
		return obj, nil
	}
	first := len(obj)
	var folded map[string]struct{}
	for {
		name, err := p.name()
		if err != nil {
			return nil, err
		}
		if err := checkDup(obj[first:], name, &folded); err != nil {
			return nil, err
		}
		if p.ws() != ':' {
			return nil, errCut
		}
		p.i++
		p.ws()
		start := p.i
		done := false
		if descend != nil {
			if done, err = descend(name, start); err != nil {
				return nil, err
			}
		}
		if !done {
			if err := p.skip(); err != nil {
				return nil, err
			}
		}
		obj = append(obj, member{name: name, val: span{start, p.i}})
		c := p.ws()
		p.i++
		switch c {
		case '}':
			return obj, nil
		case ',':
			p.ws()
		default:
			return nil, errCut
		}
	}
}

// checkDup reports an error when name equals, or equals but for case, the
// name of a member of obj. *folded is the set of folded names of obj once
// it has more than foldScanMax members.
func checkDup(obj object, name string, folded *map[string]struct{}) error {
	if *folded == nil {
		for i := range obj {
			if strings.EqualFold(obj[i].name, name) {
				return dupError(obj[i].name, name)
			}
		}
		if len(obj) < foldScanMax {
			return nil
		}
		*folded = make(map[string]struct{}, 2*foldScanMax)
		for i := range obj {
			(*folded)[foldName(obj[i].name)] = struct{}{}
		}
	}
	f := foldName(name)
	if _, dup := (*folded)[f]; dup {
		for i := range obj {
			if strings.EqualFold(obj[i].name, name) {
				return dupError(obj[i].name, name)
			}
		}
	}
	(*folded)[f] = struct{}{}
	return nil
}

func dupError(a, b string) error {
	if a == b {
		return fmt.Errorf("duplicate member %q", a)
	}
	return fmt.Errorf("members %q and %q differ only in case", a, b)
}

// foldName maps s to a string that is the same for exactly the strings
// strings.EqualFold holds equal: each rune becomes the least rune of its
// case folding orbit.
func foldName(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		b.WriteRune(least)
	}
	return b.String()
}

// expectEOF reports an error unless dec has nothing but white space left.
func expectEOF(dec *json.Decoder) error {
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			return errors.New("data after the JSON value")
		}
		return err
	}
	return nil
}

// find returns the index of the member named name, or -1. A member whose
// name equals name but for case is an error.
func (o object) find(name string) (int, error) {
	for i := range o {
		if o[i].name == name {
			return i, nil
		}
		if strings.EqualFold(o[i].name, name) {
			return -1, fmt.Errorf("member %q is not spelled %q", o[i].name, name)
		}
	}
	return -1, nil
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	if isPlain(s) {
		b = append(b, '"')
		b = append(b, s...)
		return append(b, '"')
	}
	q, _ := json.Marshal(s) // a string always encodes
	return append(b, q...)
}

// isPlain reports whether s encodes as a JSON string without escapes.
func isPlain(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}
