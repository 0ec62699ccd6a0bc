package hostgw

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// node is a node whose underlay is eth0 (index 2, MTU 1500), without a
// namespace: Desired only computes.
func node(mtu int) backend.Node {
	n := conf.Network{Mode: "hostgw", MTU: mtu}.WithDefaults()
	return backend.Node{Name: "node1", IP: netip.MustParseAddr("192.168.50.1"),
		Link: &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth0", Index: 2, MTU: 1500}}, Network: &n}
}

// underlay answers as a node on 192.168.50.0/24 with a router at .254.
func underlay(ip netip.Addr) (backend.Path, error) {
	switch {
	case ip == netip.MustParseAddr("192.168.70.7"):
		return backend.Path{}, errors.New("no route to 192.168.70.7")
	case netip.MustParsePrefix("192.168.50.0/24").Contains(ip):
		return backend.Path{LinkIndex: 2, Dev: "eth0", Direct: true}, nil
	}
	return backend.Path{LinkIndex: 2, Dev: "eth0", Gateway: netip.MustParseAddr("192.168.50.254")}, nil
}

func peer(name, ip, subnet string) cluster.Lease {
	return cluster.Lease{NodeName: name, NodeIP: netip.MustParseAddr(ip), Subnet: netip.MustParsePrefix(subnet), Mode: "hostgw"}
}

// A peer on the segment gets a route via its node IP; one behind the
// router gets none and a problem that says why and what to do; one the
// node cannot route to at all, the kernel's error.
func TestDesired(t *testing.T) {
	nw, err := Backend{}.Register(context.Background(), node(0))
	if err != nil {
		t.Fatal(err)
	}
	if nw.MTU() != 1500 {
		t.Errorf("MTU %d, want the underlay's 1500", nw.MTU())
	}
	s, problems := nw.Desired(backend.Input{
		Self: peer("node1", "192.168.50.1", "10.244.1.0/24"),
		Peers: []cluster.Lease{
			peer("near", "192.168.50.2", "10.244.2.0/24"),
			peer("far", "192.168.60.3", "10.244.3.0/24"),
			peer("lost", "192.168.70.7", "10.244.7.0/24"),
		},
		Underlay: underlay,
	})
	name := func(int) string { return "eth0" }
	if len(s.Routes) != 2 || backend.DescribeRoute(&s.Routes[0], name) != "unreachable 10.244.0.0/16 metric 4294967295" ||
		backend.DescribeRoute(&s.Routes[1], name) != "10.244.2.0/24 via 192.168.50.2 dev eth0" {
		t.Errorf("routes %v", s.Routes)
	}
	if len(problems) != 2 || problems[0].Peer != "far" ||
		!strings.Contains(problems[0].Err.Error(), "not on this node's L2 segment (eth0 reaches it via 192.168.50.254 dev eth0)") ||
		!strings.Contains(problems[0].Err.Error(), "use vxlan mode") ||
		problems[1].Peer != "lost" || !strings.Contains(problems[1].Err.Error(), "no route to 192.168.70.7") {
		t.Errorf("problems %v", problems)
	}
	if _, err := (Backend{}).Register(context.Background(), node(9000)); err == nil || !strings.Contains(err.Error(), "larger than the underlay eth0's MTU 1500") {
		t.Errorf("MTU larger than the underlay: %v", err)
	}
}

// underlay6 is underlay with fd00:50::/64 on the segment.
func underlay6(ip netip.Addr) (backend.Path, error) {
	if ip.Is6() {
		if netip.MustParsePrefix("fd00:50::/64").Contains(ip) {
			return backend.Path{LinkIndex: 2, Dev: "eth0", Direct: true}, nil
		}
		return backend.Path{LinkIndex: 2, Dev: "eth0", Gateway: netip.MustParseAddr("fd00:50::254")}, nil
	}
	return underlay(ip)
}

func dualPeer(name, ip, ip6, subnet, subnet6 string) cluster.Lease {
	l := peer(name, ip, subnet)
	l.SubnetV6 = netip.MustParsePrefix(subnet6)
	if ip6 != "" {
		l.NodeIPv6 = netip.MustParseAddr(ip6)
	}
	return l
}

// A dual-stack peer gets a route per family via its node address of that
// family; a peer without an IPv6 node address keeps its IPv4 route and
// is reported for IPv6; an IPv6-only peer gets its IPv6 route.
func TestDesiredDualStack(t *testing.T) {
	n := conf.Network{Mode: "hostgw", CIDR: netip.MustParsePrefix("10.244.0.0/16"), CIDRv6: netip.MustParsePrefix("fd00:244::/56")}.WithDefaults()
	nd := node(0)
	nd.Network, nd.IPv6 = &n, netip.MustParseAddr("fd00:50::1")
	nw, err := Backend{}.Register(context.Background(), nd)
	if err != nil {
		t.Fatal(err)
	}
	v6only := dualPeer("v6only", "192.168.50.9", "fd00:50::9", "10.244.9.0/24", "fd00:244:0:9::/64")
	v6only.Subnet, v6only.NodeIP = netip.Prefix{}, netip.Addr{}
	s, problems := nw.Desired(backend.Input{
		Self: dualPeer("node1", "192.168.50.1", "fd00:50::1", "10.244.1.0/24", "fd00:244:0:1::/64"),
		Peers: []cluster.Lease{
			dualPeer("near", "192.168.50.2", "fd00:50::2", "10.244.2.0/24", "fd00:244:0:2::/64"),
			dualPeer("noipv6", "192.168.50.3", "", "10.244.3.0/24", "fd00:244:0:3::/64"),
			dualPeer("far6", "192.168.50.4", "fd00:60::4", "10.244.4.0/24", "fd00:244:0:4::/64"),
			v6only,
		},
		Underlay: underlay6,
	})
	var got []string
	for _, r := range s.Routes {
		got = append(got, backend.DescribeRoute(&r, func(int) string { return "eth0" }))
	}
	want := "unreachable 10.244.0.0/16 metric 4294967295; unreachable fd00:244::/56 metric 4294967295; 10.244.2.0/24 via 192.168.50.2 dev eth0; fd00:244:0:2::/64 via fd00:50::2 dev eth0; 10.244.3.0/24 via 192.168.50.3 dev eth0; " +
		"10.244.4.0/24 via 192.168.50.4 dev eth0; fd00:244:0:9::/64 via fd00:50::9 dev eth0"
	if strings.Join(got, "; ") != want {
		t.Errorf("routes\n got %s\nwant %s", strings.Join(got, "; "), want)
	}
	if len(problems) != 2 || problems[0].Peer != "noipv6" || !strings.Contains(problems[0].Err.Error(), "no IPv6 node address (nodeIPv6) to route its subnet fd00:244:0:3::/64") ||
		problems[1].Peer != "far6" || !strings.Contains(problems[1].Err.Error(), "node IP fd00:60::4 is not on this node's L2 segment") {
		t.Errorf("problems %v", problems)
	}
}

// Per family of the network, whether this node has a lease or peers yet:
// the unreachable route to the network's CIDR, with the last metric, so
// that an address of a subnet no peer holds is refused instead of
// following the default route.
func TestDesiredUnreachable(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")
	for _, tc := range []struct {
		name  string
		cidrs []netip.Prefix
		want  string
	}{
		{"IPv4", []netip.Prefix{v4}, "unreachable 10.244.0.0/16 metric 4294967295"},
		{"dual-stack", []netip.Prefix{v4, v6}, "unreachable 10.244.0.0/16 metric 4294967295; unreachable fd00:244::/56 metric 4294967295"},
		{"IPv6-only", []netip.Prefix{v6}, "unreachable fd00:244::/56 metric 4294967295"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := conf.Network{Mode: "hostgw"}
			for _, c := range tc.cidrs {
				if c.Addr().Is4() {
					n.CIDR = c
				} else {
					n.CIDRv6 = c
				}
			}
			n = n.WithDefaults()
			nd := node(0)
			nd.Network = &n
			nw, err := Backend{}.Register(context.Background(), nd)
			if err != nil {
				t.Fatal(err)
			}
			s, problems := nw.Desired(backend.Input{Underlay: underlay6})
			var got []string
			for _, r := range s.Routes {
				got = append(got, backend.DescribeRoute(&r, strconv.Itoa))
			}
			if strings.Join(got, "; ") != tc.want || len(problems) != 0 {
				t.Errorf("routes %s, problems %v; want %s", strings.Join(got, "; "), problems, tc.want)
			}
		})
	}
}
