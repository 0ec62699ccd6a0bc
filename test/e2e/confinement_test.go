package e2e_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/testbed"
)

// TestContainerConfinement: a hostile container of netd's IPv4 network
// (vxlan, on the datapath under test) cannot reach netd's /status on its
// node's 127.0.0.1, while the node still reaches a published port on
// 127.0.0.1; with IPv6 turned on in its own namespace, on a node where a
// dual-stack bridge network turned IPv6 forwarding on, it reaches
// neither that network's container, nor its node, nor the other node.
func TestContainerConfinement(t *testing.T) {
	ctx := context.Background()
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	etcd, err := tb.StartEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := startNetwork(t, tb, testbed.NetdOptions{Network: "pods", Etcd: []string{etcd.ClientURL},
		Args: []string{"--mode", "vxlan"}, EBPF: testenv.Datapath() == "ebpf"}, 1, 2)
	n1, n2 := tb.Node(1), tb.Node(2)
	node1, node2 := openNS(t, n1.Path()), openNS(t, n2.Path())
	a := c.run(1, "a")
	web := c.run(1, "web", "-p", "8080:80", "--", "sleep", "86400")
	web.serve(t, 80)
	out, err := n1.Run(ctx, "ip", "-br", "link", "show", "berth0")
	if err != nil {
		t.Fatalf("the network's bridge on node1: %v: %s", err, out)
	}
	gw, err := net.ParseMAC(strings.Fields(string(out))[2])
	if err != nil {
		t.Fatal(err)
	}

	t.Run("the node's localhost", func(t *testing.T) {
		if _, err := testenv.Dial(node1, "127.0.0.1:8080"); err != nil {
			t.Errorf("node1 no longer reaches the published port on 127.0.0.1: %v", err)
		}
		// The node must know a's MAC first, as it would from any traffic:
		// its own ARP for a, sent from 127.0.0.1, gets no answer.
		if out, err := a.in("ping", "-c", "1", "-W", "2", n1.IP.String()); err != nil {
			t.Fatalf("a cannot ping node1: %v: %s", err, out)
		}
		status := netip.MustParseAddrPort(c.netd[1].MetricsAddr())
		answered, err := testenv.SYNAnswered(a.ns, "eth0", gw, netip.AddrPortFrom(a.IP, 40001), status)
		if err != nil {
			t.Fatal(err)
		}
		if answered {
			t.Errorf("container a got a SYN-ACK from netd's %s on node1", status)
		}
	})

	t.Run("IPv6 from the IPv4-only network", func(t *testing.T) {
		x := bridgeContainer(t, n1, bridgeNet{name: "ds", bridge: "berth-ds", subnets: []string{"10.72.0.0/24", "fd72::/64"},
			defaultGateway: true}, "x")
		for _, cmd := range [][]string{
			{"sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.eth0.disable_ipv6=0"},
			{"ip", "addr", "add", "fd99::6/128", "dev", "eth0", "nodad"},
			{"ip", "addr", "add", "fd72::99/128", "dev", "eth0", "nodad"}, // the dual-stack network's
			{"ip", "-6", "neigh", "replace", "fe80::1", "lladdr", gw.String(), "dev", "eth0", "nud", "permanent"},
			{"ip", "-6", "route", "replace", "default", "via", "fe80::1", "dev", "eth0"},
		} {
			if out, err := a.in(cmd[0], cmd[1:]...); err != nil {
				t.Fatalf("%v in a: %v: %s", cmd, err, out)
			}
		}
		for _, tt := range []struct {
			name string
			at   ns.NetNS
			addr netip.Addr
		}{
			{"the dual-stack network's container", x.ns, x.IPv6},
			{"node1", node1, n1.IPv6},
			{"node2", node2, n2.IPv6},
		} {
			t.Run(tt.name, func(t *testing.T) {
				// Counted wherever it arrives (node1's count after berth's
				// INPUT jump, which is first), whatever its source by then.
				rule := []string{"INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "echo-request", "-j", "ACCEPT"}
				if out, err := testenv.InNS(tt.at, "ip6tables", append([]string{"-A"}, rule...)...); err != nil {
					t.Fatalf("ip6tables: %v: %s", err, out)
				}
				defer testenv.InNS(tt.at, "ip6tables", append([]string{"-D"}, rule...)...)
				for _, src := range []string{"fd99::6", "fd72::99"} {
					a.in("ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", src, tt.addr.String())
				}
				out, _ := testenv.InNS(tt.at, "ip6tables", "-L", "INPUT", "-vnx")
				for _, line := range strings.Split(string(out), "\n") {
					if f := strings.Fields(line); len(f) > 2 && f[2] == "ACCEPT" && strings.Contains(line, "ipv6-icmptype 128") && f[0] != "0" {
						t.Errorf("%s echo requests from container a arrived: %s", f[0], line)
					}
				}
			})
		}
	})
}

func openNS(t *testing.T, path string) ns.NetNS {
	t.Helper()
	n, err := ns.GetNS(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}
