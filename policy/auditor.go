package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/mcpgate/mcpgate/mcp"
)

// Defaults of an Auditor.
const (
	// DefaultAuditQueue is the records an Auditor queues for writing.
	DefaultAuditQueue = 4096
	// DefaultMaxArguments caps the arguments in one record, in bytes.
	DefaultMaxArguments = 4 << 10
	// DefaultDegradedSample keeps one in this many records of successful
	// listing calls and pings at EffortReduced.
	DefaultDegradedSample = 10
)

// AuditSettings configure an Auditor; a zero field takes its default.
type AuditSettings struct {
	QueueSize       int      // records waiting to be written (DefaultAuditQueue)
	Arguments       bool     // log the arguments of tools/call and prompts/get
	Redact          []string // RFC 6901 pointers into the arguments to hide
	MaxArgumentSize int      // bytes of arguments in one record (DefaultMaxArguments)
	DegradedSample  int      // one in this many listing records at EffortReduced (DefaultDegradedSample)
}

// AuditResult is what an Auditor did with a record.
type AuditResult uint8

const (
	// AuditWritten: the record was queued for writing.
	AuditWritten AuditResult = iota
	// AuditDropped: the queue was full or the Auditor closed.
	AuditDropped
	// AuditSampledOut: the Effort left the record out.
	AuditSampledOut
)

// String names the result as the metrics do: written, dropped,
// sampled_out.
func (r AuditResult) String() string {
	switch r {
	case AuditDropped:
		return "dropped"
	case AuditSampledOut:
		return "sampled_out"
	}
	return "written"
}

// Auditor is one handler's audit trail: it decides, at the Effort the
// caller gives, which records are kept, adds the redacted arguments where
// configured, and hands the records to a Writer. It owns the Writer's
// goroutine until Close.
type Auditor struct {
	settings AuditSettings
	writer   *Writer
	sampler  *Sampler
}

// NewAuditor starts an Auditor that writes each kept record with write
// (see Writer for what write may do). It refuses a Redact entry that is
// not a JSON pointer.
func NewAuditor(s AuditSettings, write func(*Record)) (*Auditor, error) {
	for _, p := range s.Redact {
		if err := ValidPointer(p); err != nil {
			return nil, fmt.Errorf("redact %q: %w", p, err)
		}
	}
	s.QueueSize = orDefault(s.QueueSize, DefaultAuditQueue)
	s.MaxArgumentSize = orDefault(s.MaxArgumentSize, DefaultMaxArguments)
	s.DegradedSample = orDefault(s.DegradedSample, DefaultDegradedSample)
	return &Auditor{settings: s, writer: NewWriter(s.QueueSize, write), sampler: NewSampler(s.DegradedSample)}, nil
}

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// Settings returns the settings in force, defaults applied.
func (a *Auditor) Settings() AuditSettings { return a.settings }

// Audit keeps or leaves out rec at effort (Effort.Keep) and queues a kept
// one, adding the arguments of msg, the request's only message, to a
// tools/call or prompts/get record when the settings ask for them (msg nil:
// none, as for a batch or a body longer than the peek). It never blocks.
func (a *Auditor) Audit(rec *Record, effort Effort, msg []byte) AuditResult {
	if !effort.Keep(rec, a.sampler) {
		return AuditSampledOut
	}
	rec.Method, rec.Kind, rec.Target = capField(rec.Method), capField(rec.Kind), capField(rec.Target)
	rec.Principal, rec.Client = capField(rec.Principal), capField(rec.Client)
	if a.settings.Arguments && msg != nil && (rec.Method == "tools/call" || rec.Method == "prompts/get") {
		rec.Arguments = ArgumentsOf(msg, a.settings.Redact, a.settings.MaxArgumentSize)
	}
	if a.writer.Log(rec) {
		return AuditWritten
	}
	return AuditDropped
}

// SetTarget sets the record's method and, for a message with a target
// (a tool, prompt or resource), its kind and target, as m names them.
func (r *Record) SetTarget(m *mcp.Envelope) {
	r.Method, r.Kind, r.Target = m.Method, "", ""
	if kind, target := MessageTarget(m); kind != KindMethod {
		r.Kind, r.Target = kind.String(), target
	}
}

// AuditBatch audits a record for each request and notification of a
// batch's msgs (as the client sent them), denied ones included: its
// method, target and decision (a denied message's own, with the rule that
// denied it, from denied; the others base's, without a rule), the rest
// (status, bytes, duration) base's, the batch's as a whole, and its place
// in the batch. Each is kept or left out at effort on its own; counted, if
// not nil, is given each one's result.
func (a *Auditor) AuditBatch(base *Record, msgs []mcp.Envelope, denied []Denial, effort Effort, counted func(AuditResult)) {
	for i := range msgs {
		m := &msgs[i]
		if m.Kind == mcp.KindResponse {
			continue
		}
		rec := *base
		rec.SetTarget(m)
		rec.Rule = ""
		if rec.Decision == "deny" {
			rec.Decision = "allow" // unless denied below
		}
		for _, d := range denied {
			if d.Index == i {
				rec.Decision, rec.Rule = "deny", d.Rule
				break
			}
		}
		rec.BatchIndex, rec.BatchSize = i+1, len(msgs)
		res := a.Audit(&rec, effort, nil)
		if counted != nil {
			counted(res)
		}
	}
}

// MaxRecordField bounds each text field of a Record that a client
// chooses (method, target, principal, client): a longer one is cut and
// ends in its length and a hash of the whole, so records stay small and
// values that differ after the cut still differ.
const MaxRecordField = 256

// capField returns s within MaxRecordField bytes (see there), cut at a
// UTF-8 character boundary.
func capField(s string) string {
	if len(s) <= MaxRecordField {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	tail := "…(" + strconv.Itoa(len(s)) + " bytes, sha256:" + hex.EncodeToString(sum[:8]) + ")"
	cut := MaxRecordField - len(tail)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + tail
}

// Dropped returns how many records were dropped because the queue was
// full or the Auditor closed.
func (a *Auditor) Dropped() uint64 { return a.writer.Dropped() }

// Close stops taking records and waits at most wait for those queued to
// be written; it reports whether they were. Past wait (a stuck log sink)
// the records still queued are dropped and counted, and the one being
// written is left to its write (see Writer.CloseWait), so a caller's
// shutdown is not held by the sink. A nil Auditor is closed.
func (a *Auditor) Close(wait time.Duration) bool {
	if a == nil {
		return true
	}
	return a.writer.CloseWait(wait)
}
