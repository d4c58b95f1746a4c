// Package demo builds the small MCP server that cmd/caddy serves as the
// mcp_demo handler and that the end-to-end tests use as an upstream. It is
// built with the official MCP Go SDK.
package demo

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// EchoArgs are the arguments of the echo tool.
type EchoArgs struct {
	Text string `json:"text" jsonschema:"the text to echo back"`
}

// AddArgs are the arguments of the add tool.
type AddArgs struct {
	A float64 `json:"a" jsonschema:"first addend"`
	B float64 `json:"b" jsonschema:"second addend"`
}

// SumResult is the structured result of the add tool.
type SumResult struct {
	Sum float64 `json:"sum"`
}

// CountdownArgs are the arguments of the countdown tool.
type CountdownArgs struct {
	From    int `json:"from" jsonschema:"start value, at most 1000"`
	DelayMS int `json:"delay_ms,omitempty" jsonschema:"pause between steps in milliseconds, at most 5000"`
}

// NewServer returns an MCP server named name with three tools: echo, add,
// and countdown (which reports progress on every step, so its response
// arrives on an SSE stream after a series of notifications).
func NewServer(name string) *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: name, Version: "1.0.0"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "echo", Description: "Echo the given text."},
		func(_ context.Context, _ *mcp.CallToolRequest, in EchoArgs) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: in.Text}}}, nil, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "add", Description: "Add two numbers."},
		func(_ context.Context, _ *mcp.CallToolRequest, in AddArgs) (*mcp.CallToolResult, SumResult, error) {
			return nil, SumResult{Sum: in.A + in.B}, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "countdown", Description: "Count down to zero, reporting progress on every step."},
		func(ctx context.Context, req *mcp.CallToolRequest, in CountdownArgs) (*mcp.CallToolResult, any, error) {
			from := min(max(in.From, 0), 1000)
			delay := time.Duration(min(max(in.DelayMS, 0), 5000)) * time.Millisecond
			token := req.Params.GetProgressToken()
			for i := from; i > 0; i-- {
				if token != nil {
					err := req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{
						ProgressToken: token,
						Progress:      float64(from - i + 1),
						Total:         float64(from),
						Message:       fmt.Sprintf("%d", i),
					})
					if err != nil {
						return nil, nil, err
					}
				}
				if delay > 0 {
					t := time.NewTimer(delay)
					select {
					case <-ctx.Done():
						t.Stop()
						return nil, nil, ctx.Err()
					case <-t.C:
					}
				}
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "liftoff"}}}, nil, nil
		})
	return s
}

// Handler serves srv over Streamable HTTP at every path except legacyPath,
// where it serves the legacy HTTP+SSE transport (2024-11-05): a GET opens
// the stream and POSTs to the same path carry the session's messages.
// opts may be nil.
func Handler(srv *mcp.Server, legacyPath string, opts *mcp.StreamableHTTPOptions) http.Handler {
	streamable := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, opts)
	legacy := mcp.NewSSEHandler(func(*http.Request) *mcp.Server { return srv }, nil)
	mux := http.NewServeMux()
	mux.Handle("/", streamable)
	if legacyPath != "" {
		mux.Handle(legacyPath, legacy)
	}
	return mux
}
