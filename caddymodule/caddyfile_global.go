package caddymodule

import (
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/mcpgate/mcpgate/admission"
)

// parseGlobalOption parses the `mcp` global option (see App for its
// syntax).
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	d.Next() // the option name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	if err := parseBlock(d, app.options(), "mcp option"); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "mcp", Value: caddyconfig.JSON(app, nil)}, nil
}

// options are the mcp global option's settings.
func (a *App) options() map[string]option {
	return map[string]option{
		"max_connections":      countOpt(&a.MaxConnections),
		"max_inflight":         countOpt(&a.MaxInflight),
		"max_streams":          countOpt(&a.MaxStreams),
		"max_sessions":         countOrOff(&a.MaxSessions),
		"client_max_sessions":  countOrOff(&a.ClientMaxSessions),
		"goroutine_ceiling":    countOpt(&a.GoroutineCeiling),
		"memory_limit":         sizeOpt(&a.MemoryLimit),
		"session_memory":       sizeOpt(&a.SessionMemory),
		"session_idle_timeout": durationOpt(&a.SessionIdleTimeout),
		"evicted_sessions": one(func(s string) error {
			if s != "delete" && s != "forget" {
				return fmt.Errorf("%q: want delete or forget", s)
			}
			a.EvictedSessions = s
			return nil
		}),
		"refresh":              durationOpt(&a.Refresh),
		"sched_latency_target": durationOpt(&a.SchedLatencyTarget),
		"levels":               {nargs: between(3, 4), apply: a.parseLevels},
		"degraded_fraction": one(func(s string) error {
			f, err := strconv.ParseFloat(s, 64)
			if err != nil || f <= 0 || f > 1 {
				return fmt.Errorf("%q: want a number in (0, 1]", s)
			}
			a.DegradedFraction = f
			return nil
		}),
	}
}

// parseLevels parses `<degraded> <essential> <protective> [<hysteresis>]`.
func (a *App) parseLevels(args []string) error {
	var v [4]float64
	for i, s := range args {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("%q: want a pressure between 0 and 1", s)
		}
		v[i] = f
	}
	a.Degraded, a.Essential, a.Protective, a.Hysteresis = v[0], v[1], v[2], v[3]
	th := admission.Thresholds{Degraded: v[0], Essential: v[1], Protective: v[2], Hysteresis: orDefault(v[3], admission.DefaultThresholds.Hysteresis)}
	return th.Validate()
}
