package caddymodule

import (
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	caddy.RegisterModule(new(ConnLimit))
}

// ConnLimit is the `mcp_connections` listener wrapper: it counts the
// connections a server accepts against the `mcp` app's max_connections,
// shared by every server that uses it. A connection over the limit is
// closed as soon as it is accepted, before any TLS or HTTP work is spent
// on it, and counted as a refusal with reason "connections". It wraps
// TCP listeners: HTTP/3 connections (QUIC) are not counted.
//
//	{
//		servers {
//			listener_wrappers {
//				mcp_connections {
//					write_buffer 64KiB
//				}
//				tls
//			}
//		}
//	}
type ConnLimit struct {
	// WriteBuffer, when set, caps the kernel send buffer of every
	// accepted connection, in bytes (SO_SNDBUF). Kernels grow send
	// buffers to megabytes on fast links, so a client that stops reading
	// an SSE stream can park that much in the kernel before a write
	// blocks; a small buffer bounds that memory and lets write_timeout
	// and stream_buffer detect the slow consumer promptly. Default: the
	// kernel's.
	WriteBuffer int64 `json:"write_buffer,omitempty"`

	app *App
}

// CaddyModule returns the Caddy module information.
func (*ConnLimit) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.listeners.mcp_connections",
		New: func() caddy.Module { return new(ConnLimit) },
	}
}

// Provision finds the mcp app that holds the limit.
func (l *ConnLimit) Provision(ctx caddy.Context) error {
	app, err := ctx.App("mcp")
	if err != nil {
		return fmt.Errorf("loading mcp app: %w", err)
	}
	l.app = app.(*App)
	return registerMetrics(ctx)
}

// WrapListener wraps ln so its connections are counted.
func (l *ConnLimit) WrapListener(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, g: l.app.global, writeBuffer: int(l.WriteBuffer)}
}

type limitListener struct {
	net.Listener
	g           *globalState
	writeBuffer int
}

// Accept returns the next connection within the limit, closing those over
// it.
func (ll *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ll.g.AdmitConnection() {
			if tc, ok := c.(*net.TCPConn); ok && ll.writeBuffer > 0 {
				_ = tc.SetWriteBuffer(ll.writeBuffer)
			}
			return &countedConn{Conn: c, release: ll.g.ReleaseConnection}, nil
		}
		_ = c.Close()
	}
}

// countedConn gives its slot back when closed.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

// Close closes the connection and releases its slot once.
func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// CloseWrite shuts the write side of the connection when it has one (a
// handed-off stream ends with it).
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// connectionsActive reports the connections counted by mcp_connections.
var connectionsActive = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
	Namespace: "caddy", Subsystem: "mcp", Name: "connections_active",
	Help: "Client connections counted by the mcp_connections listener wrapper.",
}, func() float64 {
	if g := currentGlobal(); g != nil {
		return float64(g.ConnLimit().InFlight())
	}
	return 0
})

// Interface guards
var (
	_ caddy.Provisioner     = (*ConnLimit)(nil)
	_ caddy.ListenerWrapper = (*ConnLimit)(nil)
)
