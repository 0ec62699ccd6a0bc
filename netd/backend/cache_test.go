package backend

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The cache follows the kernel's events without a namespace: events of
// netd's own objects change what a pass compares with, their echoes of
// netd's changes change nothing (no pass for them), and what it cannot
// follow (an owned link gone) makes it ask for a full read.
func TestCacheEvents(t *testing.T) {
	cidr := netip.MustParsePrefix("10.244.0.0/16")
	owned := Owned{CIDRs: []netip.Prefix{cidr}, Links: []int{5}}
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	route := func(dst, gw string, link int) netlink.Route {
		return netlink.Route{Dst: IPNet(netip.MustParsePrefix(dst)), Gw: net.ParseIP(gw).To4(), LinkIndex: link,
			Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST, Flags: int(netlink.FLAG_ONLINK), Family: netlink.FAMILY_V4}
	}
	neigh := func(ip, lladdr string) netlink.Neigh {
		return netlink.Neigh{LinkIndex: 5, IP: net.ParseIP(ip).To4(), HardwareAddr: mac(lladdr), State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V4}
	}
	fdb := func(lladdr, ip string) netlink.Neigh {
		return netlink.Neigh{LinkIndex: 5, IP: net.ParseIP(ip).To4(), HardwareAddr: mac(lladdr), State: netlink.NUD_PERMANENT, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF}
	}
	c := &Cache{}
	if _, ok := c.State(owned); ok {
		t.Fatal("a cache never loaded has a state")
	}
	r2 := route("10.244.2.0/24", "10.244.2.0", 5)
	c.fill(owned, State{Links: map[int]string{2: "eth0", 5: "berth.1"}, Routes: []netlink.Route{r2}})

	want := State{
		Neighs: []netlink.Neigh{{LinkIndex: 5, IP: net.ParseIP("10.244.2.0").To4(), HardwareAddr: mac("02:00:00:00:00:02")}},
		FDB:    []netlink.Neigh{{LinkIndex: 5, IP: net.ParseIP("192.168.50.2").To4(), HardwareAddr: mac("02:00:00:00:00:02")}},
		Routes: []netlink.Route{{Dst: r2.Dst, Gw: r2.Gw, LinkIndex: 5, Flags: int(netlink.FLAG_ONLINK)}},
	}
	pending := func() string {
		t.Helper()
		have, ok := c.State(owned)
		if !ok {
			t.Fatal("cache invalid")
		}
		var out []string
		for _, ch := range Diff(have, want) {
			out = append(out, ch.What)
		}
		return strings.Join(out, "; ")
	}
	if got := pending(); got != "add neighbour 10.244.2.0 lladdr 02:00:00:00:00:02 dev berth.1; add fdb 02:00:00:00:00:02 dst 192.168.50.2 dev berth.1" {
		t.Fatalf("pending: %s", got)
	}
	// netd applies them: the cache has them before the kernel's echo,
	// and the echo is no news.
	have, _ := c.State(owned)
	c.Applied(Diff(have, want), c.Seq())
	if got := pending(); got != "" {
		t.Fatalf("after applying: %s", got)
	}
	onEth0 := neigh("192.168.50.9", "02:00:00:00:00:99") // the underlay's ARP
	onEth0.LinkIndex = 2
	for _, ev := range []Event{
		c.Neigh(netlink.NeighUpdate{Type: unix.RTM_NEWNEIGH, Neigh: neigh("10.244.2.0", "02:00:00:00:00:02")}),
		c.Neigh(netlink.NeighUpdate{Type: unix.RTM_NEWNEIGH, Neigh: fdb("02:00:00:00:00:02", "192.168.50.2")}),
		c.Route(netlink.RouteUpdate{Type: unix.RTM_NEWROUTE, Route: r2}),
		c.Neigh(netlink.NeighUpdate{Type: unix.RTM_NEWNEIGH, Neigh: onEth0}),
	} {
		if ev != Unrelated {
			t.Errorf("echo or foreign event: %s", ev)
		}
	}

	// Deleted by hand: an owned event, and the next pass puts it back.
	if ev := c.Route(netlink.RouteUpdate{Type: unix.RTM_DELROUTE, Route: r2}); ev != OwnedChanged {
		t.Fatalf("route deleted: %s", ev)
	}
	if got := pending(); got != "add route 10.244.2.0/24 via 10.244.2.0 dev berth.1 onlink" {
		t.Fatalf("after the delete: %s", got)
	}
	c.Route(netlink.RouteUpdate{Type: unix.RTM_NEWROUTE, Route: r2})
	// A neighbour changed by hand, a stray FDB entry, a route of netd's
	// protocol outside the network: the first two show as changes.
	for _, ev := range []Event{
		c.Neigh(netlink.NeighUpdate{Type: unix.RTM_NEWNEIGH, Neigh: neigh("10.244.2.0", "02:00:00:00:00:66")}),
		c.Neigh(netlink.NeighUpdate{Type: unix.RTM_NEWNEIGH, Neigh: fdb("02:00:00:00:00:66", "192.168.50.66")}),
	} {
		if ev != OwnedChanged {
			t.Errorf("foreign change: %s", ev)
		}
	}
	c.Route(netlink.RouteUpdate{Type: unix.RTM_NEWROUTE, Route: route("10.99.0.0/24", "192.168.50.7", 2)})
	if got := pending(); got != "replace neighbour 10.244.2.0 lladdr 02:00:00:00:00:66 dev berth.1 with 10.244.2.0 lladdr 02:00:00:00:00:02 dev berth.1; "+
		"remove fdb 02:00:00:00:00:66 dst 192.168.50.66 dev berth.1" {
		t.Fatalf("after foreign changes: %s", got)
	}

	// Routes of other protocols are the underlay's; IPv6 and other
	// tables are not netd's business.
	static := route("192.168.60.0/24", "192.168.50.254", 2)
	static.Protocol = unix.RTPROT_BOOT
	if ev := c.Route(netlink.RouteUpdate{Type: unix.RTM_NEWROUTE, Route: static}); ev != UnderlayChanged {
		t.Errorf("static route: %s", ev)
	}
	// Another protocol's route to a destination of netd's (`ip route
	// replace` by hand) replaced netd's without an event for it.
	replaced := route("10.244.2.0/24", "192.168.50.2", 2)
	replaced.Protocol, replaced.Flags = unix.RTPROT_BOOT, 0
	if ev := c.Route(netlink.RouteUpdate{Type: unix.RTM_NEWROUTE, NlFlags: unix.NLM_F_REPLACE, Route: replaced}); ev != CacheLost {
		t.Errorf("netd's route replaced by another protocol's: %s", ev)
	}
	other := r2
	other.Table = 100
	if ev := c.Route(netlink.RouteUpdate{Type: unix.RTM_NEWROUTE, Route: other}); ev != Unrelated {
		t.Errorf("route in table 100: %s", ev)
	}

	// The VTEP deleted (its objects go without an event each), the
	// underlay changed, another VTEP: the cache must be read again.
	vtep := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Index: 5, Name: "berth.1"}}
	for _, u := range []netlink.LinkUpdate{
		{Header: unix.NlMsghdr{Type: unix.RTM_DELLINK}, Link: vtep},
		{Header: unix.NlMsghdr{Type: unix.RTM_NEWLINK}, Link: &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 2, Name: "eth0"}}},
		{Header: unix.NlMsghdr{Type: unix.RTM_NEWLINK}, Link: &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Index: 9, Name: "berth.2"}}},
	} {
		u.Index = int32(u.Attrs().Index)
		if ev := c.Link(u, 2); ev != CacheLost {
			t.Errorf("link %s: %s", u.Attrs().Name, ev)
		}
	}
	veth := netlink.LinkUpdate{Header: unix.NlMsghdr{Type: unix.RTM_NEWLINK}, Link: &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: 11, Name: "bv1234"}}}
	veth.Index = 11
	if ev := c.Link(veth, 2); ev != Unrelated {
		t.Errorf("a container's veth: %s", ev)
	}
	c.Invalidate()
	if _, ok := c.State(owned); ok {
		t.Error("invalidated cache has a state")
	}
	if _, ok := (&Cache{}).State(Owned{CIDRs: []netip.Prefix{cidr}, Links: []int{6}}); ok {
		t.Error("state for other links")
	}
}

// TestCacheEventsIPv6: the cache follows IPv6 routes, neighbours and
// addresses as it does IPv4 ones, and leaves the kernel's own entries
// (multicast and link-local neighbours, link-local addresses) alone, as
// Read does.
func TestCacheEventsIPv6(t *testing.T) {
	owned := Owned{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")}, Links: []int{5}}
	mac, _ := net.ParseMAC("02:00:00:00:00:02")
	r := netlink.Route{Dst: IPNet(netip.MustParsePrefix("fd00:244:0:2::/64")), Gw: net.ParseIP("fd00:244:0:2::"), LinkIndex: 5,
		Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST, Flags: int(netlink.FLAG_ONLINK), Priority: ip6DefaultMetric, Family: netlink.FAMILY_V6}
	n := netlink.Neigh{LinkIndex: 5, IP: net.ParseIP("fd00:244:0:2::"), HardwareAddr: mac, State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V6}
	c := &Cache{}
	c.fill(owned, State{Links: map[int]string{5: "berth.1"}, Routes: []netlink.Route{r}, Neighs: []netlink.Neigh{n}})
	if have, ok := c.State(owned); !ok || len(have.Routes) != 1 || len(have.Neighs) != 1 {
		t.Fatalf("state %+v, %v", have, ok)
	}

	kernelsOwn := []netlink.NeighUpdate{
		{Type: unix.RTM_NEWNEIGH, Neigh: netlink.Neigh{LinkIndex: 5, IP: net.ParseIP("ff02::1:ff00:2"), HardwareAddr: mac, Family: netlink.FAMILY_V6}},
		{Type: unix.RTM_NEWNEIGH, Neigh: netlink.Neigh{LinkIndex: 5, IP: net.ParseIP("fe80::2"), HardwareAddr: mac, Family: netlink.FAMILY_V6}},
	}
	for _, u := range kernelsOwn {
		if ev := c.Neigh(u); ev != Unrelated {
			t.Errorf("kernel's own neighbour %s: %s", u.IP, ev)
		}
	}
	ll := netlink.AddrUpdate{LinkIndex: 5, NewAddr: true, LinkAddress: net.IPNet{IP: net.ParseIP("fe80::1"), Mask: net.CIDRMask(64, 128)}}
	if ev := c.Addr(ll); ev != Unrelated {
		t.Errorf("link-local address: %s", ev)
	}
	if have, _ := c.State(owned); len(have.Neighs) != 1 || len(have.Addrs) != 0 {
		t.Errorf("the kernel's own entries were cached: %+v", have)
	}

	// Deleted by hand: owned changes, and the cache no longer has them.
	if ev := c.Route(netlink.RouteUpdate{Type: unix.RTM_DELROUTE, Route: r}); ev != OwnedChanged {
		t.Errorf("IPv6 route deleted: %s", ev)
	}
	if ev := c.Neigh(netlink.NeighUpdate{Type: unix.RTM_DELNEIGH, Neigh: n}); ev != OwnedChanged {
		t.Errorf("IPv6 neighbour deleted: %s", ev)
	}
	v6 := netlink.AddrUpdate{LinkIndex: 5, NewAddr: true, LinkAddress: net.IPNet{IP: net.ParseIP("fd00:244:0:1::"), Mask: net.CIDRMask(128, 128)}}
	if ev := c.Addr(v6); ev != OwnedChanged {
		t.Errorf("IPv6 address added: %s", ev)
	}
	if have, _ := c.State(owned); len(have.Routes) != 0 || len(have.Neighs) != 0 || len(have.Addrs) != 1 {
		t.Errorf("after the events: %+v", have)
	}
}

// TestCacheAppliedAfterEvents: the kernel's events about what a pass
// changed can be handled before the pass records its changes. When an
// object was changed again meanwhile (`ip addr flush` deletes in rounds
// until nothing is left, and netd's re-added address with it), the
// events are the truth, not what the pass did: the cache must not hold
// an object the kernel no longer has, or no pass would ever add it back.
func TestCacheAppliedAfterEvents(t *testing.T) {
	owned := Owned{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, Links: []int{5}}
	addr := netlink.Addr{IPNet: IPNet(netip.MustParsePrefix("10.244.1.0/32")), LinkIndex: 5}
	update := func(present bool) netlink.AddrUpdate {
		return netlink.AddrUpdate{LinkAddress: *addr.IPNet, LinkIndex: 5, NewAddr: present}
	}
	want := State{Addrs: []netlink.Addr{addr}}
	c := &Cache{}
	c.fill(owned, State{Links: map[int]string{5: "berth.1"}})

	// A pass finds the address missing and adds it; before it records
	// that, the kernel's echo and a delete by hand are handled.
	since := c.Seq()
	have, _ := c.State(owned)
	changes := Diff(have, want)
	if len(changes) != 1 {
		t.Fatalf("changes %v", changes)
	}
	if ev := c.Addr(update(true)); ev != OwnedChanged {
		t.Fatalf("echo before the pass recorded its change: %s", ev)
	}
	if ev := c.Addr(update(false)); ev != OwnedChanged {
		t.Fatalf("deleted by hand: %s", ev)
	}
	c.Applied(changes, since)
	have, _ = c.State(owned)
	if got := Diff(have, want); len(got) != 1 {
		t.Fatalf("the next pass changes %v; the address deleted after netd added it must be added again", got)
	}

	// Without events meanwhile, the pass's changes are recorded: the
	// echo that follows is no news.
	since = c.Seq()
	c.Applied(Diff(have, want), since)
	if have, _ = c.State(owned); len(Diff(have, want)) != 0 {
		t.Fatalf("applied change not recorded: %+v", have)
	}
	if ev := c.Addr(update(true)); ev != Unrelated {
		t.Errorf("echo of an applied change: %s", ev)
	}
}

// The unreachable routes to the network, as the kernel echoes them (IPv4
// on no link, IPv6 on lo), are what netd applied, whichever comes first:
// the echo is no change, and no pass re-adds them.
func TestCacheUnreachableEcho(t *testing.T) {
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")}
	owned := Owned{CIDRs: cidrs, Links: []int{5}}
	want := State{Routes: UnreachableRoutes(cidrs)}
	echoes := []netlink.RouteUpdate{
		{Type: unix.RTM_NEWROUTE, Route: netlink.Route{Dst: IPNet(cidrs[0]), Type: unix.RTN_UNREACHABLE, Priority: UnreachableMetric,
			Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN, Family: netlink.FAMILY_V4}},
		{Type: unix.RTM_NEWROUTE, Route: netlink.Route{Dst: IPNet(cidrs[1]), Type: unix.RTN_UNREACHABLE, Priority: UnreachableMetric,
			Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN, Family: netlink.FAMILY_V6, LinkIndex: 1}},
	}
	for _, tc := range []struct {
		name       string
		echoFirst  bool
		echoEvents Event // what the echoes mean to the cache
	}{
		{"applied, then the echo", false, Unrelated},
		{"the echo, then applied", true, OwnedChanged},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Cache{}
			c.fill(owned, State{Links: map[int]string{1: "lo", 5: "berth.1"}})
			since := c.Seq()
			changes := Diff(State{}, want)
			if len(changes) != 2 {
				t.Fatalf("changes %v", changes)
			}
			if !tc.echoFirst {
				c.Applied(changes, since)
			}
			for _, u := range echoes {
				if ev := c.Route(u); ev != tc.echoEvents {
					t.Errorf("echo of %s: %s, want %s", u.Dst, ev, tc.echoEvents)
				}
			}
			if tc.echoFirst {
				c.Applied(changes, since)
			}
			have, ok := c.State(owned)
			if !ok || len(have.Routes) != 2 {
				t.Fatalf("state %+v %v", have, ok)
			}
			if again := Diff(have, want); len(again) != 0 {
				t.Errorf("next pass: %v", again)
			}
		})
	}
}
