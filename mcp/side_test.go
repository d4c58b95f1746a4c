package mcp

import (
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// answersRequest is how the relay tells a request's answer: ResponseID,
// then SameID.
func answersRequest(data []byte, id string) bool {
	got, ok, err := ResponseID(data)
	return ok && err == nil && SameID(got, id)
}

func TestAnswersRequest(t *testing.T) {
	for _, tt := range []struct {
		data, id string
		want     bool
	}{
		{`{"jsonrpc":"2.0","id":1,"result":{}}`, "1", true},
		{`{"jsonrpc":"2.0","result":{"content":[{"text":"}"}]},"id":"a"}`, `"a"`, true},
		{`{"jsonrpc":"2.0","id":7,"error":{"code":-1,"message":"x"}}`, "7", true},
		{`{"jsonrpc":"2.0","id":2,"result":{}}`, "1", false},
		{`{"jsonrpc":"2.0","method":"notifications/progress","params":{"id":1}}`, "1", false},
		{`{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage"}`, "1", false},
		{`{"jsonrpc":"2.0","\u0069d":1,"result":{}}`, "1", true},
		{``, "1", false},
		{`not json`, "1", false},
		{`{"id":1,"result":`, "1", false},
		{`{"jsonrpc":"2.0","id":"ab","result":{}}`, `"\u0061b"`, true},
		{`{"jsonrpc":"2.0","id":"\u0061b","result":{}}`, `"ab"`, true},
		{`{"jsonrpc":"2.0","id":"a\"b","result":{}}`, `"a\u0022b"`, true},
		{`{"jsonrpc":"2.0","id":"1","result":{}}`, `1`, false},
		{`{"jsonrpc":"2.0","id":"\u0031","result":{}}`, `1`, false},
		{`{"jsonrpc":"2.0","id":"ab","result":{}}`, `"\u0061c"`, false},
	} {
		if got := answersRequest([]byte(tt.data), tt.id); got != tt.want {
			t.Errorf("answersRequest(%q, %s) = %v", tt.data, tt.id, got)
		}
	}
}

func TestSideHelpers(t *testing.T) {
	if !HasSessionDelete(Version20250618) || HasSessionDelete(Version20241105) || HasSessionDelete(Version20260728) || HasSessionDelete("") {
		t.Error("HasSessionDelete")
	}
	h := SideHeaders("sid", Version20251125)
	if h.Get(HeaderSessionID) != "sid" || h.Get(HeaderProtocolVersion) != Version20251125 {
		t.Errorf("SideHeaders: %v", h)
	}
	if len(SideHeaders("", "")) != 0 {
		t.Error("empty SideHeaders has headers")
	}
	client := http.Header{}
	for k, v := range map[string]string{
		"Content-Length": "12", "Transfer-Encoding": "chunked", HeaderLastEventID: "7", "Content-Type": "text/plain",
		"Accept": "text/event-stream", HeaderSessionID: "sid", "Authorization": "Bearer t",
		"Content-Digest": "sha-256=:x:", "Repr-Digest": "sha-256=:x:", "Digest": "SHA-256=x", "Expect": "100-continue",
		"Content-Language": "en", "Trailer": "X-Sum", "X-Client": "c",
	} {
		client.Set(k, v)
	}
	client["content-md5"] = []string{"x"} // a key not in canonical form
	c := CancelHeaders(client)
	want := http.Header{"Content-Type": {"application/json"}, "Accept": {"application/json, text/event-stream"},
		HeaderSessionID: {"sid"}, "Authorization": {"Bearer t"}, "X-Client": {"c"}}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("CancelHeaders: %v, want %v", c, want)
	}
	if client.Get("Content-Length") != "12" || client.Get("Content-Type") != "text/plain" {
		t.Error("CancelHeaders changed the client's headers")
	}
	if SessionKey("a:1", "x") == SessionKey("a:1x", "") || SessionKey("a", "b c") != SessionKey("a", "b c") {
		t.Error("SessionKey")
	}
	long := strings.Repeat("h", maxSessionHost+1)
	if SessionHost("example.com") != "example.com" || SessionHost(long) != "" {
		t.Error("SessionHost")
	}
	r, _ := http.NewRequest(http.MethodPost, "http://x/a%20b/mcp", nil)
	if SessionEndpoint(r) != "/a%20b/mcp" {
		t.Errorf("SessionEndpoint %q", SessionEndpoint(r))
	}
	r, _ = http.NewRequest(http.MethodPost, "http://x/"+strings.Repeat("p", MaxEndpoint), nil)
	if SessionEndpoint(r) != "" {
		t.Error("SessionEndpoint kept a path over MaxEndpoint")
	}
}

func TestSessionVersion(t *testing.T) {
	for offered, want := range map[string]string{
		Version20250618: Version20250618, Version20251125: Version20251125, Version20250326: Version20250326,
		Version20260728: Version20251125, "2027-01-01": Version20251125, Version20241105: Version20250326,
		"": Version20250326, "bogus": Version20250326,
	} {
		if got := SessionVersion(offered); got != want {
			t.Errorf("SessionVersion(%q) = %q, want %q", offered, got, want)
		}
	}
}

func TestResponseID(t *testing.T) {
	for _, tt := range []struct {
		data, id string
		ok       bool
	}{
		{`{"jsonrpc":"2.0","id":1,"result":{}}`, "1", true},
		{`{"result":{"tools":[]},"jsonrpc":"2.0","id":"a\"b"}`, `"a\"b"`, true},
		{`{"jsonrpc":"2.0","id":7,"error":{"code":-1,"message":"x"}}`, "7", true},
		{`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}`, "", false},
		{`{"jsonrpc":"2.0","error":{"code":-32700,"message":"x"}}`, "", false},
		{`{"jsonrpc":"2.0","method":"notifications/progress","params":{"id":1}}`, "", false},
		{`{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage"}`, "", false},
		{`{"jsonrpc":"2.0","id":1,"result":`, "", false},
		{`[{"jsonrpc":"2.0","id":1,"result":{}}]`, "", false},
		{`  {"id":2,"result":{},"id":3}`, "3", true},
	} {
		id, ok, err := ResponseID([]byte(tt.data))
		if string(id) != tt.id || ok != tt.ok || err != nil {
			t.Errorf("ResponseID(%q) = %q, %v, %v; want %q, %v", tt.data, id, ok, err, tt.id, tt.ok)
		}
	}
	// Keys encoding/json would read as id, result or error.
	for _, data := range []string{
		`{"jsonrpc":"2.0","ID":1,"result":{}}`,
		`{"jsonrpc":"2.0","id":1,"Result":{}}`,
		`{"jsonrpc":"2.0","id":1,"reſult":{}}`,
		`{"jsonrpc":"2.0","method":"notifications/progress","Id":4}`,
		`{"jsonrpc":"2.0","id":1,"\u0045rror":{"code":1,"message":"x"}}`,
	} {
		if id, ok, err := ResponseID([]byte(data)); ok || !errors.Is(err, ErrAmbiguous) {
			t.Errorf("ResponseID(%s) = %q, %v, %v; want ErrAmbiguous", data, id, ok, err)
		}
		if answersRequest([]byte(data), "1") {
			t.Errorf("answersRequest(%s) = true for an ambiguous message", data)
		}
	}
}

func TestIDKey(t *testing.T) {
	same := [][2]string{{`"ab"`, `"\u0061b"`}, {`"a/b"`, `"a\/b"`}, {`7`, `7`}}
	for _, p := range same {
		if IDKey(p[0]) != IDKey(p[1]) {
			t.Errorf("IDKey(%s) %q != IDKey(%s) %q", p[0], IDKey(p[0]), p[1], IDKey(p[1]))
		}
	}
	differ := [][2]string{{`"1"`, `1`}, {`"ab"`, `"ac"`}, {`1`, `1.0`}, {`"\u0031"`, `1`}}
	for _, p := range differ {
		if IDKey(p[0]) == IDKey(p[1]) {
			t.Errorf("IDKey(%s) == IDKey(%s) = %q", p[0], p[1], IDKey(p[0]))
		}
	}
}

// FuzzResponseIDAgreement checks that wherever ResponseID reads a
// response, with no ambiguity, encoding/json reads one too with the same
// id; and that where it reads none, encoding/json does not find, in a
// valid message, a non-null id with a result or an error.
func FuzzResponseIDAgreement(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"result":{}}`,
		`{"jsonrpc":"2.0","id":"a\u0062","error":{"code":1,"message":"x"}}`,
		`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1}}`,
		`{"ID":1,"result":{}}`,
		`{"id":1,"id":2,"result":null}`,
		`{"id":null,"error":{}}`,
		`{"\u0069d":3,"result":[]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var m struct {
			ID     json.RawMessage `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  json.RawMessage `json:"error"`
		}
		if json.Unmarshal(data, &m) != nil {
			return // not one valid JSON object: no client reads it either
		}
		id, ok, err := ResponseID(data)
		if err != nil {
			return // refused as ambiguous
		}
		decoded := len(m.ID) > 0 && string(m.ID) != "null" && (m.Result != nil || m.Error != nil)
		if ok != decoded {
			t.Fatalf("%q: ResponseID says response %v (id %s), encoding/json id %s result %s error %s", data, ok, id, m.ID, m.Result, m.Error)
		}
		if ok && IDKey(string(id)) != IDKey(string(m.ID)) {
			t.Fatalf("%q: ResponseID id %s, encoding/json %s", data, id, m.ID)
		}
	})
}

func TestHoldsProgress(t *testing.T) {
	for _, c := range []struct {
		data string
		want bool
	}{
		{`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p","progress":1}}`, true},
		{`[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}]`, true},
		{`{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"notifications/progress"}}`, false},
		{`[{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"notifications/progress"}}]`, false},
		{`{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"notifications/progress"}]}}`, false},
		{`{"jsonrpc":"2.0","id":4,"method":"notifications/progress"}`, false},
		{`{"jsonrpc":"2.0","method":"notifications/progress",`, false},
	} {
		if got := HoldsProgress([]byte(c.data)); got != c.want {
			t.Errorf("HoldsProgress(%s) = %v, want %v", c.data, got, c.want)
		}
	}
}

// TestResponseIDKeyNotUTF8: a key of an upstream's message is folded
// without a check of its UTF-8 (ResponseID reads events as they come); a
// byte that is not UTF-8 folds to U+FFFD, three bytes, so a key within
// maxMemberKey bytes can fold longer than that, which must end the
// folded copy, not overrun it. The key is no member; the message is no
// answer.
func TestResponseIDKeyNotUTF8(t *testing.T) {
	for _, n := range []int{42, 43, 60, maxMemberKey} {
		key := "0" + strings.Repeat("\xee", n) + "00"
		data := []byte(`{"` + key + `":[],"jsonrpc":"2.0","id":1,"result":{}}`)
		id, ok, err := ResponseID(data)
		if string(id) != "1" || !ok || err != nil {
			t.Errorf("%d bytes not UTF-8 in a key: id %q, answer %v, err %v; want the answer of 1", n, id, ok, err)
		}
		if m, _, _ := classifyKey([]byte(key), setEnvelope); m != -1 {
			t.Errorf("%d bytes not UTF-8: member %d", n, m)
		}
	}
}
