package governor

import (
	"context"
	"time"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/resources"
)

// run calls tick every refresh interval until ctx ends. A new interval
// from Apply takes effect at once.
func (g *Governor) run(ctx context.Context) {
	defer g.loops.Done()
	t := time.NewTimer(g.Refresh())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.rearm:
			t.Reset(g.Refresh())
		case now := <-t.C:
			g.tick(now)
			t.Reset(g.Refresh())
		}
	}
}

// tick is one round of the refresh loop: sample the monitors, apply the
// level's actions, expire idle sessions, sweep the resumable streams and,
// at the protective level, reset the largest streams. A panic in it is
// recovered and reported (Hooks.Panic), and the loop goes on at the next
// refresh.
func (g *Governor) tick(now time.Time) {
	if g.hooks.Panic != nil {
		defer g.recoverPanic("refresh loop")
	}
	g.levels.Sample(now)
	level := g.applyLevel()
	if n := g.sessions.Sweep(now); n > 0 && g.hooks.IdleExpired != nil {
		g.hooks.IdleExpired(n)
	}
	if now.Sub(g.resumeSwept) >= resumeSweep {
		g.resumeSwept = now
		g.resume.Sweep(now)
	}
	if level == admission.LevelProtective {
		if n := g.open.ResetLargest(protectiveResetsPerTick); n > 0 && g.hooks.ProtectiveResets != nil {
			g.hooks.ProtectiveResets(n)
		}
	}
}

// applyLevel applies what depends on the level in force, and returns it:
// the session idle timeout, and, at the degraded level and above, the
// replay ring of each resumable stream shrinks to the degraded fraction
// of its own configured size (new streams get the fraction too, see
// DegradedFraction). It reads the level under applyMu, so that of a tick
// and a pin applying at once, the last to apply applies the level in
// force, not the one it saw before the other.
func (g *Governor) applyLevel() admission.Level {
	g.applyMu.Lock()
	defer g.applyMu.Unlock()
	level := g.levels.Level()
	g.mu.Lock()
	idle, fraction := g.idle, g.fraction
	g.mu.Unlock()
	if level >= admission.LevelDegraded {
		idle = time.Duration(float64(idle) * fraction)
		g.resume.ShrinkBy(fraction)
	}
	g.sessions.SetIdleTimeout(idle)
	if g.hooks.LevelApplied != nil {
		g.hooks.LevelApplied(level)
	}
	return level
}

// recoverPanic reports a panic of the goroutine it is deferred in to
// Hooks.Panic, with where naming the goroutine. It must be deferred
// directly, and only when Hooks.Panic is set.
func (g *Governor) recoverPanic(where string) {
	if v := recover(); v != nil {
		g.hooks.Panic(where, v)
	}
}

// onEvict forgets the resumable streams of an evicted session and, unless
// Settings.ForgetEvicted spares it, queues its deletion upstream: most
// clients never send DELETE, so evicted sessions would otherwise pile up
// upstream. A full queue drops the session (Hooks.DeleteSkipped); the
// upstream expires it itself.
func (g *Governor) onEvict(s *resources.Session, cause resources.Cause) {
	if g.hooks.SessionEvicted != nil {
		g.hooks.SessionEvicted(s, cause)
	}
	info := s.Info()
	g.resume.Forget(info.Key)
	if s.Forgotten() {
		return // another replica may be serving it (Settings.ForgetEvicted)
	}
	if info.UpstreamID == "" || !mcp.HasSessionDelete(info.Version) || g.hooks.DeleteSession == nil {
		// A legacy session ends upstream with its stream, which eviction
		// closed; the stateless revision has no sessions.
		return
	}
	info.Version = s.Version() // the version its server agreed on
	select {
	case g.deletes <- info:
	default:
		g.deleteSkipped()
	}
}

// deleteWorker deletes the evicted sessions queued on g.deletes upstream
// until ctx ends.
func (g *Governor) deleteWorker(ctx context.Context) {
	defer g.loops.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case info := <-g.deletes:
			g.deleteUpstream(ctx, info)
		}
	}
}

// deleteUpstream deletes one evicted session upstream, within
// deleteTimeout. A panic in it is recovered and reported, and the worker
// goes on with the next session.
func (g *Governor) deleteUpstream(ctx context.Context, info resources.SessionInfo) {
	if g.hooks.Panic != nil {
		defer g.recoverPanic("session delete worker")
	}
	ctx, cancel := context.WithTimeout(ctx, deleteTimeout)
	defer cancel()
	if !g.hooks.DeleteSession(ctx, info) {
		g.deleteSkipped()
	}
}

// deleteSkipped reports an evicted session not deleted upstream.
func (g *Governor) deleteSkipped() {
	if g.hooks.DeleteSkipped != nil {
		g.hooks.DeleteSkipped()
	}
}
