// Package bench measures berth against its baselines on this machine, side
// by side in one run, inside network namespaces it creates and removes.
package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/netnsdir"
)

// Latency is the distribution of one CNI operation.
type Latency struct {
	Name string        `json:"name"`
	Op   string        `json:"op"`
	Runs int           `json:"runs"`
	P50  time.Duration `json:"p50"`
	P99  time.Duration `json:"p99"`
}

// CNIConfig says what to measure and where the plugins are.
type CNIConfig struct {
	Runs     int      // ADD/DEL pairs per network
	Parallel int      // parallel ADDs in the burst measurement
	BinDirs  []string // berth's bin dir and the reference plugins' dir
	Progress func(format string, args ...any)
}

// network is one conflist under test. setup prepares what the network
// needs on the node besides the plugins (a lease file for the leased modes)
// and returns the conflist.
type network struct {
	name  string
	setup func(work string) (string, error)
	// bpf mounts a private BPF filesystem at <work>/bpf first, for the
	// eBPF datapath's pins.
	bpf bool
}

// DualStackName is berth-bridge on a dual-stack network in the CNI
// latency figures.
const DualStackName = "berth-bridge dual-stack"

// CNINetworks are the jobs compared: every berth plugin and the reference
// chain doing the same thing (masquerade, one port mapping).
var CNINetworks = []network{
	{name: "berth-bridge", setup: func(work string) (string, error) {
		return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bench-berth","plugins":[{"type":"berth-bridge","bridge":"bench0",
			"ipMasq":true,"isDefaultGateway":true,"stateDir":%q,
			"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.200.0.0/16"}]]},
			"capabilities":{"portMappings":true}}]}`, filepath.Join(work, "state"), filepath.Join(work, "ipam")), nil
	}},
	{name: BridgeEBPFPlugin, bpf: true, setup: func(work string) (string, error) {
		return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bench-berth-ebpf","plugins":[{"type":"berth-bridge","bridge":"benchbpf1",
			"ipMasq":true,"isDefaultGateway":true,"stateDir":%q,"datapath":"ebpf","bpffs":%q,
			"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.205.0.0/16"}]]},
			"capabilities":{"portMappings":true}}]}`, filepath.Join(work, "state"), filepath.Join(work, "bpf"), filepath.Join(work, "ipam")), nil
	}},
	// The same job on both families: masquerade and the port mapping in
	// iptables and ip6tables (DualStackName, compared with berth-bridge).
	{name: DualStackName, setup: func(work string) (string, error) {
		return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bench-dual","plugins":[{"type":"berth-bridge","bridge":"benchds0",
			"ipMasq":true,"isDefaultGateway":true,"stateDir":%q,
			"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.204.0.0/16"}],[{"subnet":"fd00:204::/64"}]]},
			"capabilities":{"portMappings":true}}]}`, filepath.Join(work, "state"), filepath.Join(work, "ipam")), nil
	}},
	{name: "berth-vxlan", setup: leased(lease.ModeVXLAN, "10.210.1.0/24", "benchvx0")},
	{name: "berth-hostgw", setup: leased(lease.ModeHostGW, "10.211.1.0/24", "benchgw0")},
	{name: "berth-bgp", setup: leased(lease.ModeBGP, "10.212.1.0/26", "")},
	{name: "reference bridge+host-local+portmap", setup: func(work string) (string, error) {
		return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bench-ref","plugins":[{"type":"bridge","bridge":"benchref0",
			"isGateway":true,"isDefaultGateway":true,"ipMasq":true,
			"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.201.0.0/16"}]]}},
			{"type":"portmap","capabilities":{"portMappings":true}}]}`, filepath.Join(work, "ipam")), nil
	}},
}

// BridgeEBPFPlugin names berth-bridge's rows on the eBPF datapath.
const BridgeEBPFPlugin = "berth-bridge, eBPF"

// leased is a netd-managed network: the lease file netd would write for a
// node holding subnet, and the conflist netd would write next to it. The
// plugins need nothing else from netd, so no etcd is involved here.
func leased(mode, subnet, bridge string) func(work string) (string, error) {
	return func(work string) (string, error) {
		name := "bench-" + mode
		sub := netip.MustParsePrefix(subnet)
		cidr, _ := sub.Addr().Prefix(16)
		n := &lease.Node{Network: name, Mode: mode, NetworkCIDR: cidr, Subnet: sub, MTU: 1450,
			IPMasq: true, NodeName: "bench", NodeIP: netip.MustParseAddr("192.168.77.1")}
		leaseDir := filepath.Join(work, "lease")
		if err := os.MkdirAll(leaseDir, 0o755); err != nil {
			return "", err
		}
		if err := lease.Write(lease.Path(leaseDir, name), n); err != nil {
			return "", fmt.Errorf("writing %s lease: %w", name, err)
		}
		list, err := conf.NodeConflist{Network: name, Mode: mode, LeaseDir: leaseDir, Bridge: bridge,
			StateDir: filepath.Join(work, "state"), IPAMDataDir: filepath.Join(work, "ipam")}.Marshal()
		return string(list), err
	}
}

// MeasureCNI runs cfg.Runs ADD+DEL pairs of every network, interleaved so
// that all see the same machine load, then a burst of parallel ADDs. Each
// round takes the networks in a new order: what one network's calls leave
// to the next (an nf_tables commit that makes berth read the rules again,
// a veth still being freed) then falls on every network alike, not always
// on the one listed after it.
func MeasureCNI(ctx context.Context, cfg CNIConfig) ([]Latency, error) {
	node, err := testutils.NewNS()
	if err != nil {
		return nil, fmt.Errorf("creating node namespace: %w", err)
	}
	defer testutils.UnmountNS(node)
	defer node.Close()
	defer netnsdir.Remove(node.Path()) // the plugins' locks and port claims of the node
	work, err := os.MkdirTemp("", "berth-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)

	type target struct {
		name  string
		list  *libcni.NetworkConfigList
		cni   *libcni.CNIConfig
		add   []time.Duration
		del   []time.Duration
		burst []time.Duration
	}
	var targets []*target
	for i, n := range CNINetworks {
		dir := filepath.Join(work, fmt.Sprint(i))
		if n.bpf {
			bpffs := filepath.Join(dir, "bpf")
			if err := mountBPFFS(bpffs); err != nil {
				return nil, err
			}
			defer unix.Unmount(bpffs, unix.MNT_DETACH) // before RemoveAll(work), deferred earlier
		}
		text, err := n.setup(dir)
		if err != nil {
			return nil, fmt.Errorf("%s setup: %w", n.name, err)
		}
		list, err := libcni.ConfListFromBytes([]byte(text))
		if err != nil {
			return nil, fmt.Errorf("%s conflist: %w", n.name, err)
		}
		targets = append(targets, &target{name: n.name, list: list,
			cni: libcni.NewCNIConfigWithCacheDir(cfg.BinDirs, filepath.Join(dir, "cache"), nil)})
	}
	rt := func(id string, c ns.NetNS, port int) *libcni.RuntimeConf {
		return &libcni.RuntimeConf{ContainerID: id, NetNS: c.Path(), IfName: "eth0",
			CapabilityArgs: map[string]any{"portMappings": []map[string]any{{"hostPort": port, "containerPort": 80, "protocol": "tcp"}}}}
	}
	timed := func(f func() error) (time.Duration, error) {
		var d time.Duration
		err := node.Do(func(ns.NetNS) error {
			start := time.Now()
			err := f()
			d = time.Since(start)
			return err
		})
		return d, err
	}

	// A resident container keeps each network alive, as on a real node:
	// the timed ADDs and DELs are neither a network's first nor its last.
	for _, t := range targets {
		c, err := testutils.NewNS()
		if err != nil {
			return nil, err
		}
		defer closeNS(c)
		conf := &libcni.RuntimeConf{ContainerID: "resident", NetNS: c.Path(), IfName: "eth0"}
		if _, err := timed(func() error { _, err := t.cni.AddNetworkList(ctx, t.list, conf); return err }); err != nil {
			return nil, fmt.Errorf("%s resident ADD: %w", t.name, err)
		}
		defer node.Do(func(ns.NetNS) error { return t.cni.DelNetworkList(ctx, t.list, conf) })
	}

	order := rand.New(rand.NewPCG(14, 14)) // the same orders in every run
	for i := 0; i < cfg.Runs; i++ {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if i%20 == 0 {
			cfg.Progress("CNI latency: run %d/%d", i, cfg.Runs)
		}
		for _, j := range order.Perm(len(targets)) {
			t := targets[j]
			c, err := testutils.NewNS()
			if err != nil {
				return nil, err
			}
			conf := rt(fmt.Sprintf("bench-%d", i), c, 30000+i%1000)
			d, err := timed(func() error { _, err := t.cni.AddNetworkList(ctx, t.list, conf); return err })
			if err != nil {
				closeNS(c)
				return nil, fmt.Errorf("%s ADD: %w", t.name, err)
			}
			t.add = append(t.add, d)
			d, err = timed(func() error { return t.cni.DelNetworkList(ctx, t.list, conf) })
			closeNS(c)
			if err != nil {
				return nil, fmt.Errorf("%s DEL: %w", t.name, err)
			}
			t.del = append(t.del, d)
		}
	}

	// Burst: Parallel ADDs at once, each timed on its own, then their DELs.
	for _, t := range targets {
		cfg.Progress("CNI latency: %d parallel ADDs on %s", cfg.Parallel, t.name)
		var mu sync.Mutex
		var wg sync.WaitGroup
		var firstErr error
		conts := make([]ns.NetNS, cfg.Parallel)
		for w := range conts {
			if conts[w], err = testutils.NewNS(); err != nil {
				return nil, err
			}
		}
		for w := range conts {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				conf := rt(fmt.Sprintf("burst-%d", w), conts[w], 31000+w)
				d, err := timed(func() error { _, err := t.cni.AddNetworkList(ctx, t.list, conf); return err })
				mu.Lock()
				defer mu.Unlock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("%s parallel ADD: %w", t.name, err)
				}
				t.burst = append(t.burst, d)
			}(w)
		}
		wg.Wait()
		for w, c := range conts {
			node.Do(func(ns.NetNS) error {
				return t.cni.DelNetworkList(ctx, t.list, rt(fmt.Sprintf("burst-%d", w), c, 31000+w))
			})
			closeNS(c)
		}
		if firstErr != nil {
			return nil, firstErr
		}
	}

	var out []Latency
	for _, t := range targets {
		out = append(out,
			summarize(t.name, "ADD", t.add),
			summarize(t.name, "DEL", t.del),
			summarize(t.name, fmt.Sprintf("ADD x%d parallel", cfg.Parallel), t.burst))
	}
	return out, nil
}

func closeNS(n ns.NetNS) {
	n.Close()
	testutils.UnmountNS(n)
}

func summarize(name, op string, ds []time.Duration) Latency {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return Latency{Name: name, Op: op, Runs: len(ds), P50: percentile(ds, 50), P99: percentile(ds, 99)}
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	if i > 0 {
		i--
	}
	return sorted[i]
}
