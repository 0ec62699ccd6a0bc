package cluster

import (
	"net/netip"
	"testing"
)

// Which node wrote a lease under its name: the one with the lease's node
// ID; for a lease of a netd from before node IDs, the node at one of its
// addresses or whose lease file names its key. A missing address of a
// family (an IPv6-only node has no IPv4 one) is nobody's.
func TestOwns(t *testing.T) {
	v4, v4b := netip.MustParseAddr("192.168.50.2"), netip.MustParseAddr("192.168.50.3")
	v6, v6b := netip.MustParseAddr("fd00:50::2"), netip.MustParseAddr("fd00:50::3")
	key, key6 := netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:244:0:3::/64")
	self := Lease{NodeName: "node2", NodeID: "aa", NodeIP: v4, NodeIPv6: v6}
	self6 := Lease{NodeName: "node2", NodeID: "aa", NodeIPv6: v6}
	for _, tc := range []struct {
		name     string
		self, o  Lease
		previous netip.Prefix
		want     bool
	}{
		{"same ID", self, Lease{NodeID: "aa", NodeIP: v4b}, netip.Prefix{}, true},
		{"another ID at the same address", self, Lease{NodeID: "bb", NodeIP: v4, NodeIPv6: v6}, key, false},
		{"no ID, same IPv4 address", self, Lease{NodeIP: v4, NodeIPv6: v6b}, netip.Prefix{}, true},
		{"no ID, same IPv6 address", self, Lease{NodeIP: v4b, NodeIPv6: v6}, netip.Prefix{}, true},
		{"no ID, other addresses", self, Lease{NodeIP: v4b, NodeIPv6: v6b, Subnet: key}, netip.Prefix{}, false},
		{"no ID, the lease file's subnet", self, Lease{NodeIP: v4b, Subnet: key}, key, true},
		{"no ID, IPv6-only, the lease file's subnet", self6, Lease{NodeIPv6: v6b, SubnetV6: key6}, key6, true},
		{"no ID, IPv6-only, other address", self6, Lease{NodeIPv6: v6b, SubnetV6: key6}, netip.Prefix{}, false},
	} {
		if got := tc.self.Owns(tc.o, tc.previous); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestNodeAddrs(t *testing.T) {
	v4, v6 := netip.MustParseAddr("192.168.50.2"), netip.MustParseAddr("fd00:50::2")
	for l, want := range map[Lease]string{
		{NodeIP: v4}:               "192.168.50.2",
		{NodeIPv6: v6}:             "fd00:50::2",
		{NodeIP: v4, NodeIPv6: v6}: "192.168.50.2,fd00:50::2",
	} {
		if got := l.NodeAddrs(); got != want {
			t.Errorf("%+v: %q, want %q", l, got, want)
		}
	}
}
