package admission

import "testing"

func TestClientKeyForIP(t *testing.T) {
	for _, tc := range []struct {
		ip   string
		bits int
		want string
	}{
		// IPv4 as is.
		{"203.0.113.7", 0, "203.0.113.7"},
		{"203.0.113.7", 48, "203.0.113.7"},
		{"0.0.0.0", 0, "0.0.0.0"},
		// IPv4-mapped IPv6 as IPv4, in either notation, with or without a zone.
		{"::ffff:203.0.113.7", 0, "203.0.113.7"},
		{"::FFFF:cb00:7107", 0, "203.0.113.7"},
		{"::ffff:203.0.113.7%eth0", 128, "203.0.113.7"},
		// IPv6 masked to the default /64.
		{"2001:db8:1:2:aaaa:bbbb:cccc:dddd", 0, "2001:db8:1:2::/64"},
		{"2001:DB8:1:2::1", 0, "2001:db8:1:2::/64"},
		{"2001:0db8:0001:0002:0000:0000:0000:0001", -5, "2001:db8:1:2::/64"},
		{"2001:db8::1", 0, "2001:db8::/64"},
		{"::1", 0, "::/64"},
		{"fe80::1%eth0", 0, "fe80::/64"},
		// Other prefix lengths.
		{"2001:db8:1:2:aaaa::1", 48, "2001:db8:1::/48"},
		{"2001:db8:1:2:aaaa::1", 56, "2001:db8:1::/56"},
		{"2001:db8:1:2ff:aaaa::1", 56, "2001:db8:1:200::/56"},
		{"2001:db8:1:2:aaaa::1", 1, "::/1"},
		{"2001:db8:1:2:aaaa::1", 127, "2001:db8:1:2:aaaa::/127"},
		{"2001:db8:1:2:aaaa::1", 128, "2001:db8:1:2:aaaa::1"},
		{"2001:db8:1:2:aaaa::1", 200, "2001:db8:1:2:aaaa::1"},
		{"2001:db8:0:0:1:0:0:1", 128, "2001:db8::1:0:0:1"},
		{"fe80::1%eth0", 128, "fe80::1"},
		// Anything unparsable unchanged.
		{"", 0, ""},
		{"not an address", 0, "not an address"},
		{"203.0.113.7:443", 0, "203.0.113.7:443"},
		{"[2001:db8::1]:443", 0, "[2001:db8::1]:443"},
		{"[2001:db8::1]", 0, "[2001:db8::1]"},
		{"203.0.113.07", 0, "203.0.113.07"},
		{"203.0.113.7%eth0", 0, "203.0.113.7%eth0"},
		{" 203.0.113.7", 0, " 203.0.113.7"},
		{"2001:db8::/64", 0, "2001:db8::/64"},
		{"user@example.com", 0, "user@example.com"},
	} {
		if got := ClientKeyForIP(tc.ip, tc.bits); got != tc.want {
			t.Errorf("ClientKeyForIP(%q, %d) = %q, want %q", tc.ip, tc.bits, got, tc.want)
		}
	}
}

// TestClientKeyForIPGroups checks that the addresses of one /64 share a key
// and that neighbouring networks do not.
func TestClientKeyForIPGroups(t *testing.T) {
	a := ClientKeyForIP("2001:db8:1:2::1", 0)
	b := ClientKeyForIP("2001:db8:1:2:ffff:ffff:ffff:ffff", 0)
	c := ClientKeyForIP("2001:db8:1:3::1", 0)
	if a != b || a == c {
		t.Fatalf("keys %q, %q, %q", a, b, c)
	}
}

func TestClientKeyForIPAllocs(t *testing.T) {
	for _, ip := range []string{"203.0.113.7", "", "garbage", "user@example.com", "[::1]:80"} {
		if n := testing.AllocsPerRun(100, func() { ClientKeyForIP(ip, 0) }); n != 0 {
			t.Errorf("ClientKeyForIP(%q): %v allocs", ip, n)
		}
	}
}

func BenchmarkClientKeyForIP(b *testing.B) {
	for _, ip := range []string{"203.0.113.7", "2001:db8:1:2:aaaa:bbbb:cccc:dddd"} {
		b.Run(ip, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ClientKeyForIP(ip, 0)
			}
		})
	}
}
