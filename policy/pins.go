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
	PinNew       Verdict = iota // first seen: now pinned
	PinSame                     // as pinned
	PinChanged                  // differs from the pinned definition
	PinSkipped                  // not checked (see Pins.CheckRaw)
	PinOverQuota                // first seen, not pinned: no room for its upstream (see Pins)
)

// String returns "new", "same", "changed", "skipped" or "over_quota".
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
	case PinOverQuota:
		return "over_quota"
	}
	return "unknown"
}

// DefaultMaxPins is the number of pins a Pins with Max <= 0 keeps.
const DefaultMaxPins = 10000

// Pins remembers a hash of each tool definition an upstream served first,
// for at most Max tools across all upstreams (Max <= 0 means 10000) and
// at most PerUpstream tools of one upstream (PerUpstream <= 0 means a
// quarter of Max, 2500 by default, at least 1). Safe for concurrent use;
// set Max and PerUpstream before the first Check.
//
// By listing new tools, an upstream can evict none of its own pins, nor
// bring another upstream's below its own number:
//
//   - A tool first seen from an upstream holding its quota of pins is not
//     pinned (PinOverQuota); none of its pins is evicted for it.
//   - When the table holds Max pins, a tool first seen from an upstream
//     under its quota takes the place of the least recently checked pin
//     of the upstream holding the most pins, if that is another upstream
//     holding at least two more pins than the requesting one (so that it
//     is left with at least as many); otherwise it is not pinned
//     (PinOverQuota). A full table thus tends to an even share among the
//     upstreams that list tools, and the pins of an upstream gone (a
//     changed config) are the first to make room for others.
//
// With at most Max/PerUpstream upstreams (4 by default) the table never
// fills. Finding the upstream holding the most pins when it is full takes
// a look at each upstream holding pins.
//
// A pin is sha256 hashes of the tool name and definition, with its
// upstream's string held once for all its pins, so its size does not
// depend on what the upstream serves. An evicted tool is pinned anew
// (PinNew) when next checked, if there is room.
type Pins struct {
	Max         int
	PerUpstream int

	mu   sync.Mutex
	byUp map[string]*upstreamPins // at most Max upstreams, each holding pins
	n    int                      // pins held
}

// upstreamPins are the pins of one upstream.
type upstreamPins struct {
	names   map[[sha256.Size]byte]*pinNode // hash of name → pin
	recency resources.List[pin]            // least recently checked at the front
}

// pin is one pinned tool.
type pin struct {
	name [sha256.Size]byte
	def  [sha256.Size]byte
}

// pinNode is a pin in the recency list of its upstream.
type pinNode = resources.Node[pin]

// Check hashes def (a tools/list item: every member but _meta, so the
// name, title, description, schemas, annotations and any other member,
// under the name as written; canonicalised by decoding and re-encoding
// with encoding/json, so member order and whitespace do not matter) and
// compares it with the hash pinned for (upstream, name); the first
// definition seen is pinned (PinNew), if there is room for it
// (PinOverQuota otherwise: see Pins; it is checked again, as first seen,
// next time). A changed definition stays PinChanged (the pin is not
// replaced) until Forget; a definition changed back to the pinned one is
// PinSame again. A def that is not a JSON object is hashed as its raw
// bytes.
func (p *Pins) Check(upstream, name string, def json.RawMessage) Verdict {
	return p.check(upstream, name, hashDefinition(def))
}

// check is Check of a definition hashed h.
func (p *Pins) check(upstream, name string, h [sha256.Size]byte) Verdict {
	nh := sha256.Sum256([]byte(name))

	p.mu.Lock()
	defer p.mu.Unlock()
	u := p.byUp[upstream]
	if u != nil {
		if pn := u.names[nh]; pn != nil {
			u.recency.MoveToBack(pn)
			if pn.Value.def == h {
				return PinSame
			}
			return PinChanged
		}
	}
	limit, quota := p.limits()
	held := 0
	if u != nil {
		held = len(u.names)
	}
	if held >= quota {
		return PinOverQuota
	}
	for p.n >= limit {
		if !p.evictFor(upstream, held) {
			return PinOverQuota
		}
	}
	if u == nil {
		if p.byUp == nil {
			p.byUp = make(map[string]*upstreamPins)
		}
		u = &upstreamPins{names: make(map[[sha256.Size]byte]*pinNode)}
		p.byUp[upstream] = u
	}
	pn := &pinNode{Value: pin{name: nh, def: h}}
	u.names[nh] = pn
	u.recency.PushBack(pn)
	p.n++
	return PinNew
}

// limits returns the pins p holds at most, in all and of one upstream.
func (p *Pins) limits() (limit, quota int) {
	limit = p.Max
	if limit <= 0 {
		limit = DefaultMaxPins
	}
	quota = p.PerUpstream
	if quota <= 0 {
		quota = limit / 4
	}
	return limit, max(1, min(quota, limit))
}

// evictFor makes room for a pin of upstream, which holds held pins: it
// evicts the least recently checked pin of the upstream holding the most,
// if that is another one holding at least held+2. It reports whether it
// did.
func (p *Pins) evictFor(upstream string, held int) bool {
	var most *upstreamPins
	mostUp := ""
	for up, u := range p.byUp {
		if most == nil || len(u.names) > len(most.names) {
			most, mostUp = u, up
		}
	}
	if most == nil || mostUp == upstream || len(most.names) < held+2 {
		return false
	}
	p.remove(mostUp, most, most.recency.Front())
	return true
}

// PinSkips remembers, per upstream and tool, a hash of the raw bytes of
// the definition last found new or as pinned, and the hash it was pinned
// under, so that CheckRaw can leave a definition served again byte for
// byte unchecked while its pin holds. An entry is three sha256 hashes (of
// the upstream and tool name, of the raw definition and of its canonical
// form), whatever the upstream serves. It holds at most Max entries (Max
// <= 0 means DefaultMaxPins) and forgets all of them when it has stored
// that many since it last did. An entry counts only while the Pins it is
// used with holds the same pin: after Forget or an eviction the
// definition is checked, and pinned, again. The zero PinSkips is ready;
// safe for concurrent use.
type PinSkips struct {
	Max int

	last   sync.Map // sha256(upstream, name) [sha256.Size]byte → skipEntry
	stored atomic.Int64
}

// skipEntry is what a PinSkips holds of a definition: the hash of its
// bytes and the hash it was pinned under.
type skipEntry struct {
	raw, def [sha256.Size]byte
}

// CheckRaw is Check, with skips: when skip is set, the raw bytes of def
// are those skips holds for (upstream, name) and p still holds the pin
// they were found as, def is not hashed nor checked (PinSkipped; the pin
// counts as checked). A definition found new or as pinned is noted in
// skips, a changed or unpinned (PinOverQuota) one dropped from it.
func (p *Pins) CheckRaw(skips *PinSkips, upstream, name string, def json.RawMessage, skip bool) Verdict {
	key := skipKey(upstream, name)
	sum := sha256.Sum256(def)
	if skip {
		if last, ok := skips.last.Load(key); ok {
			if e := last.(skipEntry); e.raw == sum && p.holds(upstream, name, e.def) {
				return PinSkipped
			}
		}
	}
	h := hashDefinition(def)
	v := p.check(upstream, name, h)
	if v == PinChanged || v == PinOverQuota {
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
	skips.last.Store(key, skipEntry{raw: sum, def: h})
	return v
}

// holds reports whether the pin of (upstream, name) is h, marking it
// checked if so.
func (p *Pins) holds(upstream, name string, h [sha256.Size]byte) bool {
	nh := sha256.Sum256([]byte(name))
	p.mu.Lock()
	defer p.mu.Unlock()
	u := p.byUp[upstream]
	if u == nil {
		return false
	}
	pn := u.names[nh]
	if pn == nil || pn.Value.def != h {
		return false
	}
	u.recency.MoveToBack(pn)
	return true
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
		p.byUp, p.n = nil, 0
		return
	}
	if u := p.byUp[upstream]; u != nil {
		p.n -= len(u.names)
		delete(p.byUp, upstream)
	}
}

// Len returns how many tools are pinned.
func (p *Pins) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// remove drops pn, a pin of upstream's u, from the table.
func (p *Pins) remove(upstream string, u *upstreamPins, pn *pinNode) {
	delete(u.names, pn.Value.name)
	u.recency.Remove(pn)
	if len(u.names) == 0 {
		delete(p.byUp, upstream)
	}
	p.n--
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
