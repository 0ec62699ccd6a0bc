package backend_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/backend/backendtest"
)

func route(dst, gw string, link int) netlink.Route {
	return netlink.Route{Dst: backend.IPNet(netip.MustParsePrefix(dst)), Gw: netip.MustParseAddr(gw).AsSlice(), LinkIndex: link}
}

// Diff owns exactly the routes with RouteProtocol inside the CIDR: it adds
// and replaces the desired ones, removes the rest, and leaves other
// protocols and other CIDRs alone. A second pass finds nothing to do.
func TestDiffRoutes(t *testing.T) {
	netns, node := backendtest.Node(t, conf.Network{CIDR: netip.MustParsePrefix("10.244.0.0/16")})
	err := netns.Do(func(ns.NetNS) error {
		eth0 := node.Link.Attrs().Index
		mine := func(r netlink.Route) *netlink.Route { r.Protocol = backend.RouteProtocol; return &r }
		for _, r := range []*netlink.Route{
			mine(route("10.244.9.0/24", "192.168.50.9", eth0)),  // stale: no such peer
			mine(route("10.244.2.0/24", "192.168.50.99", eth0)), // wrong gateway
			mine(route("10.99.0.0/24", "192.168.50.7", eth0)),   // another network's
			{Dst: backend.IPNet(netip.MustParsePrefix("10.244.8.0/24")), Gw: netip.MustParseAddr("192.168.50.8").AsSlice(), LinkIndex: eth0, Protocol: 4}, // static
		} {
			if err := netlink.RouteAdd(r); err != nil {
				t.Fatalf("adding %v: %v", r, err)
			}
		}
		want := backend.State{Routes: []netlink.Route{route("10.244.2.0/24", "192.168.50.2", eth0), route("10.244.3.0/24", "192.168.50.3", eth0)}}
		owned := backend.Owned{CIDR: node.Network.CIDR}
		changes, err := backend.Diff(owned, want)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, c := range changes {
			got = append(got, c.What)
		}
		wantChanges := []string{
			"replace route 10.244.2.0/24 via 192.168.50.99 dev eth0 with 10.244.2.0/24 via 192.168.50.2 dev eth0",
			"add route 10.244.3.0/24 via 192.168.50.3 dev eth0",
			"remove route 10.244.9.0/24 via 192.168.50.9 dev eth0",
		}
		if strings.Join(got, "\n") != strings.Join(wantChanges, "\n") {
			t.Fatalf("changes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantChanges, "\n"))
		}
		if err := backend.Apply(changes); err != nil {
			t.Fatal(err)
		}
		if again, err := backend.Diff(owned, want); err != nil || len(again) != 0 {
			t.Fatalf("second pass: %v %v", again, err)
		}
		for _, dst := range []string{"10.99.0.0/24", "10.244.8.0/24"} {
			rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: backend.IPNet(netip.MustParsePrefix(dst))}, netlink.RT_FILTER_DST)
			if err != nil || len(rs) != 1 {
				t.Errorf("route to %s not netd's to remove: %v %v", dst, rs, err)
			}
		}
		// Removing what is already gone is not an error.
		if err := backend.RemoveRoutes(node.Network.CIDR); err != nil {
			t.Fatal(err)
		}
		return backend.RemoveRoutes(node.Network.CIDR)
	})
	if err != nil {
		t.Fatal(err)
	}
}
