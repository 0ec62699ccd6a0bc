package hostgw

import (
	"context"
	"errors"
	"net/netip"
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
	if len(s.Routes) != 1 || backend.DescribeRoute(&s.Routes[0], name) != "10.244.2.0/24 via 192.168.50.2 dev eth0" {
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
