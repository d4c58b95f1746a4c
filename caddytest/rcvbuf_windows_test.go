package caddytest

import "syscall"

// setRcvBuf sets a socket's SO_RCVBUF, from a net.Dialer's or
// net.ListenConfig's Control.
func setRcvBuf(c syscall.RawConn, size int) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(syscall.Handle(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, size)
	}); err != nil {
		return err
	}
	return serr
}
