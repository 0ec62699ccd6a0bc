package netd_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/test/testbed"
)

// cluster is a test bed with one netd per node for one network.
type cluster struct {
	t       *testing.T
	tb      *testbed.Testbed
	bin     string
	etcd    []string // --etcd-endpoints; empty: node 1 runs the embedded etcd
	network string
	args    []string // network flags every netd gets
	port    int      // metrics port, one per network so networks can share nodes
	netd    map[int]*testbed.Process
}

func newCluster(t *testing.T, tb *testbed.Testbed, etcd []string, network string, port int, args ...string) *cluster {
	return &cluster{
		t: t, tb: tb, bin: filepath.Join(testenv.BinDir(t, "netd"), "netd"),
		etcd: etcd, network: network, args: args, port: port, netd: map[int]*testbed.Process{},
	}
}

func (c *cluster) metricsAddr() string { return fmt.Sprintf("127.0.0.1:%d", c.port) }

// flags are what netd on node i is started with, besides the network's.
func (c *cluster) flags(i int) []string {
	n := c.tb.Node(i)
	f := []string{
		"--node-name", n.Host,
		"--root-dir", n.Dir,
		"--network-name", c.network,
		"--lease-dir", n.LeaseDir,
		"--cni-conf-dir", n.CNIConfDir,
		"--cni-state-dir", n.StateDir,
		"--ipam-data-dir", n.IPAMDataDir,
		"--metrics-address", c.metricsAddr(),
		"--lease-ttl", "10s",
		"--resync-interval", "2s",
	}
	if len(c.etcd) > 0 {
		f = append(f, "--etcd-endpoints", strings.Join(c.etcd, ","))
	} else if i == 1 {
		f = append(f, "--etcd-data-dir", filepath.Join(n.Dir, "etcd"))
	} // else node1's etcd, once joined (join)
	return f
}

// join gets node i the certificates of node1's embedded etcd: `netd
// token` on node1 (whose netd ran once), `netd join` on node i.
func (c *cluster) join(i int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	token, err := c.tb.Node(1).Run(ctx, c.bin, "token", "--root-dir", c.tb.Node(1).Dir)
	if err != nil {
		c.t.Fatalf("netd token on node1: %v\n%s", err, token)
	}
	n := c.tb.Node(i)
	if out, err := n.Run(ctx, c.bin, "join", strings.TrimSpace(string(token)), "--root-dir", n.Dir, "--node-name", n.Host); err != nil {
		c.t.Fatalf("netd join on node%d: %v\n%s", i, err, out)
	}
}

// start starts netd on node i and waits until it has written its lease.
func (c *cluster) start(i int, extra ...string) *testbed.Process {
	c.t.Helper()
	if _, err := os.Stat(filepath.Join(c.tb.Node(i).Dir, "pki", "endpoints")); len(c.etcd) == 0 && i != 1 && err != nil {
		c.join(i)
	}
	p, err := c.tb.Node(i).Start(testbed.ProcSpec{
		Name: fmt.Sprintf("netd-%s-node%d", c.network, i),
		Path: c.bin,
		Args: append(append(c.flags(i), c.args...), extra...),
	})
	if err != nil {
		c.t.Fatal(err)
	}
	c.netd[i] = p
	c.lease(i)
	return p
}

// lease waits for node i's lease file and returns it.
func (c *cluster) lease(i int) *lease.Node {
	c.t.Helper()
	path := lease.Path(c.tb.Node(i).LeaseDir, c.network)
	var n *lease.Node
	c.eventually(fmt.Sprintf("lease file of node%d", i), 30*time.Second, func() error {
		if p := c.netd[i]; p != nil && p.Exited() {
			c.t.Fatalf("netd on node%d exited: %v\n%s", i, p.Wait(context.Background()), p.Log())
		}
		var err error
		n, err = lease.Read(path, time.Now())
		return err
	})
	return n
}

func (c *cluster) status(i int) (*netd.Status, error) {
	body, err := c.tb.Node(i).Get(context.Background(), "http://"+c.metricsAddr()+"/status")
	if err != nil {
		return nil, err
	}
	var s netd.Status
	return &s, json.Unmarshal(body, &s)
}

// converged waits until node i's netd sees peers other nodes and its
// kernel matches their leases.
func (c *cluster) converged(i, peers int) *netd.Status {
	c.t.Helper()
	var s *netd.Status
	c.eventually(fmt.Sprintf("node%d to converge on %d peers", i, peers), 20*time.Second, func() error {
		var err error
		if s, err = c.status(i); err != nil {
			return err
		}
		if len(s.Peers) != peers || !s.KernelMatches {
			return fmt.Errorf("%d peers, kernel matches %v, pending %q", len(s.Peers), s.KernelMatches, s.Pending)
		}
		return nil
	})
	return s
}

func (c *cluster) eventually(what string, timeout time.Duration, cond func() error) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// routes are node i's routes with netd's protocol, "dst via gw dev onlink".
func routes(t *testing.T, n *testbed.Node) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := n.Do(func() error {
		rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: backend.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		for _, r := range rs {
			out[r.Dst.String()] = backend.Describe(&r)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// gateway puts the first address of node i's subnet on a bridge, as the
// CNI plugin would, so that traffic has somewhere to go on each node.
func gateway(t *testing.T, n *testbed.Node, subnet netip.Prefix, bridge string) netip.Addr {
	t.Helper()
	gw := subnet.Masked().Addr().Next()
	err := n.Do(func() error {
		if _, err := netlink.LinkByName(bridge); err != nil {
			la := netlink.NewLinkAttrs()
			la.Name = bridge
			if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
				return err
			}
		}
		br, err := netlink.LinkByName(bridge)
		if err != nil {
			return err
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

// ping sends count echo requests from one gateway address to another and
// returns ping's summary; it fails t on any loss.
func ping(t *testing.T, from *testbed.Node, src, dst netip.Addr, args ...string) string {
	t.Helper()
	out, err := from.Run(context.Background(), "ping", append([]string{"-n", "-c", "1", "-W", "2", "-I", src.String(), dst.String()}, args...)...)
	if err != nil {
		t.Fatalf("ping %s from %s (%s): %v", dst, from.Host, src, err)
	}
	return string(out)
}

var lossRe = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

func startEtcd(t *testing.T, tb *testbed.Testbed) *testbed.Etcd {
	t.Helper()
	e, err := tb.StartEtcd(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// conflist waits for node i's conflist, which netd writes once the node
// is ready for containers, after its lease file (which start waits for).
func (c *cluster) conflist(i int) map[string]any {
	c.t.Helper()
	var data []byte
	c.eventually(fmt.Sprintf("node%d's conflist", i), 10*time.Second, func() (err error) {
		data, err = os.ReadFile(conf.ConflistPath(c.tb.Node(i).CNIConfDir, c.network))
		return err
	})
	var v map[string]any
	if err := json.Unmarshal(data, &v); err != nil {
		c.t.Fatal(err)
	}
	return v
}

// vtep returns node n's VTEP, its FDB and its permanent neighbours.
func vtep(t *testing.T, n *testbed.Node, name string) (*netlink.Vxlan, map[string]string, map[string]string) {
	t.Helper()
	var v *netlink.Vxlan
	fdb, neigh := map[string]string{}, map[string]string{}
	err := n.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		v = l.(*netlink.Vxlan)
		fs, err := netlink.NeighList(v.Index, unix.AF_BRIDGE)
		if err != nil {
			return err
		}
		for _, f := range fs {
			fdb[f.HardwareAddr.String()] = f.IP.String()
		}
		ns, err := netlink.NeighList(v.Index, netlink.FAMILY_V4)
		for _, e := range ns {
			if e.State == netlink.NUD_PERMANENT {
				neigh[e.IP.String()] = e.HardwareAddr.String()
			}
		}
		return err
	})
	if err != nil {
		t.Fatalf("VTEP %s on %s: %v", name, n.Host, err)
	}
	return v, fdb, neigh
}
