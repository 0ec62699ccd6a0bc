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

// importPaths decides which learned paths become routes, each family
// against its own cluster CIDR and blocks. Inside the cluster CIDR of
// its family a path is installed only
//
//   - for a block a node leases (not a more specific of one, not a block
//     no node leases), never this node's own;
//   - from a session of the prefix's family (an IPv6 block over an IPv6
//     session: netd opens no other, so anything else is a peer that
//     should not carry it);
//   - with a next hop that leads to the owning node: its address of that
//     family (it announced the block itself, or a reflector or a router
//     passed its next hop on), or the gateway through which this node
//     reaches it (a router between segments that announces the block as
//     its own). A block whose node is on this node's segment is routed
//     to the node directly, whichever router announced it (no hairpin
//     through it).
//
// So a router, a reflector or another node cannot draw the traffic of a
// block elsewhere. Of a prefix's acceptable paths the best one is taken,
// else the first. Outside the cluster CIDRs (only with AcceptForeign)
// the best path is taken as it is.
func (nw *network) importPaths(in backend.Input) selection {
	sel := selection{chosen: map[netip.Prefix]backend.LearnedPath{}}
	owners := map[netip.Prefix]cluster.Lease{}
	for _, p := range in.Peers {
		for _, b := range p.Subnets() {
			owners[b] = p
		}
	}
	for _, p := range in.Routing.Paths {
		var err error
		v6 := p.Prefix.Addr().Is6()
		cidr := nw.clusterCIDR(v6)
		own := ownBlock(p.Prefix, in.Self)
		switch {
		case own.IsValid():
			err = fmt.Errorf("it is this node's own block %s", own)
			if p.Prefix != own {
				err = fmt.Errorf("it is inside this node's own block %s", own)
			}
		case !cidr.IsValid() || !within(p.Prefix, cidr):
			// Foreign, or covering the cluster network (a default route),
			// which draws no traffic from the more specific blocks.
			if !p.Best {
				continue // BGP's choice, as it is
			}
		case p.From.Is6() != v6:
			err = fmt.Errorf("it came over an %s session, and netd carries %s blocks only over %s sessions", family(p.From), family(p.Prefix.Addr()), family(p.Prefix.Addr()))
		default:
			owner, ok := owners[p.Prefix]
			if !ok {
				err = unleased(p.Prefix, in.Peers)
			} else {
				p.NextHop, err = nextHopTo(p.NextHop, owner, v6, in.Underlay)
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

// clusterCIDR is the network's cluster prefix of a family (zero: none).
func (nw *network) clusterCIDR(v6 bool) netip.Prefix {
	if v6 {
		return nw.node.Network.CIDRv6
	}
	return nw.node.Network.CIDR
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
		for _, b := range p.Subnets() {
			if b.Overlaps(prefix) && b.Bits() < prefix.Bits() {
				return fmt.Errorf("it is a more specific of %s's block %s", p.NodeName, b)
			}
		}
	}
	return fmt.Errorf("no node leases it")
}

// nextHopTo is the next hop to route owner's block of a family (v6)
// through, given a path with next hop nh: owner itself when nh is its
// address of that family or owner is on this node's segment; nh when
// this node reaches nh and owner through the same gateway (nh is that
// gateway, or another address of the router, as with a router peered on
// its loopback); anything else leads elsewhere.
func nextHopTo(nh netip.Addr, owner cluster.Lease, v6 bool, underlay func(netip.Addr) (backend.Path, error)) (netip.Addr, error) {
	addr := owner.NodeAddr(v6)
	switch {
	case !nh.IsValid():
		return nh, fmt.Errorf("it has no next hop")
	case !addr.IsValid():
		return nh, fmt.Errorf("%s's lease has no %s node address to check the next hop %s against", owner.NodeName, familyName(v6), nh)
	case nh == addr:
		return nh, nil
	case nh.Is6() != v6:
		return nh, fmt.Errorf("its next hop %s is not an %s address", nh, familyName(v6))
	}
	toOwner, err := underlay(addr)
	if err != nil {
		return nh, fmt.Errorf("next hop %s is not %s's address %s, and the route to that is unknown: %w", nh, owner.NodeName, addr, err)
	}
	if toOwner.Direct {
		return addr, nil
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
		nh, owner.NodeName, addr, toOwner.Gateway)
}
