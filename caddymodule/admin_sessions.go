package caddymodule

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/resources"
)

// listSessions answers GET /mcp/sessions: the live sessions a page at a
// time, in the order of resources.Registry.Page.
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
	if cursor != "" && (len(cursor) != resources.SessionHashLen || !resources.ValidIDPrefix(cursor)) {
		return apiError(http.StatusBadRequest, "cursor %q: want the next value of a previous page", cursor)
	}
	return writeJSON(w, http.StatusOK, g.Sessions().Page(cursor, limit, time.Now()))
}

// showSessions answers GET /mcp/sessions/<id>.
func (a *AdminAPI) showSessions(w http.ResponseWriter, g *globalState, prefix string) error {
	found, page := g.Sessions().Matching(prefix, time.Now())
	if len(found) == 0 {
		return apiError(http.StatusNotFound, "no live session with id %s", prefix)
	}
	return writeJSON(w, http.StatusOK, page)
}

// evictSessions answers DELETE /mcp/sessions/<id>: every live session
// whose id starts with the prefix is evicted (its streams are closed, its
// memory released, its upstream session deleted, and its clients get 404
// and start anew).
func (a *AdminAPI) evictSessions(w http.ResponseWriter, g *globalState, prefix string) error {
	found, _ := g.Sessions().Matching(prefix, time.Now())
	evicted := 0
	for _, s := range found {
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
