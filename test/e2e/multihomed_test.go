package e2e_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd/backend/vxlan"
	"github.com/berthnet/berth/test/testbed"
)

// TestVXLANMultiHomed: node1 has a second link (eth1, a macvlan: a kind
// an uplink has, which the VTEP guard trusts for peers' addresses) on the
// underlay segment besides netd's --iface (eth0), and its peers reach its node
// address through eth1 (their neighbour entry for it has eth1's MAC, as
// when both NICs answer ARP): the peers' VXLAN arrives on a link that is
// not the VTEP's. Containers reach each other across the nodes, over the
// IPv4 underlay and over an IPv6 one (iptables datapath only, as in
// TestVXLANInjection); node1's VTEP guard lets in exactly the peers'
// addresses, drops the same VXLAN from a host on the segment that is no
// peer, and follows a peer joining and leaving (while a ping between the
// others loses nothing, and the new peer's first pings arrive); an
// element added to its set by hand shows in netd status and goes with
// the next full pass (passes on a join or leave trust netd's record of
// the guard, as they do for routes). Datapath under test:
// BERTH_TEST_DATAPATH.
func TestVXLANMultiHomed(t *testing.T) { eachUnderlay(t, vxlanMultiHomed) }

// eachUnderlay runs test over an IPv4 underlay and over an IPv6 one
// (berth6.<vni>), the latter on the iptables datapath only: the eBPF
// datapath takes no IPv6 network, which the containers need to reach the
// nodes' IPv6 addresses.
func eachUnderlay(t *testing.T, test func(t *testing.T, v6 bool)) {
	for _, v6 := range []bool{false, true} {
		name := "ipv4 underlay"
		if v6 {
			name = "ipv6 underlay"
		}
		t.Run(name, func(t *testing.T) {
			if v6 && testenv.Datapath() == "ebpf" {
				t.Skip("the eBPF datapath takes no IPv6 network")
			}
			test(t, v6)
		})
	}
}

func vxlanMultiHomed(t *testing.T, v6 bool) {
	ctx := context.Background()
	tb := testbed.ForTest(t, testbed.Options{Nodes: 3})
	etcd, err := tb.StartEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	underlay := func(n *testbed.Node) netip.Addr {
		if v6 {
			return n.IPv6
		}
		return n.IP
	}
	node1, node2, node3 := tb.Node(1), tb.Node(2), tb.Node(3)
	mac, err := tb.AddLink(node1, "eth1", netip.MustParseAddr("192.168.50.101"))
	if err != nil {
		t.Fatal(err)
	}
	outsider, err := tb.AddHost("outsider", netip.MustParseAddr("192.168.50.77"))
	if err != nil {
		t.Fatal(err)
	}
	neigh := func(n *testbed.NetNS, of []netip.Addr, mac string) {
		t.Helper()
		for _, a := range of {
			if _, err := n.Run(ctx, "ip", "neigh", "replace", a.String(), "lladdr", mac, "dev", "eth0", "nud", "permanent"); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, n := range []*testbed.NetNS{node2.NetNS, node3.NetNS, outsider} {
		neigh(n, []netip.Addr{node1.IP, node1.IPv6}, mac.String())
	}
	// And node1 knows its peers' MACs on eth0: their answers to its
	// neighbour solicitations would go to eth1 (an IPv6 advertisement
	// follows the peer's neighbour entry), which resolves nothing on eth0.
	for _, n := range []*testbed.Node{node2, node3} {
		neigh(node1.NetNS, []netip.Addr{n.IP, n.IPv6}, linkMAC(t, n, "eth0").String())
	}

	// No full pass after the first (the test bed's default is every 2s):
	// the passes a lease change starts must keep the guard by themselves.
	opts := testbed.NetdOptions{Network: "pods", Etcd: []string{etcd.ClientURL}, Args: []string{"--mode", "vxlan"},
		EBPF: testenv.Datapath() == "ebpf", ResyncInterval: time.Hour}
	vtep := vxlan.VTEPName(1)
	if v6 {
		opts.Args = append(opts.Args, "--network-cidr", "10.244.0.0/16,fd00:244::/56")
		vtep = vxlan.VTEPNameV6(1)
	}
	c := &cluster{t: t, tb: tb, net: opts.Network, netd: map[int]*testbed.Netd{}}
	start := func(i int) {
		t.Helper()
		o := opts
		if n := tb.Node(i); v6 {
			o.Args = append([]string{"--node-ip", n.IPv6.String() + "," + n.IP.String()}, o.Args...)
		}
		if c.netd[i], err = tb.StartNetd(ctx, tb.Node(i), o); err != nil {
			t.Fatal(err)
		}
	}
	converged := func(peers int, nodes ...int) {
		t.Helper()
		for _, i := range nodes {
			if err := c.netd[i].WaitConverged(ctx, peers); err != nil {
				t.Fatal(err)
			}
		}
	}
	start(1)
	start(2)
	converged(1, 1, 2)
	v1, v2 := c.run(1, "v1"), c.run(2, "v2")

	rx := linkRx(t, node1, "eth1")
	matrix(t, []*container{v1, v2}, 7000)
	if got := linkRx(t, node1, "eth1") - rx; got < 2 {
		t.Fatalf("node1's eth1 received %d packets while the containers talked: node2's VXLAN does not take it", got)
	}
	wantPeers(t, node1, underlay(node2))

	t.Run("VXLAN from a host that is no peer is dropped on eth1", func(t *testing.T) {
		tun := vtepOf(t, node1, vtep)
		dst := netip.AddrPortFrom(underlay(node1), uint16(tun.port))
		got := listenUDP(t, v1.ns, netip.AddrPortFrom(v1.IP, 9100))
		forged := netip.MustParseAddr("1.2.3.4")
		for range 3 {
			if err := sendUDP(outsider.NetNS, dst, vxlanFrame(tun, forged, v1.IP, 9100, "from the outsider")); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case d := <-got:
			t.Fatalf("%s got %q from %s: the outsider's VXLAN to %s was decapsulated", v1, d.payload, d.from, dst)
		case <-time.After(time.Second):
		}
		if err := sendUDP(node2.NetNS.NetNS, dst, vxlanFrame(tun, forged, v1.IP, 9100, "from node2")); err != nil {
			t.Fatal(err)
		}
		select {
		case d := <-got:
			if d.payload != "from node2" {
				t.Errorf("%s got %q, want node2's", v1, d.payload)
			}
		case <-time.After(3 * time.Second):
			t.Errorf("%s got nothing of the VXLAN node2 sent to %s", v1, dst)
		}
	})

	t.Run("a peer joins and leaves: the guard follows, no ping is lost", func(t *testing.T) {
		done := make(chan string, 1)
		go func() {
			out, _ := v2.in("ping", "-n", "-q", "-i", "0.05", "-c", "300", "-W", "1", v1.IP.String())
			done <- out
		}()
		start(3)
		converged(2, 1, 2, 3)
		// The guard is written before the routes and FDB entries of the
		// pass that adds node3.
		wantPeers(t, node1, underlay(node2), underlay(node3))
		v3 := c.run(3, "v3")
		// The new peer's first packets, both ways.
		for _, pair := range [][2]*container{{v3, v1}, {v1, v3}} {
			if out, err := pair[0].in("ping", "-n", "-q", "-i", "0.05", "-c", "20", "-W", "1", pair[1].IP.String()); err != nil || !strings.Contains(out, " 0% packet loss") {
				t.Errorf("%s -> %s: %v\n%s", pair[0], pair[1], err, out)
			}
		}
		leave(t, c.netd[3])
		if err := eventually(10*time.Second, func() error {
			return samePeers(t, node1, underlay(node2))
		}); err != nil {
			t.Error(err)
		}
		out := <-done
		if !strings.Contains(out, " 0% packet loss") {
			t.Errorf("%s -> %s while node3 joined and left:\n%s", v2, v1, out)
		}
		for l := range strings.Lines(out) {
			if strings.Contains(l, "packets transmitted") {
				t.Logf("%s -> %s while node3 joined and left: %s", v2, v1, strings.TrimSpace(l))
			}
		}
	})

	t.Run("an element added by hand shows in netd status and goes with the next full pass", func(t *testing.T) {
		stray := netip.MustParseAddr("10.9.9.9")
		if v6 {
			stray = netip.MustParseAddr("fd00:99::9")
		}
		if err := node1.Do(func() error {
			c, _ := nftables.New()
			set := &nftables.Set{Table: guardTable, Name: firewall.GuardSet("pods", v6)}
			if err := c.SetAddElements(set, []nftables.SetElement{{Key: stray.AsSlice()}}); err != nil {
				return err
			}
			return c.Flush()
		}); err != nil {
			t.Fatal(err)
		}
		var s struct {
			KernelMatches bool     `json:"kernelMatches"`
			Pending       []string `json:"pending"`
		}
		if err := c.netd[1].Status(ctx, &s); err != nil {
			t.Fatal(err)
		}
		if want := "peers " + stray.String() + " no longer let in"; s.KernelMatches || !slices.ContainsFunc(s.Pending, func(p string) bool { return strings.HasSuffix(p, want) }) {
			t.Errorf("netd status: kernel matches %v, pending %q; want %q pending", s.KernelMatches, s.Pending, want)
		}
		// netd's first pass is a full one; kill -9 leaves its lease and
		// datapath in place, as a crash would.
		if err := c.netd[1].Kill(); err != nil {
			t.Fatal(err)
		}
		if err := c.netd[1].Restart(ctx); err != nil {
			t.Fatal(err)
		}
		converged(1, 1)
		wantPeers(t, node1, underlay(node2))
	})

	matrix(t, []*container{v1, v2}, 7010)
}

// linkRx is how many packets link name of node n has received.
func linkRx(t *testing.T, n *testbed.Node, name string) uint64 {
	t.Helper()
	var rx uint64
	if err := n.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err == nil {
			rx = l.Attrs().Statistics.RxPackets
		}
		return err
	}); err != nil {
		t.Fatalf("%s %s: %v", n.Host, name, err)
	}
	return rx
}

// linkMAC is the MAC of link name of node n.
func linkMAC(t *testing.T, n *testbed.Node, name string) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	if err := n.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err == nil {
			mac = l.Attrs().HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatalf("%s %s: %v", n.Host, name, err)
	}
	return mac
}

// wantPeers fails t unless node n's VTEP guard of network pods lets in
// exactly peers.
func wantPeers(t *testing.T, n *testbed.Node, peers ...netip.Addr) {
	t.Helper()
	if err := samePeers(t, n, peers...); err != nil {
		t.Error(err)
	}
}

func samePeers(t *testing.T, n *testbed.Node, peers ...netip.Addr) error {
	t.Helper()
	var s firewall.VTEPGuardState
	if err := n.Do(func() (err error) { s, err = firewall.ReadVTEPGuard("pods"); return err }); err != nil {
		t.Fatalf("%s: %v", n.Host, err)
	}
	slices.SortFunc(peers, netip.Addr.Compare)
	if !s.Exists() || !slices.Equal(s.Peers, peers) {
		return fmt.Errorf("%s's VTEP guard lets in %v (chain %q), want %v", n.Host, s.Peers, s.Rules, peers)
	}
	return nil
}
