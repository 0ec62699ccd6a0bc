package attach

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	cniipam "github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"

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

// configureIface runs inside the container namespace. The container's
// IPv6 addresses skip duplicate address detection, as with the reference
// bridge: they come from IPAM, nobody else holds them, and waiting for
// DAD would make ADD take a second or two (ConfigureIface waits until no
// address is tentative).
func configureIface(ifName string, res *current.Result) error {
	for _, ipc := range res.IPs {
		if ipc.Address.IP.To4() == nil {
			if _, err := sysctl.Sysctl("net/ipv6/conf/"+ifName+"/accept_dad", "0"); err != nil {
				return fmt.Errorf("%w: turning off DAD on %s in the container: %v", cnierr.ErrDatapath, ifName, err)
			}
			break
		}
	}
	if err := cniipam.ConfigureIface(ifName, res); err != nil {
		return fmt.Errorf("%w: configuring %s in the container: %v", cnierr.ErrDatapath, ifName, err)
	}
	return nil
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
