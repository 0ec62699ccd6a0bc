// Package bgp is netd's routed backend, as Calico and kube-router do it but
// in one daemon: an embedded GoBGP speaker (netd/speaker) announces this
// node's block as one aggregate prefix and learns the other blocks; netd
// installs the learned paths as kernel routes (protocol 73) via the next
// hop each path carries. No overlay, no bridge (see plugins/bgp).
//
// Sessions: a full iBGP mesh among the nodes found in etcd by default; with
// route reflectors, reflectors peer with every node (the others as their
// clients) and the others only with the reflectors; plus external routers
// per node, eBGP or iBGP, with TCP MD5 passwords.
package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
	"github.com/berthnet/berth/netd/speaker"
)

// Defaults.
const (
	DefaultASN  = 64512
	DefaultPort = 179
	// startupHold bounds how long a restarted netd keeps the routes it
	// finds in the kernel while its sessions come back (graceful restart:
	// nothing is withdrawn or removed while a restart is in progress).
	startupHold = 20 * time.Second
	// updateGrace is how long after a session came up the startup hold
	// waits for the peer's initial updates.
	updateGrace = 3 * time.Second
)

// Backend is the bgp backend.
type Backend struct{ Log *slog.Logger }

type network struct {
	node    backend.Node
	cfg     backend.BGP
	log     *slog.Logger
	sp      *speaker.Speaker
	mtu     int
	started time.Time

	mu   sync.Mutex
	self netip.Prefix
}

// Register starts the speaker on the node IP.
func (b Backend) Register(ctx context.Context, node backend.Node) (backend.Network, error) {
	cfg := node.BGP
	if cfg.ASN == 0 {
		cfg.ASN = DefaultASN
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	log := b.Log
	if log == nil {
		log = slog.Default()
	}
	mtu := node.Link.Attrs().MTU
	if n := node.Network; n.MTU != 0 {
		if n.MTU > mtu {
			return nil, fmt.Errorf("network %s: mtu %d is larger than the underlay %s's MTU %d", n.Name, n.MTU, node.Link.Attrs().Name, mtu)
		}
		mtu = n.MTU
	}
	sp, err := speaker.Start(ctx, speaker.Config{
		RouterID: node.IP, ASN: cfg.ASN, ListenPort: int32(cfg.Port),
		ClusterCIDR: node.Network.CIDR, AcceptForeign: cfg.AcceptForeign,
		RestartTime: cfg.RestartTime, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	log.Info("BGP speaker", "routerID", node.IP, "asn", cfg.ASN, "port", cfg.Port,
		"routeReflector", cfg.RouteReflector, "nodeMesh", cfg.NodeMesh, "externalPeers", len(cfg.Peers))
	return &network{node: node, cfg: cfg, log: log, sp: sp, mtu: mtu, started: time.Now()}, nil
}

func (nw *network) Publish(self *cluster.Lease) {
	self.ASN, self.RouteReflector = nw.cfg.ASN, nw.cfg.RouteReflector
}
func (nw *network) MTU() int                         { return nw.mtu }
func (nw *network) Ensure(ctx context.Context) error { return nil }
func (nw *network) Changes() <-chan struct{}         { return nw.sp.Changes() }
func (nw *network) Owned() backend.Owned             { return backend.Owned{CIDR: nw.node.Network.CIDR} }

// Announce announces self's block (withdrawing the one announced before,
// if it changed) and sets the sessions for peers.
func (nw *network) Announce(ctx context.Context, self cluster.Lease, peers []cluster.Lease) []backend.Problem {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var problems []backend.Problem
	nw.announce(ctx, self.Subnet, &problems)
	if err := nw.sp.SetNeighbors(ctx, nw.neighbors(peers)); err != nil {
		problems = append(problems, backend.Problem{Peer: "bgp", Err: err})
	}
	return problems
}

// Desired wants a kernel route for every block learned over BGP, plus a
// blackhole for self; while a restarted netd's sessions come back, also
// the routes its predecessor left in the kernel.
func (nw *network) Desired(in backend.Input) (backend.State, []backend.Problem) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var problems []backend.Problem
	self := in.Self.Subnet
	var s backend.State
	if self.IsValid() {
		// Addresses of the block not (yet) given to a container must not
		// follow the default route out of the node.
		s.Routes = append(s.Routes, netlink.Route{Dst: backend.IPNet(self), Type: unix.RTN_BLACKHOLE})
	}
	learned, err := nw.sp.Routes(ctx)
	if err != nil {
		problems = append(problems, backend.Problem{Peer: "bgp", Err: err})
	}
	seen := map[netip.Prefix]bool{}
	for _, r := range learned {
		if self.IsValid() && r.Prefix.Overlaps(self) {
			problems = append(problems, backend.Problem{Peer: r.From.String(),
				Err: fmt.Errorf("announces %s, which overlaps this node's block %s: ignored", r.Prefix, self)})
			continue
		}
		route, err := nw.kernelRoute(r, in.Underlay)
		if err != nil {
			problems = append(problems, backend.Problem{Peer: r.From.String(), Err: err})
			continue
		}
		seen[r.Prefix] = true
		s.Routes = append(s.Routes, route)
	}
	if nw.holding(ctx) {
		s.Routes = append(s.Routes, nw.keptRoutes(in.Kernel.Routes, seen, self)...)
	}
	problems = append(problems, nw.sessionProblems(ctx)...)
	return s, problems
}

func (nw *network) announce(ctx context.Context, self netip.Prefix, problems *[]backend.Problem) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.self == self {
		return
	}
	if nw.self.IsValid() {
		if err := nw.sp.Withdraw(ctx, nw.self); err != nil {
			*problems = append(*problems, backend.Problem{Peer: "bgp", Err: err})
			return
		}
	}
	if self.IsValid() {
		if err := nw.sp.Announce(ctx, self); err != nil {
			*problems = append(*problems, backend.Problem{Peer: "bgp", Err: err})
			return
		}
	}
	nw.self = self
}

// neighbors is the session plan: mesh, reflectors, externals.
func (nw *network) neighbors(peers []cluster.Lease) []speaker.Neighbor {
	var out []speaker.Neighbor
	if nw.cfg.NodeMesh {
		reflectors := 0
		for _, p := range peers {
			if p.RouteReflector {
				reflectors++
			}
		}
		for _, p := range peers {
			asn := p.ASN
			if asn == 0 {
				asn = DefaultASN
			}
			n := speaker.Neighbor{Address: p.NodeIP, ASN: asn, Name: p.NodeName, Passive: nw.node.IP.Compare(p.NodeIP) > 0}
			switch {
			case nw.cfg.RouteReflector:
				n.RRClient = !p.RouteReflector // reflectors peer plainly with each other
			case reflectors > 0 && !p.RouteReflector:
				continue // a client talks to the reflectors only
			}
			out = append(out, n)
		}
	}
	for _, e := range nw.cfg.Peers {
		out = append(out, speaker.Neighbor{Address: e.Address, ASN: e.ASN, Password: e.Password, Name: "external"})
	}
	return out
}

// kernelRoute routes r's prefix via its next hop; a next hop that is not
// on this node's segment (a route reflected from a node behind a router)
// is resolved through the route the node has to it.
func (nw *network) kernelRoute(r speaker.Route, underlay func(netip.Addr) (backend.Path, error)) (netlink.Route, error) {
	link := nw.node.Link.Attrs().Index
	if !r.NextHop.IsValid() {
		return netlink.Route{}, fmt.Errorf("path to %s has no next hop", r.Prefix)
	}
	path, err := underlay(r.NextHop)
	if err != nil {
		return netlink.Route{}, fmt.Errorf("next hop %s of %s: %w", r.NextHop, r.Prefix, err)
	}
	gw := r.NextHop
	if !path.Direct {
		if !path.Gateway.IsValid() {
			return netlink.Route{}, fmt.Errorf("next hop %s of %s is not reachable on the underlay (%s)", r.NextHop, r.Prefix, path)
		}
		gw, link = path.Gateway, path.LinkIndex
	}
	return netlink.Route{Dst: backend.IPNet(r.Prefix), Gw: gw.AsSlice(), LinkIndex: link}, nil
}

// holding reports whether netd is still within its startup hold: right
// after a restart, until every session is up (or startupHold passes).
func (nw *network) holding(ctx context.Context) bool {
	if time.Since(nw.started) > startupHold {
		return false
	}
	ss, err := nw.sp.Sessions(ctx)
	if err != nil || len(ss) == 0 {
		return true
	}
	for _, s := range ss {
		if !s.Established {
			return true
		}
	}
	// Sessions up: give the initial updates a moment to arrive after the
	// last one came up (netd reconciles as soon as a session changes, so
	// "now" may be the instant it did).
	for _, s := range ss {
		if up := s.Since; up.IsZero() && time.Since(nw.started) < updateGrace || time.Since(up) < updateGrace {
			return true
		}
	}
	return false
}

// keptRoutes are the routes of a previous netd still in the kernel (have)
// that BGP has not (yet) told this one about: kept during the startup hold.
func (nw *network) keptRoutes(have []netlink.Route, seen map[netip.Prefix]bool, self netip.Prefix) []netlink.Route {
	var out []netlink.Route
	for _, r := range have {
		if r.Dst == nil {
			continue
		}
		pfx, ok := backend.Prefix(r.Dst)
		if !ok || seen[pfx] || pfx == self || !nw.node.Network.CIDR.Contains(pfx.Addr()) {
			continue
		}
		out = append(out, netlink.Route{Dst: r.Dst, Gw: r.Gw, LinkIndex: r.LinkIndex, Type: r.Type, Flags: r.Flags})
	}
	return out
}

// sessionProblems names the sessions that are down.
func (nw *network) sessionProblems(ctx context.Context) []backend.Problem {
	ss, err := nw.sp.Sessions(ctx)
	if err != nil {
		return []backend.Problem{{Peer: "bgp", Err: err}}
	}
	var out []backend.Problem
	for _, s := range ss {
		if s.Established {
			continue
		}
		hint := ""
		if s.Neighbor.Password != "" {
			hint = " (a TCP MD5 password is set: check it matches the peer's)"
		}
		peer := s.Neighbor.Name // a node: the problem shows on its peer line
		if peer == "external" || peer == "" {
			peer = "external " + s.Neighbor.Address.String()
		}
		out = append(out, backend.Problem{Peer: peer,
			Err: fmt.Errorf("BGP session to %s (AS %d) is %s, not established%s", s.Neighbor.Address, s.Neighbor.ASN, s.State, hint)})
	}
	return out
}

// Sessions reports the BGP sessions for netd status and metrics.
func (nw *network) Sessions(ctx context.Context) ([]backend.Session, error) {
	ss, err := nw.sp.Sessions(ctx)
	out := make([]backend.Session, 0, len(ss))
	for _, s := range ss {
		out = append(out, backend.Session{Peer: s.Neighbor.Address.String(), Name: s.Neighbor.Name, ASN: s.Neighbor.ASN,
			State: s.State, Established: s.Established, Since: s.Since, Received: s.Received, Advertised: s.Advertised})
	}
	return out, err
}

// Teardown removes the routes (netd leave). The speaker stops with netd.
func (Backend) Teardown(ctx context.Context, node backend.Node) error {
	return backend.RemoveRoutes(node.Network.CIDR)
}
