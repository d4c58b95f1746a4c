package mcp

import (
	"bytes"
	"encoding/json"
	"unicode"
	"unicode/utf8"
)

// Members of a JSON-RPC message object the proxy reads.
const (
	envJSONRPC = iota
	envID
	envMethod
	envParams
	envResult
	envError
)

// envelopeNames are the envelope members, indexed by the env constants.
var envelopeNames = [...]string{"jsonrpc", "id", "method", "params", "result", "error"}

// Members of a params object the proxy reads.
const (
	parName = iota
	parURI
	parProtocolVersion
	parRequestID
	parMeta
	parArguments
	parCursor
	parRef
	parNotifications
)

// paramsNames are the params members, indexed by the par constants.
var paramsNames = [...]string{"name", "uri", "protocolVersion", "requestId", "_meta", "arguments", "cursor", "ref", "notifications"}

// Members of params.ref (a completion/complete's reference) the proxy
// reads.
const (
	refType = iota
	refName
	refURI
)

// refNames are the params.ref members, indexed by the ref constants.
var refNames = [...]string{"type", "name", "uri"}

// notifNames is the one member of params.notifications (a
// subscriptions/listen's filter) the proxy reads: the URIs of the
// resources whose updates the client subscribes to.
var notifNames = [...]string{"resourceSubscriptions"}

// metaVersionKey is the _meta key that carries the protocol version in the
// stateless revision.
const metaVersionKey = "io.modelcontextprotocol/protocolVersion"

// memberSet names the object whose members a key is compared with.
type memberSet uint8

const (
	setEnvelope memberSet = iota
	setParams
	setMeta
	setRef
	setNotif
)

// names returns the exact spellings of the set's members, indexed by
// member.
func (set memberSet) names() []string {
	switch set {
	case setEnvelope:
		return envelopeNames[:]
	case setParams:
		return paramsNames[:]
	case setRef:
		return refNames[:]
	case setNotif:
		return notifNames[:]
	}
	return metaNames[:]
}

// metaNames is the one member of _meta the proxy reads.
var metaNames = [...]string{metaVersionKey}

// name returns the exact spelling of member m of the set.
func (set memberSet) name(m int) string { return set.names()[m] }

// foldedNames holds the members' names of each set in folded form (see
// appendFold), indexed like names.
var foldedNames = func() (folded [setNotif + 1][]string) {
	for set := range folded {
		for _, name := range memberSet(set).names() {
			folded[set] = append(folded[set], string(appendFold(nil, []byte(name))))
		}
	}
	return folded
}()

// FNV-1a, over the folded form of a key.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// maxMemberKey bounds the length of a decoded key that can still fold to a
// member name: the longest name has 39 bytes, and a folded rune is never
// longer than its source, so 128 leaves room for every spelling. (A byte
// that is not UTF-8 decodes as U+FFFD, three bytes: the folded key can
// outgrow its source, and classifyKey stops keeping it at the bound.)
const maxMemberKey = 128

// classifyKey compares a decoded key with the members of set the way
// encoding/json matches object keys to struct fields: ASCII letters
// compare case-insensitively, other runes by Unicode simple folding (so
// "ſ" U+017F matches "s" and "K" U+212A matches "k"). It returns the
// member the key folds to (-1 for none), whether the key is that member's
// exact spelling, and a hash of the folded key that is equal for keys that
// fold alike.
func classifyKey(key []byte, set memberSet) (member int, exact bool, hash uint64) {
	var buf [maxMemberKey]byte
	n := 0
	short := len(key) <= maxMemberKey
	h := uint64(fnvOffset)
	for i := 0; i < len(key); {
		c := key[i]
		if c < utf8.RuneSelf {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			}
			h = (h ^ uint64(c)) * fnvPrime
			if short && n == len(buf) {
				short = false // grown past the bound by bytes that are not UTF-8
			}
			if short {
				buf[n] = c
				n++
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(key[i:])
		i += size
		var enc [utf8.UTFMax]byte
		m := utf8.EncodeRune(enc[:], foldRune(r))
		if n+m > len(buf) {
			short = false
		}
		for _, e := range enc[:m] {
			h = (h ^ uint64(e)) * fnvPrime
			if short {
				buf[n] = e
				n++
			}
		}
	}
	member = -1
	if short {
		member = lookupFolded(buf[:n], set)
	}
	exact = member >= 0 && string(key) == set.name(member)
	return member, exact, h
}

// exactMember returns the member of set spelled exactly key, or -1. It
// runs for every key of every message read, so it is spelled out as a
// switch, which the compiler turns into a search by length and bytes.
func exactMember(key []byte, set memberSet) int {
	switch set {
	case setEnvelope:
		switch string(key) {
		case "jsonrpc":
			return envJSONRPC
		case "id":
			return envID
		case "method":
			return envMethod
		case "params":
			return envParams
		case "result":
			return envResult
		case "error":
			return envError
		}
	case setParams:
		switch string(key) {
		case "name":
			return parName
		case "uri":
			return parURI
		case "protocolVersion":
			return parProtocolVersion
		case "requestId":
			return parRequestID
		case "_meta":
			return parMeta
		case "arguments":
			return parArguments
		case "cursor":
			return parCursor
		case "ref":
			return parRef
		case "notifications":
			return parNotifications
		}
	case setMeta:
		if string(key) == metaVersionKey {
			return 0
		}
	case setRef:
		switch string(key) {
		case "type":
			return refType
		case "name":
			return refName
		case "uri":
			return refURI
		}
	case setNotif:
		if string(key) == notifNames[0] {
			return 0
		}
	}
	return -1
}

// objectKeys finds the keys of one object (the message, its params or
// params.ref) that decoders could read differently: a key that repeats,
// exactly or by folding, and a key that folds to a member without being
// spelled as it.
type objectKeys struct {
	set     memberSet
	members uint16 // the members met
	others  keySet
}

// add checks the next decoded key of the object and returns its member
// index, or -1 for a key that is not a member.
func (ok *objectKeys) add(key []byte) (int, error) {
	if m := exactMember(key, ok.set); m >= 0 {
		if ok.members&(1<<m) != 0 {
			return m, ambiguousKey(ok.set, key, m, true)
		}
		ok.members |= 1 << m
		return m, nil
	}
	// Not a member's spelling: neither a member's variant nor a repeat.
	m, _, h := classifyKey(key, ok.set)
	if m >= 0 {
		return m, ambiguousKey(ok.set, key, m, false)
	}
	if ok.others.add(key, h) {
		return -1, ambiguousKey(ok.set, key, -1, true)
	}
	return -1, nil
}

// lookupFolded returns the member of set whose folded name is folded, or -1.
func lookupFolded(folded []byte, set memberSet) int {
	for m, name := range foldedNames[set] {
		if name == string(folded) {
			return m
		}
	}
	return -1
}

// foldRune returns the smallest rune of r's simple case-folding orbit, the
// canonical form encoding/json compares non-ASCII runes of names in.
func foldRune(r rune) rune {
	for {
		r2 := unicode.SimpleFold(r)
		if r2 <= r {
			return r2
		}
		r = r2
	}
}

// appendFold appends the folded form of key to dst: ASCII letters in upper
// case, every other rune as foldRune.
func appendFold(dst, key []byte) []byte {
	for i := 0; i < len(key); {
		c := key[i]
		if c < utf8.RuneSelf {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			}
			dst = append(dst, c)
			i++
			continue
		}
		r, size := utf8.DecodeRune(key[i:])
		dst = utf8.AppendRune(dst, foldRune(r))
		i += size
	}
	return dst
}

// foldEqual reports whether two decoded keys fold alike.
func foldEqual(a, b []byte) bool {
	return bytes.Equal(appendFold(nil, a), appendFold(nil, b))
}

// decodeKey returns the decoded form of a raw JSON string (the bytes
// between its quotes); quoted is the string with its quotes. Keys without
// escapes are returned as they are, without allocating.
func decodeKey(raw, quoted []byte, escaped bool) ([]byte, error) {
	if !escaped {
		return raw, nil
	}
	var s string
	if err := json.Unmarshal(quoted, &s); err != nil {
		return nil, ErrMalformed
	}
	return []byte(s), nil
}

// keySet remembers the keys of one object to find a key that repeats,
// exactly or by folding. The first keys live in a fixed array; an object
// with many keys spills into a map, so the check stays linear.
type keySet struct {
	n    int
	hash [16]uint64
	key  [16][]byte
	more map[uint64][][]byte
}

// add records a decoded key with its fold hash and reports whether a key
// that folds alike was recorded before.
func (ks *keySet) add(key []byte, hash uint64) (dup bool) {
	if ks.n < len(ks.hash) {
		for i := 0; i < ks.n; i++ {
			if ks.hash[i] == hash && foldEqual(ks.key[i], key) {
				return true
			}
		}
		ks.hash[ks.n] = hash
		ks.key[ks.n] = key
		ks.n++
		return false
	}
	if ks.more == nil {
		ks.more = make(map[uint64][][]byte, 2*len(ks.hash))
		for i := range ks.hash {
			ks.more[ks.hash[i]] = append(ks.more[ks.hash[i]], ks.key[i])
		}
	}
	for _, k := range ks.more[hash] {
		if foldEqual(k, key) {
			return true
		}
	}
	ks.more[hash] = append(ks.more[hash], key)
	ks.n++
	return false
}
