package caddymodule

import (
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/governor"
	"github.com/mcpgate/mcpgate/policy"
	"github.com/mcpgate/mcpgate/resources"
)

// AuditConfig configures mcp_proxy's audit trail: one structured record
// per MCP request on the logger http.handlers.mcp_proxy.audit (route it
// with Caddy's `log` options: `include`, `exclude`, its own output).
// Records are written by a goroutine of their own through a bounded
// queue: when the log sink cannot keep up, records are dropped and
// counted, and requests never wait for it.
type AuditConfig struct {
	// QueueSize bounds the records waiting to be written. Default: 4096.
	QueueSize int `json:"queue_size,omitempty"`

	// Arguments adds the arguments of each tools/call and prompts/get
	// (params.arguments) to its record, with Redact applied. A body
	// longer than max_peek has no arguments in its record. Default:
	// false.
	Arguments bool `json:"arguments,omitempty"`

	// Redact lists JSON pointers (RFC 6901) into the arguments whose
	// values are replaced by "REDACTED", e.g. "/password". Default:
	// none.
	Redact []string `json:"redact,omitempty"`

	// MaxArgumentSize caps the arguments in one record; larger ones are
	// replaced by a note of their size. Default: 4KiB.
	MaxArgumentSize int `json:"max_argument_size,omitempty"`

	// DegradedSample keeps one in this many records of successful
	// listing calls (*/list) and pings at the degraded level. At the
	// essential level and above only denials, refusals and errors are
	// recorded. Default: 10.
	DegradedSample int `json:"degraded_sample,omitempty"`
}

// auditor is a handler's audit trail: the policy's Auditor writing to
// the audit logger.
type auditor struct {
	*policy.Auditor
	logger *zap.Logger // the audit trail
	warn   *zap.Logger // the handler's, for the auditor's own troubles
}

// Names of the audit trail's logger and of its records' log message.
const (
	auditLoggerName        = "audit"
	auditRecordDescription = "mcp request"
)

// provisionAudit starts the handler's audit writer.
func (h *Handler) provisionAudit(ctx caddy.Context) error {
	if h.Audit == nil {
		return nil
	}
	a := &auditor{logger: ctx.Logger().Named(auditLoggerName), warn: ctx.Logger()}
	var err error
	a.Auditor, err = policy.NewAuditor(policy.AuditSettings(*h.Audit), a.write)
	if err != nil {
		return fmt.Errorf("audit %w", err)
	}
	h.auditor = a
	return nil
}

// auditCloseWait bounds how long a config's cleanup waits for its audit
// records to be written.
const auditCloseWait = 2 * time.Second

// close stops the audit trail once what is queued is written, waiting at
// most auditCloseWait: a log sink that blocks must not block a reload.
// Past that wait the records still queued are dropped; the writer is left
// in its one write and ends when the sink takes it.
func (a *auditor) close() {
	if a != nil && !a.Close(auditCloseWait) {
		a.warn.Warn("audit log sink blocked; records still queued were dropped", zap.Uint64("dropped", a.Dropped()))
	}
}

// write writes one record to the audit logger.
func (a *auditor) write(rec *policy.Record) {
	if ce := a.logger.Check(zap.InfoLevel, auditRecordDescription); ce != nil {
		ce.Write(zap.Inline(auditEntry{rec}))
	}
}

// auditEntry writes a record's fields into its log entry, without a
// zap.Field for each.
type auditEntry struct{ rec *policy.Record }

// MarshalLogObject implements zapcore.ObjectMarshaler.
func (e auditEntry) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	rec := e.rec
	enc.AddTime("time", rec.Time)
	enc.AddString("principal", rec.Principal)
	enc.AddString("session", rec.Session)
	enc.AddString("client", rec.Client)
	enc.AddString("method", rec.Method)
	enc.AddString("decision", rec.Decision)
	enc.AddInt("status", rec.Status)
	enc.AddDuration("duration", rec.Duration)
	enc.AddString("upstream", rec.Upstream)
	enc.AddInt64("bytes_in", rec.BytesIn)
	enc.AddInt64("bytes_out", rec.BytesOut)
	if rec.Kind != "" {
		enc.AddString(rec.Kind, rec.Target)
	}
	if rec.Rule != "" {
		enc.AddString("rule", rec.Rule)
	}
	if rec.Code != 0 {
		enc.AddInt("error_code", rec.Code)
	}
	if rec.BatchSize > 0 {
		enc.AddInt("batch_index", rec.BatchIndex)
		enc.AddInt("batch_size", rec.BatchSize)
	}
	if rec.Arguments != nil {
		return enc.AddReflected("arguments", rec.Arguments)
	}
	return nil
}

// effortAt is the governance's effort at a service level: full at full,
// reduced at degraded, minimal at essential and above.
func effortAt(level admission.Level) policy.Effort {
	switch {
	case level >= admission.LevelEssential:
		return policy.EffortMinimal
	case level == admission.LevelDegraded:
		return policy.EffortReduced
	}
	return policy.EffortFull
}

// countingWriter counts the bytes written to the client through the
// handler, for the audit record.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the writer beneath.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// audit queues the request's record, when the handler audits.
func (h *Handler) audit(x *exchange, out *countingWriter) {
	a := h.auditor
	if a == nil {
		return
	}
	first := x.call.First()
	rec := policy.Record{
		Time: x.start, Principal: x.principal, Client: x.clientKey, Method: x.r.Method,
		Decision: x.decision, Rule: x.rule, Status: x.status, Code: x.code,
		Duration: time.Since(x.start), BytesIn: x.r.ContentLength,
	}
	if rec.Client == "" {
		rec.Client, _ = caddyhttp.GetVar(x.r.Context(), caddyhttp.ClientIPVarKey).(string)
	}
	if first.Method != "" {
		rec.SetTarget(first)
	}
	if x.res.Session != nil {
		rec.Session = resources.SessionID(x.res.Key)
	}
	if x.st != nil {
		rec.Upstream = x.st.UpstreamAddr()
	}
	if x.body.Whole != nil {
		rec.BytesIn = int64(len(x.body.Whole))
	}
	if out != nil {
		rec.BytesOut = out.n
	}
	level := x.level
	if x.release == nil {
		level = h.app.global.Level()
	}
	if x.call.Peek.Batch {
		msgs := x.batch
		if msgs == nil {
			msgs = x.call.Peek.Messages
		}
		a.AuditBatch(&rec, msgs, x.denied, effortAt(level), countAudit)
		return
	}
	countAudit(a.Audit(&rec, effortAt(level), x.body.Whole))
}

// countAudit counts an audit record's result.
func countAudit(res policy.AuditResult) { metrics.audit.WithLabelValues(res.String()).Inc() }

// governanceStatus is the governance part of /mcp/status.
func governanceStatus(level admission.Level) governor.GovernanceView {
	vec := (*counterVec).Value
	return governor.GovernanceView{
		Rules: "enforced", Audit: effortAt(level).AuditMode(), PinChecks: effortAt(level).PinMode(),
		Counters: map[string]float64{
			"audit_written":     vec(metrics.audit, "written"),
			"audit_dropped":     vec(metrics.audit, "dropped"),
			"audit_sampled_out": vec(metrics.audit, "sampled_out"),
			"denied_tool":       vec(metrics.denials, "tool"),
			"denied_prompt":     vec(metrics.denials, "prompt"),
			"denied_resource":   vec(metrics.denials, "resource"),
			"denied_method":     vec(metrics.denials, "method"),
			"list_items_hidden": vec(metrics.listFiltered, "rule"),
			"pins_changed":      vec(metrics.pinned, "changed"),
			"deadlines_passed":  vec(metrics.deadlines, "waiting") + vec(metrics.deadlines, "streaming"),
		},
	}
}

// noteGovernanceLevel sets the governance_reduced gauges for a level.
func noteGovernanceLevel(level admission.Level) {
	audit, pins := 0.0, 0.0
	if effortAt(level) != policy.EffortFull {
		audit, pins = 1, 1
	}
	metrics.reduced.WithLabelValues("audit").Set(audit)
	metrics.reduced.WithLabelValues("pin_checks").Set(pins)
}

func init() { noteGovernanceLevel(admission.LevelFull) }
