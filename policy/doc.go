// Package policy is mcpgate's MCP access policy, independent of Caddy:
// ordered allow/deny rules over JSON-RPC methods, tool names, prompt names
// and resource URIs with conditions on the caller (Policy, DecideAll for
// a request's messages), the answers denied messages get (UnknownErrors:
// the errors of unknown targets, a batch's denied members taken out with
// StripDenied and their errors added to the upstream's answer with
// SpliceAnswers), the filtering of list results down to what a caller may
// call (FilterList), the pinning of tool definitions to notice an upstream
// changing them (Pins, with PinSkips to leave unchanged bytes unchecked),
// the audit trail (Auditor: which records an Effort keeps, through an
// asynchronous record Writer, with the redaction of logged arguments,
// Redact and ArgumentsOf, and a Sampler); what of this work is
// done at a reduced service level (Effort); and request deadlines that
// progress moves (Deadline), with the table of a legacy session's requests
// whose answers are awaited on its stream (Awaiting).
//
// Everything here is bounded and owned:
//
//   - A Policy holds what its Compile prepared from its rules. Decide and
//     Allows allocate nothing of their own and take at most
//     O(len(pattern) × len(target)) steps per glob (no backtracking past
//     the last `*`).
//   - FilterList reads the message in one pass of a json.Decoder and
//     holds, for the duration of the call, the decoder's buffer (at most
//     the message), the names and offsets of the members and items it
//     reads, and the message it writes.
//   - Pins holds at most Max pins (10000 when unset) across all upstreams
//     and PerUpstream (a quarter of Max when unset) of one upstream, each
//     a fixed-size entry (hashes of the tool name and definition), with
//     one string per upstream holding pins. A new tool of an upstream at
//     its quota is not pinned (PinOverQuota); in a full table it takes
//     the least recently checked pin of the upstream holding the most,
//     only if that is another holding at least two more pins, else it is
//     not pinned: no upstream evicts its own pins or brings another's
//     below its own number.
//   - An Auditor owns its Writer, closed by Auditor.Close, which waits
//     for it at most the time it is given.
//   - A Writer owns a queue of at most its size records (1024 when unset)
//     and one goroutine, started by NewWriter and ended by Close, which
//     waits for it. Records that do not fit are dropped and counted.
//     CloseWait gives up on a write that blocks past its wait: it drops
//     the records still queued, and the goroutine ends when that write
//     returns, holding meanwhile the one record it writes. It is the
//     only goroutine the package starts (a Deadline's fire runs on the
//     goroutine of its timer).
//   - An Awaiting holds at most MaxAwaited requests, each with at most
//     one timer (its Deadline), stopped when its answer is taken, it is
//     forgotten or the table closed.
//   - PinSkips holds at most Max entries (10000 when unset), each a key of
//     upstream and tool name and two hashes; it forgets them all when full.
//   - Redact and ArgumentsOf decode one value for the duration of the
//     call; StripDenied and SpliceAnswers one batch; Sampler holds a
//     counter.
//
// The package imports the standard library, mcp (the JSON-RPC envelope
// and errors) and resources (the pins' recency list).
package policy
