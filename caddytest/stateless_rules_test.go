package caddytest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpgate/mcpgate/internal/demo"
)

// The access rules at 2026-07-28: requests of that revision that name a
// target elsewhere than params.name or params.uri.

// subscribeRecorder is a stateless go-sdk server with resources whose
// subscribe handler reports every URI it is asked to subscribe to.
func subscribeRecorder(subscribed chan<- string) *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "subs", Version: "1"}, &mcp.ServerOptions{
		SubscribeHandler: func(_ context.Context, req *mcp.SubscribeRequest) error {
			select {
			case subscribed <- req.Params.URI:
			default:
			}
			return nil
		},
		UnsubscribeHandler: func(context.Context, *mcp.UnsubscribeRequest) error { return nil },
	})
	read := func(_ context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
		return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: req.Params.URI, Text: "contents of " + req.Params.URI}}}, nil
	}
	for _, uri := range []string{"file:///public/readme.txt", "file:///secret/key.txt"} {
		s.AddResource(&mcp.Resource{URI: uri, Name: uri}, read)
	}
	return s
}

// listenBody is a 2026-07-28 subscriptions/listen asking for updates of
// the resources uris (raw JSON strings).
func listenBody(id string, uris ...string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"method":"subscriptions/listen","params":{`+meta2026+`,"notifications":{"resourceSubscriptions":[%s]}}}`, id, strings.Join(uris, ","))
}

// listenHeaders are the headers of a 2026-07-28 subscriptions/listen.
var listenHeaders = map[string]string{"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "subscriptions/listen"}

// TestStatelessListenResourceRules: at 2026-07-28 subscriptions/listen
// replaces resources/subscribe, and its
// params.notifications.resourceSubscriptions names the resources whose
// updates the client gets (the go-sdk runs its subscribe handler for
// each). A resource the rules deny, or deny on resources/subscribe, is
// not subscribed to that way either: the listen gets the error of an
// unknown resource and never reaches the upstream; an allowed one is
// subscribed to.
func TestStatelessListenResourceRules(t *testing.T) {
	subscribed := make(chan string, 16)
	up := startRecorded(t, "subs", demo.Handler(subscribeRecorder(subscribed), "", &mcp.StreamableHTTPOptions{Stateless: true}))
	port := freePort(t)
	loadCaddyfile(t, proxySite(port, up.addr(), rulesBlock(
		"deny resource file:///secret/*",
		"deny resource file:///public/* on resources/subscribe")))
	url := proxyURL(port) + "/mcp"

	for i, uris := range [][]string{
		{`"file:///secret/key.txt"`},
		{`"file:///docs/x"`, `"file:///secret/key.txt"`},
		{`"file:///public/readme.txt"`},
		{`"file:///SECRET/../secret/key.txt"`},
	} {
		id := fmt.Sprintf("91%d", i)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		r := postJSON(ctx, url, listenBody(id, uris...), listenHeaders)
		cancel()
		msg := lastMessage(t, "listen "+strings.Join(uris, ","), r)
		rpcErrorFor(t, "listen "+strings.Join(uris, ","), msg, id, -32602)
		if up.saw(id) {
			t.Errorf("listen %s (denied) reached the upstream", strings.Join(uris, ","))
		}
	}
	select {
	case uri := <-subscribed:
		t.Errorf("the upstream subscribed to %s through subscriptions/listen", uri)
	default:
	}

	// An allowed resource is subscribed to.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ch := sendJSON(ctx, url, listenBody("920", `"file:///docs/guide"`), listenHeaders)
	select {
	case uri := <-subscribed:
		if uri != "file:///docs/guide" {
			t.Errorf("subscribed to %s, want file:///docs/guide", uri)
		}
	case <-time.After(boundedWait):
		t.Error("the allowed listen never subscribed")
	}
	cancel()
	awaitReply(t, ch, "allowed listen")
}
