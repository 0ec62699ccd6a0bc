package attach_test

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/testenv"
)

// berth-vxlan and berth-hostgw attach containers to the node's leased
// subnet; here the lease file is written as netd writes it.
func TestLeasedPlugins(t *testing.T) {
	for _, mode := range []string{lease.ModeVXLAN, lease.ModeHostGW} {
		t.Run(mode, func(t *testing.T) {
			testenv.BinDir(t, "berth-"+mode)
			n := newNode(t)
			leaseDir := t.TempDir()
			list := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"berth-%s","leaseDir":%q,
				"stateDir":%q,%s"ipam":{"type":"berth-ipam","dataDir":%q},"capabilities":{"portMappings":true}}]}`,
				mode, mode, leaseDir, n.stateDir, n.datapath(), n.dataDir)
			rt := testenv.NewRuntime(t, n.ns, list)
			c1 := container(t, "l1", port(8080, 80, "tcp"))

			var ce *types.Error
			if _, err := rt.Add(c1); !errors.As(err, &ce) || ce.Code != 11 || !strings.Contains(err.Error(), "netd") {
				t.Fatalf("ADD without lease: %v, want code 11 naming netd", err)
			}
			if err := rt.Status(); !errors.As(err, &ce) || ce.Code != 50 {
				t.Fatalf("STATUS without lease: %v, want code 50", err)
			}
			before := n.snapshot(t)

			node := &lease.Node{Network: mode, Mode: mode, NetworkCIDR: netip.MustParsePrefix("10.244.0.0/16"),
				Subnet: netip.MustParsePrefix("10.244.7.0/24"), MTU: 1450, IPMasq: true, NodeName: "n1",
				NodeIP: netip.MustParseAddr(nodeIP), Expires: time.Now().Add(time.Minute)}
			if err := lease.Write(lease.Path(leaseDir, mode), node); err != nil {
				t.Fatal(err)
			}
			if err := rt.Status(); err != nil {
				t.Fatalf("STATUS with lease: %v", err)
			}
			c2 := container(t, "l2")
			r1, r2 := rt.MustAdd(t, c1), rt.MustAdd(t, c2)
			if got := r1.IPs[0].Address.String(); got != "10.244.7.2/24" || r1.IPs[0].Gateway.String() != "10.244.7.1" {
				t.Errorf("address %s via %s, want 10.244.7.2/24 via the subnet's first address", got, r1.IPs[0].Gateway)
			}
			out, _ := testenv.InNS(c1.Netns, "ip", "link", "show", "eth0")
			if !strings.Contains(string(out), "mtu 1450") {
				t.Errorf("container MTU not from the lease: %s", out)
			}
			if err := testenv.Ping(c1.Netns, ipOf(t, r2)); err != nil {
				t.Error(err)
			}
			testenv.Serve(t, n.outside, outsideIP+":9000")
			if src, err := testenv.Dial(c2.Netns, outsideIP+":9000"); err != nil || src != nodeIP {
				t.Errorf("leaving the cluster CIDR: seen as %q, %v; want masqueraded to %s", src, err, nodeIP)
			}
			testenv.Serve(t, c1.Netns, "0.0.0.0:80")
			if _, err := testenv.Dial(n.outside, nodeIP+":8080"); err != nil {
				t.Errorf("published port: %v", err)
			}
			if err := rt.Check(c1); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			// Traffic inside the cluster CIDR keeps its source (other nodes' pods).
			rules, _ := testenv.InNS(n.ns, "iptables-save", "-t", "nat")
			if !strings.Contains(string(rules), "-s 10.244.7.0/24 -d 10.244.0.0/16 -j RETURN") {
				t.Errorf("no masquerade exception for the cluster CIDR:\n%s", rules)
			}

			// netd gone: DEL still cleans up everything.
			lease.Write(lease.Path(leaseDir, mode), &lease.Node{})
			for _, c := range []*testenv.Attachment{c1, c2} {
				if err := rt.Del(c); err != nil {
					t.Fatalf("DEL without a valid lease: %v", err)
				}
			}
			if after := n.snapshot(t); after != before {
				t.Errorf("leftovers:\n%s\nvs\n%s", after, before)
			}
		})
	}
}
