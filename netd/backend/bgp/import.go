package bgp

import (
	"fmt"
	"net/netip"

	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// refusal is a learned path that is not installed, and why.
type refusal struct {
	path backend.LearnedPath
	err  error
}

// selection is what import chose from the learned paths: per prefix the
// path to install, and the paths refused.
type selection struct {
	chosen  map[netip.Prefix]backend.LearnedPath
	order   []netip.Prefix // chosen prefixes, in the order of the paths
	refused []refusal
}

// accepted counts the chosen paths each peer sent.
func (s selection) accepted() map[netip.Addr]uint64 {
	out := map[netip.Addr]uint64{}
	for _, p := range s.chosen {
		out[p.From]++
	}
	return out
}

// importPaths decides which learned paths become routes. Inside the
// cluster CIDR a path is installed only
//
//   - for a block a node leases (not a more specific of one, not a block
//     no node leases), never this node's own;
//   - with a next hop that leads to the owning node: its address (it
//     announced the block itself, or a reflector or a router passed its
//     next hop on), or the gateway through which this node reaches it (a
//     router between segments that announces the block as its own). A
//     block whose node is on this node's segment is routed to the node
//     directly, whichever router announced it (no hairpin through it).
//
// So a router, a reflector or another node cannot draw the traffic of a
// block elsewhere. Of a prefix's acceptable paths the best one is taken,
// else the first. Outside the cluster CIDR (only with AcceptForeign) the
// best path is taken as it is.
func (nw *network) importPaths(in backend.Input) selection {
	sel := selection{chosen: map[netip.Prefix]backend.LearnedPath{}}
	owners := map[netip.Prefix]cluster.Lease{}
	for _, p := range in.Peers {
		owners[p.Subnet] = p
	}
	cidr := nw.node.Network.CIDR
	for _, p := range in.Routing.Paths {
		var err error
		own := ownBlock(p.Prefix, in.Self)
		switch {
		case own.IsValid():
			err = fmt.Errorf("it is this node's own block %s", own)
			if p.Prefix != own {
				err = fmt.Errorf("it is inside this node's own block %s", own)
			}
		case !within(p.Prefix, cidr):
			// Foreign, or covering the cluster network (a default route),
			// which draws no traffic from the more specific blocks.
			if !p.Best {
				continue // BGP's choice, as it is
			}
		default:
			owner, ok := owners[p.Prefix]
			if !ok {
				err = unleased(p.Prefix, in.Peers)
			} else {
				p.NextHop, err = nextHopTo(p.NextHop, owner, in.Underlay)
			}
		}
		if err != nil {
			sel.refused = append(sel.refused, refusal{path: p, err: err})
			continue
		}
		if _, done := sel.chosen[p.Prefix]; !done {
			sel.chosen[p.Prefix] = p
			sel.order = append(sel.order, p.Prefix)
		}
	}
	return sel
}

// ownBlock is the block of self that p is inside of, if any.
func ownBlock(p netip.Prefix, self cluster.Lease) netip.Prefix {
	for _, b := range self.Subnets() {
		if within(p, b) {
			return b
		}
	}
	return netip.Prefix{}
}

// within reports whether p is inside (or equal to) outer.
func within(p, outer netip.Prefix) bool {
	return p.Bits() >= outer.Bits() && outer.Contains(p.Addr())
}

// unleased says why a prefix inside the cluster CIDR no node leases is
// refused.
func unleased(prefix netip.Prefix, peers []cluster.Lease) error {
	for _, p := range peers {
		if p.Subnet.Overlaps(prefix) && p.Subnet.Bits() < prefix.Bits() {
			return fmt.Errorf("it is a more specific of %s's block %s", p.NodeName, p.Subnet)
		}
	}
	return fmt.Errorf("no node leases it")
}

// nextHopTo is the next hop to route owner's block through, given a path
// with next hop nh: owner itself when nh is its address or owner is on
// this node's segment; nh when this node reaches nh and owner through
// the same gateway (nh is that gateway, or another address of the router,
// as with a router peered on its loopback); anything else leads elsewhere.
func nextHopTo(nh netip.Addr, owner cluster.Lease, underlay func(netip.Addr) (backend.Path, error)) (netip.Addr, error) {
	if nh == owner.NodeIP {
		return nh, nil
	}
	if !nh.IsValid() {
		return nh, fmt.Errorf("it has no next hop")
	}
	toOwner, err := underlay(owner.NodeIP)
	if err != nil {
		return nh, fmt.Errorf("next hop %s is not %s's address %s, and the route to that is unknown: %w", nh, owner.NodeName, owner.NodeIP, err)
	}
	if toOwner.Direct {
		return owner.NodeIP, nil
	}
	toNH, err := underlay(nh)
	if err != nil {
		return nh, fmt.Errorf("next hop %s: %w", nh, err)
	}
	first := nh
	if !toNH.Direct {
		first = toNH.Gateway
	}
	if first == toOwner.Gateway {
		return nh, nil
	}
	return nh, fmt.Errorf("next hop %s leads neither to %s's address %s nor through this node's gateway to it, %s",
		nh, owner.NodeName, owner.NodeIP, toOwner.Gateway)
}
