package attach_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/testenv"
)

// linkMAC is the MAC of link name in netns n.
func linkMAC(t *testing.T, n ns.NetNS, name string) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	err := n.Do(func(ns.NetNS) error {
		ifc, err := net.InterfaceByName(name)
		if err == nil {
			mac = ifc.HardwareAddr
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// A container cannot reach what the node serves on 127.0.0.0/8 by
// sending to its gateway's MAC (route_localnet is on for the bridge, so
// that a published port answers 127.0.0.1: CVE-2020-8558), while the
// node still reaches the container's published port on 127.0.0.1. CHECK
// notices the rule gone.
func TestContainerCannotReachNodeLocalhost(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("localnet", "berth-ln", "10.122.0.0/24", ""))
	c := container(t, "ln1", port(8080, 80, "tcp"))
	res := rt.MustAdd(t, c)
	defer rt.Del(c)
	testenv.Serve(t, c.Netns, "0.0.0.0:80")
	src := netip.MustParseAddr(ipOf(t, res))
	gw := linkMAC(t, n.ns, "berth-ln")

	if _, err := testenv.Dial(n.ns, "127.0.0.1:8080"); err != nil {
		t.Errorf("the node no longer reaches the published port on 127.0.0.1: %v", err)
	}
	// The node must know the container's MAC, as it would from any
	// traffic: its own ARP for it, sent from 127.0.0.1, gets no answer.
	if err := testenv.Ping(c.Netns, "10.122.0.1"); err != nil {
		t.Fatal(err)
	}
	for i, tt := range []struct {
		name     string
		listener string // on the node
	}{
		{"127.0.0.1", "127.0.0.1:9472"}, // netd's /status
		{"elsewhere in 127/8", "127.3.2.1:9473"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			testenv.Serve(t, n.ns, tt.listener)
			dst := netip.MustParseAddrPort(tt.listener)
			answered, err := testenv.SYNAnswered(c.Netns, "eth0", gw, netip.AddrPortFrom(src, uint16(40000+i)), dst)
			if err != nil {
				t.Fatal(err)
			}
			if answered {
				t.Errorf("the container got a SYN-ACK from the node's %s", dst)
			}
		})
	}
	t.Run("CHECK sees the rule gone", func(t *testing.T) {
		mustRun(t, n.ns, "sh", "-c", "iptables -S | grep -- '-A BERTH-IN-' | sed 's/^-A/-D/' | xargs -r -L1 iptables")
		var ce *types.Error
		if err := rt.Check(c); !errors.As(err, &ce) || ce.Code != 104 {
			t.Errorf("CHECK without the localnet rule: %v, want 104", err)
		}
	})
}

// An IPv4-only network on a node where another network has IPv6 (so the
// node forwards IPv6): its container turns IPv6 on in its own namespace,
// gives itself an address (made up, or one of the dual-stack network)
// and a route through the bridge, and reaches neither the dual-stack
// network's container, nor the node, nor the outside. CHECK notices the
// closing rules gone.
func TestIPv4OnlyNetworkCarriesNoIPv6(t *testing.T) {
	n := newDualNode(t)
	v4 := testenv.NewRuntime(t, n.ns, n.conflist("only4", "berth-4", "10.123.0.0/24", ""))
	ds := testenv.NewRuntime(t, n.ns, n.conflistRanges("ds", "berth-ds", []string{"10.124.0.0/24", "fd00:124::/64"}, ""))
	d, a := container(t, "d1"), container(t, "a1")
	rd := ds.MustAdd(t, d) // turns on IPv6 forwarding
	defer ds.Del(d)
	v4.MustAdd(t, a)
	defer v4.Del(a)
	mustRun(t, n.outside, "ip", "-6", "route", "add", "fd00::/8", "via", nodeIP6)
	mustRun(t, n.outside, "ip", "-6", "route", "add", "2001:db8:66::/64", "via", nodeIP6)

	// Control: the dual-stack container does get out over IPv6.
	var err error
	var out []byte
	for try := 0; try < 3; try++ {
		if out, err = testenv.InNS(d.Netns, "ping", "-c", "1", "-W", "2", outsideIP6); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("control: the dual-stack container does not get out: %v: %s", err, out)
	}

	gw := linkMAC(t, n.ns, "berth-4")
	mustRun(t, a.Netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.eth0.disable_ipv6=0")
	mustRun(t, a.Netns, "ip", "-6", "neigh", "replace", "fe80::1", "lladdr", gw.String(), "dev", "eth0", "nud", "permanent")
	mustRun(t, a.Netns, "ip", "-6", "route", "replace", "default", "via", "fe80::1", "dev", "eth0")
	const madeUp, dsAddr = "2001:db8:66::6", "fd00:124::99"
	targets := []struct {
		name string
		at   ns.NetNS
		addr string
	}{
		{"the dual-stack network's container", d.Netns, addrOf(rd, true)},
		{"the node", n.ns, nodeIP6},
		{"the outside", n.outside, outsideIP6},
	}
	for _, src := range []string{madeUp, dsAddr} {
		mustRun(t, a.Netns, "ip", "addr", "add", src+"/128", "dev", "eth0", "nodad")
	}
	for _, to := range targets {
		// Counted where it would arrive, whatever its source by then (one
		// of the dual-stack network's would leave masqueraded). The node's
		// count comes after berth's INPUT jump, which is first.
		mustRun(t, to.at, "ip6tables", "-A", "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "echo-request", "-j", "ACCEPT")
	}
	for _, tt := range targets {
		t.Run(tt.name, func(t *testing.T) {
			for _, src := range []string{madeUp, dsAddr} {
				mustRun(t, tt.at, "ip6tables", "-Z", "INPUT")
				testenv.InNS(a.Netns, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", src, tt.addr)
				if got := echoRequests(t, tt.at); got != 0 {
					t.Errorf("%d echo requests from %s arrived", got, src)
				}
			}
		})
	}
	t.Run("CHECK sees the closing rules gone", func(t *testing.T) {
		for _, chain := range []string{"BERTH-NO6-", "BERTH-IN-"} {
			// Flushed: a chain that stays but drops nothing.
			mustRun(t, n.ns, "sh", "-c", fmt.Sprintf("ip6tables -S | grep -o -- '^-N %s[0-9a-f]*' | cut -d' ' -f2 | xargs -r -n1 ip6tables -F", chain))
			var ce *types.Error
			if err := v4.Check(a); !errors.As(err, &ce) || ce.Code != 104 {
				t.Errorf("CHECK with %s* flushed: %v, want 104", chain, err)
			}
			if err := ds.Check(d); err != nil {
				t.Errorf("the dual-stack network's CHECK: %v", err)
			}
			v4.Del(a) // DEL and ADD again: the rules are back
			v4.MustAdd(t, a)
			if err := v4.Check(a); err != nil {
				t.Errorf("CHECK after ADD again: %v", err)
			}
		}
	})
}

// echoRequests is how many ICMPv6 echo requests the ACCEPT rule in n's
// INPUT counted.
func echoRequests(t *testing.T, n ns.NetNS) int {
	t.Helper()
	out, err := testenv.InNS(n, "ip6tables-save", "-c", "-t", "filter")
	if err != nil {
		t.Fatalf("ip6tables-save: %v: %s", err, out)
	}
	count := 0
	for _, line := range strings.Split(string(out), "\n") {
		var pkts, bytes int
		if _, err := fmt.Sscanf(line, "[%d:%d] -A INPUT -p ipv6-icmp", &pkts, &bytes); err == nil && strings.HasSuffix(line, "--icmpv6-type 128 -j ACCEPT") {
			count += pkts
		}
	}
	return count
}
