// Package bgp is the berth-bgp plugin: a routed, point-to-point attachment
// with no bridge, as Calico does it. The container's eth0 holds a /32 from
// the node's leased block and a default route via 169.254.1.1, a link-local
// address nobody owns: the host end of the veth answers for it (a static
// neighbour entry in the container, and proxy ARP for anything else), and
// the node routes the /32 back through the veth. netd announces the block
// over BGP. Addresses, host ports, masquerade and isolation are the shared
// lifecycle of plugins/bridge.
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
	"github.com/berthnet/berth/plugins/bridge"
)

// Gateway is the container's next hop: link-local, the same in every
// container, answered by the host end of the veth.
var Gateway = net.IPv4(169, 254, 1, 1).To4()

// Plugin is berth-bgp.
var Plugin = cniplugin.Plugin{
	Name:  "berth-bgp",
	About: "routed containers (a /32 each, no bridge) on the node's block announced over BGP by netd",
	Help: strings.ReplaceAll(strings.Replace(bridge.LeasedHelp, `   "bridge": "berth0",          bridge name on the node
`, "", 1), "MODE", lease.ModeBGP) + `

The container gets <address>/32 and "default via 169.254.1.1"; the node gets a
/32 route to it through the host veth (bv...). No bridge, no L2 between containers.`,
	Funcs: funcs(),
}

func funcs() skel.CNIFuncs {
	return bridge.LeasedFuncs(lease.ModeBGP, bridge.Datapath{Links: routedLinks{}})
}

// routedLinks plugs a container in point-to-point.
type routedLinks struct{}

// Release has nothing to remove: a routed attachment makes nothing that
// the whole network shares (netd owns the block's routes).
func (routedLinks) Release(*conf.Bridge) error { return nil }

// Ingress is every host veth: each container's packets enter on its own,
// to which the node routes its address back.
func (routedLinks) Ingress(*conf.Bridge) string { return bridge.HostVeths }

func (routedLinks) Setup(r bridge.LinkRequest) (*current.Result, error) {
	c := r.Conf
	hostIf, contIf, err := bridge.SetupVeth(bridge.VethSpec{Netns: r.Netns, IfName: r.IfName, HostName: r.HostVeth,
		MTU: r.MTU(), MAC: c.RuntimeConfig.MAC})
	if err != nil {
		return nil, err
	}
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: hostIf.Name, Mac: hostIf.HardwareAddr.String()},
			{Name: contIf.Name, Mac: contIf.HardwareAddr.String(), Sandbox: r.Netns.Path()},
		},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, GW: Gateway}},
	}
	for _, ipc := range r.IPAM.IPs {
		if ipc.Address.IP.To4() == nil {
			continue // the routed datapath is IPv4
		}
		res.IPs = append(res.IPs, &current.IPConfig{Interface: current.Int(1), Gateway: Gateway,
			Address: net.IPNet{IP: ipc.Address.IP.To4(), Mask: net.CIDRMask(32, 32)}})
	}
	if len(res.IPs) == 0 {
		return nil, fmt.Errorf("%w: IPAM gave no IPv4 address for the routed attachment", cnierr.ErrInvalidConfig)
	}
	if err := r.Netns.Do(func(ns.NetNS) error { return configureContainer(r.IfName, hostIf.HardwareAddr, res) }); err != nil {
		return nil, err
	}
	if err := configureHost(r.HostVeth, res); err != nil {
		return nil, err
	}
	return res, bridge.EnableForwarding(r.HostVeth)
}

// configureContainer runs in the container: the /32, a link route to the
// gateway, the default route, and the gateway's MAC pinned so that the
// container never needs to ARP for it.
func configureContainer(ifName string, hostMAC net.HardwareAddr, res *current.Result) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("%w: %s in the container: %v", cnierr.ErrDatapath, ifName, err)
	}
	for _, ipc := range res.IPs {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &ipc.Address}); err != nil {
			return fmt.Errorf("%w: adding %s to %s: %v", cnierr.ErrDatapath, ipc.Address.String(), ifName, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("%w: bringing up %s: %v", cnierr.ErrDatapath, ifName, err)
	}
	idx := link.Attrs().Index
	steps := []struct {
		what string
		do   func() error
	}{
		{"gateway route", func() error {
			return netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Scope: netlink.SCOPE_LINK,
				Dst: &net.IPNet{IP: Gateway, Mask: net.CIDRMask(32, 32)}})
		}},
		{"default route", func() error {
			return netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Gw: Gateway})
		}},
		{"gateway neighbour", func() error {
			return netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, IP: Gateway, HardwareAddr: hostMAC,
				State: netlink.NUD_PERMANENT, Family: unix.AF_INET})
		}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("%w: %s in the container: %v", cnierr.ErrDatapath, s.what, err)
		}
	}
	return nil
}

// configureHost routes the container's /32 through the host veth, which
// answers ARP for any address the container asks for (proxy ARP).
func configureHost(hostVeth string, res *current.Result) error {
	link, err := netlinksafe.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", cnierr.ErrDatapath, hostVeth, err)
	}
	if _, err := sysctl.Sysctl("net.ipv4.conf."+hostVeth+".proxy_arp", "1"); err != nil {
		return fmt.Errorf("%w: proxy_arp on %s: %v", cnierr.ErrDatapath, hostVeth, err)
	}
	for _, ipc := range res.IPs {
		dst := ipc.Address
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: &dst}); err != nil {
			return fmt.Errorf("%w: route to %s via %s: %v", cnierr.ErrDatapath, dst.String(), hostVeth, err)
		}
	}
	return nil
}

func (routedLinks) Check(r bridge.LinkRequest, prev *current.Result) error {
	link, err := netlinksafe.LinkByName(r.HostVeth)
	if err != nil {
		return fmt.Errorf("%w: host veth %s: %v", cnierr.ErrCheckFailed, r.HostVeth, err)
	}
	routes, err := netlinksafe.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("%w: routes of %s: %v", cnierr.ErrDatapath, r.HostVeth, err)
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
	return r.Netns.Do(func(ns.NetNS) error { return bridge.CheckContainerSide(r.IfName, prev) })
}
