package admission

import "net/netip"

// DefaultIPv6PrefixBits is the IPv6 network size that ClientKeyForIP groups
// addresses by when given no prefix length: a /64, the smallest network
// normally assigned to one subscriber or one LAN, in which a single host
// can pick any number of addresses.
const DefaultIPv6PrefixBits = 64

// ClientKeyForIP returns the key that identifies a client by its IP address
// for the per-client limits (Request.ClientKey). ip is an address as Caddy
// resolves the client's ({http.vars.client_ip}):
//
//   - an IPv4 address is its own key, such as "203.0.113.7";
//   - an IPv4-mapped IPv6 address is the IPv4 address it maps, so
//     "::ffff:203.0.113.7" is "203.0.113.7";
//   - an IPv6 address is the network of its first v6PrefixBits bits in
//     canonical form (RFC 5952) with its length, such as "2001:db8:1:2::/64"
//     for "2001:db8:1:2:aaaa::1", so that one host rotating through the
//     addresses of its network counts as one client; its zone, if any, is
//     dropped. v6PrefixBits <= 0 means DefaultIPv6PrefixBits; 128 (or more)
//     keeps the whole address, written without a length, such as
//     "2001:db8::1";
//   - anything else, including the empty string and an address with a
//     port, is returned unchanged.
//
// ClientKeyForIP does not allocate for an IPv4 address, nor for a string
// that cannot be an address, such as a principal's name (a string that only
// looks like one may cost the parser's error).
func ClientKeyForIP(ip string, v6PrefixBits int) string {
	if !maybeIP(ip) {
		return ip
	}
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	if addr.Is4() {
		// ParseAddr accepts only the dotted-decimal form, which is
		// canonical already.
		return ip
	}
	if addr.Is4In6() {
		return addr.Unmap().String()
	}
	addr = addr.WithZone("")
	bits := v6PrefixBits
	if bits <= 0 {
		bits = DefaultIPv6PrefixBits
	}
	var buf [64]byte // an IPv6 address and its length take at most 43
	if bits >= 128 {
		return string(addr.AppendTo(buf[:0]))
	}
	// PrefixFrom cannot fail here: addr is IPv6 and bits is in range.
	return string(netip.PrefixFrom(addr, bits).Masked().AppendTo(buf[:0]))
}

// maybeIP reports whether s can be an IP address: it is not empty and, up to
// a zone ('%'), holds only hexadecimal digits, dots and colons.
func maybeIP(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '%':
			return i > 0
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F', c == '.', c == ':':
		default:
			return false
		}
	}
	return true
}
