// Package backend is how netd connects its node to the other nodes of a
// network. Each mode is a Backend in its own package (vxlan, hostgw); it
// registers the network on this node (creating any device it needs) and
// then, given the peers, describes the kernel state it wants. The one
// reconcile loop in netd compares that with the kernel and changes only
// what differs, through Diff and Apply here, and only what netd owns:
// routes marked with RouteProtocol inside the network's CIDR, and the
// addresses, neighbours and FDB entries of the backend's own links.
package backend

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/conf"
)

// RouteProtocol is the routing protocol number (rtm_protocol) on every
// route netd installs; `ip route show proto 73` lists them. It is not in
// iproute2's table of assigned numbers, so no routing daemon uses it.
const RouteProtocol netlink.RouteProtocol = 73

// Node is this node as a backend sees it.
type Node struct {
	Name    string
	IP      netip.Addr   // address on the underlay, what peers send to
	Link    netlink.Link // underlay interface holding IP
	Network *conf.Network
	BGP     BGP // bgp mode only
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
	RestartTime   time.Duration
}

// BGPPeer is an external router.
type BGPPeer struct {
	Address  netip.Addr
	ASN      uint32
	Password string // TCP MD5
}

// Peer is another node of the network, from its lease.
type Peer struct {
	Name           string
	IP             netip.Addr // its node IP
	Subnet         netip.Prefix
	VTEPMAC        net.HardwareAddr // vxlan
	ASN            uint32           // bgp
	RouteReflector bool             // bgp
}

// Attrs is what this node publishes about its datapath in its lease.
type Attrs struct {
	VTEPMAC        net.HardwareAddr
	VNI            int
	ASN            uint32 // bgp
	RouteReflector bool   // bgp
}

// Notifier is a Network whose desired state also changes on its own (BGP
// learns and loses routes): netd reconciles when Changes is signalled.
type Notifier interface {
	Changes() <-chan struct{}
}

// SessionLister is a Network with routing sessions to report (BGP).
type SessionLister interface {
	Sessions(ctx context.Context) ([]Session, error)
}

// Session is one routing session, for status and metrics.
type Session struct {
	Peer        string    `json:"peer"`
	Name        string    `json:"name"` // node name, or "external"
	ASN         uint32    `json:"asn"`
	State       string    `json:"state"`
	Established bool      `json:"established"`
	Since       time.Time `json:"since,omitzero"`
	Received    uint64    `json:"received"`
	Advertised  uint64    `json:"advertised"`
}

// Backend is one mode of connecting nodes.
type Backend interface {
	// Register prepares the node for the network (e.g. creates the VTEP;
	// an existing one with the right settings is kept, so a restart does
	// not disturb traffic).
	Register(ctx context.Context, node Node) (Network, error)
	// Teardown removes everything the backend made for node's network,
	// registered or not (netd leave runs without a registered network).
	Teardown(ctx context.Context, node Node) error
}

// Network is a backend registered on this node.
type Network interface {
	// Attrs are published in this node's lease.
	Attrs() Attrs
	// MTU is the MTU for container interfaces.
	MTU() int
	// Ensure re-creates node-local devices that went missing (a VTEP
	// deleted by hand). It is cheap when nothing is missing.
	Ensure(ctx context.Context) error
	// Desired is the kernel state that connects self (this node's
	// subnet) to peers, and the peers it cannot connect, with why.
	Desired(self netip.Prefix, peers []Peer) (State, []Problem)
	// Owned is the part of the kernel Desired describes completely.
	Owned() Owned
}

// Problem is a peer a backend cannot connect.
type Problem struct {
	Peer string
	Err  error
}

// Owned is the part of the kernel one network's reconcile owns: what is
// there and not desired is removed.
type Owned struct {
	// CIDR: routes with RouteProtocol whose destination is inside it.
	CIDR netip.Prefix
	// Links (indexes): their IPv4 addresses, neighbours and FDB entries.
	Links []int
}

// State is kernel state a backend wants.
type State struct {
	Addrs  []netlink.Addr  // on owned links
	Neighs []netlink.Neigh // IPv4 neighbours on owned links
	FDB    []netlink.Neigh // forwarding entries of owned links (AF_BRIDGE)
	Routes []netlink.Route // RouteProtocol is set by Diff
}

// IPNet converts p to the form netlink takes.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Underlay describes how this node reaches ip: directly on its underlay
// link (same L2 segment), or through a router.
func Underlay(node Node, ip netip.Addr) (direct bool, via string, err error) {
	routes, err := netlink.RouteGet(ip.AsSlice())
	if err != nil {
		return false, "", fmt.Errorf("looking up the route to %s: %w", ip, err)
	}
	if len(routes) == 0 {
		return false, "", fmt.Errorf("no route to %s", ip)
	}
	r := routes[0]
	// The name is only for messages. Looking it up costs a netlink round
	// trip, once per peer and pass: skip it for the node's own link.
	dev := node.Link.Attrs().Name
	if r.LinkIndex != node.Link.Attrs().Index {
		dev = fmt.Sprintf("link %d", r.LinkIndex)
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
	}
	if r.Gw != nil {
		return false, fmt.Sprintf("via %s dev %s", r.Gw, dev), nil
	}
	if r.LinkIndex != node.Link.Attrs().Index {
		return false, "dev " + dev, nil
	}
	return true, "dev " + dev, nil
}

// RemoveRoutes removes every route netd made for the network of cidr.
func RemoveRoutes(cidr netip.Prefix) error {
	changes, err := Diff(Owned{CIDR: cidr}, State{})
	if err != nil {
		return err
	}
	return Apply(changes)
}

// SortProblems orders problems by peer, for stable status output.
func SortProblems(p []Problem) {
	sort.Slice(p, func(i, j int) bool { return p[i].Peer < p[j].Peer })
}

// Describe renders a route the way `ip route` does, for logs and status.
func Describe(r *netlink.Route) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", r.Dst)
	if r.Gw != nil {
		fmt.Fprintf(&b, " via %s", r.Gw)
	}
	fmt.Fprintf(&b, " dev %s", linkName(r.LinkIndex))
	if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
		b.WriteString(" onlink")
	}
	return b.String()
}

func linkName(index int) string {
	if l, err := netlink.LinkByIndex(index); err == nil {
		return l.Attrs().Name
	}
	return fmt.Sprintf("if%d", index)
}
