// Package hostgw connects nodes on one L2 segment with plain routes, the
// way flannel's host-gw backend does: per peer and family
//
//	<peer subnet> via <peer node IP> dev <underlay> proto 73
//	<peer IPv6 subnet> via <peer node IPv6> dev <underlay> proto 73
//
// and per family of the network the route that refuses the rest of it
// (backend.UnreachableRoutes: unreachable <network CIDR> proto 73).
//
// A peer behind a router cannot be reached this way (the router knows
// nothing of the node subnets); it is reported as a problem instead of
// getting a route that would silently black-hole its traffic.
package hostgw

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// Backend is the host-gw backend.
type Backend struct{}

type network struct {
	node backend.Node
	mtu  int
}

// Register checks the MTU; host-gw needs no device of its own.
func (Backend) Register(ctx context.Context, node backend.Node) (backend.Network, error) {
	mtu, err := backend.UnderlayMTU(node)
	if err != nil {
		return nil, err
	}
	return &network{node: node, mtu: mtu}, nil
}

func (nw *network) Publish(*cluster.Lease)           {}
func (nw *network) MTU() int                         { return nw.mtu }
func (nw *network) Ensure(ctx context.Context) error { return nil }

func (nw *network) Owned() backend.Owned {
	return backend.Owned{CIDRs: nw.node.Network.CIDRs()}
}

func (nw *network) Desired(in backend.Input) (backend.State, []backend.Problem) {
	s := backend.State{Routes: backend.UnreachableRoutes(nw.node.Network.CIDRs())}
	var problems []backend.Problem
	for _, p := range in.Peers {
		var errs []error // a family that cannot be routed leaves the other one routed
		for _, subnet := range p.Subnets() {
			r, err := nw.route(p, subnet, in.Underlay)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			s.Routes = append(s.Routes, r)
		}
		if len(errs) > 0 {
			problems = append(problems, backend.Problem{Peer: p.NodeName, Err: errors.Join(errs...)})
		}
	}
	return s, problems
}

// route is the route to subnet, one of p's, via p's node address of its
// family, which must be on this node's segment.
func (nw *network) route(p cluster.Lease, subnet netip.Prefix, underlay func(netip.Addr) (backend.Path, error)) (netlink.Route, error) {
	v6 := subnet.Addr().Is6()
	ip := p.NodeAddr(v6)
	if !ip.IsValid() {
		family, field := "IPv4", "nodeIP"
		if v6 {
			family, field = "IPv6", "nodeIPv6"
		}
		return netlink.Route{}, fmt.Errorf("its lease has no %s node address (%s) to route its subnet %s via: give that node an %s address on the underlay",
			family, field, subnet, family)
	}
	path, err := underlay(ip)
	if err != nil {
		return netlink.Route{}, err
	}
	if !path.Direct {
		return netlink.Route{}, fmt.Errorf(
			"node IP %s is not on this node's L2 segment (%s reaches it %s): host-gw routes only reach nodes on the same segment; use vxlan mode (with directRouting to keep host-gw routes where possible)",
			ip, nw.node.Link.Attrs().Name, path)
	}
	return netlink.Route{Dst: backend.IPNet(subnet), Gw: ip.AsSlice(), LinkIndex: nw.node.Link.Attrs().Index}, nil
}

// Teardown removes the routes to the peers.
func (Backend) Teardown(ctx context.Context, node backend.Node) error {
	return backend.RemoveRoutes(node.Network.CIDRs())
}
