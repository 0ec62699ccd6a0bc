package netd_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/test/testbed"
)

// routes6 are node n's IPv6 routes with netd's protocol, as routes.
func routes6(t *testing.T, n *testbed.Node) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := n.Do(func() error {
		rs, err := netlink.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Protocol: backend.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
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

// TestBGPIPv6WithBIRD: a dual-stack network on two L2 segments joined by
// a router that runs BIRD; every node peers with BIRD over IPv4 and over
// IPv6 (eBGP, no node mesh). BIRD receives each node's IPv6 block over
// MP-BGP and routes between the segments, so containers on either side
// reach each other over IPv6 with their own addresses; the IPv6 default
// route and foreign prefix BIRD offers are ignored.
func TestBGPIPv6WithBIRD(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 3, Segment2: []int{3}})
	var peers []testbed.BIRDPeer
	for i := 1; i <= 3; i++ {
		n := tb.Node(i)
		peers = append(peers,
			testbed.BIRDPeer{Name: fmt.Sprintf("node%d", i), IP: n.IP.String(), ASN: uint32(65000 + i)},
			testbed.BIRDPeer{Name: fmt.Sprintf("node%dv6", i), IP: n.IPv6.String(), ASN: uint32(65000 + i)})
	}
	bird, err := tb.StartBIRD(context.Background(), testbed.BIRDOptions{ASN: 64600, Peers: peers, Hijack: true})
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, tb, []string{startEtcd(t, tb).ClientURL}, "bgp6", 9484, "--mode", "bgp", "--network-cidr", "10.249.0.0/16,fd00:249::/56")
	for i := 1; i <= 3; i++ {
		router := testbed.RouterIP1
		if i == 3 {
			router = testbed.RouterIP2
		}
		c.start(i, "--bgp-node-mesh=false", "--bgp-asn", fmt.Sprint(65000+i),
			"--bgp-peers", fmt.Sprintf("%s:64600,[%s]:64600", router, testbed.IPv6Of(router)))
	}
	for i := 1; i <= 3; i++ {
		established(c, i, 2) // one session per family
	}
	c.eventually("BIRD learns every node's IPv6 block over MP-BGP", 30*time.Second, func() error {
		out, err := bird.Show(context.Background(), "route", "protocol", "node1v6")
		if err != nil {
			return err
		}
		all, err := bird.Show(context.Background(), "route")
		if err != nil {
			return err
		}
		if block := c.lease(1).SubnetV6.String(); !strings.Contains(out, block) {
			return fmt.Errorf("no %s from node1's IPv6 session:\n%s", block, out)
		}
		for i := 2; i <= 3; i++ {
			if block := c.lease(i).SubnetV6.String(); !strings.Contains(all, block) {
				return fmt.Errorf("BIRD has no route to node%d's IPv6 block %s:\n%s", i, block, all)
			}
		}
		return nil
	})
	// The nodes learn each other's IPv6 blocks from BIRD, via the router.
	c.eventually("node1 routes node3's IPv6 block via the router", 30*time.Second, func() error {
		block := c.lease(3).SubnetV6.String()
		if r := routes6(t, tb.Node(1))[block]; !strings.Contains(r, "via "+testbed.IPv6Of(testbed.RouterIP1).String()) {
			return fmt.Errorf("route %q", r)
		}
		return nil
	})
	ipv6Matrix(c, bgpPods(t, tb, "bgp6", 1, 2, 3))

	t.Run("foreign IPv6 prefixes from BIRD are ignored", func(t *testing.T) {
		out, _ := bird.Show(context.Background(), "route", "export", "node1v6")
		if !strings.Contains(out, "::/0") || !strings.Contains(out, "2001:db8:100::/48") {
			t.Fatalf("BIRD does not offer the hijack routes, the test proves nothing:\n%s", out)
		}
		for i := 1; i <= 3; i++ {
			rs := routes6(t, tb.Node(i))
			for _, p := range []string{"::/0", "2001:db8:100::/48"} {
				if r, ok := rs[p]; ok {
					t.Errorf("node%d installed %s from BIRD: %s", i, p, r)
				}
			}
		}
	})
}

// ipv6Matrix checks that each of pods reaches each other over IPv6 with
// its own source address.
func ipv6Matrix(c *cluster, pods []*bgpPod) {
	t := c.t
	t.Helper()
	for _, p := range pods {
		testenv.Serve(t, p.ctr.Netns, "["+ipv6Of(t, p)+"]:7000")
	}
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			src, dst := ipv6Of(t, from), ipv6Of(t, to)
			var seen string
			c.eventually(fmt.Sprintf("%s -> %s over IPv6", from.node.Host, to.node.Host), 15*time.Second, func() error {
				var err error
				seen, err = testenv.Dial(from.ctr.Netns, "["+dst+"]:7000")
				return err
			})
			if seen != src {
				t.Errorf("%s -> %s: server saw %s, want %s", from.node.Host, to.node.Host, seen, src)
			}
		}
	}
}

// ipv6Of is the IPv6 address of a bgp pod.
func ipv6Of(t *testing.T, p *bgpPod) string {
	t.Helper()
	out, err := testenv.InNS(p.ctr.Netns, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	for i, w := range f {
		if w == "inet6" && i+1 < len(f) {
			ip, _, err := net.ParseCIDR(f[i+1])
			if err == nil {
				return ip.String()
			}
		}
	}
	t.Fatalf("pod on %s has no IPv6 address: %s", p.node.Host, out)
	return ""
}

// A rolling upgrade to dual-stack, in hostgw mode. The network config and
// node3's lease are in etcd as netd wrote them before dual-stack (the
// exact JSON), node3 with a bridge on its subnet as if it ran containers.
// New netds on node1 and node2, given an IPv6 CIDR, add it to the network
// and lease IPv6 subnets; they route IPv4 to node3's old lease (traffic
// flows) and IPv6 between themselves. Then node3 is upgraded: its netd
// takes its key over and adds the IPv6 subnet paired with its IPv4 one,
// and the others route IPv6 to it.
func TestRollingUpgradeToDualStack(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 3})
	etcd := startEtcd(t, tb)
	cli, err := tb.Client(etcd.ClientURL)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	prefix := "/berth/v1/networks/up/"
	const oldConfig = `{"name":"up","cidr":"10.250.0.0/16","subnetLen":24,"mode":"hostgw","ipMasq":true}`
	node3 := netip.MustParsePrefix("10.250.77.0/24")
	oldLease := fmt.Sprintf(`{"nodeName":"node3","nodeIP":"%s","mode":"hostgw"}`, tb.Node(3).IP)
	grant, err := cli.Grant(ctx, 300) // as the old netd's, kept alive until it stops
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, prefix+"config", oldConfig); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, prefix+"leases/10.250.77.0-24", oldLease, clientv3.WithLease(grant.ID)); err != nil {
		t.Fatal(err)
	}
	gw3 := gateway(t, tb.Node(3), node3, "br-old") // node3's containers' gateway, old style
	if _, err := tb.Node(3).Run(ctx, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		t.Fatal(err)
	}

	c := newCluster(t, tb, []string{etcd.ClientURL}, "up", 9485, "--mode", "hostgw")
	for i := 1; i <= 2; i++ {
		c.start(i, "--network-cidr", "10.250.0.0/16,fd00:250::/56")
	}
	for i := 1; i <= 2; i++ {
		c.converged(i, 2)
	}
	stored, err := cli.Get(ctx, prefix+"config")
	if err != nil || !strings.Contains(string(stored.Kvs[0].Value), `"cidrV6":"fd00:250::/56"`) {
		t.Fatalf("network config after the first new netd: %s %v", stored.Kvs[0].Value, err)
	}
	l1, l2 := c.lease(1), c.lease(2)
	for i, l := range []int{1, 2} {
		ls := c.lease(l)
		if paired, _ := (&conf.Network{CIDR: netip.MustParsePrefix("10.250.0.0/16"), SubnetLen: 24,
			CIDRv6: netip.MustParsePrefix("fd00:250::/56"), SubnetLenV6: 64}).PairedV6(ls.Subnet); ls.SubnetV6 != paired {
			t.Errorf("node%d: %s with IPv6 %s, want the pair %s", i+1, ls.Subnet, ls.SubnetV6, paired)
		}
	}
	if r := routes(t, tb.Node(1))[node3.String()]; r != fmt.Sprintf("%s via %s dev eth0", node3, tb.Node(3).IP) {
		t.Errorf("node1's route to node3's old lease: %q", r)
	}
	if r := routes6(t, tb.Node(1))[l2.SubnetV6.String()]; r != fmt.Sprintf("%s via %s dev eth0", l2.SubnetV6, tb.Node(2).IPv6) {
		t.Errorf("node1's IPv6 route to node2: %q", r)
	}
	gw1 := gateway(t, tb.Node(1), l1.Subnet, "berth0")
	// node3's old netd routes back to node1's subnet, as it always did.
	if _, err := tb.Node(3).Run(ctx, "ip", "route", "add", l1.Subnet.String(), "via", tb.Node(1).IP.String(), "proto", "73"); err != nil {
		t.Fatal(err)
	}
	ping(t, tb.Node(1), gw1, gw3)
	st, err := c.status(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Peers {
		if p.Name == "node3" && (p.SubnetV6 != "" || p.Subnet != node3.String() || p.Error != "") {
			t.Errorf("node1's status of node3 (old lease): %+v", p)
		}
	}
	out, err := tb.Node(1).Run(ctx, c.bin, "status", "--metrics-address", c.metricsAddr())
	if !strings.Contains(string(out), l1.Subnet.String()+","+l1.SubnetV6.String()) || !strings.Contains(string(out), "10.250.0.0/16,fd00:250::/56") {
		t.Errorf("netd status does not show both families: %v\n%s", err, out)
	}

	// node3 upgrades: same name, it takes its key over.
	c.start(3)
	l3 := c.lease(3)
	if l3.Subnet != node3 || l3.SubnetV6 != netip.MustParsePrefix("fd00:250:0:4d::/64") {
		t.Fatalf("node3 after the upgrade: %s %s, want %s with its IPv6 pair", l3.Subnet, l3.SubnetV6, node3)
	}
	c.eventually("node1 routes IPv6 to the upgraded node3", 20*time.Second, func() error {
		if r := routes6(t, tb.Node(1))[l3.SubnetV6.String()]; r != fmt.Sprintf("%s via %s dev eth0", l3.SubnetV6, tb.Node(3).IPv6) {
			return fmt.Errorf("route %q", r)
		}
		return nil
	})
	for i := 1; i <= 3; i++ {
		c.converged(i, 2)
	}
	if _, err := os.Stat(conf.ConflistPath(tb.Node(3).CNIConfDir, "up")); err != nil {
		t.Errorf("node3 conflist: %v", err)
	}
}
