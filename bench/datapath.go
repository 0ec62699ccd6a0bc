package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/netnsdir"
)

// Datapath is the container-to-container figures of one mode.
type Datapath struct {
	Name     string        `json:"name"`
	Gbps1    float64       `json:"gbps1"` // one TCP stream
	Gbps4    float64       `json:"gbps4"` // four TCP streams
	RTTP50   time.Duration `json:"rttP50"`
	RTTP99   time.Duration `json:"rttP99"`
	Baseline string        `json:"baseline"` // the Datapath this one is compared with
}

// Endpoints are a client and a server namespace that can reach serverIP.
type Endpoints struct {
	Client, Server ns.NetNS
	ServerIP       string
}

// DatapathConfig says how long to measure.
type DatapathConfig struct {
	Seconds    int // per iperf3 run
	Repeats    int // iperf3 runs per figure; the median is kept
	RoundTrips int // per latency run
	Progress   func(format string, args ...any)
}

// path is one thing to measure: its endpoints and its figures' names.
type path struct {
	name, baseline string
	e              Endpoints
}

// measureInterleaved measures TCP throughput with iperf3 (1 and 4
// streams, the median of the repeats) and the round trip of a 1-byte
// request/response loop on every path. Each repeat runs iperf3 on every
// path in turn, so that the drifting load of a shared machine weighs on
// every path alike; the round trips are timed one path after the other at
// the end.
func measureInterleaved(ctx context.Context, paths []path, cfg DatapathConfig) ([]Datapath, error) {
	runs := make([]map[int][]float64, len(paths))
	for i := range runs {
		runs[i] = map[int][]float64{}
	}
	for r := 0; r < max(cfg.Repeats, 1); r++ {
		for _, streams := range []int{1, 4} {
			for i, p := range paths {
				cfg.Progress("datapath %s: iperf3, %d stream(s), %ds, run %d", p.name, streams, cfg.Seconds, r+1)
				g, err := iperf(ctx, p.e, streams, cfg.Seconds)
				if err != nil {
					return nil, fmt.Errorf("%s iperf3 -P %d: %w", p.name, streams, err)
				}
				runs[i][streams] = append(runs[i][streams], g)
			}
		}
	}
	var res []Datapath
	for i, p := range paths {
		d := Datapath{Name: p.name, Baseline: p.baseline, Gbps1: median(runs[i][1]), Gbps4: median(runs[i][4])}
		cfg.Progress("datapath %s: %d TCP round trips", p.name, cfg.RoundTrips)
		var err error
		if d.RTTP50, d.RTTP99, err = roundTrips(p.e, cfg.RoundTrips); err != nil {
			return nil, fmt.Errorf("%s round trips: %w", p.name, err)
		}
		res = append(res, d)
	}
	return res, nil
}

// median of runs: one noisy neighbour does not decide.
func median(runs []float64) float64 {
	s := slices.Clone(runs)
	slices.Sort(s)
	return s[len(s)/2]
}

// iperf runs the iperf3 server in e.Server (stopped by its PID) and the
// client in e.Client.
func iperf(ctx context.Context, e Endpoints, streams, seconds int) (float64, error) {
	var srv *exec.Cmd
	err := e.Server.Do(func(ns.NetNS) error {
		srv = exec.Command("iperf3", "-s", "-1", "-B", e.ServerIP, "-p", "5201")
		srv.Stdout, srv.Stderr = io.Discard, io.Discard
		return srv.Start()
	})
	if err != nil {
		return 0, fmt.Errorf("starting iperf3 server: %w", err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	// iperf3 -J exits 0 even when it could not connect (3.12 does): the
	// JSON's "error" says so, and until the server listens that is normal.
	var res struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	for try := 0; ; try++ {
		var out []byte
		err = e.Client.Do(func(ns.NetNS) error {
			out, err = exec.CommandContext(ctx, "iperf3", "-c", e.ServerIP, "-p", "5201", "-J",
				"-P", strconv.Itoa(streams), "-t", strconv.Itoa(seconds), "-O", "1").Output()
			return err
		})
		if err == nil {
			res.Error = ""
			if err = json.Unmarshal(out, &res); err != nil {
				return 0, fmt.Errorf("iperf3 output: %w: %s", err, out)
			}
			if res.Error != "" {
				err = errors.New(res.Error)
			} else if res.End.SumReceived.BitsPerSecond == 0 {
				err = fmt.Errorf("no throughput reported: %s", out)
			}
		}
		if err == nil {
			break
		}
		if try == 50 || ctx.Err() != nil {
			return 0, fmt.Errorf("iperf3 client: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}

// roundTrips times n one-byte request/response exchanges on one TCP
// connection (what an RPC sees), after a short warm-up.
//
// Client and server are threads pinned to the same CPU and block in the
// kernel (no Go netpoller): a packet crosses every veth, bridge and route
// of the path in softirq on that CPU and wakes the peer there. Unpinned,
// on a virtual machine, whether a wakeup needs an IPI to another (halted)
// vCPU decides the figure: p50 jumped between ~30 and ~100 µs from one run
// to the next on the same path, which would drown the path's own cost.
func roundTrips(e Endpoints, n int) (p50, p99 time.Duration, err error) {
	var l net.Listener
	if err := e.Server.Do(func(ns.NetNS) error {
		l, err = net.Listen(tcpFamily(e.ServerIP), net.JoinHostPort(e.ServerIP, "5202"))
		return err
	}); err != nil {
		return 0, 0, err
	}
	defer l.Close()
	served := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		served <- pinnedLoop(c, func(fd int, buf []byte) error {
			if _, err := readFull(fd, buf); err != nil {
				return err
			}
			_, err := unix.Write(fd, buf)
			return err
		})
	}()
	var c net.Conn
	if err := e.Client.Do(func(ns.NetNS) error {
		c, err = net.DialTimeout(tcpFamily(e.ServerIP), net.JoinHostPort(e.ServerIP, "5202"), 3*time.Second)
		return err
	}); err != nil {
		return 0, 0, err
	}
	samples := make([]time.Duration, 0, n)
	i := 0
	done := make(chan error)
	go func() {
		done <- pinnedLoop(c, func(fd int, buf []byte) error {
			for ; i < n+n/10; i++ {
				start := time.Now()
				if _, err := unix.Write(fd, buf); err != nil {
					return err
				}
				if _, err := readFull(fd, buf); err != nil {
					return err
				}
				if i >= n/10 {
					samples = append(samples, time.Since(start))
				}
			}
			return io.EOF // done: the server sees the connection close
		})
	}()
	err = <-done
	c.Close()
	if err != io.EOF {
		return 0, 0, fmt.Errorf("request/response client: %w", err)
	}
	if err := <-served; err != nil && err != io.EOF {
		return 0, 0, fmt.Errorf("request/response server: %w", err)
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	return percentile(samples, 50), percentile(samples, 99), nil
}

// tcpFamily is "tcp6" for an IPv6 address, else "tcp4": never "tcp",
// for which Go decides once per process, in whichever namespace it first
// asks, whether IPv6 works.
func tcpFamily(ip string) string {
	if a, err := netip.ParseAddr(ip); err == nil && a.Is6() && !a.Is4In6() {
		return "tcp6"
	}
	return "tcp4"
}

// rrCPU is the CPU both ends of the request/response loop run on.
const rrCPU = 0

// pinnedLoop runs step on c's socket, in blocking mode, from a thread
// pinned to rrCPU, until step fails; it returns that error.
func pinnedLoop(c net.Conn, step func(fd int, buf []byte) error) error {
	c.(*net.TCPConn).SetNoDelay(true)
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	// Callers run this in a goroutine of its own: the locked thread ends
	// with it, so the pinning never leaks to other goroutines.
	runtime.LockOSThread()
	var cpus unix.CPUSet
	cpus.Set(rrCPU)
	if err := unix.SchedSetaffinity(0, &cpus); err != nil {
		return fmt.Errorf("pinning to CPU %d: %w", rrCPU, err)
	}
	var loopErr error
	err = raw.Control(func(fd uintptr) {
		if loopErr = unix.SetNonblock(int(fd), false); loopErr != nil {
			return
		}
		buf := []byte{1}
		for loopErr == nil {
			loopErr = step(int(fd), buf)
		}
	})
	if err != nil {
		return err
	}
	return loopErr
}

// readFull reads len(buf) bytes from a blocking fd; io.EOF when the peer
// closed.
func readFull(fd int, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			return n, io.EOF
		}
		n += m
	}
	return n, nil
}

// RawVethName names the one-node limit in the report.
const RawVethName = "raw veth"

// RawVeth is the physical limit on this machine: two namespaces joined by
// one veth pair, no CNI, no bridge, no iptables.
func RawVeth() (Endpoints, func(), error) {
	a, err := testutils.NewNS()
	if err != nil {
		return Endpoints{}, nil, err
	}
	b, err := testutils.NewNS()
	if err != nil {
		closeNS(a)
		return Endpoints{}, nil, err
	}
	cleanup := func() { closeNS(a); closeNS(b) }
	err = a.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = "raw0"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "raw1"}); err != nil {
			return err
		}
		peer, err := netlink.LinkByName("raw1")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(peer, int(b.Fd())); err != nil {
			return err
		}
		return upWithAddr("raw0", "10.250.0.1/24")
	})
	if err == nil {
		err = b.Do(func(ns.NetNS) error { return upWithAddr("raw1", "10.250.0.2/24") })
	}
	if err != nil {
		cleanup()
		return Endpoints{}, nil, fmt.Errorf("raw veth: %w", err)
	}
	return Endpoints{Client: a, Server: b, ServerIP: "10.250.0.2"}, cleanup, nil
}

func upWithAddr(name, cidr string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	a, _ := netlink.ParseAddr(cidr)
	if err := netlink.AddrAdd(l, a); err != nil {
		return err
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	return netlink.LinkSetUp(l)
}

// OneNodeNetwork is a conflist on one node; conflist gets a scratch dir
// for the network's state.
type OneNodeNetwork struct {
	Name     string
	Conflist func(work string) string
	// IPv6: measured between the containers' IPv6 addresses, against
	// Baseline (default: raw veth).
	IPv6     bool
	Baseline string
	// BPF mounts a private BPF filesystem at <work>/bpf for the
	// network's eBPF datapath.
	BPF bool
}

// OneNode are the one-node networks measured, berth's and the reference
// chain's, so that the cost of the kernel bridge (and of br_netfilter, on
// by default in every namespace) shows apart from berth's.
var OneNode = []OneNodeNetwork{
	{Name: "bridge (one node)", Conflist: func(work string) string {
		return fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bench-dp","plugins":[
		{"type":"berth-bridge","bridge":"bench0","isDefaultGateway":true,"ipMasq":true,"stateDir":%q,
		 "ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.202.0.0/24"}]]}}]}`,
			filepath.Join(work, "state"), filepath.Join(work, "ipam"))
	}},
	// The same bridge network with IPv6 too, measured over IPv6: what
	// the other family costs, next to the IPv4 row.
	{Name: "bridge IPv6 (one node)", IPv6: true, Baseline: "bridge (one node)", Conflist: func(work string) string {
		return fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bench-dp6","plugins":[
		{"type":"berth-bridge","bridge":"bench6","isDefaultGateway":true,"ipMasq":true,"stateDir":%q,
		 "ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.205.0.0/24"}],[{"subnet":"fd00:205::/64"}]]}}]}`,
			filepath.Join(work, "state"), filepath.Join(work, "ipam"))
	}},
	{Name: "reference bridge (one node)", Conflist: func(work string) string {
		return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bench-dpref","plugins":[
		{"type":"bridge","bridge":"benchref0","isGateway":true,"isDefaultGateway":true,"ipMasq":true,
		 "ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.203.0.0/24"}]]}},
		{"type":"portmap","capabilities":{"portMappings":true}}]}`, filepath.Join(work, "ipam"))
	}},
	{Name: BridgeEBPF, BPF: true, Conflist: func(work string) string {
		return fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bench-dpebpf","plugins":[
		{"type":"berth-bridge","bridge":"benchbpf0","isDefaultGateway":true,"ipMasq":true,"stateDir":%q,
		 "datapath":"ebpf","bpffs":%q,
		 "ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.204.0.0/24"}]]}}]}`,
			filepath.Join(work, "state"), filepath.Join(work, "bpf"), filepath.Join(work, "ipam"))
	}},
}

// BridgeEBPF names berth-bridge's row on the eBPF datapath.
const BridgeEBPF = "bridge, eBPF (one node)"

// OneNodeDatapath measures, interleaved, the one-node paths: raw veth (the
// limit) and two containers on each OneNode network.
func OneNodeDatapath(ctx context.Context, cfg DatapathConfig, binDirs []string) ([]Datapath, error) {
	raw, done, err := RawVeth()
	if err != nil {
		return nil, err
	}
	defer done()
	paths := []path{{name: RawVethName, e: raw}}
	for _, n := range OneNode {
		e, done, err := OneNodeContainers(ctx, n, binDirs)
		if err != nil {
			return nil, err
		}
		defer done()
		base := n.Baseline
		if base == "" {
			base = RawVethName
		}
		paths = append(paths, path{name: n.Name, baseline: base, e: e})
	}
	return measureInterleaved(ctx, paths, cfg)
}

// OneNodeContainers are two containers on one node's network n.
func OneNodeContainers(ctx context.Context, n OneNodeNetwork, binDirs []string) (Endpoints, func(), error) {
	node, err := testutils.NewNS()
	if err != nil {
		return Endpoints{}, nil, err
	}
	work, _ := os.MkdirTemp("", "berth-bench-dp-")
	var conts []*container
	bpffs := filepath.Join(work, "bpf")
	cleanup := func() {
		for _, c := range conts {
			c.remove(ctx)
		}
		netnsdir.Remove(node.Path()) // the plugins' locks and port claims of the node
		closeNS(node)
		if n.BPF {
			unix.Unmount(bpffs, unix.MNT_DETACH)
		}
		os.RemoveAll(work)
	}
	if n.BPF {
		if err := mountBPFFS(bpffs); err != nil {
			cleanup()
			return Endpoints{}, nil, fmt.Errorf("%s: %w", n.Name, err)
		}
	}
	list, err := libcni.ConfListFromBytes([]byte(n.Conflist(work)))
	if err != nil {
		cleanup()
		return Endpoints{}, nil, fmt.Errorf("%s conflist: %w", n.Name, err)
	}
	net := cniNetwork{list: list, cni: libcni.NewCNIConfigWithCacheDir(binDirs, filepath.Join(work, "cache"), nil),
		inNode: func(f func() error) error { return node.Do(func(ns.NetNS) error { return f() }) }}
	for i := 0; i < 2; i++ {
		c, err := net.attach(ctx, fmt.Sprintf("dp%d", i))
		if c != nil {
			conts = append(conts, c)
		}
		if err != nil {
			cleanup()
			return Endpoints{}, nil, fmt.Errorf("%s: %w", n.Name, err)
		}
	}
	server := conts[1].ip
	if n.IPv6 {
		server = conts[1].ip6
	}
	if server == "" {
		cleanup()
		return Endpoints{}, nil, fmt.Errorf("%s: the container has no address of the family measured", n.Name)
	}
	return Endpoints{Client: conts[0].netns, Server: conts[1].netns, ServerIP: server}, cleanup, nil
}

// cniNetwork is a CNI network on a node, as a runtime sees it.
type cniNetwork struct {
	inNode func(func() error) error // runs f in the node's network namespace
	cni    *libcni.CNIConfig
	list   *libcni.NetworkConfigList
}

// container is a network namespace attached to a cniNetwork.
type container struct {
	netns ns.NetNS
	ip    string // its first address
	ip6   string // its first IPv6 address, if any
	net   cniNetwork
	rt    *libcni.RuntimeConf
}

// attach creates a container namespace and runs the network's plugins for
// it (CNI ADD) in the node's namespace. A container it returns, also with
// an error, needs remove.
func (n cniNetwork) attach(ctx context.Context, id string) (*container, error) {
	netns, err := testutils.NewNS()
	if err != nil {
		return nil, err
	}
	c := &container{netns: netns, net: n, rt: &libcni.RuntimeConf{ContainerID: id, NetNS: netns.Path(), IfName: "eth0"}}
	var res *current.Result
	err = n.inNode(func() error {
		r, err := n.cni.AddNetworkList(ctx, n.list, c.rt)
		if err == nil {
			res, err = current.NewResultFromResult(r)
		}
		return err
	})
	if err == nil && len(res.IPs) == 0 {
		err = errors.New("the result has no address")
	}
	if err != nil {
		return c, fmt.Errorf("CNI ADD of %s: %w", id, err)
	}
	c.ip = res.IPs[0].Address.IP.String()
	for _, ipc := range res.IPs {
		if ipc.Address.IP.To4() == nil {
			c.ip6 = ipc.Address.IP.String()
			break
		}
	}
	return c, nil
}

// remove detaches the container (CNI DEL) and removes its namespace.
func (c *container) remove(ctx context.Context) {
	c.net.inNode(func() error { return c.net.cni.DelNetworkList(ctx, c.net.list, c.rt) })
	closeNS(c.netns)
}

// mountBPFFS mounts a private BPF filesystem at dir (the eBPF datapath's
// pins of one bench node): never the machine's /sys/fs/bpf.
func mountBPFFS(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting a BPF filesystem on %s: %w", dir, err)
	}
	return nil
}
