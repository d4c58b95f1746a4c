package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// listShape returns the member of a list result that holds its items and
// the member of each item that keys it.
func listShape(method string) (array, key string, ok bool) {
	switch method {
	case methodToolsList:
		return "tools", "name", true
	case methodPromptsList:
		return "prompts", "name", true
	case methodResourcesList:
		return "resources", "uri", true
	case methodResourceTemplates:
		return "resourceTemplates", "uriTemplate", true
	}
	return "", "", false
}

// ListMethodOf returns the list method whose result msg, one JSON-RPC
// response, has the shape of: a result object holding a "tools",
// "prompts", "resources" or "resourceTemplates" array (tried in that
// order, member names compared ignoring case, as encoding/json matches
// them), or "" for any other message. It tells the list results apart on
// a stream that carries the answers of requests the caller did not see;
// FilterList then refuses a result a decoder could read otherwise.
func ListMethodOf(msg []byte) string {
	var m struct {
		Result map[string]json.RawMessage `json:"result"`
	}
	if json.Unmarshal(msg, &m) != nil || len(m.Result) == 0 {
		return ""
	}
	for _, method := range []string{methodToolsList, methodPromptsList, methodResourcesList, methodResourceTemplates} {
		array, _, _ := listShape(method)
		for name, v := range m.Result {
			if strings.EqualFold(name, array) && len(v) > 0 && v[0] == '[' {
				return method
			}
		}
	}
	return ""
}

// FilterList rewrites msg, one JSON-RPC message (a JSON object) that
// answers a list request of method (tools/list → "tools", prompts/list →
// "prompts", resources/list → "resources" keyed by "uri",
// resources/templates/list → "resourceTemplates" keyed by "uriTemplate";
// tools and prompts keyed by "name"): the items for which keep(key, item)
// is false are removed from result.<array>. keep is called once per item,
// in order, and only once the whole message has been checked; item is the
// item's bytes as msg has them (a sub-slice of msg: keep must not modify
// it).
//
// Everything else of the message is kept: id, jsonrpc, result.nextCursor
// and every other member, in their order; member values other than the
// array keep their bytes, and so do the items kept. When private is true or
// result has a "cacheScope" member, the result's cacheScope is set to
// "private" (a list filtered for one caller must not be cached for
// others).
//
// An error response (an "error" member and no "result"), or a message that
// is not a response (neither), is returned as it is (out == nil); of a
// "result" and an "error" member, one null, the null one counts as
// absent. out is nil when nothing changed.
//
// err is set, and the caller should answer an error rather than pass the
// message on unfiltered, when: method is not a list method; msg is not one
// valid JSON object; it has both "result" and "error", neither null; result
// is not an object; result.<array> is missing or not an array of objects
// each with a string key. It is also set when the message object, its
// result or an item has two members whose names are equal or equal but for
// case (as encoding/json would match them against a struct field, Unicode
// case folding included), or when a member the filter reads ("result",
// "error", the array, "cacheScope", the item key) is spelled with other
// case: a client decoder could read another member than the one filtered.
func FilterList(method string, msg []byte, keep func(key string, item json.RawMessage) bool, private bool) (out []byte, removed int, err error) {
	arrayName, keyName, ok := listShape(method)
	if !ok {
		return nil, 0, fmt.Errorf("%q is not a list method", method)
	}
	p := &listParser{
		msg:       msg,
		arrayName: arrayName,
		keyName:   keyName,
	}
	top, err := p.message()
	if err != nil {
		return nil, 0, err
	}
	e := listEdit{}
	if e.result, err = p.resultIndex(top); err != nil || e.result < 0 {
		return nil, 0, err // an error response, or not a response
	}
	if e.array, e.scope, err = p.arrayAndScope(); err != nil {
		return nil, 0, err
	}
	e.kept = make([]span, 0, len(p.items))
	for _, it := range p.items {
		if keep(it.key, p.bytes(it.span)) {
			e.kept = append(e.kept, it.span)
		}
	}
	removed = len(p.items) - len(e.kept)
	e.trimmed = removed > 0
	e.setScope = private || e.scope >= 0
	if e.setScope && e.scope >= 0 && p.isString(p.result[e.scope].val, "private") {
		e.setScope = false // already private
	}
	if removed == 0 && !e.setScope {
		return nil, 0, nil
	}
	return p.rewrite(top, &e), removed, nil
}

// listEdit is what FilterList changes in a list result: where result, its
// array and its cacheScope are (-1 for none), the items kept, whether some
// were removed, and whether cacheScope is set to "private".
type listEdit struct {
	result, array, scope int
	kept                 []span
	trimmed, setScope    bool
}

// resultIndex returns the index of the message's result member, or -1 for
// an error response or a message that is not a response.
func (p *listParser) resultIndex(top object) (int, error) {
	ri, err := top.find("result")
	if err != nil {
		return -1, fmt.Errorf("message: %w", err)
	}
	ei, err := top.find("error")
	if err != nil {
		return -1, fmt.Errorf("message: %w", err)
	}
	if ri >= 0 && ei >= 0 && !p.isNull(top[ei].val) {
		// JSON-RPC 1.0 style peers send the one that does not apply as null.
		if !p.isNull(top[ri].val) {
			return -1, errors.New("message has both result and error")
		}
		ri = -1
	}
	return ri, nil
}

// arrayAndScope returns the indices, in result, of the list's array and
// of cacheScope (-1 when absent).
func (p *listParser) arrayAndScope() (ai, ci int, err error) {
	if !p.resultRead {
		return 0, 0, errors.New("result is not a JSON object")
	}
	ai, err = p.result.find(p.arrayName)
	if err != nil {
		return 0, 0, fmt.Errorf("result: %w", err)
	}
	if ai < 0 {
		return 0, 0, fmt.Errorf("result has no %s member", p.arrayName)
	}
	if !p.itemsRead {
		return 0, 0, fmt.Errorf("result.%s is not an array", p.arrayName)
	}
	ci, err = p.result.find("cacheScope")
	if err != nil {
		return 0, 0, fmt.Errorf("result: %w", err)
	}
	return ai, ci, nil
}

// rewrite writes the message again with e applied to its result.
func (p *listParser) rewrite(top object, e *listEdit) []byte {
	b := make([]byte, 0, len(p.msg)+len(`,"cacheScope":"private"`))
	b = append(b, '{')
	b = p.appendMembers(b, top, func(b []byte, i int) []byte {
		if i != e.result {
			return append(b, p.bytes(top[i].val)...)
		}
		return p.appendResult(b, e)
	})
	return append(b, '}')
}

// appendResult appends the result object with e applied.
func (p *listParser) appendResult(b []byte, e *listEdit) []byte {
	b = append(b, '{')
	b = p.appendMembers(b, p.result, func(b []byte, j int) []byte {
		switch {
		case j == e.array && e.trimmed:
			b = append(b, '[')
			for k, sp := range e.kept {
				if k > 0 {
					b = append(b, ',')
				}
				b = append(b, p.bytes(sp)...)
			}
			return append(b, ']')
		case j == e.scope && e.setScope:
			return append(b, privateScope...)
		}
		return append(b, p.bytes(p.result[j].val)...)
	})
	if e.scope < 0 && e.setScope {
		b = append(b, `,"cacheScope":`...)
		b = append(b, privateScope...)
	}
	return append(b, '}')
}

// appendMembers appends the members of obj, separated by commas: each
// name, then its value as val appends it.
func (p *listParser) appendMembers(b []byte, obj object, val func(b []byte, i int) []byte) []byte {
	for i, m := range obj {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, m.name)
		b = append(b, ':')
		b = val(b, i)
	}
	return b
}

const privateScope = `"private"`
