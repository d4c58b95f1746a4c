package resources

import (
	"bytes"
	"cmp"
	"container/heap"
	"crypto/sha256"
	"encoding/hex"
	"math"
	"slices"
	"strings"
	"time"
)

// SessionIDLen is the length of a session's id: hex digits of the SHA-256
// of its registry key. The id is what a session is shown under (admin
// views, placeholders, events, audit records, logs); neither the client's
// token nor the upstream's session id is ever shown.
const SessionIDLen = 8

// SessionHashLen is the length of SessionHash: the hex digits of a
// SHA-256.
const SessionHashLen = 2 * sha256.Size

// SessionHash returns the hex SHA-256 of a session key: the order of
// Page, its cursor, and what an id prefix is matched against.
func SessionHash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// SessionID returns the id a session with the registry key is shown
// under: the first SessionIDLen hex digits of SessionHash.
func SessionID(key string) string { return SessionHash(key)[:SessionIDLen] }

// ValidIDPrefix reports whether p can select sessions by the prefix of
// their hash: SessionIDLen to SessionHashLen lower-case hex digits.
func ValidIDPrefix(p string) bool {
	if len(p) < SessionIDLen || len(p) > SessionHashLen {
		return false
	}
	_, err := hex.DecodeString(p + strings.Repeat("0", len(p)%2))
	return err == nil && strings.ToLower(p) == p
}

// Round3 rounds v to three decimals, as views show pressures and seconds.
func Round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// SessionView is one live session as the admin API shows it.
type SessionView struct {
	// ID is the session's id (SessionID).
	ID       string `json:"id"`
	Upstream string `json:"upstream"`
	Version  string `json:"protocol_version,omitempty"`
	// AgeSeconds is the time since the session was opened, IdleSeconds
	// the time since it was last active.
	AgeSeconds  float64 `json:"age_seconds"`
	IdleSeconds float64 `json:"idle_seconds"`
	// Bytes is the memory the session holds against its quota.
	Bytes      int64 `json:"bytes"`
	Quota      int64 `json:"bytes_quota"`
	Streams    int   `json:"streams"`
	InFlight   int   `json:"in_flight"`
	Goroutines int   `json:"goroutines"`

	hash string // full hex digest: the sort key and cursor
	key  string
}

// SessionPage is a page of SessionViews ordered by their sessions' hash.
type SessionPage struct {
	Sessions []SessionView `json:"sessions"`
	// Total is the number of sessions the page was chosen from: the live
	// sessions (Page) or those matching the prefix (Matching).
	Total int `json:"total"`
	// Next is the cursor of the next page; absent on the last page.
	Next string `json:"next,omitempty"`
}

// view makes the view of s, whose key hashes to hash, at now.
func (s *Session) view(hash string, now time.Time) SessionView {
	info := s.Info()
	acct := s.Account()
	return SessionView{
		ID:          hash[:SessionIDLen],
		Upstream:    info.Upstream,
		Version:     s.Version(),
		AgeSeconds:  Round3(max(now.Sub(s.Created()).Seconds(), 0)),
		IdleSeconds: Round3(max(now.Sub(s.LastActive()).Seconds(), 0)),
		Bytes:       acct.Used(),
		Quota:       acct.Quota(),
		Streams:     s.StreamCount(),
		InFlight:    s.InFlight(),
		Goroutines:  s.Goroutines(),
		hash:        hash,
		key:         info.Key,
	}
}

// Page returns at most limit live sessions (all of them when limit is 0
// or less) whose hash sorts after cursor ("" for the first page), in hash
// order, which stays put while sessions come and go: the cursor is the
// full hash of the last session of the previous page, so a session that
// appears or leaves between pages moves nothing. Next is set when more
// sessions follow.
//
// A page costs what its sessions cost: the sessions after the cursor are
// ranked by their digest in a heap of limit entries, and views are built
// for the page's sessions only.
func (r *Registry) Page(cursor string, limit int, now time.Time) SessionPage {
	out := SessionPage{Sessions: []SessionView{}}
	if limit <= 0 {
		limit = math.MaxInt
	}
	top := make(pageHeap, 0, min(limit, 1024))
	after := 0
	r.Range(func(s *Session) bool {
		out.Total++
		e := pageEntry{s: s}
		sum := sha256.Sum256([]byte(s.Key()))
		hex.Encode(e.hash[:], sum[:])
		if string(e.hash[:]) <= cursor {
			return true
		}
		after++
		switch {
		case len(top) < limit:
			heap.Push(&top, e)
		case e.before(&top[0]):
			top[0] = e
			heap.Fix(&top, 0)
		}
		return true
	})
	slices.SortFunc(top, func(x, y pageEntry) int {
		if x.before(&y) {
			return -1
		}
		return 1
	})
	for i := range top {
		out.Sessions = append(out.Sessions, top[i].s.view(string(top[i].hash[:]), now))
	}
	if after > limit {
		out.Next = out.Sessions[len(out.Sessions)-1].hash
	}
	return out
}

// pageEntry is a session ranked for a page by its hex digest.
type pageEntry struct {
	hash [SessionHashLen]byte
	s    *Session
}

// before reports whether e sorts before o: by hash, then key.
func (e *pageEntry) before(o *pageEntry) bool {
	if c := bytes.Compare(e.hash[:], o.hash[:]); c != 0 {
		return c < 0
	}
	return e.s.Key() < o.s.Key()
}

// pageHeap is a max-heap of page entries: its root is the last of those
// kept, the first to go when an earlier one comes.
type pageHeap []pageEntry

func (h pageHeap) Len() int           { return len(h) }
func (h pageHeap) Less(i, j int) bool { return h[j].before(&h[i]) }
func (h pageHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *pageHeap) Push(x any)        { *h = append(*h, x.(pageEntry)) }
func (h *pageHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// Matching returns the live sessions whose hash starts with prefix, and
// their views in hash order.
func (r *Registry) Matching(prefix string, now time.Time) ([]*Session, SessionPage) {
	var found []*Session
	var out SessionPage
	r.Range(func(s *Session) bool {
		if h := SessionHash(s.Key()); strings.HasPrefix(h, prefix) {
			found = append(found, s)
			out.Sessions = append(out.Sessions, s.view(h, now))
		}
		return true
	})
	out.Total = len(found)
	sortViews(out.Sessions)
	return found, out
}

// sortViews orders views by hash, then (for equal hashes) by key.
func sortViews(v []SessionView) {
	slices.SortFunc(v, func(x, y SessionView) int {
		return cmp.Or(cmp.Compare(x.hash, y.hash), cmp.Compare(x.key, y.key))
	})
}
