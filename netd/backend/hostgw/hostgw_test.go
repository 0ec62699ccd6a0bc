package hostgw

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/backend/backendtest"
)

// A peer on the segment gets a route via its node IP; one behind the
// router gets none and a problem that says why and what to do.
func TestDesired(t *testing.T) {
	netns, node := backendtest.Node(t, conf.Network{Mode: "hostgw"})
	err := netns.Do(func(ns.NetNS) error {
		nw, err := Backend{}.Register(context.Background(), node)
		if err != nil {
			return err
		}
		if nw.MTU() != 1500 {
			t.Errorf("MTU %d, want the underlay's 1500", nw.MTU())
		}
		s, problems := nw.Desired(netip.MustParsePrefix("10.244.1.0/24"), []backend.Peer{
			{Name: "near", IP: netip.MustParseAddr("192.168.50.2"), Subnet: netip.MustParsePrefix("10.244.2.0/24")},
			{Name: "far", IP: netip.MustParseAddr("192.168.60.3"), Subnet: netip.MustParsePrefix("10.244.3.0/24")},
		})
		if len(s.Routes) != 1 || backend.Describe(&s.Routes[0]) != "10.244.2.0/24 via 192.168.50.2 dev eth0" {
			t.Errorf("routes %v", s.Routes)
		}
		if len(problems) != 1 || problems[0].Peer != "far" ||
			!strings.Contains(problems[0].Err.Error(), "not on this node's L2 segment (eth0 reaches it via 192.168.50.254 dev eth0)") ||
			!strings.Contains(problems[0].Err.Error(), "use vxlan mode") {
			t.Errorf("problems %v", problems)
		}
		node.Network.MTU = 9000
		if _, err := (Backend{}).Register(context.Background(), node); err == nil {
			t.Error("MTU larger than the underlay accepted")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
