package attach

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/linkinfo"
)

// VethSpec is the veth pair of one attachment.
type VethSpec struct {
	Netns    ns.NetNS
	IfName   string // container side
	HostName string
	MTU      int
	MAC      string          // container side; random when empty
	Hairpin  bool            // with Bridge
	Bridge   *netlink.Bridge // nil: the host end stays unplugged (routed datapath)
	// Guard, when set, puts the source guard on the host end (its
	// index, the container side's MAC) before that end goes up.
	Guard func(hostIndex int, mac net.HardwareAddr) error
}

// SetupVeth creates the pair in the container namespace with the host end
// in the node's, guards the host end and, with a bridge, closes the host
// end's own stack (closePortStack), plugs it in and sets the port
// (setPort); only then does the host end go up. The container side stays down
// (configured and set up by the caller): until the host end is up,
// nothing the container sends gets anywhere, so that no frame of a
// process already in the namespace (a network added to a running
// container) passes unguarded.
func SetupVeth(s VethSpec) (host, cont net.Interface, err error) {
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return host, cont, fmt.Errorf("%w: %v", cnierr.ErrDatapath, err)
	}
	defer hostNS.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.NewLinkAttrs(), PeerName: s.HostName, PeerNamespace: netlink.NsFd(int(hostNS.Fd()))}
	veth.Name, veth.MTU = s.IfName, s.MTU
	if s.MAC != "" {
		if veth.HardwareAddr, err = net.ParseMAC(s.MAC); err != nil {
			return host, cont, fmt.Errorf("%w: mac %q: %v", cnierr.ErrInvalidConfig, s.MAC, err)
		}
	}
	err = s.Netns.Do(func(ns.NetNS) error {
		if _, err := netlinksafe.LinkByName(s.IfName); err == nil {
			return fmt.Errorf("%w: ifName %q already exists in the container namespace", cnierr.ErrLinkInUse, s.IfName)
		}
		if err := netlink.LinkAdd(veth); err != nil {
			if errors.Is(err, unix.EEXIST) || os.IsExist(err) {
				return fmt.Errorf("%w: creating veth %s: %v", cnierr.ErrLinkInUse, s.HostName, err)
			}
			return fmt.Errorf("%w: creating veth %s/%s: %v", cnierr.ErrDatapath, s.HostName, s.IfName, err)
		}
		// Read back for what the kernel chose: index, random MAC.
		c, err := netlinksafe.LinkByName(s.IfName)
		if err != nil {
			return fmt.Errorf("%w: finding %s in the container namespace: %v", cnierr.ErrDatapath, s.IfName, err)
		}
		cont = iface(c)
		return nil
	})
	if err != nil {
		return host, cont, err
	}
	link, err := netlinksafe.LinkByName(s.HostName)
	if err != nil {
		return host, cont, fmt.Errorf("%w: finding %s: %v", cnierr.ErrDatapath, s.HostName, err)
	}
	host = iface(link)
	if s.Guard != nil {
		if err := s.Guard(host.Index, cont.HardwareAddr); err != nil {
			return host, cont, err
		}
	}
	if s.Bridge != nil {
		if err := closePortStack(s.HostName); err != nil {
			return host, cont, err
		}
		if err := netlink.LinkSetMaster(link, s.Bridge); err != nil {
			return host, cont, fmt.Errorf("%w: attaching %s to %s: %v", cnierr.ErrDatapath, s.HostName, s.Bridge.Name, err)
		}
		if err := setPort(link.Attrs().Index, s.Hairpin); err != nil {
			return host, cont, fmt.Errorf("%w: setting bridge port %s (hairpinMode, no multicast router): %v", cnierr.ErrDatapath, s.HostName, err)
		}
	}
	// The node routes for this interface itself (the reference plugins'
	// pkg/ip does the same); a node without IPv6 has no such key.
	_, _ = sysctl.Sysctl("net/ipv6/conf/"+s.HostName+"/accept_ra", "0")
	if err := netlink.LinkSetUp(link); err != nil {
		return host, cont, fmt.Errorf("%w: setting %s up: %v", cnierr.ErrDatapath, s.HostName, err)
	}
	return host, cont, nil
}

// iface is l as net.Interface.
func iface(l netlink.Link) net.Interface {
	a := l.Attrs()
	return net.Interface{Index: a.Index, MTU: a.MTU, Name: a.Name, HardwareAddr: a.HardwareAddr, Flags: a.Flags}
}

// EnableForwarding turns on routing in the node's namespace and prepares
// iface (the bridge, or a routed host veth) for containers:
//   - route_localnet, so that DNAT of connections from 127.0.0.1 to a
//     container is not dropped as a martian;
//   - strict reverse-path filtering, so that a container cannot send with a
//     source address that the node does not route back through iface (in
//     routed mode that pins each container to its own /32). It sees routed
//     packets only, not bridged ones, and any address of the subnet passes
//     on a bridge: the per-container anti-spoofing is the host veth's
//     filter (srcguard.go, or the eBPF datapath's from_container);
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
	return ensureSysctls(
		sysctlSetting{"net/ipv4/ip_forward", "1"},
		sysctlSetting{"net/ipv4/conf/" + iface + "/route_localnet", "1"},
		sysctlSetting{"net/ipv4/conf/" + iface + "/rp_filter", "1"},
		sysctlSetting{"net/ipv6/conf/" + iface + "/accept_ra", "0"},
	)
}

type sysctlSetting struct{ key, value string }

// ensureSysctls sets what differs of settings; an IPv6 key a node without
// IPv6 lacks is left out.
func ensureSysctls(settings ...sysctlSetting) error {
	for _, s := range settings {
		v, err := sysctl.Sysctl(s.key)
		if v == s.value || noIPv6(s.key, err) {
			continue
		}
		if _, err := sysctl.Sysctl(s.key, s.value); err != nil {
			return fmt.Errorf("%w: setting %s=%s: %v", cnierr.ErrDatapath, s.key, s.value, err)
		}
	}
	return nil
}

// noIPv6 reports whether err, reading key, says the node has no IPv6.
func noIPv6(key string, err error) bool {
	return errors.Is(err, fs.ErrNotExist) && strings.HasPrefix(key, "net/ipv6/")
}

// portStack are the settings that close a bridge port's own stack
// (closePortStack).
func portStack(port string) []sysctlSetting {
	return []sysctlSetting{
		{"net/ipv4/conf/" + port + "/rp_filter", "1"},
		{"net/ipv6/conf/" + port + "/disable_ipv6", "1"},
	}
}

// closePortStack closes the node's own IPv4 and IPv6 on port, a host veth
// about to join a bridge. A bridge hands a frame for a link-local group
// address (01:80:c2:00:00:0X) up on the port it came in on, to the node's
// stack with the port as its interface: past the rules that name the
// bridge, and for LLDP past the bridge's hooks. The source guard drops
// such frames, but one a container got past it (internal/srcguard's
// bridge.go) would reach the node's sockets with any source. Strict
// rp_filter drops its IPv4 (no route goes back through a port),
// disable_ipv6 its IPv6; neither touches what the port bridges.
func closePortStack(port string) error { return ensureSysctls(portStack(port)...) }

// checkPortStack fails (CHECK) when port's own stack is open again.
func checkPortStack(port string) error {
	for _, s := range portStack(port) {
		v, err := sysctl.Sysctl(s.key)
		if v != s.value && !noIPv6(s.key, err) {
			return fmt.Errorf("%w: %s is %q, want %s: the node's own stack takes link-local frames from the container on the bridge port", cnierr.ErrCheckFailed, s.key, v, s.value)
		}
	}
	return nil
}

// mcastRouterDisabled is the multicast router type
// (IFLA_BRPORT_MULTICAST_ROUTER, the kernel's MDB_RTR_TYPE_DISABLED) of
// a port that never becomes a multicast router port.
const mcastRouterDisabled = 0

// setPort sets the bridge port index's hairpin mode and makes it no
// multicast router port, in the one request `bridge link set dev <port>
// hairpin on|off mcast_router 0` sends, which ADD made for the hairpin
// mode alone before. A snooping bridge sends every group's traffic to its
// router ports. By default a port becomes one for minutes once a general
// query, multicast router advertisement or PIM hello comes in on it, all
// of which any container can send: it would then get the traffic of
// groups only other containers joined. Disabled, nothing that comes in on
// the port makes it one; the container still gets the groups it joins.
func setPort(index int, hairpin bool) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_BRIDGE)
	msg.Index = int32(index)
	req.AddData(msg)
	port := nl.NewRtAttr(unix.IFLA_PROTINFO|unix.NLA_F_NESTED, nil)
	mode := uint8(0)
	if hairpin {
		mode = 1
	}
	port.AddRtAttr(nl.IFLA_BRPORT_MODE, nl.Uint8Attr(mode))
	port.AddRtAttr(nl.IFLA_BRPORT_MULTICAST_ROUTER, nl.Uint8Attr(mcastRouterDisabled))
	req.AddData(port)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// checkNoMulticastRouter fails (CHECK) when the bridge port index,
// named port, may become a multicast router port again. A kernel without
// multicast snooping tells no type, and has no router ports.
func checkNoMulticastRouter(index int, port string) error {
	data, err := linkinfo.SlaveData(index)
	if err != nil {
		return fmt.Errorf("%w: bridge port %s: %v", cnierr.ErrCheckFailed, port, err)
	}
	v, ok := data[nl.IFLA_BRPORT_MULTICAST_ROUTER]
	switch {
	case !ok:
		return nil
	case len(v) != 1:
		return fmt.Errorf("%w: bridge port %s: the kernel tells its multicast router type in %d bytes, want 1", cnierr.ErrCheckFailed, port, len(v))
	case v[0] == mcastRouterDisabled:
		return nil
	}
	return fmt.Errorf("%w: bridge port %s may become a multicast router port (mcast_router %d, want 0): a query from its container would bring it every group's traffic; bridge link set dev %s mcast_router 0, or DEL and ADD the container again",
		cnierr.ErrCheckFailed, port, v[0], port)
}

// DisableIPv6 turns IPv6 off on a routed host veth of a network without
// IPv6: the kernel then drops every IPv6 packet the container sends,
// before any rule (forwarded or to the node, neighbour discovery too),
// and sends it none. The container could otherwise turn IPv6 on in its
// own namespace and, once the node forwards IPv6 for another network,
// send with any source. An ip6tables rule per network cannot do it:
// iptables -i knows the routed veths of all networks only as one
// pattern ("bv+"), those of networks with IPv6 included. A node without
// IPv6 has nothing to turn off.
func DisableIPv6(hostVeth string) error {
	key := "net/ipv6/conf/" + hostVeth + "/disable_ipv6"
	v, err := sysctl.Sysctl(key)
	if v == "1" || errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if _, err := sysctl.Sysctl(key, "1"); err != nil {
		return fmt.Errorf("%w: setting %s=1: %v", cnierr.ErrDatapath, key, err)
	}
	return nil
}

// CheckIPv6Disabled fails (CHECK) when IPv6 is on on hostVeth again.
func CheckIPv6Disabled(hostVeth string) error {
	key := "net/ipv6/conf/" + hostVeth + "/disable_ipv6"
	v, err := sysctl.Sysctl(key)
	if errors.Is(err, fs.ErrNotExist) || v == "1" {
		return nil
	}
	return fmt.Errorf("%w: %s is %q, want 1: the network has no IPv6, and its container could send IPv6 through the node", cnierr.ErrCheckFailed, key, v)
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

// delLink removes a link if it exists. By name, in one request: a lookup
// first would cost another round trip, and a lookup by name then a delete
// by its index removes the same link.
func delLink(name string) error {
	req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	// ENODEV: there is none, or a DEL and a GC of one attachment both
	// got here and this one lost.
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("%w: deleting %s: %v", cnierr.ErrDatapath, name, err)
	}
	return nil
}
