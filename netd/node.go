package netd

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// underlay is how this node is reached by the others.
type underlay struct {
	IP   netip.Addr
	Link netlink.Link
	How  string // how they were found, for the log
}

// detectUnderlay finds the node IP and interface from what was given:
// both; the interface (its first global IPv4 address); the address (the
// interface holding it); or neither (the default route's interface and
// source address, as flannel does).
func detectUnderlay(ip netip.Addr, iface string) (*underlay, error) {
	switch {
	case iface != "":
		link, err := netlink.LinkByName(iface)
		if err != nil {
			return nil, fmt.Errorf("--iface %s: %w", iface, err)
		}
		if ip.IsValid() {
			return &underlay{IP: ip, Link: link, How: "given"}, nil
		}
		a, err := firstIPv4(link)
		if err != nil {
			return nil, fmt.Errorf("--iface %s: %w; give --node-ip", iface, err)
		}
		return &underlay{IP: a, Link: link, How: "first address of --iface"}, nil
	case ip.IsValid():
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("listing addresses: %w", err)
		}
		for _, a := range addrs {
			if got, ok := netip.AddrFromSlice(a.IP.To4()); ok && got == ip {
				link, err := netlink.LinkByIndex(a.LinkIndex)
				if err != nil {
					return nil, err
				}
				return &underlay{IP: ip, Link: link, How: "interface holding --node-ip"}, nil
			}
		}
		return nil, fmt.Errorf("--node-ip %s: no interface of this node has that address", ip)
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: nil}, netlink.RT_FILTER_DST)
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
		if src, ok := netip.AddrFromSlice(r.Src.To4()); ok && r.Src != nil {
			return &underlay{IP: src, Link: link, How: "default route's source"}, nil
		}
		a, err := firstIPv4(link)
		if err != nil {
			return nil, fmt.Errorf("default route's interface %s: %w; give --node-ip or --iface", link.Attrs().Name, err)
		}
		return &underlay{IP: a, Link: link, How: "default route's interface"}, nil
	}
	return nil, errors.New("no default route to find the node IP from; give --node-ip or --iface")
}

func firstIPv4(link netlink.Link) (netip.Addr, error) {
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip.IsGlobalUnicast() {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no global IPv4 address on %s", link.Attrs().Name)
}
