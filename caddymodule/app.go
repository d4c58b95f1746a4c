package caddymodule

import (
	"strconv"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/mcpgate/mcpgate/admission"
)

func init() {
	caddy.RegisterModule(new(App))
	httpcaddyfile.RegisterGlobalOption("mcp", parseGlobalOption)
}

// App is the `mcp` app: the process-wide state every mcp_proxy shares.
// Its limits apply to all mcp_proxy handlers of the process together. The
// counters behind them live as long as the process, so a config reload
// keeps counting the requests and streams that are still open.
type App struct {
	// MaxInflight caps the requests in flight through every mcp_proxy of
	// the process; past it a request is refused with 503. 0 means no cap.
	// Default: 0.
	MaxInflight int `json:"max_inflight,omitempty"`

	// MaxConnections caps the client connections accepted by servers that
	// use the mcp_connections listener wrapper; a connection over it is
	// closed at once. 0 means no cap. Default: 0.
	MaxConnections int `json:"max_connections,omitempty"`

	// MaxStreams caps the SSE streams (GET streams) open through every
	// mcp_proxy of the process; past it a new stream is refused with 503.
	// 0 means no cap. Default: 0.
	MaxStreams int `json:"max_streams,omitempty"`

	global *globalState
}

// globalState is shared by every App instance (one per config load).
type globalState struct {
	inflight *admission.Limiter
	streams  *admission.Limiter
	conns    *admission.Limiter
}

var (
	globalMu  sync.Mutex
	globalCur *globalState
)

// currentGlobal returns the process-wide state, nil before any mcp app.
func currentGlobal() *globalState {
	globalMu.Lock()
	defer globalMu.Unlock()
	return globalCur
}

// Destruct implements caddy.Destructor.
func (*globalState) Destruct() error { return nil }

var globals = caddy.NewUsagePool()

const globalKey = "mcpgate.global"

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "mcp",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision takes the process-wide counters and applies this config's
// limits to them.
func (a *App) Provision(caddy.Context) error {
	v, _, err := globals.LoadOrNew(globalKey, func() (caddy.Destructor, error) {
		return &globalState{
			inflight: admission.NewLimiter(0, 0, 0),
			streams:  admission.NewLimiter(0, 0, 0),
			conns:    admission.NewLimiter(0, 0, 0),
		}, nil
	})
	if err != nil {
		return err
	}
	a.global = v.(*globalState)
	a.global.inflight.SetLimit(a.MaxInflight)
	a.global.streams.SetLimit(a.MaxStreams)
	a.global.conns.SetLimit(a.MaxConnections)
	globalMu.Lock()
	globalCur = a.global
	globalMu.Unlock()
	return nil
}

// Start implements caddy.App.
func (*App) Start() error { return nil }

// Stop implements caddy.App.
func (*App) Stop() error { return nil }

// Cleanup releases this config's reference to the shared counters.
func (a *App) Cleanup() error {
	_, err := globals.Delete(globalKey)
	return err
}

// parseGlobalOption parses the `mcp` global option:
//
//	mcp {
//		max_connections <n>
//		max_inflight    <n>
//		max_streams     <n>
//	}
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	d.Next() // the option name
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if !d.NextArg() {
			return nil, d.ArgErr()
		}
		n, err := strconv.Atoi(d.Val())
		if err != nil || n < 0 {
			return nil, d.Errf("bad %s %q: want a count", name, d.Val())
		}
		switch name {
		case "max_inflight":
			app.MaxInflight = n
		case "max_streams":
			app.MaxStreams = n
		case "max_connections":
			app.MaxConnections = n
		default:
			return nil, d.Errf("unrecognized mcp option %q", name)
		}
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	return httpcaddyfile.App{Name: "mcp", Value: caddyconfig.JSON(app, nil)}, nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
