package policy

import (
	"encoding/json"
	"strings"
)

// Effort is how much of its work the governance does, which the caller
// sets from its service level. The access rules hold at every Effort.
type Effort uint8

const (
	// EffortFull keeps every audit record and checks every tool
	// definition against its pin.
	EffortFull Effort = iota
	// EffortReduced keeps a sample of the audit records of successful
	// listing calls and pings (see Keep), and does not check again a tool
	// definition served byte for byte as it was last found pinned (see
	// Pins.CheckRaw).
	EffortReduced
	// EffortMinimal keeps only the audit records of denials, refusals and
	// errors; pins as EffortReduced.
	EffortMinimal
)

// AuditMode names what the audit trail keeps at e: "full", "sampled" or
// "denials_and_errors".
func (e Effort) AuditMode() string {
	switch e {
	case EffortReduced:
		return "sampled"
	case EffortMinimal:
		return "denials_and_errors"
	}
	return "full"
}

// PinMode names what the tool pin checks do at e: "full" or
// "changed_only".
func (e Effort) PinMode() string {
	if e.SkipUnchangedPins() {
		return "changed_only"
	}
	return "full"
}

// SkipUnchangedPins reports whether a tool definition served byte for
// byte as it was last found pinned is not checked again.
func (e Effort) SkipUnchangedPins() bool { return e >= EffortReduced }

// Keep reports whether the audit trail keeps rec at e: every record at
// EffortFull; a denial, refusal or error (a Decision other than "allow",
// a Status of 400 or more, or a Code) always; at EffortReduced, the
// records of pings and */list calls that s keeps, and every other; at
// EffortMinimal nothing else.
func (e Effort) Keep(rec *Record, s *Sampler) bool {
	failed := rec.Decision != "allow" || rec.Status >= 400 || rec.Code != 0
	switch {
	case failed || e == EffortFull:
		return true
	case e >= EffortMinimal:
		return false
	case rec.Method == "ping" || strings.HasSuffix(rec.Method, "/list"):
		return s.Keep()
	}
	return true
}

// ArgumentsOf returns the arguments of a tools/call or prompts/get message
// (params.arguments) for an audit record, as Redact returns them with
// pointers and maxBytes; nil when msg has none or does not decode.
func ArgumentsOf(msg []byte, pointers []string, maxBytes int) json.RawMessage {
	var m struct {
		Params struct {
			Arguments json.RawMessage `json:"arguments"`
		} `json:"params"`
	}
	if json.Unmarshal(msg, &m) != nil || m.Params.Arguments == nil {
		return nil
	}
	return Redact(m.Params.Arguments, pointers, maxBytes)
}
