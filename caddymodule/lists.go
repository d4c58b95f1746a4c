package caddymodule

import (
	"encoding/json"

	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/policy"
	"github.com/mcpgate/mcpgate/relay"
)

// lists is the handler's access policy as the relay applies it to
// answers (relay.Lists).
type lists struct{ h *Handler }

func (l lists) Filters() bool  { return l.h.gov.filters() }
func (l lists) Enforces() bool { return l.h.gov.enforces() }

func (l lists) Filter(method string, msg []byte, subj policy.Subject, upstream string, private bool) ([]byte, bool) {
	return l.h.filterList(method, msg, subj, upstream, private)
}

func (l lists) Freeze(s policy.Subject) policy.Subject {
	if l.h.gov == nil {
		return nil
	}
	return l.h.gov.policy.Snapshot(s)
}

var _ relay.Lists = lists{}

// filterList filters one JSON-RPC message answering a list request of
// method sent by subj to upstream, private when the result may not be
// cached beyond the caller; out is nil when nothing changed, ok false when
// the message could not be read (the caller answers an error rather than
// pass it unfiltered).
func (h *Handler) filterList(method string, msg []byte, subj policy.Subject, upstream string, private bool) (out []byte, ok bool) {
	g := h.gov
	kind, _ := policy.ListKind(method)
	rules := g.enforces()
	pins := g.pins != nil && kind == policy.KindTool
	skipPins := effortAt(h.app.global.Level()).SkipUnchangedPins()
	overQuota, firstOver := 0, ""
	keep := func(key string, item json.RawMessage) bool {
		if rules && !g.policy.Allows(subj, kind, key) {
			metrics.listFiltered.WithLabelValues("rule").Inc()
			return false
		}
		if pins {
			v := h.checkPin(upstream, key, item, skipPins)
			if v == policy.PinOverQuota {
				if overQuota == 0 {
					firstOver = key
				}
				overQuota++
			}
			if (v == policy.PinChanged || v == policy.PinOverQuota) && !g.pinWarn {
				metrics.listFiltered.WithLabelValues("pin").Inc()
				return false
			}
		}
		return true
	}
	out, _, err := policy.FilterList(method, msg, keep, private)
	if overQuota > 0 {
		h.logger.Warn("tools not pinned: no room for the upstream's pins", zap.String("upstream", upstream),
			zap.Int("tools", overQuota), zap.String("first_tool", firstOver), zap.Bool("listed", g.pinWarn))
	}
	if err != nil {
		metrics.listFiltered.WithLabelValues("error").Inc()
		h.logger.Warn("list result not readable; answered with an error", zap.String("method", method), zap.Error(err))
		return nil, false
	}
	return out, true
}

// checkPin checks a tool definition against its pin, counts the verdict
// and logs a changed tool. At reduced service levels, a definition whose
// bytes are those last found as pinned is not checked again. A changed
// tool, and a new one for which the pins have no room (PinOverQuota), are
// listed only with pin_tools warn.
func (h *Handler) checkPin(upstream, name string, item json.RawMessage, skip bool) policy.Verdict {
	g := h.gov
	v := g.pins.CheckRaw(&g.skips, upstream, name, item, skip)
	switch v {
	case policy.PinSkipped:
		metrics.pinned.WithLabelValues("skipped").Inc()
	case policy.PinNew:
		metrics.pinned.WithLabelValues("new").Inc()
	case policy.PinOverQuota:
		metrics.pinned.WithLabelValues("over_quota").Inc()
	case policy.PinChanged:
		metrics.pinned.WithLabelValues("changed").Inc()
		h.logger.Warn("tool definition changed since it was pinned", zap.String("upstream", upstream),
			zap.String("tool", name), zap.Bool("listed", g.pinWarn))
	}
	return v
}
