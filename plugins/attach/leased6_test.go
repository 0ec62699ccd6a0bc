package attach_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/testenv"
)

// berth-vxlan and berth-hostgw on a dual-stack and an IPv6-only lease:
// each container gets an address of each family the lease has, from the
// node's subnet of that family with its first address as gateway (on the
// bridge) and a default route; the node forwards IPv6; two containers
// talk over IPv6 (ICMP and TCP, each seeing the other's own address);
// CHECK passes; DEL leaves nothing.
func TestLeasedIPv6(t *testing.T) {
	for _, tc := range []struct {
		name string
		v4   bool
	}{{"dual-stack", true}, {"ipv6-only", false}} {
		t.Run(tc.name, func(t *testing.T) {
			const mode = lease.ModeVXLAN
			testenv.BinDir(t, "berth-"+mode)
			n := newNode(t)
			leaseDir := t.TempDir()
			list := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"berth-%s","leaseDir":%q,
				"stateDir":%q,"ipam":{"type":"berth-ipam","dataDir":%q}}]}`, mode, mode, leaseDir, n.stateDir, n.dataDir)
			rt := testenv.NewRuntime(t, n.ns, list)
			l := &lease.Node{Network: mode, Mode: mode, MTU: 1450, IPMasq: true, NodeName: "n1",
				NetworkCIDRv6: netip.MustParsePrefix("fd00:244::/56"), SubnetV6: netip.MustParsePrefix("fd00:244:0:7::/64"),
				Expires: time.Now().Add(time.Minute)}
			if tc.v4 {
				l.NetworkCIDR, l.Subnet, l.NodeIP = netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.7.0/24"), netip.MustParseAddr(nodeIP)
			}
			if err := lease.Write(lease.Path(leaseDir, mode), l); err != nil {
				t.Fatal(err)
			}
			before := n.snapshot(t)
			c1, c2 := container(t, "s1"), container(t, "s2")
			r1, r2 := rt.MustAdd(t, c1), rt.MustAdd(t, c2)
			want := []string{"fd00:244:0:7::2/64 via fd00:244:0:7::1"}
			if tc.v4 {
				want = append([]string{"10.244.7.2/24 via 10.244.7.1"}, want...)
			}
			var got []string
			for _, ipc := range r1.IPs {
				got = append(got, ipc.Address.String()+" via "+ipc.Gateway.String())
			}
			if strings.Join(got, ", ") != strings.Join(want, ", ") {
				t.Errorf("addresses %v, want %v", got, want)
			}
			out, _ := testenv.InNS(c1.Netns, "ip", "-6", "route")
			if !strings.Contains(string(out), "default via fd00:244:0:7::1 dev eth0") {
				t.Errorf("container IPv6 routes:\n%s", out)
			}
			if out, _ := testenv.InNS(n.ns, "sysctl", "-n", "net.ipv6.conf.all.forwarding"); strings.TrimSpace(string(out)) != "1" {
				t.Errorf("IPv6 forwarding in the node: %s", out)
			}
			testenv.TalkIPv6(t, c1, c2, testenv.IPv6Of(r1), testenv.IPv6Of(r2))
			if err := rt.Check(c1); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			for _, c := range []*testenv.Attachment{c1, c2} {
				if err := rt.Del(c); err != nil {
					t.Fatalf("DEL: %v", err)
				}
			}
			n.checkNothingLeft(t, before, "berth0")
		})
	}
}
