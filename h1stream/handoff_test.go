package h1stream

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mcpgate/mcpgate/sse"
)

// ConnWriter is the writer an sse.Stream is attached to.
var _ sse.ClientWriter = ConnWriter{}

// tcpPair returns the two ends of a loopback TCP connection: the server's
// (the handed-off connection) and the client's.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// watch runs WatchClient on conn and returns a channel closed when it
// has returned, having called gone.
func watch(conn net.Conn) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		called := false
		WatchClient(conn, func() { called = true })
		if called {
			close(done)
		}
	}()
	return done
}

// waitGone fails the test unless gone is closed within a generous bound.
func waitGone(t *testing.T, gone <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: the watcher did not end", what)
	}
}

func TestEndResponseHalfCloses(t *testing.T) {
	server, client := tcpPair(t)
	gone := watch(server)
	w := ConnWriter{Conn: server}
	if err := w.SetWriteDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("data: last\n\n")); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	EndResponse(server)
	// The client reads everything sent, then the end of the response,
	// while its own side is still open.
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "data: last\n\n" {
		t.Fatalf("client read %q, %v", got, err)
	}
	// The client closes its side: the watcher ends and closes the
	// connection.
	client.Close()
	waitGone(t, gone, "client closed after the end")
	if _, err := server.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after the watcher ended: %v, want the connection closed", err)
	}
}

func TestEndResponseLinger(t *testing.T) {
	server, client := tcpPair(t)
	gone := watch(server)
	EndResponse(server)
	// A client that never closes is let go after the linger.
	waitGone(t, gone, "client kept its side open")
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(client); err != nil {
		t.Errorf("client read after the linger: %v", err)
	}
}

func TestEndResponseWithoutHalfClose(t *testing.T) {
	// A net.Pipe cannot be half-closed: the response ends with a close.
	server, client := net.Pipe()
	defer client.Close()
	EndResponse(server)
	if _, err := server.Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("write after EndResponse: %v, want the pipe closed", err)
	}
	if _, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("client read after EndResponse: %v, want EOF", err)
	}
}

func TestWatchClientEndsOnClientClose(t *testing.T) {
	server, client := tcpPair(t)
	gone := watch(server)
	// A few stray bytes are read and ignored.
	if _, err := client.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	client.Close()
	waitGone(t, gone, "client closed")
}

func TestWatchClientEndsOnConnClose(t *testing.T) {
	// The stream's own end closes the connection under the watcher.
	server, _ := tcpPair(t)
	gone := watch(server)
	server.Close()
	waitGone(t, gone, "connection closed")
}

func TestWatchClientTrailingCap(t *testing.T) {
	server, client := net.Pipe()
	defer client.Close()
	gone := watch(server)
	// Up to the cap, a client is only read.
	if _, err := client.Write(bytes.Repeat([]byte("x"), MaxClientTrailing)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gone:
		t.Fatal("the watcher ended at the cap")
	default:
	}
	// Past it, the client is treated as gone: the watcher stops reading
	// and closes the connection.
	_ = client.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := client.Write([]byte(strings.Repeat("y", 200)))
	waitGone(t, gone, "client sent more than the cap")
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("client write past the cap: %v, want the pipe closed", err)
	}
}

func TestWatchClientClosesWhenGonePanics(t *testing.T) {
	server, client := net.Pipe()
	defer client.Close()
	done := make(chan any)
	go func() {
		defer func() { done <- recover() }()
		WatchClient(server, func() { panic("gone") })
	}()
	client.Close()
	if v := <-done; v != "gone" {
		t.Fatalf("recovered %v", v)
	}
	if _, err := server.Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("write after the watcher panicked: %v, want the pipe closed", err)
	}
}
