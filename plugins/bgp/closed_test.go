package bgp_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/testenv"
)

// A routed container of an IPv4-only network reaches neither the node's
// 127.0.0.0/8 (route_localnet is on for its host veth) nor anything over
// IPv6 once it turns IPv6 on, on a node that forwards IPv6 (for another
// network): its host veth has IPv6 off. The published port still answers
// the node's 127.0.0.1; CHECK notices IPv6 back on the veth.
func TestRoutedIPv4OnlyIsClosed(t *testing.T) {
	testenv.BinDir(t, "berth-bgp")
	node, outside := testenv.NewNS(t), testenv.NewNS(t)
	testenv.Link(t, node, "eth0", nodeIP+"/24", outside, "eth0", outsideIP+"/24")
	const nodeIP6, outsideIP6 = "2001:db8:2::2", "2001:db8:2::1"
	testenv.AddAddr(t, node, "eth0", nodeIP6+"/64")
	testenv.AddAddr(t, outside, "eth0", outsideIP6+"/64")
	// As a dual-stack network's first ADD would, in the test's node.
	mustRun(t, node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	leaseDir, stateDir, dataDir := t.TempDir(), t.TempDir(), t.TempDir()
	datapath := ""
	if testenv.Datapath() == "ebpf" {
		datapath = fmt.Sprintf(`"datapath":"ebpf","bpffs":%q,`, testenv.BPFFS(t))
	}
	list := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bgp4","plugins":[{"type":"berth-bgp","leaseDir":%q,
		"stateDir":%q,%s"ipam":{"type":"berth-ipam","dataDir":%q},"capabilities":{"portMappings":true}}]}`, leaseDir, stateDir, datapath, dataDir)
	rt := testenv.NewRuntime(t, node, list)
	err := lease.Write(lease.Path(leaseDir, "bgp4"), &lease.Node{Network: "bgp4", Mode: lease.ModeBGP,
		NetworkCIDR: netip.MustParsePrefix("10.245.0.0/16"), Subnet: netip.MustParsePrefix("10.245.3.0/24"),
		MTU: 1500, IPMasq: true, NodeName: "n1", NodeIP: netip.MustParseAddr(nodeIP), Expires: time.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	c := &testenv.Attachment{ID: "c4", Netns: testenv.NewNS(t),
		Caps: map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}}}
	res := rt.MustAdd(t, c)
	defer rt.Del(c)
	hostVeth := res.Interfaces[0].Name
	gw, err := net.ParseMAC(res.Interfaces[0].Mac)
	if err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddr(res.IPs[0].Address.IP.String())
	testenv.Serve(t, c.Netns, "0.0.0.0:80")

	t.Run("the node's localhost", func(t *testing.T) {
		if _, err := testenv.Dial(node, "127.0.0.1:8080"); err != nil {
			t.Errorf("the node no longer reaches the published port on 127.0.0.1: %v", err)
		}
		// The node must know the container's MAC, as it would from any
		// traffic: its own ARP for it, sent from 127.0.0.1, gets no answer.
		if err := testenv.Ping(c.Netns, nodeIP); err != nil {
			t.Fatal(err)
		}
		testenv.Serve(t, node, "127.0.0.1:9472")
		answered, err := testenv.SYNAnswered(c.Netns, "eth0", gw, netip.AddrPortFrom(src, 40001), netip.MustParseAddrPort("127.0.0.1:9472"))
		if err != nil {
			t.Fatal(err)
		}
		if answered {
			t.Error("the container got a SYN-ACK from the node's 127.0.0.1:9472")
		}
	})
	t.Run("IPv6", func(t *testing.T) {
		mustRun(t, c.Netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.eth0.disable_ipv6=0")
		mustRun(t, c.Netns, "ip", "addr", "add", "2001:db8:66::6/128", "dev", "eth0", "nodad")
		mustRun(t, c.Netns, "ip", "-6", "neigh", "replace", "fe80::1", "lladdr", gw.String(), "dev", "eth0", "nud", "permanent")
		mustRun(t, c.Netns, "ip", "-6", "route", "replace", "default", "via", "fe80::1", "dev", "eth0")
		for _, tt := range []struct {
			name string
			at   ns.NetNS
			addr string
		}{{"to the node", node, nodeIP6}, {"to the outside", outside, outsideIP6}} {
			mustRun(t, tt.at, "ip6tables", "-A", "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "echo-request", "-j", "ACCEPT")
			testenv.InNS(c.Netns, "ping", "-c", "2", "-i", "0.2", "-W", "1", tt.addr)
			out, _ := testenv.InNS(tt.at, "ip6tables", "-L", "INPUT", "-vnx")
			if f := strings.Fields(lastLine(string(out))); len(f) == 0 || f[0] != "0" {
				t.Errorf("%s: echo requests arrived: %s", tt.name, out)
			}
		}
	})
	t.Run("CHECK sees IPv6 back on the host veth", func(t *testing.T) {
		mustRun(t, node, "sysctl", "-qw", "net.ipv6.conf."+hostVeth+".disable_ipv6=0")
		var ce *types.Error
		if err := rt.Check(c); !errors.As(err, &ce) || ce.Code != 104 {
			t.Errorf("CHECK: %v, want 104", err)
		}
	})
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func mustRun(t *testing.T, n ns.NetNS, name string, args ...string) {
	t.Helper()
	if out, err := testenv.InNS(n, name, args...); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}
