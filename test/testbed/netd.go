package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/lease"
)

// NetdOptions say how to run netd on a node. The node's own directories
// (lease, CNI conf, IPAM data, state) are always passed; the rest is here.
type NetdOptions struct {
	// Network is --network-name (default "berth"). Several networks can
	// share the nodes, each with its own MetricsPort.
	Network string
	// Etcd are the --etcd-endpoints. None (and no Join): this node runs
	// netd's embedded etcd, with its data in the node's directory.
	Etcd []string
	// Join is the netd whose embedded etcd this node uses: StartNetd
	// first runs `netd join` on the node with that netd's token (`netd
	// token` on its node), and netd then finds that etcd by itself.
	Join *Netd
	// MetricsPort is where netd serves /status and /metrics on the node's
	// 127.0.0.1 (default 9472).
	MetricsPort int
	// LeaseTTL and ResyncInterval default to 10s and 2s: short, so tests
	// see a node leave and a repair quickly.
	LeaseTTL       time.Duration
	ResyncInterval time.Duration
	// Args are further flags, typically the network's: --mode hostgw,
	// --network-cidr 10.20.0.0/16, --vni 2, --direct-routing ...
	Args []string
	// EBPF runs the network on the eBPF datapath, each node with its own
	// BPF filesystem (Node.MountBPFFS).
	EBPF bool
}

// Netd is one netd running on a node of the test bed.
type Netd struct {
	Node *Node
	Opts NetdOptions
	Bin  string

	proc *Process
}

// DefaultMetricsPort is netd's own default, on each node's loopback.
const DefaultMetricsPort = 9472

// StartNetd starts netd on node and waits until it has written its lease
// file, which needs etcd: start the etcd server (or the node with the
// embedded etcd) first, or within the 30s StartNetd waits.
func (tb *Testbed) StartNetd(ctx context.Context, node *Node, opts NetdOptions) (*Netd, error) {
	if opts.Network == "" {
		opts.Network = conf.DefaultNetworkName
	}
	if opts.MetricsPort == 0 {
		opts.MetricsPort = DefaultMetricsPort
	}
	if opts.LeaseTTL == 0 {
		opts.LeaseTTL = 10 * time.Second
	}
	if opts.ResyncInterval == 0 {
		opts.ResyncInterval = 2 * time.Second
	}
	bin, err := tb.binary("netd")
	if err != nil {
		return nil, err
	}
	if opts.EBPF {
		if _, err := node.MountBPFFS(); err != nil {
			return nil, err
		}
	}
	d := &Netd{Node: node, Opts: opts, Bin: bin}
	if err := d.Restart(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

// Flags are the flags netd runs with (also what `netd leave` needs).
func (d *Netd) Flags() []string {
	n, o := d.Node, d.Opts
	f := []string{
		"--node-name", n.Host,
		"--root-dir", n.Dir, // the node ID, certificates; the dirs below explicitly
		"--network-name", o.Network,
		"--lease-dir", n.LeaseDir,
		"--cni-conf-dir", n.CNIConfDir,
		"--cni-state-dir", n.StateDir,
		"--ipam-data-dir", n.IPAMDataDir,
		"--metrics-address", d.MetricsAddr(),
		"--lease-ttl", o.LeaseTTL.String(),
		"--resync-interval", o.ResyncInterval.String(),
	}
	if o.EBPF {
		f = append(f, "--datapath", "ebpf", "--bpffs", n.BPFFSDir())
	}
	switch {
	case len(o.Etcd) > 0:
		f = append(f, "--etcd-endpoints", strings.Join(o.Etcd, ","))
	case o.Join == nil:
		f = append(f, "--etcd-data-dir", filepath.Join(n.Dir, "etcd-"+o.Network))
	}
	return append(f, o.Args...)
}

// EtcdURL is the client URL of the embedded etcd of a netd on node n
// started without NetdOptions.Etcd, at the node's IPv4 address; it
// serves the node's IPv6 address too (EtcdURL6), whichever --node-ip
// prefers.
func (n *Node) EtcdURL() string { return "https://" + n.IP.String() + ":2379" }

// EtcdURL6 is EtcdURL at the node's IPv6 address.
func (n *Node) EtcdURL6() string { return "https://[" + n.IPv6.String() + "]:2379" }

// JoinToken is the token other nodes join this netd's embedded etcd
// with (`netd token` on its node).
func (d *Netd) JoinToken(ctx context.Context) (string, error) {
	out, err := d.Node.Run(ctx, d.Bin, "token", "--root-dir", d.Node.Dir)
	if err != nil {
		return "", fmt.Errorf("testbed: netd token on %s: %w", d.Node.Host, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// join runs `netd join` on the node with the token of o.Join's etcd,
// unless the node joined already.
func (d *Netd) join(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(d.Node.Dir, "pki", "endpoints")); err == nil {
		return nil
	}
	token, err := d.Opts.Join.JoinToken(ctx)
	if err != nil {
		return err
	}
	if _, err := d.Node.Run(ctx, d.Bin, "join", token, "--root-dir", d.Node.Dir, "--node-name", d.Node.Host); err != nil {
		return fmt.Errorf("testbed: netd join on %s: %w", d.Node.Host, err)
	}
	return nil
}

// MetricsAddr is netd's --metrics-address, on the node's loopback.
func (d *Netd) MetricsAddr() string { return "127.0.0.1:" + strconv.Itoa(d.Opts.MetricsPort) }

// LeasePath is the node lease file netd writes for the plugins.
func (d *Netd) LeasePath() string { return lease.Path(d.Node.LeaseDir, d.Opts.Network) }

// ConflistPath is the conflist netd writes into the node's CNI conf dir.
func (d *Netd) ConflistPath() string { return conf.ConflistPath(d.Node.CNIConfDir, d.Opts.Network) }

// Process is the running netd (the latest one after a Restart).
func (d *Netd) Process() *Process { return d.proc }

// Restart starts netd again after Kill or Stop (or for the first time)
// and waits for its lease file.
func (d *Netd) Restart(ctx context.Context) error {
	if d.proc != nil && !d.proc.Exited() {
		return fmt.Errorf("testbed: netd %s on %s is still running", d.Opts.Network, d.Node.Host)
	}
	if d.Opts.Join != nil {
		if err := d.join(ctx); err != nil {
			return err
		}
	}
	p, err := d.Node.Start(ProcSpec{
		Name: fmt.Sprintf("netd-%s-%s", d.Opts.Network, d.Node.Host),
		Path: d.Bin,
		Args: d.Flags(),
	})
	if err != nil {
		return err
	}
	d.proc = p
	_, err = d.Lease(ctx)
	return err
}

// Kill ends netd with SIGKILL, as a crash would; the datapath stays.
func (d *Netd) Kill() error { return d.proc.Kill() }

// Stop ends netd with SIGTERM (SIGKILL after 10s).
func (d *Netd) Stop() error { return d.proc.Stop(10 * time.Second) }

// Leave runs `netd leave` on the node with netd's flags (stop netd
// first): the node gives up its lease and its datapath.
func (d *Netd) Leave(ctx context.Context) (string, error) {
	out, err := d.Node.Run(ctx, d.Bin, append([]string{"leave"}, d.Flags()...)...)
	return string(out), err
}

// Lease waits up to 30s for a valid, unexpired lease file and returns it.
func (d *Netd) Lease(ctx context.Context) (*lease.Node, error) {
	var l *lease.Node
	err := d.Poll(ctx, 30*time.Second, "its lease file", func() error {
		var err error
		l, err = lease.Read(d.LeasePath(), time.Now())
		return err
	})
	return l, err
}

// Status asks netd for its status (GET /status on the node's loopback)
// and decodes it into v, a *netd.Status. (The test bed cannot import
// netd: netd's own tests use the test bed.)
func (d *Netd) Status(ctx context.Context, v any) error {
	body, err := d.Node.Get(ctx, "http://"+d.MetricsAddr()+"/status")
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("netd status on %s: %w", d.Node.Host, err)
	}
	return nil
}

// Metrics returns netd's Prometheus metrics text.
func (d *Netd) Metrics(ctx context.Context) (string, error) {
	body, err := d.Node.Get(ctx, "http://"+d.MetricsAddr()+"/metrics")
	return string(body), err
}

// WaitConverged waits up to 30s until netd knows peers other nodes and
// the kernel routes to each of them: the kernel matches their leases and
// no peer is still coming up. In bgp mode a peer's route comes from its
// BGP session, which opens a second or so after netd starts; until then
// the peer is pending, the kernel still matches what netd knows, and a
// packet for the peer's containers takes the default route (to the test
// bed's router, which drops it).
func (d *Netd) WaitConverged(ctx context.Context, peers int) error {
	return d.Poll(ctx, 30*time.Second, fmt.Sprintf("convergence on %d peers", peers), func() error {
		// The fields of netd.Status this needs.
		var s struct {
			Peers []struct {
				Name    string `json:"name"`
				Error   string `json:"error"`
				Pending bool   `json:"pending"`
			} `json:"peers"`
			KernelMatches bool     `json:"kernelMatches"`
			Pending       []string `json:"pending"`
		}
		if err := d.Status(ctx, &s); err != nil {
			return err
		}
		if len(s.Peers) != peers || !s.KernelMatches {
			return fmt.Errorf("%d peers, kernel matches %v, pending %q", len(s.Peers), s.KernelMatches, s.Pending)
		}
		for _, p := range s.Peers {
			if p.Pending {
				return fmt.Errorf("peer %s is coming up: %s", p.Name, p.Error)
			}
		}
		return nil
	})
}

// Poll calls cond every 100ms until it succeeds, netd exits, ctx ends or
// timeout passes; the error says what was awaited (what) and cond's last error.
func (d *Netd) Poll(ctx context.Context, timeout time.Duration, what string, cond func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if d.proc.Exited() {
			return fmt.Errorf("testbed: netd %s on %s exited (%v) while waiting for %s; log %s:\n%s",
				d.Opts.Network, d.Node.Host, d.proc.Wait(ctx), what, d.proc.LogPath, tail(d.proc.Log(), 20))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testbed: netd %s on %s: waiting for %s: %w (last: %v)", d.Opts.Network, d.Node.Host, what, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// binary finds a berth binary in the test bed's bin dir.
func (tb *Testbed) binary(name string) (string, error) {
	p := filepath.Join(tb.BinDir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("testbed: %s not found in %s: run `make build` first (%v)", name, tb.BinDir, err)
	}
	return p, nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
