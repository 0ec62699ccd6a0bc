// Package bgp is the berth-bgp plugin: a routed, point-to-point attachment
// with no bridge, as Calico does it. The container's eth0 holds a /32 from
// the node's leased block and a default route via 169.254.1.1, a link-local
// address nobody owns: the host end of the veth answers for it (a static
// neighbour entry in the container, and proxy ARP for anything else), and
// the node routes the /32 back through the veth. netd announces the block
// over BGP. Addresses, host ports, masquerade and isolation are the shared
// lifecycle of plugins/attach.
//
// IPv6 (a dual-stack or IPv6-only network) the same way: the container
// gets a /128 and "default via fe80::1", a link-local address the host
// end of the veth holds (each veth its own, as Calico's host veths each
// answer for fe80::ecee:eeff:feee:eeee), pinned by a permanent neighbour
// entry in the container; the node routes the /128 through the veth.
package bgp

import (
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/cniplugin"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/plugins/attach"
)

// Gateway is the container's next hop: link-local, the same in every
// container, answered by the host end of the veth.
var Gateway = net.IPv4(169, 254, 1, 1).To4()

// GatewayV6 is the container's IPv6 next hop, held by the host end of
// the veth.
var GatewayV6 = net.ParseIP("fe80::1")

// Plugin is berth-bgp.
var Plugin = cniplugin.Plugin{
	Name:  "berth-bgp",
	About: "routed containers (a /32 each, no bridge) on the node's block announced over BGP by netd",
	Help: strings.ReplaceAll(strings.Replace(attach.LeasedHelp, `   "bridge": "berth0",          bridge name on the node
`, "", 1), "MODE", lease.ModeBGP) + `

The container gets <address>/32 and "default via 169.254.1.1" (with IPv6:
<address>/128 and "default via fe80::1"); the node gets a /32 (/128) route to
it through the host veth (bv...). No bridge, no L2 between containers.`,
	Funcs: funcs(),
}

func funcs() skel.CNIFuncs {
	return attach.LeasedFuncs(lease.ModeBGP, attach.Datapath{Links: routedLinks{}})
}

// routedLinks plugs a container in point-to-point.
type routedLinks struct{}

// Release has nothing to remove: a routed attachment makes nothing that
// the whole network shares (netd owns the block's routes).
func (routedLinks) Release(*conf.Bridge) error { return nil }

// Ingress is every host veth: each container's packets enter on its own,
// to which the node routes its address back.
func (routedLinks) Ingress(*conf.Bridge) string { return attach.HostVeths }

func (routedLinks) Setup(r attach.LinkRequest) (*current.Result, error) {
	c := r.Conf
	hostIf, contIf, err := attach.SetupVeth(attach.VethSpec{Netns: r.Netns, IfName: r.IfName, HostName: r.HostVeth,
		MTU: r.MTU(), MAC: c.RuntimeConfig.MAC, Guard: r.Guard})
	if err != nil {
		return nil, err
	}
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: hostIf.Name, Mac: hostIf.HardwareAddr.String()},
			{Name: contIf.Name, Mac: contIf.HardwareAddr.String(), Sandbox: r.Netns.Path()},
		},
	}
	v4, v6 := false, false
	for _, ipc := range r.IPAM.IPs {
		if ip := ipc.Address.IP.To4(); ip != nil {
			res.IPs = append(res.IPs, &current.IPConfig{Interface: current.Int(1), Gateway: Gateway,
				Address: net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}})
			v4 = true
			continue
		}
		res.IPs = append(res.IPs, &current.IPConfig{Interface: current.Int(1), Gateway: GatewayV6,
			Address: net.IPNet{IP: ipc.Address.IP, Mask: net.CIDRMask(128, 128)}})
		v6 = true
	}
	if len(res.IPs) == 0 {
		return nil, fmt.Errorf("%w: IPAM gave no address for the routed attachment", cnierr.ErrInvalidConfig)
	}
	if v4 {
		res.Routes = append(res.Routes, &types.Route{Dst: net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, GW: Gateway})
	}
	if v6 {
		res.Routes = append(res.Routes, &types.Route{Dst: net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, GW: GatewayV6})
	}
	if err := r.Netns.Do(func(ns.NetNS) error { return configureContainer(r.IfName, hostIf.HardwareAddr, res) }); err != nil {
		return nil, err
	}
	if err := configureHost(r.HostVeth, res); err != nil {
		return nil, err
	}
	if v6 {
		if err := attach.EnableIPv6Forwarding(); err != nil {
			return nil, err
		}
	} else if err := attach.DisableIPv6(r.HostVeth); err != nil {
		return nil, err
	}
	return res, attach.EnableForwarding(r.HostVeth)
}

// configureContainer runs in the container: the /32 (/128), per family
// a default route via the gateway, and the gateway's MAC pinned so that
// the container never needs to ARP (or solicit) for it.
func configureContainer(ifName string, hostMAC net.HardwareAddr, res *current.Result) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("%w: %s in the container: %v", cnierr.ErrDatapath, ifName, err)
	}
	for _, ipc := range res.IPs {
		// No duplicate address detection: the address is the node's to
		// give, and DAD would hold it back for a second or more.
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &ipc.Address, Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("%w: adding %s to %s: %v", cnierr.ErrDatapath, ipc.Address.String(), ifName, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("%w: bringing up %s: %v", cnierr.ErrDatapath, ifName, err)
	}
	idx := link.Attrs().Index
	type step struct {
		what string
		do   func() error
	}
	var steps []step
	for _, r := range res.Routes {
		gw, family := r.GW, unix.AF_INET
		if gw.To4() == nil {
			family = unix.AF_INET6
		} else {
			// An IPv4 gateway outside every address's subnet needs a
			// link route first; an IPv6 link-local one is on the link.
			steps = append(steps, step{"gateway route", func() error {
				return netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Scope: netlink.SCOPE_LINK,
					Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}})
			}})
		}
		dst := r.Dst
		steps = append(steps,
			step{"default route", func() error { return netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: &dst, Gw: gw}) }},
			step{"gateway neighbour", func() error {
				return netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, IP: gw, HardwareAddr: hostMAC, State: netlink.NUD_PERMANENT, Family: family})
			}})
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("%w: %s in the container: %v", cnierr.ErrDatapath, s.what, err)
		}
	}
	return nil
}

// configureHost routes the container's /32 (/128) through the host veth,
// which answers ARP for any address the container asks for (proxy ARP)
// and holds the IPv6 gateway address.
func configureHost(hostVeth string, res *current.Result) error {
	link, err := netlinksafe.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", cnierr.ErrDatapath, hostVeth, err)
	}
	for _, r := range res.Routes {
		if r.GW.To4() != nil {
			if _, err := sysctl.Sysctl("net.ipv4.conf."+hostVeth+".proxy_arp", "1"); err != nil {
				return fmt.Errorf("%w: proxy_arp on %s: %v", cnierr.ErrDatapath, hostVeth, err)
			}
			continue
		}
		gw := &netlink.Addr{IPNet: &net.IPNet{IP: r.GW, Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrReplace(link, gw); err != nil {
			return fmt.Errorf("%w: gateway %s on %s: %v", cnierr.ErrDatapath, r.GW, hostVeth, err)
		}
	}
	for _, ipc := range res.IPs {
		dst := ipc.Address
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: &dst}); err != nil {
			return fmt.Errorf("%w: route to %s via %s: %v", cnierr.ErrDatapath, dst.String(), hostVeth, err)
		}
	}
	return nil
}

func (routedLinks) Check(r attach.LinkRequest, prev *current.Result) error {
	link, err := netlinksafe.LinkByName(r.HostVeth)
	if err != nil {
		return fmt.Errorf("%w: host veth %s: %v", cnierr.ErrCheckFailed, r.HostVeth, err)
	}
	routes, err := netlinksafe.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("%w: routes of %s: %v", cnierr.ErrDatapath, r.HostVeth, err)
	}
	v6 := false
	for _, ipc := range prev.IPs {
		v6 = v6 || ipc.Address.IP.To4() == nil
	}
	if !v6 && !r.Earlier {
		if err := attach.CheckIPv6Disabled(r.HostVeth); err != nil {
			return err
		}
	}
	for _, ipc := range prev.IPs {
		found := false
		for _, rt := range routes {
			found = found || (rt.Dst != nil && rt.Dst.String() == ipc.Address.String())
		}
		if !found {
			return fmt.Errorf("%w: node route to %s via %s missing", cnierr.ErrCheckFailed, ipc.Address.String(), r.HostVeth)
		}
	}
	return r.Netns.Do(func(ns.NetNS) error { return attach.CheckContainerSide(r.IfName, prev) })
}
