package attach

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/netnsdir"
	"github.com/berthnet/berth/internal/nodebridge"
)

// useBridge returns the network's bridge, up, creating or adopting it when
// needed, and the bridge lock the caller releases once its veth is in.
func useBridge(c *conf.Bridge) (*netlink.Bridge, *netnsdir.Lock, error) {
	lock, err := nodebridge.Lock(c.BridgeName, true)
	if err != nil {
		return nil, nil, err
	}
	br, err := bridgeByName(c.BridgeName)
	if owner, _ := nodebridge.Owner(aliasOf(br)); err != nil || owner != c.Name {
		// Creating, adopting or refusing: decided alone.
		lock.Release()
		if lock, err = nodebridge.Lock(c.BridgeName, false); err != nil {
			return nil, nil, err
		}
		if br, err = markBridge(c); err != nil {
			lock.Release()
			return nil, nil, err
		}
	}
	if c.PromiscMode {
		if err := netlink.SetPromiscOn(br); err != nil {
			lock.Release()
			return nil, nil, fmt.Errorf("%w: promiscMode on %s: %v", cnierr.ErrDatapath, c.BridgeName, err)
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		lock.Release()
		return nil, nil, fmt.Errorf("%w: bringing up %s: %v", cnierr.ErrDatapath, c.BridgeName, err)
	}
	return br, lock, nil
}

func aliasOf(br *netlink.Bridge) string {
	if br == nil {
		return ""
	}
	return br.Attrs().Alias
}

// markBridge creates the network's bridge, or adopts an unmarked one, or
// refuses one marked by another network. The caller holds the bridge's
// lock exclusively.
func markBridge(c *conf.Bridge) (*netlink.Bridge, error) {
	alias := nodebridge.Mark(c.Name, true)
	br, err := bridgeByName(c.BridgeName)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		la := netlink.NewLinkAttrs()
		la.Name = c.BridgeName
		if c.MTU != 0 {
			la.MTU = c.MTU
		}
		// Without this a new bridge takes the lowest MAC of its ports and
		// changes address whenever a container comes or goes.
		la.HardwareAddr = randomMAC()
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return nil, fmt.Errorf("%w: creating bridge %s: %v", cnierr.ErrDatapath, c.BridgeName, err)
		}
		// Its link-local address, made when it comes up, is usable at
		// once: while it is tentative (DAD, a second) the node cannot
		// send neighbour solicitations on the bridge, and the first
		// packets it forwards to a new container are lost.
		key := "net/ipv6/conf/" + c.BridgeName + "/accept_dad"
		if _, err := sysctl.Sysctl(key, "0"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: setting %s=0: %v", cnierr.ErrDatapath, key, err)
		}
		alias = nodebridge.Mark(c.Name, false)
		br, err = bridgeByName(c.BridgeName)
	}
	if err != nil {
		return nil, err
	}
	switch owner, _ := nodebridge.Owner(br.Attrs().Alias); {
	case owner == c.Name:
		return br, nil
	case br.Attrs().Alias != "":
		return nil, fmt.Errorf("%w: bridge %q: already used by %q; give network %q its own \"bridge\" (or, if that network is gone and nothing is plugged into %s, remove it: ip link del %s)",
			cnierr.ErrLinkInUse, c.BridgeName, br.Attrs().Alias, c.Name, c.BridgeName, c.BridgeName)
	}
	if err := netlink.LinkSetAlias(br, alias); err != nil {
		return nil, fmt.Errorf("%w: labelling bridge %s: %v", cnierr.ErrDatapath, c.BridgeName, err)
	}
	return br, nil
}

func bridgeByName(name string) (*netlink.Bridge, error) {
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil, err
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("%w: %s exists and is a %s, not a bridge; choose another \"bridge\" name", cnierr.ErrLinkInUse, name, l.Type())
	}
	return br, nil
}

func randomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	f, err := os.Open("/dev/urandom")
	if err == nil {
		f.Read(mac)
		f.Close()
	}
	mac[0] = (mac[0] | 0x02) &^ 0x01 // locally administered, unicast
	return mac
}

// ensureGateway puts the gateway addresses on the bridge. An address of
// another subnet already there means a misconfiguration, unless
// forceAddress says to replace it.
func ensureGateway(c *conf.Bridge, br *netlink.Bridge, gws []netip.Prefix) error {
	for _, gw := range gws {
		family := netlink.FAMILY_V4
		if gw.Addr().Is6() {
			family = netlink.FAMILY_V6
		}
		addrs, err := netlinksafe.AddrList(br, family)
		if err != nil {
			return fmt.Errorf("%w: listing addresses of %s: %v", cnierr.ErrDatapath, br.Name, err)
		}
		present := false
		for _, a := range addrs {
			have, _ := netip.AddrFromSlice(a.IP)
			have = have.Unmap()
			ones, _ := a.Mask.Size()
			switch {
			case have == gw.Addr() && ones == gw.Bits():
				present = true
			case !gw.Masked().Contains(have):
				// Another subnet: several networks may share a bridge's
				// addresses; only the same subnet twice is a mistake.
			case !c.ForceAddress:
				return fmt.Errorf("%w: bridge %s already has %s in the gateway's subnet %s; set \"forceAddress\": true to replace it",
					cnierr.ErrLinkInUse, br.Name, a.IPNet, gw.Masked())
			default:
				if err := netlink.AddrDel(br, &a); err != nil {
					return fmt.Errorf("%w: removing %s from %s: %v", cnierr.ErrDatapath, a.IPNet, br.Name, err)
				}
			}
		}
		if present {
			continue
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: gw.Addr().AsSlice(), Mask: net.CIDRMask(gw.Bits(), gw.Addr().BitLen())}}
		if gw.Addr().Is6() {
			// Usable at once: containers get their own addresses without
			// DAD too, and nobody else answers for the gateway.
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(br, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%w: adding gateway %s to %s: %v", cnierr.ErrDatapath, gw, br.Name, err)
		}
	}
	return nil
}

// VethSpec is the veth pair of one attachment.
type VethSpec struct {
	Netns    ns.NetNS
	IfName   string // container side
	HostName string
	MTU      int
	MAC      string          // container side; random when empty
	Hairpin  bool            // with Bridge
	Bridge   *netlink.Bridge // nil: the host end stays unplugged (routed datapath)
}

// SetupVeth creates the pair in the container namespace, moves the host end
// out and, with a bridge, plugs it in.
func SetupVeth(s VethSpec) (host, cont net.Interface, err error) {
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return host, cont, fmt.Errorf("%w: %v", cnierr.ErrDatapath, err)
	}
	defer hostNS.Close()
	err = s.Netns.Do(func(ns.NetNS) error {
		if _, err := netlinksafe.LinkByName(s.IfName); err == nil {
			return fmt.Errorf("%w: ifName %q already exists in the container namespace", cnierr.ErrLinkInUse, s.IfName)
		}
		h, c, err := ip.SetupVethWithName(s.IfName, s.HostName, s.MTU, s.MAC, hostNS)
		if err != nil {
			if errors.Is(err, unix.EEXIST) || os.IsExist(err) {
				return fmt.Errorf("%w: creating veth %s: %v", cnierr.ErrLinkInUse, s.HostName, err)
			}
			return fmt.Errorf("%w: creating veth %s/%s: %v", cnierr.ErrDatapath, s.HostName, s.IfName, err)
		}
		host, cont = h, c
		return nil
	})
	if err != nil {
		return host, cont, err
	}
	if s.Bridge == nil {
		return host, cont, nil
	}
	link, err := netlinksafe.LinkByName(s.HostName)
	if err != nil {
		return host, cont, fmt.Errorf("%w: finding %s: %v", cnierr.ErrDatapath, s.HostName, err)
	}
	if err := netlink.LinkSetMaster(link, s.Bridge); err != nil {
		return host, cont, fmt.Errorf("%w: attaching %s to %s: %v", cnierr.ErrDatapath, s.HostName, s.Bridge.Name, err)
	}
	if err := netlink.LinkSetHairpin(link, s.Hairpin); err != nil {
		return host, cont, fmt.Errorf("%w: hairpinMode on %s: %v", cnierr.ErrDatapath, s.HostName, err)
	}
	return host, cont, nil
}

// EnableForwarding turns on routing in the node's namespace and prepares
// iface (the bridge, or a routed host veth) for containers:
//   - route_localnet, so that DNAT of connections from 127.0.0.1 to a
//     container is not dropped as a martian;
//   - strict reverse-path filtering, so that a container cannot send with a
//     source address that the node does not route back through iface (no
//     spoofing; in routed mode that pins each container to its own /32);
//   - no IPv6 router advertisements accepted on iface, whatever the
//     network's families: a container could otherwise give the node a
//     default route through itself (CVE-2020-10749). A node without IPv6
//     on iface has nothing to refuse.
//
// IPv6 has neither rp_filter nor route_localnet: its anti-spoofing is an
// ip6tables rule (internal/firewall), [::1] is not published, and its
// forwarding is the lifecycle's (EnableIPv6Forwarding), being the same for
// every datapath.
func EnableForwarding(iface string) error {
	// Slashes, not dots: an interface name may hold a dot.
	for _, s := range []struct{ key, value string }{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv4/conf/" + iface + "/route_localnet", "1"},
		{"net/ipv4/conf/" + iface + "/rp_filter", "1"},
		{"net/ipv6/conf/" + iface + "/accept_ra", "0"},
	} {
		v, err := sysctl.Sysctl(s.key)
		if v == s.value || errors.Is(err, fs.ErrNotExist) && strings.HasPrefix(s.key, "net/ipv6/") {
			continue
		}
		if _, err := sysctl.Sysctl(s.key, s.value); err != nil {
			return fmt.Errorf("%w: setting %s=%s: %v", cnierr.ErrDatapath, s.key, s.value, err)
		}
	}
	return nil
}

// EnableIPv6Forwarding turns on IPv6 routing in the node's namespace
// (net.ipv6.conf.all.forwarding), for a network with IPv6. A forwarding
// node ignores router advertisements on interfaces with accept_ra=1, so
// an interface the node takes routes from advertisements on (its uplink,
// with a route of proto ra) would lose its default route when that
// expires: such interfaces get accept_ra=2 (accept even when forwarding)
// first, what Docker and Kubernetes otherwise tell administrators to do by
// hand. berth's own interfaces never accept advertisements (EnableForwarding).
func EnableIPv6Forwarding() error {
	const all = "net/ipv6/conf/all/forwarding"
	v, err := sysctl.Sysctl(all)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: the node has no IPv6 (%s is missing); remove the network's IPv6 ranges", cnierr.ErrDatapath, all)
	}
	if v == "1" {
		return nil
	}
	routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Protocol: unix.RTPROT_RA}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return fmt.Errorf("%w: listing IPv6 routes learnt from router advertisements: %v", cnierr.ErrDatapath, err)
	}
	done := map[int]bool{}
	for _, r := range routes {
		if done[r.LinkIndex] {
			continue
		}
		done[r.LinkIndex] = true
		l, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		key := "net/ipv6/conf/" + l.Attrs().Name + "/accept_ra"
		if v, _ := sysctl.Sysctl(key); v != "1" {
			continue // 0: no advertisements wanted; 2: already kept
		}
		if _, err := sysctl.Sysctl(key, "2"); err != nil {
			return fmt.Errorf("%w: setting %s=2: %v", cnierr.ErrDatapath, key, err)
		}
	}
	if _, err := sysctl.Sysctl(all, "1"); err != nil {
		return fmt.Errorf("%w: setting %s=1: %v", cnierr.ErrDatapath, all, err)
	}
	return nil
}

// delLink removes a link if it exists.
func delLink(name string) error {
	l, err := netlinksafe.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: finding %s: %v", cnierr.ErrDatapath, name, err)
	}
	// A DEL and a GC of one attachment may both get here: the loser finds
	// the link gone (ENODEV).
	if err := netlink.LinkDel(l); err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("%w: deleting %s: %v", cnierr.ErrDatapath, name, err)
	}
	return nil
}
