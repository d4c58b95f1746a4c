package caddytest

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestConnectionLimit checks the process-wide connection cap of the
// mcp_connections listener wrapper: connections over max_connections are
// closed at once, and a slot freed by a closed connection is reused.
func TestConnectionLimit(t *testing.T) {
	up := startUpstream(t, "up", nil)
	port := freePort(t)
	loadCaddyfileWith(t, "\tmcp {\n\t\tmax_connections 2\n\t}\n\tservers {\n\t\tlistener_wrappers {\n\t\t\tmcp_connections\n\t\t}\n\t}\n",
		fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, up.addr()))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ping := func(c net.Conn) error {
		req := "POST /mcp HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: " +
			fmt.Sprint(len(initializeBody)) + "\r\n\r\n" + initializeBody
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte(req)); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	var conns []net.Conn
	for i := range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := ping(c); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	third, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	if err := ping(third); err == nil || strings.Contains(err.Error(), "status") {
		t.Fatalf("third connection was served: %v", err)
	}
	conns[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			err = ping(c)
			c.Close()
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("freed slot never reused: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
