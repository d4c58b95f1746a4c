package mcp

import (
	"io"
	"sync"
)

// CheckedBody is a request body whose first bytes were peeked by
// ParseEnvelope and found too few to hold the whole body: it reads the
// peeked head again, then the rest of the original body, and checks every
// byte before it passes it on, so that the upstream never receives a
// complete message other than the one the peek read.
//
// Each byte goes through an incremental JSON validator, and the message
// is read again as ParseEnvelope reads it. The last byte read is always
// held back, and so are the closing brace of the message and any
// whitespace after it, until the original body reports its end and
// everything checked out; on a violation Read returns an error instead,
// and never the rest of the body, so the upstream is left with an
// incomplete request. Violations are:
//   - invalid JSON, invalid UTF-8 or anything but whitespace after the
//     message (ErrMalformed), and more than 4 KiB of that whitespace;
//   - a message ParseEnvelope would refuse as a whole (ErrAmbiguous,
//     ErrJSONRPCVersion, ErrInvalidID, ErrNotEnvelope), also when the
//     offending key is past the head;
//   - a member the peek could not read in the head (ErrLateEnvelope):
//     "method", params.name, params.uri, params.protocolVersion,
//     params.requestId, params.cursor or the _meta protocol version whose
//     value ends past the head, "params", "result" or "error" whose value
//     starts past it. A late "jsonrpc" is checked ("2.0"); a late "id" is
//     allowed when the peek read a request whose id it had not seen (a
//     string or a number) or a response; such a request must have an id,
//     and a notification must not get one. Other keys, params.arguments
//     and params._meta (but for its protocol version) may follow the
//     head;
//   - more bytes than the limit (ErrBodyTooLarge).
//
// The check keeps a fixed amount of memory, about 1.5 KiB, whatever the
// body.
//
// Once the body has been read to its end and checked out, LateID gives
// the id the peek did not see (it followed the head), for the answers
// and cancellations of the request.
type CheckedBody struct {
	head    []byte
	headOff int
	rest    io.ReadCloser
	limit   int64
	n       int64 // bytes read so far
	v       *streamCheck
	closed  bool   // the message's closing brace was read
	held    []byte // the closing brace and what follows, until the end
	last    byte   // before the closing brace: the last byte read, held back
	hasLast bool
	one     [1]byte // a read into a one-byte p while a byte is held back
	done    bool    // the body ended and checked out
	fail    error   // the violation, returned by every later Read

	mu    sync.Mutex
	err   error // fail, for Err
	ended bool  // done, for LateID: v is no longer written
	onEnd func(lateID string) error
}

// OnEnd has f called once the body has been read to its end and checked
// out, with LateID's value, before the reader gets the bytes held back:
// before the upstream has the whole message. An error f returns aborts
// the body as a violation does: the reader gets it instead of the last
// bytes, and Err returns it. f runs on the reading goroutine and must not
// read the body. A body that never ends (a violation, an error, a cancel)
// never calls it.
func (b *CheckedBody) OnEnd(f func(lateID string) error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.onEnd = f
}

// NewCheckedBody returns the body that reads head, the bytes ParseEnvelope
// peeked, then rest, the remainder of the original body, checking all of
// it. limit is the largest total body in bytes, 0 for none.
func NewCheckedBody(head []byte, rest io.ReadCloser, limit int64) *CheckedBody {
	return &CheckedBody{head: head, rest: rest, limit: limit, v: newMessageCheck(int64(len(head)))}
}

// Read reads the checked body. It returns the violation that aborted the
// body, or a read error of the original body, instead of any byte that
// follows it.
func (b *CheckedBody) Read(p []byte) (int, error) {
	if b.fail != nil {
		return 0, b.fail
	}
	if b.done {
		if len(b.held) == 0 {
			return 0, io.EOF
		}
		n := copy(p, b.held)
		b.held = b.held[n:]
		return n, nil
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		// Until the message closes, the last byte read is held back: new
		// bytes are read after it.
		dst, lead, viaOne := p, 0, false
		switch {
		case b.closed || !b.hasLast:
		case len(p) > 1:
			p[0] = b.last
			dst, lead = p[1:], 1
		default:
			dst, viaOne = b.one[:], true
		}
		n, rerr := b.readNext(dst)
		out := 0
		if n > 0 {
			var err error
			if out, err = b.check(p, dst[:n], lead, viaOne); err != nil {
				return 0, err
			}
		}
		if rerr == io.EOF {
			if err := b.finish(); err != nil {
				return 0, err
			}
			if out > 0 {
				return out, nil
			}
			return b.Read(p)
		}
		if rerr != nil {
			return 0, b.abort(rerr)
		}
		if out > 0 {
			return out, nil
		}
	}
}

// readNext reads the next bytes of the body into dst: the rest of the
// head, then the original body.
func (b *CheckedBody) readNext(dst []byte) (int, error) {
	if b.headOff < len(b.head) {
		n := copy(dst, b.head[b.headOff:])
		b.headOff += n
		return n, nil
	}
	return b.rest.Read(dst)
}

// check checks got, the bytes just read into p after lead bytes (or,
// with viaOne, into b.one), holds back what must wait for the body's end
// and returns how many bytes of p are ready.
func (b *CheckedBody) check(p, got []byte, lead int, viaOne bool) (int, error) {
	n := len(got)
	if b.limit > 0 && b.n+int64(n) > b.limit {
		return 0, b.abort(ErrBodyTooLarge)
	}
	b.n += int64(n)
	at, err := b.v.write(got)
	if err != nil {
		return 0, b.abort(err)
	}
	switch {
	case b.closed:
		return 0, b.hold(got)
	case at >= 0:
		b.closed = true
		if err := b.hold(got[at:]); err != nil {
			return 0, err
		}
		return b.release(p, lead, viaOne, at), nil
	}
	out := b.release(p, lead, viaOne, n-1)
	b.last, b.hasLast = got[n-1], true
	return out, nil
}

// finish checks the message once the original body ended, and on success
// calls the function given to OnEnd.
func (b *CheckedBody) finish() error {
	if err := b.v.end(); err != nil {
		return b.abort(err)
	}
	b.mu.Lock()
	b.ended = true
	onEnd := b.onEnd
	b.mu.Unlock()
	if onEnd != nil {
		if err := onEnd(b.v.lateID); err != nil {
			return b.abort(err)
		}
	}
	b.done = true
	return nil
}

// release gives up the byte held back before and the k first new bytes,
// read after it into p (or, with viaOne, into b.one, k being 0), and
// returns how many bytes of p are ready.
func (b *CheckedBody) release(p []byte, lead int, viaOne bool, k int) int {
	if viaOne {
		p[0] = b.last
		b.hasLast = false
		return 1
	}
	b.hasLast = false
	return lead + k
}

// hold keeps the end of the message and what follows it until the body
// ends.
func (b *CheckedBody) hold(p []byte) error {
	if len(b.held)+len(p) > maxTrailing+1 {
		return b.abort(errTrailing)
	}
	b.held = append(b.held, p...)
	return nil
}

// abort records the violation that ends the body and returns it.
func (b *CheckedBody) abort(err error) error {
	b.fail = err
	b.held = nil
	b.mu.Lock()
	b.err = err
	b.mu.Unlock()
	return err
}

// Close closes the original body.
func (b *CheckedBody) Close() error { return b.rest.Close() }

// LateID returns the raw JSON of the message's id when its value ended
// past the head, which ParseEnvelope therefore did not see (Envelope.ID
// is empty), exactly as the client wrote it: a number, or a string of at
// most 256 bytes between its quotes. It is known once the body has been
// read to its end and checked out, before the upstream has the whole
// message; it is "" until then, and for an id in the head, a null id or a
// longer string. It is known too when the function given to OnEnd
// refused the body (the id in use). It may be called while another
// goroutine reads the body.
func (b *CheckedBody) LateID() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.ended {
		return ""
	}
	return b.v.lateID
}

// Cancel stops a body that has not ended, for a request given up while
// its body still arrives (its deadline passed): a Read waiting for the
// client's bytes returns at once with an error, and so does every later
// Read, so that the upstream request that reads it can end. A body that
// ended is left alone.
func (b *CheckedBody) Cancel() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s, ok := b.rest.(interface{ stop() }); ok && !b.ended {
		s.stop()
	}
}

// Err returns the violation that aborted the body (ErrLateEnvelope,
// ErrMalformed, ErrBodyTooLarge, ...) or the error reading the original
// body failed with, nil while neither happened. It may be called while
// another goroutine reads the body.
func (b *CheckedBody) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}
