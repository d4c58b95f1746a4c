package h1stream

import (
	"bytes"
	"errors"
	"io"
)

// chunkedBody decodes an HTTP/1.1 chunked response body read straight from
// the connection into the caller's buffer, in place. It holds no read
// buffer of its own, only the few bytes of a size or trailer line split
// between reads, so an idle stream costs nothing here and a burst is read
// with one system call per caller buffer.
type chunkedBody struct {
	src     io.Reader // the connection
	pending []byte    // body bytes read with the response header
	state   uint8
	left    uint64 // data bytes left in the current chunk
	line    []byte // a size or trailer line split between reads
	err     error  // sticky: io.EOF after the last chunk, or the failure
}

// States of a chunkedBody.
const (
	chunkSize    uint8 = iota // reading a chunk-size line
	chunkData                 // inside a chunk's data
	chunkDataCR               // expecting the CR after a chunk's data
	chunkDataLF               // expecting the LF after a chunk's data
	chunkTrailer              // reading trailer lines up to a blank one
)

// maxChunkLine caps a chunk-size or trailer line.
const maxChunkLine = 4 << 10

var errChunkFormat = errors.New("malformed chunked encoding")

// Read implements io.Reader.
func (c *chunkedBody) Read(p []byte) (int, error) {
	for {
		if c.err != nil {
			return 0, c.err
		}
		if len(p) == 0 {
			return 0, nil
		}
		var m int
		var rerr error
		if len(c.pending) > 0 {
			m = copy(p, c.pending)
			c.pending = c.pending[m:]
			if len(c.pending) == 0 {
				c.pending = nil
			}
		} else {
			m, rerr = c.src.Read(p)
		}
		n := c.decode(p[:m])
		if n > 0 {
			if rerr != nil && c.err == nil {
				c.err = unexpectedEOF(rerr)
			}
			return n, nil
		}
		if rerr != nil && c.err == nil {
			c.err = unexpectedEOF(rerr)
		}
	}
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// decode turns the raw bytes b into body data, in place, and returns how
// many data bytes now start b. It sets c.err at the end of the body or on
// a framing error.
func (c *chunkedBody) decode(b []byte) int {
	w, i := 0, 0
	for i < len(b) && c.err == nil {
		switch c.state {
		case chunkData:
			k := len(b) - i
			if uint64(k) > c.left {
				k = int(c.left)
			}
			copy(b[w:], b[i:i+k])
			w, i = w+k, i+k
			c.left -= uint64(k)
			if c.left == 0 {
				c.state = chunkDataCR
			}
		case chunkDataCR, chunkDataLF:
			want, next := byte('\r'), chunkDataLF
			if c.state == chunkDataLF {
				want, next = '\n', chunkSize
			}
			if b[i] != want {
				c.err = errChunkFormat
				break
			}
			i++
			c.state = next
		default: // chunkSize, chunkTrailer
			j := bytes.IndexByte(b[i:], '\n')
			if j < 0 {
				if len(c.line)+len(b)-i > maxChunkLine {
					c.err = errChunkFormat
					break
				}
				c.line = append(c.line, b[i:]...)
				i = len(b)
				break
			}
			line := b[i : i+j]
			if len(c.line) > 0 {
				if len(c.line)+j > maxChunkLine {
					c.err = errChunkFormat
					break
				}
				c.line = append(c.line, line...)
				line = c.line
			}
			i += j + 1
			c.endLine(bytes.TrimSuffix(line, []byte{'\r'}))
			c.line = c.line[:0]
			if cap(c.line) > 256 {
				c.line = nil
			}
		}
	}
	return w
}

// endLine handles one complete size or trailer line.
func (c *chunkedBody) endLine(line []byte) {
	if c.state == chunkTrailer {
		if len(line) == 0 {
			c.err = io.EOF
		}
		return
	}
	if k := bytes.IndexByte(line, ';'); k >= 0 {
		line = line[:k] // a chunk extension
	}
	line = bytes.Trim(line, " \t")
	if len(line) == 0 || len(line) > 16 {
		c.err = errChunkFormat
		return
	}
	var size uint64
	for _, ch := range line {
		var d byte
		switch {
		case '0' <= ch && ch <= '9':
			d = ch - '0'
		case 'a' <= ch && ch <= 'f':
			d = ch - 'a' + 10
		case 'A' <= ch && ch <= 'F':
			d = ch - 'A' + 10
		default:
			c.err = errChunkFormat
			return
		}
		size = size<<4 | uint64(d)
	}
	if size == 0 {
		c.state = chunkTrailer
		return
	}
	c.left, c.state = size, chunkData
}
