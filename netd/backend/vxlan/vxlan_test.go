package vxlan

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/backend/backendtest"
	"github.com/berthnet/berth/netd/cluster"
)

// Register only plans the VTEP; Ensure makes it with the settings
// flannel users expect, keeps it untouched on a second start (a netd
// restart), and re-creates it when a setting that can only be set at
// creation differs.
func TestRegister(t *testing.T) {
	netns, node := backendtest.Node(t, conf.Network{VNI: 7, Port: 4789})
	ctx := context.Background()
	err := netns.Do(func(ns.NetNS) error {
		nw, err := (&Backend{}).Register(ctx, node)
		if err != nil {
			return err
		}
		// netd leases its subnet while Ensure makes the VTEP: Register
		// must not wait for the kernel.
		if _, err := netlink.LinkByName("berth.7"); err == nil {
			t.Error("Register created the VTEP; Ensure should")
		}
		if err := nw.Ensure(ctx); err != nil {
			return err
		}
		l, err := netlink.LinkByName("berth.7")
		if err != nil {
			return err
		}
		v := l.(*netlink.Vxlan)
		if v.VxlanId != 7 || v.Port != 4789 || v.Learning || v.MTU != 1450 || !v.SrcAddr.Equal(net.ParseIP("192.168.50.1")) ||
			v.VtepDevIndex != node.Link.Attrs().Index || v.Flags&net.FlagUp == 0 || v.HardwareAddr.String() != stableMAC("node1", 7).String() {
			t.Errorf("VTEP %+v", v)
		}
		var published cluster.Lease
		nw.Publish(&published)
		if nw.MTU() != 1450 || published.VNI != 7 || published.VTEPMAC != stableMAC("node1", 7) {
			t.Errorf("MTU %d, published %+v", nw.MTU(), published)
		}
		// The eBPF datapath decapsulates only frames for the VTEP's MAC.
		if tun, ok := nw.(backend.Tunneler).Tunnel(); !ok || tun.VTEP != v.Index || tun.MAC != stableMAC("node1", 7) {
			t.Errorf("Tunnel: %+v %v, want VTEP %d with its MAC", tun, ok, v.Index)
		}

		if _, err := register(ctx, node); err != nil {
			return err
		}
		again, _ := netlink.LinkByName("berth.7")
		if again.Attrs().Index != v.Index {
			t.Errorf("restart re-created the VTEP (index %d -> %d)", v.Index, again.Attrs().Index)
		}

		node.Network.Port = 8472
		if _, err := register(ctx, node); err != nil {
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

// register is netd's start: Register, then the VTEP (Ensure).
func register(ctx context.Context, node backend.Node) (backend.Network, error) {
	nw, err := (&Backend{}).Register(ctx, node)
	if err != nil {
		return nil, err
	}
	return nw, nw.Ensure(ctx)
}

// underlay answers as a node on 192.168.50.0/24 with a router at .254.
func underlay(ip netip.Addr) (backend.Path, error) {
	if netip.MustParsePrefix("192.168.50.0/24").Contains(ip) {
		return backend.Path{LinkIndex: 2, Dev: "eth0", Direct: true}, nil
	}
	return backend.Path{LinkIndex: 2, Dev: "eth0", Gateway: netip.MustParseAddr("192.168.50.254")}, nil
}

func peer(name, ip, subnet, mac string) cluster.Lease {
	l := cluster.Lease{NodeName: name, NodeIP: netip.MustParseAddr(ip), Subnet: netip.MustParsePrefix(subnet), Mode: "vxlan", VNI: 1}
	if mac != "" {
		l.VTEPMAC, _ = cluster.ParseMAC(mac)
	}
	return l
}

// Desired, without a namespace: the VTEP's address, and per peer a
// neighbour, an FDB entry and an onlink route; with directRouting a plain
// route for a peer on the segment; a peer without a VTEP MAC is a
// problem.
func TestDesired(t *testing.T) {
	for _, direct := range []bool{false, true} {
		n := conf.Network{CIDR: netip.MustParsePrefix("10.244.0.0/16"), DirectRouting: &direct}.WithDefaults()
		nw := &network{node: backend.Node{Name: "node1", IP: netip.MustParseAddr("192.168.50.1"),
			Link: &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth0", Index: 2, MTU: 1500}}, Network: &n}}
		nw.vtep.Store(5)
		s, problems := nw.Desired(backend.Input{
			Self: peer("node1", "192.168.50.1", "10.244.1.0/24", "02:00:00:00:00:01"),
			Peers: []cluster.Lease{
				peer("near", "192.168.50.2", "10.244.2.0/24", "02:00:00:00:00:02"),
				peer("far", "192.168.60.3", "10.244.3.0/24", "02:00:00:00:00:03"),
				peer("broken", "192.168.60.4", "10.244.4.0/24", ""),
			},
			Underlay: underlay,
		})
		got := describe(s)
		want := "address 10.244.1.0/32 dev 5; neighbour 10.244.2.0 02:00:00:00:00:02 dev 5; neighbour 10.244.3.0 02:00:00:00:00:03 dev 5; " +
			"fdb 02:00:00:00:00:02 192.168.50.2 dev 5; fdb 02:00:00:00:00:03 192.168.60.3 dev 5; " +
			"route unreachable 10.244.0.0/16 metric 4294967295; route 10.244.2.0/24 via 10.244.2.0 dev 5 onlink; route 10.244.3.0/24 via 10.244.3.0 dev 5 onlink"
		if direct {
			want = "address 10.244.1.0/32 dev 5; neighbour 10.244.3.0 02:00:00:00:00:03 dev 5; fdb 02:00:00:00:00:03 192.168.60.3 dev 5; " +
				"route unreachable 10.244.0.0/16 metric 4294967295; route 10.244.2.0/24 via 192.168.50.2 dev 2; route 10.244.3.0/24 via 10.244.3.0 dev 5 onlink"
		}
		if got != want {
			t.Errorf("direct routing %v:\n got %s\nwant %s", direct, got, want)
		}
		if len(problems) != 1 || problems[0].Peer != "broken" || !strings.Contains(problems[0].Err.Error(), "no VTEP MAC") {
			t.Errorf("direct routing %v: problems %v", direct, problems)
		}
	}
}

func describe(s backend.State) string {
	var out []string
	for _, a := range s.Addrs {
		out = append(out, fmt.Sprintf("address %s dev %d", a.IPNet, a.LinkIndex))
	}
	for _, n := range s.Neighs {
		out = append(out, fmt.Sprintf("neighbour %s %s dev %d", n.IP, n.HardwareAddr, n.LinkIndex))
	}
	for _, n := range s.FDB {
		out = append(out, fmt.Sprintf("fdb %s %s dev %d", n.HardwareAddr, n.IP, n.LinkIndex))
	}
	for _, r := range s.Routes {
		out = append(out, "route "+backend.DescribeRoute(&r, strconv.Itoa))
	}
	return strings.Join(out, "; ")
}

// In a namespace: what Desired wants can be applied, and a second pass
// over the kernel finds nothing to do.
func TestApply(t *testing.T) {
	yes := true
	netns, node := backendtest.Node(t, conf.Network{CIDR: netip.MustParsePrefix("10.244.0.0/16"), DirectRouting: &yes})
	err := netns.Do(func(ns.NetNS) error {
		nw, err := register(context.Background(), node)
		if err != nil {
			return err
		}
		in := backend.Input{
			Self: peer("node1", "192.168.50.1", "10.244.1.0/24", ""),
			Peers: []cluster.Lease{
				peer("near", "192.168.50.2", "10.244.2.0/24", "02:00:00:00:00:02"),
				peer("far", "192.168.60.3", "10.244.3.0/24", "02:00:00:00:00:03"),
			},
			Underlay: backend.NewUnderlay(node).Path,
		}
		want, problems := nw.Desired(in)
		if len(problems) != 0 || len(want.Routes) != 3 || want.Routes[1].LinkIndex != node.Link.Attrs().Index {
			t.Errorf("want %+v, problems %v", want, problems)
		}
		have, err := backend.Read(nw.Owned())
		if err != nil {
			return err
		}
		if _, err := backend.Apply(backend.Diff(have, want)); err != nil {
			return err
		}
		if have, err = backend.Read(nw.Owned()); err != nil {
			return err
		}
		if again := backend.Diff(have, want); len(again) != 0 {
			t.Errorf("second pass: %v", again)
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

func dualNetwork(direct bool) *conf.Network {
	n := conf.Network{CIDR: netip.MustParsePrefix("10.244.0.0/16"), CIDRv6: netip.MustParsePrefix("fd00:244::/56"), DirectRouting: &direct}.WithDefaults()
	return &n
}

// dualPeer is peer with an IPv6 subnet and node address: i is its third
// IPv4 byte, its IPv6 subnet index and its address on both underlays.
func dualPeer(name string, i int, segment int, mac string) cluster.Lease {
	l := peer(name, fmt.Sprintf("192.168.%d.%d", segment, i), fmt.Sprintf("10.244.%d.0/24", i), mac)
	l.SubnetV6 = netip.MustParsePrefix(fmt.Sprintf("fd00:244:0:%x::/64", i))
	l.NodeIPv6 = netip.MustParseAddr(fmt.Sprintf("fd00:%d::%x", segment, i))
	return l
}

// underlay6 answers as underlay, and for IPv6 as a node on fd00:50::/64.
func underlay6(ip netip.Addr) (backend.Path, error) {
	if ip.Is6() {
		if netip.MustParsePrefix("fd00:50::/64").Contains(ip) {
			return backend.Path{LinkIndex: 2, Dev: "eth0", Direct: true}, nil
		}
		return backend.Path{LinkIndex: 2, Dev: "eth0", Gateway: netip.MustParseAddr("fd00:50::254")}, nil
	}
	return underlay(ip)
}

// A dual-stack network's IPv6 subnets go through the same VTEP as the
// IPv4 ones, whichever underlay family it runs over; with directRouting
// each family is routed directly where its node address is on the
// segment.
func TestDesiredDualStack(t *testing.T) {
	for _, tc := range []struct {
		name   string
		v6     bool
		direct bool
		want   string
	}{
		{"vtep over IPv4", false, false, "address 10.244.1.0/32 dev 5; address fd00:244:0:1::/128 dev 5; " +
			"neighbour 10.244.2.0 02:00:00:00:00:02 dev 5; neighbour fd00:244:0:2:: 02:00:00:00:00:02 dev 5; neighbour 10.244.3.0 02:00:00:00:00:03 dev 5; neighbour fd00:244:0:3:: 02:00:00:00:00:03 dev 5; " +
			"fdb 02:00:00:00:00:02 192.168.50.2 dev 5; fdb 02:00:00:00:00:03 192.168.60.3 dev 5; " +
			"route unreachable 10.244.0.0/16 metric 4294967295; route unreachable fd00:244::/56 metric 4294967295; route 10.244.2.0/24 via 10.244.2.0 dev 5 onlink; route fd00:244:0:2::/64 via fd00:244:0:2:: dev 5 onlink; " +
			"route 10.244.3.0/24 via 10.244.3.0 dev 5 onlink; route fd00:244:0:3::/64 via fd00:244:0:3:: dev 5 onlink"},
		{"vtep over IPv6", true, false, "address 10.244.1.0/32 dev 5; address fd00:244:0:1::/128 dev 5; " +
			"neighbour 10.244.2.0 02:00:00:00:00:02 dev 5; neighbour fd00:244:0:2:: 02:00:00:00:00:02 dev 5; neighbour 10.244.3.0 02:00:00:00:00:03 dev 5; neighbour fd00:244:0:3:: 02:00:00:00:00:03 dev 5; " +
			"fdb 02:00:00:00:00:02 fd00:50::2 dev 5; fdb 02:00:00:00:00:03 fd00:60::3 dev 5; " +
			"route unreachable 10.244.0.0/16 metric 4294967295; route unreachable fd00:244::/56 metric 4294967295; route 10.244.2.0/24 via 10.244.2.0 dev 5 onlink; route fd00:244:0:2::/64 via fd00:244:0:2:: dev 5 onlink; " +
			"route 10.244.3.0/24 via 10.244.3.0 dev 5 onlink; route fd00:244:0:3::/64 via fd00:244:0:3:: dev 5 onlink"},
		{"direct routing", false, true, "address 10.244.1.0/32 dev 5; address fd00:244:0:1::/128 dev 5; " +
			"neighbour 10.244.3.0 02:00:00:00:00:03 dev 5; neighbour fd00:244:0:3:: 02:00:00:00:00:03 dev 5; fdb 02:00:00:00:00:03 192.168.60.3 dev 5; " +
			"route unreachable 10.244.0.0/16 metric 4294967295; route unreachable fd00:244::/56 metric 4294967295; route 10.244.2.0/24 via 192.168.50.2 dev 2; route fd00:244:0:2::/64 via fd00:50::2 dev 2; " +
			"route 10.244.3.0/24 via 10.244.3.0 dev 5 onlink; route fd00:244:0:3::/64 via fd00:244:0:3:: dev 5 onlink"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nw := &network{v6: tc.v6, node: backend.Node{Name: "node1", IP: netip.MustParseAddr("192.168.50.1"), IPv6: netip.MustParseAddr("fd00:50::1"),
				Link: &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth0", Index: 2, MTU: 1500}}, Network: dualNetwork(tc.direct)}}
			nw.vtep.Store(5)
			near, far := dualPeer("near", 2, 50, "02:00:00:00:00:02"), dualPeer("far", 3, 60, "02:00:00:00:00:03")
			if tc.v6 {
				near.VTEPMAC, near.VTEPMACv6 = cluster.MAC{}, near.VTEPMAC
				far.VTEPMAC, far.VTEPMACv6 = cluster.MAC{}, far.VTEPMAC
			}
			s, problems := nw.Desired(backend.Input{Self: dualPeer("node1", 1, 50, ""), Peers: []cluster.Lease{near, far}, Underlay: underlay6})
			if got := describe(s); got != tc.want {
				t.Errorf("\n got %s\nwant %s", got, tc.want)
			}
			if len(problems) != 0 {
				t.Errorf("problems %v", problems)
			}
		})
	}
}

// Peers a VTEP cannot reach are problems with the reason, not routes to
// nowhere: a peer whose VTEP runs over the other underlay family, one
// without a node address of this VTEP's family, and a peer from before
// dual-stack (no IPv6 subnet) is connected for IPv4.
func TestDesiredDualStackProblems(t *testing.T) {
	nw := &network{v6: true, node: backend.Node{Name: "node1", IP: netip.MustParseAddr("192.168.50.1"), IPv6: netip.MustParseAddr("fd00:50::1"),
		Link: &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth0", Index: 2, MTU: 1500}}, Network: dualNetwork(false)}}
	nw.vtep.Store(5)
	v4vtep := dualPeer("v4vtep", 2, 50, "02:00:00:00:00:02")
	noaddr := dualPeer("noaddr", 3, 50, "")
	noaddr.VTEPMACv6, noaddr.NodeIPv6 = cluster.MAC{2, 0, 0, 0, 0, 3}, netip.Addr{}
	old := peer("old", "192.168.50.4", "10.244.4.0/24", "")
	old.VTEPMACv6, old.NodeIPv6 = cluster.MAC{2, 0, 0, 0, 0, 4}, netip.MustParseAddr("fd00:50::4")
	s, problems := nw.Desired(backend.Input{Self: dualPeer("node1", 1, 50, ""), Peers: []cluster.Lease{v4vtep, noaddr, old}, Underlay: underlay6})
	want := "address 10.244.1.0/32 dev 5; address fd00:244:0:1::/128 dev 5; neighbour 10.244.4.0 02:00:00:00:00:04 dev 5; " +
		"fdb 02:00:00:00:00:04 fd00:50::4 dev 5; route unreachable 10.244.0.0/16 metric 4294967295; route unreachable fd00:244::/56 metric 4294967295; route 10.244.4.0/24 via 10.244.4.0 dev 5 onlink"
	if got := describe(s); got != want {
		t.Errorf("\n got %s\nwant %s", got, want)
	}
	if len(problems) != 2 || !strings.Contains(problems[0].Err.Error(), "runs over the IPv4 underlay, this node's over IPv6") ||
		!strings.Contains(problems[1].Err.Error(), "no IPv6 node address") {
		t.Errorf("problems %v", problems)
	}
}

// Over an IPv6 underlay (the node's first address is IPv6) the VTEP is
// berth6.<vni> from the node's IPv6 address with 70 bytes of overhead,
// published as vtepMACv6; when the node's first address goes back to
// IPv4 it is replaced by berth.<vni>. Applying a dual-stack state and
// reading it back finds nothing more to do.
func TestIPv6Underlay(t *testing.T) {
	netns, node := backendtest.Node(t, conf.Network{VNI: 7, CIDR: netip.MustParsePrefix("10.244.0.0/16"), CIDRv6: netip.MustParsePrefix("fd00:244::/56")})
	node.PreferIPv6 = true
	ctx := context.Background()
	err := netns.Do(func(ns.NetNS) error {
		nw, err := register(ctx, node)
		if err != nil {
			return err
		}
		l, err := netlink.LinkByName("berth6.7")
		if err != nil {
			return err
		}
		v := l.(*netlink.Vxlan)
		if v.MTU != 1430 || !v.SrcAddr.Equal(net.ParseIP("fd00:50::1")) || v.Learning {
			t.Errorf("VTEP %+v", v)
		}
		var published cluster.Lease
		nw.Publish(&published)
		if nw.MTU() != 1430 || !published.VTEPMAC.IsZero() || published.VTEPMACv6 != stableMAC("node1", 7) {
			t.Errorf("MTU %d, published %+v", nw.MTU(), published)
		}
		far := dualPeer("far", 3, 60, "")
		far.VTEPMACv6 = cluster.MAC{2, 0, 0, 0, 0, 3}
		in := backend.Input{Self: dualPeer("node1", 1, 50, ""), Peers: []cluster.Lease{far}, Underlay: backend.NewUnderlay(node).Path}
		want, problems := nw.Desired(in)
		if len(problems) != 0 {
			t.Errorf("problems %v", problems)
		}
		have, err := backend.Read(nw.Owned())
		if err != nil {
			return err
		}
		if _, err := backend.Apply(backend.Diff(have, want)); err != nil {
			return err
		}
		if have, err = backend.Read(nw.Owned()); err != nil {
			return err
		}
		if again := backend.Diff(have, want); len(again) != 0 {
			t.Errorf("second pass: %v", again)
		}
		if len(have.Routes) != 4 || len(have.Neighs) != 2 || len(have.FDB) != 1 || len(have.Addrs) != 2 {
			t.Errorf("kernel %+v", have)
		}

		node.PreferIPv6 = false
		if _, err := register(ctx, node); err != nil {
			return err
		}
		if _, err := netlink.LinkByName("berth6.7"); err == nil {
			t.Error("berth6.7 left behind after the VTEP moved to IPv4")
		}
		if l, err := netlink.LinkByName("berth.7"); err != nil || !l.(*netlink.Vxlan).SrcAddr.Equal(net.ParseIP("192.168.50.1")) {
			t.Errorf("berth.7: %v %v", l, err)
		}
		return (&Backend{}).Teardown(ctx, node)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// mismatch, without root: a VTEP found with any setting that makes it
// send other packets than the eBPF datapath's programs (and a VTEP netd
// makes) must be re-created; one as netd makes it is kept.
func TestMismatch(t *testing.T) {
	want := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "berth.1"}, VxlanId: 1, VtepDevIndex: 2,
		SrcAddr: net.ParseIP("192.168.50.1"), Port: 8472, UDPCSum: true}
	same := func(change func(v *netlink.Vxlan, x *vtepExtra)) (netlink.Link, vtepExtra) {
		v := *want
		v.SrcAddr = net.ParseIP("192.168.50.1").To4() // as the kernel reports it
		var x vtepExtra
		change(&v, &x)
		return &v, x
	}
	for _, tt := range []struct {
		name   string
		change func(v *netlink.Vxlan, x *vtepExtra)
		why    string // "": kept
	}{
		{"as netd makes it", func(*netlink.Vxlan, *vtepExtra) {}, ""},
		{"other MTU, MAC and ageing: fixed in place or unused", func(v *netlink.Vxlan, _ *vtepExtra) {
			v.MTU, v.HardwareAddr, v.Age = 1400, net.HardwareAddr{2, 0, 0, 0, 0, 9}, 300
		}, ""},
		{"other VNI", func(v *netlink.Vxlan, _ *vtepExtra) { v.VxlanId = 2 }, "vni 2, want 1"},
		{"other local", func(v *netlink.Vxlan, _ *vtepExtra) { v.SrcAddr = net.ParseIP("192.168.50.9") }, "local 192.168.50.9, want 192.168.50.1"},
		{"other port", func(v *netlink.Vxlan, _ *vtepExtra) { v.Port = 4789 }, "port 4789, want 8472"},
		{"other underlay", func(v *netlink.Vxlan, _ *vtepExtra) { v.VtepDevIndex = 3 }, "underlay link 3, want 2"},
		{"learning", func(v *netlink.Vxlan, _ *vtepExtra) { v.Learning = true }, "learning on"},
		{"no UDP checksum", func(v *netlink.Vxlan, _ *vtepExtra) { v.UDPCSum = false }, "udpcsum false, want true"},
		{"fixed TTL", func(v *netlink.Vxlan, _ *vtepExtra) { v.TTL = 64 }, "ttl 64, want 0"},
		{"TTL inherited", func(_ *netlink.Vxlan, x *vtepExtra) { x.TTLInherit = true }, "ttl inherit, want the route's"},
		{"TOS inherited", func(v *netlink.Vxlan, _ *vtepExtra) { v.TOS = 1 }, "tos 0x1, want 0x0"},
		{"fixed TOS", func(v *netlink.Vxlan, _ *vtepExtra) { v.TOS = 0x28 }, "tos 0x28, want 0x0"},
		{"DF set", func(_ *netlink.Vxlan, x *vtepExtra) { x.DF = dfSet }, "df set, want unset (DF clear)"},
		{"DF inherited", func(_ *netlink.Vxlan, x *vtepExtra) { x.DF = dfInherit }, "df inherit, want unset (DF clear)"},
		{"source port range", func(v *netlink.Vxlan, _ *vtepExtra) { v.PortLow, v.PortHigh = 49152, 65535 },
			"srcport 49152 65535, want 0 0"},
		{"GBP", func(v *netlink.Vxlan, _ *vtepExtra) { v.GBP = true }, "gbp on"},
		{"GPE", func(_ *netlink.Vxlan, x *vtepExtra) { x.GPE = true }, "gpe on"},
		{"remote checksum offload, sending", func(_ *netlink.Vxlan, x *vtepExtra) { x.RemCsumTx = true }, "remote checksum offload on"},
		{"remote checksum offload, receiving", func(_ *netlink.Vxlan, x *vtepExtra) { x.RemCsumRx = true }, "remote checksum offload on"},
		{"external", func(v *netlink.Vxlan, _ *vtepExtra) { v.FlowBased = true }, "external (collect metadata) on"},
	} {
		link, x := same(tt.change)
		if got := mismatch(link, x, want); got != tt.why {
			t.Errorf("%s: mismatch %q, want %q", tt.name, got, tt.why)
		}
	}
	if got := mismatch(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "berth.1"}}, vtepExtra{}, want); got != "berth.1 is a dummy link, not vxlan" {
		t.Errorf("a dummy link: mismatch %q", got)
	}
}

// In a namespace: a VTEP made beforehand (by hand, by another tool) with
// settings that change its packets is read as the kernel has it and
// re-created as netd makes it; the VTEP netd made is kept.
func TestEnsureRecreatesOtherSettings(t *testing.T) {
	netns, node := backendtest.Node(t, conf.Network{VNI: 7, Port: 4789})
	ctx := context.Background()
	err := netns.Do(func(ns.NetNS) error {
		nw, err := register(ctx, node)
		if err != nil {
			return err
		}
		mine, err := netlink.LinkByName("berth.7")
		if err != nil {
			return err
		}
		x, err := readExtra(mine.Attrs().Index)
		if err != nil || x != (vtepExtra{}) {
			t.Errorf("netd's VTEP read as %+v (%v), want no extra setting", x, err)
		}
		for _, settings := range [][]string{{"noudpcsum"}, {"ttl", "64"}, {"ttl", "inherit"}, {"tos", "inherit"},
			{"df", "set"}, {"df", "inherit"}, {"srcport", "49152", "65535"}, {"gbp"}, {"remcsumtx"}} {
			if err := netlink.LinkDel(mine); err != nil {
				return err
			}
			args := append([]string{"link", "add", "berth.7", "type", "vxlan", "id", "7", "dstport", "4789",
				"local", "192.168.50.1", "dev", node.Link.Attrs().Name, "nolearning"}, settings...)
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
			}
			made, err := netlink.LinkByName("berth.7")
			if err != nil {
				return err
			}
			if err := nw.Ensure(ctx); err != nil {
				return err
			}
			if mine, err = netlink.LinkByName("berth.7"); err != nil {
				return err
			}
			if mine.Attrs().Index == made.Attrs().Index {
				t.Errorf("a VTEP with %v was kept", settings)
			}
			out, _ := exec.Command("ip", "-d", "link", "show", "berth.7").CombinedOutput()
			for _, s := range []string{"noudpcsum", "ttl 64", "ttl inherit", "tos inherit", "df set", "df inherit", "srcport 49152", "gbp", "remcsumtx"} {
				if strings.Contains(string(out), s+" ") || strings.HasSuffix(strings.TrimSpace(string(out)), s) {
					t.Errorf("re-created after %v, the VTEP still has %q:\n%s", settings, s, out)
				}
			}
		}
		again := mine.Attrs().Index
		if err := nw.Ensure(ctx); err != nil {
			return err
		}
		if l, _ := netlink.LinkByName("berth.7"); l == nil || l.Attrs().Index != again {
			t.Error("Ensure re-created its own VTEP")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Guard, without a namespace: the network's port, the VTEP's underlay
// link, and the peers' node addresses of the VTEP's family.
func TestGuard(t *testing.T) {
	n := conf.Network{Name: "pods", CIDR: netip.MustParsePrefix("10.244.0.0/16"), Port: 4789}.WithDefaults()
	link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth0", Index: 2, MTU: 1500}}
	peers := []cluster.Lease{
		{NodeName: "node2", NodeIP: netip.MustParseAddr("192.168.50.2"), NodeIPv6: netip.MustParseAddr("fd00:50::2")},
		{NodeName: "node3", NodeIP: netip.MustParseAddr("192.168.50.3")},
		{NodeName: "node4", NodeIPv6: netip.MustParseAddr("fd00:50::4")},
	}
	for _, tc := range []struct {
		name  string
		v6    bool
		peers []cluster.Lease
		want  []netip.Addr
	}{
		{"no peer", false, nil, nil},
		{"IPv4 underlay", false, peers, []netip.Addr{netip.MustParseAddr("192.168.50.2"), netip.MustParseAddr("192.168.50.3")}},
		{"IPv6 underlay", true, peers, []netip.Addr{netip.MustParseAddr("fd00:50::2"), netip.MustParseAddr("fd00:50::4")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nw := &network{node: backend.Node{Name: "node1", IP: netip.MustParseAddr("192.168.50.1"), Link: link, Network: &n}, v6: tc.v6}
			want := firewall.VTEPGuard{Network: "pods", Port: 4789, Underlay: "eth0", Peers: tc.want}
			if g := nw.Guard(backend.Input{Peers: tc.peers}); !reflect.DeepEqual(g, want) {
				t.Errorf("Guard:\n got %+v\nwant %+v", g, want)
			}
		})
	}
}
