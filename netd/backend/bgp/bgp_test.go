package bgp

import (
	"context"
	"net/netip"
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
		if nw.(*network).self.IsValid() {
			t.Fatal("Desired announced the block")
		}
		problems := nw.(backend.Announcer).Announce(ctx, self, peers)
		if len(problems) != 0 {
			t.Fatalf("announce: %v", problems)
		}
		if ss, err := sp.Sessions(ctx); err != nil || len(ss) != 1 || ss[0].Neighbor.Address != peers[0].NodeIP {
			t.Fatalf("sessions after Announce: %+v %v", ss, err)
		}
		if nw.(*network).self != self.Subnet {
			t.Fatal("Announce did not announce the block")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
