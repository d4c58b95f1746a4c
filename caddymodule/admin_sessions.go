package caddymodule

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/resources"
)

// adminSession is one session as GET /mcp/sessions shows it.
type adminSession struct {
	// ID is the first 8 hex digits of the SHA-256 of the session's key.
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

// adminSessionPage is the answer of GET /mcp/sessions.
type adminSessionPage struct {
	Sessions []adminSession `json:"sessions"`
	// Total is the number of live sessions when the page was made.
	Total int `json:"total"`
	// Next is the cursor of the next page; absent on the last page.
	Next string `json:"next,omitempty"`
}

// hashKey returns the hex SHA-256 of a session key.
func hashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// sessionID is the id under which a session is shown (the admin API,
// the {http.mcp.session} placeholder, events, audit records and logs):
// the first sessionIDLen hex digits of hashKey of its registry key.
func sessionID(key string) string { return hashKey(key)[:sessionIDLen] }

func validIDPrefix(p string) bool {
	if len(p) < sessionIDLen || len(p) > sha256.Size*2 {
		return false
	}
	_, err := hex.DecodeString(p + strings.Repeat("0", len(p)%2))
	return err == nil
}

// describe makes the admin view of a session at now.
func describe(s *resources.Session, hash string, now time.Time) adminSession {
	info := s.Info()
	acct := s.Account()
	return adminSession{
		ID:          hash[:sessionIDLen],
		Upstream:    info.Upstream,
		Version:     info.Version,
		AgeSeconds:  round3(max(now.Sub(s.Created()).Seconds(), 0)),
		IdleSeconds: round3(max(now.Sub(s.LastActive()).Seconds(), 0)),
		Bytes:       acct.Used(),
		Quota:       acct.Quota(),
		Streams:     s.StreamCount(),
		InFlight:    s.InFlight(),
		Goroutines:  s.Goroutines(),
		hash:        hash,
		key:         info.Key,
	}
}

// listSessions answers GET /mcp/sessions: the live sessions ordered by
// their hash, which stays put while sessions come and go, a page at a
// time. The cursor is the full hash of the last session of the previous
// page, so a session that appears or leaves between pages moves nothing.
func (a *AdminAPI) listSessions(w http.ResponseWriter, r *http.Request, g *globalState) error {
	q := r.URL.Query()
	limit := adminDefaultPage
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return apiError(http.StatusBadRequest, "limit %q: want a positive count", s)
		}
		limit = min(n, adminMaxPage)
	}
	cursor := strings.ToLower(q.Get("cursor"))
	if cursor != "" && (len(cursor) != sha256.Size*2 || !validIDPrefix(cursor)) {
		return apiError(http.StatusBadRequest, "cursor %q: want the next value of a previous page", cursor)
	}
	now := time.Now()
	total := 0
	var page []adminSession
	g.Sessions().Range(func(s *resources.Session) bool {
		total++
		h := hashKey(s.Key())
		if h > cursor {
			page = append(page, describe(s, h, now))
		}
		return true
	})
	slices.SortFunc(page, func(x, y adminSession) int {
		return cmp.Or(cmp.Compare(x.hash, y.hash), cmp.Compare(x.key, y.key))
	})
	out := adminSessionPage{Sessions: []adminSession{}, Total: total}
	if len(page) > limit {
		page = page[:limit]
		out.Next = page[limit-1].hash
	}
	if page != nil {
		out.Sessions = page
	}
	return writeJSON(w, http.StatusOK, out)
}

// matching returns the live sessions whose hash starts with prefix.
func matching(g *globalState, prefix string) []*resources.Session {
	var out []*resources.Session
	g.Sessions().Range(func(s *resources.Session) bool {
		if strings.HasPrefix(hashKey(s.Key()), prefix) {
			out = append(out, s)
		}
		return true
	})
	return out
}

// showSessions answers GET /mcp/sessions/<id>.
func (a *AdminAPI) showSessions(w http.ResponseWriter, g *globalState, prefix string) error {
	now := time.Now()
	found := matching(g, prefix)
	if len(found) == 0 {
		return apiError(http.StatusNotFound, "no live session with id %s", prefix)
	}
	out := adminSessionPage{Total: len(found)}
	for _, s := range found {
		out.Sessions = append(out.Sessions, describe(s, hashKey(s.Key()), now))
	}
	slices.SortFunc(out.Sessions, func(x, y adminSession) int { return cmp.Compare(x.hash, y.hash) })
	return writeJSON(w, http.StatusOK, out)
}

// evictSessions answers DELETE /mcp/sessions/<id>: every live session
// whose id starts with the prefix is evicted (its streams are closed, its
// memory released, its upstream session deleted, and its clients get 404
// and start anew).
func (a *AdminAPI) evictSessions(w http.ResponseWriter, g *globalState, prefix string) error {
	evicted := 0
	for _, s := range matching(g, prefix) {
		if g.Sessions().Remove(s.Key(), resources.CauseOperator) {
			evicted++
		}
	}
	if evicted == 0 {
		return apiError(http.StatusNotFound, "no live session with id %s", prefix)
	}
	a.logger.Info("sessions evicted by operator", zap.String("id", prefix), zap.Int("count", evicted))
	return writeJSON(w, http.StatusOK, map[string]any{"evicted": evicted, "id": prefix})
}
