package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/testbed"
)

// ipv6Mode is one of netd's modes as the IPv6 tests run it.
type ipv6Mode struct {
	name string
	args []string
	// v6Underlay: every node lists its IPv6 address first in --node-ip,
	// so VXLAN runs over the IPv6 underlay.
	v6Underlay bool
}

var ipv6Modes = []ipv6Mode{
	{name: "vxlan", args: []string{"--mode", "vxlan"}},
	{name: "vxlan over an IPv6 underlay", args: []string{"--mode", "vxlan"}, v6Underlay: true},
	{name: "hostgw", args: []string{"--mode", "hostgw"}},
	{name: "bgp", args: []string{"--mode", "bgp"}},
}

// Each mode across 3 nodes, first on a dual-stack network and then, on
// the same nodes, on an IPv6-only one: containers on the same and on
// other nodes reach each other over IPv6 (ICMP, and TCP where the server
// sees the client's own address), over IPv4 too on the dual-stack
// network; over an IPv6 underlay a full-size packet crosses at the MTU
// the lease gives (underlay - 70) and one byte more is refused; IPv6
// traffic leaving the cluster is masqueraded to the node's IPv6 address,
// a published port answers on the node's IPv6 address, and a container
// of another berth network cannot reach the cluster's over IPv6; after
// the containers are removed (CNI DEL, then GC) and netd left, no route,
// neighbour, FDB entry or VTEP of either family is left on any node.
func TestIPv6(t *testing.T) {
	for _, m := range ipv6Modes {
		t.Run(m.name, func(t *testing.T) { ipv6Connectivity(t, m) })
	}
}

func ipv6Connectivity(t *testing.T, m ipv6Mode) {
	ctx := context.Background()
	tb := testbed.ForTest(t, testbed.Options{Nodes: 3})
	outside, err := tb.AddHost("outside", outsideIP)
	if err != nil {
		t.Fatal(err)
	}
	etcd, err := tb.StartEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, network := range []struct {
		name, cidr, bridge string
		v4                 bool
	}{
		{"dual", "10.244.0.0/16,fd00:244::/56", "berth0", true},
		{"v6only", "fd00:245::/56", "berth1", false},
	} {
		if !t.Run(network.name, func(t *testing.T) {
			c := startNetwork6(t, tb, m, testbed.NetdOptions{Network: network.name, Etcd: []string{etcd.ClientURL},
				Args: append([]string{"--network-cidr", network.cidr, "--bridge", network.bridge}, m.args...)})
			var ctrs []*container
			for i := 1; i <= 3; i++ {
				ctrs = append(ctrs, c.run6(i, fmt.Sprintf("%s%da", network.name, i), network.v4))
			}
			ctrs = append(ctrs, c.run6(1, network.name+"1b", network.v4)) // a second one on node1: the same-node case
			web := c.run6(2, network.name+"web", network.v4, append([]string{"-p", "8080:80"}, webCmd...)...)
			for _, ctr := range ctrs {
				t.Logf("%s: %s %s", ctr, ctr.IP, ctr.IPv6)
			}
			matrix6(t, ctrs, 7100)
			if network.v4 {
				matrix(t, ctrs, 7000)
			}
			if m.v6Underlay {
				mtu6(t, c, ctrs[0], ctrs[1])
			}
			masquerade6(t, ctrs, outside)
			published6(t, web, []*testbed.NetNS{tb.Node(1).NetNS, outside, web.Node.NetNS})
			isolation6(t, tb.Node(1), ctrs[0])
			c.leave6(t)
		}) {
			return
		}
	}
}

// startNetwork6 is startNetwork with the mode's per-node flags.
func startNetwork6(t *testing.T, tb *testbed.Testbed, m ipv6Mode, opts testbed.NetdOptions) *cluster {
	t.Helper()
	c := &cluster{t: t, tb: tb, net: opts.Network, netd: map[int]*testbed.Netd{}}
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		o := opts
		if m.v6Underlay {
			n := tb.Node(i)
			o.Args = append([]string{"--node-ip", n.IPv6.String() + "," + n.IP.String()}, o.Args...)
		}
		d, err := tb.StartNetd(ctx, tb.Node(i), o)
		if err != nil {
			t.Fatal(err)
		}
		c.netd[i] = d
	}
	for i := 1; i <= 3; i++ {
		if err := c.netd[i].WaitConverged(ctx, 2); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// run6 starts a container on node i (args: runner flags and command,
// sleep by default) and checks it got an IPv6 address of the node's IPv6
// subnet, and an IPv4 one of its IPv4 subnet when v4.
func (c *cluster) run6(i int, name string, v4 bool, args ...string) *container {
	c.t.Helper()
	ctr, l := c.start(i, name, args...)
	if !l.SubnetV6.Contains(ctr.IPv6) || v4 != l.Subnet.Contains(ctr.IP) || !v4 && ctr.IP != ctr.IPv6 {
		c.t.Fatalf("container %s on %s got %v, want an address of %v", name, ctr.Node.Host, ctr.IPs(), l.Subnets())
	}
	return ctr
}

// matrix6 is matrix over IPv6: every container reaches every other one
// (ping, and TCP where the server sees the client's own address).
func matrix6(t *testing.T, ctrs []*container, port int) {
	t.Run("ipv6 icmp matrix", func(t *testing.T) {
		for _, src := range ctrs {
			for _, dst := range ctrs {
				if src == dst {
					continue
				}
				// A fresh bridge's gateway or route may need a moment.
				err := eventually(5*time.Second, func() error {
					out, err := src.in("ping", "-6", "-n", "-c", "1", "-W", "2", dst.IPv6.String())
					if err != nil {
						return fmt.Errorf("%v: %s", err, out)
					}
					return nil
				})
				if err != nil {
					t.Errorf("%s -> %s: %v", src, dst, err)
				}
			}
		}
	})
	t.Run("ipv6 tcp matrix keeps source addresses", func(t *testing.T) {
		for _, dst := range ctrs {
			testenv.Serve(t, dst.ns, fmt.Sprintf("[%s]:%d", dst.IPv6, port))
		}
		for _, src := range ctrs {
			for _, dst := range ctrs {
				if src == dst {
					continue
				}
				seen, err := src.dial(fmt.Sprintf("[%s]:%d", dst.IPv6, port))
				if err != nil || seen != src.IPv6.String() {
					t.Errorf("%s -> %s: server saw %q (%v), want %s", src, dst, seen, err, src.IPv6)
				}
			}
		}
	})
}

// masquerade6: a container's IPv6 connection to a server outside the
// cluster reaches it from its node's IPv6 address.
func masquerade6(t *testing.T, ctrs []*container, outside *testbed.NetNS) {
	t.Run("leaving the cluster over ipv6 is masqueraded", func(t *testing.T) {
		addr := fmt.Sprintf("[%s]:8081", testbed.IPv6Of(outsideIP))
		testenv.Serve(t, outside.NetNS, addr)
		for _, src := range ctrs {
			seen, err := src.dial(addr)
			if want := src.Node.IPv6.String(); err != nil || seen != want {
				t.Errorf("%s -> outside over IPv6: server saw %q (%v), want its node's address %s", src, seen, err, want)
			}
		}
	})
}

// published6: a port published without a host address answers on the
// node's IPv6 address from another node, from outside the cluster and
// from the node itself.
func published6(t *testing.T, web *container, clients []*testbed.NetNS) {
	t.Run("published port over ipv6", func(t *testing.T) {
		url := fmt.Sprintf("http://[%s]:8080/", web.Node.IPv6)
		for _, client := range clients {
			var body []byte
			err := eventually(15*time.Second, func() error {
				var err error
				body, err = client.Get(context.Background(), url)
				return err
			})
			if err != nil || strings.TrimSpace(string(body)) != "hello from "+web.Name {
				t.Errorf("GET %s from %s: %q %v", url, client.Name, body, err)
			}
		}
	})
}

// isolation6: a container of another berth network on the same node (a
// local bridge network with an IPv6 range and isolation on, the default)
// reaches its own gateway over IPv6 but not a container of the cluster
// network.
func isolation6(t *testing.T, n *testbed.Node, dst *container) {
	t.Run("isolation over ipv6", func(t *testing.T) {
		other := bridgeContainer(t, n, bridgeNet{name: "iso6", bridge: "berthiso6", subnets: []string{"fd00:99::/64"},
			defaultGateway: true}, "iso6")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := other.Exec(ctx, "ping", "-6", "-c", "1", "-W", "2", "fd00:99::1"); err != nil {
			t.Fatalf("iso6 container cannot reach its own gateway: %v\n%s", err, out)
		}
		if out, err := other.Exec(ctx, "ping", "-6", "-c", "1", "-W", "2", dst.IPv6.String()); err == nil {
			t.Errorf("a container of another network on %s reached %s over IPv6:\n%s", n.Host, dst, out)
		}
	})
}

// mtu6 checks VXLAN over the IPv6 underlay: the lease's MTU is the
// underlay's minus 70, a full-size IPv6 packet with DF crosses nodes
// without fragments and one byte more is refused.
func mtu6(t *testing.T, c *cluster, src, dst *container) {
	t.Run("mtu over the ipv6 underlay", func(t *testing.T) {
		l, err := c.netd[1].Lease(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		want := mtu(t, c.tb.Node(1).NetNS.NetNS, "eth0") - 70
		if l.MTU != want || mtu(t, src.ns, "eth0") != want {
			t.Fatalf("lease MTU %d, container MTU %d, want %d", l.MTU, mtu(t, src.ns, "eth0"), want)
		}
		// 40 bytes IPv6 header + 8 bytes ICMPv6 header.
		full := strconv.Itoa(want - 48)
		if out, err := src.in("ping", "-6", "-n", "-M", "do", "-c", "2", "-W", "3", "-s", full, dst.IPv6.String()); err != nil {
			t.Errorf("full-size IPv6 packet (%d bytes, DF) %s -> %s: %v\n%s", want, src, dst, err, out)
		}
		over := strconv.Itoa(want - 47)
		out, err := src.in("ping", "-6", "-n", "-M", "do", "-c", "1", "-W", "3", "-s", over, dst.IPv6.String())
		if err == nil || !(strings.Contains(out, "message too long") || strings.Contains(out, "Packet too big")) {
			t.Errorf("one byte over the MTU %s -> %s: want \"message too long\", got %v\n%s", src, dst, err, out)
		}
	})
}

// leave6 removes every container (CNI DEL), runs CNI GC, stops netd and
// runs `netd leave` on every node, then checks that nothing of the
// network is left in any node's kernel, of either family.
func (c *cluster) leave6(t *testing.T) {
	ctx := context.Background()
	l, err := c.netd[1].Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cidrs := []netip.Prefix{l.NetworkCIDR, l.NetworkCIDRv6}
	for i := 1; i <= 3; i++ {
		r, err := c.tb.Node(i).Runner()
		if err != nil {
			t.Fatal(err)
		}
		if err := r.RemoveAll(ctx); err != nil {
			t.Fatal(err)
		}
		if out, err := r.Run(ctx, "gc"); err != nil {
			t.Fatalf("runner gc on node%d: %v\n%s", i, err, out)
		}
	}
	for i := 1; i <= 3; i++ {
		if err := c.netd[i].Stop(); err != nil {
			t.Fatal(err)
		}
		if out, err := c.netd[i].Leave(ctx); err != nil {
			t.Fatalf("netd leave on node%d: %v\n%s", i, err, out)
		}
	}
	for i := 1; i <= 3; i++ {
		if left := leftovers(t, c.tb.Node(i), cidrs); left != "" {
			t.Errorf("node%d after DEL, GC and netd leave:\n%s", i, left)
		}
	}
}

// leftovers lists what of the network of cidrs is still in node n's
// kernel: routes into the network (but the connected routes of a bridge
// that holds a gateway address), permanent neighbours with an address in
// it, VTEPs, and FDB entries that send to another node.
func leftovers(t *testing.T, n *testbed.Node, cidrs []netip.Prefix) string {
	t.Helper()
	var out []string
	run := func(args ...string) []string {
		b, err := n.Run(context.Background(), args[0], args[1:]...)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if l != "" {
				lines = append(lines, l)
			}
		}
		return lines
	}
	for _, cidr := range cidrs {
		if !cidr.IsValid() {
			continue
		}
		family := "-4"
		if cidr.Addr().Is6() {
			family = "-6"
		}
		for _, r := range run("ip", family, "route", "show", "root", cidr.String()) {
			if !strings.Contains(r, "proto kernel") {
				out = append(out, "route "+r)
			}
		}
		for _, nb := range run("ip", family, "neigh", "show", "nud", "permanent") {
			if a, err := netip.ParseAddr(strings.Fields(nb)[0]); err == nil && cidr.Contains(a) {
				out = append(out, "neighbour "+nb)
			}
		}
	}
	for _, r := range append(run("ip", "-4", "route", "show", "proto", "73"), run("ip", "-6", "route", "show", "proto", "73")...) {
		out = append(out, "netd route "+r)
	}
	for _, l := range run("ip", "-o", "link", "show", "type", "vxlan") {
		out = append(out, "VTEP "+l)
	}
	for _, f := range run("bridge", "fdb", "show") {
		if strings.Contains(f, " dst ") {
			out = append(out, "fdb "+f)
		}
	}
	return strings.Join(out, "\n")
}
