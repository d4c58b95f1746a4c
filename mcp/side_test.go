package mcp

import "testing"

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
		if got := AnswersRequest([]byte(tt.data), tt.id); got != tt.want {
			t.Errorf("AnswersRequest(%q, %s) = %v", tt.data, tt.id, got)
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
		id, ok := ResponseID([]byte(tt.data))
		if string(id) != tt.id || ok != tt.ok {
			t.Errorf("ResponseID(%q) = %q, %v; want %q, %v", tt.data, id, ok, tt.id, tt.ok)
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
