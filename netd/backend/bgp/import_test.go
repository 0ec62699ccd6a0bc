package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// Which learned paths become routes: only leased blocks, each via a next
// hop that leads to its node; never this node's block or a more specific.
// Each family is checked against its own CIDR, blocks and node addresses.
func TestImportPaths(t *testing.T) {
	a := netip.MustParseAddr
	p := netip.MustParsePrefix
	router, rogue := a("192.168.50.254"), a("192.168.50.9")
	router6, rogue6 := a("fd00:50::254"), a("fd00:50::9")
	nw := &network{node: backend.Node{IP: a("192.168.50.1"), IPv6: a("fd00:50::1"),
		Network: &conf.Network{CIDR: p("10.244.0.0/16"), CIDRv6: p("fd00:244::/56")}}}
	underlay := func(addr netip.Addr) (backend.Path, error) {
		switch {
		case p("192.168.50.0/24").Contains(addr), p("fd00:50::/64").Contains(addr):
			return backend.Path{Direct: true}, nil
		case p("192.168.60.0/24").Contains(addr):
			return backend.Path{Gateway: router}, nil
		case p("fd00:60::/64").Contains(addr):
			return backend.Path{Gateway: router6}, nil
		}
		return backend.Path{}, errors.New("no route")
	}
	lease := func(n int, segment int) cluster.Lease {
		return cluster.Lease{NodeName: fmt.Sprint("node", n),
			NodeIP: a(fmt.Sprintf("192.168.%d.%d", segment, n)), NodeIPv6: a(fmt.Sprintf("fd00:%d::%d", segment, n)),
			Subnet: p(fmt.Sprintf("10.244.%d.0/24", n)), SubnetV6: p(fmt.Sprintf("fd00:244:0:%d::/64", n))}
	}
	// node5 comes from before dual-stack: an IPv6 block (as a rolling
	// upgrade could leave) but no IPv6 address to check a next hop against.
	node5 := lease(5, 60)
	node5.NodeIPv6 = netip.Addr{}
	in := backend.Input{
		Self:     lease(1, 50),
		Peers:    []cluster.Lease{lease(2, 50), lease(3, 60), lease(4, 60), node5},
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
		{"an IPv4 block with an IPv6 next hop", path("10.244.3.0/24", router6, router, true), "next hop fd00:50::254 is not an IPv4 address"},

		{"IPv6: a node's own announcement", path("fd00:244:0:2::/64", a("fd00:50::2"), a("fd00:50::2"), true), ""},
		{"IPv6: a router passing the node's next hop on", path("fd00:244:0:4::/64", a("fd00:60::4"), router6, true), ""},
		{"IPv6: a router between segments, next hop itself", path("fd00:244:0:3::/64", router6, router6, true), ""},
		{"IPv6: a router that is not the way to the node", path("fd00:244:0:3::/64", rogue6, rogue6, false), "leads neither to node3's address fd00:60::3 nor through this node's gateway to it, fd00:50::254"},
		{"IPv6: a router announcing an adjacent node's block (routed to the node)", path("fd00:244:0:2::/64", router6, router6, false), ""},
		{"IPv6: the node's IPv4 address is not its IPv6 next hop", path("fd00:244:0:3::/64", a("192.168.60.3"), router6, true), "not an IPv6 address"},
		{"IPv6: a more specific of a node's block", path("fd00:244:0:2::/80", router6, router6, true), "more specific of node2's block fd00:244:0:2::/64"},
		{"IPv6: a block nobody leases", path("fd00:244:0:9::/64", router6, router6, true), "no node leases it"},
		{"IPv6: this node's own block", path("fd00:244:0:1::/64", router6, router6, true), "this node's own block fd00:244:0:1::/64"},
		{"IPv6: inside this node's block", path("fd00:244:0:1:8000::/65", router6, router6, true), "inside this node's own block"},
		{"IPv6: a block over an IPv4 session", path("fd00:244:0:3::/64", router6, router, true), "came over an IPv4 session"},
		{"IPv4: a block over an IPv6 session", path("10.244.3.0/24", router, router6, true), "came over an IPv6 session"},
		{"IPv6: a node whose lease has no IPv6 address", path("fd00:244:0:5::/64", router6, router6, true), "node5's lease has no IPv6 node address"},
	}
	for _, tt := range tests {
		in.Routing.Paths = []backend.LearnedPath{tt.path}
		sel := nw.importPaths(in)
		chosen, installed := sel.chosen[tt.path.Prefix]
		node2 := in.Peers[0].NodeAddr(tt.path.Prefix.Addr().Is6())
		if installed && chosen.NextHop != tt.path.NextHop && chosen.NextHop != node2 {
			t.Errorf("%s: via %s", tt.name, chosen.NextHop)
		}
		if installed && slices.Contains(in.Peers[0].Subnets(), tt.path.Prefix) && chosen.NextHop != node2 {
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

	// The same for IPv6, and a prefix of a family the network does not
	// have is foreign (learned only with --bgp-accept-foreign).
	in.Routing.Paths = []backend.LearnedPath{
		path("::/0", router6, router6, true),
		path("fd00:244:0:3::/64", rogue6, rogue6, true),
		path("fd00:244:0:3::/64", router6, router6, false),
		path("2001:db8::/32", rogue6, rogue6, false),
		path("2001:db8::/32", router6, router6, true),
	}
	sel = nw.importPaths(in)
	want = map[netip.Prefix]netip.Addr{p("::/0"): router6, p("fd00:244:0:3::/64"): router6, p("2001:db8::/32"): router6}
	if len(sel.chosen) != len(want) || len(sel.refused) != 1 {
		t.Fatalf("IPv6: chosen %v refused %v", sel.chosen, sel.refused)
	}
	for pfx, from := range want {
		if sel.chosen[pfx].From != from {
			t.Errorf("%s from %s, want %s", pfx, sel.chosen[pfx].From, from)
		}
	}
	v4only := &network{node: backend.Node{IP: a("192.168.50.1"), Network: &conf.Network{CIDR: p("10.244.0.0/16")}}}
	in.Routing.Paths = []backend.LearnedPath{path("fd00:244:0:2::/64", a("fd00:50::2"), a("fd00:50::2"), true)}
	if sel := v4only.importPaths(in); len(sel.refused) != 0 || sel.chosen[p("fd00:244:0:2::/64")].From != a("fd00:50::2") {
		t.Errorf("IPv6 prefix on an IPv4-only network: chosen %v refused %v, want it taken as foreign", sel.chosen, sel.refused)
	}
}
