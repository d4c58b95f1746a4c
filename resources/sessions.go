package resources

import (
	"errors"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

// ErrFull is returned by Registry.Open when the registry holds MaxSessions
// sessions and none of them may be evicted to make room.
var ErrFull = errors.New("resources: session registry full")

// ErrExists is returned by Registry.Open when a live session already has
// the key.
var ErrExists = errors.New("resources: session key already in use")

// ErrClientFull is returned by Registry.Open when the client named by
// SessionInfo.ClientKey already holds ClientMaxSessions live sessions and
// none of them may be evicted to make room.
var ErrClientFull = errors.New("resources: too many sessions for client")

// ErrInfoTooLarge is returned by Registry.Open when the strings of the
// SessionInfo take more bytes than the session memory quota.
var ErrInfoTooLarge = errors.New("resources: session info larger than the session memory quota")

// ErrNoMemory is returned by Registry.Open when the parent memory budget
// (RegistryConfig.Memory) has no room for the bytes of the SessionInfo.
var ErrNoMemory = errors.New("resources: no memory for session info")

// ErrEvicted is the reason given to the stream closers of a session that
// was evicted (idle, capacity, service level or operator).
var ErrEvicted = errors.New("resources: session evicted")

// ErrDeleted is the reason given to the stream closers of a session that
// was removed with CauseDeleted (the client ended it).
var ErrDeleted = errors.New("resources: session deleted")

// ErrStreamLimit is the reason given to the closer of a stream that
// Session.AddStream refused because the session already holds
// RegistryConfig.MaxStreams open streams.
var ErrStreamLimit = errors.New("resources: too many streams in session")

// Cause says why a session left the registry.
type Cause uint8

// The causes. All but CauseDeleted are evictions: they leave a tombstone
// and call RegistryConfig.OnEvict.
const (
	// CauseIdle: no request and no stream for the idle timeout (Sweep).
	CauseIdle Cause = iota
	// CauseCapacity: evicted to make room under MaxSessions or under the
	// client's ClientMaxSessions.
	CauseCapacity
	// CauseLevel: evicted by a service-level action under overload.
	CauseLevel
	// CauseOperator: evicted through the admin API.
	CauseOperator
	// CauseDeleted: ended by the client (HTTP DELETE); a removal, not an
	// eviction.
	CauseDeleted

	// NumCauses is the number of causes, for arrays indexed by Cause.
	NumCauses = int(CauseDeleted) + 1
)

// String returns the cause's lowercase name, suitable as a metric label.
func (c Cause) String() string {
	switch c {
	case CauseIdle:
		return "idle"
	case CauseCapacity:
		return "capacity"
	case CauseLevel:
		return "level"
	case CauseOperator:
		return "operator"
	case CauseDeleted:
		return "deleted"
	default:
		return "unknown"
	}
}

// Registry defaults, used for zero RegistryConfig fields.
const (
	// DefaultIdleTimeout is the default RegistryConfig.IdleTimeout.
	DefaultIdleTimeout = 5 * time.Minute
	// DefaultSessionMemory is the default per-session quota in bytes (1 MiB).
	DefaultSessionMemory = 1 << 20
	// DefaultTombstoneTTL is the default RegistryConfig.TombstoneTTL.
	DefaultTombstoneTTL = 24 * time.Hour
	// DefaultMaxTombstones is the default RegistryConfig.MaxTombstones.
	DefaultMaxTombstones = 100000
	// DefaultMaxStreams is the default RegistryConfig.MaxStreams.
	DefaultMaxStreams = 32
)

// RegistryConfig configures a Registry. The zero value is usable.
type RegistryConfig struct {
	// MaxSessions is the most live sessions the registry holds; Open
	// evicts to stay within it. Zero or less: unlimited.
	MaxSessions int
	// ClientMaxSessions is the most live sessions one client (sessions
	// opened with the same non-empty SessionInfo.ClientKey) may hold; Open
	// evicts that client's own sessions to stay within it. Sessions with
	// an empty ClientKey are not counted. Zero or less: unlimited.
	ClientMaxSessions int
	// IdleTimeout is how long a session with no request in flight and no
	// open stream lives after its last activity. Zero or less: 5 minutes.
	IdleTimeout time.Duration
	// SessionMemory is each session's own memory quota in bytes. Zero: 1
	// MiB. Less than zero: no per-session quota.
	SessionMemory int64
	// Memory is the parent budget every session's account reserves from.
	// Nil: sessions are bounded by their own quota only.
	Memory *Budget
	// TombstoneTTL is how long the key of an evicted session keeps
	// answering WasEvicted. Zero or less: 24 hours.
	TombstoneTTL time.Duration
	// MaxTombstones is the most tombstones kept; the oldest is dropped
	// first. Zero or less: 100000.
	MaxTombstones int
	// MaxStreams is the most open streams one session may register with
	// AddStream. Zero or less: 32.
	MaxStreams int
	// Tasks is the parent of every session's task group. Nil: session
	// groups are roots.
	Tasks *Group
	// OnEvict, when set, is called once for every evicted session (every
	// cause except CauseDeleted), after its streams are closed and its
	// memory is released, outside the registry's locks and on the
	// goroutine that caused the eviction. It is where the caller ends the
	// upstream session. It must not block for long: Open, Sweep and
	// EvictVictims call it inline.
	OnEvict func(s *Session, cause Cause)
	// OnEnd, when set, is called once for every session that leaves the
	// registry, whatever the cause (CauseDeleted included), with the time
	// it left. It runs after the session's streams are closed and its
	// memory is released, before OnEvict, outside the registry's locks
	// and on the goroutine that removed the session; it must be quick.
	// It is where the caller observes a session's lifetime figures
	// (Created, Relayed).
	OnEnd func(s *Session, cause Cause, at time.Time)
	// Clock returns the current time for Begin, stream activity and
	// tombstone ages. It is called with a registry lock held, so it must
	// be quick and must not call into the registry. Nil: time.Now. Tests
	// inject a fake clock here.
	Clock func() time.Time
}

// SessionInfo describes a session to the registry.
//
// The session keeps its info for its whole life, and much of it comes
// from the client or the upstream, so Open charges the bytes of its
// strings (Size) to the new session's memory account: they count against
// the session quota and the parent budget like any byte a stream holds,
// and are given back when the session leaves. Open refuses info that does
// not fit the quota (ErrInfoTooLarge) or the parent budget (ErrNoMemory).
type SessionInfo struct {
	// Key is the opaque, unique key the caller chose for the session.
	Key string
	// Upstream is the upstream address the session is pinned to.
	Upstream string
	// Version is the MCP protocol version the session was opened at; the
	// one its client and server agreed on may be older (see
	// Session.Version).
	Version string
	// UpstreamID is the upstream's own session id, and Endpoint and Host
	// the URL and Host header the upstream serves the session on; with
	// them the owner can end the session upstream when it is evicted.
	UpstreamID, Endpoint, Host string
	// ClientKey identifies the client that opened the session (its IP
	// address or principal, say), for the per-client count and cap
	// (RegistryConfig.ClientMaxSessions). Empty: unknown; the session is
	// then not counted for any client.
	ClientKey string
}

// Size returns the bytes of the strings info holds: what Registry.Open
// charges to the session's memory account.
func (info SessionInfo) Size() int64 {
	return int64(len(info.Key)) + int64(len(info.Upstream)) + int64(len(info.Version)) +
		int64(len(info.UpstreamID)) + int64(len(info.Endpoint)) + int64(len(info.Host)) +
		int64(len(info.ClientKey))
}

// session states.
const (
	stateLive uint32 = iota
	stateEvicted
)

// streamEntry is one open stream of a session.
type streamEntry struct {
	id    uint64
	close func(reason error)
}

// Session is one live MCP session known to this process: its memory
// account, task group, open streams and activity. Its methods are safe for
// concurrent use.
type Session struct {
	reg     *Registry
	info    SessionInfo
	account *Account
	group   *Group
	created time.Time
	endFn   func() // returned by Begin; built once so Begin does not allocate
	quietFn func() // returned by BeginQuiet; built once likewise

	// clientIdx is the session's index in its client's list; guarded by
	// the client shard's mutex. Unused when info.ClientKey is empty.
	clientIdx int

	lastActive atomic.Int64 // unix nanoseconds
	inFlight   atomic.Int64
	nstreams   atomic.Int64 // mirrors len(streams) for lock-free reads
	state      atomic.Uint32
	deleted    atomic.Bool // set before closed when removed with CauseDeleted
	forgotten  atomic.Bool // set when evicted without a tombstone (SetForgetEvicted)

	// events and bytes relayed on the session's streams, for its
	// lifetime figures; written on every relayed event, so lock-free.
	relayedEvents atomic.Int64
	relayedBytes  atomic.Int64

	// version is the protocol version the session's client last named,
	// nil until it names one (see SetVersion).
	version atomic.Pointer[string]

	mu      sync.Mutex
	closed  bool          // guarded by mu; set when the streams are taken for eviction
	nextID  uint64        // guarded by mu
	streams []streamEntry // guarded by mu; at most MaxStreams entries
	inline  [4]streamEntry
}

// Key returns the session's key.
func (s *Session) Key() string { return s.info.Key }

// Info returns what the session was opened with.
func (s *Session) Info() SessionInfo { return s.info }

// Account returns the session's memory account. It is closed when the
// session leaves the registry.
func (s *Session) Account() *Account { return s.account }

// Group returns the session's task group. It is closed when the session
// leaves the registry.
func (s *Session) Group() *Group { return s.group }

// Created returns when the session was opened.
func (s *Session) Created() time.Time { return s.created }

// Version returns the MCP protocol version of the session's requests: the
// one its client last named (SetVersion), which is the version its server
// agreed on, else the one it was opened at.
func (s *Session) Version() string {
	if v := s.version.Load(); v != nil {
		return *v
	}
	return s.info.Version
}

// SetVersion records v, the MCP-Protocol-Version a request of the session
// named, as the session's version: a server may agree on an older version
// than its client offered, and then refuses requests, its session's
// DELETE among them, that name the newer one.
func (s *Session) SetVersion(v string) {
	if v == "" || v == s.Version() {
		return
	}
	s.version.Store(&v)
}

// LastActive returns the last time the session was touched.
func (s *Session) LastActive() time.Time { return time.Unix(0, s.lastActive.Load()) }

// Touch records activity at now. The last-active time never moves
// backwards.
func (s *Session) Touch(now time.Time) {
	t := now.UnixNano()
	for {
		old := s.lastActive.Load()
		if t <= old || s.lastActive.CompareAndSwap(old, t) {
			return
		}
	}
}

// AddRelayed counts one event of n bytes relayed to a client of the
// session. It is called for every event, takes no lock and does not
// allocate.
func (s *Session) AddRelayed(n int) {
	s.relayedEvents.Add(1)
	s.relayedBytes.Add(int64(n))
}

// Relayed returns the events and bytes counted by AddRelayed so far.
func (s *Session) Relayed() (events, bytes int64) {
	return s.relayedEvents.Load(), s.relayedBytes.Load()
}

// InFlight returns the requests in flight on the session.
func (s *Session) InFlight() int { return int(s.inFlight.Load()) }

// StreamCount returns the open streams registered with AddStream.
func (s *Session) StreamCount() int { return int(s.nstreams.Load()) }

// Goroutines returns the goroutines running in the session's task group.
func (s *Session) Goroutines() int { return s.group.Count() }

// Evicted reports whether the session has left the registry, by eviction
// or by removal.
func (s *Session) Evicted() bool { return s.state.Load() == stateEvicted }

// Forgotten reports whether the session was evicted without a tombstone
// (Registry.SetForgetEvicted): it was forgotten here only, and whoever
// ends evicted sessions elsewhere (upstream) leaves it alone.
func (s *Session) Forgotten() bool { return s.forgotten.Load() }

// Begin marks a request in flight and touches the session; the returned
// function ends it (and touches the session again) and must be called
// exactly once. A session in flight is never idle and is only evicted in
// protective mode. Begin does not allocate.
//
// A session may be evicted between Registry.Get and Begin; a caller that
// must not proceed on an evicted session checks Evicted after Begin.
func (s *Session) Begin() (end func()) {
	s.inFlight.Add(1)
	s.Touch(s.reg.now())
	return s.endFn
}

// BeginQuiet marks a request in flight like Begin, but neither it nor the
// returned function touches the session. It is for traffic that only
// finishes work already started (JSON-RPC notifications, responses to the
// server's requests, DELETE): while such a request is in flight the
// session is not idle and is only evicted in protective mode, as with
// Begin, but it does not restart the idle clock, so a session that sends
// nothing else is expired by Sweep and scores as idle for eviction. The
// returned function must be called exactly once. BeginQuiet does not
// allocate.
func (s *Session) BeginQuiet() (end func()) {
	s.inFlight.Add(1)
	return s.quietFn
}

func (s *Session) end() {
	s.Touch(s.reg.now())
	s.endQuiet()
}

func (s *Session) endQuiet() {
	for {
		n := s.inFlight.Load()
		if n <= 0 || s.inFlight.CompareAndSwap(n, n-1) {
			return
		}
	}
}

// AddStream registers an open stream of the session with the function that
// closes it, and returns the function that unregisters it when the stream
// ends by itself. An open stream keeps the session from being idle, and
// its end touches the session.
//
// closer is called at most once, outside the registry's locks, with
// ErrEvicted or ErrDeleted when the session leaves the registry. It is
// called before AddStream returns when the session has already left
// (ErrEvicted or ErrDeleted) or already holds MaxStreams streams
// (ErrStreamLimit); the returned function then does nothing. remove may be
// called any number of times, also after closer ran. Registering costs one
// allocation while the session holds at most four streams.
func (s *Session) AddStream(closer func(reason error)) (remove func()) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		closer(s.reason())
		return noop
	}
	if len(s.streams) >= s.reg.maxStreams {
		s.mu.Unlock()
		closer(ErrStreamLimit)
		return noop
	}
	s.nextID++
	id := s.nextID
	s.streams = append(s.streams, streamEntry{id: id, close: closer})
	s.nstreams.Store(int64(len(s.streams)))
	s.mu.Unlock()
	return func() { s.removeStream(id) }
}

func noop() {}

func (s *Session) removeStream(id uint64) {
	s.mu.Lock()
	for i := range s.streams {
		if s.streams[i].id == id {
			last := len(s.streams) - 1
			s.streams[i] = s.streams[last]
			s.streams[last] = streamEntry{}
			s.streams = s.streams[:last]
			s.nstreams.Store(int64(last))
			s.mu.Unlock()
			s.Touch(s.reg.now())
			return
		}
	}
	s.mu.Unlock()
}

// reason is the error given to the closers of a session that has left.
func (s *Session) reason() error {
	if s.deleted.Load() {
		return ErrDeleted
	}
	return ErrEvicted
}

// shardCount is the number of registry shards, and of client-index
// shards; a power of two.
const shardCount = 64

// shard is one slice of the registry's key space.
type shard struct {
	mu       sync.Mutex
	sessions map[string]*Session // guarded by mu
	_        [48]byte            // keeps neighbouring shards' locks off one cache line
}

// client is the index entry of one client key: its live sessions and the
// Opens in progress that hold a place under ClientMaxSessions.
type client struct {
	sessions []*Session // live sessions; s.clientIdx is s's index
	opening  int        // places taken by Opens not yet visible
}

// clientShard is one slice of the client index.
type clientShard struct {
	mu      sync.Mutex
	clients map[string]*client // guarded by mu, as are the entries
	_       [48]byte           // keeps neighbouring shards' locks off one cache line
}

// Registry holds the live MCP sessions of this process. It bounds them
// (MaxSessions, and ClientMaxSessions per client), expires idle ones
// (Sweep), evicts the least valuable ones under pressure (EvictVictims)
// and remembers evicted keys for a while (WasEvicted), so a client whose
// session was evicted gets a clear answer.
//
// Concurrency: the sessions map is split into 64 shards by a hash of the
// key, each with its own mutex, so Get (every request) rarely contends.
// Whole-registry operations (Sweep, EvictVictims, Range, Stats) lock one
// shard at a time. The client index is split the same way by a hash of
// the client key. Tombstones have a single mutex of their own. A session
// leaves its shard's map, gets its tombstone and leaves its client's
// index in one critical section of its shard, so a Get that misses an
// evicted session is always followed by a WasEvicted that reports it;
// Open likewise drops the key's tombstone and indexes the session in the
// critical section that makes it visible.
//
// Lock order: a session shard's mutex may be held while taking the
// tombstone mutex or a client shard's mutex (one at a time); no other
// lock is ever held while taking a registry lock, so no two shard locks
// and no two client-shard locks are ever held at once. The session's own
// mutex is taken only without a registry lock held. No lock is held while
// stream closers, OnEvict, OnEnd or Range callbacks run.
//
// Bounds: the sessions map holds at most MaxSessions entries (when set);
// the client index holds one entry per client key that has a live session
// or an Open in progress (so no more entries than live sessions plus
// concurrent Opens), and each entry lists that client's live sessions (at
// most ClientMaxSessions, when set); the tombstone map and its queue hold
// at most MaxTombstones entries each and lose entries older than
// TombstoneTTL at Sweep; each session holds at most MaxStreams stream
// entries. The registry starts no goroutine: Sweep is called by its owner
// on a ticker.
type Registry struct {
	seed    maphash.Seed
	shards  [shardCount]shard
	clients [shardCount]clientShard

	maxSessions   atomic.Int64
	clientMax     atomic.Int64
	forgetEvicted atomic.Bool // see SetForgetEvicted
	quota         atomic.Int64
	memory        *Budget
	tombstoneTTL  time.Duration
	maxTombstones int
	maxStreams    int
	tasks         *Group
	onEvict       func(*Session, Cause)
	onEnd         func(*Session, Cause, time.Time)
	clock         func() time.Time

	idleTimeout atomic.Int64 // nanoseconds
	count       atomic.Int64 // live sessions, also the MaxSessions slot counter
	bytes       atomic.Int64 // bytes held by all session accounts
	evictions   [NumCauses]atomic.Uint64

	tombMu sync.Mutex
	tombs  map[string]int64 // key → eviction time (unix ns); guarded by tombMu
	queue  []tombstone      // eviction order, oldest at head; guarded by tombMu
	head   int              // index of the oldest entry in queue; guarded by tombMu
}

// tombstone is one entry of the registry's eviction-order queue.
type tombstone struct {
	key string
	at  int64
}

// RegistryStats is a snapshot of the registry's counts.
type RegistryStats struct {
	// Sessions is the number of live sessions.
	Sessions int
	// Clients is the number of client keys with a live session (sessions
	// with an empty ClientKey are not counted).
	Clients int
	// Streams is the number of open streams over all sessions.
	Streams int
	// InFlight is the number of requests in flight over all sessions.
	InFlight int
	// Bytes is the memory held by all session accounts.
	Bytes int64
	// Evictions counts the sessions that left the registry, by cause,
	// since it was created.
	Evictions [NumCauses]uint64
}

// NewRegistry returns an empty registry configured by cfg.
func NewRegistry(cfg RegistryConfig) *Registry {
	r := &Registry{
		seed:          maphash.MakeSeed(),
		memory:        cfg.Memory,
		tombstoneTTL:  cfg.TombstoneTTL,
		maxTombstones: cfg.MaxTombstones,
		maxStreams:    cfg.MaxStreams,
		tasks:         cfg.Tasks,
		onEvict:       cfg.OnEvict,
		onEnd:         cfg.OnEnd,
		clock:         cfg.Clock,
		tombs:         make(map[string]int64),
	}
	r.maxSessions.Store(int64(cfg.MaxSessions))
	r.clientMax.Store(int64(cfg.ClientMaxSessions))
	r.quota.Store(cfg.SessionMemory)
	if r.quota.Load() <= 0 {
		r.quota.Store(DefaultSessionMemory)
	}
	if r.tombstoneTTL <= 0 {
		r.tombstoneTTL = DefaultTombstoneTTL
	}
	if r.maxTombstones <= 0 {
		r.maxTombstones = DefaultMaxTombstones
	}
	if r.maxStreams <= 0 {
		r.maxStreams = DefaultMaxStreams
	}
	if r.clock == nil {
		r.clock = time.Now
	}
	r.SetIdleTimeout(cfg.IdleTimeout)
	for i := range r.shards {
		r.shards[i].sessions = make(map[string]*Session)
		r.clients[i].clients = make(map[string]*client)
	}
	return r
}

func (r *Registry) now() time.Time { return r.clock() }

func (r *Registry) shard(key string) *shard {
	return &r.shards[maphash.String(r.seed, key)&(shardCount-1)]
}

func (r *Registry) clientShard(clientKey string) *clientShard {
	return &r.clients[maphash.String(r.seed, clientKey)&(shardCount-1)]
}

// SetIdleTimeout changes the idle timeout for the next Sweep; service
// levels scale it down under pressure. Zero or less restores the default
// of 5 minutes.
func (r *Registry) SetIdleTimeout(d time.Duration) {
	if d <= 0 {
		d = DefaultIdleTimeout
	}
	r.idleTimeout.Store(int64(d))
}

// IdleTimeout returns the idle timeout in force.
func (r *Registry) IdleTimeout() time.Duration { return time.Duration(r.idleTimeout.Load()) }

// Open creates a live session for info, active at now. It checks, in
// this order:
//
//   - a live session with the key: ErrExists;
//   - the bytes of info's strings (SessionInfo.Size) against the session
//     quota (ErrInfoTooLarge) and then the parent budget (ErrNoMemory);
//     they are reserved from the new session's account before anything is
//     evicted, so these refusals and the first change nothing;
//   - when info.ClientKey is set and that client holds ClientMaxSessions
//     live sessions: Open evicts the client's own best victim with
//     CauseCapacity (its highest Score, never one with a request in
//     flight unless protective), choosing among that client's sessions
//     only (as many as it is over the cap when the cap was lowered), and
//     returns ErrClientFull when none may be evicted;
//   - when the registry holds MaxSessions sessions: Open evicts the
//     session with the highest Score among all sessions with
//     CauseCapacity (see EvictVictims; never one with a request in flight
//     unless protective) and returns ErrFull when none may be evicted.
//
// Evicting for the client costs O(that client's sessions); evicting for
// the registry scans it once, so at capacity Open costs O(sessions) and
// the load manager keeps the registry under MaxSessions in normal
// operation with Sweep and EvictVictims in batches. Concurrent Opens may
// take the room an eviction made; after a few rounds of that Open gives up
// with ErrClientFull or ErrFull although victims remain. Lowering
// MaxSessions evicts nothing at once: each Open over it evicts a few
// victims at most. A key that turns out to be live after victims were
// evicted returns ErrExists; the victims stay evicted. A tombstoned key is
// reopened and loses its tombstone.
func (r *Registry) Open(info SessionInfo, now time.Time, protective bool) (*Session, error) {
	// A live key is refused before anyone is evicted for it; the check is
	// repeated where the session becomes visible.
	if _, ok := r.Get(info.Key); ok {
		return nil, ErrExists
	}
	quota := r.quota.Load()
	size := info.Size()
	if quota > 0 && size > quota {
		return nil, ErrInfoTooLarge
	}
	account := NewAccount(quota, r.memory)
	account.tally = &r.bytes
	if !account.Reserve(size) {
		return nil, ErrNoMemory
	}
	if info.ClientKey != "" && !r.takeClientSlot(info.ClientKey, protective) {
		account.Close()
		return nil, ErrClientFull
	}
	if !r.takeSlot(protective) {
		r.releaseClientSlot(info.ClientKey)
		account.Close()
		return nil, ErrFull
	}
	s := &Session{
		reg:     r,
		info:    info,
		account: account,
		group:   NewGroup(r.tasks),
		created: now,
	}
	s.streams = s.inline[:0]
	s.endFn = s.end
	s.quietFn = s.endQuiet
	s.lastActive.Store(now.UnixNano())

	sh := r.shard(info.Key)
	sh.mu.Lock()
	if _, ok := sh.sessions[info.Key]; ok {
		sh.mu.Unlock()
		r.count.Add(-1)
		r.releaseClientSlot(info.ClientKey)
		account.Close()
		s.group.Close()
		return nil, ErrExists
	}
	// The key's tombstone goes in the critical section that makes the
	// session visible, so a Get miss followed by WasEvicted never sees a
	// live key as evicted nor an evicted key as unknown. Its queue entry
	// ages out by itself.
	r.tombMu.Lock()
	delete(r.tombs, info.Key)
	r.tombMu.Unlock()
	sh.sessions[info.Key] = s
	if info.ClientKey != "" {
		r.indexClient(s)
	}
	sh.mu.Unlock()
	return s, nil
}

// takeSlot reserves a place under MaxSessions, evicting to make room.
func (r *Registry) takeSlot(protective bool) bool {
	maxSessions := r.maxSessions.Load()
	if maxSessions <= 0 {
		r.count.Add(1)
		return true
	}
	// Concurrent Opens may take the room an eviction made, and a victim
	// may begin a request between being chosen and being evicted; a few
	// rounds bound the work one Open does before it gives up.
	for range 4 {
		for {
			n := r.count.Load()
			if n >= maxSessions {
				break
			}
			if r.count.CompareAndSwap(n, n+1) {
				return true
			}
		}
		if _, found := r.evictVictims(1, protective, CauseCapacity); found == 0 {
			return false
		}
	}
	return false
}

// takeClientSlot reserves a place under ClientMaxSessions for an Open by
// clientKey, evicting the client's own best victims to make room: one
// when the client is at its cap, as many as it is over a lowered cap. Only
// the client's sessions are looked at.
func (r *Registry) takeClientSlot(clientKey string, protective bool) bool {
	cs := r.clientShard(clientKey)
	var small [4]victim
	for range 4 {
		limit := int(r.clientMax.Load())
		cs.mu.Lock()
		c := cs.clients[clientKey]
		if c == nil {
			c = &client{}
			cs.clients[clientKey] = c
		}
		held := len(c.sessions) + c.opening
		if limit <= 0 || held < limit {
			c.opening++
			cs.mu.Unlock()
			return true
		}
		h := r.clientVictimsLocked(c, protective, held-limit+1, small[:0])
		cs.mu.Unlock()
		if len(h) == 0 {
			return false
		}
		for i := range h {
			r.evictSession(h[i].s, protective, CauseCapacity)
			h[i] = victim{}
		}
	}
	return false
}

// clientVictimsLocked appends to h (empty) the n sessions of c with the
// highest Score that may be evicted (live, and not in flight unless
// protective), fewer when c has fewer, and returns it; the client shard's
// mutex must be held. It costs O(len(c.sessions) × log n).
func (r *Registry) clientVictimsLocked(c *client, protective bool, n int, h []victim) []victim {
	now := r.now().UnixNano()
	for _, s := range c.sessions {
		if s.state.Load() == stateEvicted || (!protective && s.inFlight.Load() > 0) {
			continue
		}
		h = r.offerVictim(h, n, s, now)
	}
	return h
}

// EvictClientVictim evicts, with CauseCapacity, the session of clientKey
// with the highest Score that may be evicted (never one with a request in
// flight unless protective), and reports whether there was one. It looks
// only at that client's sessions. A caller about to open a session for a
// client at its ClientMaxSessions uses it to make room before doing the
// work that creates the session.
func (r *Registry) EvictClientVictim(clientKey string, protective bool) bool {
	if clientKey == "" {
		return false
	}
	cs := r.clientShard(clientKey)
	var small [1]victim
	for range 4 {
		cs.mu.Lock()
		c := cs.clients[clientKey]
		var h []victim
		if c != nil {
			h = r.clientVictimsLocked(c, protective, 1, small[:0])
		}
		cs.mu.Unlock()
		if len(h) == 0 {
			return false
		}
		if r.evictSession(h[0].s, protective, CauseCapacity) {
			return true
		}
	}
	return false
}

// releaseClientSlot gives back a place taken by takeClientSlot for an
// Open that failed. An empty clientKey is a no-op.
func (r *Registry) releaseClientSlot(clientKey string) {
	if clientKey == "" {
		return
	}
	cs := r.clientShard(clientKey)
	cs.mu.Lock()
	if c := cs.clients[clientKey]; c != nil {
		c.opening = max(c.opening-1, 0)
		if c.opening == 0 && len(c.sessions) == 0 {
			delete(cs.clients, clientKey)
		}
	}
	cs.mu.Unlock()
}

// indexClient turns the place s's Open took under its client into an
// entry of the client's list. The shard mutex of s's key must be held.
func (r *Registry) indexClient(s *Session) {
	cs := r.clientShard(s.info.ClientKey)
	cs.mu.Lock()
	c := cs.clients[s.info.ClientKey]
	if c == nil { // the place was taken, so the entry exists; be safe
		c = &client{}
		cs.clients[s.info.ClientKey] = c
	} else {
		c.opening = max(c.opening-1, 0)
	}
	s.clientIdx = len(c.sessions)
	c.sessions = append(c.sessions, s)
	cs.mu.Unlock()
}

// unindexClient takes s out of its client's list, and the entry out of
// the index when the client has nothing left. The shard mutex of s's key
// must be held.
func (r *Registry) unindexClient(s *Session) {
	cs := r.clientShard(s.info.ClientKey)
	cs.mu.Lock()
	defer cs.mu.Unlock()
	c := cs.clients[s.info.ClientKey]
	i := s.clientIdx
	if c == nil || i >= len(c.sessions) || c.sessions[i] != s {
		return
	}
	last := len(c.sessions) - 1
	moved := c.sessions[last]
	c.sessions[i] = moved
	moved.clientIdx = i
	c.sessions[last] = nil
	c.sessions = c.sessions[:last]
	switch {
	case last == 0 && c.opening == 0:
		delete(cs.clients, s.info.ClientKey)
	case cap(c.sessions) > 16 && last <= cap(c.sessions)/4:
		// A client that shrank gives back most of its list.
		c.sessions = append([]*Session(nil), c.sessions...)
	}
}

// SetForgetEvicted, when on, makes evictions other than the operator's
// (CauseOperator) leave no tombstone from now on: a session evicted for
// idleness, capacity or the service level may be opened again at once.
// Tombstones already written keep answering WasEvicted until they age.
func (r *Registry) SetForgetEvicted(on bool) { r.forgetEvicted.Store(on) }

// SetMaxSessions changes MaxSessions for sessions opened from now on;
// 0 means no cap.
func (r *Registry) SetMaxSessions(n int) { r.maxSessions.Store(int64(n)) }

// MaxSessions returns the cap on live sessions (0: none).
func (r *Registry) MaxSessions() int { return int(r.maxSessions.Load()) }

// SetClientMaxSessions changes ClientMaxSessions, the cap on one client's
// live sessions, for sessions opened from now on; 0 means no cap. Lowering
// it evicts nothing at once: a client over the new cap keeps its sessions
// until they expire or its next Open evicts its excess.
func (r *Registry) SetClientMaxSessions(n int) { r.clientMax.Store(int64(n)) }

// ClientMaxSessions returns the cap on one client's live sessions (0:
// none).
func (r *Registry) ClientMaxSessions() int { return max(int(r.clientMax.Load()), 0) }

// ClientSessions returns the number of live sessions opened with the
// client key. It is 0 for the empty key, which is never counted.
func (r *Registry) ClientSessions(clientKey string) int {
	if clientKey == "" {
		return 0
	}
	cs := r.clientShard(clientKey)
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if c := cs.clients[clientKey]; c != nil {
		return len(c.sessions)
	}
	return 0
}

// SetSessionMemory changes the memory quota of sessions opened from now
// on.
func (r *Registry) SetSessionMemory(n int64) {
	if n > 0 {
		r.quota.Store(n)
	}
}

// Get returns the live session with the key. It does not allocate.
func (r *Registry) Get(key string) (*Session, bool) {
	sh := r.shard(key)
	sh.mu.Lock()
	s, ok := sh.sessions[key]
	sh.mu.Unlock()
	return s, ok
}

// WasEvicted reports whether a session with the key was evicted less than
// TombstoneTTL ago and has not been reopened. Removal with CauseDeleted
// leaves no tombstone, except through RemoveEnded.
//
// The tombstone is written in the critical section that takes the
// session out of the registry, so when Get misses the key of an evicted
// session, a WasEvicted called after it reports true (until the tombstone
// is dropped by age or by MaxTombstones, or the key is reopened); there is
// no moment in which an evicted key is neither live nor tombstoned.
func (r *Registry) WasEvicted(key string) bool {
	r.tombMu.Lock()
	at, ok := r.tombs[key]
	r.tombMu.Unlock()
	return ok && r.now().UnixNano()-at < int64(r.tombstoneTTL)
}

// Remove takes the live session with the key out of the registry and
// reports whether there was one. Its streams are closed (ErrDeleted for
// CauseDeleted, ErrEvicted otherwise), its account is closed, which
// returns its memory to the parent budget, its task group is closed and
// OnEnd is called. For CauseDeleted that is all; for any other cause the
// removal is an eviction: the key is tombstoned, at the moment it leaves
// the map, and OnEvict is called.
func (r *Registry) Remove(key string, cause Cause) bool {
	return r.removeIf(key, cause, false, nil)
}

// RemoveEnded is Remove with CauseDeleted for a session that cannot come
// back, such as a legacy HTTP+SSE session whose stream ended: its key is
// also tombstoned, as it leaves the map, so that WasEvicted refuses a
// later request for it rather than the registry opening it anew.
func (r *Registry) RemoveEnded(key string) bool {
	return r.removeIf(key, CauseDeleted, true, nil)
}

// evictSession evicts s for cause if it is still live and, unless
// protective, has no request in flight; it reports whether it did.
func (r *Registry) evictSession(s *Session, protective bool, cause Cause) bool {
	return r.removeIf(s.info.Key, cause, false, func(live *Session) bool {
		return live == s && (protective || s.inFlight.Load() == 0)
	})
}

// removeIf takes the live session with the key out of the registry for
// cause, if there is one and may (when set) allows it, and reports whether
// it did; bury tombstones the key whatever the cause. may is asked under
// the shard's lock.
func (r *Registry) removeIf(key string, cause Cause, bury bool, may func(live *Session) bool) bool {
	sh := r.shard(key)
	sh.mu.Lock()
	s, ok := sh.sessions[key]
	ok = ok && (may == nil || may(s))
	var at time.Time
	if ok {
		at = r.now()
		r.detachLocked(sh, s, cause, at)
		if bury {
			r.tombstone(key, at.UnixNano())
		}
	}
	sh.mu.Unlock()
	if ok {
		r.finish(s, cause, at)
	}
	return ok
}

// detachLocked takes s out of sh at at for cause; sh.mu must be held and s
// must be in sh. In the same critical section it tombstones the key (for
// every cause but CauseDeleted, and only CauseOperator under
// SetForgetEvicted; a session evicted without one is marked Forgotten)
// and takes s out of its client's index, so that whoever misses s in the
// map sees the tombstone and the client's count without s.
func (r *Registry) detachLocked(sh *shard, s *Session, cause Cause, at time.Time) {
	delete(sh.sessions, s.info.Key)
	if cause == CauseDeleted {
		s.deleted.Store(true)
	}
	s.state.Store(stateEvicted)
	r.count.Add(-1)
	switch {
	case cause == CauseDeleted:
	case cause == CauseOperator || !r.forgetEvicted.Load():
		r.tombstone(s.info.Key, at.UnixNano())
	default:
		s.forgotten.Store(true)
	}
	if s.info.ClientKey != "" {
		r.unindexClient(s)
	}
}

// finish completes the eviction or removal of s, which has just been
// detached at at by this goroutine (so it runs exactly once per session).
// It takes no registry lock while calling out.
func (r *Registry) finish(s *Session, cause Cause, at time.Time) {
	reason := ErrEvicted
	if cause == CauseDeleted {
		reason = ErrDeleted
	}
	s.mu.Lock()
	s.closed = true
	streams := s.streams
	s.streams = nil
	s.nstreams.Store(0)
	s.mu.Unlock()
	for i := range streams {
		streams[i].close(reason)
		streams[i] = streamEntry{}
	}
	s.account.Close()
	s.group.Close()
	if int(cause) < NumCauses {
		r.evictions[cause].Add(1)
	}
	if r.onEnd != nil {
		r.onEnd(s, cause, at)
	}
	if cause != CauseDeleted && r.onEvict != nil {
		r.onEvict(s, cause)
	}
}

// tombstone remembers key as evicted at at.
func (r *Registry) tombstone(key string, at int64) {
	r.tombMu.Lock()
	defer r.tombMu.Unlock()
	for len(r.queue)-r.head >= r.maxTombstones {
		r.popTombLocked()
	}
	r.tombs[key] = at
	r.queue = append(r.queue, tombstone{key: key, at: at})
}

// popTombLocked drops the oldest queue entry and its map entry unless the
// map entry is newer (the key was tombstoned again later).
func (r *Registry) popTombLocked() {
	t := r.queue[r.head]
	r.queue[r.head] = tombstone{}
	r.head++
	if at, ok := r.tombs[t.key]; ok && at == t.at {
		delete(r.tombs, t.key)
	}
	// Compact once the dead prefix is the larger half, so the queue's
	// backing array stays within twice the live entries.
	if r.head > len(r.queue)/2 {
		n := copy(r.queue, r.queue[r.head:])
		clear(r.queue[n:])
		r.queue = r.queue[:n]
		r.head = 0
	}
}

// pruneTombs drops tombstones older than the TTL at now.
func (r *Registry) pruneTombs(now int64) {
	r.tombMu.Lock()
	for r.head < len(r.queue) && now-r.queue[r.head].at >= int64(r.tombstoneTTL) {
		r.popTombLocked()
	}
	r.tombMu.Unlock()
}

// Tombstones returns the number of evicted keys remembered.
func (r *Registry) Tombstones() int {
	r.tombMu.Lock()
	defer r.tombMu.Unlock()
	return len(r.tombs)
}

// idle reports whether s has been idle for timeout at now (see Sweep).
func idle(s *Session, now int64, timeout int64) bool {
	return s.inFlight.Load() == 0 && s.nstreams.Load() == 0 && now-s.lastActive.Load() >= timeout
}

// Sweep evicts with CauseIdle every session idle at now: no request in
// flight, no open stream, and no activity for the idle timeout. Activity
// is Begin and the end of what Begin started, the end of a stream, and
// Touch; requests started with BeginQuiet keep a session while they are in
// flight but are no activity, so a session that only sends notifications
// and responses expires. A session with an open stream is never idle,
// because an MCP GET stream can be silent for hours and still be wanted; a
// stream whose client has gone is closed by its own write deadline or
// keepalive failure, which removes it and restarts the idle clock. Sweep
// also drops tombstones older than the TTL, and returns the number of
// sessions expired. It scans every session once, one shard at a time; the
// owner calls it on a ticker (a fraction of the idle timeout).
func (r *Registry) Sweep(now time.Time) (expired int) {
	t := now.UnixNano()
	timeout := r.idleTimeout.Load()
	var batch []*Session // reused per shard; at most one shard's sessions
	for i := range r.shards {
		sh := &r.shards[i]
		batch = batch[:0]
		var at time.Time
		sh.mu.Lock()
		for _, s := range sh.sessions {
			if idle(s, t, timeout) {
				if len(batch) == 0 {
					at = r.now()
				}
				r.detachLocked(sh, s, CauseIdle, at)
				batch = append(batch, s)
			}
		}
		sh.mu.Unlock()
		for j, s := range batch {
			r.finish(s, CauseIdle, at)
			batch[j] = nil
		}
		expired += len(batch)
	}
	r.pruneTombs(t)
	return expired
}

// victim is a candidate of EvictVictims.
type victim struct {
	s     *Session
	score float64
	bytes int64
}

// better reports whether a should be evicted before b.
func (a victim) better(b victim) bool {
	if a.score != b.score {
		return a.score > b.score
	}
	if a.bytes != b.bytes {
		return a.bytes > b.bytes
	}
	return a.s.lastActive.Load() < b.s.lastActive.Load()
}

// Score returns the victim score of s at now; EvictVictims evicts the
// highest scores first. It is
//
//	idleSeconds × (1 + bytesHeld / quota)
//
// where idleSeconds is the time since the session was last active (see
// Sweep for what counts as activity; BeginQuiet does not) and bytesHeld is
// what its account holds, the bytes of its SessionInfo included (quota is
// SessionMemory, 1 MiB when sessions have no quota). The longest idle go
// first, and of two equally idle sessions the one holding more memory; a
// session that holds its whole quota counts as idle twice as long. Ties
// go to the session holding more bytes, then to the one idle longer.
func (r *Registry) Score(s *Session, now time.Time) float64 {
	return r.score(s, now.UnixNano())
}

func (r *Registry) score(s *Session, now int64) float64 {
	idleSec := max(float64(now-s.lastActive.Load())/1e9, 0)
	quota := r.quota.Load()
	if quota <= 0 {
		quota = DefaultSessionMemory
	}
	return idleSec * (1 + float64(s.account.Used())/float64(quota))
}

// EvictVictims evicts up to n sessions for cause, highest Score first, and
// returns how many it evicted. A session with a request in flight is never
// chosen unless protective is true; one that begins a request between
// being chosen and being evicted is spared. It scans every session once,
// keeping the n best candidates in a heap (O(sessions × log n)), then
// evicts them.
func (r *Registry) EvictVictims(n int, protective bool, cause Cause) int {
	evicted, _ := r.evictVictims(n, protective, cause)
	return evicted
}

// evictVictims is EvictVictims, also returning how many candidates it
// found.
func (r *Registry) evictVictims(n int, protective bool, cause Cause) (evicted, found int) {
	if n <= 0 {
		return 0, 0
	}
	n = min(n, int(r.count.Load()))
	if n <= 0 {
		return 0, 0
	}
	now := r.now().UnixNano()
	var small [4]victim
	h := small[:0]
	if n > len(small) {
		h = make([]victim, 0, n)
	}
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for _, s := range sh.sessions {
			if !protective && s.inFlight.Load() > 0 {
				continue
			}
			h = r.offerVictim(h, n, s, now)
		}
		sh.mu.Unlock()
	}
	for i := range h {
		s := h[i].s
		h[i] = victim{}
		if r.evictSession(s, protective, cause) {
			evicted++
		}
	}
	return evicted, len(h)
}

// offerVictim adds s, scored at now, to h, the heap of the n best victims
// met so far, if it is one of them, and returns h.
func (r *Registry) offerVictim(h []victim, n int, s *Session, now int64) []victim {
	v := victim{s: s, score: r.score(s, now), bytes: s.account.Used()}
	if len(h) < n {
		h = append(h, v)
		heapUp(h, len(h)-1)
	} else if v.better(h[0]) {
		h[0] = v
		heapDown(h, 0)
	}
	return h
}

// heapUp and heapDown keep h a heap whose root is the worst victim (the
// one to drop first when a better candidate turns up).
func heapUp(h []victim, i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h[p].better(h[i]) {
			return
		}
		h[p], h[i] = h[i], h[p]
		i = p
	}
}

func heapDown(h []victim, i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		w := l
		if r := l + 1; r < len(h) && h[l].better(h[r]) {
			w = r
		}
		if !h[i].better(h[w]) {
			return
		}
		h[i], h[w] = h[w], h[i]
		i = w
	}
}

// Len returns the number of live sessions.
func (r *Registry) Len() int { return int(r.count.Load()) }

// Bytes returns the memory held by all session accounts.
func (r *Registry) Bytes() int64 { return r.bytes.Load() }

// Range calls fn for each live session until fn returns false. It iterates
// over a snapshot taken one shard at a time, with no lock held while fn
// runs; sessions opened or evicted meanwhile may or may not be seen. The
// snapshot costs one slice of the live sessions.
func (r *Registry) Range(fn func(*Session) bool) {
	snap := make([]*Session, 0, r.Len())
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for _, s := range sh.sessions {
			snap = append(snap, s)
		}
		sh.mu.Unlock()
	}
	for _, s := range snap {
		if !fn(s) {
			return
		}
	}
}

// Stats returns the registry's counts. Streams and InFlight are summed over
// the sessions, one shard at a time, and Clients over the client index, so
// Stats costs a scan of the registry; call it at scrape rate, not per
// request.
func (r *Registry) Stats() RegistryStats {
	st := RegistryStats{Sessions: r.Len(), Bytes: r.Bytes()}
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for _, s := range sh.sessions {
			st.Streams += int(s.nstreams.Load())
			st.InFlight += int(s.inFlight.Load())
		}
		sh.mu.Unlock()
	}
	for i := range r.clients {
		cs := &r.clients[i]
		cs.mu.Lock()
		for _, c := range cs.clients {
			if len(c.sessions) > 0 {
				st.Clients++
			}
		}
		cs.mu.Unlock()
	}
	for i := range st.Evictions {
		st.Evictions[i] = r.evictions[i].Load()
	}
	return st
}
