package backend_test

import (
	"errors"
	"maps"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/backend/backendtest"
)

func route(dst, gw string, link int) netlink.Route {
	return netlink.Route{Dst: backend.IPNet(netip.MustParsePrefix(dst)), Gw: netip.MustParseAddr(gw).AsSlice(), LinkIndex: link}
}

// mine is r as the kernel reports a route netd installed.
func mine(r netlink.Route) netlink.Route {
	r.Protocol, r.Table = backend.RouteProtocol, unix.RT_TABLE_MAIN
	if r.Type == 0 {
		r.Type = unix.RTN_UNICAST
	}
	return r
}

// unreachable is an unreachable route to dst on link (the kernel reports
// an IPv6 one on lo) with metric.
func unreachable(dst string, link, metric int) netlink.Route {
	return netlink.Route{Dst: backend.IPNet(netip.MustParsePrefix(dst)), Type: unix.RTN_UNREACHABLE, LinkIndex: link, Priority: metric}
}

func mac(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }

func neigh(ip, lladdr string, state int) netlink.Neigh {
	return netlink.Neigh{LinkIndex: 5, IP: net.ParseIP(ip).To4(), HardwareAddr: mac(lladdr), State: state, Family: netlink.FAMILY_V4}
}

func fdb(lladdr, dst string, state int) netlink.Neigh {
	return netlink.Neigh{LinkIndex: 5, IP: net.ParseIP(dst).To4(), HardwareAddr: mac(lladdr), State: state, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF}
}

func addr(p string) netlink.Addr {
	a, _ := netlink.ParseAddr(p)
	a.LinkIndex = 5
	return *a
}

// Diff is pure: the same comparison for every kind of object, on states
// built by hand. Additions and replacements come first, then removals;
// equal states give nothing.
func TestDiff(t *testing.T) {
	links := map[int]string{2: "eth0", 5: "berth.1"}
	for _, tc := range []struct {
		name       string
		have, want backend.State
		changes    []string
		links      map[int]string // besides eth0 and berth.1
	}{
		{name: "nothing"},
		{
			name: "routes: missing, wrong gateway, stale, duplicate metric",
			have: backend.State{Routes: []netlink.Route{
				mine(route("10.244.9.0/24", "192.168.50.9", 2)),
				mine(route("10.244.2.0/24", "192.168.50.99", 2)),
				mine(route("10.244.4.0/24", "192.168.50.4", 2)),
				func() netlink.Route { r := mine(route("10.244.4.0/24", "192.168.50.4", 2)); r.Priority = 7; return r }(),
			}},
			want: backend.State{Routes: []netlink.Route{
				route("10.244.2.0/24", "192.168.50.2", 2), route("10.244.3.0/24", "192.168.50.3", 2), route("10.244.4.0/24", "192.168.50.4", 2),
			}},
			// A route of another metric is another route to the kernel,
			// which a replace would not touch: it is removed.
			changes: []string{
				"replace route 10.244.2.0/24 via 192.168.50.99 dev eth0 with 10.244.2.0/24 via 192.168.50.2 dev eth0",
				"add route 10.244.3.0/24 via 192.168.50.3 dev eth0",
				"remove route 10.244.9.0/24 via 192.168.50.9 dev eth0",
				"remove route 10.244.4.0/24 via 192.168.50.4 dev eth0 metric 7",
			},
		},
		{
			name: "routes: onlink and blackhole matter, a route built without a type is unicast",
			have: backend.State{Routes: []netlink.Route{
				mine(route("10.244.2.0/24", "10.244.2.0", 5)),
				mine(netlink.Route{Dst: backend.IPNet(netip.MustParsePrefix("10.244.1.0/24")), Type: unix.RTN_BLACKHOLE}),
				mine(route("10.244.3.0/24", "192.168.50.3", 2)),
			}},
			want: backend.State{Routes: []netlink.Route{
				func() netlink.Route {
					r := route("10.244.2.0/24", "10.244.2.0", 5)
					r.Flags = int(netlink.FLAG_ONLINK)
					return r
				}(),
				{Dst: backend.IPNet(netip.MustParsePrefix("10.244.1.0/24")), Type: unix.RTN_BLACKHOLE},
				route("10.244.3.0/24", "192.168.50.3", 2),
			}},
			changes: []string{"replace route 10.244.2.0/24 via 10.244.2.0 dev berth.1 with 10.244.2.0/24 via 10.244.2.0 dev berth.1 onlink"},
		},
		{
			name: "IPv6 routes: the kernel's default metric and a blackhole on lo are what was asked for",
			have: backend.State{Routes: []netlink.Route{
				func() netlink.Route {
					r := mine(route("fd00:244:0:2::/64", "fd00:50::2", 2))
					r.Priority = 1024
					return r
				}(),
				mine(netlink.Route{Dst: backend.IPNet(netip.MustParsePrefix("fd00:244:0:1::/64")), Type: unix.RTN_BLACKHOLE, LinkIndex: 1, Priority: 1024}),
				func() netlink.Route {
					r := mine(route("fd00:244:0:3::/64", "fd00:50::99", 2))
					r.Priority = 1024
					return r
				}(),
			}},
			want: backend.State{Routes: []netlink.Route{
				route("fd00:244:0:2::/64", "fd00:50::2", 2),
				{Dst: backend.IPNet(netip.MustParsePrefix("fd00:244:0:1::/64")), Type: unix.RTN_BLACKHOLE},
				route("fd00:244:0:3::/64", "fd00:50::3", 2),
			}},
			changes: []string{"replace route fd00:244:0:3::/64 via fd00:50::99 dev eth0 with fd00:244:0:3::/64 via fd00:50::3 dev eth0"},
		},
		{
			name: "unreachable routes to the network: as the kernel reports them (IPv4 on no link, IPv6 on lo), what was asked for",
			have: backend.State{Routes: []netlink.Route{
				mine(unreachable("10.244.0.0/16", 0, backend.UnreachableMetric)),
				mine(unreachable("fd00:244::/56", 1, backend.UnreachableMetric)),
			}},
			want:  backend.State{Routes: backend.UnreachableRoutes([]netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")})},
			links: map[int]string{1: "lo"},
		},
		{
			name: "unreachable routes to the network: added, another type replaced, another metric added and the old removed, removed when not wanted",
			have: backend.State{Routes: []netlink.Route{
				mine(unreachable("10.244.0.0/16", 0, 0)),
				func() netlink.Route {
					r := mine(route("fd00:244::/56", "fd00:50::7", 2))
					r.Priority = backend.UnreachableMetric
					return r
				}(),
				mine(unreachable("10.245.0.0/16", 0, backend.UnreachableMetric)),
			}},
			want: backend.State{Routes: backend.UnreachableRoutes([]netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56"), netip.MustParsePrefix("10.246.0.0/16")})},
			changes: []string{
				"add route unreachable 10.244.0.0/16 metric 4294967295",
				"replace route fd00:244::/56 via fd00:50::7 dev eth0 metric 4294967295 with unreachable fd00:244::/56 metric 4294967295",
				"add route unreachable 10.246.0.0/16 metric 4294967295",
				"remove route unreachable 10.244.0.0/16",
				"remove route unreachable 10.245.0.0/16 metric 4294967295",
			},
		},
		{
			name: "IPv6 neighbours: compared as IPv4 ones",
			have: backend.State{Neighs: []netlink.Neigh{
				{LinkIndex: 5, IP: net.ParseIP("fd00:244:0:2::"), HardwareAddr: mac("02:00:00:00:00:02"), State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V6},
				{LinkIndex: 5, IP: net.ParseIP("fd00:244:0:9::"), HardwareAddr: mac("02:00:00:00:00:09"), State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V6},
			}},
			want: backend.State{Neighs: []netlink.Neigh{
				{LinkIndex: 5, IP: net.ParseIP("fd00:244:0:2::"), HardwareAddr: mac("02:00:00:00:00:02")},
				{LinkIndex: 5, IP: net.ParseIP("10.244.2.0").To4(), HardwareAddr: mac("02:00:00:00:00:02")},
			}},
			changes: []string{
				"add neighbour 10.244.2.0 lladdr 02:00:00:00:00:02 dev berth.1",
				"remove neighbour fd00:244:0:9:: lladdr 02:00:00:00:00:09 dev berth.1",
			},
		},
		{
			name: "neighbours: by IP; another MAC or not permanent is replaced",
			have: backend.State{Neighs: []netlink.Neigh{
				neigh("10.244.2.0", "02:00:00:00:00:02", netlink.NUD_PERMANENT),
				neigh("10.244.3.0", "02:00:00:00:00:99", netlink.NUD_PERMANENT),
				neigh("10.244.4.0", "02:00:00:00:00:04", netlink.NUD_REACHABLE),
				neigh("10.244.9.0", "02:00:00:00:00:09", netlink.NUD_PERMANENT),
			}},
			want: backend.State{Neighs: []netlink.Neigh{
				{LinkIndex: 5, IP: net.ParseIP("10.244.2.0").To4(), HardwareAddr: mac("02:00:00:00:00:02")},
				{LinkIndex: 5, IP: net.ParseIP("10.244.3.0").To4(), HardwareAddr: mac("02:00:00:00:00:03")},
				{LinkIndex: 5, IP: net.ParseIP("10.244.4.0").To4(), HardwareAddr: mac("02:00:00:00:00:04")},
				{LinkIndex: 5, IP: net.ParseIP("10.244.5.0").To4(), HardwareAddr: mac("02:00:00:00:00:05")},
			}},
			changes: []string{
				"replace neighbour 10.244.3.0 lladdr 02:00:00:00:00:99 dev berth.1 with 10.244.3.0 lladdr 02:00:00:00:00:03 dev berth.1",
				"replace neighbour 10.244.4.0 lladdr 02:00:00:00:00:04 dev berth.1 with 10.244.4.0 lladdr 02:00:00:00:00:04 dev berth.1",
				"add neighbour 10.244.5.0 lladdr 02:00:00:00:00:05 dev berth.1",
				"remove neighbour 10.244.9.0 lladdr 02:00:00:00:00:09 dev berth.1",
			},
		},
		{
			name: "FDB: by MAC; another node IP is replaced",
			have: backend.State{FDB: []netlink.Neigh{
				fdb("02:00:00:00:00:02", "192.168.50.2", netlink.NUD_PERMANENT|netlink.NUD_NOARP),
				fdb("02:00:00:00:00:03", "192.168.50.99", netlink.NUD_PERMANENT),
				fdb("02:00:00:00:00:09", "192.168.50.9", netlink.NUD_PERMANENT),
			}},
			want: backend.State{FDB: []netlink.Neigh{
				{LinkIndex: 5, IP: net.ParseIP("192.168.50.2").To4(), HardwareAddr: mac("02:00:00:00:00:02")},
				{LinkIndex: 5, IP: net.ParseIP("192.168.50.3").To4(), HardwareAddr: mac("02:00:00:00:00:03")},
			}},
			changes: []string{
				"replace fdb 02:00:00:00:00:03 dst 192.168.50.99 dev berth.1 with 02:00:00:00:00:03 dst 192.168.50.3 dev berth.1",
				"remove fdb 02:00:00:00:00:09 dst 192.168.50.9 dev berth.1",
			},
		},
		{
			name:    "addresses: by address and prefix",
			have:    backend.State{Addrs: []netlink.Addr{addr("10.244.1.0/32"), addr("10.244.7.0/32")}},
			want:    backend.State{Addrs: []netlink.Addr{addr("10.244.1.0/32"), addr("10.244.2.0/32")}},
			changes: []string{"add address 10.244.2.0/32 dev berth.1", "remove address 10.244.7.0/32 dev berth.1"},
		},
		{
			name: "every kind at once: additions of all kinds before any removal",
			have: backend.State{Addrs: []netlink.Addr{addr("10.244.7.0/32")}, Routes: []netlink.Route{mine(route("10.244.9.0/24", "192.168.50.9", 2))}},
			want: backend.State{Neighs: []netlink.Neigh{{LinkIndex: 5, IP: net.ParseIP("10.244.2.0").To4(), HardwareAddr: mac("02:00:00:00:00:02")}},
				Routes: []netlink.Route{route("10.244.2.0/24", "192.168.50.2", 2)}},
			changes: []string{
				"add neighbour 10.244.2.0 lladdr 02:00:00:00:00:02 dev berth.1",
				"add route 10.244.2.0/24 via 192.168.50.2 dev eth0",
				"remove address 10.244.7.0/32 dev berth.1",
				"remove route 10.244.9.0/24 via 192.168.50.9 dev eth0",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.have.Links = maps.Clone(links)
			maps.Copy(tc.have.Links, tc.links)
			var got []string
			for _, c := range backend.Diff(tc.have, tc.want) {
				got = append(got, c.What)
			}
			if strings.Join(got, "\n") != strings.Join(tc.changes, "\n") {
				t.Fatalf("changes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.changes, "\n"))
			}
		})
	}
}

// OwnedRoutes keeps only netd's routes (RouteProtocol, main table) inside
// the network's CIDR.
func TestOwnedRoutes(t *testing.T) {
	static := route("10.244.8.0/24", "192.168.50.8", 2)
	static.Protocol, static.Table = 4, unix.RT_TABLE_MAIN
	other := mine(route("10.244.7.0/24", "192.168.50.7", 2))
	other.Table = 100
	got := backend.OwnedRoutes([]netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")}, []netlink.Route{
		mine(route("10.244.2.0/24", "192.168.50.2", 2)),
		mine(route("10.99.0.0/24", "192.168.50.7", 2)),  // another network's
		mine(route("10.0.0.0/8", "192.168.50.7", 2)),    // wider than the CIDR
		mine(route("10.244.0.0/16", "192.168.50.7", 2)), // the CIDR itself
		mine(route("fd00:244:0:2::/64", "fd00:50::2", 2)),
		mine(route("fd00:99::/64", "fd00:50::7", 2)),          // another network's
		mine(route("fd00::/16", "fd00:50::7", 2)),             // wider than the CIDR
		mine(route("::ffff:10.244.2.0/120", "fd00:50::7", 2)), // IPv4-mapped: not the IPv4 CIDR
		static, other,
	})
	var dsts []string
	for _, r := range got {
		dsts = append(dsts, r.Dst.String())
	}
	if strings.Join(dsts, " ") != "10.244.2.0/24 10.244.0.0/16 fd00:244:0:2::/64" {
		t.Fatalf("owned: %v", dsts)
	}
}

// In a namespace: Read finds exactly the routes with RouteProtocol inside
// the CIDR, Apply makes the changes, a second pass finds nothing, and
// routes of other protocols and other CIDRs stay.
func TestReadApply(t *testing.T) {
	netns, node := backendtest.Node(t, conf.Network{CIDR: netip.MustParsePrefix("10.244.0.0/16")})
	err := netns.Do(func(ns.NetNS) error {
		eth0 := node.Link.Attrs().Index
		for _, r := range []netlink.Route{
			mine(route("10.244.9.0/24", "192.168.50.9", eth0)),  // stale: no such peer
			mine(route("10.244.2.0/24", "192.168.50.99", eth0)), // wrong gateway
			mine(route("10.99.0.0/24", "192.168.50.7", eth0)),   // another network's
			{Dst: backend.IPNet(netip.MustParsePrefix("10.244.8.0/24")), Gw: netip.MustParseAddr("192.168.50.8").AsSlice(), LinkIndex: eth0, Protocol: 4}, // static
		} {
			if err := netlink.RouteAdd(&r); err != nil {
				t.Fatalf("adding %v: %v", r, err)
			}
		}
		want := backend.State{Routes: []netlink.Route{route("10.244.2.0/24", "192.168.50.2", eth0), route("10.244.3.0/24", "192.168.50.3", eth0)}}
		owned := backend.Owned{CIDRs: node.Network.CIDRs()}
		have, err := backend.Read(owned)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, c := range backend.Diff(have, want) {
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
		if _, err := backend.Apply(backend.Diff(have, want)); err != nil {
			t.Fatal(err)
		}
		if have, err = backend.Read(owned); err != nil {
			t.Fatal(err)
		}
		if again := backend.Diff(have, want); len(again) != 0 {
			t.Fatalf("second pass: %v", again)
		}
		for _, dst := range []string{"10.99.0.0/24", "10.244.8.0/24"} {
			rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: backend.IPNet(netip.MustParsePrefix(dst))}, netlink.RT_FILTER_DST)
			if err != nil || len(rs) != 1 {
				t.Errorf("route to %s not netd's to remove: %v %v", dst, rs, err)
			}
		}
		// Removing what is already gone is not an error.
		if _, err := backend.Apply(backend.Diff(have, backend.State{})); err != nil {
			t.Fatal(err)
		}
		_, err = backend.Apply(backend.Diff(have, backend.State{}))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The same for both families at once: IPv6 routes (with the kernel's
// metric, an IPv6 blackhole, and the unreachable routes to the network
// of both families), IPv6 neighbours and addresses on an
// owned link are read, applied and then match; the link-local address
// the kernel gave the link is not netd's.
func TestReadApplyDualStack(t *testing.T) {
	netns, node := backendtest.Node(t, conf.Network{CIDR: netip.MustParsePrefix("10.244.0.0/16"), CIDRv6: netip.MustParsePrefix("fd00:244::/56")})
	err := netns.Do(func(ns.NetNS) error {
		eth0 := node.Link.Attrs().Index
		la := netlink.NewLinkAttrs()
		la.Name = "owned0"
		if err := netlink.LinkAdd(&netlink.Vxlan{LinkAttrs: la, VxlanId: 9, SrcAddr: node.IP.AsSlice(), Port: 8472}); err != nil {
			return err
		}
		link, err := netlink.LinkByName("owned0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return err
		}
		idx := link.Attrs().Index
		stale := mine(route("fd00:244:0:9::/64", "fd00:50::9", eth0))
		if err := netlink.RouteAdd(&stale); err != nil {
			return err
		}
		// A route to a peer's subnet put by hand through another link:
		// IPv6 refuses netd's onlink route next to it (EINVAL), so it
		// must be replaced all the same, as IPv4's is.
		byHand := route("fd00:244:0:3::/64", "fd00:50::3", eth0)
		if err := netlink.RouteAdd(&byHand); err != nil {
			return err
		}
		overlay := route("fd00:244:0:3::/64", "fd00:244:0:3::", idx)
		overlay.Flags = int(netlink.FLAG_ONLINK)
		// What the kernel keeps on any IPv6 link is not netd's: entries
		// for the multicast groups of neighbour discovery and MLD.
		for _, n := range []netlink.Neigh{
			{LinkIndex: idx, IP: net.ParseIP("ff02::1:ff3b:7445"), HardwareAddr: mac("33:33:ff:3b:74:45"), State: netlink.NUD_NOARP, Family: netlink.FAMILY_V6},
			{LinkIndex: idx, IP: net.ParseIP("fe80::9"), HardwareAddr: mac("02:00:00:00:00:09"), State: netlink.NUD_REACHABLE, Family: netlink.FAMILY_V6},
		} {
			if err := netlink.NeighSet(&n); err != nil {
				return err
			}
		}
		want := backend.State{
			Addrs: []netlink.Addr{{IPNet: backend.IPNet(netip.MustParsePrefix("fd00:244:0:1::/128")), LinkIndex: idx},
				{IPNet: backend.IPNet(netip.MustParsePrefix("10.244.1.0/32")), LinkIndex: idx}},
			Neighs: []netlink.Neigh{{LinkIndex: idx, IP: net.ParseIP("fd00:244:0:2::"), HardwareAddr: mac("02:00:00:00:00:02")}},
			Routes: []netlink.Route{
				route("10.244.2.0/24", "192.168.50.2", eth0),
				route("fd00:244:0:2::/64", "fd00:50::2", eth0),
				{Dst: backend.IPNet(netip.MustParsePrefix("fd00:244:0:1::/64")), Type: unix.RTN_BLACKHOLE},
				overlay,
			},
		}
		want.Routes = append(want.Routes, backend.UnreachableRoutes(node.Network.CIDRs())...)
		owned := backend.Owned{CIDRs: node.Network.CIDRs(), Links: []int{idx}}
		have, err := backend.Read(owned)
		if err != nil {
			return err
		}
		if len(have.Neighs) != 0 {
			t.Errorf("the kernel's own neighbours read as netd's: %v", have.Neighs)
		}
		if _, err := backend.Apply(backend.Diff(have, want)); err != nil {
			return err
		}
		if have, err = backend.Read(owned); err != nil {
			return err
		}
		if again := backend.Diff(have, want); len(again) != 0 {
			t.Errorf("second pass: %v", again)
		}
		if len(have.Routes) != 6 || len(have.Neighs) != 1 || len(have.Addrs) != 2 {
			t.Errorf("read back %+v", have)
		}
		_, err = backend.Apply(backend.Diff(have, backend.State{}))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// In a namespace: the unreachable routes to the network take the place
// of netd's routes to the CIDR of another type or metric (made by hand)
// in one pass; then the kernel refuses an address of the network that no
// more specific route takes (a subnet no node holds) and still routes a
// node subnet; netd leave's removal (Teardown: RemoveRoutes) takes them
// away again.
func TestUnreachableRoutes(t *testing.T) {
	netns, node := backendtest.Node(t, conf.Network{CIDR: netip.MustParsePrefix("10.244.0.0/16"), CIDRv6: netip.MustParsePrefix("fd00:244::/56")})
	err := netns.Do(func(ns.NetNS) error {
		eth0 := node.Link.Attrs().Index
		for _, r := range []netlink.Route{
			mine(route("10.244.0.0/16", "192.168.50.7", eth0)),
			mine(unreachable("fd00:244::/56", 0, 0)),
		} {
			if err := netlink.RouteAdd(&r); err != nil {
				return err
			}
		}
		want := backend.State{Routes: append(backend.UnreachableRoutes(node.Network.CIDRs()),
			route("10.244.2.0/24", "192.168.50.2", eth0), route("fd00:244:0:2::/64", "fd00:50::2", eth0))}
		owned := backend.Owned{CIDRs: node.Network.CIDRs()}
		have, err := backend.Read(owned)
		if err != nil {
			return err
		}
		if _, err := backend.Apply(backend.Diff(have, want)); err != nil {
			return err
		}
		if have, err = backend.Read(owned); err != nil {
			return err
		}
		if again := backend.Diff(have, want); len(again) != 0 {
			t.Errorf("second pass: %v", again)
		}
		for _, tc := range []struct {
			dst  string
			want error // nil: routed via eth0
		}{
			{"10.244.2.5", nil},
			{"fd00:244:0:2::5", nil},
			{"10.244.7.5", unix.EHOSTUNREACH}, // what the node itself gets; a container, ICMP
			{"fd00:244:0:7::5", unix.EHOSTUNREACH},
			{"10.245.0.1", nil}, // outside the network: the default route
		} {
			rs, err := netlink.RouteGet(net.ParseIP(tc.dst))
			switch {
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Errorf("route get %s: %v %v, want %v", tc.dst, rs, err, tc.want)
			case tc.want == nil && (err != nil || len(rs) != 1 || rs[0].LinkIndex != eth0):
				t.Errorf("route get %s: %v %v, want via eth0", tc.dst, rs, err)
			}
		}
		if err := backend.RemoveRoutes(node.Network.CIDRs()); err != nil {
			return err
		}
		have, err = backend.Read(owned)
		if err != nil || len(have.Routes) != 0 {
			t.Errorf("after RemoveRoutes: %v %v", have.Routes, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
