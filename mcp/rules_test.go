package mcp

import "testing"

func TestRules(t *testing.T) {
	call := func(era Era, batch bool, msgs ...Envelope) *Call {
		return &Call{Era: era, Peek: Peek{Batch: batch, Messages: msgs}}
	}
	req := Envelope{Kind: KindRequest, Method: "tools/call", ID: "1"}
	init := Envelope{Kind: KindRequest, Method: "initialize", ID: "1"}
	note := Envelope{Kind: KindNotification, Method: "notifications/initialized"}
	resp := Envelope{Kind: KindResponse, ID: "2"}
	for _, tt := range []struct {
		name                               string
		method                             string
		c                                  *Call
		inSession, legacyToken             bool
		legacy, opens, resumable, finishes bool
	}{
		{"legacy GET", "GET", call(EraUnknown, false), false, false, true, true, false, false},
		{"session GET", "GET", call(EraSession, false), true, false, false, false, false, false},
		{"session GET without session", "GET", call(EraSession, false), false, false, false, false, false, false},
		{"initialize", "POST", call(EraUnknown, false, init), false, false, false, true, false, false},
		{"call in session", "POST", call(EraSession, false, req), true, false, false, false, true, false},
		{"call on a legacy route", "POST", call(EraLegacy, false, req), true, true, false, false, false, false},
		{"stateless call", "POST", call(EraStateless, false, req), false, false, false, false, false, false},
		{"batch", "POST", call(EraSession, true, req, req), true, false, false, false, false, false},
		{"notification", "POST", call(EraSession, false, note), true, false, false, false, false, true},
		{"responses and notifications", "POST", call(EraSession, true, resp, note), true, false, false, false, false, true},
		{"response and request", "POST", call(EraSession, true, resp, req), true, false, false, false, false, false},
		{"DELETE", "DELETE", call(EraSession, false), true, false, false, false, false, true},
	} {
		if got := OpensLegacyStream(tt.method, tt.c, tt.inSession); got != tt.legacy {
			t.Errorf("%s: OpensLegacyStream = %v", tt.name, got)
		}
		if got := OpensSession(tt.method, tt.c, tt.inSession); got != tt.opens {
			t.Errorf("%s: OpensSession = %v", tt.name, got)
		}
		if got := Resumable(tt.method, tt.c, tt.inSession, tt.legacyToken); got != tt.resumable {
			t.Errorf("%s: Resumable = %v", tt.name, got)
		}
		if got := Finishing(tt.method, tt.c); got != tt.finishes {
			t.Errorf("%s: Finishing = %v", tt.name, got)
		}
	}
}
