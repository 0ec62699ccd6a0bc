package reliability

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd"
	"github.com/berthnet/berth/netd/backend"
	bcluster "github.com/berthnet/berth/netd/cluster"
	"github.com/berthnet/berth/netd/registry"
	"github.com/berthnet/berth/test/testbed"
)

// metricsAddr is where every netd serves /status, /healthz and /metrics:
// each node has its own loopback, so one port serves all.
var metricsAddr = "127.0.0.1:" + strconv.Itoa(testbed.DefaultMetricsPort)

// vtepName is the VTEP of the default VNI.
const vtepName = "berth.1"

// datapaths are the datapaths the churn and netd-kill suites run on, one
// subtest each: the default one, and the eBPF one (netd --datapath=ebpf),
// whose programs stay attached while netd dies and whose endpoints map
// must lose each container at DEL.
var datapaths = []string{"iptables", "ebpf"}

// cluster is one netd per node of a test bed, for one vxlan network.
// testbed.StartNetd waits for each start; these suites also start netd
// without waiting (to kill it while it starts) and from goroutines, so
// they keep the processes here and take only the flags from testbed.Netd.
type cluster struct {
	t       *testing.T
	tb      *testbed.Testbed
	bin     string
	opts    testbed.NetdOptions
	network string
	// v6Underlay: each node gives its IPv6 address first in --node-ip
	// (VXLAN over the IPv6 underlay); set before starting netd.
	v6Underlay bool
	// ebpf runs the network on the eBPF datapath, each node with its own
	// BPF filesystem (testbed.Node.BPFFSDir); set before starting netd.
	ebpf bool

	mu   sync.Mutex
	netd map[int]*testbed.Process
}

// networkCIDR is the network of the cluster's nodes.
var networkCIDR = netip.MustParsePrefix("10.244.0.0/16")

// newCluster runs netd with etcd at the endpoints (none: node 1's
// embedded etcd) and the network's flags plus args.
func newCluster(t *testing.T, tb *testbed.Testbed, etcd []string, args ...string) *cluster {
	opts := testbed.NetdOptions{
		Network: "pods", Etcd: etcd, MetricsPort: testbed.DefaultMetricsPort,
		LeaseTTL: 10 * time.Second, ResyncInterval: 2 * time.Second,
		Args: append([]string{"--network-cidr", networkCIDR.String(), "--mode", "vxlan"}, args...),
	}
	return &cluster{
		t: t, tb: tb, bin: filepath.Join(testenv.BinDir(t, "netd"), "netd"),
		opts: opts, network: opts.Network, netd: map[int]*testbed.Process{},
	}
}

// flags are what netd on node i is started with.
func (c *cluster) flags(i int) []string {
	n := c.tb.Node(i)
	opts := c.opts
	opts.EBPF = c.ebpf
	f := (&testbed.Netd{Node: n, Opts: opts, Bin: c.bin}).Flags()
	if c.v6Underlay {
		f = append(f, "--node-ip", n.IPv6.String()+","+n.IP.String())
	}
	return f
}

// spawn starts netd on node i without waiting for it; safe to call
// from any goroutine.
func (c *cluster) spawn(i int) (*testbed.Process, error) {
	if c.ebpf {
		// Once per node; testbed.StartNetd would do it, these suites
		// start netd themselves.
		if _, err := c.tb.Node(i).MountBPFFS(); err != nil {
			return nil, err
		}
	}
	p, err := c.tb.Node(i).Start(testbed.ProcSpec{Name: fmt.Sprintf("netd-node%d", i), Path: c.bin, Args: c.flags(i)})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.netd[i] = p
	c.mu.Unlock()
	return p, nil
}

// launch starts netd on node i without waiting for it.
func (c *cluster) launch(i int) *testbed.Process {
	c.t.Helper()
	p, err := c.spawn(i)
	if err != nil {
		c.t.Fatal(err)
	}
	return p
}

// start starts netd on node i and waits until it serves a valid lease.
func (c *cluster) start(i int) *lease.Node {
	c.t.Helper()
	c.launch(i)
	return c.lease(i)
}

func (c *cluster) proc(i int) *testbed.Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.netd[i]
}

// kill ends node i's netd with SIGKILL.
func (c *cluster) kill(i int) {
	c.t.Helper()
	if p := c.proc(i); p != nil {
		if err := p.Kill(); err != nil {
			c.t.Fatal(err)
		}
	}
}

// stop ends node i's netd with SIGTERM.
func (c *cluster) stop(i int) {
	c.t.Helper()
	if p := c.proc(i); p != nil {
		if err := p.Stop(10 * time.Second); err != nil {
			c.t.Errorf("netd on node%d did not stop cleanly: %v", i, err)
		}
	}
}

// leave stops node i's netd and runs `netd leave`.
func (c *cluster) leave(i int) {
	c.t.Helper()
	c.stop(i)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := c.tb.Node(i).Run(ctx, c.bin, append([]string{"leave"}, c.flags(i)...)...); err != nil {
		c.t.Fatalf("netd leave on node%d: %v\n%s", i, err, out)
	}
}

// lease waits for node i's lease file to be valid and returns it.
func (c *cluster) lease(i int) *lease.Node {
	c.t.Helper()
	path := lease.Path(c.tb.Node(i).LeaseDir, c.network)
	var l *lease.Node
	eventually(c.t, fmt.Sprintf("lease file of node%d", i), 60*time.Second, func() error {
		if p := c.proc(i); p != nil && p.Exited() {
			c.t.Fatalf("netd on node%d exited: %v\n%s", i, p.Wait(context.Background()), tail(p.Log(), 30))
		}
		var err error
		if l, err = lease.Read(path, time.Now()); err != nil {
			return err
		}
		// The lease file of a killed earlier run may still be valid.
		if p := c.proc(i); p != nil && !running(p) {
			return fmt.Errorf("netd on node%d still starting", i)
		}
		return nil
	})
	return l
}

func (c *cluster) status(i int) (*netd.Status, error) {
	body, err := c.tb.Node(i).Get(context.Background(), "http://"+metricsAddr+"/status")
	if err != nil {
		return nil, err
	}
	var s netd.Status
	return &s, json.Unmarshal(body, &s)
}

// metric returns the value of a berth_netd_ metric on node i (-1 if absent).
func (c *cluster) metric(i int, name string) (float64, error) {
	body, err := c.tb.Node(i).Get(context.Background(), "http://"+metricsAddr+"/metrics")
	if err != nil {
		return 0, err
	}
	m := regexp.MustCompile(`(?m)^berth_netd_` + name + `\{[^}]*\} (\S+)$`).FindSubmatch(body)
	if m == nil {
		return -1, nil
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// converged waits until node i's netd connects every one of peers (node
// numbers) and its kernel matches the leases.
func (c *cluster) converged(i int, peers ...int) *netd.Status {
	c.t.Helper()
	var s *netd.Status
	eventually(c.t, fmt.Sprintf("node%d to converge on peers %v", i, peers), 60*time.Second, func() error {
		var err error
		if s, err = c.status(i); err != nil {
			return err
		}
		var names []string
		for _, p := range s.Peers {
			names = append(names, p.Name)
		}
		var want []string
		for _, p := range peers {
			want = append(want, c.tb.Node(p).Host)
		}
		slices.Sort(names)
		slices.Sort(want)
		if !slices.Equal(names, want) || !s.KernelMatches || !s.EtcdUp {
			return fmt.Errorf("peers %v (want %v), kernel matches %v, etcd up %v, pending %q", names, want, s.KernelMatches, s.EtcdUp, s.Pending)
		}
		return nil
	})
	return s
}

// leases reads the network's leases straight from etcd.
func (c *cluster) leases(cli *clientv3.Client) bcluster.Snapshot {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := registry.New(cli, "", c.network).List(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	return s
}

// checkLeases checks the leases in etcd: exactly the nodes up hold one,
// each a distinct subnet, and each node's lease file says the same. It
// returns node number -> subnet.
func (c *cluster) checkLeases(cli *clientv3.Client, up []int) map[int]netip.Prefix {
	c.t.Helper()
	snap := c.leases(cli)
	byName := map[string]bcluster.Lease{}
	for _, l := range snap.Leases {
		if other, dup := byName[l.NodeName]; dup {
			c.t.Errorf("%s holds %s and %s", l.NodeName, other.Subnet, l.Subnet)
		}
		byName[l.NodeName] = l
	}
	if len(snap.Rejected) > 0 {
		c.t.Errorf("unreadable keys in etcd: %+v", snap.Rejected)
	}
	out := map[int]netip.Prefix{}
	for _, i := range up {
		n := c.tb.Node(i)
		l, ok := byName[n.Host]
		if !ok {
			c.t.Errorf("%s holds no lease in etcd", n.Host)
			continue
		}
		delete(byName, n.Host)
		if l.NodeIP != n.IP {
			c.t.Errorf("%s's lease says node IP %s", n.Host, l.NodeIP)
		}
		if f := c.lease(i); f.Subnet != l.Subnet {
			c.t.Errorf("%s's lease file says %s, etcd %s", n.Host, f.Subnet, l.Subnet)
		}
		out[i] = l.Subnet
	}
	for name, l := range byName {
		c.t.Errorf("lease of %s (%s) left in etcd", name, l.Subnet)
	}
	return out
}

// kernel is what netd installed on a node for the other nodes.
type kernel struct {
	Routes []string // "dst via gw dev onlink"
	FDB    []string // "mac dst ip"
	Neighs []string // "ip lladdr mac" (permanent)
	Addrs  []string // on the VTEP
}

func (k kernel) String() string {
	return fmt.Sprintf("routes %q fdb %q neighbours %q addresses %q", k.Routes, k.FDB, k.Neighs, k.Addrs)
}

// readKernel reads node n's routes with netd's protocol and its VTEP's
// FDB, permanent neighbours and addresses.
func readKernel(t *testing.T, n *testbed.Node) kernel {
	t.Helper()
	var k kernel
	err := n.Do(func() error {
		rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: backend.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return err
		}
		for _, r := range rs {
			k.Routes = append(k.Routes, backend.Describe(&r))
		}
		l, err := netlink.LinkByName(vtepName)
		if err != nil {
			return err
		}
		fdb, err := netlink.NeighList(l.Attrs().Index, unix.AF_BRIDGE)
		if err != nil {
			return err
		}
		for _, f := range fdb {
			k.FDB = append(k.FDB, f.HardwareAddr.String()+" dst "+f.IP.String())
		}
		ns, err := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, e := range ns {
			if e.State&netlink.NUD_PERMANENT != 0 {
				k.Neighs = append(k.Neighs, e.IP.String()+" lladdr "+e.HardwareAddr.String())
			}
		}
		as, err := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range as {
			k.Addrs = append(k.Addrs, a.IPNet.String())
		}
		return err
	})
	if err != nil {
		t.Fatalf("reading %s's kernel: %v", n.Host, err)
	}
	for _, s := range [][]string{k.Routes, k.FDB, k.Neighs, k.Addrs} {
		slices.Sort(s)
	}
	return k
}

// wantKernel is what node self must have for the leases in etcd: per
// other lease a route, an FDB entry and a neighbour, and the network's
// unreachable route, nothing else.
func wantKernel(snap bcluster.Snapshot, self string) kernel {
	var k kernel
	for _, r := range backend.UnreachableRoutes([]netip.Prefix{networkCIDR}) {
		k.Routes = append(k.Routes, backend.Describe(&r))
	}
	for _, l := range snap.Leases {
		if l.NodeName == self {
			k.Addrs = append(k.Addrs, netip.PrefixFrom(l.Subnet.Addr(), 32).String())
			continue
		}
		gw := l.Subnet.Addr()
		k.Routes = append(k.Routes, fmt.Sprintf("%s via %s dev %s onlink", l.Subnet, gw, vtepName))
		k.FDB = append(k.FDB, l.VTEPMAC.String()+" dst "+l.NodeIP.String())
		k.Neighs = append(k.Neighs, gw.String()+" lladdr "+l.VTEPMAC.String())
	}
	for _, s := range [][]string{k.Routes, k.FDB, k.Neighs, k.Addrs} {
		slices.Sort(s)
	}
	return k
}

// checkKernels checks that each node up has exactly the kernel state the
// leases in etcd call for: nothing missing, nothing stale.
func (c *cluster) checkKernels(cli *clientv3.Client, up []int) {
	c.t.Helper()
	snap := c.leases(cli)
	for _, i := range up {
		n := c.tb.Node(i)
		want := wantKernel(snap, n.Host)
		var got kernel
		eventually(c.t, n.Host+"'s kernel to match etcd", 30*time.Second, func() error {
			got = readKernel(c.t, n)
			if got.String() != want.String() {
				return fmt.Errorf("\n have %s\n want %s", got, want)
			}
			return nil
		})
	}
}

// gateway puts the first address of subnet on a bridge in node n, as the
// CNI plugin would, so that traffic between nodes has an end. A node with
// containers has it on the plugin's bridge already, and keeps it there: a
// second bridge with the subnet would take the containers' route.
func gateway(t *testing.T, n *testbed.Node, subnet netip.Prefix) netip.Addr {
	t.Helper()
	gw := subnet.Masked().Addr().Next()
	err := n.Do(func() error {
		held, err := netlink.AddrList(nil, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, a := range held {
			if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil && a.IP.Equal(gw.AsSlice()) && l.Attrs().Name != "gw" {
				return nil
			}
		}
		br, err := netlink.LinkByName("gw")
		if err != nil {
			la := netlink.NewLinkAttrs()
			la.Name = "gw"
			if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
				return err
			}
			if br, err = netlink.LinkByName("gw"); err != nil {
				return err
			}
		}
		addrs, err := netlink.AddrList(br, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if err := netlink.AddrDel(br, &a); err != nil {
				return err
			}
		}
		if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: backend.IPNet(netip.PrefixFrom(gw, subnet.Bits()))}); err != nil {
			return err
		}
		return netlink.LinkSetUp(br)
	})
	if err != nil {
		t.Fatalf("gateway on %s: %v", n.Host, err)
	}
	return gw
}

// fullMesh pings every node's gateway from every other node's.
func fullMesh(t *testing.T, tb *testbed.Testbed, gws map[int]netip.Addr) {
	t.Helper()
	for i, src := range gws {
		for j, dst := range gws {
			if i == j {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			// A few tries: the first packet may wait for a neighbour.
			_, err := tb.Node(i).Run(ctx, "ping", "-n", "-c", "1", "-w", "10", "-I", src.String(), dst.String())
			cancel()
			if err != nil {
				t.Errorf("node%d -> node%d: %v", i, j, err)
			}
		}
	}
}

var lossRe = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// pinger is a continuous ping in the background.
type pinger struct {
	cmd  *exec.Cmd
	done chan struct{}
	out  strings.Builder
	err  error
}

// startPing pings dst from inside netns n every 200ms (from src when
// given) until stop, at most for max.
func startPing(t *testing.T, n ns.NetNS, src, dst string, max time.Duration) *pinger {
	t.Helper()
	args := []string{"-n", "-q", "-i", "0.2", "-W", "1", "-w", strconv.Itoa(int(max.Seconds())), dst}
	if src != "" {
		args = append([]string{"-I", src}, args...)
	}
	p := &pinger{cmd: exec.Command("ping", args...), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	err := n.Do(func(ns.NetNS) error { return p.cmd.Start() }) // forked inside n
	if err != nil {
		t.Fatalf("starting ping: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.cmd.Process.Kill(); <-p.done })
	return p
}

// stop ends the ping (SIGINT: it prints its summary) and returns packets
// sent and received.
func (p *pinger) stop(t *testing.T) (sent, received int) {
	t.Helper()
	p.cmd.Process.Signal(os.Interrupt)
	<-p.done
	m := lossRe.FindStringSubmatch(p.out.String())
	if m == nil {
		t.Fatalf("ping: %v\n%s", p.err, p.out.String())
	}
	sent, _ = strconv.Atoi(m[1])
	received, _ = strconv.Atoi(m[2])
	return sent, received
}

func eventually(t *testing.T, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// report records a figure for the README table (go test -v shows it),
// only when every check before it passed.
func report(t *testing.T, format string, args ...any) {
	t.Helper()
	if !t.Failed() {
		t.Logf("FIGURE %s: %s", t.Name(), fmt.Sprintf(format, args...))
	}
}

// running says whether netd p had finished starting (leased, reconciled,
// serving) in its latest run: its log since the last start says so.
func running(p *testbed.Process) bool {
	log := p.Log()
	if i := strings.LastIndex(log, "\n=== "); i >= 0 {
		log = log[i:]
	}
	return strings.Contains(log, "msg=running")
}

// nodes is 1..n.
func nodes(n int) []int {
	var out []int
	for i := 1; i <= n; i++ {
		out = append(out, i)
	}
	return out
}

func without(list []int, i int) []int {
	return slices.DeleteFunc(slices.Clone(list), func(v int) bool { return v == i })
}
