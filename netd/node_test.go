package netd

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/berthnet/berth/conf"
)

// A node whose underlay address lies inside the network's CIDR is
// refused at start, whichever family: peers would ignore its lease, and
// the unreachable route to the CIDR would take its own underlay.
func TestUnderlayOutsideNetwork(t *testing.T) {
	n := &conf.Network{Name: "pods", CIDR: netip.MustParsePrefix("10.244.0.0/16"), CIDRv6: netip.MustParsePrefix("fd00:244::/56")}
	for _, tc := range []struct {
		name     string
		ip, ipv6 string
		want     string // "" : accepted
	}{
		{"apart", "192.168.50.1", "fd00:50::1", ""},
		{"IPv4 only, apart", "192.168.50.1", "", ""},
		{"IPv4 inside", "10.244.7.1", "fd00:50::1", "this node's address 10.244.7.1 is inside the network's CIDR 10.244.0.0/16"},
		{"IPv6 inside", "192.168.50.1", "fd00:244:0:7::1", "this node's address fd00:244:0:7::1 is inside the network's CIDR fd00:244::/56"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := &underlay{}
			if tc.ip != "" {
				u.IP = netip.MustParseAddr(tc.ip)
			}
			if tc.ipv6 != "" {
				u.IPv6 = netip.MustParseAddr(tc.ipv6)
			}
			err := u.outside(n)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("outside: %v, want %q", err, tc.want)
			}
		})
	}
}
