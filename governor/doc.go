// Package governor owns the process-wide state that every MCP proxy of a
// process shares, and the loop that keeps it within its bounds.
//
// A Governor holds the process's limiters (requests in flight, SSE GET
// streams, client connections), its memory budget, the registry of live
// sessions, the load manager that turns pressure monitors into a service
// level, the set of every open client stream, the registry of resumable
// streams, the refusal counts, the task group that owns every goroutine
// outliving a request, and a bounded queue of evicted sessions to delete
// upstream. Its refresh loop samples the monitors, applies the level's
// actions (a shorter session idle timeout and smaller replay rings at the
// degraded level and above, resets of the largest streams at the
// protective level), expires idle sessions and sweeps the resumable
// streams. Settings are applied in one call (Apply), so a config reload
// changes the limits without losing sessions, budgets or counts. Status
// is the snapshot the admin API's /mcp/status serves.
//
// The package imports only the standard library and mcpgate's own
// resources, admission, sse and mcp packages: metrics, logging, panic
// reporting and the request that deletes a session upstream are the
// caller's, passed in as Hooks.
//
// Everything here is bounded and owned:
//
//   - The session registry, the resumable-stream registry and the set of
//     open streams keep the bounds their packages document: at most
//     Settings.MaxSessions sessions; at most 100000 sessions of 16
//     resumable streams each; one entry per open client attachment.
//   - The delete queue holds at most 8192 evicted sessions; an eviction
//     that finds it full is reported (Hooks.DeleteSkipped) and dropped,
//     and the upstream expires that session itself.
//   - The Governor starts nine goroutines of its own in New: the refresh
//     loop and eight delete workers. Close ends them and waits for them.
//   - Every other goroutine the proxy starts belongs to the task group
//     (Tasks) or a session's child of it; Close closes the group, which
//     cancels their context.
//   - A protective level resets at most 50 streams per refresh.
package governor
