package sse

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"
)

var t0 = time.Unix(1_700_000_000, 0)

// after collects the ids replayed after id.
func after(r *Ring, id string, now time.Time) (ids []string, found bool) {
	found = r.After(id, now, func(id string, raw []byte) bool {
		if string(raw) != "raw-"+id {
			panic(fmt.Sprintf("raw %q for id %q", raw, id))
		}
		ids = append(ids, id)
		return true
	})
	return ids, found
}

func appendN(r *Ring, from, to int, now time.Time) {
	for i := from; i < to; i++ {
		id := strconv.Itoa(i)
		r.Append(id, []byte("raw-"+id), now)
	}
}

func TestRingAfter(t *testing.T) {
	r := NewRing(10, 1<<20, 0)
	appendN(r, 0, 5, t0)
	ids, found := after(r, "2", t0)
	if !found || fmt.Sprint(ids) != "[3 4]" {
		t.Fatalf("after 2: %v %v", ids, found)
	}
	if ids, found := after(r, "4", t0); !found || len(ids) != 0 {
		t.Fatalf("after last: %v %v", ids, found)
	}
	for _, id := range []string{"", "99", "x"} {
		if _, found := after(r, id, t0); found {
			t.Fatalf("after unknown id %q: found", id)
		}
	}
	// fn returning false stops the replay.
	n := 0
	r.After("0", t0, func(string, []byte) bool { n++; return n < 2 })
	if n != 2 {
		t.Fatalf("replay did not stop: %d", n)
	}
	// Events without an id are replayed but cannot be resumed from.
	r.Append("", []byte("raw-"), t0)
	r.Append("5", []byte("raw-5"), t0)
	if ids, _ := after(r, "4", t0); fmt.Sprint(ids) != "[ 5]" {
		t.Fatalf("after 4: %q", ids)
	}
}

func TestRingCountBound(t *testing.T) {
	r := NewRing(3, 1<<20, 0)
	appendN(r, 0, 10, t0)
	if r.Len() != 3 {
		t.Fatalf("len %d", r.Len())
	}
	if _, found := after(r, "6", t0); found {
		t.Fatal("evicted id found")
	}
	if ids, found := after(r, "7", t0); !found || fmt.Sprint(ids) != "[8 9]" {
		t.Fatalf("after 7: %v %v", ids, found)
	}
}

func TestRingByteBound(t *testing.T) {
	r := NewRing(1000, 100, 0)
	for i := range 50 {
		id := strconv.Itoa(i)
		// id + raw: 2 + 6 bytes for two-digit ids
		r.Append(id, []byte("raw-"+id), t0)
		if r.Bytes() > 100 {
			t.Fatalf("bytes %d after %d", r.Bytes(), i)
		}
		if len(r.buf) > 100 {
			t.Fatalf("storage %d", len(r.buf))
		}
	}
	ids, found := after(r, strconv.Itoa(50-r.Len()), t0)
	if !found || len(ids) != r.Len()-1 || ids[len(ids)-1] != "49" {
		t.Fatalf("replay %v %v, len %d", ids, found, r.Len())
	}
	if r.Len() < 10 {
		t.Fatalf("only %d events of 8 bytes kept in 100 bytes", r.Len())
	}
}

func TestRingAge(t *testing.T) {
	r := NewRing(100, 1<<20, time.Minute)
	appendN(r, 0, 3, t0)
	appendN(r, 3, 5, t0.Add(30*time.Second))
	if freed := r.Evict(t0.Add(time.Minute)); freed != 0 || r.Len() != 5 {
		t.Fatalf("evicted at exactly maxAge: %d, len %d", freed, r.Len())
	}
	if freed := r.Evict(t0.Add(61 * time.Second)); freed != 3*6 || r.Len() != 2 {
		t.Fatalf("freed %d, len %d", freed, r.Len())
	}
	// After expires too.
	if _, found := after(r, "3", t0.Add(2*time.Minute)); found || r.Len() != 0 || r.Bytes() != 0 {
		t.Fatalf("found expired, len %d", r.Len())
	}
	// Append expires.
	appendN(r, 0, 2, t0)
	if ev, _ := r.Append("9", []byte("raw-9"), t0.Add(time.Hour)); ev != 12 || r.Len() != 1 {
		t.Fatalf("append evicted %d, len %d", ev, r.Len())
	}
}

func TestRingShrink(t *testing.T) {
	r := NewRing(100, 10000, 0)
	appendN(r, 0, 100, t0)
	before := r.Bytes()
	freed := r.Shrink(10, 1<<40)
	if r.Len() != 10 || freed != before-r.Bytes() || len(r.ents) > 10 {
		t.Fatalf("len %d freed %d slots %d", r.Len(), freed, len(r.ents))
	}
	r.Shrink(100, 30) // raising the count bound is ignored
	if r.Bytes() > 30 || len(r.buf) > 30 || r.maxEvents != 10 {
		t.Fatalf("bytes %d storage %d maxEvents %d", r.Bytes(), len(r.buf), r.maxEvents)
	}
	if ids, found := after(r, strconv.Itoa(99-r.Len()+1), t0); !found || ids[len(ids)-1] != "99" {
		t.Fatalf("after shrink: %v %v", ids, found)
	}
	appendN(r, 100, 200, t0)
	if r.Bytes() > 30 || r.Len() > 10 {
		t.Fatalf("bounds broken after shrink: %d bytes %d events", r.Bytes(), r.Len())
	}
	r.Shrink(0, 0)
	if r.Len() != 0 || r.buf != nil {
		t.Fatal("shrink to zero kept events")
	}
	if _, stored := r.Append("1", []byte("x"), t0); stored {
		t.Fatal("stored in a ring with no room")
	}
}

func TestRingOversized(t *testing.T) {
	r := NewRing(10, 64, 0)
	appendN(r, 0, 3, t0)
	evicted, stored := r.Append("big", bytes.Repeat([]byte("x"), 100), t0)
	if stored || evicted != 3*6 {
		t.Fatalf("stored %v evicted %d", stored, evicted)
	}
	if _, found := after(r, "1", t0); found {
		t.Fatal("replay across an unstored event")
	}
	appendN(r, 3, 5, t0)
	if ids, found := after(r, "big", t0); !found || fmt.Sprint(ids) != "[3 4]" {
		t.Fatalf("after the unstored event: %v %v", ids, found)
	}
	if r.Bytes() != 3+6+6 {
		t.Fatalf("bytes %d", r.Bytes())
	}
}

func TestRingDuplicateIDAndReset(t *testing.T) {
	r := NewRing(10, 1<<20, 0)
	r.Append("a", []byte("raw-a"), t0)
	r.Append("b", []byte("raw-b"), t0)
	r.Append("a", []byte("raw-a"), t0)
	r.Append("c", []byte("raw-c"), t0)
	if ids, found := after(r, "a", t0); !found || fmt.Sprint(ids) != "[c]" {
		t.Fatalf("after duplicate: %v %v", ids, found)
	}
	if freed := r.Reset(); freed != 4*6 || r.Len() != 0 || r.Bytes() != 0 || r.buf != nil {
		t.Fatalf("reset freed %d", freed)
	}
	appendN(r, 0, 2, t0)
	if ids, found := after(r, "0", t0); !found || fmt.Sprint(ids) != "[1]" {
		t.Fatalf("after reset: %v %v", ids, found)
	}
}

func TestRingWrap(t *testing.T) {
	// Variable sizes in a full buffer exercise wrapping and fragmentation.
	r := NewRing(1000, 4096, 0)
	for i := range 5000 {
		id := strconv.Itoa(i)
		raw := append([]byte("raw-"+id), bytes.Repeat([]byte{' '}, i*7%300)...)
		r.Append(id, raw, t0)
		if r.Bytes() > 4096 || len(r.buf) > 4096 {
			t.Fatalf("bounds: %d bytes, %d storage", r.Bytes(), len(r.buf))
		}
	}
	first := strconv.Itoa(5000 - r.Len())
	var got []string
	found := r.After(first, t0, func(id string, raw []byte) bool {
		if !bytes.HasPrefix(raw, []byte("raw-"+id)) {
			t.Fatalf("raw %q for %q", raw, id)
		}
		got = append(got, id)
		return true
	})
	if !found || len(got) != r.Len()-1 || got[len(got)-1] != "4999" {
		t.Fatalf("found %v, %d of %d", found, len(got), r.Len())
	}
}

func TestRingConcurrent(t *testing.T) {
	r := NewRing(64, 8192, time.Second)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		appendN(r, 0, 5000, t0)
	}()
	for i := 0; i < 500; i++ {
		r.After(strconv.Itoa(i*10), t0, func(string, []byte) bool { return true })
		_ = r.Len() + int(r.Bytes())
	}
	wg.Wait()
}

func BenchmarkRingAppend(b *testing.B) {
	r := NewRing(1024, 1<<20, time.Minute)
	raw := bytes.Repeat([]byte("a"), 1024)
	ids := make([]string, 4096)
	for i := range ids {
		ids[i] = "stream-1_" + strconv.Itoa(i)
	}
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		r.Append(ids[i%len(ids)], raw, t0)
		i++
	}
}

// FuzzRing decodes operations from its input, applies them to a ring and
// checks the bounds and the replay order after each one.
func FuzzRing(f *testing.F) {
	f.Add(uint8(4), uint16(200), []byte{0, 1, 2, 0, 3, 50, 0, 4, 10, 1, 2, 2, 3, 0, 9, 255, 1, 4})
	f.Add(uint8(1), uint16(10), []byte{0, 0, 0, 0, 1, 0, 0, 2, 20, 1, 1})
	f.Add(uint8(50), uint16(1000), bytes.Repeat([]byte{0, 7, 90, 0, 3, 200, 2, 1, 0, 2, 1}, 20))
	f.Fuzz(func(t *testing.T, maxEvents uint8, maxBytes uint16, ops []byte) {
		r := NewRing(int(maxEvents), int64(maxBytes), 10*time.Second)
		limEvents, limBytes := int(maxEvents), int64(maxBytes)
		now := t0
		var (
			appended []string // raw of every append, by append number
			lastIdx  = map[string]int{}
		)
		next := func() byte {
			if len(ops) == 0 {
				return 0
			}
			b := ops[0]
			ops = ops[1:]
			return b
		}
		for len(ops) > 0 {
			switch op := next(); op % 6 {
			case 0, 1: // append
				id := ""
				if c := next(); c%8 != 0 {
					id = string(rune('a' + c%8))
				}
				size := int(next())
				if op%6 == 1 {
					size *= 16
				}
				n := len(appended)
				raw := make([]byte, 4, 4+size)
				binary.BigEndian.PutUint32(raw, uint32(n))
				raw = append(raw, bytes.Repeat([]byte{byte(n)}, size)...)
				appended = append(appended, string(raw))
				if id != "" {
					lastIdx[id] = n
				}
				r.Append(id, raw, now)
			case 2: // resume
				id := string(rune('a' + next()%8))
				prev := -1
				found := r.After(id, now, func(_ string, raw []byte) bool {
					n := int(binary.BigEndian.Uint32(raw))
					if string(raw) != appended[n] {
						t.Fatalf("replayed raw of event %d changed", n)
					}
					if prev == -1 {
						if n != lastIdx[id]+1 {
							t.Fatalf("replay after %q (event %d) starts at %d", id, lastIdx[id], n)
						}
					} else if n != prev+1 {
						t.Fatalf("replay out of order: %d after %d", n, prev)
					}
					prev = n
					return true
				})
				if found && prev == -1 {
					prev = lastIdx[id]
				}
				if found && prev != len(appended)-1 {
					t.Fatalf("replay after %q ended at %d of %d", id, prev, len(appended))
				}
			case 3:
				now = now.Add(time.Duration(next()) * 100 * time.Millisecond)
				r.Evict(now)
			case 4:
				e, b := int(next()), int64(next())*8
				r.Shrink(e, b)
				limEvents, limBytes = min(limEvents, e), min(limBytes, b)
			case 5:
				if next()%4 == 0 {
					r.Reset()
				}
			}
			if r.Len() > limEvents || r.Bytes() > limBytes || int64(len(r.buf)) > max(limBytes, 0) || len(r.ents) > limEvents {
				t.Fatalf("bounds broken: %d events (max %d), %d bytes (max %d), storage %d, slots %d",
					r.Len(), limEvents, r.Bytes(), limBytes, len(r.buf), len(r.ents))
			}
			var sum int64
			for i := 0; i < r.n; i++ {
				e := r.entry(i)
				sum += int64(e.idLen + e.rawLen)
			}
			if sum != r.Bytes() {
				t.Fatalf("byte count %d, entries hold %d", r.Bytes(), sum)
			}
		}
	})
}
