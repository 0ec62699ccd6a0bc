package bgp

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// Which learned paths become routes: only leased blocks, each via a next
// hop that leads to its node; never this node's block or a more specific.
func TestImportPaths(t *testing.T) {
	a := netip.MustParseAddr
	p := netip.MustParsePrefix
	router, rogue := a("192.168.50.254"), a("192.168.50.9")
	nw := &network{node: backend.Node{IP: a("192.168.50.1"), Network: &conf.Network{CIDR: p("10.244.0.0/16")}}}
	underlay := func(addr netip.Addr) (backend.Path, error) {
		switch {
		case p("192.168.50.0/24").Contains(addr):
			return backend.Path{Direct: true}, nil
		case p("192.168.60.0/24").Contains(addr):
			return backend.Path{Gateway: router}, nil
		}
		return backend.Path{}, errors.New("no route")
	}
	in := backend.Input{
		Self: cluster.Lease{NodeName: "node1", NodeIP: a("192.168.50.1"), Subnet: p("10.244.1.0/24")},
		Peers: []cluster.Lease{
			{NodeName: "node2", NodeIP: a("192.168.50.2"), Subnet: p("10.244.2.0/24")},
			{NodeName: "node3", NodeIP: a("192.168.60.3"), Subnet: p("10.244.3.0/24")},
			{NodeName: "node4", NodeIP: a("192.168.60.4"), Subnet: p("10.244.4.0/24")},
		},
		Underlay: underlay,
	}
	path := func(prefix string, nh, from netip.Addr, best bool) backend.LearnedPath {
		return backend.LearnedPath{Prefix: p(prefix), NextHop: nh, From: from, Best: best}
	}
	tests := []struct {
		name    string
		path    backend.LearnedPath
		refused string // "" if installed
	}{
		{"a node's own announcement", path("10.244.2.0/24", a("192.168.50.2"), a("192.168.50.2"), true), ""},
		{"a router passing the node's next hop on", path("10.244.4.0/24", a("192.168.60.4"), router, true), ""},
		{"a router between segments, next hop itself", path("10.244.3.0/24", router, router, true), ""},
		{"a router that is not the way to the node", path("10.244.3.0/24", rogue, rogue, false), "leads neither to node3's address 192.168.60.3 nor through this node's gateway"},
		{"a router announcing an adjacent node's block (routed to the node)", path("10.244.2.0/24", router, router, false), ""},
		{"a router not on the way to a node behind another", path("10.244.3.0/24", rogue, rogue, false), "nor through this node's gateway to it, 192.168.50.254"},
		{"the router's other address (loopback peering)", path("10.244.3.0/24", a("192.168.60.254"), a("192.168.60.254"), true), ""},
		{"a more specific of a node's block", path("10.244.2.0/25", router, router, true), "more specific of node2's block 10.244.2.0/24"},
		{"a block nobody leases", path("10.244.9.0/24", router, router, true), "no node leases it"},
		{"this node's own block", path("10.244.1.0/24", router, router, true), "this node's own block"},
		{"inside this node's block", path("10.244.1.128/25", router, router, true), "inside this node's own block"},
		{"no next hop", path("10.244.3.0/24", netip.Addr{}, rogue, false), "no next hop"},
	}
	for _, tt := range tests {
		in.Routing.Paths = []backend.LearnedPath{tt.path}
		sel := nw.importPaths(in)
		chosen, installed := sel.chosen[tt.path.Prefix]
		if installed && chosen.NextHop != tt.path.NextHop && chosen.NextHop != a("192.168.50.2") {
			t.Errorf("%s: via %s", tt.name, chosen.NextHop)
		}
		if installed && tt.path.Prefix == p("10.244.2.0/24") && chosen.NextHop != a("192.168.50.2") {
			t.Errorf("%s: node2's block via %s, want node2 itself", tt.name, chosen.NextHop)
		}
		switch {
		case tt.refused == "" && (!installed || len(sel.refused) > 0):
			t.Errorf("%s: refused: %v", tt.name, sel.refused)
		case tt.refused != "" && (installed || len(sel.refused) != 1 || !strings.Contains(sel.refused[0].err.Error(), tt.refused)):
			t.Errorf("%s: installed %v, refused %v; want refused with %q", tt.name, installed, sel.refused, tt.refused)
		}
	}

	// A refused best path does not hide an acceptable one; foreign
	// prefixes (only learned with --bgp-accept-foreign) are taken as BGP chose.
	in.Routing.Paths = []backend.LearnedPath{
		path("0.0.0.0/0", router, router, true),
		path("10.244.3.0/24", rogue, rogue, true),
		path("10.244.3.0/24", router, router, false),
		path("198.51.100.0/24", rogue, rogue, false),
		path("198.51.100.0/24", router, router, true),
	}
	sel := nw.importPaths(in)
	want := map[netip.Prefix]netip.Addr{p("0.0.0.0/0"): router, p("10.244.3.0/24"): router, p("198.51.100.0/24"): router}
	if len(sel.chosen) != len(want) || len(sel.refused) != 1 {
		t.Fatalf("chosen %v refused %v", sel.chosen, sel.refused)
	}
	for pfx, from := range want {
		if sel.chosen[pfx].From != from {
			t.Errorf("%s from %s, want %s", pfx, sel.chosen[pfx].From, from)
		}
	}
	if acc := sel.accepted(); acc[router] != 3 || acc[rogue] != 0 {
		t.Errorf("accepted per peer %v", acc)
	}
}
