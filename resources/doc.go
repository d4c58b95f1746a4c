// Package resources is mcpgate's resource manager: the process-wide memory
// Budget and each session's Account, the Registry of live MCP sessions with
// idle expiry, eviction and tombstones, task Groups that own every
// goroutine the proxy starts, and the pressure Monitors the load manager
// turns into service levels. Registry.Page and Matching are the admin
// views of the live sessions, which are shown under SessionID. Its List,
// of nodes the caller allocates, holds the wait and recency lists of
// admission and policy.
//
// Everything here is bounded and owned:
//
//   - Budget and Account hold only counters.
//   - Registry owns its sessions map (at most RegistryConfig.MaxSessions
//     entries), its client index (an entry per client key only while that
//     client has a live session or an Open in progress, so at most the live
//     sessions plus concurrent Opens; each entry lists its client's live
//     sessions, at most ClientMaxSessions when set), its tombstone map and
//     queue (at most MaxTombstones each, entries dropped after
//     TombstoneTTL), and each Session owns its stream list (at most
//     MaxStreams entries). The strings a session keeps (its SessionInfo)
//     are charged to its memory account. Scans allocate at most one slice
//     of the live sessions (Range; Page and Matching one more, of their
//     views) or of the n victims asked for (EvictVictims), freed when the
//     call returns.
//   - The package starts no goroutine of its own. Goroutines started with
//     Group.Go belong to that group, end when its context is done, and are
//     counted in the group and its ancestors; a session's group is closed
//     when the session leaves the registry.
//   - Monitors own at most a copy of one runtime histogram's counts.
//
// The package imports only the standard library; Caddy wiring lives in
// caddymodule.
package resources
