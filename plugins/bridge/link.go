package bridge

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
)

// aliasPrefix marks a bridge as belonging to a berth network (IFLA_IFALIAS),
// so that two networks never share a bridge by accident.
const aliasPrefix = "berth:"

// ensureBridge returns the network's bridge, creating it when missing.
func ensureBridge(c *conf.Bridge) (*netlink.Bridge, error) {
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
		err = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la})
		if err != nil && !errors.Is(err, unix.EEXIST) { // a parallel ADD won the race
			return nil, fmt.Errorf("%w: creating bridge %s: %v", cnierr.ErrDatapath, c.BridgeName, err)
		}
		br, err = bridgeByName(c.BridgeName)
	}
	if err != nil {
		return nil, err
	}
	switch alias := br.Attrs().Alias; alias {
	case aliasPrefix + c.Name:
	case "":
		if err := netlink.LinkSetAlias(br, aliasPrefix+c.Name); err != nil {
			return nil, fmt.Errorf("%w: labelling bridge %s: %v", cnierr.ErrDatapath, c.BridgeName, err)
		}
	default:
		return nil, fmt.Errorf("%w: bridge %q: already used by %q; give network %q its own \"bridge\"",
			cnierr.ErrLinkInUse, c.BridgeName, alias, c.Name)
	}
	if c.PromiscMode {
		if err := netlink.SetPromiscOn(br); err != nil {
			return nil, fmt.Errorf("%w: promiscMode on %s: %v", cnierr.ErrDatapath, c.BridgeName, err)
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("%w: bringing up %s: %v", cnierr.ErrDatapath, c.BridgeName, err)
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
//     spoofing; in routed mode that pins each container to its own /32).
func EnableForwarding(iface string) error {
	for _, s := range []string{"net.ipv4.ip_forward", "net.ipv4.conf." + iface + ".route_localnet", "net.ipv4.conf." + iface + ".rp_filter"} {
		if v, _ := sysctl.Sysctl(s); v == "1" {
			continue
		}
		if _, err := sysctl.Sysctl(s, "1"); err != nil {
			return fmt.Errorf("%w: setting %s=1: %v", cnierr.ErrDatapath, s, err)
		}
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
	if err := netlink.LinkDel(l); err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
		return fmt.Errorf("%w: deleting %s: %v", cnierr.ErrDatapath, name, err)
	}
	return nil
}
