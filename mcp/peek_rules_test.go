package mcp

import (
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// TestParseEnvelopeRefusals lists messages decoders could read differently
// or that are not JSON-RPC 2.0, each refused.
func TestParseEnvelopeRefusals(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		complete bool
		err      error
	}{
		// Keys are decoded before they are matched.
		{"escaped method key", `{"jsonrpc":"2.0","id":1,"method":"ping","\u006dethod":"tools/call","params":{"name":"sleep"}}`, true, ErrAmbiguous},
		{"escaped method key first", `{"jsonrpc":"2.0","id":1,"\u006dethod":"tools/call","method":"ping"}`, true, ErrAmbiguous},
		{"case variant method", `{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call"}`, true, ErrAmbiguous},
		{"case variant alone", `{"jsonrpc":"2.0","id":1,"METHOD":"tools/call"}`, true, ErrAmbiguous},
		{"escaped name key", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","\u006eame":"sleep"}}`, true, ErrAmbiguous},
		{"case variant name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","NAME":"sleep"}}`, true, ErrAmbiguous},
		{"escaped case variant name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"\u004eame":"sleep"}}`, true, ErrAmbiguous},
		{"long s folds to s", `{"jsonrpc":"2.0","id":1,"method":"tools/call","paramſ":{"name":"sleep"}}`, true, ErrAmbiguous},
		{"escaped long s", `{"jsonrpc":"2.0","id":1,"method":"tools/call","param\u017f":{"name":"sleep"}}`, true, ErrAmbiguous},
		{"long s in jsonrpc", `{"jſonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"ping"}`, true, ErrAmbiguous},
		{"kelvin sign duplicate", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","progressToken":1,"progressToKen":2}}`, true, ErrAmbiguous},
		{"case duplicate of another key", `{"jsonrpc":"2.0","id":1,"method":"ping","extra":1,"EXTRA":2}`, true, ErrAmbiguous},
		{"exact duplicate of another key", `{"jsonrpc":"2.0","id":1,"method":"ping","x":1,"x":2}`, true, ErrAmbiguous},
		{"duplicate method", `{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}`, true, ErrAmbiguous},
		{"duplicate id", `{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}`, true, ErrAmbiguous},
		{"duplicate jsonrpc", `{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"ping"}`, true, ErrAmbiguous},
		{"duplicate params", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"},"params":{"name":"b"}}`, true, ErrAmbiguous},
		{"duplicate name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}`, true, ErrAmbiguous},
		{"duplicate uri", `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"a","uri":"b"}}`, true, ErrAmbiguous},
		{"case variant arguments", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","Arguments":{}}}`, true, ErrAmbiguous},
		{"case variant meta", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","_Meta":{}}}`, true, ErrAmbiguous},
		{"meta version duplicate", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/protocolVersion":"2025-06-18"}}}`, true, ErrAmbiguous},
		{"meta version variant", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","IO.modelcontextprotocol/protocolVersion":"2025-06-18"}}}`, true, ErrAmbiguous},
		{"meta version escaped variant", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocol\u0056ersion":"x","io.modelcontextprotocol/protocolversion":"y"}}}`, true, ErrAmbiguous},
		// A tools/call disguised as a response.
		{"response with escaped method", `{"jsonrpc":"2.0","id":1,"result":{},"\u006dethod":"tools/call","params":{"name":"sleep"}}`, true, ErrNotEnvelope},
		{"response with case variant method", `{"jsonrpc":"2.0","id":1,"result":{},"Method":"tools/call","params":{"name":"sleep"}}`, true, ErrAmbiguous},
		{"method and error", `{"jsonrpc":"2.0","id":1,"method":"ping","error":{"code":1,"message":"m"}}`, true, ErrNotEnvelope},
		{"result and error", `{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"m"}}`, true, ErrNotEnvelope},
		{"response without id", `{"jsonrpc":"2.0","result":{}}`, true, ErrNotEnvelope},
		{"result with null id", `{"jsonrpc":"2.0","id":null,"result":{}}`, true, ErrNotEnvelope},
		// The version.
		{"no jsonrpc", `{"id":1,"method":"tools/call","params":{"name":"sleep"}}`, true, ErrJSONRPCVersion},
		{"jsonrpc 1.0", `{"jsonrpc":"1.0","id":1,"method":"ping"}`, true, ErrJSONRPCVersion},
		{"jsonrpc number", `{"jsonrpc":2.0,"id":1,"method":"ping"}`, true, ErrJSONRPCVersion},
		{"jsonrpc null", `{"jsonrpc":null,"id":1,"method":"ping"}`, true, ErrJSONRPCVersion},
		{"jsonrpc with space", `{"jsonrpc":"2.0 ","id":1,"method":"ping"}`, true, ErrJSONRPCVersion},
		{"batch member without jsonrpc", `[{"jsonrpc":"2.0","id":1,"method":"ping"},{"id":2,"method":"ping"}]`, true, ErrJSONRPCVersion},
		// Types.
		{"object id", `{"jsonrpc":"2.0","id":{},"method":"ping"}`, true, ErrInvalidID},
		{"array id", `{"jsonrpc":"2.0","id":[1],"method":"ping"}`, true, ErrInvalidID},
		{"bool id", `{"jsonrpc":"2.0","id":true,"method":"ping"}`, true, ErrInvalidID},
		// Number ids a server reads as another number (go-sdk makes 5.5
		// 5; JavaScript makes 1e0 1 and rounds past 2^53).
		{"fraction id", `{"jsonrpc":"2.0","id":3.0,"method":"tools/list"}`, true, ErrInvalidID},
		{"fractional id", `{"jsonrpc":"2.0","id":5.5,"method":"tools/list"}`, true, ErrInvalidID},
		{"exponent id", `{"jsonrpc":"2.0","id":4e0,"method":"tools/list"}`, true, ErrInvalidID},
		{"negative zero id", `{"jsonrpc":"2.0","id":-0,"method":"tools/list"}`, true, ErrInvalidID},
		{"id past 2^53", `{"jsonrpc":"2.0","id":9007199254740993,"method":"tools/list"}`, true, ErrInvalidID},
		{"id past 2^53 negative", `{"jsonrpc":"2.0","id":-9007199254740992,"method":"tools/list"}`, true, ErrInvalidID},
		{"response fraction id", `{"jsonrpc":"2.0","id":1.5,"result":{}}`, true, ErrInvalidID},
		// Two requests of a batch with one id, written alike or not.
		{"batch duplicate id", `[{"jsonrpc":"2.0","id":70,"method":"tools/call","params":{"name":"slow"}},{"jsonrpc":"2.0","id":70,"method":"ping"}]`, true, ErrDuplicateID},
		{"batch duplicate string id", `[{"jsonrpc":"2.0","id":"a","method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":"a","method":"ping"}]`, true, ErrDuplicateID},
		{"batch duplicate escaped id", `[{"jsonrpc":"2.0","id":"a","method":"ping"},{"jsonrpc":"2.0","id":"\u0061","method":"ping"}]`, true, ErrDuplicateID},
		{"batch member exponent id", `[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2E1,"method":"ping"}]`, true, ErrInvalidID},
		{"method number", `{"jsonrpc":"2.0","id":1,"method":5}`, true, ErrNotEnvelope},
		{"method null", `{"jsonrpc":"2.0","id":1,"method":null}`, true, ErrNotEnvelope},
		{"params array", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["sleep"]}`, true, ErrNotEnvelope},
		{"name number", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}`, true, ErrNotEnvelope},
		{"name object", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":{"a":1}}}`, true, ErrNotEnvelope},
		{"meta array", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","_meta":[]}}`, true, ErrNotEnvelope},
		{"meta version number", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":1}}}`, true, ErrNotEnvelope},
		// A completion's reference is read like params.name.
		{"ref string", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":"ref/prompt"}}`, true, ErrNotEnvelope},
		{"ref array", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":[]}}`, true, ErrNotEnvelope},
		{"ref name number", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":1}}}`, true, ErrNotEnvelope},
		{"ref type object", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":{},"name":"a"}}}`, true, ErrNotEnvelope},
		{"ref uri array", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":["file:///secret/{x}"]}}}`, true, ErrNotEnvelope},

		{"duplicate ref", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greet"},"ref":{"type":"ref/prompt","name":"admin_reset"}}}`, true, ErrAmbiguous},
		{"case variant ref", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greet"},"Ref":{"type":"ref/prompt","name":"admin_reset"}}}`, true, ErrAmbiguous},
		{"upper case ref", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"REF":{"type":"ref/prompt","name":"admin_reset"}}}`, true, ErrAmbiguous},
		{"duplicate ref name", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greet","name":"admin_reset"}}}`, true, ErrAmbiguous},
		{"escaped duplicate ref name", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greet","n\u0061me":"admin_reset"}}}`, true, ErrAmbiguous},
		{"case variant ref name", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greet","NAME":"admin_reset"}}}`, true, ErrAmbiguous},
		{"case variant ref type", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"Type":"ref/prompt","name":"admin_reset"}}}`, true, ErrAmbiguous},
		{"case variant ref uri", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","URI":"file:///secret/{x}"}}}`, true, ErrAmbiguous},
		{"duplicate other key in ref", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"a","x":1,"X":2}}}`, true, ErrAmbiguous},
		// UTF-8.
		{"invalid UTF-8 in a value", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\xff\"}}", true, ErrMalformed},
		{"invalid UTF-8 in a key", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"\xc0\xaf\":1}", true, ErrMalformed},
		{"surrogate in UTF-8", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"x\":\"\xed\xa0\x80\"}}", true, ErrMalformed},
		{"invalid UTF-8 in the head", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\",\"x\":\"\xff", false, ErrMalformed},
		// Bodies longer than the peek.
		{"truncated batch", `[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a","arguments":{"x":"aaa`, false, ErrBatchTooLarge},
		{"truncated before method", `{"jsonrpc":"2.0","id":1,"params":{"name":"a","arguments":{"x":"aaa`, false, ErrTooLarge},
		{"truncated in method", `{"jsonrpc":"2.0","id":1,"method":"tools/ca`, false, ErrTooLarge},
		{"truncated tools/call before name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"x":"aaa`, false, ErrTooLarge},
		{"truncated tools/call in name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ab`, false, ErrTooLarge},
		{"truncated tools/call before params", `{"jsonrpc":"2.0","id":1,"method":"tools/call","x":"aaa`, false, ErrTooLarge},
		{"truncated prompts/get before name", `{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"arguments":{"x":"aaa`, false, ErrTooLarge},
		{"truncated resources/read before uri", `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"_meta":{"x":"aaa`, false, ErrTooLarge},
		{"truncated completion before ref", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"argument":{"name":"a","value":"aaa`, false, ErrTooLarge},
		{"truncated completion in ref", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"gr`, false, ErrTooLarge},
		{"truncated completion after ref type", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt",`, false, ErrTooLarge},
		{"truncated completion, method after the ref cut", `{"jsonrpc":"2.0","id":1,"params":{"ref":{"type":"ref/prompt","name":"a"}},"method":"completion/comp`, false, ErrTooLarge},
		{"truncated duplicate in head", `{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"x":"aaa`, false, ErrAmbiguous},
		{"truncated variant in head", `{"jsonrpc":"2.0","id":1,"method":"ping","Method":"x","params":{"x":"aaa`, false, ErrAmbiguous},
		{"truncated wrong version", `{"jsonrpc":"1.0","id":1,"method":"ping","params":{"x":"aaa`, false, ErrJSONRPCVersion},
		{"truncated malformed", `{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":aaa`, false, ErrMalformed},
		{"truncated method and result", `{"jsonrpc":"2.0","id":1,"method":"ping","result":{"x":"aaa`, false, ErrNotEnvelope},
		{"deep nesting", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","x":` + strings.Repeat("[", maxNesting+1), false, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Peek
			err := ParseEnvelope([]byte(tt.body), tt.complete, &p)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
		})
	}
}

// TestParseEnvelopeSDKMessages lists messages as the SDKs write them.
func TestParseEnvelopeSDKMessages(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		complete bool
		want     Envelope
	}{
		{"go-sdk tools/call", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":"t"},"name":"x","arguments":{"a":1}}}`, true,
			Envelope{Kind: KindRequest, Method: "tools/call", ID: "1", Name: "x"}},
		{"typescript tools/call", `{"method":"tools/call","params":{"name":"x","arguments":{"a":1},"_meta":{"progressToken":1}},"jsonrpc":"2.0","id":2}`, true,
			Envelope{Kind: KindRequest, Method: "tools/call", ID: "2", Name: "x"}},
		{"typescript initialize", `{"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}},"jsonrpc":"2.0","id":0}`, true,
			Envelope{Kind: KindRequest, Method: "initialize", ID: "0", ProtocolVersion: "2025-06-18"}},
		{"python tools/call", `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x","arguments":{}}}`, true,
			Envelope{Kind: KindRequest, Method: "tools/call", ID: "3", Name: "x"}},
		// The target is the member the upstream reads for the method,
		// whatever other member the message holds.
		{"resources/read with a name", `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"name":"x","uri":"file:///secret/key"}}`, true,
			Envelope{Kind: KindRequest, Method: "resources/read", ID: "1", Name: "file:///secret/key"}},
		{"resources/subscribe with a name, method last", `{"jsonrpc":"2.0","id":1,"params":{"uri":"file:///secret/key","name":"x"},"method":"resources/subscribe"}`, true,
			Envelope{Kind: KindRequest, Method: "resources/subscribe", ID: "1", Name: "file:///secret/key"}},
		{"tools/call with a uri", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"uri":"x","name":"delete_repo"}}`, true,
			Envelope{Kind: KindRequest, Method: "tools/call", ID: "1", Name: "delete_repo"}},
		{"prompts/get with a uri only", `{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"uri":"admin"}}`, true,
			Envelope{Kind: KindRequest, Method: "prompts/get", ID: "1"}},
		// A completion's target is the member of params.ref its type
		// names; Name stays params.name or params.uri.
		{"go-sdk completion of a prompt", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"argument":{"name":"target","value":""},"ref":{"type":"ref/prompt","name":"admin_reset"}}}`, true,
			Envelope{Kind: KindRequest, Method: "completion/complete", ID: "1", RefType: RefPrompt, RefTarget: "admin_reset"}},
		{"typescript completion of a template", `{"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///secret/{name}"},"argument":{"name":"name","value":"k"}},"jsonrpc":"2.0","id":2}`, true,
			Envelope{Kind: KindRequest, Method: "completion/complete", ID: "2", RefType: RefResource, RefTarget: "file:///secret/{name}"}},
		{"completion of a prompt with a uri", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"uri":"file:///public/{x}","type":"ref/prompt","name":"admin_reset"}}}`, true,
			Envelope{Kind: KindRequest, Method: "completion/complete", ID: "1", RefType: RefPrompt, RefTarget: "admin_reset"}},
		{"completion of a template with a name", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"name":"greet","type":"ref/resource","uri":"file:///secret/{x}"}}}`, true,
			Envelope{Kind: KindRequest, Method: "completion/complete", ID: "1", RefType: RefResource, RefTarget: "file:///secret/{x}"}},
		{"completion with escapes, method last", `{"jsonrpc":"2.0","id":1,"params":{"r\u0065f":{"typ\u0065":"ref\/prompt","name":"\u0061dmin_reset"}},"method":"completion\/complete"}`, true,
			Envelope{Kind: KindRequest, Method: "completion/complete", ID: "1", RefType: RefPrompt, RefTarget: "admin_reset"}},
		{"completion of another type", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/tool","name":"x","other":{"Name":1}}}}`, true,
			Envelope{Kind: KindRequest, Method: "completion/complete", ID: "1", RefType: "ref/tool", RefTarget: "x"}},
		{"completion with a null ref", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"name":"n","ref":null}}`, true,
			Envelope{Kind: KindRequest, Method: "completion/complete", ID: "1", Name: "n"}},
		{"ref of another method", `{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"greet","ref":{"type":"ref/prompt","name":"admin_reset"}}}`, true,
			Envelope{Kind: KindRequest, Method: "prompts/get", ID: "1", Name: "greet"}},
		// Another method's params may hold a ref of its own shape.
		{"string ref of another method", `{"jsonrpc":"2.0","id":1,"method":"git/checkout","params":{"ref":"main"}}`, true,
			Envelope{Kind: KindRequest, Method: "git/checkout", ID: "1"}},
		{"number ref of a tool call", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","ref":42}}`, true,
			Envelope{Kind: KindRequest, Method: "tools/call", ID: "1", Name: "x"}},
		{"ref with a name list in another method", `{"jsonrpc":"2.0","id":1,"method":"x/y","params":{"ref":{"name":["a"]}}}`, true,
			Envelope{Kind: KindRequest, Method: "x/y", ID: "1"}},
		{"largest safe id", `{"jsonrpc":"2.0","id":9007199254740991,"method":"ping"}`, true,
			Envelope{Kind: KindRequest, Method: "ping", ID: "9007199254740991"}},
		{"negative id", `{"jsonrpc":"2.0","id":-9007199254740991,"method":"ping"}`, true,
			Envelope{Kind: KindRequest, Method: "ping", ID: "-9007199254740991"}},
		{"typescript response", `{"result":{"content":[]},"jsonrpc":"2.0","id":5}`, true,
			Envelope{Kind: KindResponse, ID: "5"}},
		{"error response with null id", `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}`, true,
			Envelope{Kind: KindResponse}},
		{"stateless tools/call", `{"jsonrpc":"2.0","id":"r1","method":"tools/call","params":{"name":"x","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","progressToken":1}}}`, true,
			Envelope{Kind: KindRequest, Method: "tools/call", ID: `"r1"`, Name: "x", MetaVersion: "2026-07-28"}},
		{"cancelled", `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"r1","reason":"x"}}`, true,
			Envelope{Kind: KindNotification, Method: "notifications/cancelled", RequestID: `"r1"`}},
		{"escaped values and keys", `{"\u006asonrpc":"2\u002e0","\u0069d":1,"method":"tools\/call","params":{"n\u0061me":"a\u0062"}}`, true,
			Envelope{Kind: KindRequest, Method: "tools/call", ID: "1", Name: "ab"}},
		{"null params and name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":null}}`, true,
			Envelope{Kind: KindRequest, Method: "tools/call", ID: "1"}},
		{"other keys", `{"jsonrpc":"2.0","id":1,"method":"ping","x":{"method":"a","Method":"b"},"params":null}`, true,
			Envelope{Kind: KindRequest, Method: "ping", ID: "1"}},
		{"many keys", `{"jsonrpc":"2.0","id":1,"method":"x/y","params":{` + manyKeys(40) + `}}`, true,
			Envelope{Kind: KindRequest, Method: "x/y", ID: "1"}},
		// The head of a longer body.
		{"typescript head", `{"method":"tools/call","params":{"name":"x","arguments":{"a":"aaaa`, false,
			Envelope{Kind: KindRequest, Method: "tools/call", Name: "x"}},
		{"go-sdk head", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":"t"},"name":"x","arguments":{"a":"aaaa`, false,
			Envelope{Kind: KindRequest, Method: "tools/call", ID: "1", Name: "x"}},
		{"notification head", `{"method":"notifications/message","params":{"data":"aaaa`, false,
			Envelope{Kind: KindNotification, Method: "notifications/message"}},
		{"response head", `{"result":{"content":[{"type":"text","text":"aaaa`, false,
			Envelope{Kind: KindResponse}},
		{"head cut in an id", `{"method":"ping","params":{},"jsonrpc":"2.0","id":12`, false,
			Envelope{Kind: KindRequest, Method: "ping"}},
		{"completion head", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"admin_reset"},"argument":{"name":"a","value":"aaaa`, false,
			Envelope{Kind: KindRequest, Method: "completion/complete", ID: "1", RefType: RefPrompt, RefTarget: "admin_reset"}},
		{"head holding the whole message", `{"jsonrpc":"2.0","method":"ping"}  `, false,
			Envelope{Kind: KindNotification, Method: "ping"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Peek
			if err := ParseEnvelope([]byte(tt.body), tt.complete, &p); err != nil {
				t.Fatal(err)
			}
			if len(p.Messages) != 1 || !reflect.DeepEqual(p.Messages[0], tt.want) {
				t.Fatalf("got %+v, want %+v", p.Messages, tt.want)
			}
			if tt.complete {
				if err := checkAgreement([]byte(tt.body), &p, false); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func manyKeys(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"k`)
		b.WriteString(strings.Repeat("x", i))
		b.WriteString(`":1`)
	}
	return b.String()
}

func TestParseEnvelopeManyKeysDuplicate(t *testing.T) {
	body := `{"jsonrpc":"2.0","id":1,"method":"x/y","params":{` + manyKeys(40) + `,"KXXXXX":2}}`
	var p Peek
	if err := ParseEnvelope([]byte(body), true, &p); !errors.Is(err, ErrAmbiguous) {
		t.Fatalf("err = %v", err)
	}
}

func TestClassifyBodyRefusals(t *testing.T) {
	tests := []struct {
		body     string
		complete bool
		status   int
		code     int
		msg      string
	}{
		{`{"jsonrpc":"2.0","id":1,"method":"ping","\u006dethod":"tools/call"}`, true, 400, CodeInvalidRequest,
			`ambiguous JSON-RPC message: duplicate key "method"`},
		{`{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call"}`, true, 400, CodeInvalidRequest,
			`ambiguous JSON-RPC message: case-variant key "Method" of "method"`},
		{`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","nam\u0065":"b"}}`, true, 400, CodeInvalidRequest,
			`ambiguous JSON-RPC message: duplicate key "name" in params`},
		{`{"id":1,"method":"ping"}`, true, 400, CodeInvalidRequest, `invalid request: invalid JSON-RPC version: "jsonrpc" must be "2.0"`},
		{`{"jsonrpc":"2.0","id":true,"method":"ping"}`, true, 400, CodeInvalidRequest, "invalid request: JSON-RPC id must be a string, an integer or null"},
		{"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}", true, 400, CodeParseError, "parse error: malformed JSON-RPC message: invalid UTF-8 at byte 34"},
		{`[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":1,"method":"pi`, false, 413, CodeInvalidRequest, "JSON-RPC batch larger than the peek limit"},
		{`{"jsonrpc":"2.0","id":1,"params":{"x":"aa`, false, 413, CodeInvalidRequest, "JSON-RPC envelope not found within the peek limit"},
	}
	for _, tt := range tests {
		var c Call
		err := ParseEnvelope([]byte(tt.body), tt.complete, &c.Peek)
		ref := ClassifyBody(http.Header{}, err, &c)
		if ref == nil || ref.Status != tt.status || ref.Code != tt.code || ref.Message != tt.msg {
			t.Errorf("%s: got %+v, want %d %d %q", tt.body, ref, tt.status, tt.code, tt.msg)
		}
	}
	for err, status := range map[error]int{ErrLateEnvelope: 413, ErrBodyTooLarge: 413, lateKey(setParams, parName): 413, errTrailing: 400} {
		if ref := BodyRefusal(err); ref.Status != status {
			t.Errorf("%v: status %d, want %d", err, ref.Status, status)
		}
	}
}

func TestBatchAllowed(t *testing.T) {
	tests := []struct {
		header, session string
		want            bool
	}{
		{"", "", true},
		{Version20250326, "", true},
		{Version20250618, "", false},
		{"", Version20250326, true},
		{"", Version20250618, false},
		{"", Version20241105, false},
		{Version20250326, Version20250618, true},
		{Version20250618, Version20250326, false},
		{Version20260728, "", false},
	}
	for _, tt := range tests {
		if got := BatchAllowed(tt.header, tt.session); got != tt.want {
			t.Errorf("BatchAllowed(%q, %q) = %v, want %v", tt.header, tt.session, got, tt.want)
		}
	}
}

func TestBatchRefusal(t *testing.T) {
	for _, tt := range []struct {
		header, session string
		refused         bool
		names           string
	}{
		{"", "", false, ""},
		{Version20250326, Version20250618, false, ""},
		{"", Version20250326, false, ""},
		{"", Version20250618, true, Version20250618},
		{Version20250618, Version20250326, true, Version20250618},
	} {
		ref := BatchRefusal(&Call{Version: tt.header}, tt.session)
		if (ref != nil) != tt.refused || ref != nil && (ref.Status != http.StatusBadRequest || !strings.Contains(ref.Message, tt.names)) {
			t.Errorf("header %q session %q: %+v", tt.header, tt.session, ref)
		}
	}
}

// TestParseEnvelopeListen: a 2026-07-28 subscriptions/listen names the
// resources it subscribes to in params.notifications.resourceSubscriptions,
// which the peek reads whole, refusing what decoders could read
// otherwise; a listen that does not end within the peek is too large.
func TestParseEnvelopeListen(t *testing.T) {
	listen := func(notifications string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":` + notifications + `}}`
	}
	for body, want := range map[string][]string{
		listen(`{"resourceSubscriptions":["file:///a","file:///\u0062"]}`):                                   {"file:///a", "file:///b"},
		listen(`{"toolsListChanged":true, "resourceSubscriptions" : [ "x" , "y" ] }`):                        {"x", "y"},
		listen(`{"resourceSubscriptions":[]}`):                                                               nil,
		listen(`{"resourceSubscriptions":null}`):                                                             nil,
		listen(`null`):                                                                                       nil,
		`{"jsonrpc":"2.0","id":1,"method":"x/y","params":{"notifications":{"resourceSubscriptions":["a"]}}}`: nil,
		`{"jsonrpc":"2.0","id":1,"method":"x/y","params":{"notifications":[1]}}`:                             nil,
	} {
		var p Peek
		if err := ParseEnvelope([]byte(body), true, &p); err != nil {
			t.Errorf("%s: %v", body, err)
			continue
		}
		if got := p.First().Subscriptions; !reflect.DeepEqual(got, want) {
			t.Errorf("%s: subscriptions %q, want %q", body, got, want)
		}
	}
	for body, want := range map[string]error{
		listen(`{"ResourceSubscriptions":["file:///secret"]}`):                                   ErrAmbiguous,
		listen(`{"resourceSubscriptions":["a"],"resourceSubscriptions":["b"]}`):                  ErrAmbiguous,
		listen(`{"resourceSubscriptions":["a",1]}`):                                              ErrNotEnvelope,
		listen(`{"resourceSubscriptions":"a"}`):                                                  ErrNotEnvelope,
		listen(`["a"]`):                                                                          ErrNotEnvelope,
		`{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"Notifications":{}}}`: ErrAmbiguous,
	} {
		var p Peek
		if err := ParseEnvelope([]byte(body), true, &p); !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", body, err, want)
		}
	}
	body := listen(`{"resourceSubscriptions":["file:///public/a","file:///secret/b"]}`)
	for cut := strings.Index(body, "params"); cut < len(body); cut++ {
		var p Peek
		if err := ParseEnvelope([]byte(body[:cut]), false, &p); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("listen cut at %d: %v, want ErrTooLarge", cut, err)
		}
	}
}
