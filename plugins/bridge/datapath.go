// Package bridge is berth's bridge datapath: a Linux bridge per network
// and a veth pair per container plugged into it. berth-bridge uses it with
// addresses from its ipam config; berth-vxlan and berth-hostgw with the
// node's leased subnet. The rest of an attachment's life is
// plugins/attach's.
package bridge

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

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
	"github.com/berthnet/berth/internal/netnsdir"
	"github.com/berthnet/berth/internal/nodebridge"
	"github.com/berthnet/berth/internal/srcguard"
	"github.com/berthnet/berth/plugins/attach"
)

// Load parses a berth-bridge config: the shared fields and the ipam object.
func Load(args *skel.CmdArgs) (*conf.Bridge, error) {
	c, err := conf.ParseBridge(args.StdinData, args.Args)
	if err != nil {
		return nil, err
	}
	if err := c.ParseIPAMFor(args.StdinData, args.Args); err != nil {
		return nil, err
	}
	return c, nil
}

// Datapath plugs containers into the network's bridge: berth-bridge,
// berth-vxlan and berth-hostgw.
var Datapath = attach.Datapath{Links: bridgeLinks{}}

// bridgeLinks plugs containers into the network's bridge.
type bridgeLinks struct{}

func (bridgeLinks) Setup(r attach.LinkRequest) (*current.Result, error) {
	c := r.Conf
	// Held until the veth is in and the gateway set: nodebridge.Release, which
	// takes the lock exclusively, never removes the bridge in between.
	br, lock, err := useBridge(c)
	if err != nil {
		return nil, err
	}
	defer lock.Release()
	hostIf, contIf, err := attach.SetupVeth(attach.VethSpec{Netns: r.Netns, IfName: r.IfName, HostName: r.HostVeth,
		MTU: r.MTU(), MAC: c.MAC, Hairpin: c.Hairpin(), Bridge: br, Guard: r.Guard})
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
	return result, attach.EnableForwarding(c.BridgeName)
}

// Ingress is the bridge: routed packets from its ports (and, with
// br_netfilter, bridged ones too) show it as their input device.
func (bridgeLinks) Ingress(c *conf.Bridge) string { return c.BridgeName }

// ClaimName makes c's bridge the node's one bridge of network c.Name, or
// refuses (error 7) when another bridge has the name already. ADD asks
// before its addresses and rules: berth keeps a network's iptables
// chains, attachment state, addresses and eBPF maps by name, so a second
// network under the name would overwrite the first's rules and, on the
// eBPF datapath, share its endpoints (past the isolation between
// networks). A bridge marked as c's already has passed this check. It
// returns holding the bridge's lock shared, until unclaim: a last DEL or
// GC of the network (Release) must not remove the bridge while the ADD
// takes its address, or the ADD's Setup would have to claim the name
// again, with its rules on the way.
func (bridgeLinks) ClaimName(c *conf.Bridge) (unclaim func(), err error) {
	for {
		lock, err := nodebridge.Lock(c.BridgeName, true)
		if err != nil {
			return nil, err
		}
		if br, err := bridgeByName(c.BridgeName); err == nil {
			if owner, _ := nodebridge.Owner(br.Attrs().Alias); owner == c.Name {
				return lock.Release, nil
			}
		}
		lock.Release()
		// Marking is decided alone; then the shared lock again, under
		// which a Release that came in between is seen.
		if lock, err = nodebridge.Lock(c.BridgeName, false); err != nil {
			return nil, err
		}
		_, err = markBridge(c, lock.Dir)
		lock.Release()
		if err != nil {
			return nil, err
		}
	}
}

// NameSharedWith lists the other bridges marked as network c.Name's on
// the node: networks of the same name made by a berth that did not
// refuse them. What is the network's as a whole (its rules, eBPF maps,
// addresses) is theirs too while they are there.
func (bridgeLinks) NameSharedWith(c *conf.Bridge) ([]attach.SharedName, error) {
	others, err := nodebridge.Others(c.BridgeName, c.Name)
	out := make([]attach.SharedName, 0, len(others))
	for _, o := range others {
		out = append(out, attach.SharedName{Bridge: o.Name, InUse: o.InUse})
	}
	return out, err
}

// LockName holds off ClaimName for c's name (GC's sweep, see attach).
func (bridgeLinks) LockName(c *conf.Bridge) (func(), error) {
	lock, err := nodebridge.NameLock(c.Name)
	if err != nil {
		return nil, err
	}
	return lock.Release, nil
}

// refuseSharedName fails when another bridge than c's is marked as
// network c.Name's. The caller holds nodebridge.NameLock.
func refuseSharedName(c *conf.Bridge) error {
	others, err := nodebridge.Others(c.BridgeName, c.Name)
	if err != nil || len(others) == 0 {
		return err
	}
	var gws []string
	if l, err := netlinksafe.LinkByName(others[0].Name); err == nil {
		if addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL); err == nil {
			for _, a := range addrs {
				if a.IP.IsGlobalUnicast() {
					gws = append(gws, a.IPNet.String())
				}
			}
		}
	}
	of := ""
	if len(gws) > 0 {
		of = " (gateway " + strings.Join(gws, ", ") + ")"
	}
	gone := ""
	if !others[0].InUse {
		gone = fmt.Sprintf(" (if that network is gone: nothing is plugged into %s, remove it with ip link del %s)", others[0].Name, others[0].Name)
	}
	return fmt.Errorf("%w: name: network name %q is already used on this node by bridge %q%s, and this config's \"bridge\" is %q; CNI network names must be unique on a node (berth keeps a network's rules, state, addresses and eBPF maps by name): give one of the two configs another \"name\"%s",
		cnierr.ErrInvalidConfig, c.Name, others[0].Name, of, c.BridgeName, gone)
}

func (bridgeLinks) Release(c *conf.Bridge) error {
	_, err := nodebridge.Release(c.BridgeName, c.Name)
	return err
}

func (bridgeLinks) Check(r attach.LinkRequest, prev *current.Result) error {
	if err := checkHostSide(r.Conf, r.HostVeth); err != nil {
		return err
	}
	return r.Netns.Do(func(ns.NetNS) error { return attach.CheckContainerSide(r.IfName, prev) })
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
// addresses, the link up, then its routes, as the reference plugins'
// ipam.ConfigureIface does it but without its 50 ms waits. The container's IPv6 addresses skip
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
// on, on it and on lo (a runtime may have turned it off), no DAD, its
// addresses kept when it goes down, and no router advertisements taken
// (its routes are IPAM's; a neighbour's would be forged: the source
// guard drops them, on the iptables datapath).
func enableIPv6(ifName string) error {
	for _, s := range []struct{ key, value string }{
		{"net/ipv6/conf/lo/disable_ipv6", "0"},
		{"net/ipv6/conf/" + ifName + "/disable_ipv6", "0"},
		{"net/ipv6/conf/" + ifName + "/accept_dad", "0"},
		{"net/ipv6/conf/" + ifName + "/keep_addr_on_down", "1"},
		{"net/ipv6/conf/" + ifName + "/accept_ra", "0"},
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

// useBridge returns the network's bridge, up and learning no MACs from
// link-local frames (srcguard.NoLinkLocalLearning), creating or adopting
// it when needed, and the bridge lock the caller releases once its veth
// is in.
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
		if br, err = markBridge(c, lock.Dir); err != nil {
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
	if err := srcguard.NoLinkLocalLearning(br.Index); err != nil {
		lock.Release()
		return nil, nil, fmt.Errorf("%w: %v", cnierr.ErrDatapath, err)
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
// lock exclusively, in dir.
func markBridge(c *conf.Bridge, dir string) (*netlink.Bridge, error) {
	// Under the name's lock from the check to the mark: two first ADDs of
	// two networks of one name at once would each find no other bridge.
	nameLock, err := nodebridge.NameLock(c.Name)
	if err != nil {
		return nil, err
	}
	defer nameLock.Release()
	if err := refuseSharedName(c); err != nil {
		return nil, err
	}
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
		if err := nodebridge.Creating(dir, c.BridgeName, la.HardwareAddr); err != nil {
			return nil, err
		}
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
	if nodebridge.MadeByBerth(dir, br) {
		alias = nodebridge.Mark(c.Name, false) // an ADD killed before marking it created it
	}
	if err := netlink.LinkSetAlias(br, alias); err != nil {
		return nil, fmt.Errorf("%w: labelling bridge %s: %v", cnierr.ErrDatapath, c.BridgeName, err)
	}
	nodebridge.Marked(dir, c.BridgeName)
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

func checkHostSide(c *conf.Bridge, hostVeth string) error {
	br, err := bridgeByName(c.BridgeName)
	if err != nil {
		return fmt.Errorf("%w: bridge %s: %v", cnierr.ErrCheckFailed, c.BridgeName, err)
	}
	l, err := netlinksafe.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("%w: host veth %s: %v", cnierr.ErrCheckFailed, hostVeth, err)
	}
	if l.Attrs().MasterIndex != br.Index {
		return fmt.Errorf("%w: host veth %s is not attached to bridge %s", cnierr.ErrCheckFailed, hostVeth, c.BridgeName)
	}
	if l.Attrs().OperState == netlink.OperDown {
		return fmt.Errorf("%w: host veth %s is down", cnierr.ErrCheckFailed, hostVeth)
	}
	return nil
}
