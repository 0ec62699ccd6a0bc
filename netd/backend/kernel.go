package backend

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Change is one kernel change Diff found necessary.
type Change struct {
	What   string // e.g. "add route 10.244.2.0/24 via 10.244.2.0 dev berth.1 onlink"
	apply  func() error
	obj    any  // *netlink.Addr, *netlink.Neigh or *netlink.Route, for Cache.Applied
	remove bool // obj is removed (else added or replaced)
}

func (c Change) String() string { return c.What }

// Apply makes the changes, all of them even when some fail, and returns
// the ones made and the failures joined.
func Apply(changes []Change) (made []Change, err error) {
	var errs []error
	for _, c := range changes {
		if err := c.apply(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.What, err))
			continue
		}
		made = append(made, c)
	}
	return made, errors.Join(errs...)
}

// Read reads the owned part of the kernel: the addresses (but IPv6
// link-local ones, which the kernel manages), neighbours (but multicast
// and link-local ones) and FDB entries of the owned links, and the routes with RouteProtocol in the main table
// inside the owned CIDRs, of both families. An owned link that does not
// exist has nothing.
func Read(o Owned) (State, error) {
	var s State
	links, err := dump(func() ([]netlink.Link, error) { return netlink.LinkList() })
	if err != nil {
		return s, fmt.Errorf("listing links: %w", err)
	}
	s.Links = make(map[int]string, len(links))
	for _, l := range links {
		s.Links[l.Attrs().Index] = l.Attrs().Name
	}
	for _, idx := range o.Links {
		if _, ok := s.Links[idx]; !ok {
			continue
		}
		a, n, f, err := ReadLink(idx)
		if err != nil {
			return s, err
		}
		s.Addrs, s.Neighs, s.FDB = append(s.Addrs, a...), append(s.Neighs, n...), append(s.FDB, f...)
	}
	routes, err := ReadRoutes()
	if err != nil {
		return s, err
	}
	s.Routes = OwnedRoutes(o.CIDRs, routes)
	return s, nil
}

// ReadLink reads the addresses (but IPv6 link-local ones), neighbours
// and FDB entries of link idx.
func ReadLink(idx int) (addrs []netlink.Addr, neighs, fdb []netlink.Neigh, err error) {
	link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: idx}}
	all, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, nil, nil, fmt.Errorf("listing addresses of link %d: %w", idx, err)
	}
	for _, a := range all {
		if !a.IP.IsLinkLocalUnicast() {
			addrs = append(addrs, a)
		}
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		n, err := dump(func() ([]netlink.Neigh, error) { return netlink.NeighList(idx, family) })
		if err != nil {
			return nil, nil, nil, fmt.Errorf("listing neighbours of link %d: %w", idx, err)
		}
		for _, e := range n {
			if ownedNeigh(e.IP) {
				neighs = append(neighs, e)
			}
		}
	}
	if fdb, err = dump(func() ([]netlink.Neigh, error) { return netlink.NeighList(idx, unix.AF_BRIDGE) }); err != nil {
		return nil, nil, nil, fmt.Errorf("listing FDB of link %d: %w", idx, err)
	}
	return addrs, neighs, fdb, nil
}

// ownedNeigh reports whether a neighbour entry for ip can be netd's. The
// kernel makes its own for the multicast groups it sends to (IPv6
// neighbour discovery and MLD on any link with IPv6) and for link-local
// neighbours.
func ownedNeigh(ip net.IP) bool { return !ip.IsMulticast() && !ip.IsLinkLocalUnicast() }

// ReadRoutes reads the routes of both families with RouteProtocol in the
// main table.
func ReadRoutes() ([]netlink.Route, error) {
	routes, err := dump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_ALL,
			&netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	return routes, nil
}

// OwnedRoutes are the routes of routes with RouteProtocol in the main
// table whose destination is inside one of cidrs: the ones a network's
// reconcile owns.
func OwnedRoutes(cidrs []netip.Prefix, routes []netlink.Route) []netlink.Route {
	var out []netlink.Route
	for _, r := range routes {
		if r.Protocol != RouteProtocol || r.Table != unix.RT_TABLE_MAIN {
			continue
		}
		for _, cidr := range cidrs {
			if Within(r.Dst, cidr) {
				out = append(out, r)
				break
			}
		}
	}
	return out
}

// Within reports whether dst is cidr or a prefix inside it.
func Within(dst *net.IPNet, cidr netip.Prefix) bool {
	if dst == nil {
		return false
	}
	p, ok := Prefix(dst)
	return ok && p.Addr().Is4() == cidr.Addr().Is4() && p.Bits() >= cidr.Bits() && cidr.Contains(p.Addr())
}

// Prefix converts a netlink destination to a prefix.
func Prefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// dump retries a netlink dump the kernel interrupted because the table
// changed meanwhile (netlink.ErrDumpInterrupted): the partial result
// would make Diff remove or add the wrong things.
func dump[T any](list func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := list()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 10 {
			continue
		}
		return v, err
	}
}

// Diff compares have (the owned part of the kernel) with want and
// returns the changes that make them equal: additions and replacements
// first, then removals. An empty result means the kernel matches. It
// only computes; have.Links names the links in the messages.
func Diff(have, want State) []Change {
	name := func(idx int) string {
		if n, ok := have.Links[idx]; ok {
			return n
		}
		return fmt.Sprintf("if%d", idx)
	}
	var adds, dels []Change
	for _, d := range []func() ([]Change, []Change){
		func() ([]Change, []Change) { return diff(addrs(name), have.Addrs, want.Addrs) },
		func() ([]Change, []Change) { return diff(neighs(name), have.Neighs, want.Neighs) },
		func() ([]Change, []Change) { return diff(fdbs(name), have.FDB, want.FDB) },
		func() ([]Change, []Change) { return diff(routes(name), have.Routes, want.Routes) },
	} {
		a, r := d()
		adds, dels = append(adds, a...), append(dels, r...)
	}
	return append(adds, dels...)
}

// kind is what diff needs to know about one kind of kernel object.
type kind[T any] struct {
	noun string // "route", "neighbour" ...
	// key identifies an object: the kernel holds one per key, which one
	// set replaces (the extras some kernels let in are removed).
	key func(*T) string
	// normalize fills in what the kernel reports back on a wanted object
	// (family, state, protocol), so that it compares equal.
	normalize func(*T)
	// same reports whether have already is want.
	same func(have, want *T) bool
	// show describes an object for messages: "10.244.2.0/24 via ...".
	show func(*T) string
	// set adds or replaces an object; remove deletes one.
	set, remove func(*T) error
}

// diff is the one comparison of every kind: wanted objects missing or
// different in have are added or replaced, have's others removed.
func diff[T any](k kind[T], have, want []T) (adds, dels []Change) {
	byKey := map[string][]*T{}
	var order []string // have's keys in have's order: stable messages
	for i := range have {
		key := k.key(&have[i])
		if byKey[key] == nil {
			order = append(order, key)
		}
		byKey[key] = append(byKey[key], &have[i])
	}
	for i := range want {
		w := want[i]
		k.normalize(&w)
		key := k.key(&w)
		cur := byKey[key]
		delete(byKey, key)
		switch {
		case len(cur) == 0:
			adds = append(adds, Change{What: "add " + k.noun + " " + k.show(&w), apply: func() error { return k.set(&w) }, obj: &w})
		case len(cur) > 1 || !k.same(cur[0], &w):
			// A replace covers one object per key; extras go first.
			for _, c := range cur[1:] {
				adds = append(adds, Change{What: "remove duplicate " + k.noun + " " + k.show(c), apply: func() error { return ignoreGone(k.remove(c)) }, obj: c, remove: true})
			}
			adds = append(adds, Change{What: "replace " + k.noun + " " + k.show(cur[0]) + " with " + k.show(&w), apply: func() error { return k.set(&w) }, obj: &w})
		}
	}
	for _, key := range order {
		for _, c := range byKey[key] {
			dels = append(dels, Change{What: "remove " + k.noun + " " + k.show(c), apply: func() error { return ignoreGone(k.remove(c)) }, obj: c, remove: true})
		}
	}
	return adds, dels
}

func addrs(name func(int) string) kind[netlink.Addr] {
	link := func(a *netlink.Addr) netlink.Link {
		return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: a.LinkIndex}}
	}
	return kind[netlink.Addr]{
		noun:      "address",
		key:       func(a *netlink.Addr) string { return fmt.Sprintf("%d/%s", a.LinkIndex, a.IPNet) },
		normalize: func(*netlink.Addr) {},
		same:      func(_, _ *netlink.Addr) bool { return true },
		show:      func(a *netlink.Addr) string { return fmt.Sprintf("%s dev %s", a.IPNet, name(a.LinkIndex)) },
		set:       func(a *netlink.Addr) error { return netlink.AddrReplace(link(a), a) },
		remove:    func(a *netlink.Addr) error { return netlink.AddrDel(link(a), a) },
	}
}

func neighs(name func(int) string) kind[netlink.Neigh] {
	return kind[netlink.Neigh]{
		noun: "neighbour",
		key:  func(n *netlink.Neigh) string { return fmt.Sprintf("%d/%s", n.LinkIndex, n.IP) },
		normalize: func(n *netlink.Neigh) {
			n.Family = family(n.IP)
			n.State = netlink.NUD_PERMANENT
		},
		same: func(have, want *netlink.Neigh) bool {
			return have.State == netlink.NUD_PERMANENT && bytes.Equal(have.HardwareAddr, want.HardwareAddr)
		},
		show: func(n *netlink.Neigh) string {
			return fmt.Sprintf("%s lladdr %s dev %s", n.IP, n.HardwareAddr, name(n.LinkIndex))
		},
		set:    netlink.NeighSet,
		remove: netlink.NeighDel,
	}
}

// fdbs compares forwarding entries by MAC: a VTEP sends a MAC's frames
// to one remote node.
func fdbs(name func(int) string) kind[netlink.Neigh] {
	return kind[netlink.Neigh]{
		noun: "fdb",
		key:  func(n *netlink.Neigh) string { return fmt.Sprintf("%d/%s", n.LinkIndex, n.HardwareAddr) },
		normalize: func(n *netlink.Neigh) {
			n.Family = unix.AF_BRIDGE
			n.State = netlink.NUD_PERMANENT
			n.Flags = netlink.NTF_SELF
		},
		same: func(have, want *netlink.Neigh) bool {
			return have.IP.Equal(want.IP) && have.State&netlink.NUD_PERMANENT != 0
		},
		show: func(n *netlink.Neigh) string {
			return fmt.Sprintf("%s dst %s dev %s", n.HardwareAddr, n.IP, name(n.LinkIndex))
		},
		set:    netlink.NeighSet,
		remove: netlink.NeighDel,
	}
}

func routes(name func(int) string) kind[netlink.Route] {
	return kind[netlink.Route]{
		noun: "route",
		// The kernel holds a route per destination and metric (and TOS,
		// which netd leaves 0), and replaces only the one of the same
		// metric: a route of another metric is another route, added
		// next to it. Keyed by destination alone, a route of netd's at
		// another metric than wanted (made by hand, or by a netd that
		// wanted another) would be "replaced" on every pass and never go.
		key: func(r *netlink.Route) string { return fmt.Sprintf("%s/%d", r.Dst, r.Priority) },
		normalize: func(r *netlink.Route) {
			r.Protocol = RouteProtocol
			r.Table = unix.RT_TABLE_MAIN
			if r.Dst != nil && family(r.Dst.IP) == netlink.FAMILY_V6 && r.Priority == 0 {
				r.Priority = ip6DefaultMetric // as the kernel reports it back
			}
		},
		same:   sameRoute,
		show:   func(r *netlink.Route) string { return DescribeRoute(r, name) },
		set:    replaceRoute,
		remove: netlink.RouteDel,
	}
}

// replaceRoute adds r or replaces the route to its destination. IPv6
// checks an onlink gateway against the routes already there
// (ip6_route_check_nh_onlink): another route to the same destination
// through another link (put there by hand) makes the kernel refuse
// netd's with EINVAL instead of replacing it as IPv4 does, on every
// pass. That route is removed first, which is what a replace does.
func replaceRoute(r *netlink.Route) error {
	err := netlink.RouteReplace(r)
	if !errors.Is(err, unix.EINVAL) || r.Flags&int(netlink.FLAG_ONLINK) == 0 || r.Dst == nil || family(r.Dst.IP) != netlink.FAMILY_V6 {
		return err
	}
	other := &netlink.Route{Dst: r.Dst, Priority: r.Priority, Table: r.Table}
	if derr := netlink.RouteDel(other); derr != nil {
		return err
	}
	return netlink.RouteReplace(r)
}

// ip6DefaultMetric is the metric the kernel gives an IPv6 route added
// without one (IP6_RT_PRIO_USER); IPv4 routes keep 0.
const ip6DefaultMetric = 1024

func sameRoute(a, b *netlink.Route) bool {
	if reject(a) || reject(b) {
		// The kernel reports an IPv6 blackhole or unreachable route on
		// lo; an IPv4 one on no link.
		return routeType(a) == routeType(b) && a.Priority == b.Priority
	}
	onlink := int(netlink.FLAG_ONLINK)
	return a.LinkIndex == b.LinkIndex && a.Gw.Equal(b.Gw) && a.Flags&onlink == b.Flags&onlink && a.Priority == b.Priority &&
		routeType(a) == routeType(b)
}

// family is the netlink address family of ip.
func family(ip net.IP) int {
	if ip.To4() != nil {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// routeType is r's type; a route built without one is a unicast route,
// which is how the kernel reports it back.
func routeType(r *netlink.Route) int {
	if r.Type == 0 {
		return unix.RTN_UNICAST
	}
	return r.Type
}

// rejectTypes are the route types that send nowhere, by the name `ip
// route` gives them: blackhole (bgp's own block) and unreachable (vxlan
// and hostgw: the network's CIDR).
var rejectTypes = map[int]string{unix.RTN_BLACKHOLE: "blackhole", unix.RTN_UNREACHABLE: "unreachable"}

// reject reports whether r is a route of one of rejectTypes.
func reject(r *netlink.Route) bool {
	_, ok := rejectTypes[routeType(r)]
	return ok
}

// DescribeRoute renders a route the way `ip route` does, for logs and
// status, naming links with name.
func DescribeRoute(r *netlink.Route, name func(int) string) string {
	var b strings.Builder
	if t, ok := rejectTypes[routeType(r)]; ok {
		b.WriteString(t + " ")
	}
	fmt.Fprintf(&b, "%s", r.Dst)
	if r.Gw != nil {
		fmt.Fprintf(&b, " via %s", r.Gw)
	}
	if r.LinkIndex != 0 {
		fmt.Fprintf(&b, " dev %s", name(r.LinkIndex))
	}
	if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
		b.WriteString(" onlink")
	}
	// The metric, but the kernel's default of each family.
	if r.Priority != 0 && (r.Dst == nil || family(r.Dst.IP) != netlink.FAMILY_V6 || r.Priority != ip6DefaultMetric) {
		fmt.Fprintf(&b, " metric %d", r.Priority)
	}
	return b.String()
}

// Describe is DescribeRoute with the link names read from the kernel.
func Describe(r *netlink.Route) string {
	return DescribeRoute(r, func(index int) string {
		if l, err := netlink.LinkByIndex(index); err == nil {
			return l.Attrs().Name
		}
		return fmt.Sprintf("if%d", index)
	})
}

// ignoreGone treats removing something already gone as success.
func ignoreGone(err error) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV) {
		return nil
	}
	return err
}
