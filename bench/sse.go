//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The mock's GET SSE streams. A GET with a known Mcp-Session-Id gets a
// text/event-stream answer: the headers and a ": open" comment at once,
// then what the current streamPlan says. Without a plan the stream stays
// idle, with a keepalive comment every keepaliveEvery, until the client
// or the server ends it.
//
// While a plan is set, a POST tools/call of the tool toolStream gets the
// same stream as its answer: the headers and ": open" at once, the plan's
// events, and then the call's JSON-RPC result as the last event.

// toolStream is the mock's tool whose answer is a text/event-stream of
// the current plan's events, ended by the call's result.
const toolStream = "stream"

// streamPlan tells the mock's GET streams what to emit. It is set before
// the streams are opened; every stream waits for start to be closed, then
// emits events for Duration and ends the response.
type streamPlan struct {
	start     chan struct{} // closed when emission begins
	startAt   time.Time     // set before start is closed
	Duration  time.Duration // emission time per stream
	Interval  time.Duration // between events of one stream; 0 = as fast as possible
	Streams   int           // expected streams, to stagger paced streams evenly
	EventSize int           // bytes of each event on the wire

	next atomic.Int64 // stream index, for the stagger

	mu      sync.Mutex
	sent    int64         // events written and flushed
	maxLag  time.Duration // worst lateness of a paced event behind its schedule
	lagged  int64         // paced events sent more than 1 ms behind schedule
	writeEr int64         // streams that ended on a write error
}

func newStreamPlan(d, interval time.Duration, streams, size int) *streamPlan {
	return &streamPlan{start: make(chan struct{}), Duration: d, Interval: interval, Streams: streams, EventSize: size}
}

// begin starts emission at t (a moment shortly in the future).
func (p *streamPlan) begin(t time.Time) {
	p.startAt = t
	close(p.start)
}

// maxEventsPerStream bounds every emission loop besides its duration.
const maxEventsPerStream = 50_000_000

// keepaliveEvery is how often an idle mock stream sends a comment.
const keepaliveEvery = 15 * time.Second

func (u *upstream) serveStream(w http.ResponseWriter, r *http.Request) {
	if _, ok := u.sessions.Load(r.Header.Get("Mcp-Session-Id")); !ok {
		u.badSession.Add(1)
		writeJSON(w, http.StatusNotFound, `{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"session not found"}}`)
		return
	}
	if !strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
		u.other.Add(1)
		http.Error(w, "GET needs Accept: text/event-stream", http.StatusNotAcceptable)
		return
	}
	// Counted before the headers go out, so a client that has them sees
	// its stream counted.
	u.streamsTotal.Add(1)
	u.streamsOpen.Add(1)
	defer u.streamsOpen.Add(-1)
	rc, ok := openEventStream(w)
	if !ok {
		return
	}

	ctx := r.Context()
	if p := u.plan.Load(); p != nil {
		select {
		case <-p.start:
		case <-ctx.Done():
			return
		}
		_ = p.emit(ctx, w, rc)
		return
	}
	t := time.NewTicker(keepaliveEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := io.WriteString(w, ": keepalive\n\n"); err != nil {
				return
			}
			if rc.Flush() != nil {
				return
			}
		}
	}
}

// openEventStream answers with text/event-stream headers and a ": open"
// comment, flushed at once; false when the client is gone.
func openEventStream(w http.ResponseWriter) (*http.ResponseController, bool) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if _, err := io.WriteString(w, ": open\n\n"); err != nil {
		return nil, false
	}
	return rc, rc.Flush() == nil
}

// isStreamTool reports whether a tools/call body calls toolStream.
func isStreamTool(body []byte) bool {
	var m struct {
		Params struct {
			Name string `json:"name"`
		} `json:"params"`
	}
	return json.Unmarshal(body, &m) == nil && m.Params.Name == toolStream
}

// serveAnswerStream answers a tools/call of toolStream with an SSE stream
// of the plan's events, as a GET stream gets them, and then the call's
// result: the answer an MCP server gives a call that sends notifications
// before its result. A call whose stream broke before the result counts
// as abandoned.
func (u *upstream) serveAnswerStream(w http.ResponseWriter, r *http.Request, p *streamPlan, id json.RawMessage) {
	u.streamsTotal.Add(1)
	u.streamsOpen.Add(1)
	defer u.streamsOpen.Add(-1)
	rc, ok := openEventStream(w)
	if !ok {
		u.abandoned.Add(1)
		return
	}
	ctx := r.Context()
	select {
	case <-p.start:
	case <-ctx.Done():
		u.abandoned.Add(1)
		return
	}
	if !p.emit(ctx, w, rc) {
		u.abandoned.Add(1)
		return
	}
	result := `data: {"jsonrpc":"2.0","id":` + string(idOrNull(id)) + `,"result":{"content":[{"type":"text","text":"ok"}]}}` + "\n\n"
	if _, err := io.WriteString(w, result); err != nil || rc.Flush() != nil {
		u.abandoned.Add(1)
		return
	}
	u.served.Add(1)
}

// emit writes the plan's events to one stream, each flushed on its own,
// as an MCP server sends its messages. It reports whether the emission
// ran to its end: no write failed and the request was not cancelled.
func (p *streamPlan) emit(ctx context.Context, w io.Writer, rc *http.ResponseController) bool {
	k := p.next.Add(1) - 1
	start := p.startAt
	if p.Interval > 0 && p.Streams > 0 {
		// Spread the streams evenly over one interval.
		start = start.Add(time.Duration(k%int64(p.Streams)) * p.Interval / time.Duration(p.Streams))
	}
	end := p.startAt.Add(p.Duration)
	if d := time.Until(start); d > 0 {
		if !sleepCtx(ctx, d) {
			return false
		}
	}
	buf := make([]byte, 0, p.EventSize+64)
	var sent, lagged int64
	var maxLag time.Duration
	writeErr := false
	for seq := int64(1); seq <= maxEventsPerStream; seq++ {
		now := time.Now()
		if p.Interval > 0 {
			at := start.Add(time.Duration(seq-1) * p.Interval)
			if !at.Before(end) {
				break
			}
			if d := at.Sub(now); d > 0 {
				if !sleepCtx(ctx, d) {
					break
				}
			} else if lag := -d; lag > time.Millisecond {
				lagged++
				maxLag = max(maxLag, lag)
			}
		} else if !now.Before(end) || ctx.Err() != nil {
			break
		}
		buf = appendStreamEvent(buf[:0], seq, time.Now().UnixNano(), p.EventSize)
		if _, err := w.Write(buf); err != nil {
			writeErr = true
			break
		}
		if rc.Flush() != nil {
			writeErr = true
			break
		}
		sent++
	}
	p.mu.Lock()
	p.sent += sent
	p.lagged += lagged
	p.maxLag = max(p.maxLag, maxLag)
	if writeErr {
		p.writeEr++
	}
	p.mu.Unlock()
	return !writeErr && ctx.Err() == nil
}

// sleepCtx sleeps for d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// appendStreamEvent appends one SSE event of exactly size bytes (when
// size allows; never shorter than the envelope): a JSON-RPC
// notifications/message whose data carries the sequence number and the
// send time in ns, padded to size.
func appendStreamEvent(dst []byte, seq, ts int64, size int) []byte {
	start := len(dst)
	dst = append(dst, `data: {"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":{"seq":`...)
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, ts, 10)
	dst = append(dst, `,"pad":"`...)
	const tail = `"}}}` + "\n\n"
	pad := size - (len(dst) - start) - len(tail)
	for range max(pad, 0) {
		dst = append(dst, 'x')
	}
	return append(dst, tail...)
}

var (
	seqKey = []byte(`"seq":`)
	tsKey  = []byte(`"ts":`)
)

// parseStreamEvent reads seq and ts from an event's data line (with or
// without the "data: " prefix).
func parseStreamEvent(line []byte) (seq, ts int64, ok bool) {
	seq, ok1 := intAfter(line, seqKey)
	ts, ok2 := intAfter(line, tsKey)
	return seq, ts, ok1 && ok2
}

func intAfter(b, key []byte) (int64, bool) {
	i := bytes.Index(b, key)
	if i < 0 {
		return 0, false
	}
	b = b[i+len(key):]
	var n int64
	digits := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int64(c-'0')
		digits++
		if digits > 19 {
			return 0, false
		}
	}
	return n, digits > 0
}

// streamTally is what a client saw on one SSE stream.
type streamTally struct {
	Events     int64 // events with a valid seq and ts
	InWindow   int64 // of which received inside the measurement window
	Gaps       int64 // events missing between two received ones
	Reordered  int64 // seq at or below one already seen
	Corrupt    int64 // data lines of the wrong size or without seq/ts, other than JSON-RPC responses
	Comments   int64 // comment lines (keepalives)
	LastSeq    int64
	Bytes      int64
	First      time.Time
	Last       time.Time
	Lat        []time.Duration // receive time − send timestamp, at most maxLat samples
	EndErr     error           // nil on a clean end of the stream
	Ended      time.Time       // when the stream ended
	maxLat     int
	windowFrom time.Time
	windowTo   time.Time
	// Bins counts the events received in each rateBin of the window.
	Bins []int64

	// Results and RPCErrors count the JSON-RPC responses on the stream
	// (an SSE answer ends with the call's result; a proxy may put an
	// error in its place); they are not events. FirstRPCError is the
	// first error's code and message.
	Results, RPCErrors int64
	FirstRPCError      string
}

// rateBin is the width of the bins of events received over time.
const rateBin = 100 * time.Millisecond

// eventPayloadLen is the length of the data value of an event that
// appendStreamEvent made size bytes long.
func eventPayloadLen(size int) int { return size - len("data: ") - 2 }

// dataValue returns a data line's value: after "data:" and one optional
// space, without the line end.
func dataValue(line []byte) []byte {
	v := bytes.TrimPrefix(line, []byte("data:"))
	v = bytes.TrimPrefix(v, []byte(" "))
	v = bytes.TrimSuffix(v, []byte("\n"))
	return bytes.TrimSuffix(v, []byte("\r"))
}

// readStream reads SSE events from body until it ends; each data value
// must be of dataLen bytes (0: any).
func readStream(body io.Reader, t *streamTally, dataLen int) {
	defer func() { t.Ended = time.Now() }()
	br := bufio.NewReaderSize(body, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			now := time.Now()
			t.Bytes += int64(len(line))
			t.line(line, now, dataLen)
		}
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				t.Corrupt++
				// Skip the rest of the over-long line.
				for errors.Is(err, bufio.ErrBufferFull) {
					_, err = br.ReadSlice('\n')
				}
				if err == nil {
					continue
				}
			}
			if !errors.Is(err, io.EOF) {
				t.EndErr = err
			}
			return
		}
	}
}

// line handles one SSE line received at now.
func (t *streamTally) line(line []byte, now time.Time, dataLen int) {
	switch {
	case len(line) > 0 && line[0] == ':':
		t.Comments++
	case bytes.HasPrefix(line, []byte("data:")):
		seq, ts, ok := parseStreamEvent(line)
		if !ok && t.rpcResponse(dataValue(line)) {
			return
		}
		if !ok || (dataLen > 0 && len(dataValue(line)) != dataLen) {
			t.Corrupt++
			return
		}
		t.Events++
		if t.First.IsZero() {
			t.First = now
		}
		t.Last = now
		if !t.windowFrom.IsZero() && !now.Before(t.windowFrom) && !now.After(t.windowTo) {
			t.InWindow++
			if b := int(now.Sub(t.windowFrom) / rateBin); b < len(t.Bins) {
				t.Bins[b]++
			}
		}
		switch {
		case seq <= t.LastSeq:
			t.Reordered++
		case seq > t.LastSeq+1:
			t.Gaps += seq - t.LastSeq - 1
			t.LastSeq = seq
		default:
			t.LastSeq = seq
		}
		if len(t.Lat) < t.maxLat {
			t.Lat = append(t.Lat, now.Sub(time.Unix(0, ts)))
		}
	}
}

// rpcResponse counts a data value that is a JSON-RPC response (an id and
// a result or an error) and reports whether it was one.
func (t *streamTally) rpcResponse(v []byte) bool {
	var m struct {
		ID     json.RawMessage `json:"id"`
		Result json.RawMessage `json:"result"`
		Error  *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(v, &m) != nil || len(m.ID) == 0 || (m.Result == nil) == (m.Error == nil) {
		return false
	}
	if m.Error != nil {
		t.RPCErrors++
		if t.FirstRPCError == "" {
			t.FirstRPCError = fmt.Sprintf("%d %s", m.Error.Code, m.Error.Message)
		}
		return true
	}
	t.Results++
	return true
}

// streamCallBody is the JSON-RPC tools/call of toolStream with id n.
func streamCallBody(n int64) []byte {
	b := append([]byte(`{"jsonrpc":"2.0","id":`), strconv.FormatInt(n, 10)...)
	return append(b, `,"method":"tools/call","params":{"name":"`+toolStream+`","arguments":{}}}`...)
}

// openAnswer sends a tools/call of toolStream with id n in session sid
// and returns the response once its headers are in; it must be an SSE
// answer.
func openAnswer(ctx context.Context, c *http.Client, url, sid string, n int64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(streamCallBody(n)))
	if err != nil {
		return nil, err
	}
	setMCPHeaders(req.Header, sid)
	return doStream(c, req, "tools/call "+toolStream)
}

// doStream sends req and returns its response once its headers are in,
// or an error naming what, the status and the start of the body unless
// it is a 200 text/event-stream.
func doStream(c *http.Client, req *http.Request, what string) (*http.Response, error) {
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("%s: status %d, Content-Type %q: %s", what, resp.StatusCode, resp.Header.Get("Content-Type"), bytes.TrimSpace(b))
	}
	return resp, nil
}

// openStream opens an MCP session's GET SSE stream and returns the
// response once its headers are in.
func openStream(ctx context.Context, c *http.Client, url, sid string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header["Accept"] = []string{"text/event-stream"}
	req.Header["Mcp-Protocol-Version"] = []string{protocolVersion}
	req.Header["Mcp-Session-Id"] = []string{sid}
	return doStream(c, req, "GET stream")
}
