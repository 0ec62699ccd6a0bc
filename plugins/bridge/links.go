package bridge

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/nodebridge"
)

// Links is what differs between berth's datapaths: how a container's
// interface is plugged into the node. The rest of an attachment's life
// (record, IPAM, host ports, iptables, teardown, GC) is shared and lives
// in this package; the bgp plugin brings its routed Links.
type Links interface {
	// Setup creates the veth pair named by r (the caller removes it on
	// failure), configures both sides and returns the CNI result.
	Setup(r LinkRequest) (*current.Result, error)
	// Check verifies both sides against the result of ADD.
	Check(r LinkRequest, prev *current.Result) error
	// Release runs once the network has no attachment left on the node:
	// it removes what Setup made for the whole network, so that nothing
	// blocks a new network from reusing its names or its subnet.
	Release(c *conf.Bridge) error
	// Ingress is where the containers' packets enter the node's IP stack,
	// as iptables -i takes it ("bv+" for every host veth): the firewall's
	// IPv6 anti-spoofing checks their source's reverse path there.
	Ingress(c *conf.Bridge) string
}

// LinkRequest is one container interface to plug in or check.
type LinkRequest struct {
	Conf     *conf.Bridge
	Netns    ns.NetNS
	IfName   string
	HostVeth string
	IPAM     *current.Result // addresses and routes from IPAM (Setup only)
}

// MTU is the container interface MTU: configured, else 1500.
func (r LinkRequest) MTU() int {
	if r.Conf.MTU != 0 {
		return r.Conf.MTU
	}
	return 1500
}

// bridgeLinks plugs containers into the network's bridge.
type bridgeLinks struct{}

func (bridgeLinks) Setup(r LinkRequest) (*current.Result, error) {
	c := r.Conf
	// Held until the veth is in and the gateway set: nodebridge.Release, which
	// takes the lock exclusively, never removes the bridge in between.
	br, lock, err := useBridge(c)
	if err != nil {
		return nil, err
	}
	defer lock.Release()
	hostIf, contIf, err := SetupVeth(VethSpec{Netns: r.Netns, IfName: r.IfName, HostName: r.HostVeth,
		MTU: r.MTU(), MAC: c.MAC, Hairpin: c.Hairpin(), Bridge: br})
	if err != nil {
		return nil, err
	}
	result := buildResult(r.IPAM, br, hostIf, contIf, r.Netns.Path(), c)
	if err := r.Netns.Do(func(ns.NetNS) error { return configureIface(r.IfName, result) }); err != nil {
		return nil, err
	}
	if c.Gateway() {
		if err := ensureGateway(c, br, gateways(result)); err != nil {
			return nil, err
		}
	}
	return result, EnableForwarding(c.BridgeName)
}

// Ingress is the bridge: routed packets from its ports (and, with
// br_netfilter, bridged ones too) show it as their input device.
func (bridgeLinks) Ingress(c *conf.Bridge) string { return c.BridgeName }

func (bridgeLinks) Release(c *conf.Bridge) error {
	_, err := nodebridge.Release(c.BridgeName, c.Name)
	return err
}

func (bridgeLinks) Check(r LinkRequest, prev *current.Result) error {
	if err := checkHostSide(r.Conf, r.HostVeth); err != nil {
		return err
	}
	return r.Netns.Do(func(ns.NetNS) error { return CheckContainerSide(r.IfName, prev) })
}

func buildResult(ipamRes *current.Result, br *netlink.Bridge, hostIf, contIf net.Interface, netnsPath string, c *conf.Bridge) *current.Result {
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: br.Name, Mac: br.HardwareAddr.String()},
			{Name: hostIf.Name, Mac: hostIf.HardwareAddr.String()},
			{Name: contIf.Name, Mac: contIf.HardwareAddr.String(), Sandbox: netnsPath},
		},
		Routes: ipamRes.Routes,
		DNS:    ipamRes.DNS,
	}
	for _, ipc := range ipamRes.IPs {
		ipc := *ipc
		ipc.Interface = current.Int(2)
		res.IPs = append(res.IPs, &ipc)
	}
	if c.IsDefaultGateway {
		for _, ipc := range res.IPs {
			if ipc.Gateway == nil || hasDefaultRoute(res.Routes, ipc.Gateway.To4() != nil) {
				continue
			}
			dst := net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
			if ipc.Gateway.To4() == nil {
				dst = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			}
			res.Routes = append(res.Routes, &types.Route{Dst: dst, GW: ipc.Gateway})
		}
	}
	return res
}

func hasDefaultRoute(routes []*types.Route, v4 bool) bool {
	for _, r := range routes {
		ones, _ := r.Dst.Mask.Size()
		if ones == 0 && (r.Dst.IP.To4() != nil) == v4 {
			return true
		}
	}
	return false
}

// configureIface runs inside the container namespace: the result's
// addresses, the link up, then its routes, as cniipam.ConfigureIface does
// it but without its 50 ms waits. The container's IPv6 addresses skip
// duplicate address detection, as with the reference bridge: they come
// from IPAM and nobody else holds them. They are added with IFA_F_NODAD,
// so they are usable at once, and accept_dad=0 covers the link-local
// address the kernel makes when the link comes up; that one is tentative
// only until the kernel's address work runs, a moment later. ADD still
// returns with no tentative address (settleIPv6), but looks again within a
// millisecond: ip.SettleAddresses sleeps 50 ms, and most dual-stack ADDs
// found the link-local tentative at their first look.
func configureIface(ifName string, res *current.Result) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("%w: finding %s in the container: %v", cnierr.ErrDatapath, ifName, err)
	}
	var v4gw, v6gw net.IP
	has6 := false
	for _, ipc := range res.IPs {
		if ipc.Interface == nil {
			continue
		}
		if i := *ipc.Interface; i < 0 || i >= len(res.Interfaces) || res.Interfaces[i].Name != ifName {
			return fmt.Errorf("%w: address %s is for interface %d, not %s", cnierr.ErrDatapath, ipc.Address.String(), i, ifName)
		}
		addr := &netlink.Addr{IPNet: &ipc.Address}
		if ipc.Address.IP.To4() == nil {
			if !has6 {
				if err := enableIPv6(ifName); err != nil {
					return err
				}
				has6 = true
			}
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("%w: adding %s to %s in the container: %v", cnierr.ErrDatapath, ipc.Address.String(), ifName, err)
		}
		switch {
		case ipc.Gateway == nil:
		case ipc.Gateway.To4() != nil && v4gw == nil:
			v4gw = ipc.Gateway
		case ipc.Gateway.To4() == nil && v6gw == nil:
			v6gw = ipc.Gateway
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("%w: bringing up %s in the container: %v", cnierr.ErrDatapath, ifName, err)
	}
	if has6 {
		if err := settleIPv6(link, 5*time.Second); err != nil {
			return err
		}
	}
	for _, r := range res.Routes {
		gw := r.GW
		if gw == nil {
			gw = v6gw
			if r.Dst.IP.To4() != nil {
				gw = v4gw
			}
		}
		route := netlink.Route{Dst: &r.Dst, LinkIndex: link.Attrs().Index, Gw: gw, Priority: r.Priority}
		if r.Table != nil {
			route.Table = *r.Table
		}
		if r.Scope != nil {
			route.Scope = netlink.Scope(*r.Scope)
		}
		if err := netlink.RouteAddEcmp(&route); err != nil {
			return fmt.Errorf("%w: adding route to %s via %s on %s in the container: %v", cnierr.ErrDatapath, r.Dst.String(), gw, ifName, err)
		}
	}
	return nil
}

// enableIPv6 prepares ifName (in the container) for IPv6 addresses: IPv6
// on, on it and on lo (a runtime may have turned it off), no DAD, and its
// addresses kept when it goes down.
func enableIPv6(ifName string) error {
	for _, s := range []struct{ key, value string }{
		{"net/ipv6/conf/lo/disable_ipv6", "0"},
		{"net/ipv6/conf/" + ifName + "/disable_ipv6", "0"},
		{"net/ipv6/conf/" + ifName + "/accept_dad", "0"},
		{"net/ipv6/conf/" + ifName + "/keep_addr_on_down", "1"},
	} {
		if v, err := sysctl.Sysctl(s.key); err == nil && v == s.value {
			continue
		}
		if _, err := sysctl.Sysctl(s.key, s.value); err != nil {
			return fmt.Errorf("%w: setting %s=%s in the container: %v", cnierr.ErrDatapath, s.key, s.value, err)
		}
	}
	return nil
}

// settleIPv6 waits until link has no tentative IPv6 address, looking
// again after 1, 2, 4 ... 50 ms, and fails on an address whose DAD failed.
// A link that is not up (no carrier) after timeout is left as it is.
func settleIPv6(link netlink.Link, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			return fmt.Errorf("%w: listing the addresses of %s in the container: %v", cnierr.ErrDatapath, link.Attrs().Name, err)
		}
		tentative := false
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_DADFAILED != 0 {
				return fmt.Errorf("%w: %s in the container: duplicate address detection failed for %s", cnierr.ErrDatapath, link.Attrs().Name, a.IP)
			}
			tentative = tentative || a.Flags&unix.IFA_F_TENTATIVE != 0
		}
		if !tentative {
			return nil
		}
		if time.Now().After(deadline) {
			if l, err := netlinksafe.LinkByName(link.Attrs().Name); err == nil && l.Attrs().OperState != netlink.OperUp {
				return nil
			}
			return fmt.Errorf("%w: %s in the container still has tentative addresses after %s", cnierr.ErrDatapath, link.Attrs().Name, timeout)
		}
		time.Sleep(wait)
	}
}

// gateways are the addresses the bridge answers on, with their prefix.
func gateways(res *current.Result) []netip.Prefix {
	var out []netip.Prefix
	for _, ipc := range res.IPs {
		gw, ok := netip.AddrFromSlice(ipc.Gateway)
		if !ok {
			continue
		}
		ones, _ := ipc.Address.Mask.Size()
		out = append(out, netip.PrefixFrom(gw.Unmap(), ones))
	}
	return out
}
