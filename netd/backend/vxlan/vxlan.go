// Package vxlan connects nodes through a VXLAN overlay, the way flannel's
// vxlan backend does, with static state only (no learning, no multicast):
//
//	VTEP  berth.<vni>  local <node IP>, dev <underlay>, learning off,
//	                   MTU = underlay MTU - 50, address <own subnet>.0/32
//	per peer:
//	  neighbour  <peer subnet>.0 lladdr <peer VTEP MAC> dev berth.<vni> permanent
//	  fdb        <peer VTEP MAC> dst <peer node IP> dev berth.<vni> self permanent
//	  route      <peer subnet> via <peer subnet>.0 dev berth.<vni> onlink proto 73
//
// With directRouting a peer on the same L2 segment gets a host-gw route
// (<peer subnet> via <peer node IP> dev <underlay>) instead.
package vxlan

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// Backend is the vxlan backend.
type Backend struct {
	Log *slog.Logger
}

type network struct {
	node   backend.Node
	name   string // VTEP name
	mac    cluster.MAC
	mtu    int // VTEP MTU
	podMTU int
	log    *slog.Logger
	vtep   atomic.Int32 // VTEP link index, updated by Ensure
}

// VTEPName is the VTEP of a VNI.
func VTEPName(vni int) string { return fmt.Sprintf("berth.%d", vni) }

// Register creates the VTEP or keeps a matching existing one.
func (b *Backend) Register(ctx context.Context, node backend.Node) (backend.Network, error) {
	n := node.Network
	underMTU := node.Link.Attrs().MTU
	vtepMTU := underMTU - conf.VXLANOverhead
	podMTU := vtepMTU
	if n.MTU != 0 {
		if n.MTU > vtepMTU {
			return nil, fmt.Errorf("network %s: mtu %d does not fit in VXLAN over %s (MTU %d): at most %d",
				n.Name, n.MTU, node.Link.Attrs().Name, underMTU, vtepMTU)
		}
		podMTU = n.MTU
	}
	nw := &network{
		node:   node,
		name:   VTEPName(n.VNI),
		mac:    stableMAC(node.Name, n.VNI),
		mtu:    vtepMTU,
		podMTU: podMTU,
		log:    b.Log,
	}
	if nw.log == nil {
		nw.log = slog.Default()
	}
	if err := nw.Ensure(ctx); err != nil {
		return nil, err
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
	self.VTEPMAC, self.VNI = nw.mac, nw.node.Network.VNI
}

func (nw *network) MTU() int { return nw.podMTU }

// Ensure creates the VTEP if missing, re-creates it if its VXLAN settings
// differ (VNI, local address, port or underlay device can only be set at
// creation), and fixes MTU, MAC and up state in place.
func (nw *network) Ensure(ctx context.Context) error {
	want := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: nw.name, MTU: nw.mtu, HardwareAddr: nw.mac.HardwareAddr()},
		VxlanId:      nw.node.Network.VNI,
		VtepDevIndex: nw.node.Link.Attrs().Index,
		SrcAddr:      nw.node.IP.AsSlice(),
		Port:         nw.node.Network.Port,
		Learning:     false,
	}
	link, err := netlink.LinkByName(nw.name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		link, err = nw.create(want)
	case err != nil:
		return fmt.Errorf("looking up VTEP %s: %w", nw.name, err)
	default:
		if why := mismatch(link, want); why != "" {
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
			nw.name, want.VxlanId, nw.node.IP, nw.node.Link.Attrs().Name, want.Port, err)
	}
	nw.log.Info("created VTEP", "vtep", nw.name, "vni", want.VxlanId, "mac", nw.mac.String(), "mtu", nw.mtu)
	link, err := netlink.LinkByName(nw.name)
	if err != nil {
		return nil, fmt.Errorf("looking up new VTEP %s: %w", nw.name, err)
	}
	return link, nil
}

// mismatch says why an existing link cannot serve as the VTEP, or "".
func mismatch(link netlink.Link, want *netlink.Vxlan) string {
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
	}
	return ""
}

func (nw *network) Owned() backend.Owned {
	return backend.Owned{CIDR: nw.node.Network.CIDR, Links: []int{int(nw.vtep.Load())}}
}

func (nw *network) Desired(in backend.Input) (backend.State, []backend.Problem) {
	var s backend.State
	var problems []backend.Problem
	vtep := int(nw.vtep.Load())
	if self := in.Self.Subnet; self.IsValid() {
		s.Addrs = append(s.Addrs, netlink.Addr{IPNet: backend.IPNet(netip.PrefixFrom(self.Masked().Addr(), 32)), LinkIndex: vtep})
	}
	for _, p := range in.Peers {
		if nw.node.Network.Direct() {
			path, err := in.Underlay(p.NodeIP)
			if err != nil {
				problems = append(problems, backend.Problem{Peer: p.NodeName, Err: err})
				continue
			}
			if path.Direct {
				s.Routes = append(s.Routes, netlink.Route{
					Dst: backend.IPNet(p.Subnet), Gw: p.NodeIP.AsSlice(), LinkIndex: nw.node.Link.Attrs().Index,
				})
				continue
			}
		}
		if p.VTEPMAC.IsZero() {
			problems = append(problems, backend.Problem{Peer: p.NodeName, Err: fmt.Errorf("its lease has no VTEP MAC (is it running netd in vxlan mode?)")})
			continue
		}
		gw := p.Subnet.Masked().Addr()
		s.Neighs = append(s.Neighs, netlink.Neigh{LinkIndex: vtep, IP: gw.AsSlice(), HardwareAddr: p.VTEPMAC.HardwareAddr()})
		s.FDB = append(s.FDB, netlink.Neigh{LinkIndex: vtep, IP: p.NodeIP.AsSlice(), HardwareAddr: p.VTEPMAC.HardwareAddr()})
		s.Routes = append(s.Routes, netlink.Route{
			Dst: backend.IPNet(p.Subnet), Gw: gw.AsSlice(), LinkIndex: vtep, Flags: int(netlink.FLAG_ONLINK),
		})
	}
	return s, problems
}

// Teardown deletes the VTEP, which takes its neighbours, FDB entries and
// routes with it, and the direct routes.
func (b *Backend) Teardown(ctx context.Context, node backend.Node) error {
	var errs []error
	name := VTEPName(node.Network.VNI)
	if link, err := netlink.LinkByName(name); err == nil {
		if err := netlink.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("deleting VTEP %s: %w", name, err))
		}
	}
	return errors.Join(append(errs, backend.RemoveRoutes(node.Network.CIDR))...)
}
