package sse

import (
	"hash/maphash"
	"sync"
	"time"
)

// minRingBuf is the smallest storage a ring allocates, in bytes.
const minRingBuf = 4096

// Ring is a bounded log of the recent events of one stream, kept so that a
// client reconnecting with Last-Event-ID can be sent the events it missed.
//
// A Ring holds at most maxEvents events and maxBytes bytes (an event counts
// len(id)+len(raw)), and drops events older than maxAge; eviction is always
// oldest first. Storage is one byte buffer used circularly, grown on demand
// up to maxBytes, plus a circular slice of entries grown up to maxEvents, so
// memory stays bounded and steady-state appends do not allocate. An id is
// found in O(1) through a map from the id's hash to its entry, kept in sync
// with eviction.
//
// Ids should be unique within a stream; when an id repeats, lookups find its
// most recent occurrence. The empty id marks an event without an id: it is
// stored and replayed but cannot be resumed from.
//
// All methods are safe for concurrent use; they serialize on a mutex.
type Ring struct {
	mu sync.Mutex

	maxEvents int
	maxBytes  int64
	maxAge    time.Duration

	// buf holds each entry's id followed by its raw bytes. Entries are
	// written at w; when the space after w is too small, writing wraps to
	// the start of buf and lap flips. The live region starts at the oldest
	// entry, which is "wrapped" while its lap differs from lap.
	buf []byte
	w   int
	lap bool

	ents  []ringEntry // circular; the oldest is ents[head]
	head  int
	n     int
	bytes int64
	seq   uint64 // sequence number of the next entry

	index map[uint64]uint64 // hash of id -> seq of its newest entry
	seed  maphash.Seed
}

type ringEntry struct {
	seq    uint64
	at     int64 // append time, Unix nanoseconds
	hash   uint64
	off    int
	idLen  int
	rawLen int
	lap    bool
}

// NewRing returns an empty ring bounded to maxEvents events and maxBytes
// bytes, whose events expire maxAge after they were appended. A maxEvents
// or maxBytes of zero or less gives a ring that stores nothing; a maxAge of
// zero or less disables expiry.
func NewRing(maxEvents int, maxBytes int64, maxAge time.Duration) *Ring {
	return &Ring{
		maxEvents: maxEvents,
		maxBytes:  maxBytes,
		maxAge:    maxAge,
		seed:      maphash.MakeSeed(),
	}
}

// Append copies an event into the ring: id is the event's id ("" for none)
// and raw its bytes as they are to be replayed. It first evicts expired
// events and then the oldest events until the new one fits, and returns the
// number of bytes evicted.
//
// An event whose len(id)+len(raw) exceeds maxBytes is not stored and stored
// is false. Because a replay across it would silently lack it, every older
// event is evicted too; the event's id alone is kept, if it fits, so a client
// that received the event can still resume after it.
func (r *Ring) Append(id string, raw []byte, now time.Time) (evicted int64, stored bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := now.UnixNano()
	evicted = r.expire(t)
	if r.maxEvents <= 0 || r.maxBytes <= 0 {
		return evicted, false
	}
	size := int64(len(id)) + int64(len(raw))
	if size > r.maxBytes {
		for r.n > 0 {
			evicted += r.evictOldest()
		}
		if id != "" && int64(len(id)) <= r.maxBytes {
			r.putID(id, t)
		}
		return evicted, false
	}
	for r.n >= r.maxEvents || r.bytes+size > r.maxBytes {
		evicted += r.evictOldest()
	}
	for {
		if off, ok := r.place(int(size)); ok {
			r.write(off, id, raw, t)
			return evicted, true
		}
		if int64(len(r.buf)) < r.maxBytes {
			r.grow(int(size))
			continue
		}
		evicted += r.evictOldest()
	}
}

// After calls fn, oldest first, for every event appended after the newest
// event with the given id, until fn returns false. Expired events are
// evicted first. found is false, and fn is not called, when id is empty or
// no event with that id is in the ring (never appended, or evicted).
//
// fn runs with the ring locked: it must not call methods of r, and should
// copy what it needs and return quickly. raw is valid only during the call.
func (r *Ring) After(id string, now time.Time, fn func(id string, raw []byte) bool) (found bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expire(now.UnixNano())
	if id == "" || r.n == 0 {
		return false
	}
	seq, ok := r.index[maphash.String(r.seed, id)]
	if !ok {
		return false
	}
	k := seq - r.ents[r.head].seq
	if k >= uint64(r.n) {
		return false
	}
	e := r.entry(int(k))
	if string(r.buf[e.off:e.off+e.idLen]) != id {
		return false // a different id with the same hash
	}
	for i := int(k) + 1; i < r.n; i++ {
		e := r.entry(i)
		raw := r.buf[e.off+e.idLen : e.off+e.idLen+e.rawLen]
		if !fn(string(r.buf[e.off:e.off+e.idLen]), raw) {
			break
		}
	}
	return true
}

// Len returns the number of events in the ring.
func (r *Ring) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// Bytes returns the bytes held by the ring's events, counting
// len(id)+len(raw) for each; it never exceeds maxBytes. The storage behind
// them is at most maxBytes bytes plus 56 bytes per entry slot.
func (r *Ring) Bytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bytes
}

// Evict drops the events older than maxAge at time now and returns the
// number of bytes freed.
func (r *Ring) Evict(now time.Time) (freed int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.expire(now.UnixNano())
}

// Shrink lowers the ring's bounds, evicting the oldest events until the ring
// fits them and releasing storage above them; a bound that is not lower than
// the current one is left unchanged. It returns the number of bytes evicted.
func (r *Ring) Shrink(maxEvents int, maxBytes int64) (freed int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.maxEvents = max(min(r.maxEvents, maxEvents), 0)
	r.maxBytes = max(min(r.maxBytes, maxBytes), 0)
	for r.n > 0 && (r.n > r.maxEvents || r.bytes > r.maxBytes) {
		freed += r.evictOldest()
	}
	if r.n == 0 {
		r.release()
		return freed
	}
	if len(r.ents) > r.maxEvents {
		r.resizeEntries(max(r.n, min(8, r.maxEvents)))
		r.index = make(map[uint64]uint64, r.n)
		for i := 0; i < r.n; i++ {
			e := r.entry(i)
			if e.idLen > 0 {
				r.index[e.hash] = e.seq
			}
		}
	}
	if int64(len(r.buf)) > r.maxBytes {
		r.relocate(int(min(max(r.bytes, minRingBuf), r.maxBytes)))
	}
	return freed
}

// Reset drops every event, releases the ring's storage and returns the
// number of bytes freed. The bounds are kept.
func (r *Ring) Reset() (freed int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	freed = r.bytes
	r.release()
	return freed
}

func (r *Ring) release() {
	r.buf, r.ents, r.index = nil, nil, nil
	r.w, r.head, r.n, r.bytes = 0, 0, 0, 0
}

func (r *Ring) entry(i int) *ringEntry {
	i += r.head
	if i >= len(r.ents) {
		i -= len(r.ents)
	}
	return &r.ents[i]
}

func (r *Ring) expire(t int64) (freed int64) {
	if r.maxAge <= 0 {
		return 0
	}
	cutoff := t - int64(r.maxAge)
	for r.n > 0 && r.ents[r.head].at < cutoff {
		freed += r.evictOldest()
	}
	return freed
}

func (r *Ring) evictOldest() int64 {
	e := &r.ents[r.head]
	if e.idLen > 0 {
		if s, ok := r.index[e.hash]; ok && s == e.seq {
			delete(r.index, e.hash)
		}
	}
	size := int64(e.idLen + e.rawLen)
	r.bytes -= size
	r.head++
	if r.head == len(r.ents) {
		r.head = 0
	}
	r.n--
	if r.n == 0 {
		r.head, r.w = 0, 0
	}
	return size
}

// place finds sz contiguous free bytes in buf, and returns their offset.
func (r *Ring) place(sz int) (int, bool) {
	if r.n == 0 {
		r.w = 0
	}
	if sz == 0 {
		return r.w, true
	}
	if r.n > 0 && r.ents[r.head].lap != r.lap {
		// Wrapped: the free space is [w, oldest).
		if r.w+sz <= r.ents[r.head].off {
			off := r.w
			r.w += sz
			return off, true
		}
		return 0, false
	}
	if r.w+sz <= len(r.buf) {
		off := r.w
		r.w += sz
		return off, true
	}
	if r.n > 0 && sz <= r.ents[r.head].off {
		r.lap = !r.lap
		r.w = sz
		return 0, true
	}
	return 0, false
}

func (r *Ring) write(off int, id string, raw []byte, t int64) {
	copy(r.buf[off:], id)
	copy(r.buf[off+len(id):], raw)
	r.addEntry(off, id, len(raw), t)
}

// putID stores an entry with an id and no raw bytes in an empty ring.
func (r *Ring) putID(id string, t int64) {
	off, ok := r.place(len(id))
	if !ok {
		r.grow(len(id))
		off, _ = r.place(len(id))
	}
	r.write(off, id, nil, t)
}

func (r *Ring) addEntry(off int, id string, rawLen int, t int64) {
	if r.n == len(r.ents) {
		r.resizeEntries(min(max(2*len(r.ents), 8), r.maxEvents))
	}
	e := r.entry(r.n)
	*e = ringEntry{seq: r.seq, at: t, off: off, idLen: len(id), rawLen: rawLen, lap: r.lap}
	if id != "" {
		e.hash = maphash.String(r.seed, id)
		if r.index == nil {
			r.index = make(map[uint64]uint64)
		}
		r.index[e.hash] = r.seq
	}
	r.seq++
	r.n++
	r.bytes += int64(len(id) + rawLen)
}

// grow enlarges buf, up to maxBytes, so that sz more bytes fit after the
// live entries.
func (r *Ring) grow(sz int) {
	c := max(2*len(r.buf), int(r.bytes)+sz, minRingBuf)
	r.relocate(int(min(int64(c), max(r.maxBytes, int64(int(r.bytes)+sz)))))
}

// relocate moves the live entries, in order, to the start of a new buffer of
// size c.
func (r *Ring) relocate(c int) {
	nb := make([]byte, c)
	w := 0
	for i := 0; i < r.n; i++ {
		e := r.entry(i)
		sz := e.idLen + e.rawLen
		copy(nb[w:], r.buf[e.off:e.off+sz])
		e.off = w
		e.lap = r.lap
		w += sz
	}
	r.buf, r.w = nb, w
}

func (r *Ring) resizeEntries(c int) {
	ne := make([]ringEntry, c)
	for i := 0; i < r.n; i++ {
		ne[i] = *r.entry(i)
	}
	r.ents, r.head = ne, 0
}
