package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"io"
	"sync"
	"sync/atomic"

	"github.com/mcpgate/mcpgate/resources"
)

// Verdict is what Pins.Check says of a tool definition.
type Verdict uint8

const (
	PinNew     Verdict = iota // first seen: now pinned
	PinSame                   // as pinned
	PinChanged                // differs from the pinned definition
	PinSkipped                // not checked (see Pins.CheckRaw)
)

// String returns "new", "same", "changed" or "skipped".
func (v Verdict) String() string {
	switch v {
	case PinNew:
		return "new"
	case PinSame:
		return "same"
	case PinChanged:
		return "changed"
	case PinSkipped:
		return "skipped"
	}
	return "unknown"
}

// DefaultMaxPins is the number of pins a Pins with Max <= 0 keeps.
const DefaultMaxPins = 10000

// Pins remembers a hash of each tool definition an upstream served first,
// for at most Max tools across all upstreams (least recently checked
// evicted first; Max <= 0 means 10000). Safe for concurrent use; set Max
// before the first Check.
//
// A pin holds the upstream string as given and sha256 hashes of the tool
// name and definition, so its size does not depend on what the upstream
// serves. An evicted tool is pinned anew (PinNew) when next checked.
type Pins struct {
	Max int

	mu      sync.Mutex
	byUp    map[string]map[[sha256.Size]byte]*pinNode // upstream → hash of name → pin
	n       int
	recency resources.List[pin] // least recently checked at the front
}

// pin is one pinned tool.
type pin struct {
	upstream string
	name     [sha256.Size]byte
	def      [sha256.Size]byte
}

// pinNode is a pin in the recency list of its Pins.
type pinNode = resources.Node[pin]

// Check hashes def (a tools/list item: every member but _meta, so the
// name, title, description, schemas, annotations and any other member,
// under the name as written; canonicalised by decoding and re-encoding
// with encoding/json, so member order and whitespace do not matter) and
// compares it with the hash pinned for (upstream, name); the first
// definition seen is pinned (PinNew). A changed definition stays
// PinChanged (the pin is not replaced) until Forget; a definition changed
// back to the pinned one is PinSame again. A def that is not a JSON object
// is hashed as its raw bytes.
func (p *Pins) Check(upstream, name string, def json.RawMessage) Verdict {
	h := hashDefinition(def)
	nh := sha256.Sum256([]byte(name))

	p.mu.Lock()
	defer p.mu.Unlock()
	if pn := p.byUp[upstream][nh]; pn != nil {
		p.recency.MoveToBack(pn)
		if pn.Value.def == h {
			return PinSame
		}
		return PinChanged
	}
	limit := p.Max
	if limit <= 0 {
		limit = DefaultMaxPins
	}
	for p.n >= limit && p.recency.Front() != nil {
		p.remove(p.recency.Front())
	}
	if p.byUp == nil {
		p.byUp = make(map[string]map[[sha256.Size]byte]*pinNode)
	}
	names := p.byUp[upstream]
	if names == nil {
		names = make(map[[sha256.Size]byte]*pinNode)
		p.byUp[upstream] = names
	}
	pn := &pinNode{Value: pin{upstream: upstream, name: nh, def: h}}
	names[nh] = pn
	p.n++
	p.recency.PushBack(pn)
	return PinNew
}

// PinSkips remembers, per upstream and tool, a hash of the raw bytes of
// the definition last found new or as pinned, so that CheckRaw can leave a
// definition served again byte for byte unchecked. An entry is two sha256
// hashes (of the upstream and tool name, and of the definition), whatever
// the upstream serves. It holds at most Max entries (Max <= 0 means
// DefaultMaxPins) and forgets all of them when it has stored that many
// since it last did. It is independent of the Pins it is used with
// (Forget does not clear it). The zero PinSkips is ready; safe for
// concurrent use.
type PinSkips struct {
	Max int

	last   sync.Map // sha256(upstream, name) → sha256(definition), both [sha256.Size]byte
	stored atomic.Int64
}

// CheckRaw is Check, with skips: when skip is set and the raw bytes of def
// are those skips holds for (upstream, name), def is not checked
// (PinSkipped). A definition found new or as pinned is noted in skips, a
// changed one dropped from it.
func (p *Pins) CheckRaw(skips *PinSkips, upstream, name string, def json.RawMessage, skip bool) Verdict {
	key := skipKey(upstream, name)
	sum := sha256.Sum256(def)
	if skip {
		if last, ok := skips.last.Load(key); ok && last.([sha256.Size]byte) == sum {
			return PinSkipped
		}
	}
	v := p.Check(upstream, name, def)
	if v == PinChanged {
		skips.last.Delete(key)
		return v
	}
	limit := int64(skips.Max)
	if limit <= 0 {
		limit = DefaultMaxPins
	}
	if skips.stored.Add(1) > limit {
		skips.last.Clear()
		skips.stored.Store(0)
	}
	skips.last.Store(key, sum)
	return v
}

// skipKey is the key of (upstream, name) in a PinSkips.
func skipKey(upstream, name string) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(upstream))
	h.Write([]byte{0})
	h.Write([]byte(name))
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// Forget drops the pins of an upstream ("" for all), e.g. after an
// operator approved a change.
func (p *Pins) Forget(upstream string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if upstream == "" {
		p.byUp, p.n, p.recency = nil, 0, resources.List[pin]{}
		return
	}
	for _, pn := range p.byUp[upstream] {
		p.remove(pn)
	}
}

// Len returns how many tools are pinned.
func (p *Pins) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// remove drops pn from the table and the recency list.
func (p *Pins) remove(pn *pinNode) {
	names := p.byUp[pn.Value.upstream]
	delete(names, pn.Value.name)
	if len(names) == 0 {
		delete(p.byUp, pn.Value.upstream)
	}
	p.n--
	p.recency.Remove(pn)
}

// unhashedMember is the one member of a tool definition that Check does
// not hash: _meta, the protocol's metadata, which is not the tool's
// description to a client.
const unhashedMember = "_meta"

// hashDefinition returns the sha256 hash of the canonical form of def: the
// JSON object decoded and re-encoded without its _meta member (object
// members sorted by name as written, so names differing only in case are
// distinct members; no white space; strings escaped one way; numbers as
// written; a member given twice as its last value, as decoders read it).
// A def that is not one JSON object is hashed as its raw bytes, in a form
// no canonical object takes.
func hashDefinition(def json.RawMessage) [sha256.Size]byte {
	dec := json.NewDecoder(bytes.NewReader(def))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil {
		return rawHash(def)
	}
	if _, err := dec.Token(); err != io.EOF { // more than one value
		return rawHash(def)
	}
	delete(m, unhashedMember)
	b, err := json.Marshal(m) // map keys are sorted
	if err != nil {
		return rawHash(def)
	}
	return sha256.Sum256(b)
}

// rawHash is the hash of a definition that does not decode.
func rawHash(def json.RawMessage) [sha256.Size]byte {
	return sha256.Sum256(append([]byte("raw\x00"), def...))
}
