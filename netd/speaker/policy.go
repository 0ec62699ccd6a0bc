package speaker

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	api "github.com/osrg/gobgp/v3/api"
)

// Names of the policy objects, per family where it says so.
const (
	importPolicy = "berth-import"
	exportPolicy = "berth-export"
	clusterSet   = "berth-cluster" // per family: the cluster CIDR and everything inside it
	exportSet    = "berth-export"  // per family: what external routers are sent (SetExport)
	nodeSet      = "berth-nodes"   // neighbor set: the other nodes
)

// installPolicy installs the global import and export policies:
//
//   - import (unless AcceptForeign): prefixes inside the cluster CIDR;
//   - export: to the other nodes, prefixes inside the cluster CIDR (a
//     reflector reflects them; the receiver checks them against its
//     leases); to anyone, the export set. Nothing else: an external
//     router is never sent another router's routes (no transit).
//
// GoBGP has per-neighbor policies only for route-server clients, so the
// neighbor the path is sent to is matched with a neighbor set. An empty
// neighbor set matches every neighbor, so the node set always holds this
// speaker's own address, which is never a neighbor.
func (s *Speaker) installPolicy(ctx context.Context) error {
	self := netip.PrefixFrom(s.cfg.RouterID, s.cfg.RouterID.BitLen())
	err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: &api.DefinedSet{
		DefinedType: api.DefinedType_NEIGHBOR, Name: nodeSet, List: []string{self.String()},
	}})
	if err != nil {
		return fmt.Errorf("BGP neighbor set: %w", err)
	}
	var imports, exports []*api.Statement
	for _, f := range s.families() {
		var prefixes []*api.Prefix
		for _, c := range s.cfg.ClusterCIDRs {
			if familyOf(c) == f {
				prefixes = append(prefixes, &api.Prefix{IpPrefix: c.String(), MaskLengthMin: uint32(c.Bits()), MaskLengthMax: uint32(f.bits)})
			}
		}
		for name, list := range map[string][]*api.Prefix{f.set(clusterSet): prefixes, f.set(exportSet): nil} {
			err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: name, Prefixes: list}})
			if err != nil {
				return fmt.Errorf("BGP prefix set %s: %w", name, err)
			}
		}
		inCluster := &api.MatchSet{Type: api.MatchSet_ANY, Name: f.set(clusterSet)}
		imports = append(imports, &api.Statement{Name: f.set(importPolicy),
			Conditions: &api.Conditions{PrefixSet: inCluster},
			Actions:    &api.Actions{RouteAction: api.RouteAction_ACCEPT}})
		exports = append(exports,
			&api.Statement{Name: f.set(exportPolicy + "-nodes"),
				Conditions: &api.Conditions{PrefixSet: inCluster, NeighborSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: nodeSet}},
				Actions:    &api.Actions{RouteAction: api.RouteAction_ACCEPT}},
			&api.Statement{Name: f.set(exportPolicy),
				Conditions: &api.Conditions{PrefixSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: f.set(exportSet)}},
				Actions:    &api.Actions{RouteAction: api.RouteAction_ACCEPT}})
	}
	policies := map[api.PolicyDirection]*api.Policy{api.PolicyDirection_EXPORT: {Name: exportPolicy, Statements: exports}}
	if !s.cfg.AcceptForeign {
		policies[api.PolicyDirection_IMPORT] = &api.Policy{Name: importPolicy, Statements: imports}
	}
	for dir, p := range policies {
		if err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: p}); err != nil {
			return fmt.Errorf("BGP policy %s: %w", p.Name, err)
		}
		err := s.srv.AddPolicyAssignment(ctx, &api.AddPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
			Name: "global", Direction: dir, Policies: []*api.Policy{{Name: p.Name}}, DefaultAction: api.RouteAction_REJECT,
		}})
		if err != nil {
			return fmt.Errorf("BGP policy assignment %s: %w", p.Name, err)
		}
	}
	return nil
}

// families are the families of the cluster CIDRs, in a fixed order.
func (s *Speaker) families() []family {
	var out []family
	for _, f := range families {
		for _, c := range s.cfg.ClusterCIDRs {
			if familyOf(c) == f && !slices.Contains(out, f) {
				out = append(out, f)
			}
		}
	}
	return out
}

// SetExport makes prefixes what external routers are sent: this node's
// block, or every node's on the cluster's edge. The external sessions are
// then refreshed. GoBGP keeps no record of what it sent and does not
// withdraw what a refresh no longer sends, so a prefix leaves the set only
// once no path for it is left to withdraw (this node's block after
// Withdraw, another node's when its path is withdrawn): until then it is
// kept, so that the withdrawal reaches the routers, and a later call
// removes it.
func (s *Speaker) SetExport(ctx context.Context, prefixes []netip.Prefix) error {
	want := map[netip.Prefix]bool{}
	for _, p := range prefixes {
		if !slices.Contains(s.families(), familyOf(p)) {
			return fmt.Errorf("exporting %s: the cluster has no %s network", p, familyOf(p).name)
		}
		want[p.Masked()] = true
	}
	var inRIB map[netip.Prefix]bool
	if s.exportShrinks(want) {
		paths, err := s.Paths(ctx)
		if err != nil {
			return err
		}
		inRIB = map[netip.Prefix]bool{}
		for _, p := range paths {
			inRIB[p.Prefix] = true
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var add, del []netip.Prefix
	for p := range want {
		if !s.exported[p] {
			add = append(add, p)
		}
	}
	for p := range s.exported {
		switch {
		case want[p]:
		case inRIB[p] || s.announced[p]:
			want[p] = true // draining: its withdrawal is still to be sent
		default:
			del = append(del, p)
		}
	}
	if len(add) == 0 && len(del) == 0 {
		return nil
	}
	for _, f := range s.families() {
		list := func(ps []netip.Prefix) (out []*api.Prefix) {
			for _, p := range ps {
				if familyOf(p) == f {
					out = append(out, &api.Prefix{IpPrefix: p.String(), MaskLengthMin: uint32(p.Bits()), MaskLengthMax: uint32(p.Bits())})
				}
			}
			return out
		}
		// In place (append, delete): the policy statements hold the set
		// itself, and a replaced set would no longer be the one they match.
		if l := list(add); len(l) > 0 {
			err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: f.set(exportSet), Prefixes: l}})
			if err != nil {
				return fmt.Errorf("exporting %v: %w", add, err)
			}
		}
		if l := list(del); len(l) > 0 {
			err := s.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: f.set(exportSet), Prefixes: l}})
			if err != nil {
				return fmt.Errorf("no longer exporting %v: %w", del, err)
			}
		}
	}
	s.exported = want
	if len(add) == 0 {
		return nil // nothing more to send
	}
	for addr, n := range s.neighbors {
		if !n.External {
			continue
		}
		err := s.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: addr.String(), Soft: true, Direction: api.ResetPeerRequest_OUT})
		if err != nil {
			return fmt.Errorf("refreshing what %s is sent: %w", addr, err)
		}
	}
	return nil
}

// exportShrinks reports whether a prefix exported now is not in want.
func (s *Speaker) exportShrinks(want map[netip.Prefix]bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.exported {
		if !want[p] {
			return true
		}
	}
	return false
}

// setNodeNeighbor adds addr to the node set (before its session is
// configured, so that it is never sent less) or removes it (after).
func (s *Speaker) setNodeNeighbor(ctx context.Context, addr netip.Addr, node bool) error {
	set := &api.DefinedSet{DefinedType: api.DefinedType_NEIGHBOR, Name: nodeSet,
		List: []string{netip.PrefixFrom(addr, addr.BitLen()).String()}}
	if node {
		return s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: set})
	}
	return s.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: set})
}
