package mcp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// stdMessage is a message as encoding/json reads it: keys match fields
// case-insensitively, the last duplicate wins.
type stdMessage struct {
	JSONRPC *string         `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  *string         `json:"method"`
	Params  *struct {
		Name            string                     `json:"name"`
		URI             string                     `json:"uri"`
		ProtocolVersion string                     `json:"protocolVersion"`
		Meta            map[string]json.RawMessage `json:"_meta"`
		// Ref is read as a reference by completion/complete only.
		Ref json.RawMessage `json:"ref"`
	} `json:"params"`
	Result json.RawMessage `json:"result"`
	Error  json.RawMessage `json:"error"`
}

// reading is what a decoder read of one message, in the terms of Envelope.
type reading struct {
	jsonrpc     string
	hasMethod   bool
	method      string
	id          string // canonical JSON of a non-null id, "" otherwise
	idNull      bool
	response    bool
	name        string
	version     string
	metaVersion string
	refType     string // of a completion/complete
	refTarget   string
}

// canonicalID returns the id in a canonical JSON form: strings decoded and
// re-encoded, numbers as written.
func canonicalID(raw []byte) (string, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return "", err
	}
	switch v := v.(type) {
	case string:
		b, _ := json.Marshal(v)
		return string(b), nil
	case json.Number:
		return string(v), nil
	case nil:
		return "", nil
	}
	return "", fmt.Errorf("id of type %T", v)
}

func (m *stdMessage) reading() (reading, error) {
	var r reading
	if m.JSONRPC != nil {
		r.jsonrpc = *m.JSONRPC
	}
	if m.Method != nil {
		r.hasMethod, r.method = true, *m.Method
	}
	if len(m.ID) > 0 {
		id, err := canonicalID(m.ID)
		if err != nil {
			return r, err
		}
		r.id, r.idNull = id, id == ""
	}
	r.response = len(m.Result) > 0 || len(m.Error) > 0
	if p := m.Params; p != nil {
		r.name = upstreamTarget(r.method, p.Name, p.URI)
		r.version = p.ProtocolVersion
		if len(p.Ref) > 0 && string(p.Ref) != "null" && r.method == "completion/complete" {
			var ref struct {
				Type string `json:"type"`
				Name string `json:"name"`
				URI  string `json:"uri"`
			}
			if err := json.Unmarshal(p.Ref, &ref); err != nil {
				return r, err
			}
			r.refType, r.refTarget = ref.Type, upstreamRefTarget(ref.Type, ref.Name, ref.URI)
		}
		if raw, ok := p.Meta[metaVersionKey]; ok {
			if err := json.Unmarshal(raw, &r.metaVersion); err != nil {
				return r, err
			}
		}
	}
	return r, nil
}

// stdRead decodes body with encoding/json.
func stdRead(body []byte) ([]reading, error) {
	var msgs []stdMessage
	if t := bytes.TrimLeft(body, " \t\r\n"); len(t) > 0 && t[0] == '[' {
		if err := json.Unmarshal(body, &msgs); err != nil {
			return nil, err
		}
	} else {
		msgs = make([]stdMessage, 1)
		if err := json.Unmarshal(body, &msgs[0]); err != nil {
			return nil, err
		}
	}
	out := make([]reading, len(msgs))
	for i := range msgs {
		r, err := msgs[i].reading()
		if err != nil {
			return nil, err
		}
		out[i] = r
	}
	return out, nil
}

// strictRead decodes body with a token reader that matches keys exactly and
// refuses a key of the message or its params that repeats (with members,
// only a key it reads).
func strictRead(body []byte, members bool) ([]reading, error) {
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	tok, err := d.Token()
	if err != nil {
		return nil, err
	}
	var out []reading
	if tok == json.Delim('[') {
		for d.More() {
			if tok, err = d.Token(); err != nil {
				return nil, err
			}
			r, err := strictMessage(d, tok, members)
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
		if _, err := d.Token(); err != nil {
			return nil, err
		}
	} else {
		r, err := strictMessage(d, tok, members)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, fmt.Errorf("data after the value: %v", err)
	}
	return out, nil
}

// strictObject walks the members of an object whose '{' was read, calling
// member with each key; member reads the value. A key that repeats is
// refused when read(key) (every key when read is nil).
func strictObject(d *json.Decoder, open json.Token, read func(string) bool, member func(key string) error) error {
	if open != json.Delim('{') {
		return fmt.Errorf("not an object: %v", open)
	}
	seen := map[string]bool{}
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			return err
		}
		key := tok.(string)
		if seen[key] && (read == nil || read(key)) {
			return fmt.Errorf("duplicate key %q", key)
		}
		seen[key] = true
		if err := member(key); err != nil {
			return err
		}
	}
	_, err := d.Token()
	return err
}

func skipValue(d *json.Decoder) error {
	var raw json.RawMessage
	return d.Decode(&raw)
}

func strictString(d *json.Decoder, nullOK bool) (string, error) {
	tok, err := d.Token()
	if err != nil {
		return "", err
	}
	switch v := tok.(type) {
	case string:
		return v, nil
	case nil:
		if nullOK {
			return "", nil
		}
	}
	return "", fmt.Errorf("not a string: %v", tok)
}

func isMetaKey(k string) bool { return k == metaVersionKey }

func strictMessage(d *json.Decoder, open json.Token, members bool) (reading, error) {
	var r reading
	var name, uri, refType, refName, refURI string
	var refErr error
	var envRead, parRead, refRead func(string) bool
	if members {
		envRead = func(k string) bool { return exactMember([]byte(k), setEnvelope) >= 0 }
		parRead = func(k string) bool { return exactMember([]byte(k), setParams) >= 0 }
		refRead = func(k string) bool { return exactMember([]byte(k), setRef) >= 0 }
	}
	err := strictObject(d, open, envRead, func(key string) error {
		var err error
		switch key {
		case "jsonrpc":
			r.jsonrpc, err = strictString(d, false)
		case "method":
			r.hasMethod = true
			r.method, err = strictString(d, false)
		case "id":
			var raw json.RawMessage
			if err = d.Decode(&raw); err == nil {
				r.id, err = canonicalID(raw)
				r.idNull = r.id == ""
			}
		case "result", "error":
			r.response = true
			err = skipValue(d)
		case "params":
			tok, err := d.Token()
			if err != nil || tok == nil {
				return err
			}
			err = strictObject(d, tok, parRead, func(key string) error {
				var err error
				switch key {
				case "name":
					name, err = strictString(d, true)
				case "uri":
					uri, err = strictString(d, true)
				case "protocolVersion":
					r.version, err = strictString(d, true)
				case "ref":
					// Its keys must be unambiguous in any method; its
					// types matter to completion/complete only.
					var raw json.RawMessage
					if err := d.Decode(&raw); err != nil {
						return err
					}
					rd := json.NewDecoder(bytes.NewReader(raw))
					tok, err := rd.Token()
					if err != nil || tok == nil {
						return err
					}
					if delim, ok := tok.(json.Delim); !ok || delim != '{' {
						refErr = fmt.Errorf("not an object: %v", tok)
						return nil
					}
					return strictObject(rd, tok, refRead, func(key string) error {
						var v json.RawMessage
						if err := rd.Decode(&v); err != nil {
							return err
						}
						if key != "type" && key != "name" && key != "uri" {
							return nil
						}
						var str string
						if string(v) != "null" && json.Unmarshal(v, &str) != nil {
							if refErr == nil {
								refErr = fmt.Errorf("not a string: %s", v)
							}
							return nil
						}
						switch key {
						case "type":
							refType = str
						case "name":
							refName = str
						case "uri":
							refURI = str
						}
						return nil
					})
				case "_meta":
					tok, err := d.Token()
					if err != nil || tok == nil {
						return err
					}
					return strictObject(d, tok, isMetaKey, func(key string) error {
						if key == metaVersionKey {
							var err error
							r.metaVersion, err = strictString(d, true)
							return err
						}
						return skipValue(d)
					})
				default:
					err = skipValue(d)
				}
				return err
			})
			return err
		default:
			err = skipValue(d)
		}
		return err
	})
	r.name = upstreamTarget(r.method, name, uri)
	if r.method == "completion/complete" {
		if err == nil && refErr != nil {
			return r, refErr
		}
		r.refType, r.refTarget = refType, upstreamRefTarget(refType, refName, refURI)
	}
	return r, err
}

// upstreamRefTarget is what an MCP server completes for a params.ref of
// type typ with this name and uri: the name of a prompt, the uri of a
// resource template, else whichever is set.
func upstreamRefTarget(typ, name, uri string) string {
	switch {
	case typ == "ref/resource":
		return uri
	case typ == "ref/prompt" || name != "":
		return name
	}
	return uri
}

// upstreamTarget is the target an MCP server reads in a message of method
// with these params.name and params.uri: the uri of a resource method,
// the name of a tool call or a prompt, else whichever is set.
func upstreamTarget(method, name, uri string) string {
	switch {
	case method == "resources/read" || method == "resources/subscribe" || method == "resources/unsubscribe":
		return uri
	case method == "tools/call" || method == "prompts/get" || name != "":
		return name
	}
	return uri
}

// envelopeReading is the peek's reading of a message.
func envelopeReading(env *Envelope) (reading, error) {
	r := reading{
		jsonrpc:     "2.0",
		hasMethod:   env.Kind == KindRequest || env.Kind == KindNotification,
		method:      env.Method,
		response:    env.Kind == KindResponse,
		name:        env.Name,
		version:     env.ProtocolVersion,
		metaVersion: env.MetaVersion,
		refType:     env.RefType,
		refTarget:   env.RefTarget,
	}
	if env.ID != "" {
		id, err := canonicalID([]byte(env.ID))
		if err != nil {
			return r, err
		}
		r.id = id
	}
	return r, nil
}

// agree compares the peek's reading of a message with a decoder's. With
// pendingID the peek read the head of a longer body, and an id it did not
// see may follow: a request's must be a string or a number.
func agree(peek *Envelope, dec reading, pendingID bool) error {
	p, err := envelopeReading(peek)
	if err != nil {
		return err
	}
	if pendingID && peek.ID == "" {
		if peek.Kind == KindRequest && dec.id == "" {
			return fmt.Errorf("request without an id")
		}
		p.id = dec.id
	}
	dec.idNull = false
	if p != dec {
		return fmt.Errorf("peek %+v, decoder %+v", p, dec)
	}
	if (peek.Kind == KindRequest) != (dec.hasMethod && dec.id != "") {
		return fmt.Errorf("peek kind %v, decoder id %q", peek.Kind, dec.id)
	}
	return nil
}

// checkAgreement checks that encoding/json and the strict decoder read an
// accepted body the way the peek did.
func checkAgreement(body []byte, p *Peek, pendingID bool) error {
	std, err := stdRead(body)
	if err != nil {
		return fmt.Errorf("encoding/json: %v", err)
	}
	// A key that repeats and that the proxy does not read is refused by
	// the complete peek, not by CheckedBody after the head.
	strict, err := strictRead(body, pendingID)
	if err != nil {
		return fmt.Errorf("strict: %v", err)
	}
	if len(std) != len(p.Messages) || len(strict) != len(p.Messages) {
		return fmt.Errorf("peek %d messages, encoding/json %d, strict %d", len(p.Messages), len(std), len(strict))
	}
	for i := range p.Messages {
		if err := agree(&p.Messages[i], std[i], pendingID); err != nil {
			return fmt.Errorf("message %d, encoding/json: %v", i, err)
		}
		if err := agree(&p.Messages[i], strict[i], pendingID); err != nil {
			return fmt.Errorf("message %d, strict: %v", i, err)
		}
	}
	return nil
}

// chunkReader returns at most n bytes per Read.
type chunkReader struct {
	r io.Reader
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(p) > c.n {
		p = p[:c.n]
	}
	return c.r.Read(p)
}

// readChecked streams body through a CheckedBody whose head is body[:cut],
// reading the rest in chunks of at most chunk bytes, into reads of at most
// out bytes.
func readChecked(body []byte, cut, chunk, out int, limit int64) ([]byte, error) {
	rest := io.NopCloser(&chunkReader{r: bytes.NewReader(body[cut:]), n: chunk})
	cb := NewCheckedBody(body[:cut], rest, limit)
	got, err := io.ReadAll(&chunkReader{r: cb, n: out})
	if err != cb.Err() {
		return got, fmt.Errorf("Read error %v, Err() %v", err, cb.Err())
	}
	return got, err
}

// isOtherDuplicate reports a refusal of a key that repeats and that is not
// a member the proxy reads: only the complete peek can find it.
func isOtherDuplicate(err error) bool {
	var ke *keyError
	return errors.As(err, &ke) && ke.sentinel == ErrAmbiguous && !ke.member
}

// checkBody runs every check on one body, cut after cut bytes for the
// truncated reading.
func checkBody(body []byte, cut, chunk int) error {
	var whole Peek
	werr := ParseEnvelope(body, true, &whole)
	valid := json.Valid(body) && utf8.Valid(body)
	if werr == nil {
		if !valid {
			return fmt.Errorf("peek accepted invalid JSON")
		}
		if err := checkAgreement(body, &whole, false); err != nil {
			return fmt.Errorf("complete: %v", err)
		}
	} else if valid && (errors.Is(werr, ErrMalformed) || errors.Is(werr, ErrEmptyBody)) {
		return fmt.Errorf("valid JSON refused as malformed: %v", werr)
	}
	if cut <= 0 || cut >= len(body) {
		return nil
	}
	var head Peek
	if ParseEnvelope(body[:cut], false, &head) != nil {
		return nil
	}
	if head.Batch || len(head.Messages) != 1 {
		return fmt.Errorf("truncated batch accepted")
	}
	got, cerr := readChecked(body, cut, chunk, 1+chunk*7%13, 0)
	if cerr != nil {
		if bytes.Equal(got, body) || len(got) >= len(body) || !bytes.HasPrefix(body, got) {
			return fmt.Errorf("aborted body (%v) passed %q", cerr, got)
		}
		if json.Valid(got) {
			return fmt.Errorf("aborted body (%v) passed a complete value %q", cerr, got)
		}
		if werr == nil && !errors.Is(cerr, ErrLateEnvelope) && !errors.Is(cerr, errRequestWithoutID) && !errors.Is(cerr, errTrailing) {
			return fmt.Errorf("check refused (%v) a body the peek accepts whole", cerr)
		}
		return nil
	}
	if !bytes.Equal(got, body) {
		return fmt.Errorf("checked body changed the bytes: %q", got)
	}
	if werr != nil && !isOtherDuplicate(werr) {
		return fmt.Errorf("check passed a body the peek refuses whole: %v", werr)
	}
	first := head.First()
	pending := first.ID == ""
	if err := checkAgreement(body, &head, true); err != nil {
		return fmt.Errorf("truncated at %d: %v", cut, err)
	}
	if werr == nil {
		w := *whole.First()
		if pending {
			w.ID = ""
		}
		if !reflect.DeepEqual(w, *first) {
			return fmt.Errorf("truncated at %d read %+v, whole %+v", cut, *first, w)
		}
	}
	return nil
}

// genMessage builds a message from rnd: member keys in random spellings
// (exact, escaped, case or fold variants), random orders, duplicates,
// values of the right and wrong types.
func genMessage(rnd *rand.Rand) []byte {
	spell := func(k string) string {
		switch rnd.IntN(12) {
		case 0:
			return strings.ToUpper(k[:1]) + k[1:]
		case 1:
			var b strings.Builder
			for _, r := range k {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
			return b.String()
		case 2:
			return strings.Replace(k, "s", "ſ", 1)
		case 3:
			return strings.Replace(k, "k", "K", 1)
		case 4:
			i := rnd.IntN(len(k))
			return k[:i] + fmt.Sprintf(`\u%04x`, k[i]) + k[i+1:]
		}
		return k
	}
	pick := func(vs ...string) string { return vs[rnd.IntN(len(vs))] }
	obj := func(members []string) string {
		rnd.Shuffle(len(members), func(i, j int) { members[i], members[j] = members[j], members[i] })
		if len(members) > 0 && rnd.IntN(8) == 0 {
			members = append(members, members[rnd.IntN(len(members))])
		}
		return "{" + strings.Join(members, ",") + "}"
	}
	member := func(k, v string) string { return `"` + spell(k) + `":` + v }
	var meta []string
	if rnd.IntN(2) == 0 {
		meta = append(meta, member(metaVersionKey, pick(`"2026-07-28"`, `"2025-06-18"`, `null`, `1`)))
	}
	if rnd.IntN(2) == 0 {
		meta = append(meta, member("progressToken", pick(`1`, `"t"`)))
	}
	var params []string
	if rnd.IntN(3) > 0 {
		params = append(params, member("name", pick(`"echo"`, `"sleep"`, `"ec\u0068o"`, `null`, `7`)))
	}
	if rnd.IntN(3) == 0 {
		params = append(params, member("uri", pick(`"file:///a"`, `"x"`)))
	}
	if rnd.IntN(3) == 0 {
		params = append(params, member("_meta", obj(meta)))
	}
	if rnd.IntN(2) == 0 {
		params = append(params, member("arguments", pick(`{"text":"`+strings.Repeat("a", rnd.IntN(200))+`"}`, `{}`, `{"name":"x","method":"y"}`)))
	}
	if rnd.IntN(6) == 0 {
		params = append(params, member("protocolVersion", pick(`"2025-06-18"`, `"2025-03-26"`)))
	}
	if rnd.IntN(2) == 0 {
		var ref []string
		// Mostly exact spellings, so that enough of them are accepted.
		exact := rnd.IntN(3) > 0
		member := func(k, v string) string {
			if exact {
				return `"` + k + `":` + v
			}
			return member(k, v)
		}
		if rnd.IntN(5) > 0 {
			ref = append(ref, member("type", pick(`"ref/prompt"`, `"ref/resource"`, `"ref\/prompt"`, `"ref/tool"`, `null`, `1`)))
		}
		if rnd.IntN(2) == 0 {
			ref = append(ref, member("name", pick(`"admin_reset"`, `"greet"`, `"\u0061dmin"`, `null`, `{}`)))
		}
		if rnd.IntN(2) == 0 {
			ref = append(ref, member("uri", pick(`"file:///secret/{name}"`, `"x"`, `null`, `[]`)))
		}
		if rnd.IntN(4) == 0 {
			ref = append(ref, member("title", `"t"`))
		}
		params = append(params, `"ref":`+pick(obj(ref), obj(ref), obj(ref), `null`, `"ref/prompt"`,
			`{"type":"ref/prompt","name":"admin_reset"}`, `{"type":"ref/resource","uri":"file:///secret/{name}"}`,
			`{"uri":"file:///secret/{name}","name":"greet","type":"ref/prompt"}`, `{"name":"greet","type":"ref/resource","uri":"x"}`))
		if rnd.IntN(4) == 0 {
			params[len(params)-1] = member("ref", obj(ref))
		}
	}
	if rnd.IntN(4) == 0 {
		params = append(params, member("argument", pick(`{"name":"target","value":"`+strings.Repeat("v", rnd.IntN(200))+`"}`, `{}`)))
	}
	var env []string
	if rnd.IntN(8) > 0 {
		env = append(env, member("jsonrpc", pick(`"2.0"`, `"2.0"`, `"2.0"`, `"1.0"`, `"2\u002e0"`, `2`)))
	}
	switch rnd.IntN(5) {
	case 4:
		env = append(env, member("method", `"completion/complete"`))
	case 0, 1:
		env = append(env, member("method", pick(`"tools/call"`, `"ping"`, `"notifications/initialized"`, `"prompts/get"`, `"resources/read"`, `"tools\/call"`, `"completion/complete"`, `"completion/complete"`, `"completion\/complete"`, `null`)))
	case 2:
		env = append(env, member("result", pick(`{}`, `{"content":[]}`, `null`)))
	default:
		env = append(env, member("error", `{"code":1,"message":"m"}`))
	}
	if rnd.IntN(5) == 0 {
		env = append(env, member(pick("result", "method", "error"), pick(`{}`, `"tools/call"`)))
	}
	if rnd.IntN(5) > 0 {
		env = append(env, member("id", pick(`1`, `"a"`, `null`, `-2.5e3`, `{}`, `[1]`, `true`, `"\u0061"`)))
	}
	if rnd.IntN(4) > 0 {
		env = append(env, member("params", pick(obj(params), obj(params), `null`, `[]`)))
	}
	if rnd.IntN(6) == 0 {
		env = append(env, member("extra", `"x"`))
	}
	msg := obj(env)
	if rnd.IntN(10) == 0 {
		msg = "[" + msg + "," + msg + "]"
	}
	return []byte(msg)
}

func TestPeekAgreementGenerated(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	n := 20000
	if testing.Short() {
		n = 2000
	}
	accepted := 0
	for range n {
		body := genMessage(rnd)
		var p Peek
		if ParseEnvelope(body, true, &p) == nil {
			accepted++
		}
		for _, cut := range []int{0, len(body) / 3, len(body) / 2, len(body) - 2, rnd.IntN(len(body))} {
			if err := checkBody(body, cut, 1+rnd.IntN(20)); err != nil {
				t.Fatalf("%s: %v", body, err)
			}
		}
	}
	if accepted < n/20 {
		t.Fatalf("only %d of %d generated messages accepted", accepted, n)
	}
}

// FuzzPeekAgreement checks, on any body, that wherever the peek accepts a
// message encoding/json and a strict decoder read the same jsonrpc,
// method, id, params.name or params.uri, protocolVersion, _meta version
// and, of a completion/complete, params.ref's type and target; that a body cut after any byte and streamed through
// CheckedBody either passes unchanged and reads the same, or is aborted
// before it is complete.
func FuzzPeekAgreement(f *testing.F) {
	rnd := rand.New(rand.NewPCG(3, 4))
	for range 64 {
		body := genMessage(rnd)
		f.Add(body, uint16(len(body)/2), uint8(3))
	}
	f.Fuzz(func(t *testing.T, body []byte, cut uint16, chunk uint8) {
		if err := checkBody(body, int(cut), 1+int(chunk%32)); err != nil {
			t.Fatalf("%q cut %d: %v", body, cut, err)
		}
	})
}
