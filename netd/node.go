package netd

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
)

// underlay is how this node is reached by the others: its addresses on
// the underlay, one per family.
type underlay struct {
	IP   netip.Addr // IPv4; zero on an underlay without IPv4
	IPv6 netip.Addr // zero on an underlay without IPv6
	// PreferIPv6: the first address given is IPv6, or the node has no
	// IPv4 address.
	PreferIPv6 bool
	Link       netlink.Link
	How        string // how they were found, for the log
}

// detectUnderlay finds the node's addresses and interface from what was
// given: the interface (its first global address of each family); the
// addresses (the interface holding them, which must be one); or neither
// (the default route's interface and source address, as flannel does:
// IPv4's, else IPv6's). A family not given is the interface's first
// global address of that family, if it has one.
func detectUnderlay(ips []netip.Addr, iface string) (*underlay, error) {
	u := &underlay{}
	switch {
	case iface != "":
		link, err := netlink.LinkByName(iface)
		if err != nil {
			return nil, fmt.Errorf("--iface %s: %w", iface, err)
		}
		u.Link, u.How = link, "given"
		if len(ips) == 0 {
			u.How = "addresses of --iface"
		}
	case len(ips) > 0:
		for _, ip := range ips {
			link, err := linkHolding(ip)
			if err != nil {
				return nil, err
			}
			if u.Link != nil && link.Attrs().Index != u.Link.Attrs().Index {
				return nil, fmt.Errorf("--node-ip: %s is on %s and %s on %s; berth uses one underlay interface: give addresses of one (or --iface)",
					ips[0], u.Link.Attrs().Name, ip, link.Attrs().Name)
			}
			u.Link = link
		}
		u.How = "interface holding --node-ip"
	default:
		return defaultRouteUnderlay()
	}
	for _, ip := range ips {
		if ip.Is4() {
			u.IP = ip
		} else {
			u.IPv6 = ip
		}
	}
	if err := u.fill(); err != nil {
		return nil, fmt.Errorf("%s: %w; give --node-ip", u.Link.Attrs().Name, err)
	}
	u.PreferIPv6 = len(ips) > 0 && ips[0].Is6() || !u.IP.IsValid()
	return u, nil
}

// node is the backend's view of this node on network n.
func (u *underlay) node(name string, n *conf.Network) backend.Node {
	return backend.Node{Name: name, IP: u.IP, IPv6: u.IPv6, PreferIPv6: u.PreferIPv6, Link: u.Link, Network: n}
}

// outside checks that the node's underlay addresses are outside network
// n's CIDRs. Every other node ignores the lease of a node inside them
// (traffic to it would loop), and in vxlan and hostgw mode the
// unreachable route to the CIDR would take the node's own neighbours and
// gateway inside it off the underlay.
func (u *underlay) outside(n *conf.Network) error {
	for _, ip := range u.addrs() {
		for _, cidr := range n.CIDRs() {
			if cidr.Contains(ip) {
				return fmt.Errorf("network %s: this node's address %s is inside the network's CIDR %s: the network's addresses must be apart from the underlay's (another --network-cidr, or another --node-ip)",
					n.Name, ip, cidr)
			}
		}
	}
	return nil
}

// primary is the node's preferred address.
func (u *underlay) primary() netip.Addr {
	if u.PreferIPv6 {
		return u.IPv6
	}
	return u.IP
}

// addrs are the node's addresses, the preferred one first.
func (u *underlay) addrs() []netip.Addr {
	var out []netip.Addr
	for _, ip := range []netip.Addr{u.primary(), u.IP, u.IPv6} {
		if ip.IsValid() && !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	return out
}

// defaultRouteUnderlay is the interface of the default route, IPv4's if
// there is one, else IPv6's, and its addresses.
func defaultRouteUnderlay() (*underlay, error) {
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(family, &netlink.Route{Dst: nil}, netlink.RT_FILTER_DST)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("listing routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst != nil && !r.Dst.IP.IsUnspecified() {
				continue
			}
			link, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				continue
			}
			u := &underlay{Link: link, How: "default route's interface", PreferIPv6: family == netlink.FAMILY_V6}
			if src, ok := netip.AddrFromSlice(r.Src); ok && r.Src != nil && src.Unmap().IsGlobalUnicast() {
				src = src.Unmap()
				if src.Is4() {
					u.IP = src
				} else {
					u.IPv6 = src
				}
				u.How = "default route's source"
			}
			if err := u.fill(); err != nil {
				return nil, fmt.Errorf("default route's interface %s: %w; give --node-ip or --iface", link.Attrs().Name, err)
			}
			return u, nil
		}
	}
	return nil, errors.New("no default route to find the node's address from; give --node-ip or --iface")
}

// fill finds the families not known yet on u.Link; it fails when the
// node has no address at all.
func (u *underlay) fill() error {
	if !u.IP.IsValid() {
		a, err := firstAddr(u.Link, false)
		if err != nil {
			return err
		}
		u.IP = a
	}
	if !u.IPv6.IsValid() {
		a, err := firstAddr(u.Link, true)
		if err != nil {
			return err
		}
		u.IPv6 = a
	}
	if !u.IP.IsValid() && !u.IPv6.IsValid() {
		return errors.New("no global IPv4 or IPv6 address")
	}
	return nil
}

// linkHolding is the interface that has ip.
func linkHolding(ip netip.Addr) (netlink.Link, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("listing addresses: %w", err)
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			return netlink.LinkByIndex(a.LinkIndex)
		}
	}
	return nil, fmt.Errorf("--node-ip %s: no interface of this node has that address", ip)
}

// firstAddr is link's first global unicast address of a family (not
// link-local, not deprecated, not a failed duplicate), zero if none.
func firstAddr(link netlink.Link, v6 bool) (netip.Addr, error) {
	family := netlink.FAMILY_V4
	if v6 {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(link, family)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.Flags&(unix.IFA_F_DEPRECATED|unix.IFA_F_DADFAILED) != 0 {
			continue
		}
		if ip = ip.Unmap(); ip.IsGlobalUnicast() && ip.Is6() == v6 {
			return ip, nil
		}
	}
	return netip.Addr{}, nil
}
