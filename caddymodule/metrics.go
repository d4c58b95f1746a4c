package caddymodule

import (
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/relay"
	"github.com/mcpgate/mcpgate/sse"
)

// The collectors are created once per process and registered into the
// registry of every config load, so counters keep counting across reloads
// and gauges stay right while streams of an old config drain. No label
// carries a session id or a client address.
var metrics = struct {
	requestsInFlight    prometheus.Gauge
	streamsActive       *gauge
	requestDuration     *prometheus.HistogramVec
	queueWait           prometheus.Histogram
	sessionsCreated     *counter
	sessionRefusals     *prometheus.CounterVec
	eventsRelayed       *counter
	bytesRelayed        *counter
	keepalives          *counter
	slowConsumers       *counter
	oversized           *counter
	replay              *counterVec
	streamsDrained      *counter
	cancelsSent         *counter
	sideSkipped         prometheus.Counter
	replayBytes         prometheus.GaugeFunc
	level               prometheus.Gauge
	levelChanges        *prometheus.CounterVec
	evictions           *prometheus.CounterVec
	backpressure        *counter
	protectiveResets    *counter
	evictDeletesSkipped prometheus.Counter
	sessionDuration     prometheus.Histogram
	sessionEvents       prometheus.Histogram
	sessionBytes        prometheus.Histogram
	panicsRecovered     *counter
	upstreamIDs         *prometheus.CounterVec
	upstreamFailures    *prometheus.CounterVec
	unanswered          prometheus.Counter
	strayAnswers        prometheus.Counter
	authRefusals        *prometheus.CounterVec
	denials             *counterVec
	listFiltered        *counterVec
	pinned              *counterVec
	deadlines           *counterVec
	responseTooLarge    prometheus.Counter
	audit               *counterVec
	reduced             *prometheus.GaugeVec
}{
	denials: newCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "denials_total",
		Help: "Messages the access rules denied, answered as unknown, by kind of target: tool, prompt, resource, method.",
	}, "kind"),
	listFiltered: newCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "list_items_filtered_total",
		Help: "Items removed from list results, by reason: rule (the caller may not use it), pin (a pinned tool whose definition changed, or a new tool the pins had no room for), error (a list result that could not be read, answered with an error).",
	}, "reason"),
	pinned: newCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "tool_pins_total",
		Help: "Tool definitions checked against their pins: new (pinned now), changed (dropped or warned), over_quota (new, not pinned: its upstream holds its quota of pins or the table is full; dropped or warned), skipped (an unchanged list not checked again at the degraded level).",
	}, "result"),
	deadlines: newCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "deadlines_total",
		Help: "Requests whose deadline (request_timeout, a tool's timeout) passed, by where they were: waiting (no answer yet) or streaming.",
	}, "state"),
	responseTooLarge: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "responses_too_large_total",
		Help: "Answers over max_response (or a list result over max_event_size) replaced by a JSON-RPC error.",
	}),
	audit: newCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "audit_records_total",
		Help: "Audit records by result: written, dropped (the queue was full), sampled_out (left out at the degraded or essential level).",
	}, "result"),
	reduced: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "governance_reduced",
		Help: "1 while the service level reduces a governance feature: audit (sampled at degraded, denials and errors only at essential), pin_checks (unchanged lists not checked at degraded).",
	}, []string{"feature"}),
	authRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "auth_refusals_total",
		Help: "Requests mcp_auth refused: missing (no bearer token, 401), invalid_token (401), insufficient_scope (403), temporarily_unavailable (429 or 503, introspection checks at their bound).",
	}, []string{"reason"}),
	unanswered: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "unanswered_streams_total",
		Help: "SSE answers whose upstream stream ended without the response, to which the proxy added a JSON-RPC error for the request; on a legacy stream, each call still awaiting its answer when the upstream's stream ended.",
	}),
	strayAnswers: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "stray_answers_total",
		Help: "Responses dropped from the SSE answer to a POST: a second one for a request, or one under an id the POST did not send.",
	}),
	upstreamFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "upstream_failures_total",
		Help: "Requests answered by the proxy because the upstream could not be reached or failed before answering: pinned_unreachable (503, the session lives on) or the status sent (502, 503, 504).",
	}, []string{"result"}),
	upstreamIDs: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "upstream_session_ids_total",
		Help: "Upstream session ids the proxy did not hand to clients: dropped (on an answer that starts no session) or unusable (an initialize answered with 502).",
	}, []string{"result"}),
	requestsInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "requests_in_flight",
		Help: "MCP requests being proxied, streams included.",
	}),
	streamsActive: newGauge(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "streams_active",
		Help: "SSE streams with a client attached.",
	}),
	requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "request_duration_seconds",
		Help:    "Time from admission to the end of the response, by method class.",
		Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"class"}),
	queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "queue_wait_seconds",
		Help:    "Time admitted requests waited in the admission queue.",
		Buckets: []float64{0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
	}),
	sessionsCreated: newCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "sessions_created_total",
		Help: "Upstream session ids sealed for clients.",
	}),
	sessionRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "session_errors_total",
		Help: "Requests answered by the proxy for a session problem: missing (400), not found (404), session table or legacy answers full (503), client full (429).",
	}, []string{"kind"}),
	eventsRelayed: newCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "events_relayed_total",
		Help: "SSE events read from upstreams.",
	}),
	bytesRelayed: newCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "relayed_bytes_total",
		Help: "Bytes of SSE events read from upstreams.",
	}),
	keepalives: newCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "keepalives_total",
		Help: "Keepalive comments sent on idle streams.",
	}),
	slowConsumers: newCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "slow_consumer_disconnects_total",
		Help: "Streams closed because their client did not keep up.",
	}),
	oversized: newCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "oversized_events_total",
		Help: "Upstream streams closed for an event over max_event_size.",
	}),
	replay: newCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "replay_requests_total",
		Help: "Resumptions with Last-Event-ID: hit (answered from the replay ring) or miss (passed upstream).",
	}, "result"),
	streamsDrained: newCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "streams_drained_total",
		Help: "Streams closed with a retry hint because their config was unloaded.",
	}),
	cancelsSent: newCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "upstream_cancellations_total",
		Help: "notifications/cancelled sent upstream for requests the proxy abandoned.",
	}),
	sideSkipped: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "side_requests_skipped_total",
		Help: "Requests of the proxy's own (notifications/cancelled, DELETE of an unusable upstream session) not sent because too many were in flight.",
	}),
	level: prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "service_level",
		Help: "Service level in force: 0 full, 1 degraded, 2 essential, 3 protective.",
	}),
	levelChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "service_level_changes_total",
		Help: "Service level changes, by the level entered.",
	}, []string{"level"}),
	evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "session_evictions_total",
		Help: "Sessions evicted, by cause.",
	}, []string{"cause"}),
	backpressure: newCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "backpressure_total",
		Help: "Memory reservations refused because a budget was full.",
	}),
	protectiveResets: newCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "protective_resets_total",
		Help: "Streams closed by the protective level, largest first.",
	}),
	evictDeletesSkipped: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "evicted_session_deletes_skipped_total",
		Help: "Evicted sessions not deleted upstream because too many deletes were in flight.",
	}),
	sessionDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "session_duration_seconds",
		Help:    "Lifetime of ended sessions (deleted by the client, expired idle or evicted), from when this process first saw them.",
		Buckets: sessionDurationBuckets,
	}),
	sessionEvents: prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "session_events",
		Help:    "SSE events relayed from upstreams per ended session.",
		Buckets: sessionEventsBuckets,
	}),
	sessionBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "session_bytes",
		Help:    "Bytes of SSE events relayed from upstreams per ended session.",
		Buckets: sessionBytesBuckets,
	}),
	panicsRecovered: newCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "panics_recovered_total",
		Help: "Panics recovered in goroutines the proxy owns; each is logged at ERROR with its stack.",
	}),
	replayBytes: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "mcp", Name: "replay_held_bytes",
		Help: "Bytes held in the replay rings of resumable streams.",
	}, func() float64 {
		if g := currentGlobal(); g != nil {
			return float64(g.Resume().Bytes())
		}
		return 0
	}),
}

// Buckets of the per-session histograms, which are observed once per
// session, when it leaves the session registry (see sessionEnded).
// Each bucket bound is four times the one before, so ten buckets span
// what one deployment sees, from a one-shot client to a day-long agent:
//
//   - caddy_mcp_session_duration_seconds: 0.25 s, 1 s, 4 s … 65536 s
//     (about 18 h). A client that initializes, calls a tool and deletes
//     its session lands in the first buckets; a session expired idle
//     lives at least the idle timeout (5 min by default).
//   - caddy_mcp_session_events: 1, 4, 16 … 262144 events; a session
//     that relayed no event counts in the first bucket.
//   - caddy_mcp_session_bytes: 1 KiB, 4 KiB, 16 KiB … 256 MiB.
var (
	sessionDurationBuckets = prometheus.ExponentialBuckets(0.25, 4, 10)
	sessionEventsBuckets   = prometheus.ExponentialBuckets(1, 4, 10)
	sessionBytesBuckets    = prometheus.ExponentialBuckets(1024, 4, 10)
)

// replayHits and replayMisses count resumptions answered from a replay
// ring and passed upstream, so the request path does not look labels up.
var (
	replayHits   = metrics.replay.WithLabelValues("hit")
	replayMisses = metrics.replay.WithLabelValues("miss")
)

// refusals exports the refusal counts the governor keeps, which every
// mcp_proxy counts into and /mcp/status shows (governor.RefusalsByReason),
// as caddy_mcp_refusals_total, by reason; connections refused by
// mcp_connections have the reason "connections".
var refusals = &refusalCollector{desc: prometheus.NewDesc("caddy_mcp_refusals_total",
	"Requests refused by admission control, by reason.", []string{"reason"}, nil)}

type refusalCollector struct{ desc *prometheus.Desc }

// Describe implements prometheus.Collector.
func (c *refusalCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *refusalCollector) Collect(ch chan<- prometheus.Metric) {
	g := currentGlobal()
	if g == nil {
		return
	}
	for reason, n := range g.RefusalsByReason() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), reason)
	}
}

// relayMetrics are the counts of every handler's relay.
var relayMetrics = &relay.Metrics{
	CancelSent:       metrics.cancelsSent.Inc,
	SideSkipped:      metrics.sideSkipped.Inc,
	ResponseTooLarge: metrics.responseTooLarge.Inc,
	Backpressure:     metrics.backpressure.Inc,
	ListUnreadable:   func() { metrics.listFiltered.WithLabelValues("error").Inc() },
	Unanswered:       metrics.unanswered.Inc,
	StrayAnswer:      metrics.strayAnswers.Inc,
	SessionCreated:   metrics.sessionsCreated.Inc,
	StreamOpened:     metrics.streamsActive.Inc,
	StreamClosed:     metrics.streamsActive.Dec,
	Deadline:         func(state string) { metrics.deadlines.WithLabelValues(state).Inc() },
	SessionRefused:   func(kind string) { metrics.sessionRefusals.WithLabelValues(kind).Inc() },
	UpstreamID:       func(result string) { metrics.upstreamIDs.WithLabelValues(result).Inc() },
}

// countEvent counts one relayed event of n bytes.
func countEvent(n int) {
	metrics.eventsRelayed.Inc()
	metrics.bytesRelayed.Add(uint64(n))
}

// streamHooks reports every stream's accounting to the metrics.
var streamHooks = &sse.Hooks{
	Event:     countEvent,
	Keepalive: metrics.keepalives.Inc,
	SlowConsumer: func() {
		metrics.slowConsumers.Inc()
		slowConsumerLog()
	},
	Oversized: metrics.oversized.Inc,
	Panic:     func(v any) { panicked(nil, "sse stream", v) },
}

// registerMetrics registers the collectors into the config's registry.
func registerMetrics(ctx caddy.Context) error {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{
		metrics.requestsInFlight, metrics.streamsActive, metrics.requestDuration,
		metrics.queueWait, refusals, metrics.sessionsCreated,
		metrics.sessionRefusals, metrics.eventsRelayed, metrics.bytesRelayed,
		metrics.keepalives, metrics.slowConsumers, metrics.oversized,
		metrics.replay, metrics.streamsDrained, metrics.cancelsSent, metrics.sideSkipped, metrics.replayBytes,
		connectionsActive, metrics.level, metrics.levelChanges, metrics.evictions,
		metrics.backpressure, metrics.protectiveResets, metrics.evictDeletesSkipped, globalGauges,
		sessionEnds, metrics.panicsRecovered, metrics.upstreamIDs, metrics.upstreamFailures, metrics.unanswered, metrics.strayAnswers, metrics.authRefusals,
		metrics.denials, metrics.listFiltered, metrics.pinned, metrics.deadlines, metrics.responseTooLarge,
		metrics.audit, metrics.reduced,
	} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// sessionEnds exports the three per-session histograms as one collector,
// so that every scrape sees each ended session in all three or in none.
var sessionEnds = &sessionEndCollector{hs: []prometheus.Histogram{metrics.sessionDuration, metrics.sessionEvents, metrics.sessionBytes}}

type sessionEndCollector struct {
	mu sync.RWMutex
	hs []prometheus.Histogram
}

// observe records one ended session.
func (c *sessionEndCollector) observe(seconds, events, bytes float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	metrics.sessionDuration.Observe(seconds)
	metrics.sessionEvents.Observe(events)
	metrics.sessionBytes.Observe(bytes)
}

// Describe implements prometheus.Collector.
func (c *sessionEndCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, h := range c.hs {
		h.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (c *sessionEndCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, h := range c.hs {
		h.Collect(ch)
	}
}

// globalGauges reports the process-wide state of the mcp app.
var globalGauges = newGlobalCollector()

// globalCollector exports gauges read from the process-wide state at
// scrape time.
type globalCollector struct {
	sessions, heldBytes, budget, goroutines, streamsOpen, pressure *prometheus.Desc
}

func newGlobalCollector() *globalCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("caddy_mcp_"+name, help, nil, nil)
	}
	return &globalCollector{
		sessions:    d("sessions_active", "Live sessions in the session registry."),
		heldBytes:   d("held_bytes", "Bytes held on behalf of clients, reserved from the memory budget."),
		budget:      d("memory_budget_bytes", "The memory budget (0: no limit)."),
		goroutines:  d("goroutines_owned", "Goroutines owned by the proxy's task groups (detached stream pumps, upstream cancellations)."),
		streamsOpen: d("streams_open", "Streams registered with live sessions."),
		pressure: prometheus.NewDesc("caddy_mcp_pressure", "Last sample of each pressure monitor, 0 to 1.",
			[]string{"monitor"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *globalCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.sessions
	ch <- c.heldBytes
	ch <- c.budget
	ch <- c.goroutines
	ch <- c.streamsOpen
	ch <- c.pressure
}

// Collect implements prometheus.Collector.
func (c *globalCollector) Collect(ch chan<- prometheus.Metric) {
	g := currentGlobal()
	if g == nil {
		return
	}
	st := g.Sessions().Stats()
	ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(st.Sessions))
	ch <- prometheus.MustNewConstMetric(c.heldBytes, prometheus.GaugeValue, float64(g.Memory().Used()))
	ch <- prometheus.MustNewConstMetric(c.budget, prometheus.GaugeValue, float64(g.Memory().Limit()))
	ch <- prometheus.MustNewConstMetric(c.goroutines, prometheus.GaugeValue, float64(g.Tasks().Count()))
	ch <- prometheus.MustNewConstMetric(c.streamsOpen, prometheus.GaugeValue, float64(st.Streams))
	for _, m := range g.LevelStatus().Monitors {
		ch <- prometheus.MustNewConstMetric(c.pressure, prometheus.GaugeValue, m.Pressure, m.Name)
	}
}

// slowConsumerLog logs a slow-consumer disconnect at WARN, at most once a
// second with the count since the previous line, so a herd of stalled
// clients does not flood the log.
var slowConsumerLog = func() func() {
	var mu sync.Mutex
	var last time.Time
	var since int
	return func() {
		mu.Lock()
		defer mu.Unlock()
		since++
		if now := time.Now(); now.Sub(last) >= time.Second {
			if g := currentGlobal(); g != nil {
				g.logger.Warn("slow consumers disconnected", zap.Int("count", since))
			}
			last, since = now, 0
		}
	}
}()

// recoverPanic recovers a panic of the goroutine it is deferred in, so one
// broken goroutine does not take the process and every session down: the
// panic is logged at ERROR with its stack and counted in
// caddy_mcp_panics_recovered_total. It must be deferred directly,
//
//	defer recoverPanic(logger, "refresh loop")
//
// where where names the goroutine in the log line. http.ErrAbortHandler,
// the panic reverse_proxy aborts a response with on purpose, is recovered
// without an ERROR line or a count. A nil logger logs to Caddy's default
// logger.
func recoverPanic(logger *zap.Logger, where string) {
	if v := recover(); v != nil {
		panicked(logger, where, v)
	}
}

// panicked logs and counts a panic value recovered by recoverPanic or by
// a task group's panic handler; it runs on the goroutine that panicked,
// so the stack it logs shows where the panic happened.
func panicked(logger *zap.Logger, where string, v any) {
	if logger == nil {
		logger = caddy.Log()
	}
	if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
		logger.Debug("response aborted", zap.String("where", where))
		return
	}
	metrics.panicsRecovered.Inc()
	logger.Error("panic recovered", zap.String("where", where), zap.Any("panic", v), zap.Stack("stack"))
}
