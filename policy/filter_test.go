package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// keepNot keeps every item but those keyed by one of names.
func keepNot(names ...string) func(string, json.RawMessage) bool {
	return func(key string, _ json.RawMessage) bool {
		for _, n := range names {
			if key == n {
				return false
			}
		}
		return true
	}
}

func TestFilterList(t *testing.T) {
	tests := []struct {
		name    string
		method  string
		msg     string
		keep    func(string, json.RawMessage) bool
		private bool
		want    string // "" for out == nil
		removed int
	}{
		{
			name:    "tools",
			method:  "tools/list",
			msg:     `{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"a","inputSchema":{"type":"object"}},{"name":"b"},{"name":"c","description":"x"}],"nextCursor":"n1"}}`,
			keep:    keepNot("b"),
			want:    `{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"a","inputSchema":{"type":"object"}},{"name":"c","description":"x"}],"nextCursor":"n1"}}`,
			removed: 1,
		},
		{
			name:    "bytes of other members and kept items kept",
			method:  "tools/list",
			msg:     "{ \"id\" : \"x\\u0041\" ,\"result\": {\"_meta\": {\"k\" : [1, 2.50e0]}, \"tools\": [ {\"name\": \"keep\" ,  \"n\": 1.0 } , {\"name\":\"drop\"} ] } ,\"jsonrpc\":\"2.0\"}",
			keep:    keepNot("drop"),
			want:    `{"id":"x\u0041","result":{"_meta":{"k" : [1, 2.50e0]},"tools":[{"name": "keep" ,  "n": 1.0 }]},"jsonrpc":"2.0"}`,
			removed: 1,
		},
		{
			name:   "nothing removed",
			method: "tools/list",
			msg:    `{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"}]}}`,
			keep:   keepNot(),
		},
		{
			name:    "all removed",
			method:  "tools/list",
			msg:     `{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"}]}}`,
			keep:    keepNot("a", "b"),
			want:    `{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}`,
			removed: 2,
		},
		{
			name:   "empty list",
			method: "tools/list",
			msg:    `{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}`,
			keep:   keepNot(),
		},
		{
			name:    "private adds cacheScope",
			method:  "tools/list",
			msg:     `{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"}]}}`,
			keep:    keepNot(),
			private: true,
			want:    `{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"}],"cacheScope":"private"}}`,
		},
		{
			name:    "private and removal",
			method:  "prompts/list",
			msg:     `{"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"a"},{"name":"b"}]}}`,
			keep:    keepNot("a"),
			private: true,
			want:    `{"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"b"}],"cacheScope":"private"}}`,
			removed: 1,
		},
		{
			name:   "cacheScope present is made private",
			method: "tools/list",
			msg:    `{"jsonrpc":"2.0","id":1,"result":{"cacheScope":"shared","tools":[{"name":"a"}]}}`,
			keep:   keepNot(),
			want:   `{"jsonrpc":"2.0","id":1,"result":{"cacheScope":"private","tools":[{"name":"a"}]}}`,
		},
		{
			name:    "cacheScope already private",
			method:  "tools/list",
			msg:     `{"jsonrpc":"2.0","id":1,"result":{"cacheScope":"private","tools":[{"name":"a"}]}}`,
			keep:    keepNot(),
			private: true,
		},
		{
			name:    "resources by uri",
			method:  "resources/list",
			msg:     `{"jsonrpc":"2.0","id":1,"result":{"resources":[{"uri":"file:///a","name":"a"},{"uri":"file:///secret","name":"a"}]}}`,
			keep:    keepNot("file:///secret"),
			want:    `{"jsonrpc":"2.0","id":1,"result":{"resources":[{"uri":"file:///a","name":"a"}]}}`,
			removed: 1,
		},
		{
			name:    "templates by uriTemplate",
			method:  "resources/templates/list",
			msg:     `{"jsonrpc":"2.0","id":1,"result":{"resourceTemplates":[{"uriTemplate":"file:///{p}","name":"a"},{"uriTemplate":"db://{t}","name":"b"}]}}`,
			keep:    keepNot("db://{t}"),
			want:    `{"jsonrpc":"2.0","id":1,"result":{"resourceTemplates":[{"uriTemplate":"file:///{p}","name":"a"}]}}`,
			removed: 1,
		},
		{
			name:    "escaped key",
			method:  "tools/list",
			msg:     `{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"\u0061"},{"n\u0061me":"b"}]}}`,
			keep:    keepNot("a"),
			want:    `{"jsonrpc":"2.0","id":1,"result":{"tools":[{"n\u0061me":"b"}]}}`,
			removed: 1,
		},
		{
			name:    "escaped member names re-encoded",
			method:  "tools/list",
			msg:     `{"jsonrpc":"2.0","i\u0064":1,"x\"<":2,"result":{"tools":[{"name":"a"}]}}`,
			keep:    keepNot("a"),
			want:    `{"jsonrpc":"2.0","id":1,"x\"\u003c":2,"result":{"tools":[]}}`,
			removed: 1,
		},
		{
			name:   "error response as is",
			method: "tools/list",
			msg:    `{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}`,
			keep:   keepNot("a"),
		},
		{
			name:   "error response with null result",
			method: "tools/list",
			msg:    `{"jsonrpc":"2.0","id":1,"result":null,"error":{"code":-32601,"message":"no"}}`,
			keep:   keepNot("a"),
		},
		{
			name:    "result with null error",
			method:  "tools/list",
			msg:     `{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"}]},"error":null}`,
			keep:    keepNot("a"),
			want:    `{"jsonrpc":"2.0","id":1,"result":{"tools":[]},"error":null}`,
			removed: 1,
		},
		{
			name:   "request as is",
			method: "tools/list",
			msg:    `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`,
			keep:   keepNot("a"),
		},
		{
			name:   "notification as is",
			method: "tools/list",
			msg:    `{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}`,
			keep:   keepNot("a"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, removed, err := FilterList(tt.method, []byte(tt.msg), tt.keep, tt.private)
			if err != nil {
				t.Fatalf("FilterList: %v", err)
			}
			if string(out) != tt.want || removed != tt.removed {
				t.Fatalf("FilterList =\n%s, %d\nwant\n%s, %d", out, removed, tt.want, tt.removed)
			}
			if out != nil && !json.Valid(out) {
				t.Fatalf("output is not valid JSON: %s", out)
			}
		})
	}
}

func TestFilterListErrors(t *testing.T) {
	tests := []struct {
		name   string
		method string
		msg    string
		err    string
	}{
		{"not a list method", "tools/call", `{"result":{"tools":[]}}`, "not a list method"},
		{"invalid JSON", "tools/list", `{"result":`, "message"},
		{"empty", "tools/list", ``, "message"},
		{"trailing data", "tools/list", `{"result":{"tools":[]}} {}`, "after the JSON value"},
		{"trailing garbage", "tools/list", `{"result":{"tools":[]}}x`, "message"},
		{"array message", "tools/list", `[{"result":{"tools":[]}}]`, "not a JSON object"},
		{"string message", "tools/list", `"x"`, "not a JSON object"},
		{"result and error", "tools/list", `{"result":{"tools":[]},"error":{"code":1}}`, "both result and error"},
		{"result not an object", "tools/list", `{"result":[]}`, "result"},
		{"result null", "tools/list", `{"result":null}`, "not a JSON object"},
		{"no array", "tools/list", `{"result":{"prompts":[]}}`, "no tools member"},
		{"array null", "tools/list", `{"result":{"tools":null}}`, "not an array"},
		{"array an object", "tools/list", `{"result":{"tools":{"name":"a"}}}`, "not an array"},
		{"item not an object", "tools/list", `{"result":{"tools":["a"]}}`, "not a JSON object"},
		{"item without key", "tools/list", `{"result":{"tools":[{"title":"a"}]}}`, "no name member"},
		{"key not a string", "tools/list", `{"result":{"tools":[{"name":1}]}}`, "not a string"},
		{"key null", "tools/list", `{"result":{"tools":[{"name":null}]}}`, "not a string"},
		{"wrong key for resources", "resources/list", `{"result":{"resources":[{"name":"a"}]}}`, "no uri member"},
		{"duplicate in message", "tools/list", `{"id":1,"id":2,"result":{"tools":[]}}`, `duplicate member "id"`},
		{"duplicate result", "tools/list", `{"result":{"tools":[]},"result":{"tools":[{"name":"x"}]}}`, `duplicate member "result"`},
		{"duplicate array", "tools/list", `{"result":{"tools":[],"tools":[{"name":"x"}]}}`, `duplicate member "tools"`},
		{"duplicate in result", "tools/list", `{"result":{"nextCursor":"a","tools":[],"nextCursor":"b"}}`, `duplicate member "nextCursor"`},
		{"duplicate key in item", "tools/list", `{"result":{"tools":[{"name":"a","name":"b"}]}}`, `duplicate member "name"`},
		{"duplicate other member in item", "tools/list", `{"result":{"tools":[{"name":"a","x":1,"x":2}]}}`, `duplicate member "x"`},
		{"escaped duplicate", "tools/list", `{"result":{"tools":[{"name":"a","n\u0061me":"b"}]}}`, `duplicate member "name"`},
		{"case duplicate array", "tools/list", `{"result":{"tools":[],"Tools":[{"name":"x"}]}}`, "differ only in case"},
		{"case duplicate key", "tools/list", `{"result":{"tools":[{"name":"a","NAME":"b"}]}}`, "differ only in case"},
		{"kelvin sign duplicate", "tools/list", `{"result":{"tools":[{"name":"a","\u212aey":1,"key":2}]}}`, "differ only in case"},
		{"long s spelling of tools", "tools/list", `{"result":{"tool\u017f":[{"name":"x"}]}}`, "is not spelled"},
		{"other case result", "tools/list", `{"Result":{"tools":[]}}`, "is not spelled"},
		{"other case error", "tools/list", `{"ERROR":{"code":1}}`, "is not spelled"},
		{"other case key", "tools/list", `{"result":{"tools":[{"Name":"a"}]}}`, "is not spelled"},
		{"other case cacheScope", "tools/list", `{"result":{"tools":[],"CacheScope":"shared"}}`, "is not spelled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, removed, err := FilterList(tt.method, []byte(tt.msg), keepNot(), false)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("FilterList = %q, %d, %v; want an error containing %q", out, removed, err, tt.err)
			}
			if out != nil || removed != 0 {
				t.Fatalf("FilterList returned %q, %d with its error", out, removed)
			}
		})
	}
}

// TestFilterListManyMembers checks duplicate detection past the members
// compared one by one.
func TestFilterListManyMembers(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"result":{"tools":[{"name":"a"`)
	for i := range 40 {
		fmt.Fprintf(&b, `,"m%d":%d`, i, i)
	}
	ok := b.String() + `}]}}`
	if _, _, err := FilterList("tools/list", []byte(ok), keepNot(), false); err != nil {
		t.Fatalf("FilterList: %v", err)
	}
	for _, dup := range []string{`"m3"`, `"M30"`, `"NAME"`} {
		msg := b.String() + `,` + dup + `:0}]}}`
		if _, _, err := FilterList("tools/list", []byte(msg), keepNot(), false); err == nil {
			t.Errorf("FilterList accepted a duplicate %s after 40 members", dup)
		}
	}
}

func TestFilterListKeepArguments(t *testing.T) {
	msg := `{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a", "x":1},{"name":"b\n"}]}}`
	var keys []string
	var items []string
	FilterList("tools/list", []byte(msg), func(key string, item json.RawMessage) bool {
		keys = append(keys, key)
		items = append(items, string(item))
		return true
	}, false)
	if fmt.Sprint(keys) != fmt.Sprint([]string{"a", "b\n"}) || items[0] != `{"name":"a", "x":1}` || items[1] != `{"name":"b\n"}` {
		t.Fatalf("keep saw keys %q items %q", keys, items)
	}
}

// refItems returns the items of result.<array> of msg, decoded without
// FilterList's code.
func refItems(t testing.TB, msg []byte, array string) []json.RawMessage {
	var m struct {
		Result map[string]json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(msg, &m); err != nil {
		t.Fatalf("decoding %q: %v", msg, err)
	}
	var items []json.RawMessage
	if err := json.Unmarshal(m.Result[array], &items); err != nil {
		t.Fatalf("decoding %q: %v", m.Result[array], err)
	}
	return items
}

func FuzzFilterList(f *testing.F) {
	seeds := []string{
		`{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"bb"},{"name":"ccc","inputSchema":{"type":"object"}}],"nextCursor":"x"}}`,
		`{"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"a"},{"name":"bb"}],"cacheScope":"shared"}}`,
		`{"jsonrpc":"2.0","id":1,"result":{"resources":[{"uri":"file:///a"},{"uri":"file:///bb"}]}}`,
		`{"jsonrpc":"2.0","id":1,"result":{"resourceTemplates":[{"uriTemplate":"x://{a}"}]}}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}`,
		`{"result":{"tools":[{"name":"a","name":"b"}]}}`,
		`{"result":{"tools":[{"name":"a"}],"Tools":[]}}`,
		`{"result":{"tools":[ ]} , "x" : [1,{"y":null}] }`,
		`{"result":{"tools":[{"name":"\u00e9\ud83d\ude00"}]},"error":null}`,
		`[]`, `{`, `null`, ``,
	}
	for i, s := range seeds {
		f.Add(uint8(i), []byte(s), i%2 == 0)
	}
	methods := []string{"tools/list", "prompts/list", "resources/list", "resources/templates/list"}
	f.Fuzz(func(t *testing.T, m uint8, msg []byte, private bool) {
		method := methods[int(m)%len(methods)]
		array, _, _ := listShape(method)
		// keep drops the items whose key has an odd length.
		keep := func(key string, _ json.RawMessage) bool { return len(key)%2 == 0 }
		var calls int
		counting := func(key string, item json.RawMessage) bool { calls++; return keep(key, item) }
		out, removed, err := FilterList(method, msg, counting, private)
		if err != nil {
			if out != nil || removed != 0 {
				t.Fatalf("output %q, %d with error %v", out, removed, err)
			}
			return
		}
		if !json.Valid(msg) {
			t.Fatalf("no error for invalid JSON %q", msg)
		}
		if removed < 0 || removed > calls {
			t.Fatalf("removed %d of %d items", removed, calls)
		}
		if out == nil {
			if removed != 0 {
				t.Fatalf("removed %d with no output", removed)
			}
			return
		}
		if !json.Valid(out) {
			t.Fatalf("output is not valid JSON: %q", out)
		}
		in, got := refItems(t, msg, array), refItems(t, out, array)
		if len(in) != calls {
			t.Fatalf("keep called %d times for %d items", calls, len(in))
		}
		if len(in)-len(got) != removed {
			t.Fatalf("removed %d but %d items became %d", removed, len(in), len(got))
		}
		var want []json.RawMessage
		for _, item := range in {
			var v map[string]any
			if err := json.Unmarshal(item, &v); err != nil {
				t.Fatalf("an item FilterList accepted does not decode: %q", item)
			}
			_, key, _ := listShape(method)
			if keep(v[key].(string), item) {
				want = append(want, item)
			}
		}
		if len(want) != len(got) {
			t.Fatalf("kept %d items, keep accepts %d", len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(want[i], got[i]) {
				t.Fatalf("item %d is %q, want %q", i, got[i], want[i])
			}
		}
		var res struct {
			Result struct {
				CacheScope *string `json:"cacheScope"`
			} `json:"result"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatal(err)
		}
		if private && (res.Result.CacheScope == nil || *res.Result.CacheScope != "private") {
			t.Fatalf("private output without cacheScope private: %q", out)
		}
	})
}

// benchToolsList returns a tools/list response of n tools, each with an
// input schema.
func benchToolsList(n int) []byte {
	type prop struct {
		Type        string `json:"type"`
		Description string `json:"description"`
	}
	type tool struct {
		Name        string         `json:"name"`
		Description string         `json:"description"`
		InputSchema map[string]any `json:"inputSchema"`
		Annotations map[string]any `json:"annotations"`
	}
	tools := make([]tool, n)
	for i := range tools {
		tools[i] = tool{
			Name:        fmt.Sprintf("tool_%02d", i),
			Description: "Does something useful with the arguments it is given and returns the result as text.",
			InputSchema: map[string]any{
				"type": "object",
				"properties": map[string]prop{
					"path":    {"string", "The path of the file to read."},
					"limit":   {"integer", "How many lines to return at most."},
					"offset":  {"integer", "The first line to return."},
					"pattern": {"string", "Only lines matching this pattern."},
				},
				"required":             []string{"path"},
				"additionalProperties": false,
			},
			Annotations: map[string]any{"readOnlyHint": true},
		}
	}
	msg, err := json.Marshal(map[string]any{
		"jsonrpc": "2.0",
		"id":      42,
		"result":  map[string]any{"tools": tools, "nextCursor": "page-2"},
	})
	if err != nil {
		panic(err)
	}
	return msg
}

func BenchmarkFilterList(b *testing.B) {
	msg := benchToolsList(50)
	// The Decide benchmark's policy, and a rule that allows half the tools.
	p := benchPolicy()
	p.Rules = append(p.Rules, Rule{Action: Allow, Kind: KindTool, Targets: []string{"tool_?0", "tool_?2", "tool_?4", "tool_?6", "tool_?8"}})
	if err := p.Compile(); err != nil {
		b.Fatal(err)
	}
	s := constSubject("carol")
	keep := func(key string, _ json.RawMessage) bool { return p.Allows(s, KindTool, key) }
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		out, removed, err := FilterList("tools/list", msg, keep, true)
		if err != nil || out == nil || removed != 25 {
			b.Fatalf("FilterList = %d bytes, %d, %v", len(out), removed, err)
		}
	}
}

func TestListMethodOf(t *testing.T) {
	for msg, want := range map[string]string{
		`{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"}]}}`:                 "tools/list",
		`{"jsonrpc":"2.0","id":1,"result":{"nextCursor":"x","prompts":[]}}`:          "prompts/list",
		`{"jsonrpc":"2.0","id":1,"result":{"resources":[]}}`:                         "resources/list",
		`{"jsonrpc":"2.0","id":1,"result":{"resourceTemplates":[]}}`:                 "resources/templates/list",
		`{"jsonrpc":"2.0","id":1,"result":{"Tools":[{"name":"a"}]}}`:                 "tools/list",
		`{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"x"}]}}`: "",
		`{"jsonrpc":"2.0","id":1,"result":{"tools":"not an array"}}`:                 "",
		`{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}`:                 "",
		`{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}`:              "",
		`{"jsonrpc":"2.0","id":1,"result":{"tools":[`:                                "",
	} {
		if got := ListMethodOf([]byte(msg)); got != want {
			t.Errorf("ListMethodOf(%s) = %q, want %q", msg, got, want)
		}
	}
}
