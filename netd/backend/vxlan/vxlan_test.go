package vxlan

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/backend/backendtest"
)

// The VTEP has the settings flannel users expect, survives a second
// Register untouched (a netd restart), and is re-created when a setting
// that can only be set at creation differs.
func TestRegister(t *testing.T) {
	netns, node := backendtest.Node(t, conf.Network{VNI: 7, Port: 4789})
	ctx := context.Background()
	err := netns.Do(func(ns.NetNS) error {
		nw, err := (&Backend{}).Register(ctx, node)
		if err != nil {
			return err
		}
		l, err := netlink.LinkByName("berth.7")
		if err != nil {
			return err
		}
		v := l.(*netlink.Vxlan)
		if v.VxlanId != 7 || v.Port != 4789 || v.Learning || v.MTU != 1450 || !v.SrcAddr.Equal(net.ParseIP("192.168.50.1")) ||
			v.VtepDevIndex != node.Link.Attrs().Index || v.Flags&net.FlagUp == 0 || v.HardwareAddr.String() != nw.Attrs().VTEPMAC.String() {
			t.Errorf("VTEP %+v", v)
		}
		if nw.MTU() != 1450 || nw.Attrs().VNI != 7 {
			t.Errorf("MTU %d, attrs %+v", nw.MTU(), nw.Attrs())
		}

		if _, err := (&Backend{}).Register(ctx, node); err != nil {
			return err
		}
		again, _ := netlink.LinkByName("berth.7")
		if again.Attrs().Index != v.Index {
			t.Errorf("restart re-created the VTEP (index %d -> %d)", v.Index, again.Attrs().Index)
		}

		node.Network.Port = 8472
		if _, err := (&Backend{}).Register(ctx, node); err != nil {
			return err
		}
		moved, _ := netlink.LinkByName("berth.7")
		if moved.(*netlink.Vxlan).Port != 8472 || moved.Attrs().HardwareAddr.String() != v.HardwareAddr.String() {
			t.Errorf("after a port change: %+v", moved)
		}

		node.Network.MTU = 1460
		if _, err := (&Backend{}).Register(ctx, node); err == nil || !strings.Contains(err.Error(), "at most 1450") {
			t.Errorf("MTU beyond the underlay: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Desired: per peer a neighbour, an FDB entry and an onlink route; with
// directRouting a plain route for a peer on the segment. Applying it and
// diffing again finds nothing.
func TestDesired(t *testing.T) {
	yes := true
	netns, node := backendtest.Node(t, conf.Network{CIDR: netip.MustParsePrefix("10.244.0.0/16"), DirectRouting: &yes})
	err := netns.Do(func(ns.NetNS) error {
		nw, err := (&Backend{}).Register(context.Background(), node)
		if err != nil {
			return err
		}
		mac, _ := net.ParseMAC("02:00:00:00:00:03")
		peers := []backend.Peer{
			{Name: "near", IP: netip.MustParseAddr("192.168.50.2"), Subnet: netip.MustParsePrefix("10.244.2.0/24")},
			{Name: "far", IP: netip.MustParseAddr("192.168.60.3"), Subnet: netip.MustParsePrefix("10.244.3.0/24"), VTEPMAC: mac},
			{Name: "broken", IP: netip.MustParseAddr("192.168.60.4"), Subnet: netip.MustParsePrefix("10.244.4.0/24")},
		}
		s, problems := nw.Desired(netip.MustParsePrefix("10.244.1.0/24"), peers)
		if len(problems) != 1 || problems[0].Peer != "broken" {
			t.Errorf("problems %v", problems)
		}
		var routes []string
		for _, r := range s.Routes {
			routes = append(routes, backend.Describe(&r))
		}
		if got := strings.Join(routes, "; "); got != "10.244.2.0/24 via 192.168.50.2 dev eth0; 10.244.3.0/24 via 10.244.3.0 dev berth.1 onlink" {
			t.Errorf("routes: %s", got)
		}
		if len(s.Neighs) != 1 || len(s.FDB) != 1 || len(s.Addrs) != 1 || s.Addrs[0].IPNet.String() != "10.244.1.0/32" {
			t.Errorf("state %+v", s)
		}
		changes, err := backend.Diff(nw.Owned(), s)
		if err != nil {
			return err
		}
		if err := backend.Apply(changes); err != nil {
			return err
		}
		again, err := backend.Diff(nw.Owned(), s)
		if err != nil || len(again) != 0 {
			t.Errorf("second pass: %v %v", again, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestStableMAC(t *testing.T) {
	a, b := stableMAC("node1", 1), stableMAC("node1", 1)
	if a.String() != b.String() || a[0]&0x01 != 0 || a[0]&0x02 == 0 {
		t.Fatalf("%s %s: want equal, unicast, locally administered", a, b)
	}
	if stableMAC("node2", 1).String() == a.String() || stableMAC("node1", 2).String() == a.String() {
		t.Fatal("different nodes or VNIs share a MAC")
	}
}
