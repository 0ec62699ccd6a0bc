package bgp

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// The session plan: who peers with whom, and which side dials.
func TestNeighbors(t *testing.T) {
	a := netip.MustParseAddr
	lease := func(n int, rr bool) cluster.Lease {
		return cluster.Lease{NodeName: fmt.Sprint("node", n), NodeIP: a(fmt.Sprint("192.168.50.", n)), RouteReflector: rr}
	}
	plan := func(self int, rr bool, peers ...cluster.Lease) string {
		nw := &network{node: backend.Node{IP: a(fmt.Sprint("192.168.50.", self)), Network: &conf.Network{CIDR: netip.MustParsePrefix("10.244.0.0/16")}},
			cfg: backend.BGP{NodeMesh: true, RouteReflector: rr, Peers: []backend.BGPPeer{{Address: a("192.168.50.254"), ASN: 64600}}}}
		out := ""
		neighbors, _ := nw.neighbors(peers)
		for _, n := range neighbors {
			out += fmt.Sprintf("%s:", n.Name)
			if n.RRClient {
				out += "client,"
			}
			if n.External {
				out += "external,"
			}
			if n.Passive {
				out += "waits "
			} else {
				out += "dials "
			}
		}
		return out
	}
	for _, tt := range []struct{ name, got, want string }{
		{"mesh: the lower address dials", plan(2, false, lease(1, false), lease(3, false)), "node1:waits node3:dials external:external,dials "},
		{"a client dials its reflectors, whatever the addresses", plan(5, false, lease(1, true), lease(2, true), lease(7, false)), "node1:dials node2:dials external:external,dials "},
		{"a reflector waits for its clients and peers plainly with reflectors", plan(2, true, lease(1, true), lease(5, false)), "node1:waits node5:client,waits external:external,dials "},
	} {
		if tt.got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}
