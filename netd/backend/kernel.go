package backend

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Change is one kernel change Diff found necessary.
type Change struct {
	What  string // e.g. "add route 10.244.2.0/24 via 10.244.2.0 dev berth.1 onlink"
	apply func() error
}

func (c Change) String() string { return c.What }

// Apply makes the changes, all of them even when some fail, and returns
// the failures joined.
func Apply(changes []Change) error {
	var errs []error
	for _, c := range changes {
		if err := c.apply(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.What, err))
		}
	}
	return errors.Join(errs...)
}

// Diff compares the owned part of the kernel with want and returns the
// changes that make them equal: additions and replacements first, then
// removals. An empty result means the kernel matches.
func Diff(owned Owned, want State) ([]Change, error) {
	var adds, dels []Change
	for _, idx := range owned.Links {
		a, d, err := diffAddrs(idx, filter(want.Addrs, func(a netlink.Addr) bool { return a.LinkIndex == idx }))
		if err != nil {
			return nil, err
		}
		adds, dels = append(adds, a...), append(dels, d...)
		a, d, err = diffNeighs(idx, filter(want.Neighs, func(n netlink.Neigh) bool { return n.LinkIndex == idx }))
		if err != nil {
			return nil, err
		}
		adds, dels = append(adds, a...), append(dels, d...)
		a, d, err = diffFDB(idx, filter(want.FDB, func(n netlink.Neigh) bool { return n.LinkIndex == idx }))
		if err != nil {
			return nil, err
		}
		adds, dels = append(adds, a...), append(dels, d...)
	}
	a, d, err := diffRoutes(owned.CIDR, want.Routes)
	if err != nil {
		return nil, err
	}
	adds, dels = append(adds, a...), append(dels, d...)
	return append(adds, dels...), nil
}

func filter[T any](s []T, keep func(T) bool) []T {
	var out []T
	for _, v := range s {
		if keep(v) {
			out = append(out, v)
		}
	}
	return out
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

func diffRoutes(cidr netip.Prefix, want []netlink.Route) (adds, dels []Change, err error) {
	have, err := dump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("listing routes: %w", err)
	}
	byDst := map[string][]netlink.Route{}
	for _, r := range have {
		if r.Dst != nil && prefixWithin(r.Dst.String(), cidr) {
			byDst[r.Dst.String()] = append(byDst[r.Dst.String()], r)
		}
	}
	for _, w := range want {
		w.Protocol = RouteProtocol
		w.Table = unix.RT_TABLE_MAIN
		key := w.Dst.String()
		cur := byDst[key]
		delete(byDst, key)
		switch {
		case len(cur) == 0:
			adds = append(adds, Change{What: "add route " + Describe(&w), apply: func() error { return netlink.RouteReplace(&w) }})
		case len(cur) > 1 || !sameRoute(&cur[0], &w):
			// Replace covers one route per destination; extras (another
			// metric) are removed first.
			for _, c := range cur[1:] {
				adds = append(adds, Change{What: "remove duplicate route " + Describe(&c), apply: func() error { return netlink.RouteDel(&c) }})
			}
			adds = append(adds, Change{What: "replace route " + Describe(&cur[0]) + " with " + Describe(&w), apply: func() error { return netlink.RouteReplace(&w) }})
		}
	}
	for _, rs := range byDst {
		for _, r := range rs {
			dels = append(dels, Change{What: "remove route " + Describe(&r), apply: func() error { return ignoreGone(netlink.RouteDel(&r)) }})
		}
	}
	return adds, dels, nil
}

func sameRoute(a, b *netlink.Route) bool {
	onlink := int(netlink.FLAG_ONLINK)
	return a.LinkIndex == b.LinkIndex && a.Gw.Equal(b.Gw) && a.Flags&onlink == b.Flags&onlink && a.Priority == b.Priority &&
		routeType(a) == routeType(b)
}

// routeType is r's type; a route built without one is a unicast route,
// which is how the kernel reports it back.
func routeType(r *netlink.Route) int {
	if r.Type == 0 {
		return unix.RTN_UNICAST
	}
	return r.Type
}

func prefixWithin(s string, cidr netip.Prefix) bool {
	p, err := netip.ParsePrefix(s)
	return err == nil && p.Bits() >= cidr.Bits() && cidr.Contains(p.Addr())
}

func diffAddrs(idx int, want []netlink.Addr) (adds, dels []Change, err error) {
	link, err := netlink.LinkByIndex(idx)
	if err != nil {
		return nil, nil, fmt.Errorf("link %d: %w", idx, err)
	}
	have, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return nil, nil, fmt.Errorf("listing addresses of %s: %w", link.Attrs().Name, err)
	}
	cur := map[string]netlink.Addr{}
	for _, a := range have {
		cur[a.IPNet.String()] = a
	}
	name := link.Attrs().Name
	for _, w := range want {
		if _, ok := cur[w.IPNet.String()]; ok {
			delete(cur, w.IPNet.String())
			continue
		}
		adds = append(adds, Change{What: fmt.Sprintf("add address %s to %s", w.IPNet, name), apply: func() error { return netlink.AddrReplace(link, &w) }})
	}
	for _, a := range cur {
		dels = append(dels, Change{What: fmt.Sprintf("remove address %s from %s", a.IPNet, name), apply: func() error { return ignoreGone(netlink.AddrDel(link, &a)) }})
	}
	return adds, dels, nil
}

func diffNeighs(idx int, want []netlink.Neigh) (adds, dels []Change, err error) {
	have, err := dump(func() ([]netlink.Neigh, error) { return netlink.NeighList(idx, netlink.FAMILY_V4) })
	if err != nil {
		return nil, nil, fmt.Errorf("listing neighbours of %s: %w", linkName(idx), err)
	}
	cur := map[string]netlink.Neigh{}
	for _, n := range have {
		cur[n.IP.String()] = n
	}
	for _, w := range want {
		w.Family = netlink.FAMILY_V4
		w.State = netlink.NUD_PERMANENT
		c, ok := cur[w.IP.String()]
		delete(cur, w.IP.String())
		if ok && c.State == netlink.NUD_PERMANENT && bytes.Equal(c.HardwareAddr, w.HardwareAddr) {
			continue
		}
		what := fmt.Sprintf("set neighbour %s lladdr %s dev %s", w.IP, w.HardwareAddr, linkName(idx))
		adds = append(adds, Change{What: what, apply: func() error { return netlink.NeighSet(&w) }})
	}
	for _, c := range cur {
		what := fmt.Sprintf("remove neighbour %s dev %s", c.IP, linkName(idx))
		dels = append(dels, Change{What: what, apply: func() error { return ignoreGone(netlink.NeighDel(&c)) }})
	}
	return adds, dels, nil
}

// diffFDB compares forwarding entries by MAC: a VTEP sends a MAC's
// frames to one remote node.
func diffFDB(idx int, want []netlink.Neigh) (adds, dels []Change, err error) {
	have, err := dump(func() ([]netlink.Neigh, error) { return netlink.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		return nil, nil, fmt.Errorf("listing FDB of %s: %w", linkName(idx), err)
	}
	cur := map[string]netlink.Neigh{}
	for _, n := range have {
		cur[n.HardwareAddr.String()] = n
	}
	for _, w := range want {
		w.Family = unix.AF_BRIDGE
		w.State = netlink.NUD_PERMANENT
		w.Flags = netlink.NTF_SELF
		c, ok := cur[w.HardwareAddr.String()]
		delete(cur, w.HardwareAddr.String())
		if ok && c.IP.Equal(w.IP) && c.State&netlink.NUD_PERMANENT != 0 {
			continue
		}
		what := fmt.Sprintf("set fdb %s dst %s dev %s", w.HardwareAddr, w.IP, linkName(idx))
		adds = append(adds, Change{What: what, apply: func() error { return netlink.NeighSet(&w) }})
	}
	for _, c := range cur {
		what := fmt.Sprintf("remove fdb %s dst %s dev %s", c.HardwareAddr, c.IP, linkName(idx))
		dels = append(dels, Change{What: what, apply: func() error { return ignoreGone(netlink.NeighDel(&c)) }})
	}
	return adds, dels, nil
}

// ignoreGone treats removing something already gone as success.
func ignoreGone(err error) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV) {
		return nil
	}
	return err
}
