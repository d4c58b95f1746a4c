//go:build unix

package caddytest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// h2cGlobal is the global option that serves HTTP/2 over cleartext (h2c)
// beside HTTP/1.1, as an HTTPS site serves HTTP/2.
const h2cGlobal = "\tservers {\n\t\tprotocols h1 h2c\n\t}\n"

// h2cClient returns a client that speaks HTTP/2 over cleartext, every
// request on one connection, and HTTP/1.1 one for comparison.
func h2cClient(t *testing.T) *http.Client {
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &h2, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// h1Client returns an HTTP/1.1 client of its own.
func h1Client(t *testing.T) *http.Client {
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// protoClients are an HTTP/1.1 and an HTTP/2 client, with the major
// version each must be answered in.
func protoClients(t *testing.T) []struct {
	name  string
	major int
	hc    *http.Client
} {
	return []struct {
		name  string
		major int
		hc    *http.Client
	}{{"HTTP/1.1", 1, h1Client(t)}, {"HTTP/2", 2, h2cClient(t)}}
}

// TestH2BodyWaitsInQueue: a POST body longer than max_peek whose request
// waits in the admission queue for longer than body_timeout, its client
// having sent every byte at once, is read on once admitted, over HTTP/1.1
// and HTTP/2: body_timeout bounds each read of the body, not the time
// the proxy takes before the next one.
func TestH2BodyWaitsInQueue(t *testing.T) {
	const bodyTimeout = time.Second
	fake := startFake(t, &fakeUpstream{on: map[string]func(*fakeCall){"tools/call:gated": gatedTool}})
	port := freePort(t)
	loadCaddyfileWith(t, h2cGlobal, proxySite(port, fake.addr(),
		fmt.Sprintf("\t\tmax_inflight 1\n\t\tqueue 4 %v\n\t\tbody_timeout %v\n\t\tmax_peek 4KiB\n", 3*boundedWait, bodyTimeout)))
	base := proxyURL(port)
	ctx, cancel := context.WithTimeout(context.Background(), 4*boundedWait)
	defer cancel()
	text := strings.Repeat("y", 2<<20)
	for i, proto := range protoClients(t) {
		sid := fake.openSession(t, base, sessionVersion)
		key := "hold-" + proto.name
		held := make(chan reply, 1)
		go func() { held <- post(ctx, proto.hc, base+"/mcp", gatedCall(10+i, "gated", key), inSession(sid, nil)) }()
		fake.awaitStarted(t, key)
		answer := make(chan reply, 1)
		go func() { answer <- post(ctx, proto.hc, base+"/mcp", echoCall(20+i, text), inSession(sid, nil)) }()
		// The echo waits in the queue, its body sent, past body_timeout.
		time.Sleep(2 * bodyTimeout)
		fake.open(key)
		if r := awaitReply(t, held, proto.name+" gated call"); !r.ok() {
			t.Errorf("%s: the gated call: %s", proto.name, r)
		}
		if r := awaitReply(t, answer, proto.name+" queued echo"); !r.ok() || !strings.Contains(r.body, text[:1000]) {
			t.Errorf("%s: the echo whose body waited %v in the queue: %s", proto.name, 2*bodyTimeout, r)
		}
	}
}
