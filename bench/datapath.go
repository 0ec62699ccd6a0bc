package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
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
	BinDirs    []string
	Progress   func(format string, args ...any)
}

// MeasureDatapath measures TCP throughput with iperf3 and the round trip
// of a 1-byte request/response loop between e's namespaces.
func MeasureDatapath(ctx context.Context, name string, e Endpoints, cfg DatapathConfig) (Datapath, error) {
	d := Datapath{Name: name}
	var err error
	for _, streams := range []int{1, 4} {
		var runs []float64
		for i := 0; i < max(cfg.Repeats, 1); i++ {
			cfg.Progress("datapath %s: iperf3, %d stream(s), %ds, run %d", name, streams, cfg.Seconds, i+1)
			g, err := iperf(ctx, e, streams, cfg.Seconds)
			if err != nil {
				return d, fmt.Errorf("%s iperf3 -P %d: %w", name, streams, err)
			}
			runs = append(runs, g)
		}
		sort.Float64s(runs)
		g := runs[len(runs)/2] // the median: one noisy neighbour does not decide
		if streams == 1 {
			d.Gbps1 = g
		} else {
			d.Gbps4 = g
		}
	}
	cfg.Progress("datapath %s: %d TCP round trips", name, cfg.RoundTrips)
	d.RTTP50, d.RTTP99, err = roundTrips(e, cfg.RoundTrips)
	return d, err
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
	var res iperfResult
	for try := 0; try < 50; try++ { // until the server listens
		res, err = iperfClient(ctx, e, streams, seconds)
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return 0, err
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}

// iperfResult is what iperf3 -J reports that the bench needs.
type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// iperfClient runs one iperf3 client in e.Client. iperf3 3.12 with -J
// exits 0 when it cannot connect and reports it only in the JSON's
// "error", so that is an error here too: the server may not listen yet.
func iperfClient(ctx context.Context, e Endpoints, streams, seconds int) (iperfResult, error) {
	var res iperfResult
	var out []byte
	err := e.Client.Do(func(ns.NetNS) error {
		var err error
		out, err = exec.CommandContext(ctx, "iperf3", "-c", e.ServerIP, "-p", "5201", "-J",
			"-P", strconv.Itoa(streams), "-t", strconv.Itoa(seconds), "-O", "1").Output()
		return err
	})
	if err != nil {
		return res, fmt.Errorf("iperf3 client: %w: %s", err, out)
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return res, fmt.Errorf("iperf3 output: %w", err)
	}
	if res.Error != "" {
		return res, fmt.Errorf("iperf3 client: %s", res.Error)
	}
	return res, nil
}

// roundTrips times n one-byte request/response exchanges on one TCP
// connection (what an RPC sees), after a short warm-up.
func roundTrips(e Endpoints, n int) (p50, p99 time.Duration, err error) {
	var l net.Listener
	if err := e.Server.Do(func(ns.NetNS) error {
		l, err = net.Listen("tcp4", net.JoinHostPort(e.ServerIP, "5202"))
		return err
	}); err != nil {
		return 0, 0, err
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.(*net.TCPConn).SetNoDelay(true)
		io.Copy(c, c)
	}()
	var c net.Conn
	if err := e.Client.Do(func(ns.NetNS) error {
		c, err = net.DialTimeout("tcp4", net.JoinHostPort(e.ServerIP, "5202"), 3*time.Second)
		return err
	}); err != nil {
		return 0, 0, err
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	buf := []byte{1}
	samples := make([]time.Duration, 0, n)
	for i := 0; i < n+n/10; i++ {
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			return 0, 0, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return 0, 0, err
		}
		if i >= n/10 {
			samples = append(samples, time.Since(start))
		}
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	return percentile(samples, 50), percentile(samples, 99), nil
}

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

// BridgeContainers are two containers on one node's berth-bridge network.
func BridgeContainers(ctx context.Context, binDirs []string) (Endpoints, func(), error) {
	node, err := testutils.NewNS()
	if err != nil {
		return Endpoints{}, nil, err
	}
	work, _ := os.MkdirTemp("", "berth-bench-dp-")
	list, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bench-dp","plugins":[
		{"type":"berth-bridge","bridge":"bench0","isDefaultGateway":true,"stateDir":%q,
		 "ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.202.0.0/24"}]]}}]}`,
		filepath.Join(work, "state"), filepath.Join(work, "ipam"))))
	if err != nil {
		return Endpoints{}, nil, err
	}
	cni := libcni.NewCNIConfigWithCacheDir(binDirs, filepath.Join(work, "cache"), nil)
	var conts []ns.NetNS
	var confs []*libcni.RuntimeConf
	cleanup := func() {
		for i, c := range conts {
			node.Do(func(ns.NetNS) error { return cni.DelNetworkList(ctx, list, confs[i]) })
			closeNS(c)
		}
		closeNS(node)
		os.RemoveAll(work)
	}
	var ips []string
	for i := 0; i < 2; i++ {
		c, err := testutils.NewNS()
		if err != nil {
			cleanup()
			return Endpoints{}, nil, err
		}
		conts = append(conts, c)
		rc := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("dp%d", i), NetNS: c.Path(), IfName: "eth0"}
		confs = append(confs, rc)
		var res *current.Result
		err = node.Do(func(ns.NetNS) error {
			r, err := cni.AddNetworkList(ctx, list, rc)
			if err == nil {
				res, err = current.NewResultFromResult(r)
			}
			return err
		})
		if err != nil {
			cleanup()
			return Endpoints{}, nil, fmt.Errorf("bridge ADD: %w", err)
		}
		ips = append(ips, res.IPs[0].Address.IP.String())
	}
	return Endpoints{Client: conts[0], Server: conts[1], ServerIP: ips[1]}, cleanup, nil
}
