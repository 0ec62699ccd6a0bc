// Package backend is how netd connects its node to the other nodes of a
// network. Each mode is a Backend in its own package (vxlan, hostgw,
// bgp); it registers the network on this node, creates any device it
// needs (Ensure) and then, given the peers' leases, describes the kernel state it
// wants (Desired: computes, changes nothing). The one reconcile loop in
// netd reads the kernel (Read, or its cache of it), compares it with that
// (Diff, pure) and changes only what differs (Apply), and only what netd
// owns: routes marked with RouteProtocol inside the network's CIDR, and
// the addresses, neighbours and FDB entries of the backend's own links.
// A backend with routing-protocol state (bgp) makes it match in Announce,
// which the loop calls in the same apply step.
package backend

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sort"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/netd/cluster"
)

// RouteProtocol is the routing protocol number (rtm_protocol) on every
// route netd installs; `ip route show proto 73` lists them. It is not in
// iproute2's table of assigned numbers, so no routing daemon uses it.
const RouteProtocol netlink.RouteProtocol = 73

// Node is this node as a backend sees it.
type Node struct {
	Name string
	// IP and IPv6 are the node's addresses on the underlay, what peers
	// send to; either may be zero (an IPv6-only or IPv4-only underlay).
	IP   netip.Addr
	IPv6 netip.Addr
	// PreferIPv6: the node's first address is its IPv6 one (--node-ip
	// fd00:50::3,192.168.50.3, or an underlay without IPv4): VXLAN runs
	// over the IPv6 underlay.
	PreferIPv6 bool
	Link       netlink.Link // underlay interface holding the addresses
	Network    *conf.Network
	BGP        BGP // bgp mode only
}

// Addr is the node's underlay address of a family (zero: none).
func (n Node) Addr(v6 bool) netip.Addr {
	if v6 {
		return n.IPv6
	}
	return n.IP
}

// BGP is this node's configuration of the bgp backend.
type BGP struct {
	ASN            uint32 // this node's AS (default 64512: one iBGP cluster)
	Port           int    // TCP port of every speaker (default 179)
	RouteReflector bool   // reflect routes to the nodes that are not reflectors
	// NodeMesh peers with the other nodes (a full mesh, or the reflectors
	// when there are some); off when external routers carry the routes.
	NodeMesh      bool
	Peers         []BGPPeer // external routers (BIRD, FRR, ToR switches)
	AcceptForeign bool      // also install prefixes outside the cluster CIDR
	// Edge announces every node's block to the external routers (this
	// node is the cluster's edge); otherwise only this node's own.
	Edge        bool
	RestartTime time.Duration
	// HoldTime and KeepaliveInterval are proposed to every peer.
	HoldTime          time.Duration
	KeepaliveInterval time.Duration
}

// BGPPeer is an external router.
type BGPPeer struct {
	Address  netip.Addr
	ASN      uint32
	Port     int    // 0: the node's BGP port
	Password string // TCP MD5
	Name     string // for status and logs; default "external"
}

// Notifier is a Network whose desired state also changes on its own (BGP
// learns and loses routes): netd reconciles when Changes is signalled.
type Notifier interface {
	Changes() <-chan struct{}
}

// RoutingReader is a Network with a routing protocol (bgp) whose state
// is an input of Desired, read like the kernel before each computation.
type RoutingReader interface {
	Routing(ctx context.Context) (Routing, error)
}

// Routing is what a routing protocol knows at one moment.
type Routing struct {
	At       time.Time // when it was read
	Paths    []LearnedPath
	Sessions []Session
}

// LearnedPath is one path a peer offered (several may share a prefix).
type LearnedPath struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
	From    netip.Addr // the peer that sent it
	Best    bool       // the protocol's own choice among the prefix's paths
	Stale   bool       // kept while its peer restarts (graceful restart)
}

// SessionLister is a Network with routing sessions to report (BGP). It
// only computes, from in.Routing, like Desired.
type SessionLister interface {
	Sessions(in Input) []Session
}

// Tunneler is a Network whose overlay the eBPF datapath can encapsulate
// itself (vxlan over an IPv4 underlay). The peers' tunnels come from
// Desired's state: each neighbour on the VTEP (a peer subnet's next hop)
// and the FDB entry of its MAC (the peer's node address).
type Tunneler interface {
	// Tunnel describes the VTEP; false when the datapath cannot
	// encapsulate for it (an IPv6 underlay, no VTEP yet).
	Tunnel() (Tunnel, bool)
}

// Guarded is a Network with a tunnel socket on the node that no
// container may send to (vxlan: the VTEP's UDP port, which decapsulates
// whatever reaches it) and that in.Peers send to. Guard only computes
// from in.Peers, like Desired; the reconcile loop applies it
// (firewall.EnsureVTEPGuard) before the state Desired describes, and
// Teardown removes it.
type Guarded interface {
	Guard(in Input) firewall.VTEPGuard
}

// Tunnel is a VTEP as the eBPF datapath encapsulates for it.
type Tunnel struct {
	VTEP     int        // ifindex
	Underlay int        // ifindex of the VTEP's device
	Local    netip.Addr // the node's underlay address it sends from
	VNI      int
	Port     int // UDP destination port
	// MAC is the VTEP's own, the inner destination of what peers send
	// it: the programs decapsulate only frames addressed to it.
	MAC cluster.MAC
}

// Session is one routing session, for status and metrics. The counts are
// FRR's: prefixes, not End-of-RIB markers or paths looping through this
// node's AS.
type Session struct {
	Peer string `json:"peer"`
	Name string `json:"name"` // node name, or the external router's name ("external")
	// Family is what the session carries, "IPv4" or "IPv6" unicast (one
	// session per family: its counts are that family's prefixes).
	Family      string    `json:"family,omitempty"`
	ASN         uint32    `json:"asn"`
	External    bool      `json:"external,omitempty"`
	State       string    `json:"state"`
	Established bool      `json:"established"`
	Since       time.Time `json:"since,omitzero"`       // established since, or down since
	Received    uint64    `json:"received"`             // prefixes the peer announces inside the import policy
	Filtered    uint64    `json:"filtered,omitempty"`   // and outside it (foreign prefixes, a default route)
	Accepted    uint64    `json:"accepted"`             // of the received, the ones netd installs
	Advertised  uint64    `json:"advertised"`           // prefixes sent to the peer
	EndOfRIB    bool      `json:"endOfRIB,omitempty"`   // it sent all its routes (marked only with graceful restart)
	Restarting  bool      `json:"restarting,omitempty"` // down, its routes kept for its graceful restart
	// Problem says what is wrong and what to check; Pending that it may
	// still resolve by itself (a session coming up).
	Problem string `json:"problem,omitempty"`
	Pending bool   `json:"pending,omitempty"`
}

// Backend is one mode of connecting nodes.
type Backend interface {
	// Register checks that the network fits the node and prepares what
	// the lease publishes, without creating devices (bgp starts its
	// speaker here); Network.Ensure creates them.
	Register(ctx context.Context, node Node) (Network, error)
	// Teardown removes everything the backend made for node's network,
	// registered or not (netd leave runs without a registered network).
	Teardown(ctx context.Context, node Node) error
}

// Network is a backend registered on this node.
type Network interface {
	// Publish fills in what this node's lease tells the other nodes
	// about its datapath (vxlan: VTEP MAC and VNI; bgp: AS and reflector
	// role).
	Publish(self *cluster.Lease)
	// MTU is the MTU for container interfaces.
	MTU() int
	// Ensure creates the node-local devices (the VTEP) or re-creates
	// those that went missing (deleted by hand); an existing one with the
	// right settings is kept, so a restart does not disturb traffic. It
	// is cheap when nothing is missing. netd calls it while it leases
	// its subnet, and in every full pass.
	Ensure(ctx context.Context) error
	// Desired is the kernel state that connects in.Self to in.Peers,
	// and the peers it cannot connect, with why. It only computes: it
	// changes nothing, and reads nothing of the kernel but in.
	Desired(in Input) (State, []Problem)
	// Owned is the part of the kernel Desired describes completely.
	Owned() Owned
}

// Input is what a Network's Desired computes from.
type Input struct {
	Self  cluster.Lease   // this node's lease (zero Subnet before it has one)
	Peers []cluster.Lease // the other nodes, vetted
	// Underlay says how this node's kernel routes to an address on the
	// underlay (see Underlay, which caches the kernel's answers).
	Underlay func(netip.Addr) (Path, error)
	// Kernel is the owned part of the kernel as it is now.
	Kernel State
	// Routing is the routing protocol's state (RoutingReader), if any.
	Routing Routing
}

// Announcer is a Network with routing-protocol state besides the kernel
// (bgp: the announced block and the sessions). The reconcile loop calls
// Announce in its apply step, before it computes Desired; nothing else
// does, so that reading the state (netd status) never changes it.
type Announcer interface {
	// Announce makes the protocol's state match self and peers, and
	// returns the peers it could not set up, with why.
	Announce(ctx context.Context, self cluster.Lease, peers []cluster.Lease) []Problem
}

// Problem is something status shows: a peer a backend cannot connect,
// or a route it would not install.
type Problem struct {
	Peer string // a node name, or what else it is about ("bgp peer 192.168.50.254", "route ...")
	Err  error
	Kind ProblemKind
}

// ProblemKind says how a problem is logged.
type ProblemKind uint8

const (
	// Unreachable: the peer cannot be connected (logged as an error).
	Unreachable ProblemKind = iota
	// Pending: not connected yet, and it may resolve by itself (a
	// session coming up); logged as information.
	Pending
	// Refused: a route a peer offered is not installed (a hijack or a
	// misconfigured router); logged once as a warning and counted.
	Refused
)

// Owned is the part of the kernel one network's reconcile owns: what is
// there and not desired is removed.
type Owned struct {
	// CIDRs (the network's, of each family): routes with RouteProtocol
	// whose destination is inside one of them.
	CIDRs []netip.Prefix
	// Links (indexes): their addresses (but IPv6 link-local ones),
	// neighbours and FDB entries.
	Links []int
}

// State is kernel state: what a backend wants, or what Read found.
type State struct {
	Addrs  []netlink.Addr  // on owned links
	Neighs []netlink.Neigh // neighbours on owned links
	FDB    []netlink.Neigh // forwarding entries of owned links (AF_BRIDGE)
	Routes []netlink.Route // RouteProtocol and the main table are set by Diff
	// Links names the links (by index), for messages; Read fills it.
	Links map[int]string
}

// IPNet converts p to the form netlink takes.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// UnreachableMetric is the metric of a network's unreachable routes
// (UnreachableRoutes): the last resort, so that a route someone else puts to
// the whole network CIDR wins over it. The routes to node subnets win by
// their longer prefix.
const UnreachableMetric = math.MaxUint32

// UnreachableRoutes are, per CIDR (family) of an overlay or host-gw network,
//
//	unreachable <network CIDR> proto 73 metric 4294967295
//
// which takes what no more specific route does: an address of a subnet no
// node holds, or of a peer whose lease expired and whose route netd
// removed. Without it such a packet would follow the node's default route
// and leave the node unencapsulated, with a container's address, to the
// gateway; with it the kernel answers the sender at once with ICMP
// unreachable (connect: EHOSTUNREACH or ENETUNREACH). Not for bgp: there
// a node may reach other blocks through its default gateway, a router
// that learned them over BGP and sends the nodes only a default route.
func UnreachableRoutes(cidrs []netip.Prefix) []netlink.Route {
	var out []netlink.Route
	for _, cidr := range cidrs {
		out = append(out, netlink.Route{Dst: IPNet(cidr), Type: unix.RTN_UNREACHABLE, Priority: UnreachableMetric})
	}
	return out
}

// UnderlayMTU is the container MTU of a routed network (hostgw, bgp):
// the network's, which must fit in the underlay's, else the underlay's.
// A network with IPv6 needs at least IPv6's minimum of 1280.
func UnderlayMTU(node Node) (int, error) {
	n, link := node.Network, node.Link.Attrs()
	mtu := link.MTU
	if n.MTU != 0 {
		if n.MTU > mtu {
			return 0, fmt.Errorf("network %s: mtu %d is larger than the underlay %s's MTU %d", n.Name, n.MTU, link.Name, mtu)
		}
		mtu = n.MTU
	}
	if n.CIDRv6.IsValid() && mtu < conf.MinMTUv6 {
		return 0, fmt.Errorf("network %s: MTU %d (underlay %s) is below IPv6's minimum of %d", n.Name, mtu, link.Name, conf.MinMTUv6)
	}
	return mtu, nil
}

// RemoveRoutes removes every route netd made for the network of cidrs.
func RemoveRoutes(cidrs []netip.Prefix) error {
	have, err := Read(Owned{CIDRs: cidrs})
	if err != nil {
		return err
	}
	_, err = Apply(Diff(have, State{}))
	return err
}

// SortProblems orders problems by peer, for stable status output.
func SortProblems(p []Problem) {
	sort.Slice(p, func(i, j int) bool { return p[i].Peer < p[j].Peer })
}
