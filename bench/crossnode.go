package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/netd"
	"github.com/berthnet/berth/test/testbed"
)

// Names of the cross-node figures. The modes compare with RawUnderlay,
// their IPv6 rows ("<mode> IPv6 (2 nodes)") with RawUnderlayV6.
const (
	RawUnderlay   = "raw underlay (2 nodes)"
	RawUnderlayV6 = "raw underlay IPv6 (2 nodes)"
	PlainVXLAN    = "plain vxlan device (2 nodes)"
	HandBuilt     = "hand-built containers (2 nodes)"
)

// CrossNodeModes are netd's modes, measured in this order, on the
// iptables datapath and then on the eBPF one.
var CrossNodeModes = []string{"vxlan", "hostgw", "bgp"}

// CrossNodeConfig says what to measure across two nodes of a test bed.
type CrossNodeConfig struct {
	Datapath DatapathConfig
	Progress func(format string, args ...any)
	BinDir   string   // berth's binaries: netd and the plugins
	RefDir   string   // the reference CNI plugins, searched after BinDir
	Modes    []string // default CrossNodeModes
}

// CrossNode measures container-to-container traffic from a container on
// node 1 to one on node 2 in each of netd's modes, over IPv4 and over
// IPv6 (each mode's network is dual-stack: the same two containers), and
// the limits they are compared with: the raw underlay between two machines on the same
// underlay bridge (no CNI, no rules) and a bare kernel VXLAN device on
// each of them (no berth), which says how much of the vxlan mode's gap
// is the kernel's encapsulation alone. A third, HandBuilt, is the
// routed-container topology built by hand (container veth, node bridge,
// a route to the peer's subnet; no CNI, no rules): on a test bed the
// underlay is software too, so every extra hop costs the same CPU as the
// "wire", and this says what any CNI could reach here.
//
// Each mode runs twice, on the iptables datapath and on the eBPF one
// (crossNets), so that every eBPF row has its iptables row from the same
// run. Everything lives in one test bed, the networks side by side (a netd
// per network and node, each with its own CIDR and bridge), so that the
// runs can be interleaved: on a shared machine the load of other
// processes drifts over minutes, and interleaving makes it weigh on
// every mode alike rather than on whichever ran at the wrong time.
func CrossNode(ctx context.Context, cfg CrossNodeConfig) (res []Datapath, err error) {
	if cfg.Progress == nil {
		cfg.Progress = func(string, ...any) {}
	}
	if cfg.Datapath.Progress == nil {
		cfg.Datapath.Progress = cfg.Progress
	}
	if len(cfg.Modes) == 0 {
		cfg.Modes = CrossNodeModes
	}
	if err := testbed.Sweep(); err != nil {
		cfg.Progress("cross-node: removing what earlier test beds left behind failed (going on): %v", err)
	}
	cfg.Progress("cross-node: test bed of 2 nodes and 2 plain hosts, etcd, netd in %v", cfg.Modes)
	tb, err := testbed.New(testbed.Options{Nodes: 2, BinDir: cfg.BinDir})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, tb.Close()) }()
	paths, hosts, err := underlayPaths(tb)
	if err != nil {
		return nil, err
	}
	hand, handCleanup, err := handBuilt(hosts)
	defer handCleanup()
	if err != nil {
		return nil, err
	}
	paths = append(paths, path{name: HandBuilt, baseline: RawUnderlay, e: hand})
	modes, cleanup, err := modePaths(ctx, tb, cfg)
	defer cleanup()
	if err != nil {
		return nil, err
	}
	return measureInterleaved(ctx, append(paths, modes...), cfg.Datapath)
}

// underlayPaths are the baselines: two plain hosts on the nodes'
// underlay bridge, talking directly (over IPv4 and over IPv6) and through
// a bare VXLAN device. It returns the hosts too.
func underlayPaths(tb *testbed.Testbed) ([]path, []*testbed.NetNS, error) {
	var hosts []*testbed.NetNS
	var ips []netip.Addr
	for i := 1; i <= 2; i++ {
		ip := netip.AddrFrom4([4]byte{192, 168, 50, byte(100 + i)})
		h, err := tb.AddHost(fmt.Sprintf("host%d", i), ip)
		if err != nil {
			return nil, nil, err
		}
		hosts, ips = append(hosts, h), append(ips, ip)
	}
	raw := Endpoints{Client: hosts[0].NetNS, Server: hosts[1].NetNS, ServerIP: ips[1].String()}
	raw6 := Endpoints{Client: hosts[0].NetNS, Server: hosts[1].NetNS, ServerIP: testbed.IPv6Of(ips[1]).String()}
	vx, err := plainVXLAN(hosts, ips)
	if err != nil {
		return nil, nil, err
	}
	return []path{{name: RawUnderlay, e: raw}, {name: RawUnderlayV6, e: raw6}, {name: PlainVXLAN, baseline: RawUnderlay, e: vx}}, hosts, nil
}

// handBuilt gives each plain host a bridge with a container behind it
// (veth, MTU as the underlay), forwarding on, and a route to the other
// host's container subnet via that host: hostgw's datapath without
// berth, its plugins or any firewall rule.
func handBuilt(hosts []*testbed.NetNS) (e Endpoints, cleanup func(), err error) {
	var ctrs []ns.NetNS
	cleanup = func() {
		for _, c := range ctrs {
			closeNS(c)
		}
	}
	subnet := func(i int) string { return fmt.Sprintf("10.252.%d.0/24", i+1) }
	for i, h := range hosts {
		c, err := testutils.NewNS()
		if err != nil {
			return e, cleanup, err
		}
		ctrs = append(ctrs, c)
		peer := fmt.Sprintf("192.168.50.%d", 100+2-i)
		err = h.Do(func() error { return handBuiltNode(c, i+1, subnet(1-i), peer) })
		if err != nil {
			return e, cleanup, fmt.Errorf("hand-built containers on host%d: %w", i+1, err)
		}
	}
	return Endpoints{Client: ctrs[0], Server: ctrs[1], ServerIP: "10.252.2.2"}, cleanup, nil
}

// handBuiltNode runs in host i's namespace: bridge hb0 = 10.252.i.1/24,
// container c = 10.252.i.2 behind it, the route to peerSubnet via peer.
func handBuiltNode(c ns.NetNS, i int, peerSubnet, peer string) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "hb0"}}
	if err := netlink.LinkAdd(br); err != nil {
		return err
	}
	if err := upWithAddr("hb0", fmt.Sprintf("10.252.%d.1/24", i)); err != nil {
		return err
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "hbv0", MasterIndex: br.Index}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(c.Fd()))}
	if err := netlink.LinkAdd(veth); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return err
	}
	_, dst, _ := net.ParseCIDR(peerSubnet)
	if err := netlink.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP(peer)}); err != nil {
		return err
	}
	// /proc/sys/net shows the namespace of the thread that opens it.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return err
	}
	return c.Do(func(ns.NetNS) error {
		if err := upWithAddr("eth0", fmt.Sprintf("10.252.%d.2/24", i)); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP(fmt.Sprintf("10.252.%d.1", i))})
	})
}

// crossNet is one network CrossNode runs on the nodes, side by side with
// the others: its own CIDRs, bridge and metrics port, and the flags that
// keep two networks of one mode apart (VNI, BGP port). The iptables
// networks are dual-stack; the eBPF ones IPv4 only (the eBPF datapath
// refuses IPv6).
type crossNet struct {
	name, mode   string
	ebpf         bool
	cidr, bridge string
	port         int
	args         []string
}

// crossNets are netd's modes on the iptables datapath, then on the eBPF
// one, in the order of the report.
var crossNets = []crossNet{
	{"vxlan (2 nodes)", "vxlan", false, "10.231.0.0/16,fd00:231::/56", "bvx0", 9491, nil},
	{"hostgw (2 nodes)", "hostgw", false, "10.232.0.0/16,fd00:232::/56", "bhg0", 9492, nil},
	{"bgp (2 nodes)", "bgp", false, "10.233.0.0/16,fd00:233::/56", "bbgp0", 9493, nil},
	{"vxlan, eBPF (2 nodes)", "vxlan", true, "10.234.0.0/16", "bvxe0", 9494, []string{"--vni", "2"}},
	{"hostgw, eBPF (2 nodes)", "hostgw", true, "10.235.0.0/16", "bhge0", 9495, nil},
	{"bgp, eBPF (2 nodes)", "bgp", true, "10.236.0.0/16", "bbgpe0", 9496, []string{"--bgp-port", "1790"}},
}

// modePaths starts a real etcd and, for each mode, netd on both nodes,
// waits until they are healthy, and attaches a container to each node
// through the conflist netd wrote. Each mode gives an IPv4 path and,
// after all of those, an IPv6 path between the same containers. cleanup
// detaches the containers.
func modePaths(ctx context.Context, tb *testbed.Testbed, cfg CrossNodeConfig) (paths []path, cleanup func(), err error) {
	var ctrs []*container
	cleanup = func() {
		for _, c := range ctrs {
			c.remove(ctx)
		}
	}
	etcd, err := tb.StartEtcd(ctx)
	if err != nil {
		return nil, cleanup, err
	}
	var nets []crossNet
	for _, mode := range cfg.Modes {
		if !slices.Contains(CrossNodeModes, mode) {
			return nil, cleanup, fmt.Errorf("cross-node: unknown mode %q", mode)
		}
	}
	for _, n := range crossNets {
		if slices.Contains(cfg.Modes, n.mode) {
			nets = append(nets, n)
		}
	}
	var daemons [][]*testbed.Netd
	for _, mn := range nets {
		network := "bench-" + mn.mode
		if mn.ebpf {
			network += "-ebpf"
		}
		opts := testbed.NetdOptions{Network: network, Etcd: []string{etcd.ClientURL}, MetricsPort: mn.port, EBPF: mn.ebpf,
			Args: append([]string{"--mode", mn.mode, "--network-cidr", mn.cidr, "--bridge", mn.bridge}, mn.args...)}
		var nds []*testbed.Netd
		for _, n := range tb.Nodes {
			nd, err := tb.StartNetd(ctx, n, opts)
			if err != nil {
				return nil, cleanup, err
			}
			nds = append(nds, nd)
		}
		daemons = append(daemons, nds)
	}
	var v6 []path
	for i, mn := range nets {
		var pair []*container
		for _, nd := range daemons[i] {
			if err := waitHealthy(ctx, nd, len(tb.Nodes)-1); err != nil {
				return nil, cleanup, err
			}
			c, err := attach(ctx, nd, []string{cfg.BinDir, cfg.RefDir})
			if c != nil {
				ctrs = append(ctrs, c)
				pair = append(pair, c)
			}
			if err != nil {
				return nil, cleanup, fmt.Errorf("cross-node %s: %w", mn.name, err)
			}
		}
		paths = append(paths, path{name: mn.name, baseline: RawUnderlay,
			e: Endpoints{Client: pair[0].netns, Server: pair[1].netns, ServerIP: pair[1].ip}})
		if mn.ebpf {
			continue
		}
		if err := waitAddr(ctx, pair[1].netns, pair[1].ip6); err != nil {
			return nil, cleanup, fmt.Errorf("cross-node %s IPv6: %w", mn.mode, err)
		}
		v6 = append(v6, path{name: mn.mode + " IPv6 (2 nodes)", baseline: RawUnderlayV6,
			e: Endpoints{Client: pair[0].netns, Server: pair[1].netns, ServerIP: pair[1].ip6}})
	}
	return append(paths, v6...), cleanup, nil
}

// waitAddr waits until ip can be bound in netns n: a fresh IPv6 address
// stays tentative while the kernel checks it is not a duplicate.
func waitAddr(ctx context.Context, n ns.NetNS, ip string) error {
	if ip == "" {
		return errors.New("the container has no IPv6 address: is the network dual-stack?")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := n.Do(func(ns.NetNS) error {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
			if err == nil {
				l.Close()
			}
			return err
		})
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// plainVXLAN gives each host a bare VXLAN device over eth0 with the
// other host as its only remote, as `ip link add type vxlan` would: the
// MTU netd uses (underlay minus 50), no bridge, no veth, no rules.
func plainVXLAN(hosts []*testbed.NetNS, ips []netip.Addr) (Endpoints, error) {
	const vni, port = 99, 4789
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 251, 0, byte(i + 1)}) }
	for i, h := range hosts {
		err := h.Do(func() error {
			eth, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			la := netlink.NewLinkAttrs()
			la.Name = "plainvx0"
			la.MTU = eth.Attrs().MTU - 50
			vx := &netlink.Vxlan{LinkAttrs: la, VxlanId: vni, Port: port, VtepDevIndex: eth.Attrs().Index,
				SrcAddr: ips[i].AsSlice(), Learning: false}
			if err := netlink.LinkAdd(vx); err != nil {
				return fmt.Errorf("creating plain vxlan device: %w", err)
			}
			// The all-zero FDB entry sends every frame to the peer.
			fdb := &netlink.Neigh{LinkIndex: vx.Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
				Flags: netlink.NTF_SELF, IP: ips[1-i].AsSlice(), HardwareAddr: net.HardwareAddr{0, 0, 0, 0, 0, 0}}
			if err := netlink.NeighAppend(fdb); err != nil {
				return fmt.Errorf("plain vxlan FDB entry: %w", err)
			}
			return upWithAddr(la.Name, netip.PrefixFrom(addr(i), 24).String())
		})
		if err != nil {
			return Endpoints{}, fmt.Errorf("%s: %w", h.Name, err)
		}
	}
	return Endpoints{Client: hosts[0].NetNS, Server: hosts[1].NetNS, ServerIP: addr(1).String()}, nil
}

// waitHealthy waits until netd connects its peers in the kernel and
// reports itself healthy (netd.Status.Healthy).
func waitHealthy(ctx context.Context, nd *testbed.Netd, peers int) error {
	if err := nd.WaitConverged(ctx, peers); err != nil {
		return err
	}
	return nd.Poll(ctx, time.Minute, "health", func() error {
		var st netd.Status
		if err := nd.Status(ctx, &st); err != nil {
			return err
		}
		if !st.Healthy() {
			return fmt.Errorf("not healthy: %+v", st)
		}
		return nil
	})
}

// attach runs the plugins of the conflist netd wrote on its node (CNI
// ADD) for a new container namespace, inside the node's namespace.
func attach(ctx context.Context, nd *testbed.Netd, binDirs []string) (*container, error) {
	list, err := libcni.ConfListFromFile(nd.ConflistPath())
	if err != nil {
		return nil, fmt.Errorf("reading the conflist netd wrote: %w", err)
	}
	net := cniNetwork{inNode: nd.Node.Do, list: list,
		cni: libcni.NewCNIConfigWithCacheDir(binDirs, filepath.Join(nd.Node.Dir, "cni-cache"), nil)}
	c, err := net.attach(ctx, "bench-"+nd.Node.Host)
	if err != nil {
		return c, fmt.Errorf("on %s: %w", nd.Node.Host, err)
	}
	return c, nil
}
