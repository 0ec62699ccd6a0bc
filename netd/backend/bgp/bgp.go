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
//
// Dual-stack: per family of the network, a session between the two
// nodes' addresses of that family carries the family's blocks (IPv6 over
// IPv6 sessions, as Calico does with BIRD), so each block's next hop is
// the announcing node's own address of its family. An external router
// given by an IPv6 address gets the IPv6 blocks.
package bgp

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"slices"
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

	mu        sync.Mutex
	announced []netip.Prefix // this node's blocks, as announced
}

// Register starts the speaker on the node's addresses of the network's
// families.
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
	mtu, err := backend.UnderlayMTU(node)
	if err != nil {
		return nil, err
	}
	n := node.Network
	var listen []netip.Addr
	for _, cidr := range n.CIDRs() {
		a := node.Addr(cidr.Addr().Is6())
		if !a.IsValid() {
			return nil, fmt.Errorf("network %s has %s, and bgp mode carries a family's blocks over sessions between the nodes' addresses of that family: this node has no %s address on %s; give it one, or --node-ip",
				n.Name, cidr, family(cidr.Addr()), node.Link.Attrs().Name)
		}
		listen = append(listen, a)
	}
	sp, err := speaker.Start(ctx, speaker.Config{
		RouterID: RouterID(node), ASN: cfg.ASN, ListenPort: int32(cfg.Port), ListenAddrs: listen,
		ClusterCIDRs: n.CIDRs(), AcceptForeign: cfg.AcceptForeign,
		RestartTime: cfg.RestartTime, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	log.Info("BGP speaker", "routerID", RouterID(node), "addresses", listen, "asn", cfg.ASN, "port", cfg.Port,
		"routeReflector", cfg.RouteReflector, "nodeMesh", cfg.NodeMesh, "externalPeers", len(cfg.Peers))
	return &network{node: node, cfg: cfg, log: log, sp: sp, mtu: mtu, started: time.Now()}, nil
}

// RouterID is the node's BGP router ID: its IPv4 address, or on an
// underlay without IPv4 an ID derived from its name (as Calico does for
// IPv6-only nodes; a router ID is 32 bits whatever the families).
func RouterID(node backend.Node) netip.Addr {
	if node.IP.IsValid() {
		return node.IP
	}
	h := fnv.New32a()
	h.Write([]byte("berth-router-id/" + node.Name))
	var id [4]byte
	binary.BigEndian.PutUint32(id[:], h.Sum32()|1) // never 0.0.0.0
	return netip.AddrFrom4(id)
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func (nw *network) Publish(self *cluster.Lease) {
	self.ASN, self.RouteReflector = nw.cfg.ASN, nw.cfg.RouteReflector
}
func (nw *network) MTU() int                         { return nw.mtu }
func (nw *network) Ensure(ctx context.Context) error { return nil }
func (nw *network) Changes() <-chan struct{}         { return nw.sp.Changes() }
func (nw *network) Owned() backend.Owned             { return backend.Owned{CIDRs: nw.node.Network.CIDRs()} }

// Announce announces self's blocks (withdrawing the ones announced
// before, if they changed) and sets the sessions for peers.
func (nw *network) Announce(ctx context.Context, self cluster.Lease, peers []cluster.Lease) []backend.Problem {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var problems []backend.Problem
	nw.announce(ctx, self.Subnets(), &problems)
	neighbors, more := nw.neighbors(peers)
	problems = append(problems, more...)
	if err := nw.sp.SetNeighbors(ctx, neighbors); err != nil {
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
	self := in.Self.Subnets()
	var s backend.State
	for _, block := range self {
		// Addresses of the block not (yet) given to a container must not
		// follow the default route out of the node.
		s.Routes = append(s.Routes, netlink.Route{Dst: backend.IPNet(block), Type: unix.RTN_BLACKHOLE})
	}
	learned, err := nw.sp.Routes(ctx)
	if err != nil {
		problems = append(problems, backend.Problem{Peer: "bgp", Err: err})
	}
	seen := map[netip.Prefix]bool{}
	for _, r := range learned {
		if i := slices.IndexFunc(self, r.Prefix.Overlaps); i >= 0 {
			problems = append(problems, backend.Problem{Peer: r.From.String(),
				Err: fmt.Errorf("announces %s, which overlaps this node's block %s: ignored", r.Prefix, self[i])})
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

// announce makes the announced blocks want: it withdraws the ones no
// longer wanted and announces the new ones.
func (nw *network) announce(ctx context.Context, want []netip.Prefix, problems *[]backend.Problem) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	var kept []netip.Prefix
	for _, p := range nw.announced {
		if slices.Contains(want, p) {
			kept = append(kept, p)
			continue
		}
		if err := nw.sp.Withdraw(ctx, p); err != nil {
			*problems = append(*problems, backend.Problem{Peer: "bgp", Err: err})
			kept = append(kept, p) // still announced: withdraw it next time
		}
	}
	for _, p := range want {
		if slices.Contains(kept, p) {
			continue
		}
		if err := nw.sp.Announce(ctx, p); err != nil {
			*problems = append(*problems, backend.Problem{Peer: "bgp", Err: err})
			continue
		}
		kept = append(kept, p)
	}
	nw.announced = kept
}

// neighbors is the session plan: mesh, reflectors, externals. A node
// gets a session per family of the network, between the two nodes'
// addresses of that family; a peer with a block of a family but no
// address of it is a problem.
func (nw *network) neighbors(peers []cluster.Lease) ([]speaker.Neighbor, []backend.Problem) {
	var out []speaker.Neighbor
	var problems []backend.Problem
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
			if !nw.cfg.RouteReflector && reflectors > 0 && !p.RouteReflector {
				continue // a client talks to the reflectors only
			}
			for _, cidr := range nw.node.Network.CIDRs() {
				v6 := cidr.Addr().Is6()
				local, remote := nw.node.Addr(v6), p.NodeAddr(v6)
				hasBlock := v6 && p.SubnetV6.IsValid() || !v6 && p.Subnet.IsValid()
				switch {
				case !remote.IsValid() && !hasBlock:
					continue // a node without that family (e.g. from before dual-stack): nothing to exchange
				case !remote.IsValid():
					problems = append(problems, backend.Problem{Peer: p.NodeName, Err: fmt.Errorf(
						"no %s session: its lease has an %s block but no %s node address, so this node cannot learn its block", family(cidr.Addr()), family(cidr.Addr()), family(cidr.Addr()))})
					continue
				}
				n := speaker.Neighbor{Address: remote, ASN: asn, Name: p.NodeName, Passive: local.Compare(remote) > 0}
				if nw.cfg.RouteReflector {
					n.RRClient = !p.RouteReflector // reflectors peer plainly with each other
				}
				out = append(out, n)
			}
		}
	}
	for _, e := range nw.cfg.Peers {
		out = append(out, speaker.Neighbor{Address: e.Address, ASN: e.ASN, Password: e.Password, Name: "external"})
	}
	return out, problems
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
func (nw *network) keptRoutes(have []netlink.Route, seen map[netip.Prefix]bool, self []netip.Prefix) []netlink.Route {
	var out []netlink.Route
	for _, r := range have {
		if r.Dst == nil {
			continue
		}
		pfx, ok := backend.Prefix(r.Dst)
		if !ok || seen[pfx] || slices.Contains(self, pfx) || !slices.ContainsFunc(nw.node.Network.CIDRs(), func(c netip.Prefix) bool { return backend.Within(r.Dst, c) }) {
			continue
		}
		out = append(out, netlink.Route{Dst: r.Dst, Gw: r.Gw, LinkIndex: r.LinkIndex, Type: r.Type, Flags: r.Flags, Priority: r.Priority})
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
	return backend.RemoveRoutes(node.Network.CIDRs())
}
