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
//
// What is installed (import.go): a path inside the cluster CIDR only for a
// block some node leases, and only with a next hop that leads to that
// node. What external routers are sent: this node's block, or every block
// when the node is the cluster's edge; never another router's routes.
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

	mu        sync.Mutex
	announced []netip.Prefix // this node's blocks, as announced
	// firstSeen is when each peer's block was first expected (status:
	// a block leased a moment ago is not routed yet, not broken).
	firstSeen map[netip.Prefix]time.Time
}

// Register starts the speaker on the node's addresses of the network's
// families. When netd's routes are still in the kernel, a previous netd
// ran here and this is a restart: the speaker tells its peers that
// forwarding was preserved.
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
	have, err := backend.Read(backend.Owned{CIDRs: n.CIDRs()})
	if err != nil {
		return nil, err
	}
	restarted := len(have.Routes) > 0
	sp, err := speaker.Start(ctx, speaker.Config{
		RouterID: RouterID(node), ASN: cfg.ASN, ListenPort: int32(cfg.Port), ListenAddrs: listen,
		ClusterCIDRs: n.CIDRs(), AcceptForeign: cfg.AcceptForeign,
		RestartTime: cfg.RestartTime, HoldTime: cfg.HoldTime, KeepaliveInterval: cfg.KeepaliveInterval,
		Restarted: restarted, RestartWindow: startupHold, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	log.Info("BGP speaker", "routerID", RouterID(node), "addresses", listen, "asn", cfg.ASN, "port", cfg.Port,
		"routeReflector", cfg.RouteReflector, "nodeMesh", cfg.NodeMesh, "externalPeers", len(cfg.Peers), "edge", cfg.Edge,
		"restart", restarted)
	return &network{node: node, cfg: cfg, log: log, sp: sp, mtu: mtu, started: time.Now(), firstSeen: map[netip.Prefix]time.Time{}}, nil
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

func family(a netip.Addr) string { return familyName(a.Is6()) }

func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

func (nw *network) Publish(self *cluster.Lease) {
	self.ASN, self.RouteReflector = nw.cfg.ASN, nw.cfg.RouteReflector
}
func (nw *network) MTU() int                         { return nw.mtu }
func (nw *network) Ensure(ctx context.Context) error { return nil }
func (nw *network) Changes() <-chan struct{}         { return nw.sp.Changes() }
func (nw *network) Owned() backend.Owned             { return backend.Owned{CIDRs: nw.node.Network.CIDRs()} }

// Announce announces self's blocks (withdrawing the ones announced
// before, if they changed), sets the sessions for peers and what the
// external routers are sent.
func (nw *network) Announce(ctx context.Context, self cluster.Lease, peers []cluster.Lease) []backend.Problem {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var problems []backend.Problem
	fail := func(err error) { problems = append(problems, backend.Problem{Peer: "bgp", Err: err}) }
	nw.expect(peers)
	nw.announce(ctx, self.Subnets(), &problems)
	neighbors, more := nw.neighbors(peers)
	problems = append(problems, more...)
	if err := nw.sp.SetNeighbors(ctx, neighbors); err != nil {
		fail(err)
	}
	if err := nw.sp.SetExport(ctx, nw.exported(self, peers)); err != nil {
		fail(err)
	}
	return problems
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

// expect records when each peer's block was first expected.
func (nw *network) expect(peers []cluster.Lease) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	now := time.Now()
	leased := map[netip.Prefix]bool{}
	for _, p := range peers {
		for _, b := range p.Subnets() {
			leased[b] = true
			if _, ok := nw.firstSeen[b]; !ok {
				nw.firstSeen[b] = now
			}
		}
	}
	for b := range nw.firstSeen {
		if !leased[b] {
			delete(nw.firstSeen, b)
		}
	}
}

// exported is what the external routers are sent: this node's blocks,
// and on the cluster's edge every other node's too.
func (nw *network) exported(self cluster.Lease, peers []cluster.Lease) []netip.Prefix {
	out := self.Subnets()
	if nw.cfg.Edge {
		for _, p := range peers {
			out = append(out, p.Subnets()...)
		}
	}
	return out
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
				// One side of each session dials (see speaker.Neighbor.Passive):
				// a client dials its reflectors, which are there before it and
				// after it (so a restarted client is back as soon as it dials);
				// between equals, the lower address.
				n := speaker.Neighbor{Address: remote, ASN: asn, Name: p.NodeName, Passive: local.Compare(remote) > 0}
				switch {
				case nw.cfg.RouteReflector && !p.RouteReflector:
					n.RRClient, n.Passive = true, true
				case nw.cfg.RouteReflector:
					// reflectors peer plainly with each other
				case reflectors > 0:
					n.Passive = false // a client dials its reflector
				}
				out = append(out, n)
			}
		}
	}
	for _, e := range nw.cfg.Peers {
		name := e.Name
		if name == "" {
			name = "external"
		}
		out = append(out, speaker.Neighbor{Address: e.Address, ASN: e.ASN, Port: e.Port, Password: e.Password, Name: name, External: true})
	}
	return out, problems
}

// Routing reads what the speaker learned and its sessions. The sessions
// are read first: a session whose End-of-RIB they show has had all its
// paths put in the table before (GoBGP handles a peer's messages in
// order), so the paths read after hold them. Read the other way round,
// a restarted netd could see the End-of-RIB without the paths that came
// just before it, end its startup hold and remove routes it is about to
// learn (seen at 50 nodes: 18 routes deleted and added again).
func (nw *network) Routing(ctx context.Context) (backend.Routing, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r := backend.Routing{At: time.Now()}
	ss, err := nw.sp.Sessions(ctx)
	if err != nil {
		return r, fmt.Errorf("reading the BGP sessions: %w", err)
	}
	for _, s := range ss {
		// Received is everything the peer sent; Sessions splits it.
		r.Sessions = append(r.Sessions, backend.Session{Peer: s.Neighbor.Address.String(), Name: s.Neighbor.Name, ASN: s.Neighbor.ASN,
			Family: family(s.Neighbor.Address), External: s.Neighbor.External, State: s.State, Established: s.Established, Since: s.Since,
			Received: s.Received, Advertised: s.Advertised, EndOfRIB: s.EndOfRIB, Restarting: s.Restarting})
	}
	paths, err := nw.sp.Paths(ctx)
	if err != nil {
		return r, err
	}
	for _, p := range paths {
		r.Paths = append(r.Paths, backend.LearnedPath{Prefix: p.Prefix, NextHop: p.NextHop, From: p.From, Best: p.Best, Stale: p.Stale})
	}
	return r, nil
}

// Teardown removes the routes (netd leave). The speaker stops with netd.
func (Backend) Teardown(ctx context.Context, node backend.Node) error {
	return backend.RemoveRoutes(node.Network.CIDRs())
}
