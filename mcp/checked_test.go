package mcp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

const testWindow = 96

func pad(n int) string { return strings.Repeat("x", n) }

// streamEvery streams body through a CheckedBody over its first window
// bytes with the rest read in every chunk size, into reads of several
// sizes, and checks the outcome: with want nil the very bytes, else an
// error matching want and a body that stops short of its end.
func streamEvery(t *testing.T, body string, window int, limit int64, want error) {
	t.Helper()
	for chunk := 1; chunk <= len(body)-window+1; chunk++ {
		for _, out := range []int{1, 2, 3, 7, 64, 4096} {
			got, err := readChecked([]byte(body), window, chunk, out, limit)
			if want == nil {
				if err != nil || string(got) != body {
					t.Fatalf("chunk %d out %d: err %v, got %q", chunk, out, err, got)
				}
				continue
			}
			if !errors.Is(err, want) {
				t.Fatalf("chunk %d out %d: err %v, want %v", chunk, out, err, want)
			}
			if len(got) >= len(body) || !strings.HasPrefix(body, string(got)) || json.Valid(got) {
				t.Fatalf("chunk %d out %d: aborted body passed %q", chunk, out, got)
			}
		}
	}
}

func TestCheckedBody(t *testing.T) {
	x := pad(200)
	tests := []struct {
		name  string
		body  string
		limit int64
		err   error
	}{
		{"go-sdk tools/call", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":"t"},"name":"x","arguments":{"a":"` + x + `"}}}`, 0, nil},
		{"typescript tools/call", `{"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}},"jsonrpc":"2.0","id":2}`, 0, nil},
		{"typescript progress token", `{"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"},"_meta":{"progressToken":2}},"jsonrpc":"2.0","id":2}`, 0, nil},
		{"typescript response", `{"result":{"content":[{"type":"text","text":"` + x + `"}]},"jsonrpc":"2.0","id":5}`, 0, nil},
		{"error response late null id", `{"error":{"code":1,"message":"` + x + `"},"jsonrpc":"2.0","id":null}`, 0, nil},
		{"notification", `{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"` + x + `"}}`, 0, nil},
		{"multi-byte runes", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + strings.Repeat("é€😀", 30) + `"}}}`, 0, nil},
		{"escapes", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + strings.Repeat(`\"\\\u00e9\ud83d\ude00`, 10) + `"}}}`, 0, nil},
		{"trailing whitespace", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + "\"}}}\r\n \t\n", 0, nil},
		{"completion", `{"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"g"},"argument":{"name":"a","value":"` + x + `"}},"jsonrpc":"2.0","id":1}`, 0, nil},
		{"late second ref", `{"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"g"},"argument":{"value":"` + x + `"},"ref":{"type":"ref/prompt","name":"admin_reset"}},"jsonrpc":"2.0","id":1}`, 0, ErrAmbiguous},
		{"late ref variant", `{"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"g"},"argument":{"value":"` + x + `"},"REF":{"type":"ref/prompt","name":"admin_reset"}},"jsonrpc":"2.0","id":1}`, 0, ErrAmbiguous},
		{"late ref of another method", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"},"ref":{"type":"ref/prompt","name":"admin_reset"}}}`, 0, nil},
		{"other late keys", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `","method":"y","Name":"z"},"task":{}},"extra":{"method":1}}`, 0, nil},

		{"late method", `{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":"` + x + `"},"method":"tools/call"}`, 0, ErrAmbiguous},
		{"late escaped method", `{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":"` + x + `"},"\u006dethod":"tools/call"}`, 0, ErrAmbiguous},
		{"late case variant method", `{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":"` + x + `"},"Method":"tools/call"}`, 0, ErrAmbiguous},
		{"late long s variant", `{"jsonrpc":"2.0","id":1,"method":"x/y","pad":"` + x + `","paramſ":{"name":"sleep"}}`, 0, ErrAmbiguous},
		{"late params", `{"jsonrpc":"2.0","id":1,"method":"x/y","pad":"` + x + `","params":{"name":"sleep"}}`, 0, ErrLateEnvelope},
		{"late result", `{"jsonrpc":"2.0","id":1,"method":"x/y","pad":"` + x + `","result":{}}`, 0, ErrLateEnvelope},
		{"late name", `{"jsonrpc":"2.0","id":1,"method":"x/y","params":{"pad":"` + x + `","name":"sleep"}}`, 0, ErrLateEnvelope},
		{"late uri", `{"jsonrpc":"2.0","id":1,"method":"x/y","params":{"pad":"` + x + `","uri":"file:///etc"}}`, 0, ErrLateEnvelope},
		{"late second name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":"` + x + `"},"name":"sleep"}}`, 0, ErrAmbiguous},
		{"late escaped name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":"` + x + `"},"\u006eame":"sleep"}}`, 0, ErrAmbiguous},
		{"late ref of another method variant", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"},"rEf":{}}}`, 0, ErrAmbiguous},
		{"late ref member variant", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"},"ref":{"name":"a","NAME":"b"}}}`, 0, ErrAmbiguous},
		// Another method's params may hold a ref of another shape.
		{"late ref member type of another method", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"},"ref":{"name":1}}}`, 0, nil},
		{"late ref type of another method", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"},"ref":"x"}}`, 0, nil},
		{"late meta version", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}`, 0, ErrLateEnvelope},
		{"late meta version variant", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"a":"` + x + `","io.modelcontextprotocol/protocolversion":"2026-07-28"}}}`, 0, ErrAmbiguous},
		{"late id of a notification", `{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"` + x + `"},"id":1}`, 0, ErrLateEnvelope},
		{"late null id of a request", `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}},"id":null}`, 0, ErrLateEnvelope},
		{"late object id", `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}},"id":{}}`, 0, ErrInvalidID},
		{"request without id", `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}}}`, 0, ErrNotEnvelope},
		{"result late null id", `{"result":{"a":"` + x + `"},"jsonrpc":"2.0","id":null}`, 0, ErrNotEnvelope},
		{"response without id", `{"result":{"a":"` + x + `"},"jsonrpc":"2.0"}`, 0, ErrNotEnvelope},
		{"late wrong version", `{"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}},"jsonrpc":"1.0","id":2}`, 0, ErrJSONRPCVersion},
		{"late escaped wrong version", `{"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}},"jsonrpc":"2\u002e1","id":2}`, 0, ErrJSONRPCVersion},
		{"no version", `{"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}},"id":2}`, 0, ErrJSONRPCVersion},
		{"trailing garbage", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}}} x`, 0, ErrMalformed},
		{"second message", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}}}{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"sleep"}}`, 0, ErrMalformed},
		{"malformed tail", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `",}}}`, 0, ErrMalformed},
		{"invalid UTF-8 in the tail", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"x\",\"arguments\":{\"a\":\"" + x + "\xe2\x82\"}}}", 0, ErrMalformed},
		{"incomplete body", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}}`, 0, ErrMalformed},
		{"too deep", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":` + strings.Repeat("[", maxNesting) + strings.Repeat("]", maxNesting) + `}}`, 0, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Peek
			if err := ParseEnvelope([]byte(tt.body[:testWindow]), false, &p); err != nil {
				t.Fatalf("head refused: %v", err)
			}
			if tt.name == "too deep" {
				// Every chunk size would take long: a few suffice.
				for _, chunk := range []int{1, 7, 4096} {
					if _, err := readChecked([]byte(tt.body), testWindow, chunk, 512, 0); !errors.Is(err, tt.err) {
						t.Fatalf("err %v", err)
					}
				}
				return
			}
			streamEvery(t, tt.body, testWindow, tt.limit, tt.err)
			if tt.err == nil {
				if err := checkAgreement([]byte(tt.body), &p, true); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestCheckedBodyLimit(t *testing.T) {
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + pad(300) + `"}}}`
	n := int64(len(body))
	streamEvery(t, body, testWindow, n, nil)
	streamEvery(t, body, testWindow, n-1, ErrBodyTooLarge)
	streamEvery(t, body+"\n", testWindow, n, ErrBodyTooLarge)
	if _, err := readChecked([]byte(body), testWindow, 10, 10, testWindow-1); !errors.Is(err, ErrBodyTooLarge) {
		t.Fatalf("head over the limit: %v", err)
	}
	// Whitespace after the message is held back, within a bound.
	if _, err := readChecked([]byte(body+strings.Repeat(" ", maxTrailing)), testWindow, 512, 512, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := readChecked([]byte(body+strings.Repeat(" ", maxTrailing+1)), testWindow, 512, 512, 0); !errors.Is(err, errTrailing) {
		t.Fatalf("err %v", err)
	}
}

// endReader serves data, then reports how much the reader of the checked
// body had received when it returned EOF.
type endReader struct {
	r        *bytes.Reader
	received *int
	atEOF    int
}

func (e *endReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		e.atEOF = *e.received
	}
	return n, err
}

func (e *endReader) Close() error { return nil }

// TestCheckedBodyHoldsLastByte checks that nothing past the last byte but
// one, and never the message's closing brace, is passed on before the
// original body ended.
func TestCheckedBodyHoldsLastByte(t *testing.T) {
	for _, body := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + pad(100) + `"}}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + pad(100) + "\"}}}\n\n",
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + pad(100),
	} {
		for _, out := range []int{1, 2, 5, 4096} {
			received := 0
			er := &endReader{r: bytes.NewReader([]byte(body[testWindow:])), received: &received}
			cb := NewCheckedBody([]byte(body[:testWindow]), er, 0)
			buf := make([]byte, out)
			for {
				n, err := cb.Read(buf)
				received += n
				if err != nil {
					break
				}
			}
			closing := strings.LastIndexByte(body, '}')
			if closing < 0 {
				closing = len(body) - 1
			}
			if er.atEOF > closing {
				t.Fatalf("%q, reads of %d: %d bytes passed on before the end", body, out, er.atEOF)
			}
		}
	}
}

type failingReader struct{ n int }

var errRead = errors.New("connection reset")

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errRead
	}
	n := min(f.n, len(p))
	for i := range p[:n] {
		p[i] = 'x'
	}
	f.n -= n
	return n, nil
}

func (f *failingReader) Close() error { return nil }

func TestCheckedBodyReadError(t *testing.T) {
	head := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"`
	cb := NewCheckedBody([]byte(head), &failingReader{n: 100}, 0)
	got, err := io.ReadAll(cb)
	if !errors.Is(err, errRead) || !errors.Is(cb.Err(), errRead) {
		t.Fatalf("err %v, Err %v", err, cb.Err())
	}
	if len(got) >= len(head)+100 {
		t.Fatalf("passed %d bytes", len(got))
	}
	if _, err := cb.Read(make([]byte, 10)); !errors.Is(err, errRead) {
		t.Fatalf("read after the error: %v", err)
	}
	ok := NewCheckedBody([]byte(`{"jsonrpc":"2.0","method":"ping"}`), io.NopCloser(strings.NewReader("")), 0)
	if b, err := io.ReadAll(ok); err != nil || ok.Err() != nil || string(b) != `{"jsonrpc":"2.0","method":"ping"}` {
		t.Fatalf("%q %v %v", b, err, ok.Err())
	}
}

func BenchmarkCheckedBody(b *testing.B) {
	body := []byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + strings.Repeat("hello world ", 20000) + `"}}}`)
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		cb := NewCheckedBody(body[:64<<10], io.NopCloser(bytes.NewReader(body[64<<10:])), 0)
		for {
			_, err := cb.Read(buf)
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}

// TestCheckedBodyEveryCut cuts bodies after every byte: wherever the peek
// accepts the head, the checked body either passes unchanged and reads
// the same as the decoders, or stops short of a complete message.
// TestCheckedBodyLateRef checks that the check refuses the ref of a
// completion/complete that ends after the head, whose reading the peek
// refuses itself (ErrTooLarge): the check does not count on that.
func TestCheckedBodyLateRef(t *testing.T) {
	x := pad(200)
	for _, body := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"argument":{"name":"a","value":"` + x + `"},"ref":{"type":"ref/prompt","name":"admin_reset"}}}`,
		`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"argument":{"name":"a","value":"` + x + `"},"ref":null}}`,
		`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","pad":"` + x + `","name":"admin_reset"}}}`,
		`{"jsonrpc":"2.0","id":1,"params":{"ref":{"type":"ref/prompt","name":"admin_reset","pad":"` + x + `"}},"method":"completion/complete"}`,
	} {
		var p Peek
		if err := ParseEnvelope([]byte(body[:testWindow]), false, &p); !errors.Is(err, ErrTooLarge) {
			t.Errorf("%.60s…: head read with %v, want ErrTooLarge", body, err)
		}
		streamEvery(t, body, testWindow, 0, ErrLateEnvelope)
	}
}

func TestCheckedBodyEveryCut(t *testing.T) {
	x := pad(40)
	for _, body := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":"t"},"name":"x","arguments":{"a":"` + x + `"}}}`,
		`{"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"},"_meta":{"progressToken":1}},"jsonrpc":"2.0","id":2}`,
		`{"jsonrpc":"2.0","id":"r","method":"resources/read","params":{"uri":"file:///a","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","p":"` + x + `"}}}`,
		`{"result":{"content":[{"type":"text","text":"` + x + `"}]},"jsonrpc":"2.0","id":5}`,
		`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"r1","reason":"` + x + `"}}`,
		`{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":"` + x + `"},"method":"tools/call"}`,
		`{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":"` + x + `"},"\u006dethod":"tools/call"}`,
		`{"jsonrpc":"2.0","id":1,"method":"x/y","pad":"` + x + `","params":{"name":"sleep"}}`,
		`{"jsonrpc":"2.0","id":1,"method":"x/y","params":{"pad":"` + x + `","name":"sleep"}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":"` + x + `"},"\u006eame":"sleep"}}`,
		`{"jsonrpc":"2.0","id":1,"method":"x/y","params":{"arguments":{"a":"` + x + `"},"_meta":{"io.modelcontextprotocol/protocolVersion":"1"}}}`,
		`{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"` + x + `"},"id":1}`,
		`{"jsonrpc":"2.0","method":"x/y","params":{"data":"` + x + `"}}`,
		`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"admin_reset"},"argument":{"name":"a","value":"` + x + `"}}}`,
		`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"argument":{"name":"a","value":"` + x + `"},"ref":{"type":"ref/resource","uri":"file:///secret/{n}"}}}`,
		`{"params":{"argument":{"value":"` + x + `"},"ref":{"uri":"file:///secret/{n}","type":"ref/resource"}},"method":"completion/complete","jsonrpc":"2.0","id":1}`,
		`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greet"},"argument":{"value":"` + x + `"},"Ref":{"name":"admin_reset"}}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"},"ref":{"type":"ref/prompt","name":"admin_reset","name":"b"}}}`,
		`{"jsonrpc":"2.0","id":1,"result":{},"pad":"` + x + `","\u006dethod":"tools/call","params":{"name":"sleep"}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}` + " \n" + `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"sleep"}}`,
	} {
		for cut := 1; cut < len(body); cut++ {
			for _, chunk := range []int{1, 3, 64} {
				if err := checkBody([]byte(body), cut, chunk); err != nil {
					t.Fatalf("%s cut %d chunk %d: %v", body, cut, chunk, err)
				}
			}
		}
	}
}

// TestCheckedBodyLateID: the id of a message that follows the head is
// known, exactly as the client wrote it, once the body has been read to
// its end, and not before; an id in the head, a null id and a string id
// over 256 bytes give none.
func TestCheckedBodyLateID(t *testing.T) {
	x := pad(200)
	long := strings.Repeat("i", 257)
	for _, c := range []struct{ body, want string }{
		{`{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}},"id":63}`, `63`},
		{`{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}},"id":-7 }`, `-7`},
		{`{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}},"id":"a\u00e9\"b\\/` + "\xc3\xa9" + `"}`, `"a\u00e9\"b\\/` + "\xc3\xa9" + `"`},
		{`{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}},"id":"` + strings.Repeat("i", 256) + `"}`, `"` + strings.Repeat("i", 256) + `"`},
		{`{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}},"id":"` + long + `"}`, ``},
		{`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}}}`, ``},
		{`{"jsonrpc":"2.0","error":{"code":1,"message":"` + x + `"},"id":null}`, ``},
		{`{"jsonrpc":"2.0","result":{"a":"` + x + `"},"id":"r1"}`, `"r1"`},
	} {
		for _, chunk := range []int{1, 7, 4096} {
			cb := NewCheckedBody([]byte(c.body[:testWindow]), io.NopCloser(strings.NewReader(c.body[testWindow:])), 0)
			buf := make([]byte, chunk)
			var got []byte
			for {
				if id := cb.LateID(); id != "" {
					t.Fatalf("%.50s… chunk %d: id %s known after %d of %d bytes", c.body, chunk, id, len(got), len(c.body))
				}
				n, err := cb.Read(buf)
				got = append(got, buf[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("%.50s… chunk %d: %v", c.body, chunk, err)
				}
				if len(got) == len(c.body) {
					break
				}
			}
			if string(got) != c.body {
				t.Fatalf("%.50s…: body changed", c.body)
			}
			if id := cb.LateID(); id != c.want {
				t.Errorf("%.50s… chunk %d: LateID %q, want %q", c.body, chunk, id, c.want)
			}
		}
	}
}

// TestCheckedBodyOnEnd: OnEnd's func is called once, with the late id,
// when the body has ended and checked out, before the reader has its last
// byte; a body that fails never calls it.
func TestCheckedBodyOnEnd(t *testing.T) {
	x := pad(200)
	for _, c := range []struct{ body, want string }{
		{`{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}},"id":63}`, `63`},
		{`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}}}`, ``},
	} {
		for _, chunk := range []int{1, 4096} {
			cb := NewCheckedBody([]byte(c.body[:testWindow]), io.NopCloser(strings.NewReader(c.body[testWindow:])), 0)
			calls, got, atLen := 0, "", -1
			var read []byte
			cb.OnEnd(func(id string) error {
				calls, got, atLen = calls+1, id, len(read)
				return nil
			})
			buf := make([]byte, chunk)
			for {
				n, err := cb.Read(buf)
				read = append(read, buf[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if calls != 1 || got != c.want || atLen < 0 || atLen >= len(c.body) {
				t.Errorf("%.40s… chunk %d: called %d times with %q after %d of %d bytes", c.body, chunk, calls, got, atLen, len(c.body))
			}
		}
	}
	bad := `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}},"id":63,"method":"y"}`
	cb := NewCheckedBody([]byte(bad[:testWindow]), io.NopCloser(strings.NewReader(bad[testWindow:])), 0)
	called := false
	cb.OnEnd(func(string) error {
		called = true
		return nil
	})
	_, _ = io.ReadAll(cb)
	if called {
		t.Error("OnEnd called for a body that failed its check")
	}

	// An error of OnEnd's function aborts the body before its last byte.
	good := `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x","arguments":{"a":"` + x + `"}},"id":63}`
	cb = NewCheckedBody([]byte(good[:testWindow]), io.NopCloser(strings.NewReader(good[testWindow:])), 0)
	cb.OnEnd(func(id string) error { return fmt.Errorf("%w: %s", ErrIDInUse, id) })
	read, err := io.ReadAll(cb)
	if !errors.Is(err, ErrIDInUse) || !errors.Is(cb.Err(), ErrIDInUse) || len(read) >= len(good) {
		t.Errorf("OnEnd's error: read %d of %d bytes, err %v, Err %v; want the body aborted with it before its end", len(read), len(good), err, cb.Err())
	}
	if id := cb.LateID(); id != "63" {
		t.Errorf("LateID of the aborted body = %q, want 63", id)
	}
}
