package e2e_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/attachments"
	"github.com/berthnet/berth/test/testbed"
)

// A network's whole life on two nodes, as the README tells it: a
// dual-stack vxlan network over the IPv6 underlay (the embedded etcd and
// `netd join` over IPv6) with containers; `netd leave` refused while
// containers are attached, then removing all the network made on the node
// of both families (bridge included); `netd network delete` refused while
// a node holds a lease, then done; the same nodes and network name back
// as an IPv4 network in hostgw mode, with containers reaching each other.
// Before, the node bridge stayed marked for the old network with its
// gateway address, and the next network's containers were refused
// ("bridge berth0 already used by berth:...").
func TestNetworkLifecycle(t *testing.T) {
	ctx := context.Background()
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	// start starts the network on both nodes, node1 with the embedded
	// etcd; v6Underlay: dual-stack, each node's IPv6 address preferred.
	start := func(mode string, v6Underlay bool) *cluster {
		t.Helper()
		c := &cluster{t: t, tb: tb, net: "pods", netd: map[int]*testbed.Netd{}}
		args := func(i int) []string {
			if !v6Underlay {
				return []string{"--mode", mode}
			}
			n := tb.Node(i)
			return []string{"--mode", mode, "--network-cidr", "10.244.0.0/16,fd00:244::/56", "--node-ip", n.IPv6.String() + "," + n.IP.String()}
		}
		nd1, err := tb.StartNetd(ctx, tb.Node(1), testbed.NetdOptions{Network: "pods", Args: args(1)}) // embedded etcd
		if err != nil {
			t.Fatal(err)
		}
		nd2, err := tb.StartNetd(ctx, tb.Node(2), testbed.NetdOptions{Network: "pods", Join: nd1, Args: args(2)})
		if err != nil {
			t.Fatal(err)
		}
		c.netd[1], c.netd[2] = nd1, nd2
		for _, nd := range c.netd {
			if err := nd.WaitConverged(ctx, 1); err != nil {
				t.Fatal(err)
			}
		}
		return c
	}
	var c *cluster
	// netd runs a netd command on node i with the flags its daemon had.
	netd := func(i int, args ...string) (string, error) {
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		nd := c.netd[i]
		out, err := nd.Node.Run(rctx, nd.Bin, append(args, nd.Flags()...)...)
		return string(out), err
	}
	bridge := func(i int) (alias string, addrs int) {
		tb.Node(i).Do(func() error {
			l, err := netlink.LinkByName("berth0")
			if err != nil {
				return err
			}
			as, _ := netlink.AddrList(l, netlink.FAMILY_V4)
			alias, addrs = l.Attrs().Alias, len(as)
			return nil
		})
		return alias, addrs
	}

	c = start("vxlan", true)
	if endpoints, err := os.ReadFile(filepath.Join(tb.Node(2).Dir, "pki", "endpoints")); err != nil || !strings.HasPrefix(string(endpoints), tb.Node(1).EtcdURL6()+"\n"+tb.Node(1).EtcdURL()+"\n") {
		t.Fatalf("node2 joined node1's etcd at %q (%v), want its IPv6 address, then its IPv4 one", endpoints, err)
	}
	a, b := c.run6(1, "a", true), c.run6(2, "b", true)
	// ping checks both families a -> b.
	ping := func(t *testing.T) {
		t.Helper()
		if err := a.ping(ctx, b.IP); err != nil {
			t.Error(err)
		}
		if out, err := a.in("ping", "-6", "-n", "-c", "1", "-W", "3", b.IPv6.String()); err != nil {
			t.Errorf("%s -> %s: %v\n%s", a, b.IPv6, err, out)
		}
	}
	ping(t)

	t.Run("leave refused while containers are attached", func(t *testing.T) {
		if err := c.netd[1].Stop(); err != nil {
			t.Fatal(err)
		}
		out, err := netd(1, "leave")
		if err == nil || !strings.Contains(out, "containers are attached to network pods on this node") || !strings.Contains(out, "runner rm") {
			t.Fatalf("leave with a container: %v\n%s", err, out)
		}
		// A DEL marks the record leaving first and removes it last: one
		// that was interrupted must be finished before the node leaves.
		records := attachments.Dir(tb.Node(1).StateDir, "pods")
		live, _ := filepath.Glob(filepath.Join(records, "*"+attachments.ExtLive))
		if len(live) != 1 {
			t.Fatalf("records of node1's container: %q", live)
		}
		leaving := strings.TrimSuffix(live[0], attachments.ExtLive) + attachments.ExtLeaving
		if err := os.Rename(live[0], leaving); err != nil {
			t.Fatal(err)
		}
		out, err = netd(1, "leave")
		os.Rename(leaving, live[0])
		if err == nil || !strings.Contains(out, "1 attachments to network pods on this node are being removed") || !strings.Contains(out, "runner gc") {
			t.Fatalf("leave with an unfinished DEL: %v\n%s", err, out)
		}
		if alias, _ := bridge(1); alias != "berth:pods" {
			t.Errorf("the bridge changed: alias %q", alias)
		}
		if err := c.netd[1].Restart(ctx); err != nil {
			t.Fatal(err)
		}
		for _, nd := range c.netd {
			if err := nd.WaitConverged(ctx, 1); err != nil {
				t.Fatal(err)
			}
		}
		ping(t) // after the refused leave
	})

	// With the embedded etcd, node1's netd serves etcd: the other nodes
	// leave first.
	t.Run("leave the other node, then delete refused while node1 holds a lease", func(t *testing.T) {
		for i, ctr := range map[int]*container{1: a, 2: b} {
			r, _ := tb.Node(i).Runner()
			if _, err := r.Run(ctx, "rm", "-f", ctr.Name); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.netd[2].Stop(); err != nil {
			t.Fatal(err)
		}
		if out, err := netd(2, "leave"); err != nil {
			t.Fatalf("leave on node2: %v\n%s", err, out)
		}
		out, err := netd(1, "network", "delete") // through the running netd's etcd
		if err == nil || !strings.Contains(out, "network in use: 1 nodes hold leases") || !strings.Contains(out, "node1 at "+tb.Node(1).IP.String()+","+tb.Node(1).IPv6.String()) {
			t.Fatalf("delete with node1's lease: %v\n%s", err, out)
		}
		l, err := c.netd[1].Lease(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out, err = netd(1, "network", "show")
		for _, want := range []string{"vxlan mode, 10.244.0.0/16,fd00:244::/56", tb.Node(1).IP.String() + "," + tb.Node(1).IPv6.String(), l.Subnet.String() + "," + l.SubnetV6.String()} {
			if err != nil || !strings.Contains(out, want) {
				t.Errorf("network show: %v; want %q in\n%s", err, want, out)
			}
		}
	})

	t.Run("leave removes the bridge, the datapath and the files", func(t *testing.T) {
		if err := c.netd[1].Stop(); err != nil {
			t.Fatal(err)
		}
		// The network's last DEL removed node1's bridge; a berth from
		// before that left it marked, with its gateway: leave removes it.
		if alias, _ := bridge(1); alias != "" {
			t.Errorf("node1's bridge after the last container left: alias %q", alias)
		}
		for _, cmd := range [][]string{
			{"ip", "link", "add", "berth0", "type", "bridge"},
			{"ip", "link", "set", "berth0", "alias", "berth:pods"},
			{"ip", "addr", "add", "10.244.250.1/24", "dev", "berth0"},
			{"ip", "addr", "add", "fd00:244:0:fa::1/64", "dev", "berth0"},
		} {
			if out, err := tb.Node(1).Run(ctx, cmd[0], cmd[1:]...); err != nil {
				t.Fatalf("%v: %v\n%s", cmd, err, out)
			}
		}
		if out, err := netd(1, "leave"); err != nil {
			t.Fatalf("leave: %v\n%s", err, out)
		}
		cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")}
		for i := 1; i <= 2; i++ {
			if left := leftovers(t, tb.Node(i), cidrs); left != "" {
				t.Errorf("node%d after netd leave:\n%s", i, left)
			}
			err := tb.Node(i).Do(func() error {
				for _, name := range []string{"berth0", "berth.1", "berth6.1"} {
					if _, err := netlink.LinkByName(name); err == nil {
						t.Errorf("%s on node%d is still there", name, i)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			nd := c.netd[i]
			for _, p := range []string{nd.LeasePath(), nd.ConflistPath(), filepath.Join(nd.Node.StateDir, "networks", "pods"), filepath.Join(nd.Node.IPAMDataDir, "pods")} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s is still there (%v)", p, err)
				}
			}
		}
	})

	t.Run("network delete", func(t *testing.T) {
		if out, err := netd(1, "network", "delete"); err != nil { // starts the embedded etcd for it
			t.Fatalf("delete: %v\n%s", err, out)
		}
		out, err := netd(1, "network", "show")
		var exit *exec.ExitError
		if !errors.As(err, &exit) || !strings.Contains(out, "no network config") {
			t.Fatalf("show after delete: %v\n%s", err, out)
		}
	})

	t.Run("the same nodes in hostgw mode", func(t *testing.T) {
		c = start("hostgw", false)
		a, b := c.run(1, "a2"), c.run(2, "b2")
		for _, p := range [][2]*container{{a, b}, {b, a}} {
			if err := p[0].ping(ctx, p[1].IP); err != nil {
				t.Errorf("%s -> %s: %v", p[0], p[1], err)
			}
		}
		if alias, addrs := bridge(1); alias != "berth:pods" || addrs != 1 {
			t.Errorf("node1's bridge: alias %q, %d addresses; want the new network's gateway only", alias, addrs)
		}
		out, err := netd(1, "network", "show")
		if err != nil || !strings.Contains(out, "hostgw mode") || !regexp.MustCompile(`leases\s+2\n`).MatchString(out) {
			t.Errorf("network show: %v\n%s", err, out)
		}
	})
}
