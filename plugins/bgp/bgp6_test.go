package bgp_test

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/testenv"
)

// The routed attachment on a dual-stack and on an IPv6-only lease: the
// container gets a /128 of the node's IPv6 block with "default via
// fe80::1" held by the host veth, the node routes the /128 back through
// the veth and forwards IPv6, two containers talk over IPv6 (ICMP and TCP,
// each seeing the other's own address), CHECK finds a missing /128 route
// and DEL leaves no IPv6 route behind.
func TestRoutedAttachmentIPv6(t *testing.T) {
	for _, tc := range []struct {
		name string
		v4   bool
	}{{"dual-stack", true}, {"ipv6-only", false}} {
		t.Run(tc.name, func(t *testing.T) {
			testenv.BinDir(t, "berth-bgp")
			node, outside := testenv.NewNS(t), testenv.NewNS(t)
			testenv.Link(t, node, "eth0", nodeIP+"/24", outside, "eth0", outsideIP+"/24")
			leaseDir, stateDir, dataDir := t.TempDir(), t.TempDir(), t.TempDir()
			list := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bgp","plugins":[{"type":"berth-bgp","leaseDir":%q,
				"stateDir":%q,"ipam":{"type":"berth-ipam","dataDir":%q}}]}`, leaseDir, stateDir, dataDir)
			rt := testenv.NewRuntime(t, node, list)
			l := &lease.Node{Network: "bgp", Mode: lease.ModeBGP, MTU: 1500, IPMasq: true, NodeName: "n1",
				NetworkCIDRv6: netip.MustParsePrefix("fd00:244::/56"), SubnetV6: netip.MustParsePrefix("fd00:244:0:3::/64"),
				Expires: time.Now().Add(time.Minute)}
			if tc.v4 {
				l.NetworkCIDR, l.Subnet, l.NodeIP = netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.3.0/24"), netip.MustParseAddr(nodeIP)
			}
			if err := lease.Write(lease.Path(leaseDir, "bgp"), l); err != nil {
				t.Fatal(err)
			}
			before := testenv.Snapshot(t, node, stateDir, dataDir)
			c1 := &testenv.Attachment{ID: "b1", Netns: testenv.NewNS(t)}
			c2 := &testenv.Attachment{ID: "b2", Netns: testenv.NewNS(t)}
			r1, r2 := rt.MustAdd(t, c1), rt.MustAdd(t, c2)
			want := 1
			if tc.v4 {
				want = 2
			}
			if len(r1.IPs) != want {
				t.Fatalf("IPs %v, want %d", r1.IPs, want)
			}
			a1, a2 := testenv.IPv6Of(r1), testenv.IPv6Of(r2)
			for _, ipc := range r1.IPs {
				if ipc.Address.IP.To4() == nil {
					if ones, _ := ipc.Address.Mask.Size(); ones != 128 || !ipc.Gateway.Equal(net.ParseIP("fe80::1")) ||
						!netip.MustParsePrefix("fd00:244:0:3::/64").Contains(netip.MustParseAddr(ipc.Address.IP.String())) {
						t.Errorf("IPv6 address %s via %s, want a /128 of the block via fe80::1", ipc.Address.String(), ipc.Gateway)
					}
				}
			}
			out, _ := testenv.InNS(c1.Netns, "ip", "-6", "route")
			if !strings.Contains(string(out), "default via fe80::1 dev eth0") {
				t.Errorf("container IPv6 routes:\n%s", out)
			}
			out, _ = testenv.InNS(node, "ip", "-6", "route")
			if !strings.Contains(string(out), a1.String()+" dev bv") {
				t.Errorf("node has no /128 route to the container:\n%s", out)
			}
			if out, _ := testenv.InNS(node, "sysctl", "-n", "net.ipv6.conf.all.forwarding"); strings.TrimSpace(string(out)) != "1" {
				t.Errorf("IPv6 forwarding in the node: %s", out)
			}
			testenv.TalkIPv6(t, c1, c2, a1, a2)
			if err := rt.Check(c1); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			testenv.InNS(node, "ip", "-6", "route", "del", a1.String()+"/128")
			if err := rt.Check(c1); err == nil || !strings.Contains(err.Error(), a1.String()) {
				t.Errorf("CHECK with the node's /128 route gone: %v", err)
			}
			for _, c := range []*testenv.Attachment{c1, c2} {
				if err := rt.Del(c); err != nil {
					t.Fatalf("DEL %s: %v", c.ID, err)
				}
			}
			if after := testenv.Snapshot(t, node, stateDir, dataDir); after != before {
				t.Errorf("leftovers:\n%s", testenv.Diff(before, after))
			}
			if out, _ := testenv.InNS(node, "ip", "-6", "route", "show", "match", "fd00:244::/56"); len(strings.TrimSpace(string(out))) != 0 {
				t.Errorf("IPv6 routes left after DEL:\n%s", out)
			}
		})
	}
}
