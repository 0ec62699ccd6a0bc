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
// What is installed (import.go): a path inside the cluster CIDR only for a
// block some node leases, and only with a next hop that leads to that
// node. What external routers are sent: this node's block, or every block
// when the node is the cluster's edge; never another router's routes.
package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
	"github.com/berthnet/berth/netd/speaker"
)

// Defaults.
const (
	DefaultASN  = speaker.DefaultASN
	DefaultPort = speaker.DefaultPort
	// startupHold bounds how long a restarted netd keeps the routes it
	// finds in the kernel while its sessions come back (graceful restart:
	// nothing is withdrawn or removed while a restart is in progress).
	startupHold = 20 * time.Second
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
	self netip.Prefix // the block announced
	// firstSeen is when each peer's block was first expected (status:
	// a block leased a moment ago is not routed yet, not broken).
	firstSeen map[netip.Prefix]time.Time
}

// Register starts the speaker on the node IP. When netd's routes are
// still in the kernel, a previous netd ran here and this is a restart:
// the speaker tells its peers that forwarding was preserved.
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
	have, err := backend.Read(backend.Owned{CIDR: node.Network.CIDR})
	if err != nil {
		return nil, err
	}
	restarted := len(have.Routes) > 0
	sp, err := speaker.Start(ctx, speaker.Config{
		RouterID: node.IP, ASN: cfg.ASN, ListenPort: int32(cfg.Port),
		ClusterCIDRs: []netip.Prefix{node.Network.CIDR}, AcceptForeign: cfg.AcceptForeign,
		RestartTime: cfg.RestartTime, HoldTime: cfg.HoldTime, KeepaliveInterval: cfg.KeepaliveInterval,
		Restarted: restarted, RestartWindow: startupHold, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	log.Info("BGP speaker", "routerID", node.IP, "asn", cfg.ASN, "port", cfg.Port,
		"routeReflector", cfg.RouteReflector, "nodeMesh", cfg.NodeMesh, "externalPeers", len(cfg.Peers), "edge", cfg.Edge,
		"restart", restarted)
	return &network{node: node, cfg: cfg, log: log, sp: sp, mtu: mtu, started: time.Now(), firstSeen: map[netip.Prefix]time.Time{}}, nil
}

func (nw *network) Publish(self *cluster.Lease) {
	self.ASN, self.RouteReflector = nw.cfg.ASN, nw.cfg.RouteReflector
}
func (nw *network) MTU() int                         { return nw.mtu }
func (nw *network) Ensure(ctx context.Context) error { return nil }
func (nw *network) Changes() <-chan struct{}         { return nw.sp.Changes() }
func (nw *network) Owned() backend.Owned             { return backend.Owned{CIDR: nw.node.Network.CIDR} }

// Announce announces self's block (withdrawing the one announced before,
// if it changed), sets the sessions for peers and what the external
// routers are sent.
func (nw *network) Announce(ctx context.Context, self cluster.Lease, peers []cluster.Lease) []backend.Problem {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var problems []backend.Problem
	fail := func(err error) { problems = append(problems, backend.Problem{Peer: "bgp", Err: err}) }
	nw.expect(peers)
	if err := nw.announce(ctx, self.Subnet); err != nil {
		fail(err)
	}
	if err := nw.sp.SetNeighbors(ctx, nw.neighbors(peers)); err != nil {
		fail(err)
	}
	if err := nw.sp.SetExport(ctx, nw.exported(self, peers)); err != nil {
		fail(err)
	}
	return problems
}

func (nw *network) announce(ctx context.Context, self netip.Prefix) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.self == self {
		return nil
	}
	if nw.self.IsValid() {
		if err := nw.sp.Withdraw(ctx, nw.self); err != nil {
			return err
		}
	}
	if self.IsValid() {
		if err := nw.sp.Announce(ctx, self); err != nil {
			return err
		}
	}
	nw.self = self
	return nil
}

// expect records when each peer's block was first expected.
func (nw *network) expect(peers []cluster.Lease) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	now := time.Now()
	leased := map[netip.Prefix]bool{}
	for _, p := range peers {
		leased[p.Subnet] = true
		if _, ok := nw.firstSeen[p.Subnet]; !ok {
			nw.firstSeen[p.Subnet] = now
		}
	}
	for b := range nw.firstSeen {
		if !leased[b] {
			delete(nw.firstSeen, b)
		}
	}
}

// exported is what the external routers are sent: this node's block, and
// on the cluster's edge every other node's too.
func (nw *network) exported(self cluster.Lease, peers []cluster.Lease) []netip.Prefix {
	var out []netip.Prefix
	if self.Subnet.IsValid() {
		out = append(out, self.Subnet)
	}
	if nw.cfg.Edge {
		for _, p := range peers {
			out = append(out, p.Subnet)
		}
	}
	return out
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
			// One side of each session dials (see speaker.Neighbor.Passive):
			// a client dials its reflectors, which are there before it and
			// after it (so a restarted client is back as soon as it dials);
			// between equals, the lower address.
			n := speaker.Neighbor{Address: p.NodeIP, ASN: asn, Name: p.NodeName, Passive: nw.node.IP.Compare(p.NodeIP) > 0}
			switch {
			case nw.cfg.RouteReflector && !p.RouteReflector:
				n.RRClient, n.Passive = true, true
			case nw.cfg.RouteReflector:
				// reflectors peer plainly with each other
			case reflectors > 0 && !p.RouteReflector:
				continue // a client talks to the reflectors only
			case reflectors > 0:
				n.Passive = false
			}
			out = append(out, n)
		}
	}
	for _, e := range nw.cfg.Peers {
		name := e.Name
		if name == "" {
			name = "external"
		}
		out = append(out, speaker.Neighbor{Address: e.Address, ASN: e.ASN, Port: e.Port, Password: e.Password, Name: name, External: true})
	}
	return out
}

// Routing reads what the speaker learned and its sessions.
func (nw *network) Routing(ctx context.Context) (backend.Routing, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r := backend.Routing{At: time.Now()}
	paths, err := nw.sp.Paths(ctx)
	if err != nil {
		return r, err
	}
	for _, p := range paths {
		r.Paths = append(r.Paths, backend.LearnedPath{Prefix: p.Prefix, NextHop: p.NextHop, From: p.From, Best: p.Best, Stale: p.Stale})
	}
	ss, err := nw.sp.Sessions(ctx)
	if err != nil {
		return r, fmt.Errorf("reading the BGP sessions: %w", err)
	}
	for _, s := range ss {
		// Received is everything the peer sent; Sessions splits it.
		r.Sessions = append(r.Sessions, backend.Session{Peer: s.Neighbor.Address.String(), Name: s.Neighbor.Name, ASN: s.Neighbor.ASN,
			External: s.Neighbor.External, State: s.State, Established: s.Established, Since: s.Since,
			Received: s.Received, Advertised: s.Advertised, EndOfRIB: s.EndOfRIB, Restarting: s.Restarting})
	}
	return r, nil
}

// Teardown removes the routes (netd leave). The speaker stops with netd.
func (Backend) Teardown(ctx context.Context, node backend.Node) error {
	return backend.RemoveRoutes(node.Network.CIDR)
}
