// Package testbed builds a cluster of berth nodes on one machine, inside
// network namespaces it creates, and tears it down again:
//
//	underlay netns:  bridge br0 = segment 192.168.50.0/24 and fd00:50::/64
//	                 (address .250 and ::250, etcd lives here)
//	                 bridge br1 = segment 192.168.60.0/24 and fd00:60::/64 (only with a router)
//	router netns:    192.168.50.254 and fd00:50::254 on br0, 192.168.60.254 and
//	                 fd00:60::254 on br1, forwarding on for both families
//	node<N> netns:   eth0 = 192.168.50.N/24 and fd00:50::N/64 (or on segment 2),
//	                 a veth into its segment's bridge, default routes via the
//	                 router (or the underlay)
//
// The IPv6 address of an underlay host is its IPv4 one's last number
// written after the segment's prefix: 192.168.60.3 is fd00:60::3 (IPv6Of).
//
// Each node has its own directories (lease, CNI conf, IPAM data, state) so
// that several netd and CNI plugins run side by side. Processes (etcd,
// netd, ...) run inside the namespaces and are stopped by PID.
//
// Everything the test bed makes on the machine is named with the prefix
// "berthtb-<pid>x<random>-": namespaces in /run/netns and temporary
// directories. Sweep removes what a crashed earlier run left behind.
// Nothing here changes the machine's own network namespace.
package testbed

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/testenv"
)

// Prefix starts the name of every namespace and directory a test bed makes.
const Prefix = "berthtb-"

// Addresses of the underlay. Node N is .N on its segment.
var (
	Segment1 = netip.MustParsePrefix("192.168.50.0/24")
	Segment2 = netip.MustParsePrefix("192.168.60.0/24")
	// UnderlayIP is the underlay's own address on segment 1; etcd listens here.
	UnderlayIP = netip.MustParseAddr("192.168.50.250")
	// RouterIP1 and RouterIP2 are the router's addresses on the segments.
	RouterIP1 = netip.MustParseAddr("192.168.50.254")
	RouterIP2 = netip.MustParseAddr("192.168.60.254")

	// The same for IPv6.
	Segment1V6 = netip.MustParsePrefix("fd00:50::/64")
	Segment2V6 = netip.MustParsePrefix("fd00:60::/64")
)

// IPv6Of is the IPv6 address of the underlay host whose IPv4 address is
// ip: fd00:<third number>::<fourth number>, the numbers written as they
// read in decimal (192.168.50.12 is fd00:50::12). The zero Addr for an
// address off the underlay.
func IPv6Of(ip netip.Addr) netip.Addr {
	if !Segment1.Contains(ip) && !Segment2.Contains(ip) {
		return netip.Addr{}
	}
	b := ip.As4()
	return netip.MustParseAddr(fmt.Sprintf("fd00:%d::%d", b[2], b[3]))
}

// Options shape the test bed.
type Options struct {
	// Nodes is how many node namespaces to create (0..200).
	Nodes int
	// Segment2 lists nodes (1-based) that sit on the second segment,
	// 192.168.60.0/24, reachable from the first only through the router.
	Segment2 []int
	// Router adds the router namespace even when no node is on segment 2.
	Router bool
	// BinDir holds berth's binaries (netd, runner, the plugins); default
	// testenv.FindBinDir: $BERTH_BIN_DIR, else <repo>/bin.
	BinDir string
}

// Testbed is one cluster on this machine.
type Testbed struct {
	ID       string // berthtb-<pid>x<random>, prefix of every name it makes
	Dir      string // temporary directory holding every node's directories and the logs
	BinDir   string // berth's binaries
	Underlay *NetNS
	Router   *NetNS // nil without a router
	Nodes    []*Node

	mu         sync.Mutex
	procs      []*Process
	namespaces []*NetNS
	runners    []*Runner
	closed     bool
}

// Node is one node of the cluster: a namespace with eth0 on the underlay.
type Node struct {
	*NetNS
	Index   int          // 1-based
	Host    string       // node1, node2, ...: use as the node name
	IP      netip.Addr   // eth0's address
	Prefix  netip.Prefix // eth0's address with its segment length
	IPv6    netip.Addr   // eth0's IPv6 address (IPv6Of(IP)), on a /64
	Iface   string       // "eth0"
	Segment int          // 1 or 2
	Gateway netip.Addr   // default route

	Dir         string // this node's directory; the ones below are inside it
	LeaseDir    string // node lease files (netd writes, plugins read)
	CNIConfDir  string // conflists netd writes
	IPAMDataDir string // berth-ipam's data
	StateDir    string // plugin and daemon state

	runner *Runner
}

// New builds a test bed. On error everything made so far is removed.
func New(opts Options) (tb *Testbed, err error) {
	if opts.Nodes < 0 || opts.Nodes > 200 {
		return nil, fmt.Errorf("testbed: Nodes %d is outside 0..200", opts.Nodes)
	}
	for _, i := range opts.Segment2 {
		if i < 1 || i > opts.Nodes {
			return nil, fmt.Errorf("testbed: Segment2 names node %d, there are %d nodes", i, opts.Nodes)
		}
	}
	var rnd [3]byte
	rand.Read(rnd[:])
	tb = &Testbed{ID: fmt.Sprintf("%s%dx%s", Prefix, os.Getpid(), hex.EncodeToString(rnd[:])), BinDir: opts.BinDir}
	if tb.BinDir == "" {
		tb.BinDir = testenv.FindBinDir()
	}
	defer func() {
		if err != nil {
			tb.Close()
			tb = nil
		}
	}()
	if tb.Dir, err = os.MkdirTemp("", tb.ID+"-"); err != nil {
		return tb, fmt.Errorf("testbed: %w", err)
	}
	if err = tb.buildUnderlay(opts.Router || len(opts.Segment2) > 0); err != nil {
		return tb, err
	}
	for i := 1; i <= opts.Nodes; i++ {
		seg := 1
		if slices.Contains(opts.Segment2, i) {
			seg = 2
		}
		if err = tb.addNode(i, seg); err != nil {
			return tb, err
		}
	}
	return tb, nil
}

// ForTest builds a test bed for t and removes it when t ends, pass or
// fail; when t failed it first logs the tail of every process's log. It
// skips t unless it runs as root, and sweeps leftovers of crashed runs.
func ForTest(t testing.TB, opts Options) *Testbed {
	t.Helper()
	testenv.RequireRoot(t)
	if err := Sweep(); err != nil {
		t.Logf("sweeping leftovers of earlier test beds: %v", err)
	}
	tb, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			tb.logTails(t)
		}
		if err := tb.Close(); err != nil {
			t.Errorf("removing test bed: %v", err)
		}
	})
	return tb
}

func (tb *Testbed) logTails(t testing.TB) {
	tb.mu.Lock()
	procs := slices.Clone(tb.procs)
	tb.mu.Unlock()
	seen := map[string]bool{}
	for _, p := range procs {
		if seen[p.LogPath] {
			continue
		}
		seen[p.LogPath] = true
		lines := strings.Split(strings.TrimRight(p.Log(), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("--- last lines of %s:\n%s", p.LogPath, strings.Join(lines, "\n"))
	}
}

// Close removes the containers of every node's runner, stops every
// process the test bed started (SIGKILL, by PID), deletes its namespaces
// (their links go with them) and its directory. It is safe to call more
// than once.
func (tb *Testbed) Close() error {
	tb.mu.Lock()
	if tb.closed {
		tb.mu.Unlock()
		return nil
	}
	tb.closed = true
	procs, namespaces, runners := tb.procs, tb.namespaces, tb.runners
	tb.mu.Unlock()

	var errs []error
	// In the node's namespace, while it exists: the runner detaches
	// containers only from the node that attached them.
	for _, r := range runners {
		if err := r.RemoveAll(context.Background()); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range procs {
		if err := p.Kill(); err != nil {
			errs = append(errs, err)
		}
	}
	// What a failed RemoveAll left: container processes, their cgroups
	// and pinned namespaces.
	if err := RemoveCgroupTree("/" + tb.ID); err != nil {
		errs = append(errs, err)
	}
	if tb.Dir != "" {
		if err := releaseMounts(tb.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range slices.Backward(namespaces) {
		n.Close()
		if err := deleteNetNS(n.Name); err != nil {
			errs = append(errs, err)
		}
	}
	if tb.Dir != "" {
		if err := os.RemoveAll(tb.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (tb *Testbed) newNS(role string) (*NetNS, error) {
	n, err := newNetNS(tb, tb.ID+"-"+role)
	if err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	tb.mu.Lock()
	tb.namespaces = append(tb.namespaces, n)
	tb.mu.Unlock()
	return n, nil
}

// Bridge names in the underlay, per segment.
const (
	bridge1 = "br0"
	bridge2 = "br1"
)

func (tb *Testbed) buildUnderlay(router bool) error {
	var err error
	if tb.Underlay, err = tb.newNS("underlay"); err != nil {
		return err
	}
	err = tb.Underlay.Do(func() error {
		for _, br := range []string{bridge1, bridge2} {
			la := netlink.NewLinkAttrs()
			la.Name = br
			if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
				return fmt.Errorf("creating bridge %s: %w", br, err)
			}
			if err := noDAD(br); err != nil {
				return err
			}
			if err := linkUp(br); err != nil {
				return err
			}
		}
		if err := addAddr(bridge1, netip.PrefixFrom(UnderlayIP, Segment1.Bits())); err != nil {
			return err
		}
		return addAddr(bridge1, netip.PrefixFrom(IPv6Of(UnderlayIP), Segment1V6.Bits()))
	})
	if err != nil {
		return fmt.Errorf("testbed: underlay: %w", err)
	}
	if !router {
		return nil
	}
	if tb.Router, err = tb.newNS("router"); err != nil {
		return err
	}
	for _, leg := range []struct {
		iface, port, bridge string
		addr                netip.Addr
		seg                 netip.Prefix
	}{
		{"eth0", "r0", bridge1, RouterIP1, Segment1},
		{"eth1", "r1", bridge2, RouterIP2, Segment2},
	} {
		if err := tb.plug(tb.Router, leg.iface, leg.port, leg.bridge, netip.PrefixFrom(leg.addr, leg.seg.Bits())); err != nil {
			return fmt.Errorf("testbed: router: %w", err)
		}
	}
	err = tb.Router.Do(func() error {
		// /proc/sys/net shows the namespace of the thread that opens it.
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return err
		}
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644)
	})
	if err != nil {
		return fmt.Errorf("testbed: router: enabling forwarding: %w", err)
	}
	// etcd on the underlay answers nodes on segment 2 through the router.
	err = tb.Underlay.Do(func() error {
		if err := addRoute(Segment2, RouterIP1); err != nil {
			return err
		}
		return addRoute(Segment2V6, IPv6Of(RouterIP1))
	})
	if err != nil {
		return fmt.Errorf("testbed: underlay: route to segment 2: %w", err)
	}
	return nil
}

func (tb *Testbed) addNode(i, seg int) error {
	host := fmt.Sprintf("node%d", i)
	n, err := tb.newNS(host)
	if err != nil {
		return err
	}
	node := &Node{NetNS: n, Index: i, Host: host, Iface: "eth0", Segment: seg}
	subnet, bridge, gw := Segment1, bridge1, UnderlayIP
	if tb.Router != nil {
		gw = RouterIP1
	}
	if seg == 2 {
		subnet, bridge, gw = Segment2, bridge2, RouterIP2
	}
	node.IP = nthAddr(subnet, i)
	node.Prefix = netip.PrefixFrom(node.IP, subnet.Bits())
	node.IPv6 = IPv6Of(node.IP)
	node.Gateway = gw
	if err := tb.plug(n, node.Iface, "n"+fmt.Sprint(i), bridge, node.Prefix); err != nil {
		return fmt.Errorf("testbed: %s: %w", host, err)
	}
	if err := n.Do(func() error {
		if err := addRoute(netip.Prefix{}, gw); err != nil {
			return err
		}
		return addRoute(netip.PrefixFrom(netip.IPv6Unspecified(), 0), IPv6Of(gw))
	}); err != nil {
		return fmt.Errorf("testbed: %s: default route: %w", host, err)
	}
	node.Dir = filepath.Join(tb.Dir, host)
	node.LeaseDir = filepath.Join(node.Dir, "lease")
	node.CNIConfDir = filepath.Join(node.Dir, "net.d")
	node.IPAMDataDir = filepath.Join(node.Dir, "ipam")
	node.StateDir = filepath.Join(node.Dir, "state")
	for _, d := range []string{node.LeaseDir, node.CNIConfDir, node.IPAMDataDir, node.StateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("testbed: %s: %w", host, err)
		}
	}
	tb.Nodes = append(tb.Nodes, node)
	return nil
}

// AddHost adds a machine on the underlay that is not a node, e.g. a
// server outside the cluster: a namespace named role with eth0 = ip (and
// IPv6Of(ip)) on the segment holding ip, its default routes via the
// router when there is one. It has no route to the cluster network, so it sees cluster traffic
// only as masqueraded to a node's address.
func (tb *Testbed) AddHost(role string, ip netip.Addr) (*NetNS, error) {
	seg, bridge := Segment1, bridge1
	if Segment2.Contains(ip) {
		seg, bridge = Segment2, bridge2
	}
	if !seg.Contains(ip) {
		return nil, fmt.Errorf("testbed: host %s: %s is on neither %s nor %s", role, ip, Segment1, Segment2)
	}
	n, err := tb.newNS(role)
	if err != nil {
		return nil, err
	}
	b := ip.As4()
	if err := tb.plug(n, "eth0", fmt.Sprintf("h%d-%d", b[2], b[3]), bridge, netip.PrefixFrom(ip, seg.Bits())); err != nil {
		return nil, fmt.Errorf("testbed: host %s: %w", role, err)
	}
	if tb.Router != nil {
		gw := RouterIP1
		if seg == Segment2 {
			gw = RouterIP2
		}
		if err := n.Do(func() error {
			if err := addRoute(netip.Prefix{}, gw); err != nil {
				return err
			}
			return addRoute(netip.PrefixFrom(netip.IPv6Unspecified(), 0), IPv6Of(gw))
		}); err != nil {
			return nil, fmt.Errorf("testbed: host %s: default route: %w", role, err)
		}
	}
	return n, nil
}

// AddLink gives node n a second link into its segment's bridge, a
// multi-homed node's second NIC: a macvlan named iface with address ip
// (and IPv6Of(ip)) on the segment, on a veth "u<iface>" without an
// address plugged into the bridge. A macvlan, not the veth, holds the
// address so that packets arrive on a link of a kind an uplink has (the
// VTEP guard does not trust peers' addresses on veths, which containers
// sit behind). It returns the macvlan's MAC, for a peer that is to reach
// the node through it (a neighbour entry of the node's address with that
// MAC, as when both NICs answer ARP for it).
func (tb *Testbed) AddLink(n *Node, iface string, ip netip.Addr) (net.HardwareAddr, error) {
	seg, bridge := Segment1, bridge1
	if n.Segment == 2 {
		seg, bridge = Segment2, bridge2
	}
	if !seg.Contains(ip) {
		return nil, fmt.Errorf("testbed: %s %s: %s is not on its segment %s", n.Host, iface, ip, seg)
	}
	lower := "u" + iface
	if err := tb.plug(n.NetNS, lower, fmt.Sprintf("n%d%s", n.Index, iface), bridge, netip.Prefix{}); err != nil {
		return nil, fmt.Errorf("testbed: %s: %w", n.Host, err)
	}
	var mac net.HardwareAddr
	err := n.Do(func() error {
		low, err := netlink.LinkByName(lower)
		if err != nil {
			return err
		}
		la := netlink.NewLinkAttrs()
		la.Name, la.ParentIndex = iface, low.Attrs().Index
		if err := netlink.LinkAdd(&netlink.Macvlan{LinkAttrs: la, Mode: netlink.MACVLAN_MODE_BRIDGE}); err != nil {
			return fmt.Errorf("creating macvlan %s on %s: %w", iface, lower, err)
		}
		addr := netip.PrefixFrom(ip, seg.Bits())
		if err := addAddr(iface, addr); err != nil {
			return err
		}
		if err := addAddr(iface, netip.PrefixFrom(IPv6Of(ip), 64)); err != nil {
			return err
		}
		if err := noDAD(iface); err != nil {
			return err
		}
		if err := linkUp(iface); err != nil {
			return err
		}
		l, err := netlink.LinkByName(iface)
		if err == nil {
			mac = l.Attrs().HardwareAddr
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("testbed: %s: %w", n.Host, err)
	}
	return mac, nil
}

// Node returns node i (1-based).
func (tb *Testbed) Node(i int) *Node { return tb.Nodes[i-1] }

// plug connects namespace n to an underlay bridge: a veth named iface in
// n with address addr (and its IPv6 twin, IPv6Of, on a /64; none if addr
// is the zero prefix), its peer port enslaved to bridge. The veth is made
// inside n with its peer created directly in the underlay, so it never
// appears in the machine's own namespace.
func (tb *Testbed) plug(n *NetNS, iface, port, bridge string, addr netip.Prefix) error {
	err := n.Do(func() error {
		la := netlink.NewLinkAttrs()
		la.Name = iface
		veth := &netlink.Veth{LinkAttrs: la, PeerName: port, PeerNamespace: netlink.NsFd(int(tb.Underlay.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("creating veth %s: %w", iface, err)
		}
		if !addr.IsValid() {
			return linkUp(iface)
		}
		if err := addAddr(iface, addr); err != nil {
			return err
		}
		if err := addAddr(iface, netip.PrefixFrom(IPv6Of(addr.Addr()), 64)); err != nil {
			return err
		}
		if err := noDAD(iface); err != nil {
			return err
		}
		return linkUp(iface)
	})
	if err != nil {
		return err
	}
	return tb.Underlay.Do(func() error {
		l, err := netlink.LinkByName(port)
		if err != nil {
			return err
		}
		br, err := netlink.LinkByName(bridge)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("adding %s to %s: %w", port, bridge, err)
		}
		return netlink.LinkSetUp(l)
	})
}

// noDAD turns duplicate address detection off on link name, before it
// comes up: its IPv6 link-local address would otherwise stay tentative
// for a second or two, and a router cannot resolve neighbours meanwhile.
// The test bed's addresses are unique by construction. Run it inside the
// link's namespace (/proc/sys/net shows the calling thread's).
func noDAD(name string) error {
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/accept_dad", []byte("0"), 0o644); err != nil {
		return fmt.Errorf("turning DAD off on %s: %w", name, err)
	}
	return nil
}

func linkUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up: %w", name, err)
	}
	return nil
}

func addAddr(name string, p netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(p.String())
	if err != nil {
		return err
	}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD // usable at once: the test bed's addresses are unique
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return fmt.Errorf("adding %s to %s: %w", p, name, err)
	}
	return nil
}

// addRoute adds a route to dst (the IPv4 default route when dst is the
// zero prefix) via gw.
func addRoute(dst netip.Prefix, gw netip.Addr) error {
	r := &netlink.Route{Gw: gw.AsSlice()}
	if dst.IsValid() {
		r.Dst = &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}
	}
	if err := netlink.RouteAdd(r); err != nil {
		return fmt.Errorf("adding route to %v via %s: %w", dst, gw, err)
	}
	return nil
}

// nthAddr is the i-th address of IPv4 prefix p (p's network address is the 0th).
func nthAddr(p netip.Prefix, i int) netip.Addr {
	b := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(b[:]) + uint32(i)
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// waitFor polls cond every 100ms until it returns nil or timeout passes,
// and returns cond's last error.
func waitFor(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
