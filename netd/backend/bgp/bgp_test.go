package bgp

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/backend/backendtest"
	"github.com/berthnet/berth/netd/cluster"
)

// Desired only computes: however often it runs (netd status runs it on
// every GET), it opens no session and announces nothing. Announce, the
// reconcile loop's apply step, does both.
func TestDesiredChangesNothing(t *testing.T) {
	netns, node := backendtest.Node(t, conf.Network{Mode: "bgp", CIDR: netip.MustParsePrefix("10.244.0.0/16")})
	// No listener: GoBGP listens from its own goroutines, outside the
	// test's namespace; sessions are configured all the same.
	node.BGP = backend.BGP{NodeMesh: true, Port: -1}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := netns.Do(func(ns.NetNS) error {
		nw, err := Backend{}.Register(ctx, node)
		if err != nil {
			return err
		}
		defer nw.(*network).sp.Stop()
		self := cluster.Lease{NodeName: "node1", NodeIP: node.IP, Subnet: netip.MustParsePrefix("10.244.1.0/24"), Mode: "bgp"}
		peers := []cluster.Lease{{NodeName: "node2", NodeIP: netip.MustParseAddr("192.168.50.2"), Subnet: netip.MustParsePrefix("10.244.2.0/24"), Mode: "bgp"}}
		in := backend.Input{Self: self, Peers: peers, Underlay: backend.NewUnderlay(node).Path}
		for range 3 {
			s, _ := nw.Desired(in)
			if len(s.Routes) != 1 || s.Routes[0].Dst.String() != "10.244.1.0/24" {
				t.Errorf("desired routes %v, want the blackhole for the block", s.Routes)
			}
		}
		sp := nw.(*network).sp
		if ss, err := sp.Sessions(ctx); err != nil || len(ss) != 0 {
			t.Fatalf("Desired opened sessions: %+v %v", ss, err)
		}
		if len(nw.(*network).announced) != 0 {
			t.Fatal("Desired announced the block")
		}
		problems := nw.(backend.Announcer).Announce(ctx, self, peers)
		if len(problems) != 0 {
			t.Fatalf("announce: %v", problems)
		}
		if ss, err := sp.Sessions(ctx); err != nil || len(ss) != 1 || ss[0].Neighbor.Address != peers[0].NodeIP {
			t.Fatalf("sessions after Announce: %+v %v", ss, err)
		}
		if a := nw.(*network).announced; len(a) != 1 || a[0] != self.Subnet {
			t.Fatal("Announce did not announce the block")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// On a dual-stack network the node announces a block per family, has a
// session per family with each peer (between the two nodes' addresses of
// that family), and blackholes both blocks; a peer from before
// dual-stack (no IPv6 at all) gets its IPv4 session; a peer with an IPv6
// block but no IPv6 address gets its IPv4 session and a problem.
func TestDualStack(t *testing.T) {
	netns, node := backendtest.Node(t, conf.Network{Mode: "bgp", CIDR: netip.MustParsePrefix("10.244.0.0/16"), CIDRv6: netip.MustParsePrefix("fd00:244::/56")})
	node.BGP = backend.BGP{NodeMesh: true, Port: -1}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := netns.Do(func(ns.NetNS) error {
		nw, err := Backend{}.Register(ctx, node)
		if err != nil {
			return err
		}
		defer nw.(*network).sp.Stop()
		self := cluster.Lease{NodeName: "node1", NodeIP: node.IP, NodeIPv6: node.IPv6, Mode: "bgp",
			Subnet: netip.MustParsePrefix("10.244.1.0/24"), SubnetV6: netip.MustParsePrefix("fd00:244:0:1::/64")}
		peers := []cluster.Lease{
			{NodeName: "node2", NodeIP: netip.MustParseAddr("192.168.50.2"), NodeIPv6: netip.MustParseAddr("fd00:50::2"), Mode: "bgp",
				Subnet: netip.MustParsePrefix("10.244.2.0/24"), SubnetV6: netip.MustParsePrefix("fd00:244:0:2::/64")},
			{NodeName: "old", NodeIP: netip.MustParseAddr("192.168.50.3"), Mode: "bgp", Subnet: netip.MustParsePrefix("10.244.3.0/24")},
			{NodeName: "noaddr", NodeIP: netip.MustParseAddr("192.168.50.4"), Mode: "bgp", Subnet: netip.MustParsePrefix("10.244.4.0/24"),
				SubnetV6: netip.MustParsePrefix("fd00:244:0:4::/64")},
		}
		s, _ := nw.Desired(backend.Input{Self: self, Peers: peers, Underlay: backend.NewUnderlay(node).Path})
		// No unreachable route to the network, as vxlan and hostgw
		// have: a router may reach the other blocks.
		if len(s.Routes) != 2 || s.Routes[0].Dst.String() != "10.244.1.0/24" || s.Routes[1].Dst.String() != "fd00:244:0:1::/64" {
			t.Errorf("desired routes %v, want a blackhole for each block and nothing else", s.Routes)
		}
		problems := nw.(backend.Announcer).Announce(ctx, self, peers)
		if len(problems) != 1 || problems[0].Peer != "noaddr" || !strings.Contains(problems[0].Err.Error(), "no IPv6 session") {
			t.Errorf("announce: %v", problems)
		}
		ss, err := nw.(*network).sp.Sessions(ctx)
		var got []string
		for _, x := range ss {
			got = append(got, x.Neighbor.Address.String()+" "+x.Neighbor.Name)
		}
		if err != nil || strings.Join(got, ", ") != "192.168.50.2 node2, 192.168.50.3 old, 192.168.50.4 noaddr, fd00:50::2 node2" {
			t.Errorf("sessions %v %v", got, err)
		}
		if a := nw.(*network).announced; len(a) != 2 || a[0] != self.Subnet || a[1] != self.SubnetV6 {
			t.Errorf("announced %v", a)
		}
		// The IPv6 block changes (a new lease): the old one is withdrawn.
		self.SubnetV6 = netip.MustParsePrefix("fd00:244:0:9::/64")
		nw.(backend.Announcer).Announce(ctx, self, peers)
		if a := nw.(*network).announced; len(a) != 2 || a[1] != self.SubnetV6 {
			t.Errorf("announced after the change %v", a)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A node without IPv4 gets a router ID all the same, stable and its own.
func TestRouterID(t *testing.T) {
	a := RouterID(backend.Node{Name: "node1", IPv6: netip.MustParseAddr("fd00:50::1")})
	b := RouterID(backend.Node{Name: "node2", IPv6: netip.MustParseAddr("fd00:50::2")})
	if !a.Is4() || a == b || a != RouterID(backend.Node{Name: "node1"}) || a.IsUnspecified() {
		t.Errorf("router IDs %s %s", a, b)
	}
	if id := RouterID(backend.Node{Name: "n", IP: netip.MustParseAddr("192.168.50.7")}); id.String() != "192.168.50.7" {
		t.Errorf("with IPv4: %s", id)
	}
}
