package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/netd/backend"
)

// Desired wants a kernel route for every block import chose from the
// learned paths, plus a blackhole for self; while a restarted netd's
// sessions come back, also the routes its predecessor left in the kernel.
// It reports the refused paths, the sessions that are down and the peers
// whose block is not routed.
func (nw *network) Desired(in backend.Input) (backend.State, []backend.Problem) {
	var s backend.State
	var problems []backend.Problem
	// No unreachable route to the network's CIDR (backend.UnreachableRoutes,
	// as vxlan and hostgw have): a node may reach other blocks through
	// its default gateway, a router that learned them over BGP and sends
	// the nodes only a default route. Only the node's own block is
	// refused, below.
	self := in.Self.Subnets()
	for _, block := range self {
		// Addresses of the block not (yet) given to a container must not
		// follow the default route out of the node.
		s.Routes = append(s.Routes, netlink.Route{Dst: backend.IPNet(block), Type: unix.RTN_BLACKHOLE})
	}
	sel := nw.importPaths(in)
	for _, r := range sel.refused {
		problems = append(problems, backend.Problem{Kind: backend.Refused,
			Peer: fmt.Sprintf("route %s from %s", r.path.Prefix, r.path.From),
			Err:  fmt.Errorf("not installed: %w", r.err)})
	}
	routed := map[netip.Prefix]bool{}
	for _, pfx := range sel.order {
		p := sel.chosen[pfx]
		route, err := nw.kernelRoute(p, in.Underlay)
		if err != nil {
			problems = append(problems, backend.Problem{Peer: "bgp peer " + p.From.String(), Err: err})
			continue
		}
		routed[pfx] = true
		s.Routes = append(s.Routes, route)
	}
	if nw.holding(in.Routing) {
		s.Routes = append(s.Routes, nw.keptRoutes(in.Kernel.Routes, routed, self)...)
	}
	problems = append(problems, nw.peerProblems(in, routed)...)
	return s, problems
}

// kernelRoute routes p's prefix via its next hop; a next hop that is not
// on this node's segment (a route reflected from a node behind a router)
// is resolved through the route the node has to it.
func (nw *network) kernelRoute(p backend.LearnedPath, underlay func(netip.Addr) (backend.Path, error)) (netlink.Route, error) {
	link := nw.node.Link.Attrs().Index
	if !p.NextHop.IsValid() {
		return netlink.Route{}, fmt.Errorf("path to %s has no next hop", p.Prefix)
	}
	path, err := underlay(p.NextHop)
	if err != nil {
		return netlink.Route{}, fmt.Errorf("next hop %s of %s: %w", p.NextHop, p.Prefix, err)
	}
	gw := p.NextHop
	if !path.Direct {
		if !path.Gateway.IsValid() {
			return netlink.Route{}, fmt.Errorf("next hop %s of %s is not reachable on the underlay (%s)", p.NextHop, p.Prefix, path)
		}
		gw, link = path.Gateway, path.LinkIndex
	}
	return netlink.Route{Dst: backend.IPNet(p.Prefix), Gw: gw.AsSlice(), LinkIndex: link}, nil
}

// holding reports whether netd is still within its startup hold: right
// after a restart, until every session is up (or startupHold passes).
func (nw *network) holding(r backend.Routing) bool {
	since := r.At.Sub(nw.started)
	if since > startupHold {
		return false
	}
	if len(r.Sessions) == 0 {
		return true
	}
	for _, s := range r.Sessions {
		// Up, and its routes in (a peer without graceful restart marks
		// no end: a second of it).
		if !s.Established || !s.EndOfRIB && r.At.Sub(s.Since) < time.Second {
			return true
		}
	}
	// Sessions up and their routes in: give the kernel routes one pass.
	return since < time.Second
}

// keptRoutes are the routes of a previous netd still in the kernel (have)
// that BGP has not (yet) told this one about: kept during the startup hold.
func (nw *network) keptRoutes(have []netlink.Route, routed map[netip.Prefix]bool, self []netip.Prefix) []netlink.Route {
	var out []netlink.Route
	for _, r := range have {
		if r.Dst == nil {
			continue
		}
		pfx, ok := backend.Prefix(r.Dst)
		if !ok || routed[pfx] || slices.Contains(self, pfx) || !slices.ContainsFunc(nw.node.Network.CIDRs(), func(c netip.Prefix) bool { return backend.Within(r.Dst, c) }) {
			continue
		}
		out = append(out, netlink.Route{Dst: r.Dst, Gw: r.Gw, LinkIndex: r.LinkIndex, Type: r.Type, Flags: r.Flags, Priority: r.Priority})
	}
	return out
}
