// Package vxlan connects nodes through a VXLAN overlay, the way flannel's
// vxlan backend does, with static state only (no learning, no multicast):
//
//	VTEP  berth.<vni>  local <node IP>, dev <underlay>, learning off, udpcsum,
//	                   MTU = underlay MTU - 50, address <own subnet>.0/32
//	per peer:
//	  neighbour  <peer subnet>.0 lladdr <peer VTEP MAC> dev berth.<vni> permanent
//	  fdb        <peer VTEP MAC> dst <peer node IP> dev berth.<vni> self permanent
//	  route      <peer subnet> via <peer subnet>.0 dev berth.<vni> onlink proto 73
//	per family of the network:
//	  route      unreachable <network CIDR> proto 73 (backend.UnreachableRoutes)
//
// With directRouting a peer on the same L2 segment gets a host-gw route
// (<peer subnet> via <peer node IP> dev <underlay>) instead.
//
// IPv6: a node has one VTEP, and it carries the containers of both
// families (VXLAN carries Ethernet frames, whatever is inside them): a
// dual-stack network's IPv6 subnets get the same neighbour and route as
// the IPv4 ones (<peer subnet>:: as the next hop, <own subnet>::/128 on
// the VTEP). The VTEP runs over the IPv4 underlay, or over the IPv6
// underlay when the node's first address is IPv6 (an IPv6-only
// underlay, or --node-ip with the IPv6 address first); it is then
// berth6.<vni> (local <node IPv6>, MTU = underlay MTU - 70: the outer
// IPv6 header is 20 bytes longer) and its MAC goes into the lease as
// vtepMACv6. The kernel takes FDB entries of one family per VTEP, so
// every node of a network must use the same underlay family; a peer
// using the other one is reported. flannel instead runs a second VTEP
// for IPv6 containers over the IPv6 underlay, which needs an IPv6
// underlay for IPv6 containers and keeps two sets of state per peer.
package vxlan

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/internal/linkinfo"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// Backend is the vxlan backend.
type Backend struct {
	Log *slog.Logger
}

type network struct {
	node   backend.Node
	v6     bool       // the VTEP runs over the IPv6 underlay
	local  netip.Addr // the node address it sends from
	name   string     // VTEP name
	other  string     // the VTEP name over the other underlay family, removed if found
	mac    cluster.MAC
	mtu    int // VTEP MTU
	podMTU int
	log    *slog.Logger
	vtep   atomic.Int32 // VTEP link index, updated by Ensure
}

// VTEPName is the VTEP of a VNI over an IPv4 underlay.
func VTEPName(vni int) string { return fmt.Sprintf("berth.%d", vni) }

// VTEPNameV6 is the VTEP of a VNI over an IPv6 underlay.
func VTEPNameV6(vni int) string { return fmt.Sprintf("berth6.%d", vni) }

// Register checks that the network fits the node and plans its VTEP; it
// changes nothing in the kernel. Ensure creates the VTEP (or keeps a
// matching existing one), which netd does while it leases its subnet:
// what the lease publishes (the VTEP's MAC, derived from the node's
// name; the VNI) does not depend on the device.
func (b *Backend) Register(ctx context.Context, node backend.Node) (backend.Network, error) {
	n := node.Network
	v6 := node.PreferIPv6 || !node.IP.IsValid()
	local := node.Addr(v6)
	if !local.IsValid() {
		return nil, fmt.Errorf("network %s: the node has no underlay address for VXLAN; give --node-ip", n.Name)
	}
	underMTU := node.Link.Attrs().MTU
	overhead, family := conf.VXLANOverhead, "IPv4"
	if v6 {
		overhead, family = conf.VXLANOverheadV6, "IPv6"
	}
	vtepMTU := underMTU - overhead
	podMTU := vtepMTU
	if n.MTU != 0 {
		if n.MTU > vtepMTU {
			return nil, fmt.Errorf("network %s: mtu %d does not fit in VXLAN over %s %s (MTU %d): at most %d",
				n.Name, n.MTU, family, node.Link.Attrs().Name, underMTU, vtepMTU)
		}
		podMTU = n.MTU
	}
	if n.CIDRv6.IsValid() && podMTU < conf.MinMTUv6 {
		return nil, fmt.Errorf("network %s: container MTU %d (VXLAN over %s %s, MTU %d) is below IPv6's minimum of %d; raise the underlay's MTU",
			n.Name, podMTU, family, node.Link.Attrs().Name, underMTU, conf.MinMTUv6)
	}
	nw := &network{
		node:   node,
		v6:     v6,
		local:  local,
		name:   VTEPName(n.VNI),
		other:  VTEPNameV6(n.VNI),
		mac:    stableMAC(node.Name, n.VNI),
		mtu:    vtepMTU,
		podMTU: podMTU,
		log:    b.Log,
	}
	if v6 {
		nw.name, nw.other = nw.other, nw.name
	}
	if nw.log == nil {
		nw.log = slog.Default()
	}
	return nw, nil
}

// stableMAC derives the VTEP's MAC from the node name and VNI, so that a
// VTEP re-created after a reboot or by hand keeps it and the peers'
// neighbour and FDB entries stay valid.
func stableMAC(node string, vni int) cluster.MAC {
	sum := sha256.Sum256(fmt.Appendf(nil, "berth-vtep/%s/%d", node, vni))
	mac := cluster.MAC(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02 // unicast, locally administered
	return mac
}

func (nw *network) Publish(self *cluster.Lease) {
	if nw.v6 {
		self.VTEPMACv6 = nw.mac
	} else {
		self.VTEPMAC = nw.mac
	}
	self.VNI = nw.node.Network.VNI
}

func (nw *network) MTU() int { return nw.podMTU }

// Ensure creates the VTEP if missing (after Register, and when it was
// deleted by hand), re-creates it if its VXLAN settings
// differ (VNI, local address, port or underlay device can only be set at
// creation), and fixes MTU, MAC and up state in place. A VTEP of the
// network over the other underlay family (the node's first address
// changed family) is removed.
func (nw *network) Ensure(ctx context.Context) error {
	if old, err := netlink.LinkByName(nw.other); err == nil {
		nw.log.Warn("removing the VTEP over the other underlay family", "vtep", nw.other, "now", nw.name)
		if err := netlink.LinkDel(old); err != nil {
			return fmt.Errorf("deleting VTEP %s: %w", nw.other, err)
		}
	}
	want := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: nw.name, MTU: nw.mtu, HardwareAddr: nw.mac.HardwareAddr()},
		VxlanId:      nw.node.Network.VNI,
		VtepDevIndex: nw.node.Link.Attrs().Index,
		SrcAddr:      nw.local.AsSlice(),
		Port:         nw.node.Network.Port,
		Learning:     false,
		// Outer UDP checksums, which the kernel computes unless told
		// otherwise, and every VTEP netd made so far does. Said, so that
		// mismatch can compare: a VTEP without them is re-created.
		UDPCSum: true,
	}
	link, err := netlink.LinkByName(nw.name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		link, err = nw.create(want)
	case err != nil:
		return fmt.Errorf("looking up VTEP %s: %w", nw.name, err)
	default:
		var extra vtepExtra
		if extra, err = readExtra(link.Attrs().Index); err != nil {
			return fmt.Errorf("reading VTEP %s: %w", nw.name, err)
		}
		if why := mismatch(link, extra, want); why != "" {
			nw.log.Warn("re-creating VTEP with other settings", "vtep", nw.name, "why", why)
			if err := netlink.LinkDel(link); err != nil {
				return fmt.Errorf("deleting VTEP %s (%s): %w", nw.name, why, err)
			}
			link, err = nw.create(want)
		}
	}
	if err != nil {
		return err
	}
	a := link.Attrs()
	if a.MTU != nw.mtu {
		if err := netlink.LinkSetMTU(link, nw.mtu); err != nil {
			return fmt.Errorf("setting MTU %d on %s: %w", nw.mtu, nw.name, err)
		}
	}
	if a.HardwareAddr.String() != nw.mac.String() {
		if err := netlink.LinkSetHardwareAddr(link, nw.mac.HardwareAddr()); err != nil {
			return fmt.Errorf("setting MAC %s on %s: %w", nw.mac, nw.name, err)
		}
	}
	if a.Flags&net.FlagUp == 0 {
		// Onlink routes through a down link are refused (ENETDOWN).
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("setting %s up: %w", nw.name, err)
		}
	}
	nw.vtep.Store(int32(a.Index))
	return nil
}

func (nw *network) create(want *netlink.Vxlan) (netlink.Link, error) {
	if err := netlink.LinkAdd(want); err != nil {
		return nil, fmt.Errorf("creating VTEP %s (vni %d, local %s, dev %s, port %d): %w",
			nw.name, want.VxlanId, nw.local, nw.node.Link.Attrs().Name, want.Port, err)
	}
	nw.log.Info("created VTEP", "vtep", nw.name, "vni", want.VxlanId, "mac", nw.mac.String(), "mtu", nw.mtu)
	link, err := netlink.LinkByName(nw.name)
	if err != nil {
		return nil, fmt.Errorf("looking up new VTEP %s: %w", nw.name, err)
	}
	return link, nil
}

// mismatch says why an existing link cannot serve as the VTEP, or "".
// Besides what only creation sets, that is every setting that makes the
// VTEP's packets differ from those of a VTEP netd creates, which the
// eBPF datapath's programs emit as the VTEP's own (internal/fastpath,
// encap): outer TTL from the route (ttl 0: 64 unless the node's
// ip_default_ttl says otherwise; the programs write 64), DSCP 0 with the
// inner packet's ECN (tos 0), DF clear (df unset), a source port from
// the flow's hash over the node's local port range (srcport 0 0; the
// programs use the default range, 32768-60999), the plain VXLAN header
// (no GBP, GPE, remote checksum offload, nor external mode), and outer
// UDP checksums on (udpcsum). A VTEP made by hand or by another tool
// with one of them otherwise would send and accept other packets than
// the programs beside it; re-created, it is what netd wants. extra
// holds what netlink.Vxlan does not parse (readExtra).
//
// The UDP checksum is the one difference left between the VTEP and the
// programs: the VTEP computes one (the kernel's default for a VTEP made
// without IFLA_VXLAN_UDP_CSUM, as every netd so far made them), the
// programs send 0 ("none", which every IPv4 receiver takes) because
// bpf_skb_adjust_room cannot give an encapsulated GSO packet a
// checksummed tunnel type. Wanting VTEPs without checksums instead
// would re-create every existing one at the upgrade.
func mismatch(link netlink.Link, extra vtepExtra, want *netlink.Vxlan) string {
	v, ok := link.(*netlink.Vxlan)
	switch {
	case !ok:
		return fmt.Sprintf("%s is a %s link, not vxlan", want.Name, link.Type())
	case v.VxlanId != want.VxlanId:
		return fmt.Sprintf("vni %d, want %d", v.VxlanId, want.VxlanId)
	case !v.SrcAddr.Equal(want.SrcAddr):
		return fmt.Sprintf("local %s, want %s", v.SrcAddr, want.SrcAddr)
	case v.Port != want.Port:
		return fmt.Sprintf("port %d, want %d", v.Port, want.Port)
	case v.VtepDevIndex != want.VtepDevIndex:
		return fmt.Sprintf("underlay link %d, want %d", v.VtepDevIndex, want.VtepDevIndex)
	case v.Learning:
		return "learning on"
	case v.UDPCSum != want.UDPCSum:
		return fmt.Sprintf("udpcsum %v, want %v", v.UDPCSum, want.UDPCSum)
	case v.TTL != want.TTL:
		return fmt.Sprintf("ttl %d, want %d", v.TTL, want.TTL)
	case extra.TTLInherit:
		return "ttl inherit, want the route's"
	case v.TOS != want.TOS:
		return fmt.Sprintf("tos %#x, want %#x", v.TOS, want.TOS)
	case extra.DF != dfUnset:
		return fmt.Sprintf("df %s, want unset (DF clear)", extra.DF)
	case v.PortLow != want.PortLow || v.PortHigh != want.PortHigh:
		return fmt.Sprintf("srcport %d %d, want %d %d", v.PortLow, v.PortHigh, want.PortLow, want.PortHigh)
	case v.GBP:
		return "gbp on"
	case extra.GPE:
		return "gpe on"
	case extra.RemCsumTx || extra.RemCsumRx:
		return "remote checksum offload on"
	case v.FlowBased:
		return "external (collect metadata) on"
	}
	return ""
}

// vtepExtra is what of a VXLAN link's settings netlink.Vxlan leaves out.
type vtepExtra struct {
	DF                   df
	TTLInherit           bool
	GPE                  bool
	RemCsumTx, RemCsumRx bool
}

// df is IFLA_VXLAN_DF: what the VTEP does with the outer header's DF bit.
type df uint8

const (
	dfUnset   df = iota // clear (IPv4)
	dfSet               // set
	dfInherit           // copied from the inner IPv4 header
)

func (d df) String() string {
	switch d {
	case dfUnset:
		return "unset"
	case dfSet:
		return "set"
	case dfInherit:
		return "inherit"
	}
	return strconv.Itoa(int(d))
}

// The kernel's IFLA_VXLAN_* numbers that vishvananda/netlink does not
// name (include/uapi/linux/if_link.h).
const (
	iflaVXLANGPE        = 27
	iflaVXLANTTLInherit = 28
	iflaVXLANDF         = 29
)

// readExtra reads what netlink.Vxlan leaves out of link idx's settings,
// from the kernel's own description of it (RTM_GETLINK).
func readExtra(idx int) (vtepExtra, error) {
	var x vtepExtra
	data, err := linkinfo.Data(idx)
	if err != nil {
		return x, err
	}
	for typ, v := range data {
		set := len(v) > 0 && v[0] != 0
		switch typ {
		case iflaVXLANDF:
			if len(v) > 0 {
				x.DF = df(v[0])
			}
		case iflaVXLANTTLInherit:
			x.TTLInherit = set
		case iflaVXLANGPE: // a flag: present when on
			x.GPE = true
		case nl.IFLA_VXLAN_REMCSUM_TX:
			x.RemCsumTx = set
		case nl.IFLA_VXLAN_REMCSUM_RX:
			x.RemCsumRx = set
		}
	}
	return x, nil
}

func (nw *network) Owned() backend.Owned {
	return backend.Owned{CIDRs: nw.node.Network.CIDRs(), Links: []int{int(nw.vtep.Load())}}
}

// Tunnel is the VTEP over an IPv4 underlay; the eBPF datapath does not
// encapsulate over IPv6.
func (nw *network) Tunnel() (backend.Tunnel, bool) {
	vtep := int(nw.vtep.Load())
	if nw.v6 || vtep <= 0 {
		return backend.Tunnel{}, false
	}
	return backend.Tunnel{VTEP: vtep, Underlay: nw.node.Link.Attrs().Index, Local: nw.local, VNI: nw.node.Network.VNI,
		Port: nw.node.Network.Port, MAC: nw.mac}, true
}

// Guard keeps the node's containers out of its VTEP and its peers'
// (firewall.VTEPGuard): the VTEP's port (the peers' VTEPs share it),
// unless it arrives on the underlay link or from a peer's address of the
// VTEP's family, which its VTEP sends from (the FDB entries' dst). Every
// peer with such an address is let in, even one connect gives a direct
// route: its own view of the segment may differ, and it may send VXLAN.
func (nw *network) Guard(in backend.Input) firewall.VTEPGuard {
	g := firewall.VTEPGuard{Network: nw.node.Network.Name, Port: nw.node.Network.Port, Underlay: nw.node.Link.Attrs().Name}
	for _, p := range in.Peers {
		if a := p.NodeAddr(nw.v6); a.IsValid() {
			g.Peers = append(g.Peers, a)
		}
	}
	return g
}

func (nw *network) Desired(in backend.Input) (backend.State, []backend.Problem) {
	s := backend.State{Routes: backend.UnreachableRoutes(nw.node.Network.CIDRs())}
	var problems []backend.Problem
	vtep := int(nw.vtep.Load())
	for _, self := range in.Self.Subnets() {
		a := self.Masked().Addr()
		s.Addrs = append(s.Addrs, netlink.Addr{IPNet: backend.IPNet(netip.PrefixFrom(a, a.BitLen())), LinkIndex: vtep})
	}
	for _, p := range in.Peers {
		if err := nw.connect(p, in.Underlay, vtep, &s); err != nil {
			problems = append(problems, backend.Problem{Peer: p.NodeName, Err: err})
		}
	}
	return s, problems
}

// connect adds to s what reaches peer p's subnets: a host-gw route for
// a subnet whose family's node address is on this node's segment (with
// directRouting), the VTEP's neighbour and route for the others, and
// the FDB entry that sends their frames to p.
func (nw *network) connect(p cluster.Lease, underlay func(netip.Addr) (backend.Path, error), vtep int, s *backend.State) error {
	var overlay []netip.Prefix
	var direct []netlink.Route
	for _, subnet := range p.Subnets() {
		if ip := p.NodeAddr(subnet.Addr().Is6()); nw.node.Network.Direct() && ip.IsValid() {
			path, err := underlay(ip)
			if err != nil {
				return err
			}
			if path.Direct {
				direct = append(direct, netlink.Route{Dst: backend.IPNet(subnet), Gw: ip.AsSlice(), LinkIndex: nw.node.Link.Attrs().Index})
				continue
			}
		}
		overlay = append(overlay, subnet)
	}
	if len(overlay) > 0 {
		mac, dst := p.VTEPMAC, p.NodeIP
		ours, theirs := "IPv4", "IPv6"
		if nw.v6 {
			mac, dst = p.VTEPMACv6, p.NodeIPv6
			ours, theirs = theirs, ours
		}
		switch {
		case mac.IsZero() && !p.VTEPMAC.IsZero() || mac.IsZero() && !p.VTEPMACv6.IsZero():
			return fmt.Errorf("its VTEP runs over the %s underlay, this node's over %s: every node of the network must list the same address family first in --node-ip (or have the same underlay)", theirs, ours)
		case mac.IsZero():
			return fmt.Errorf("its lease has no VTEP MAC (is it running netd in vxlan mode?)")
		case !dst.IsValid():
			return fmt.Errorf("its lease has no %s node address for this node's VTEP to send to", ours)
		}
		s.FDB = append(s.FDB, netlink.Neigh{LinkIndex: vtep, IP: dst.AsSlice(), HardwareAddr: mac.HardwareAddr()})
		for _, subnet := range overlay {
			gw := subnet.Masked().Addr()
			s.Neighs = append(s.Neighs, netlink.Neigh{LinkIndex: vtep, IP: gw.AsSlice(), HardwareAddr: mac.HardwareAddr()})
			s.Routes = append(s.Routes, netlink.Route{
				Dst: backend.IPNet(subnet), Gw: gw.AsSlice(), LinkIndex: vtep, Flags: int(netlink.FLAG_ONLINK),
			})
		}
	}
	s.Routes = append(s.Routes, direct...)
	return nil
}

// Teardown deletes the VTEP (over either underlay family), which takes
// its neighbours, FDB entries and routes with it, the direct routes, and
// the VTEP guard.
func (b *Backend) Teardown(ctx context.Context, node backend.Node) error {
	var errs []error
	for _, name := range []string{VTEPName(node.Network.VNI), VTEPNameV6(node.Network.VNI)} {
		if link, err := netlink.LinkByName(name); err == nil {
			if err := netlink.LinkDel(link); err != nil {
				errs = append(errs, fmt.Errorf("deleting VTEP %s: %w", name, err))
			}
		}
	}
	if len(errs) == 0 { // no VTEP left to guard
		errs = append(errs, firewall.RemoveVTEPGuard(node.Network.Name))
	}
	return errors.Join(append(errs, backend.RemoveRoutes(node.Network.CIDRs()))...)
}
