package admission

import (
	"errors"
	"testing"
	"time"

	"github.com/mcpgate/mcpgate/resources"
)

func TestLevelAdmits(t *testing.T) {
	for _, tt := range []struct {
		level            Level
		finishing, opens bool
		want             bool
	}{
		{LevelFull, false, true, true},
		{LevelDegraded, false, true, true},
		{LevelEssential, false, false, true},
		{LevelEssential, false, true, false},
		{LevelEssential, true, false, true},
		{LevelProtective, false, false, false},
		{LevelProtective, true, false, true},
		{LevelProtective, false, true, false},
	} {
		if ok, why := tt.level.Admits(tt.finishing, tt.opens); ok != tt.want || ok == (why != "") {
			t.Errorf("%v finishing %v opens %v: %v %q", tt.level, tt.finishing, tt.opens, ok, why)
		}
	}
}

func TestRoomForSession(t *testing.T) {
	now := time.Unix(1000, 0)
	open := func(r *resources.Registry, key, client string) *resources.Session {
		t.Helper()
		s, err := r.Open(resources.SessionInfo{Key: key, ClientKey: client}, now, false)
		if err != nil {
			t.Fatalf("open %s: %v", key, err)
		}
		return s
	}
	t.Run("client share", func(t *testing.T) {
		r := resources.NewRegistry(resources.RegistryConfig{ClientMaxSessions: 2, Clock: func() time.Time { return now }})
		idle := open(r, "a1", "a")
		busy := open(r, "a2", "a")
		end1 := busy.Begin()
		defer end1()
		if err := RoomForSession(r, "a", false); err != nil {
			t.Fatalf("idle session of the client not evicted: %v", err)
		}
		if r.ClientSessions("a") != 1 || !idle.Evicted() || busy.Evicted() {
			t.Fatalf("client holds %d sessions; idle evicted %v, busy evicted %v", r.ClientSessions("a"), idle.Evicted(), busy.Evicted())
		}
		end2 := open(r, "a3", "a").Begin()
		defer end2()
		if err := RoomForSession(r, "a", false); !errors.Is(err, resources.ErrClientFull) {
			t.Fatalf("every session busy: %v, want ErrClientFull", err)
		}
		if err := RoomForSession(r, "b", false); err != nil {
			t.Fatalf("another client refused: %v", err)
		}
		if err := RoomForSession(r, "", false); err != nil {
			t.Fatalf("a request without client key refused: %v", err)
		}
		if err := RoomForSession(r, "a", true); err != nil || r.ClientSessions("a") != 1 {
			t.Fatalf("protective: %v, client holds %d sessions", err, r.ClientSessions("a"))
		}
	})
	t.Run("table size", func(t *testing.T) {
		r := resources.NewRegistry(resources.RegistryConfig{MaxSessions: 2, Clock: func() time.Time { return now }})
		if err := RoomForSession(r, "x", false); err != nil {
			t.Fatalf("empty table: %v", err)
		}
		s1, s2 := open(r, "s1", "x"), open(r, "s2", "y")
		end1, end2 := s1.Begin(), s2.Begin()
		if err := RoomForSession(r, "z", false); !errors.Is(err, resources.ErrFull) {
			t.Fatalf("full of busy sessions: %v, want ErrFull", err)
		}
		end2()
		if err := RoomForSession(r, "z", false); err != nil || !s2.Evicted() || s1.Evicted() {
			t.Fatalf("room: %v; idle evicted %v, busy evicted %v", err, s2.Evicted(), s1.Evicted())
		}
		if err := RoomForSession(r, "z", false); err != nil {
			t.Fatalf("one session left: %v", err)
		}
		open(r, "s3", "z").Begin()
		if err := RoomForSession(r, "w", true); err != nil || r.Len() != 1 {
			t.Fatalf("protective: %v, %d sessions", err, r.Len())
		}
		end1()
	})
}

func TestStreamSlots(t *testing.T) {
	process, handler := NewLimiter(2, 0, 0), NewLimiter(3, 0, 0)
	slots := StreamSlots{Process: process, Handler: handler, Client: NewKeyedLimiter(1, 10)}
	if !slots.Idle() {
		t.Fatal("new slots are not idle")
	}
	rel1, _, ok := slots.Acquire("a")
	if !ok {
		t.Fatal("first stream refused")
	}
	if slots.Idle() {
		t.Fatal("slots holding a stream are idle")
	}
	if _, reason, ok := slots.Acquire("a"); ok || reason != ReasonClientQuota {
		t.Fatalf("client's second stream: ok %v reason %v", ok, reason)
	}
	rel2, _, ok := slots.Acquire("b")
	if !ok {
		t.Fatal("another client's stream refused")
	}
	if _, reason, ok := slots.Acquire("c"); ok || reason != ReasonCapacity {
		t.Fatalf("past the process cap: ok %v reason %v", ok, reason)
	}
	if process.InFlight() != 2 || handler.InFlight() != 2 || slots.Client.InFlight("a") != 1 {
		t.Fatalf("a refusal kept slots: process %d handler %d", process.InFlight(), handler.InFlight())
	}
	rel1()
	rel2()
	if process.InFlight() != 0 || handler.InFlight() != 0 || slots.Client.InFlight("a") != 0 || slots.Client.InFlight("b") != 0 || !slots.Idle() {
		t.Fatal("slots not given back")
	}
	// Without a client cap, or a key, only the process and handler count.
	slots.Client = nil
	var rels []func()
	for range 2 {
		rel, _, ok := slots.Acquire("a")
		if !ok {
			t.Fatal("refused without a client cap")
		}
		rels = append(rels, rel)
	}
	small := StreamSlots{Process: NewLimiter(5, 0, 0), Handler: NewLimiter(1, 0, 0)}
	relS, _, _ := small.Acquire("")
	if _, reason, ok := small.Acquire(""); ok || reason != ReasonCapacity || small.Process.InFlight() != 1 {
		t.Fatalf("past the handler cap: ok %v reason %v, process slots %d", ok, reason, small.Process.InFlight())
	}
	relS()
	for _, rel := range rels {
		rel()
	}
}

func TestTrackSession(t *testing.T) {
	now := time.Unix(1000, 0)
	r := resources.NewRegistry(resources.RegistryConfig{MaxSessions: 1, Clock: func() time.Time { return now }})
	info := resources.SessionInfo{Key: "up a", Upstream: "up", UpstreamID: "a", ClientKey: "c"}
	// A session of another instance is adopted, and found again.
	s, end, err := TrackSession(r, info, false, false)
	if err != nil || s == nil || r.Len() != 1 {
		t.Fatalf("adopt: %v, %d sessions", err, r.Len())
	}
	s2, end2, err := TrackSession(r, info, true, false)
	if err != nil || s2 != s {
		t.Fatalf("again: %v, same %v", err, s2 == s)
	}
	end2()
	// The table is full of a session with a request in flight.
	other := resources.SessionInfo{Key: "up b", Upstream: "up", UpstreamID: "b"}
	if _, _, err := TrackSession(r, other, false, false); !errors.Is(err, resources.ErrFull) {
		t.Fatalf("full: %v", err)
	}
	end()
	// An evicted session is gone for good.
	if r.EvictVictims(1, false, resources.CauseCapacity) != 1 {
		t.Fatal("not evicted")
	}
	if _, _, err := TrackSession(r, info, false, false); !errors.Is(err, ErrSessionGone) {
		t.Fatalf("evicted: %v", err)
	}
	if _, end, err := TrackSession(r, other, false, false); err != nil {
		t.Fatalf("room again: %v", err)
	} else {
		end()
	}
}
