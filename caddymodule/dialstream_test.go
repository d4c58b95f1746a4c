package caddymodule

import (
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func TestNewStreamDialer(t *testing.T) {
	var nd net.Dialer
	plain := func() *reverseproxy.HTTPTransport {
		return &reverseproxy.HTTPTransport{Transport: &http.Transport{DialContext: nd.DialContext}}
	}
	bypassed := map[string]func(*reverseproxy.HTTPTransport){
		"tls":           func(ht *reverseproxy.HTTPTransport) { ht.TLS = &reverseproxy.TLSConfig{} },
		"forward proxy": func(ht *reverseproxy.HTTPTransport) { ht.ForwardProxyURL = "http://proxy.invalid:3128" },
		"network proxy": func(ht *reverseproxy.HTTPTransport) { ht.NetworkProxyRaw = json.RawMessage(`{"from":"none"}`) },
		"h2c only":      func(ht *reverseproxy.HTTPTransport) { ht.Versions = []string{"h2c"} },
		"no dialer":     func(ht *reverseproxy.HTTPTransport) { ht.Transport.DialContext = nil },
		"unprovisioned": func(ht *reverseproxy.HTTPTransport) { ht.Transport = nil },
	}
	for name, change := range bypassed {
		ht := plain()
		change(ht)
		if d := newStreamDialer(ht); d != nil {
			t.Errorf("%s: got a dialer, want streams through the transport", name)
		}
	}
	if d := newStreamDialer(http.DefaultTransport); d != nil {
		t.Error("a transport of another kind got a dialer")
	}

	ht := plain()
	ht.Versions = []string{"1.1", "2"}
	ht.ResponseHeaderTimeout = caddy.Duration(3 * time.Second)
	ht.MaxResponseHeaderSize = 8192
	proxyURL := &url.URL{Scheme: "http", Host: "proxy.invalid:3128"}
	ht.Transport.Proxy = http.ProxyURL(proxyURL)
	d := newStreamDialer(ht)
	if d == nil {
		t.Fatal("a plain HTTP/1.1 transport got no dialer")
	}
	if d.DialContext == nil || d.ResponseHeaderTimeout != 3*time.Second || d.MaxResponseHeaderSize != 8192 {
		t.Errorf("dialer %+v does not carry the transport's settings", d)
	}
	if u, _ := d.Proxy(&http.Request{URL: &url.URL{Scheme: "http", Host: "a"}}); u == nil || *u != *proxyURL {
		t.Errorf("proxy %v, want the transport's", u)
	}
}
