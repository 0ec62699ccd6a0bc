package e2e_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd"
	"github.com/berthnet/berth/test/testbed"
)

// Two nodes on the eBPF datapath in each mode: the containers' traffic
// across nodes leaves through the FIB's device and arrives straight in
// the container (the programs' counters say so), a flow the client's node
// translated (a service address) gets its replies translated back, and
// `netd leave` removes the programs and pins. TestConnectivity and
// TestSegments run on this datapath too (BERTH_TEST_DATAPATH=ebpf).
func TestEBPFCrossNode(t *testing.T) {
	for _, mode := range []string{"vxlan", "hostgw", "bgp"} {
		t.Run(mode, func(t *testing.T) { ebpfCrossNode(t, mode) })
	}
}

func ebpfCrossNode(t *testing.T, mode string) {
	ctx := context.Background()
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	etcd, err := tb.StartEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := startNetwork(t, tb, testbed.NetdOptions{Network: "pods", Etcd: []string{etcd.ClientURL},
		Args: []string{"--mode", mode}, EBPF: true}, 1, 2)
	ctrs := []*container{c.run(1, "n1a"), c.run(1, "n1b"), c.run(2, "n2a")}
	fp := map[int]*fastpath.Network{}
	for i := 1; i <= 2; i++ {
		n, err := fastpath.OpenExisting(tb.Node(i).BPFFSDir(), "pods")
		if err != nil || n == nil {
			t.Fatalf("node%d: the network's pins: %v %v", i, n, err)
		}
		defer n.Close()
		fp[i] = n
	}

	t.Run("netd status names the eBPF datapath", func(t *testing.T) {
		var s netd.Status
		if err := c.netd[1].Status(ctx, &s); err != nil || s.Datapath != "ebpf" {
			t.Errorf("node1's status: datapath %q (%v), want ebpf", s.Datapath, err)
		}
	})

	t.Run("netd status compares the eBPF maps", func(t *testing.T) {
		statusSeesMaps(t, c.netd[1], fp[1])
	})

	t.Run("the first packet to a node whose MAC is unknown goes through", func(t *testing.T) {
		// No warm-up: the first connection between the containers must
		// succeed (TCP: ICMP takes the kernel's path). In hostgw and bgp
		// mode the nodes first forget each other's MAC, so that the first
		// packet meets no neighbour entry (the FIB lookup says NO_NEIGH)
		// and the kernel resolves it (bpf_redirect_neigh) instead of the
		// packet being dropped. In vxlan mode netd keeps the VTEPs'
		// neighbours permanent.
		ctrs[2].serve(t, 6990)
		server := ctrs[2].IP.String() + ":6990"
		if mode == "vxlan" {
			if _, err := ctrs[0].dial(server); err != nil {
				t.Fatalf("%s -> %s: %v", ctrs[0], server, err)
			}
			return
		}
		// Every connection must succeed. In bgp mode a keepalive may
		// resolve the MAC again between the removal and the connection
		// (every 3 s, a 100 ms window): then it did not test the unknown
		// neighbour, and it is tried again.
		for try := 1; ; try++ {
			forgetNeighbour(t, tb.Node(1), tb.Node(2))
			forgetNeighbour(t, tb.Node(2), tb.Node(1))
			s0, _ := fp[1].Stats()
			if _, err := ctrs[0].dial(server); err != nil {
				t.Fatalf("%s -> %s (try %d): %v", ctrs[0], server, try, err)
			}
			s, _ := fp[1].Stats()
			if s.Neigh > s0.Neigh {
				return
			}
			if try == 3 {
				t.Fatalf("node1: %+v then %+v: the first packet never met an unknown neighbour", s0, s)
			}
		}
	})
	before := [3]fastpath.Stats{}
	for i := 1; i <= 2; i++ {
		before[i], _ = fp[i].Stats()
	}
	matrix(t, ctrs, 7000)
	t.Run("the fast path carried it", func(t *testing.T) {
		var after [3]fastpath.Stats
		for i := 1; i <= 2; i++ {
			after[i], _ = fp[i].Stats()
		}
		// Four connections between the nodes, each with packets both
		// ways; two between n1a and n1b. (The pings take the kernel's
		// path.)
		for i := 1; i <= 2; i++ {
			sent := after[i].FIB + after[i].Neigh - before[i].FIB - before[i].Neigh
			if sent < 12 || after[i].Arrived-before[i].Arrived < 12 {
				t.Errorf("node%d: %+v then %+v: want packets sent to and arrived from the other node", i, before[i], after[i])
			}
		}
		if after[1].Local-before[1].Local < 4 {
			t.Errorf("node1: %+v then %+v: want local deliveries", before[1], after[1])
		}
		// In vxlan mode the programs encapsulate and decapsulate
		// themselves; the VTEP is their fallback.
		for i := 1; i <= 2 && mode == "vxlan"; i++ {
			if after[i].Encapsulated-before[i].Encapsulated < 12 || after[i].Decapsulated-before[i].Decapsulated < 12 {
				t.Errorf("node%d: %+v then %+v: want packets encapsulated and decapsulated by the programs", i, before[i], after[i])
			}
		}
		// Scraped after the counters were read: late packets of the
		// connections (their last ACKs) may have arrived since.
		m, err := c.netd[2].Metrics(ctx)
		const metric = `berth_netd_fastpath_packets_total{network="pods",path="arrived"} `
		var scraped uint64
		if i := strings.Index(m, metric); i >= 0 {
			fmt.Sscan(m[i+len(metric):], &scraped)
		}
		if scraped < after[2].Arrived || scraped > after[2].Arrived+50 {
			t.Errorf("node2's metric %s= %d (%v), want about the counter's %d", metric, scraped, err, after[2].Arrived)
		}
	})

	if mode == "vxlan" {
		t.Run("the programs' VXLAN packets and the VTEP's are one protocol", func(t *testing.T) {
			vxlanInterop(t, ctx, fp, ctrs)
		})
		t.Run("VXLAN from an address that is no peer node is left to the VTEP", func(t *testing.T) {
			vxlanStranger(t, fp, tb.Node(2).IP, ctrs)
		})
		t.Run("a container forwards what arrived encapsulated whole", func(t *testing.T) {
			forwardDecapsulated(t, fp[2], ctrs[0], ctrs[2])
		})
		t.Run("a VTEP that is down is no tunnel for the programs", func(t *testing.T) {
			vtepDown(t, tb.Node(1), fp[1], ctrs)
		})
	}

	t.Run("a service on the client's node gets its replies translated back", func(t *testing.T) {
		// As kube-proxy would: node2 translates a service address to n1a.
		// n1a answers n2a directly; only node2's conntrack can turn the
		// answer's source back into the service address.
		const vip = "10.96.0.10"
		server, client := ctrs[0], ctrs[2]
		server.serve(t, 7100)
		rule := []string{"-t", "nat", "-I", "PREROUTING", "-d", vip + "/32", "-p", "tcp", "--dport", "80",
			"-j", "DNAT", "--to-destination", server.IP.String() + ":7100"}
		if out, err := tb.Node(2).Run(ctx, "iptables", rule...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		s0, _ := fp[2].Stats()
		if seen, err := client.dial(vip + ":80"); err != nil || seen != client.IP.String() {
			t.Errorf("%s -> service %s -> %s: server saw %q (%v)", client, vip, server, seen, err)
		}
		if s, _ := fp[2].Stats(); s.Translated == s0.Translated {
			t.Errorf("node2: %+v then %+v: the replies were not left to the kernel", s0, s)
		}
		// A DNAT rule without a protocol translates pings too; only the
		// kernel can give the echo reply the service's address back.
		const vipAny = "10.96.0.11"
		rule = []string{"-t", "nat", "-I", "PREROUTING", "-d", vipAny + "/32",
			"-j", "DNAT", "--to-destination", server.IP.String()}
		if out, err := tb.Node(2).Run(ctx, "iptables", rule...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		out, err := client.in("ping", "-c", "1", "-W", "3", vipAny)
		if err != nil || !strings.Contains(out, "from "+vipAny+":") {
			t.Errorf("%s pings %s (-> %s): %v\n%s", client, vipAny, server, err, out)
		}
	})

	t.Run("large packets through a node link smaller than the containers' MTU", func(t *testing.T) {
		// node1's link (and the underlay's port to it) shrinks to 1400
		// after netd sized the containers for 1500 (1450 in vxlan mode);
		// gso_max_size makes eth0 cut large packets in software, as a
		// link carries them. Segments too big for it must be answered
		// (hostgw, bgp: the kernel's ICMP "fragmentation needed") or
		// fragmented (vxlan: the VTEP, as the outer DF is clear), not
		// sent on whole to be dropped at the link.
		node := tb.Node(1)
		port := "n" + strconv.Itoa(node.Index)
		run := func(n *testbed.NetNS, args ...string) {
			t.Helper()
			if out, err := n.Run(ctx, args[0], args[1:]...); err != nil {
				t.Fatalf("%v: %v: %s", args, err, out)
			}
		}
		run(tb.Underlay, "ip", "link", "set", port, "mtu", "1400")
		run(node.NetNS, "ip", "link", "set", node.Iface, "mtu", "1400", "gso_max_size", "1400")
		defer func() {
			run(node.NetNS, "ip", "link", "set", node.Iface, "mtu", "1500", "gso_max_size", "65536")
			run(tb.Underlay, "ip", "link", "set", port, "mtu", "1500")
		}()
		client, server := ctrs[0], ctrs[2]
		addr := server.IP.String() + ":7200"
		echoCount(t, server.ns, addr)
		const size = 4 << 20
		drops := func() int {
			t.Helper()
			out, err := tb.Underlay.Run(ctx, "ip", "-j", "-s", "link", "show", port)
			var links []struct {
				Stats64 struct{ RX struct{ Dropped int } } `json:"stats64"`
			}
			if err != nil || json.Unmarshal(out, &links) != nil || len(links) != 1 {
				t.Fatalf("ip -s link show %s: %v: %s", port, err, out)
			}
			return links[0].Stats64.RX.Dropped
		}
		d0 := drops()
		got, err := send(client.ns, addr, size)
		if err != nil || got != strconv.Itoa(size) {
			t.Errorf("%s -> %s: the server read %q of %d bytes (%v)", client, server, got, size, err)
		}
		// hostgw and bgp recover from drops (a packet the kernel's path
		// took taught the client the path MTU), but none may happen.
		if d := drops() - d0; d > 0 {
			t.Errorf("%d frames too big for %s were dropped there", d, port)
		}
	})

	t.Run("netd puts back an uplink program removed by hand", func(t *testing.T) {
		n := tb.Node(1)
		progs := tcxPrograms(t, n, n.Iface)
		if len(progs) != 1 || !strings.HasPrefix(progs[0], "from_uplink") {
			t.Fatalf("programs on %s: %v, want from_uplink", n.Iface, progs)
		}
		detachUplinks(t, n)
		err := eventually(10*time.Second, func() error {
			if progs := tcxPrograms(t, n, n.Iface); len(progs) != 1 {
				return fmt.Errorf("programs on %s: %v", n.Iface, progs)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})

	t.Run("netd makes removed pins anew and moves the containers onto them", func(t *testing.T) {
		// Left on the older maps, which netd's new from_uplink does not
		// read, node1's containers would get node2's packets through the
		// kernel's path while their replies skip conntrack: a rule that
		// drops invalid packets, as kube-proxy has, would cut them off.
		n := tb.Node(1)
		drop := []string{"FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"}
		if out, err := n.Run(ctx, "iptables", append([]string{"-I"}, drop...)...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		defer n.Run(ctx, "iptables", append([]string{"-D"}, drop...)...)
		if err := os.RemoveAll(fastpath.Dir(n.BPFFSDir(), "pods")); err != nil {
			t.Fatal(err)
		}
		err := eventually(10*time.Second, func() error {
			pins, err := fastpath.OpenExisting(n.BPFFSDir(), "pods")
			if err != nil || pins == nil {
				return fmt.Errorf("node1's pins: %v %v", pins, err)
			}
			defer pins.Close()
			for _, ctr := range ctrs[:2] {
				if _, ok, err := pins.Endpoint(ctr.IP); !ok || err != nil {
					return fmt.Errorf("%s is not in the new pins (%v)", ctr, err)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		pins, err := fastpath.OpenExisting(n.BPFFSDir(), "pods")
		if err != nil || pins == nil {
			t.Fatalf("node1's pins: %v %v", pins, err)
		}
		defer pins.Close()
		ctrs[0].serve(t, 7400)
		ctrs[2].serve(t, 7400)
		// netd attaches the new from_uplink (in vxlan mode on the VTEP
		// too) in a pass after the one that moved the containers; until
		// then node2's packets arrive through the older set. Every
		// connection must succeed meanwhile.
		err = eventually(10*time.Second, func() error {
			s0, _ := pins.Stats()
			for _, p := range [][2]*container{{ctrs[2], ctrs[0]}, {ctrs[0], ctrs[2]}} {
				if _, err := p[0].dial(p[1].IP.String() + ":7400"); err != nil {
					t.Errorf("%s -> %s: %v", p[0], p[1], err)
				}
			}
			if s, _ := pins.Stats(); s.Arrived == s0.Arrived || s.FIB+s.Neigh == s0.FIB+s0.Neigh {
				return fmt.Errorf("node1: %+v then %+v: the connections did not take the new pins' programs both ways", s0, s)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})

	t.Run("netd follows pins made anew by a plugin", func(t *testing.T) {
		// Someone cleans the BPF filesystem; the next ADD pins new maps
		// and programs. netd must configure those and move from_uplink
		// to them, or the new container gets nothing from the fast path.
		n := tb.Node(1)
		if err := os.RemoveAll(fastpath.Dir(n.BPFFSDir(), "pods")); err != nil {
			t.Fatal(err)
		}
		fresh := c.run(1, "n1c")
		pins, err := fastpath.OpenExisting(n.BPFFSDir(), "pods")
		if err != nil || pins == nil {
			t.Fatalf("node1: the pins the ADD made: %v %v", pins, err)
		}
		defer pins.Close()
		err = eventually(10*time.Second, func() error {
			cfg, err := pins.Config()
			if err != nil {
				return err
			}
			if !cfg.Netd || !cfg.Local.IsValid() {
				return fmt.Errorf("config of the new pins: %+v, want netd's", cfg)
			}
			err = n.Do(func() error {
				l, err := netlink.LinkByName(n.Iface)
				if err != nil {
					return err
				}
				if ok, err := pins.UplinkCurrent(l.Attrs().Index); !ok || err != nil {
					return fmt.Errorf("the new from_uplink is not on %s (%v)", n.Iface, err)
				}
				return nil
			})
			if err != nil {
				return err
			}
			if progs := tcxPrograms(t, n, n.Iface); len(progs) != 1 {
				return fmt.Errorf("programs on %s: %v, want only the new from_uplink", n.Iface, progs)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		fresh.serve(t, 7300)
		s0, _ := pins.Stats()
		if _, err := ctrs[2].dial(fresh.IP.String() + ":7300"); err != nil {
			t.Fatalf("%s -> %s: %v", ctrs[2], fresh, err)
		}
		if s, _ := pins.Stats(); s.Arrived == s0.Arrived {
			t.Errorf("node1: %+v then %+v: the connection did not arrive through the new pins", s0, s)
		}
	})

	t.Run("netd leave removes the programs and pins", func(t *testing.T) {
		d := c.netd[2]
		leave(t, d)
		if _, err := os.Stat(filepath.Join(d.Node.BPFFSDir(), "berth", "pods")); !os.IsNotExist(err) {
			t.Errorf("the network's pins survived leave: %v", err)
		}
		if progs := tcxPrograms(t, d.Node, d.Node.Iface); len(progs) != 0 {
			t.Errorf("programs left on %s: %v", d.Node.Iface, progs)
		}
	})
}

// forgetNeighbour removes node peer's entry from node n's neighbour table
// (ARP), as when n has not talked to peer for a while.
func forgetNeighbour(t *testing.T, n, peer *testbed.Node) {
	t.Helper()
	out, err := n.Run(context.Background(), "ip", "neigh", "show", peer.IP.String(), "dev", n.Iface)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(out)) == "" {
		return
	}
	if _, err := n.Run(context.Background(), "ip", "neigh", "del", peer.IP.String(), "dev", n.Iface); err != nil {
		t.Fatal(err)
	}
}

// onTCXIngress calls f for each program on the TCX ingress of dev on node
// n, with dev's index.
func onTCXIngress(t *testing.T, n *testbed.Node, dev string, f func(ifindex int, id ebpf.ProgramID, p *ebpf.Program) error) {
	t.Helper()
	err := n.Do(func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		return testenv.TCXIngress(l.Attrs().Index, func(id ebpf.ProgramID, p *ebpf.Program) error { return f(l.Attrs().Index, id, p) })
	})
	if err != nil {
		t.Fatal(err)
	}
}

// tcxPrograms names the programs on the TCX ingress of dev on node n.
func tcxPrograms(t *testing.T, n *testbed.Node, dev string) []string {
	t.Helper()
	var names []string
	err := n.Do(func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		names, err = testenv.TCXIngressNames(l.Attrs().Index)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// detachUplinks removes every program from the TCX ingress of node n's
// uplink, as an operator's mistake would.
func detachUplinks(t *testing.T, n *testbed.Node) {
	t.Helper()
	onTCXIngress(t, n, n.Iface, func(ifindex int, _ ebpf.ProgramID, p *ebpf.Program) error {
		return link.RawDetachProgram(link.RawDetachProgramOptions{Target: ifindex, Program: p, Attach: ebpf.AttachTCXIngress})
	})
}

// A container's published port reached through the node's address from
// containers (same node, other node) on the eBPF datapath, with
// masquerade off (--ip-masq=false, as where container addresses are
// routed, e.g. BGP): nothing but the node's DNAT touches the connection,
// so the server sees the client's own address and answers it directly,
// and only the node that translated the connection can turn the answer
// back. The programs must leave that answer to the kernel (counted as
// translated), on the server's node, also when the client is on
// another node.
func TestEBPFPublishedPortFromContainers(t *testing.T) {
	ctx := context.Background()
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	etcd, err := tb.StartEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := startNetwork(t, tb, testbed.NetdOptions{Network: "pods", Etcd: []string{etcd.ClientURL},
		Args: []string{"--mode", "hostgw", "--ip-masq=false"}, EBPF: true}, 1, 2)
	web := c.run(1, "web", "-p", "8080:7200", "--", "sleep", "86400")
	web.serve(t, 7200)
	fp, err := fastpath.OpenExisting(web.Node.BPFFSDir(), "pods")
	if err != nil || fp == nil {
		t.Fatalf("node1: the network's pins: %v %v", fp, err)
	}
	defer fp.Close()
	addr := web.Node.IP.String() + ":8080"
	for _, client := range []*container{c.run(2, "far"), c.run(1, "near")} {
		t.Run("from "+client.String(), func(t *testing.T) {
			s0, _ := fp.Stats()
			seen, err := client.dial(addr)
			if err != nil {
				t.Fatalf("%s -> %s: %v", client, addr, err)
			}
			// On the same node berth's hairpin masquerade applies: the
			// answers go to the gateway.
			if client.Node == web.Node {
				return
			}
			if seen != client.IP.String() {
				t.Errorf("%s -> %s: server saw %s, want the client's own address", client, addr, seen)
			}
			if s, _ := fp.Stats(); s.Translated == s0.Translated {
				t.Errorf("node1: %+v then %+v: the answers were not left to the kernel", s0, s)
			}
		})
	}
}

// vxlanInterop turns node2's encapsulation off (its VTEP then sends and
// receives, as on a node of an earlier berth): node1's programs must
// still reach node2's container through node2's VTEP, and what node2's
// VTEP sends must reach node1's container. The VTEP's packets carry a
// UDP checksum that no device verified on this bed (veths), so node1's
// VTEP takes them, not its programs. netd turns node2's encapsulation on
// again at its next pass; a try that pass overtook is made again.
func vxlanInterop(t *testing.T, ctx context.Context, fp map[int]*fastpath.Network, ctrs []*container) {
	server := ctrs[2].IP.String() + ":7050"
	ctrs[2].serve(t, 7050)
	for try := 1; ; try++ {
		if err := fp[2].ConfigureVXLAN(fastpath.VXLAN{}); err != nil {
			t.Fatal(err)
		}
		s1, _ := fp[1].Stats()
		s2, _ := fp[2].Stats()
		if _, err := ctrs[0].dial(server); err != nil {
			t.Fatalf("%s -> %s with node2's VTEP: %v", ctrs[0], server, err)
		}
		a1, _ := fp[1].Stats()
		a2, _ := fp[2].Stats()
		if a2.Decapsulated == s2.Decapsulated && a2.Encapsulated == s2.Encapsulated {
			if a1.Encapsulated == s1.Encapsulated || a1.Decapsulated != s1.Decapsulated || a2.Arrived == s2.Arrived {
				t.Fatalf("node1 %+v then %+v, node2 %+v then %+v: want node1's programs to encapsulate, node1's and node2's VTEPs to decapsulate",
					s1, a1, s2, a2)
			}
			return
		}
		if try == 3 {
			t.Fatalf("netd turned node2's encapsulation on again during each of 3 connections")
		}
	}
}

// forwardDecapsulated makes router (on node2) a router, as a container
// running containers or a VM of its own is: it translates port 7300 to a
// namespace behind it, through a veth that takes one segment at a time
// (gso_max_size 1500), so that the kernel must cut the large packets that
// arrive into segments again. The data must arrive whole, and the large
// packets must have come through node2's VTEP: a packet the programs
// decapsulate keeps the encapsulation's GSO type (bpf_skb_adjust_room
// cannot clear it), which a VM's tap device refuses.
func forwardDecapsulated(t *testing.T, fp *fastpath.Network, client, router *container) {
	behind, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { behind.Close(); testutils.UnmountNS(behind) })
	err = router.ns.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "fwd0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(behind.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		// Not gso_max_segs: a decapsulated packet's segment count is
		// zero until it is segmented.
		if err := netlink.LinkSetGSOMaxSize(veth, 1500); err != nil {
			return err
		}
		a, _ := netlink.ParseAddr("10.99.0.1/30")
		if err := netlink.AddrAdd(veth, a); err != nil {
			return err
		}
		// /proc/sys/net shows the namespace of the thread that opens it.
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return err
		}
		return netlink.LinkSetUp(veth)
	})
	if err != nil {
		t.Fatalf("router %s: %v", router, err)
	}
	if out, err := router.in("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "7300",
		"-j", "DNAT", "--to-destination", "10.99.0.2:7300"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	err = behind.Do(func(ns.NetNS) error {
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr("10.99.0.2/30")
		if err := netlink.AddrAdd(eth, a); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(eth); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP("10.99.0.1")})
	})
	if err != nil {
		t.Fatalf("behind %s: %v", router, err)
	}
	echoCount(t, behind, "10.99.0.2:7300")
	// The subtest before turned node2's encapsulation off; netd turns it
	// on again at its next pass.
	err = eventually(10*time.Second, func() error {
		if v, err := fp.VXLAN(); err != nil || v.VTEP == 0 {
			return fmt.Errorf("node2's VXLAN config %+v (%v): want netd's", v, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s0, _ := fp.Stats()
	const size = 16 << 20
	got, err := send(client.ns, router.IP.String()+":7300", size)
	if err != nil || got != strconv.Itoa(size) {
		t.Fatalf("%s -> %s:7300 -> behind it: the server counted %q bytes (%v), want %d", client, router, got, err, size)
	}
	// 16 MiB in GSO packets of up to 64 KiB: 256 or more. The programs
	// decapsulate the packets of one segment themselves (the handshake,
	// a short last one, and more when a busy machine slows the sender).
	if s, _ := fp.Stats(); (s.Arrived-s.Decapsulated)-(s0.Arrived-s0.Decapsulated) < 64 {
		t.Errorf("node2: %+v then %+v: want the large packets decapsulated by the VTEP, then delivered by the programs", s0, s)
	}
	// Cut into segments of at most the MTU on the way: one packet per
	// 1500 bytes at least.
	if got := ipInReceives(t, behind); got < size/1500 {
		t.Errorf("behind %s: %d packets arrived, want at least %d: were the large packets cut?", router, got, size/1500)
	}
}

// ipInReceives is the IPv4 packets netns n received (/proc/net/snmp).
func ipInReceives(t *testing.T, n ns.NetNS) int {
	var snmp []byte
	err := n.Do(func(ns.NetNS) error {
		var err error
		snmp, err = os.ReadFile("/proc/net/snmp") // the reading thread's namespace
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Two "Ip:" lines: the field names, then the values.
	var names, values []string
	for _, l := range strings.Split(string(snmp), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "Ip:" {
			if names == nil {
				names = f
			} else {
				values = f
			}
		}
	}
	for i, name := range names {
		if name == "InReceives" && i < len(values) {
			v, _ := strconv.Atoi(values[i])
			return v
		}
	}
	t.Fatalf("no Ip InReceives in /proc/net/snmp:\n%s", snmp)
	return 0
}

// statusSeesMaps changes the network's config in node1's map by hand:
// netd's status must report the difference (no event tells netd of a
// map written behind its back) until the map is as netd wants it again.
// netd repairs it at its next pass; a try that pass overtook is made
// again.
func statusSeesMaps(t *testing.T, d *testbed.Netd, fp *fastpath.Network) {
	ctx := context.Background()
	good, err := fp.Config()
	if err != nil {
		t.Fatal(err)
	}
	bad := good
	bad.Local = netip.MustParsePrefix("10.99.99.0/24")
	differs := func(s netd.Status) bool {
		return !s.KernelMatches && slices.ContainsFunc(s.Pending, func(p string) bool {
			return strings.Contains(p, "configure eBPF datapath: local "+good.Local.String())
		})
	}
	for try := 1; ; try++ {
		if err := fp.Configure(bad); err != nil {
			t.Fatal(err)
		}
		var s netd.Status
		if err := d.Status(ctx, &s); err != nil {
			t.Fatal(err)
		}
		if now, _ := fp.Config(); now == bad {
			if !differs(s) {
				t.Errorf("status with the config map changed by hand: in sync %v, pending %q; want the difference named", s.KernelMatches, s.Pending)
			}
			break
		}
		if try == 3 {
			t.Fatalf("netd repaired the map before each of 3 status requests")
		}
	}
	if err := fp.Configure(good); err != nil {
		t.Fatal(err)
	}
	var s netd.Status
	if err := d.Status(ctx, &s); err != nil || !s.KernelMatches {
		t.Errorf("status with the map as netd wants it: in sync %v, pending %q (%v)", s.KernelMatches, s.Pending, err)
	}
}

// leave removes the containers of d's node (netd leave refuses while
// containers are attached), stops d and runs netd leave there.
func leave(t *testing.T, d *testbed.Netd) {
	t.Helper()
	ctx := context.Background()
	r, err := d.Node.Runner()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.RemoveAll(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if out, err := d.Leave(ctx); err != nil {
		t.Fatalf("netd leave: %v\n%s", err, out)
	}
}

// vxlanStranger takes node2 out of node1's tunnel peers: node1's programs
// must then leave node2's VXLAN packets to node1's VTEP (and the node's
// INPUT rules) rather than decapsulate them. netd puts node2 back at its
// next pass; a try that pass overtook is made again.
func vxlanStranger(t *testing.T, fp map[int]*fastpath.Network, node2 netip.Addr, ctrs []*container) {
	server := ctrs[0].IP.String() + ":7060"
	ctrs[0].serve(t, 7060)
	for try := 1; ; try++ {
		if err := fp[1].RemoveTunnelPeer(node2); err != nil {
			t.Fatal(err)
		}
		s1, _ := fp[1].Stats()
		if _, err := ctrs[2].dial(server); err != nil {
			t.Fatalf("%s -> %s through node1's VTEP: %v", ctrs[2], server, err)
		}
		a1, _ := fp[1].Stats()
		if peers, _ := fp[1].TunnelPeers(); !slices.Contains(peers, node2) {
			if a1.Decapsulated != s1.Decapsulated || a1.Arrived == s1.Arrived {
				t.Fatalf("node1 %+v then %+v: want node2's packets decapsulated by the VTEP, then delivered", s1, a1)
			}
			return
		}
		if try == 3 {
			t.Fatalf("netd made node2 a tunnel peer again during each of 3 connections")
		}
	}
}

// vtepDown sets node1's VTEP down. netd sets it up again itself (the link
// event brings a full pass, whose Ensure does), and the programs keep
// carrying node1's VXLAN. A VTEP netd cannot set up (a socket took its
// UDP port while it was down, and the kernel refuses it) stays down, as
// the kernel's path is then: netd must describe no tunnel to the
// programs, which then leave node2's VXLAN packets to the kernel (here:
// the socket) instead of decapsulating them into node1's container. Once
// the port is free, netd sets the VTEP up and the programs carry it again.
func vtepDown(t *testing.T, n *testbed.Node, fp *fastpath.Network, ctrs []*container) {
	const vtep = "berth.1"
	server := ctrs[0].IP.String() + ":7080"
	ctrs[0].serve(t, 7080)
	vx, err := fp.VXLAN()
	if err != nil || vx.VTEP == 0 {
		t.Fatalf("node1's VXLAN config: %+v, %v", vx, err)
	}
	link := func() netlink.Link {
		var l netlink.Link
		if err := n.Do(func() (err error) { l, err = netlink.LinkByName(vtep); return err }); err != nil {
			t.Fatal(err)
		}
		return l
	}
	carried := func() error {
		if l := link(); l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("%s is down", vtep)
		}
		if v, err := fp.VXLAN(); err != nil || v != vx {
			return fmt.Errorf("node1's VXLAN config %+v (%v), want %+v", v, err, vx)
		}
		s0, _ := fp.Stats()
		if _, err := ctrs[2].dial(server); err != nil {
			return fmt.Errorf("%s -> %s: %v", ctrs[2], server, err)
		}
		if s, _ := fp.Stats(); s.Decapsulated == s0.Decapsulated {
			return fmt.Errorf("node1: %+v then %+v: the programs decapsulated nothing", s0, s)
		}
		return nil
	}

	if out, err := n.Run(context.Background(), "ip", "link", "set", vtep, "down"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := eventually(10*time.Second, carried); err != nil {
		t.Fatalf("set down by hand: %v", err)
	}

	// Down, with its port taken before netd sets it up again (netd may
	// win the race: then again).
	var sock *net.UDPConn
	for try := 1; sock == nil; try++ {
		err := n.Do(func() error {
			if err := netlink.LinkSetDown(link()); err != nil {
				return err
			}
			var err error
			sock, err = net.ListenUDP("udp4", &net.UDPAddr{Port: int(vx.Port)})
			return err
		})
		if err != nil && try == 5 {
			t.Fatalf("taking port %d while %s is down: %v", vx.Port, vtep, err)
		}
	}
	defer sock.Close()
	err = eventually(10*time.Second, func() error {
		if l := link(); l.Attrs().Flags&net.FlagUp != 0 {
			t.Fatalf("netd set %s up with its port taken", vtep)
		}
		v, err := fp.VXLAN()
		tun, _ := fp.Tunnels()
		peers, _ := fp.TunnelPeers()
		if err != nil || v != (fastpath.VXLAN{}) || len(tun) != 0 || len(peers) != 0 {
			return fmt.Errorf("node1 with %s down: VXLAN config %+v (%v), tunnels %v, peers %v; want none", vtep, v, err, tun, peers)
		}
		return nil
	})
	if err != nil {
		t.Error(err) // and what the programs then do with the traffic
	}
	s0, _ := fp.Stats()
	err = ctrs[2].ns.Do(func(ns.NetNS) error {
		c, err := net.Dial("udp4", ctrs[0].IP.String()+":7081")
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("for the VTEP"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// It reaches node1 encapsulated (node2 knows nothing of node1's
	// VTEP), and the kernel hands it to the socket on the port (after,
	// perhaps, late packets of earlier connections).
	sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	const inner = 8 + 14 // VXLAN header, inner Ethernet
	for {
		got, _, err := sock.ReadFromUDP(buf)
		if err != nil {
			t.Errorf("the socket on node1's port %d got no VXLAN for %s:7081 (%v)", vx.Port, ctrs[0], err)
			break
		}
		ip := buf[inner:got]
		if len(ip) >= 20+4 && ip[9] == 17 && net.IP(ip[16:20]).Equal(ctrs[0].IP.AsSlice()) && binary.BigEndian.Uint16(ip[22:]) == 7081 {
			break
		}
	}
	if s, _ := fp.Stats(); s.Decapsulated != s0.Decapsulated || s.Arrived != s0.Arrived {
		t.Errorf("node1: %+v then %+v: the programs carried VXLAN past a VTEP that is down", s0, s)
	}

	sock.Close()
	if err := eventually(15*time.Second, carried); err != nil {
		t.Fatalf("port free again: %v", err)
	}
}
