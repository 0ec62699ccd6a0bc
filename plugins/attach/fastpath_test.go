package attach_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/testenv"
)

// The tests here are about the eBPF datapath itself and run on it
// whatever BERTH_TEST_DATAPATH says; the other tests of the package run
// on both datapaths (make test runs them twice).

// ebpfNode is a node whose networks run the eBPF datapath.
func ebpfNode(t *testing.T) *node {
	n := newNode(t)
	if n.bpffs == "" {
		n.bpffs = testenv.BPFFS(t)
	}
	return n
}

// fastpathOf opens the pins of network on n, for inspection.
func (n *node) fastpathOf(t *testing.T, network string) *fastpath.Network {
	t.Helper()
	fp, err := fastpath.OpenExisting(n.bpffs, network)
	if err != nil || fp == nil {
		t.Fatalf("opening the eBPF maps of %s: %v %v", network, fp, err)
	}
	t.Cleanup(fp.Close)
	return fp
}

func stats(t *testing.T, fp *fastpath.Network) fastpath.Stats {
	t.Helper()
	s, err := fp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// udpArrives reports whether a datagram sent from src (bound to srcIP)
// to dst:port arrives there.
func udpArrives(t *testing.T, src ns.NetNS, srcIP string, dst ns.NetNS, dstIP string, port int) bool {
	t.Helper()
	var l *net.UDPConn
	err := dst.Do(func(ns.NetNS) error {
		var err error
		l, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(dstIP), Port: port})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	err = src.Do(func(ns.NetNS) error {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(srcIP)}, &net.UDPAddr{IP: net.ParseIP(dstIP), Port: port})
		if err != nil {
			return err
		}
		defer c.Close()
		for range 3 {
			c.Write([]byte("x"))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	l.SetReadDeadline(time.Now().Add(time.Second))
	_, _, err = l.ReadFromUDP(make([]byte, 8))
	return err == nil
}

func TestEBPFSameNode(t *testing.T) {
	n := ebpfNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("fp", "berth0", "10.95.0.0/24", ""))
	before := n.snapshot(t)
	c1, c2 := container(t, "f1", port(8085, 80, "tcp")), container(t, "f2")
	r1, r2 := rt.MustAdd(t, c1), rt.MustAdd(t, c2)
	ip1, ip2 := ipOf(t, r1), ipOf(t, r2)
	fp := n.fastpathOf(t, "fp")
	testenv.Serve(t, c1.Netns, "0.0.0.0:80")

	t.Run("containers talk past the bridge and netfilter", func(t *testing.T) {
		s0 := stats(t, fp)
		if err := testenv.Ping(c2.Netns, ip1); err != nil {
			t.Fatal(err)
		}
		if src, err := testenv.Dial(c2.Netns, ip1+":80"); err != nil || src != ip2 {
			t.Errorf("c2 -> c1:80: seen as %q, %v", src, err)
		}
		if s := stats(t, fp); s.Local < s0.Local+6 {
			t.Errorf("counters %+v then %+v: want the connection delivered by the fast path", s0, s)
		}
		// Nothing of the connection went through the node's conntrack
		// (the ping did: ICMP takes the kernel's path).
		if out, _ := testenv.InNS(n.ns, "conntrack", "-L", "-p", "tcp", "-s", ip2, "-d", ip1); strings.Contains(string(out), "src="+ip2) {
			t.Errorf("conntrack saw the containers' traffic:\n%s", out)
		}
	})

	t.Run("a container sending as another is dropped", func(t *testing.T) {
		if !udpArrives(t, c1.Netns, ip1, c2.Netns, ip2, 5001) {
			t.Fatal("control: c1 -> c2 with its own address did not arrive")
		}
		mustRun(t, c1.Netns, "ip", "addr", "add", "10.95.0.200/32", "dev", "eth0")
		s0 := stats(t, fp)
		if udpArrives(t, c1.Netns, "10.95.0.200", c2.Netns, ip2, 5002) {
			t.Error("c1 reached c2 with a source address not its own")
		}
		if s := stats(t, fp); s.Spoofed < s0.Spoofed+3 {
			t.Errorf("counters %+v then %+v: want 3 more spoofed", s0, s)
		}
		mustRun(t, c1.Netns, "ip", "addr", "del", "10.95.0.200/32", "dev", "eth0")
	})

	t.Run("an ICMP error about the containers' flow passes an INVALID drop", func(t *testing.T) {
		// The flow skips conntrack; through the kernel's path c1's port
		// unreachable would be invalid there, and kube-proxy's rule would
		// drop it: c2 would wait for an answer instead of ECONNREFUSED.
		drop := []string{"FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"}
		mustRun(t, n.ns, "iptables", append([]string{"-I"}, drop...)...)
		defer testenv.InNS(n.ns, "iptables", append([]string{"-D"}, drop...)...)
		s0 := stats(t, fp)
		var got error
		sent := 0
		err := c2.Netns.Do(func(ns.NetNS) error {
			conn, err := net.Dial("udp4", ip1+":4444") // nothing listens there
			if err != nil {
				return err
			}
			defer conn.Close()
			for range 3 {
				conn.Write([]byte("x"))
				sent++
				conn.SetReadDeadline(time.Now().Add(time.Second))
				if _, got = conn.Read(make([]byte, 8)); errors.Is(got, syscall.ECONNREFUSED) {
					break
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !errors.Is(got, syscall.ECONNREFUSED) {
			t.Errorf("c2 -> c1:4444 (closed): %v, want connection refused (ICMP port unreachable)", got)
		}
		// The datagrams and the error, all delivered by the programs.
		if s := stats(t, fp); s.Local < s0.Local+uint64(sent)+1 {
			t.Errorf("counters %+v then %+v: want the %d datagrams and the error delivered by the fast path", s0, s, sent)
		}
	})

	t.Run("the reply of a flow the node translated takes the kernel's path", func(t *testing.T) {
		// A service address the node translates to c1, as kube-proxy
		// does, and a rule ahead of berth's that keeps the source (else
		// berth's hairpin masquerade would send the answers to the
		// gateway): c1's answers go straight to c2, and only the kernel
		// can give them the service's address back.
		const vip = "10.96.0.10"
		for _, rule := range [][]string{
			{"PREROUTING", "-d", vip + "/32", "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", ip1 + ":80"},
			{"POSTROUTING", "-d", ip1 + "/32", "-p", "tcp", "--dport", "80", "-j", "ACCEPT"},
		} {
			mustRun(t, n.ns, "iptables", append([]string{"-t", "nat", "-I"}, rule...)...)
			defer testenv.InNS(n.ns, "iptables", append([]string{"-t", "nat", "-D"}, rule...)...)
		}
		s0 := stats(t, fp)
		if src, err := testenv.Dial(c2.Netns, vip+":80"); err != nil || src != ip2 {
			t.Errorf("c2 -> service %s -> c1: seen as %q, %v", vip, src, err)
		}
		if s := stats(t, fp); s.Translated == s0.Translated {
			t.Errorf("counters %+v then %+v: the translated flow's replies were not left to the kernel", s0, s)
		}
	})

	t.Run("published port from a neighbour and from outside", func(t *testing.T) {
		for _, from := range []ns.NetNS{c2.Netns, n.outside, c1.Netns} {
			if _, err := testenv.Dial(from, nodeIP+":8085"); err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("CHECK finds a detached program and a missing endpoint", func(t *testing.T) {
		if err := rt.Check(c1); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		host := r1.Interfaces[1].Name
		detachAll(t, n.ns, host)
		var ce *types.Error
		if err := rt.Check(c1); !errors.As(err, &ce) || ce.Code != 104 || !strings.Contains(err.Error(), "from_container") {
			t.Errorf("CHECK with the program detached: %v, want 104 naming the program", err)
		}
		// The program as a filter without direct action: tc would ignore
		// its drops and redirects.
		pins, _ := filepath.Glob(filepath.Join(fastpath.Dir(n.bpffs, "fp"), "from_container_*"))
		if len(pins) != 1 {
			t.Fatalf("program pins: %v", pins)
		}
		mustRun(t, n.ns, "tc", "qdisc", "add", "dev", host, "clsact")
		mustRun(t, n.ns, "tc", "filter", "add", "dev", host, "ingress", "pref", "1", "handle", "1", "bpf", "pinned", pins[0])
		if err := rt.Check(c1); !errors.As(err, &ce) || ce.Code != 104 {
			t.Errorf("CHECK with the program attached without direct action: %v, want 104", err)
		}
		eps, _ := fp.Endpoints()
		for _, ep := range eps {
			if ep.IP.String() == ip2 {
				fp.RemoveEndpoint(ep.IP, ep.Owner)
			}
		}
		if err := rt.Check(c2); !errors.As(err, &ce) || ce.Code != 104 || !strings.Contains(err.Error(), "eBPF endpoints") {
			t.Errorf("CHECK with the endpoint gone: %v, want 104 naming the endpoint", err)
		}
	})

	t.Run("DEL removes the endpoints, the last one the pins", func(t *testing.T) {
		if err := rt.Del(c1); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := fp.Endpoint(netipOf(ip1)); ok {
			t.Error("c1's endpoint survived DEL")
		}
		if err := rt.Del(c2); err != nil {
			t.Fatal(err)
		}
		n.checkNothingLeft(t, before, "berth0")
	})
}

// detachAll removes every program from the ingress of dev in n: the tc
// filters (with their clsact qdisc) and whatever is on TCX.
func detachAll(t *testing.T, n ns.NetNS, dev string) {
	t.Helper()
	err := n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		idx := l.Attrs().Index
		clsact := &netlink.GenericQdisc{QdiscType: "clsact",
			QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
		if err := netlink.QdiscDel(clsact); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("deleting the clsact qdisc: %w", err)
		}
		return testenv.TCXIngress(idx, func(_ ebpf.ProgramID, p *ebpf.Program) error {
			return link.RawDetachProgram(link.RawDetachProgramOptions{Target: idx, Program: p, Attach: ebpf.AttachTCXIngress})
		})
	})
	if err != nil {
		t.Fatalf("detaching the programs of %s: %v", dev, err)
	}
}

// A plugin killed at any point of ADD neither disturbs the traffic of the
// containers already attached nor leaves anything after GC.
func TestEBPFPluginKillLeavesTrafficFlowing(t *testing.T) {
	n := ebpfNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("fpkill", "berth0", "10.97.0.0/24", ""))
	c1, c2 := container(t, "k1"), container(t, "k2")
	rt.MustAdd(t, c1)
	r2 := rt.MustAdd(t, c2)
	before := n.snapshot(t)
	done := make(chan string, 1)
	go func() {
		out, _ := testenv.InNS(c1.Netns, "ping", "-n", "-q", "-i", "0.05", "-c", "60", "-W", "1", ipOf(t, r2))
		done <- string(out)
	}()
	bin := filepath.Join(testenv.BinDir(t, "berth-bridge"), "berth-bridge")
	conf := n.conflistPlugin("fpkill", "berth0", "10.97.0.0/24")
	for i := range 10 {
		c := testenv.NewNS(t)
		cmd := exec.Command(bin)
		cmd.Env = []string{"CNI_COMMAND=ADD", fmt.Sprintf("CNI_CONTAINERID=kill%d", i), "CNI_NETNS=" + c.Path(),
			"CNI_IFNAME=eth0", "CNI_PATH=" + testenv.BinDir(t)}
		cmd.Stdin = strings.NewReader(conf)
		n.ns.Do(func(ns.NetNS) error { return cmd.Start() })
		time.Sleep(time.Duration(rand.IntN(20000)) * time.Microsecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	}
	out := <-done
	if !strings.Contains(out, "60 packets transmitted, 60 received") {
		t.Errorf("c1 -> c2 while plugins were killed:\n%s", out)
	}
	if err := rt.GC(c1, c2); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if after := n.snapshot(t); after != before {
		t.Errorf("after GC:\n%s", testenv.Diff(before, after))
	}
	if err := rt.Check(c2); err != nil {
		t.Errorf("CHECK after GC: %v", err)
	}
	rt.Del(c1)
	rt.Del(c2)
}

// GC removes endpoints no attachment owns (what state lost or a crash
// left) and keeps the live ones.
func TestEBPFGCRemovesOrphanEndpoints(t *testing.T) {
	n := ebpfNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("fpgc", "berth0", "10.98.0.0/24", ""))
	keep := container(t, "keep")
	res, err := rt.Add(keep)
	if err != nil {
		t.Fatal(err)
	}
	fp := n.fastpathOf(t, "fpgc")
	orphan := fastpath.Endpoint{IP: netipOf("10.98.0.77"), Ifindex: 999, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1},
		RouterMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, Owner: 42}
	if err := fp.AddEndpoint(orphan); err != nil {
		t.Fatal(err)
	}
	if err := rt.GC(keep); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := fp.Endpoint(orphan.IP); ok {
		t.Error("GC left an endpoint no attachment owns")
	}
	if _, ok, _ := fp.Endpoint(netipOf(ipOf(t, res))); !ok {
		t.Error("GC removed a live endpoint")
	}
	if err := rt.Check(keep); err != nil {
		t.Errorf("CHECK after GC: %v", err)
	}
	rt.Del(keep)
}

func TestEBPFConfigErrors(t *testing.T) {
	n := newNode(t)
	var ce *types.Error
	for _, tt := range []struct {
		name, extra, ranges, field string
	}{
		{"IPv6 range", `"datapath":"ebpf","bpffs":"/sys/fs/bpf",`, `[{"subnet":"10.99.0.0/24"}],[{"subnet":"fd00:99::/64"}]`, "datapath"},
		{"IPv6 only", `"datapath":"ebpf","bpffs":"/sys/fs/bpf",`, `[{"subnet":"fd00:99::/64"}]`, "datapath"},
		// A second IPv4 address per container, which the programs would
		// drop as spoofed: refused rather than half carried.
		{"two IPv4 range sets", `"datapath":"ebpf","bpffs":"/sys/fs/bpf",`, `[{"subnet":"10.99.0.0/24"}],[{"subnet":"10.100.0.0/24"}]`, "ipam.ranges[1]"},
		{"unknown datapath", `"datapath":"xdp",`, `[{"subnet":"10.99.0.0/24"}]`, "datapath"},
		{"bpffs without ebpf", `"bpffs":"/sys/fs/bpf",`, `[{"subnet":"10.99.0.0/24"}]`, "bpffs"},
		{"not a BPF filesystem", fmt.Sprintf(`"datapath":"ebpf","bpffs":%q,`, t.TempDir()), `[{"subnet":"10.99.0.0/24"}]`, "bpffs"},
		// ADD and DEL may run in different directories.
		{"relative bpffs", `"datapath":"ebpf","bpffs":"bpf",`, `[{"subnet":"10.99.0.0/24"}]`, `bpffs: "bpf" is not an absolute path`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			list := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bad","plugins":[{"type":"berth-bridge","bridge":"berth9","stateDir":%q,%s
				"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[%s]}}]}`, n.stateDir, tt.extra, n.dataDir, tt.ranges)
			before := n.snapshot(t)
			_, err := testenv.NewRuntime(t, n.ns, list).Add(container(t, "bad"))
			if !errors.As(err, &ce) || ce.Code != 7 || !strings.Contains(err.Error(), tt.field) {
				t.Errorf("ADD: %v, want error 7 naming %s", err, tt.field)
			}
			if after := strings.Replace(n.snapshot(t), "link berth9\n", "", 1); after != before {
				t.Errorf("failed ADD left:\n%s", testenv.Diff(before, after))
			}
		})
	}
	t.Run("STATUS without a BPF filesystem", func(t *testing.T) {
		list := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"nobpf","plugins":[{"type":"berth-bridge","stateDir":%q,"datapath":"ebpf","bpffs":%q,
			"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.99.0.0/24"}]]}}]}`, n.stateDir, t.TempDir(), n.dataDir)
		if err := testenv.NewRuntime(t, n.ns, list).Status(); !errors.As(err, &ce) || ce.Code != 50 || !strings.Contains(err.Error(), "bpffs") {
			t.Errorf("STATUS: %v, want 50 naming bpffs", err)
		}
		n := ebpfNode(t)
		ok := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bpf","plugins":[{"type":"berth-bridge","stateDir":%q,"datapath":"ebpf","bpffs":%q,
			"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.99.0.0/24"}]]}}]}`, n.stateDir, n.bpffs, n.dataDir)
		if err := testenv.NewRuntime(t, n.ns, ok).Status(); err != nil {
			t.Errorf("STATUS with a BPF filesystem: %v", err)
		}
		// A map of another shape pinned where the network's endpoints go
		// (another berth version): every ADD would fail.
		dir := fastpath.Dir(n.bpffs, "bpf")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 10})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Pin(filepath.Join(dir, "endpoints")); err != nil {
			t.Fatal(err)
		}
		if err := testenv.NewRuntime(t, n.ns, ok).Status(); !errors.As(err, &ce) || ce.Code != 50 || !strings.Contains(err.Error(), dir) {
			t.Errorf("STATUS with an incompatible map pinned: %v, want 50 naming %s", err, dir)
		}
	})
}

// An attachment made on the eBPF datapath before its network's config
// gained an IPv6 range (refused at ADD) is still deleted, leaving nothing.
func TestEBPFBridgeDelAfterIPv6Added(t *testing.T) {
	n := ebpfNode(t)
	list := func(ranges string) string {
		return fmt.Sprintf(`{"cniVersion":"1.1.0","name":"grown","plugins":[{"type":"berth-bridge","bridge":"berth8","stateDir":%q,"datapath":"ebpf","bpffs":%q,
			"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[%s]}}]}`, n.stateDir, n.bpffs, n.dataDir, ranges)
	}
	before := n.snapshot(t)
	c := container(t, "c1")
	testenv.NewRuntime(t, n.ns, list(`[{"subnet":"10.98.0.0/24"}]`)).MustAdd(t, c)
	grown := testenv.NewRuntime(t, n.ns, list(`[{"subnet":"10.98.0.0/24"}],[{"subnet":"fd00:98::/64"}]`))
	if err := grown.Del(c); err != nil {
		t.Fatalf("DEL with the config that gained IPv6: %v", err)
	}
	if d := testenv.Diff(before, n.snapshot(t)); d != "" {
		t.Fatalf("left behind:\n%s", d)
	}
}

// The leased plugins on the eBPF datapath take their families from the
// node lease: a lease with IPv6 (the network became dual-stack, or is
// IPv6-only) is refused with error 7 naming datapath and the lease's
// subnetV6, never attached with IPv4 only; an attachment made before the
// network gained IPv6 is still deleted, leaving nothing.
func TestEBPFLeasedIPv6Refused(t *testing.T) {
	for _, mode := range []string{lease.ModeVXLAN, lease.ModeBGP} {
		t.Run(mode, func(t *testing.T) {
			testenv.BinDir(t, "berth-"+mode)
			n := ebpfNode(t)
			leaseDir := t.TempDir()
			list := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"berth-%s","leaseDir":%q,
				"stateDir":%q,"datapath":"ebpf","bpffs":%q,"ipam":{"type":"berth-ipam","dataDir":%q}}]}`,
				mode, mode, leaseDir, n.stateDir, n.bpffs, n.dataDir)
			rt := testenv.NewRuntime(t, n.ns, list)
			write := func(l *lease.Node) {
				l.Network, l.Mode, l.MTU, l.NodeName, l.Expires = mode, mode, 1450, "n1", time.Now().Add(time.Minute)
				if err := lease.Write(lease.Path(leaseDir, mode), l); err != nil {
					t.Fatal(err)
				}
			}
			v4 := lease.Node{NetworkCIDR: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.7.0/24"),
				NodeIP: netip.MustParseAddr(nodeIP)}
			v6 := lease.Node{NetworkCIDRv6: netip.MustParsePrefix("fd00:244::/56"), SubnetV6: netip.MustParsePrefix("fd00:244:0:7::/64")}
			dual := v4
			dual.NetworkCIDRv6, dual.SubnetV6 = v6.NetworkCIDRv6, v6.SubnetV6

			before := n.snapshot(t)
			write(&v4)
			old := container(t, "old")
			if _, err := rt.Add(old); err != nil {
				t.Fatalf("ADD on the IPv4 lease: %v", err)
			}
			var ce *types.Error
			for name, l := range map[string]*lease.Node{"dual-stack": &dual, "IPv6-only": &v6} {
				write(l)
				mid := n.snapshot(t)
				_, err := rt.Add(container(t, "new"))
				if !errors.As(err, &ce) || ce.Code != 7 || !strings.Contains(err.Error(), "datapath") || !strings.Contains(err.Error(), "subnetV6") {
					t.Errorf("ADD on a %s lease: %v, want error 7 naming datapath and subnetV6", name, err)
				}
				if err := rt.Status(); !errors.As(err, &ce) || ce.Code != 7 {
					t.Errorf("STATUS on a %s lease: %v, want error 7", name, err)
				}
				if after := n.snapshot(t); after != mid {
					t.Errorf("refused ADD on a %s lease left:\n%s", name, testenv.Diff(mid, after))
				}
			}
			write(&dual)
			if err := rt.Del(old); err != nil {
				t.Fatalf("DEL of the attachment made before the network gained IPv6: %v", err)
			}
			if after := n.snapshot(t); after != before {
				t.Errorf("DEL left:\n%s", testenv.Diff(before, after))
			}
		})
	}
}

func netipOf(s string) netip.Addr { return netip.MustParseAddr(s) }

// Two networks on one node, each churned by parallel ADD, CHECK and DEL
// with no resident container: each network's pins are created and
// removed again and again while other calls use them. Meanwhile a third
// network is garbage collected over and over around its one container.
// Every call succeeds, and nothing is left (no pin, endpoint, link,
// record, bridge or iptables rule).
func TestEBPFConcurrentNetworks(t *testing.T) {
	n := ebpfNode(t)
	before := n.snapshot(t)
	var wg sync.WaitGroup
	gcNet := testenv.NewRuntime(t, n.ns, n.conflist("fpc2", "berthc2", "10.99.2.0/24", ""))
	resident := container(t, "resident")
	if _, err := gcNet.Add(resident); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := gcNet.GC(resident); err != nil {
				t.Errorf("GC: %v", err)
			}
			if err := gcNet.Check(resident); err != nil {
				t.Errorf("CHECK after GC: %v", err)
			}
		}
	}()
	for net := range 2 {
		rt := testenv.NewRuntime(t, n.ns, n.conflist(fmt.Sprintf("fpc%d", net), fmt.Sprintf("berthc%d", net), fmt.Sprintf("10.99.%d.0/24", net), ""))
		for w := range 3 {
			wg.Go(func() {
				for i := range 8 {
					c := &testenv.Attachment{ID: fmt.Sprintf("n%dw%di%d", net, w, i), Netns: testenv.NewNS(t)}
					if _, err := rt.Add(c); err != nil {
						t.Errorf("ADD %s: %v", c.ID, err)
						return
					}
					if err := rt.Check(c); err != nil {
						t.Errorf("CHECK %s: %v", c.ID, err)
					}
					if err := rt.Del(c); err != nil {
						t.Errorf("DEL %s: %v", c.ID, err)
					}
					c.Netns.Close()
				}
			})
		}
	}
	wg.Wait()
	close(stop)
	<-gcDone
	if err := gcNet.Del(resident); err != nil {
		t.Fatal(err)
	}
	// Nothing left: no pin, endpoint, link, record, bridge or rule (a
	// network's last DEL removes its bridge and chains, also when its
	// last two containers leave side by side).
	if d := testenv.Diff(before, n.snapshot(t)); d != "" {
		t.Errorf("leftovers:\n%s", d)
	}
}

// A bpffs path that is gone (a BPF filesystem mounted under /run, lost
// at a reboot; a directory removed) is a config error for ADD (7, naming
// bpffs) and nothing to clean up for DEL and GC, which succeed: nothing
// can be pinned there, the veths (and their programs) go as usual, and a
// runtime would otherwise retry the failing DEL for ever.
func TestEBPFMissingBPFFS(t *testing.T) {
	n := newNode(t)
	dir := filepath.Join(t.TempDir(), "bpf")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	list := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"fpgone","plugins":[{"type":"berth-bridge","bridge":"berthgone","stateDir":%q,
		"datapath":"ebpf","bpffs":%q,"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.93.0.0/24"}]]}}]}`, n.stateDir, dir, n.dataDir)
	rt := testenv.NewRuntime(t, n.ns, list)
	before := testenv.Snapshot(t, n.ns, n.stateDir, n.dataDir)
	c1, c2 := container(t, "g1"), container(t, "g2")
	rt.MustAdd(t, c1)
	rt.MustAdd(t, c2)
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}

	var ce *types.Error
	if _, err := rt.Add(container(t, "g3")); !errors.As(err, &ce) || ce.Code != 7 || !strings.Contains(err.Error(), "bpffs") {
		t.Errorf("ADD with the bpffs gone: %v, want error 7 naming bpffs", err)
	}
	if err := rt.Del(c1); err != nil {
		t.Errorf("DEL with the bpffs gone: %v", err)
	}
	if err := rt.GC(); err != nil {
		t.Errorf("GC with the bpffs gone: %v", err)
	}
	if after := testenv.Snapshot(t, n.ns, n.stateDir, n.dataDir); after != before {
		t.Errorf("leftovers:\n%s", testenv.Diff(before, after))
	}
}

// A network's pins with one missing (a plugin or netd killed between
// two pins, an operator's rm) are completed by the next ADD: it neither
// fails on the pins still there nor disturbs the containers attached,
// and the last DEL removes everything. Without an ADD, CHECK reports
// the missing map (104), and DEL and GC still succeed and leave nothing:
// a runtime retries a failing DEL for ever.
func TestEBPFPartialPins(t *testing.T) {
	pins := []string{"from_container_", "from_uplink_", "endpoints", "config", "stats"}
	for _, pin := range pins {
		t.Run(pin+" then DEL", func(t *testing.T) {
			n := ebpfNode(t)
			rt := testenv.NewRuntime(t, n.ns, n.conflist("fppart", "berthpart", "10.94.0.0/24", ""))
			before := n.snapshot(t)
			c1, c2 := container(t, "p1"), container(t, "p2")
			rt.MustAdd(t, c1)
			rt.MustAdd(t, c2)
			gone, _ := filepath.Glob(filepath.Join(fastpath.Dir(n.bpffs, "fppart"), pin+"*"))
			if len(gone) != 1 {
				t.Fatalf("pins %q: %v, want one", pin, gone)
			}
			if err := os.Remove(gone[0]); err != nil {
				t.Fatal(err)
			}
			var ce *types.Error
			if err := rt.Check(c1); strings.HasPrefix(pin, "from_") && err != nil {
				t.Errorf("CHECK with a program's pin gone (the program is attached): %v", err)
			} else if !strings.HasPrefix(pin, "from_") && (!errors.As(err, &ce) || ce.Code != 104 || !strings.Contains(err.Error(), fastpath.Dir(n.bpffs, "fppart"))) {
				t.Errorf("CHECK with %s unpinned: %v, want 104 naming the pins", pin, err)
			}
			if err := rt.Del(c1); err != nil {
				t.Errorf("DEL with %s unpinned: %v", pin, err)
			}
			if err := rt.GC(); err != nil {
				t.Errorf("GC with %s unpinned: %v", pin, err)
			}
			n.checkNothingLeft(t, before, "berthpart")
		})
	}
	for _, pin := range pins {
		t.Run(pin+" then ADD", func(t *testing.T) {
			n := ebpfNode(t)
			rt := testenv.NewRuntime(t, n.ns, n.conflist("fppart", "berthpart", "10.94.0.0/24", ""))
			before := n.snapshot(t)
			c1 := container(t, "p1")
			r1 := rt.MustAdd(t, c1)
			gone, _ := filepath.Glob(filepath.Join(fastpath.Dir(n.bpffs, "fppart"), pin+"*"))
			if len(gone) != 1 {
				t.Fatalf("pins %q: %v, want one", pin, gone)
			}
			if err := os.Remove(gone[0]); err != nil {
				t.Fatal(err)
			}
			c2 := container(t, "p2")
			if _, err := rt.Add(c2); err != nil {
				t.Fatalf("ADD with %s unpinned: %v", filepath.Base(gone[0]), err)
			}
			if err := rt.Check(c2); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			if err := testenv.Ping(c2.Netns, ipOf(t, r1)); err != nil {
				t.Errorf("the new container -> the old one: %v", err)
			}
			if err := errors.Join(rt.Del(c1), rt.Del(c2)); err != nil {
				t.Fatal(err)
			}
			n.checkNothingLeft(t, before, "berthpart")
		})
	}
}

// Someone removes a network's pins while containers run (all of them, or
// the endpoints map alone), and a container is deleted meanwhile. The
// next call that makes the pins anew moves the running containers onto
// them: they keep reaching each other and reach a new container over the
// fast path, also when it has the deleted container's address, which the
// older set's map still gave to the deleted veth.
func TestEBPFPinsMadeAnew(t *testing.T) {
	for _, removed := range []string{"", "endpoints", "config"} {
		name := "the whole directory"
		if removed != "" {
			name = removed
		}
		t.Run(name, func(t *testing.T) {
			n := ebpfNode(t)
			rt := testenv.NewRuntime(t, n.ns, n.conflist("fpnew", "berthnew", "10.93.0.0/24", ""))
			before := n.snapshot(t)
			a, b, c := container(t, "a"), container(t, "b"), container(t, "c")
			ipA, ipB := ipOf(t, rt.MustAdd(t, a)), ipOf(t, rt.MustAdd(t, b))
			rt.MustAdd(t, c)
			testenv.Serve(t, a.Netns, "0.0.0.0:80")

			dir := fastpath.Dir(n.bpffs, "fpnew")
			if err := os.RemoveAll(filepath.Join(dir, removed)); err != nil {
				t.Fatal(err)
			}
			if err := rt.Del(b); err != nil {
				t.Fatalf("DEL with %s removed: %v", name, err)
			}
			// A DEL that made the pins anew wrote the network's config
			// (netd's mark included) into them, as the older set had it.
			if removed != "" {
				fp := n.fastpathOf(t, "fpnew")
				if cfg, err := fp.Config(); err != nil || cfg.Scope != netip.MustParsePrefix("10.93.0.0/24") {
					t.Errorf("config of the pins the DEL made: %+v %v, want the network's", cfg, err)
				}
			}
			d := container(t, "d")
			d.Caps = map[string]any{"ips": []string{ipB + "/24"}}
			if ipD := ipOf(t, rt.MustAdd(t, d)); ipD != ipB {
				t.Fatalf("d got %s, want the deleted container's %s", ipD, ipB)
			}
			testenv.Serve(t, d.Netns, "0.0.0.0:80")
			for _, x := range []*testenv.Attachment{a, c, d} {
				if err := rt.Check(x); err != nil {
					t.Errorf("CHECK %s: %v", x.ID, err)
				}
			}
			fp := n.fastpathOf(t, "fpnew")
			s0 := stats(t, fp)
			for _, p := range []struct {
				from *testenv.Attachment
				to   string
			}{{a, ipB}, {c, ipB}, {d, ipA}, {c, ipA}} {
				if _, err := testenv.Dial(p.from.Netns, p.to+":80"); err != nil {
					t.Errorf("%s -> %s:80: %v", p.from.ID, p.to, err)
				}
			}
			if s := stats(t, fp); s.Local < s0.Local+4*6 {
				t.Errorf("counters %+v then %+v: want the 4 connections delivered by the new pins' programs", s0, s)
			}
			if err := errors.Join(rt.Del(a), rt.Del(c), rt.Del(d)); err != nil {
				t.Fatal(err)
			}
			n.checkNothingLeft(t, before, "berthnew")
		})
	}
}

// A container attached twice to one eBPF network would have its replies
// from one address leave through the other interface and be dropped as
// spoofed: the second ADD is refused, naming datapath, and the first
// attachment stays as it was.
func TestEBPFSecondAttachmentRefused(t *testing.T) {
	n := ebpfNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("twice", "berthtw", "10.92.0.0/24", ""))
	before := n.snapshot(t)
	first := container(t, "m1")
	rt.MustAdd(t, first)
	withFirst := n.snapshot(t)
	second := &testenv.Attachment{ID: first.ID, IfName: "eth1", Netns: first.Netns}
	var ce *types.Error
	if _, err := rt.Add(second); !errors.As(err, &ce) || ce.Code != 7 || !strings.Contains(err.Error(), "datapath") || !strings.Contains(err.Error(), "eth0") {
		t.Errorf("second ADD: %v, want error 7 naming datapath and eth0", err)
	}
	if after := n.snapshot(t); after != withFirst {
		t.Errorf("the refused ADD changed:\n%s", testenv.Diff(withFirst, after))
	}
	if err := rt.Check(first); err != nil {
		t.Errorf("CHECK of the first attachment: %v", err)
	}
	if err := errors.Join(rt.Del(second), rt.Del(first)); err != nil {
		t.Fatal(err)
	}
	// Two ADDs of one container side by side: at most one may pass.
	for i := range 5 {
		ctr := container(t, fmt.Sprintf("p%d", i))
		ifs := []*testenv.Attachment{ctr, {ID: ctr.ID, IfName: "eth1", Netns: ctr.Netns}}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for j, a := range ifs {
			wg.Go(func() { _, errs[j] = rt.Add(a) })
		}
		wg.Wait()
		if errs[0] == nil && errs[1] == nil {
			t.Errorf("round %d: both parallel ADDs of one container passed", i)
		}
		if err := errors.Join(rt.Del(ifs[0]), rt.Del(ifs[1])); err != nil {
			t.Fatal(err)
		}
	}
	n.checkNothingLeft(t, before, "berthtw")
}

// ADDs to a network whose pins are complete, every ADD but the network's
// first on the node, hold the node's lock shared: parallel ADDs do not
// queue for it (here another holder, the test, keeps it shared meanwhile).
func TestEBPFAddsShareTheLock(t *testing.T) {
	n := ebpfNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("shared", "berthsh", "10.91.0.0/24", ""))
	first, second := container(t, "s1"), container(t, "s2")
	rt.MustAdd(t, first) // makes the pins
	lock, err := fastpath.AcquireShared(n.bpffs)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := rt.Add(second); done <- err }()
	select {
	case err = <-done:
		lock.Release()
	case <-time.After(10 * time.Second):
		t.Error("the ADD waited for the lock held shared")
		lock.Release()
		err = <-done
	}
	if err != nil {
		t.Errorf("ADD: %v", err)
	}
	if err := errors.Join(rt.Check(second), rt.Del(second), rt.Del(first)); err != nil {
		t.Fatal(err)
	}
}
