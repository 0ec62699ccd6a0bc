// Package hostgw connects nodes on one L2 segment with plain routes, the
// way flannel's host-gw backend does: per peer
//
//	<peer subnet> via <peer node IP> dev <underlay> proto 73
//
// A peer behind a router cannot be reached this way (the router knows
// nothing of the node subnets); it is reported as a problem instead of
// getting a route that would silently black-hole its traffic.
package hostgw

import (
	"context"
	"fmt"

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
	mtu := node.Link.Attrs().MTU
	if n := node.Network; n.MTU != 0 {
		if n.MTU > mtu {
			return nil, fmt.Errorf("network %s: mtu %d is larger than the underlay %s's MTU %d",
				n.Name, n.MTU, node.Link.Attrs().Name, mtu)
		}
		mtu = n.MTU
	}
	return &network{node: node, mtu: mtu}, nil
}

func (nw *network) Publish(*cluster.Lease)           {}
func (nw *network) MTU() int                         { return nw.mtu }
func (nw *network) Ensure(ctx context.Context) error { return nil }

func (nw *network) Owned() backend.Owned {
	return backend.Owned{CIDR: nw.node.Network.CIDR}
}

func (nw *network) Desired(in backend.Input) (backend.State, []backend.Problem) {
	var s backend.State
	var problems []backend.Problem
	for _, p := range in.Peers {
		path, err := in.Underlay(p.NodeIP)
		if err != nil {
			problems = append(problems, backend.Problem{Peer: p.NodeName, Err: err})
			continue
		}
		if !path.Direct {
			problems = append(problems, backend.Problem{Peer: p.NodeName, Err: fmt.Errorf(
				"node IP %s is not on this node's L2 segment (%s reaches it %s): host-gw routes only reach nodes on the same segment; use vxlan mode (with directRouting to keep host-gw routes where possible)",
				p.NodeIP, nw.node.Link.Attrs().Name, path)})
			continue
		}
		s.Routes = append(s.Routes, netlink.Route{
			Dst: backend.IPNet(p.Subnet), Gw: p.NodeIP.AsSlice(), LinkIndex: nw.node.Link.Attrs().Index,
		})
	}
	return s, problems
}

// Teardown removes the routes to the peers.
func (Backend) Teardown(ctx context.Context, node backend.Node) error {
	return backend.RemoveRoutes(node.Network.CIDR)
}
