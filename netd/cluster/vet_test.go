package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/berthnet/berth/conf"
)

func vetNetwork() *conf.Network {
	n := conf.Network{Name: "pods", CIDR: netip.MustParsePrefix("10.244.0.0/16"), Mode: "vxlan"}.WithDefaults()
	return &n
}

func rec(name, ip, mac string) Lease {
	m, err := ParseMAC(mac)
	if err != nil {
		panic(err)
	}
	return Lease{NodeName: name, NodeIP: netip.MustParseAddr(ip), Mode: "vxlan", VTEPMAC: m, VNI: 1}
}

func withID(r Lease, id string) Lease {
	r.NodeID = id
	return r
}

func mkLease(subnet string, r Lease, created int64) Lease {
	r.Subnet, r.Created = netip.MustParsePrefix(subnet), created
	return r
}

// Every kind of lease a misbehaving writer can put next to well-behaved
// ones: each is rejected with a reason, and the well-behaved ones stay.
func TestVet(t *testing.T) {
	n := vetNetwork()
	self := mkLease("10.244.1.0/24", rec("me", "192.168.50.1", "02:00:00:00:00:01"), 5)
	good := mkLease("10.244.2.0/24", rec("b", "192.168.50.2", "02:00:00:00:00:02"), 6)
	for _, tc := range []struct {
		name string
		bad  Lease
		why  string // in the rejection
	}{
		{"outside the CIDR", mkLease("10.99.0.0/24", rec("x", "192.168.50.9", "02:00:00:00:00:09"), 9), "outside the network's CIDR"},
		{"default route", mkLease("0.0.0.0/0", rec("x", "192.168.50.9", "02:00:00:00:00:09"), 9), "outside the network's CIDR"},
		{"whole CIDR", mkLease("10.244.0.0/16", rec("x", "192.168.50.9", "02:00:00:00:00:09"), 9), "not a /24 node subnet"},
		{"overlaps another node's", mkLease("10.244.2.128/25", rec("x", "192.168.50.9", "02:00:00:00:00:09"), 9), "not a /24 node subnet"},
		{"overlaps this node's", mkLease("10.244.1.0/25", rec("x", "192.168.50.9", "02:00:00:00:00:09"), 9), "not a /24 node subnet"},
		{"this node's subnet, another IP", mkLease("10.244.1.0/24", rec("me", "192.168.50.9", "02:00:00:00:00:01"), 9), "rewritten by another writer"},
		{"this node's subnet, another name", mkLease("10.244.1.0/24", rec("x", "192.168.50.1", "02:00:00:00:00:01"), 9), "rewritten by another writer"},
		{"this node's subnet, another node ID", mkLease("10.244.1.0/24", withID(rec("me", "192.168.50.1", "02:00:00:00:00:01"), "0f"), 9), "rewritten by another writer"},
		{"odd node ID", mkLease("10.244.9.0/24", withID(rec("x", "192.168.50.9", "02:00:00:00:00:09"), "x\n; rm"), 9), "node ID"},
		{"this node's name", mkLease("10.244.9.0/24", rec("me", "192.168.50.9", "02:00:00:00:00:09"), 1), "claims this node's name"},
		{"this node's IP", mkLease("10.244.9.0/24", rec("x", "192.168.50.1", "02:00:00:00:00:09"), 9), "claims this node's IP"},
		{"this node's MAC", mkLease("10.244.9.0/24", rec("x", "192.168.50.9", "02:00:00:00:00:01"), 9), "claims this node's VTEP MAC"},
		{"another node's MAC", mkLease("10.244.9.0/24", rec("x", "192.168.50.9", "02:00:00:00:00:02"), 9), `is node "b"'s`},
		{"another node's name", mkLease("10.244.9.0/24", rec("b", "192.168.50.9", "02:00:00:00:00:09"), 9), `node "b" already holds 10.244.2.0/24`},
		{"empty name", mkLease("10.244.9.0/24", rec("", "192.168.50.9", "02:00:00:00:00:09"), 9), "node name"},
		{"odd name", mkLease("10.244.9.0/24", rec("x\n; rm -rf", "192.168.50.9", "02:00:00:00:00:09"), 9), "node name"},
		{"long name", mkLease("10.244.9.0/24", rec(strings.Repeat("x", 300), "192.168.50.9", "02:00:00:00:00:09"), 9), "node name"},
		{"no IP", mkLease("10.244.9.0/24", Lease{NodeName: "x", Mode: "vxlan", VTEPMAC: MAC{2, 0, 0, 0, 0, 9}}, 9), "not an IPv4 address"},
		{"IPv6 node IP", mkLease("10.244.9.0/24", rec("x", "2001:db8::1", "02:00:00:00:00:09"), 9), "not an IPv4 address"},
		{"loopback node IP", mkLease("10.244.9.0/24", rec("x", "127.0.0.1", "02:00:00:00:00:09"), 9), "not a unicast address"},
		{"broadcast node IP", mkLease("10.244.9.0/24", rec("x", "255.255.255.255", "02:00:00:00:00:09"), 9), "not a unicast address"},
		{"node IP in the CIDR", mkLease("10.244.9.0/24", rec("x", "10.244.2.1", "02:00:00:00:00:09"), 9), "would loop"},
		{"multicast MAC", mkLease("10.244.9.0/24", rec("x", "192.168.50.9", "01:00:5e:00:00:01"), 9), "not a unicast address"},
		{"another VNI", mkLease("10.244.9.0/24", Lease{NodeName: "x", NodeIP: netip.MustParseAddr("192.168.50.9"), Mode: "vxlan", VTEPMAC: MAC{2, 0, 0, 0, 0, 9}, VNI: 7}, 9), "vni 7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leases := []Lease{good, tc.bad}
			if tc.bad.Subnet != self.Subnet {
				leases = append(leases, self)
			}
			peers, rejected := Vet(n, self, leases)
			if len(peers) != 1 || peers[0].NodeName != "b" {
				t.Errorf("peers: %+v", peers)
			}
			if len(rejected) != 1 || rejected[0].Subnet != tc.bad.Subnet || !strings.Contains(rejected[0].Err.Error(), tc.why) {
				t.Fatalf("rejected: %+v, want one for %s saying %q", rejected, tc.bad.Subnet, tc.why)
			}
			if errors.Is(rejected[0].Err, ErrForeignSelf) != (tc.bad.Subnet == self.Subnet) {
				t.Errorf("ErrForeignSelf: %v", rejected[0].Err)
			}
		})
	}
}

// Of two leases that clash, the newer key is rejected, whatever the
// order etcd lists them in.
func TestVetOlderWins(t *testing.T) {
	n := vetNetwork()
	old := mkLease("10.244.9.0/24", rec("b", "192.168.50.2", "02:00:00:00:00:02"), 3)
	newer := mkLease("10.244.3.0/24", rec("b", "192.168.50.3", "02:00:00:00:00:03"), 8)
	peers, rejected := Vet(n, Lease{}, []Lease{newer, old})
	if len(peers) != 1 || peers[0].Subnet != old.Subnet || len(rejected) != 1 || rejected[0].Subnet != newer.Subnet {
		t.Fatalf("peers %+v rejected %+v", peers, rejected)
	}
}

// The record's JSON form is what every netd since the first writes and
// reads: an unknown field is ignored, a bad MAC refused with its name.
func TestLeaseJSON(t *testing.T) {
	l := rec("a", "192.168.50.1", "02:00:00:00:00:01")
	l.Subnet, l.Created = netip.MustParsePrefix("10.244.1.0/24"), 7
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"nodeName":"a","nodeIP":"192.168.50.1","mode":"vxlan","vtepMAC":"02:00:00:00:00:01","vni":1}`; string(b) != want {
		t.Errorf("marshalled %s, want %s", b, want)
	}
	b, _ = json.Marshal(Lease{NodeName: "h", NodeIP: netip.MustParseAddr("192.168.50.2"), Mode: "hostgw"})
	if want := `{"nodeName":"h","nodeIP":"192.168.50.2","mode":"hostgw"}`; string(b) != want {
		t.Errorf("hostgw lease marshalled %s, want %s", b, want)
	}
	var back Lease
	if err := json.Unmarshal([]byte(`{"nodeName":"a","nodeIP":"192.168.50.1","mode":"vxlan","vtepMAC":"02:00:00:00:00:01","vni":1,"future":true}`), &back); err != nil {
		t.Fatal(err)
	}
	l.Subnet, l.Created = netip.Prefix{}, 0
	if back != l {
		t.Errorf("read back %+v, want %+v", back, l)
	}
	for _, bad := range []string{`{"vtepMAC":"zz:00"}`, `{"vtepMAC":"02:00:00:00:00:01:02:03"}`, `{"vtepMAC":7}`} {
		err := json.Unmarshal([]byte(bad), &back)
		if err == nil || !strings.Contains(err.Error(), "vtepMAC") && !strings.Contains(err.Error(), "MAC") {
			t.Errorf("%s: %v, want an error naming vtepMAC", bad, err)
		}
	}
}

func dualNetwork() *conf.Network {
	n := conf.Network{Name: "pods", CIDR: netip.MustParsePrefix("10.244.0.0/16"),
		CIDRv6: netip.MustParsePrefix("fd00:244::/56"), Mode: "vxlan"}.WithDefaults()
	return &n
}

// dualLease is a dual-stack lease: the IPv4 subnet 10.244.<i>.0/24 with
// its IPv6 pair, and node addresses .<i> on both underlays.
func dualLease(i int, name string, created int64) Lease {
	l := Lease{NodeName: name, Mode: "vxlan", VNI: 1,
		Subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24),
		SubnetV6: netip.MustParsePrefix(fmt.Sprintf("fd00:244:0:%x::/64", i)),
		NodeIP:   netip.AddrFrom4([4]byte{192, 168, 50, byte(i)}),
		NodeIPv6: netip.MustParseAddr(fmt.Sprintf("fd00:50::%x", i)),
		VTEPMAC:  MAC{2, 0, 0, 0, 0, byte(i)}, Created: created}
	return l
}

// The IPv6 half of a lease is vetted as the IPv4 half is; a lease
// without IPv6 (written by a netd from before dual-stack) is a peer.
func TestVetDualStack(t *testing.T) {
	n := dualNetwork()
	self := dualLease(1, "me", 5)
	good := dualLease(2, "b", 6)
	old := dualLease(3, "old", 7)
	old.SubnetV6, old.NodeIPv6 = netip.Prefix{}, netip.Addr{}
	with := func(l Lease, f func(*Lease)) Lease { f(&l); return l }
	bad := dualLease(9, "x", 9)
	for _, tc := range []struct {
		name string
		bad  Lease
		why  string
	}{
		{"IPv6 subnet outside", with(bad, func(l *Lease) { l.SubnetV6 = netip.MustParsePrefix("fd00:99::/64") }), "outside the network's CIDR fd00:244::/56"},
		{"IPv6 subnet of another length", with(bad, func(l *Lease) { l.SubnetV6 = netip.MustParsePrefix("fd00:244:0:9::/80") }), "not a /64 node subnet"},
		{"IPv6 default route", with(bad, func(l *Lease) { l.SubnetV6 = netip.MustParsePrefix("::/0") }), "outside the network's CIDR"},
		{"IPv4 prefix as IPv6 subnet", with(bad, func(l *Lease) { l.SubnetV6 = netip.MustParsePrefix("10.244.9.0/24") }), "outside the network's CIDR fd00:244::/56"},
		{"this node's IPv6 subnet", with(bad, func(l *Lease) { l.SubnetV6 = self.SubnetV6 }), "claims this node's IPv6 subnet"},
		{"another node's IPv6 subnet", with(bad, func(l *Lease) { l.SubnetV6 = good.SubnetV6 }), `is node "b"'s`},
		{"this node's IPv6 address", with(bad, func(l *Lease) { l.NodeIPv6 = self.NodeIPv6 }), "claims this node's IP fd00:50::1"},
		{"link-local node address", with(bad, func(l *Lease) { l.NodeIPv6 = netip.MustParseAddr("fe80::9") }), "not a unicast address"},
		{"IPv6 node address in the CIDR", with(bad, func(l *Lease) { l.NodeIPv6 = netip.MustParseAddr("fd00:244:0:2::9") }), "would loop"},
		{"IPv4 as nodeIPv6", with(bad, func(l *Lease) { l.NodeIPv6 = netip.MustParseAddr("192.168.50.9") }), "not an IPv6 address"},
		{"mapped IPv4 as nodeIPv6", with(bad, func(l *Lease) { l.NodeIPv6 = netip.MustParseAddr("::ffff:192.168.50.9") }), "not an IPv6 address"},
		{"no node address", with(bad, func(l *Lease) { l.NodeIP, l.NodeIPv6 = netip.Addr{}, netip.Addr{} }), "no node address"},
		{"no IPv4 subnet", with(bad, func(l *Lease) { l.Subnet = netip.Prefix{} }), "subnet: the lease has none"},
		{"this node's VTEP MAC over IPv6", with(bad, func(l *Lease) { l.VTEPMAC, l.VTEPMACv6 = MAC{}, self.VTEPMAC }), "claims this node's VTEP MAC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peers, rejected := Vet(n, self, []Lease{good, old, tc.bad, self})
			if len(peers) != 2 || peers[0] != good || peers[1] != old {
				t.Errorf("peers: %+v", peers)
			}
			if len(rejected) != 1 || rejected[0].Subnet != tc.bad.Key() || !strings.Contains(rejected[0].Err.Error(), tc.why) {
				t.Fatalf("rejected: %+v, want one for %s saying %q", rejected, tc.bad.Key(), tc.why)
			}
		})
	}
}

// On an IPv6-only network a lease is named by its IPv6 subnet and has no
// IPv4 one.
func TestVetIPv6Only(t *testing.T) {
	n := conf.Network{Name: "pods", CIDRv6: netip.MustParsePrefix("fd00:244::/56"), Mode: "hostgw"}.WithDefaults()
	v6only := func(l Lease) Lease {
		l.Subnet, l.NodeIP, l.VTEPMAC, l.VNI = netip.Prefix{}, netip.Addr{}, MAC{}, 0
		return l
	}
	self, good := v6only(dualLease(1, "me", 5)), v6only(dualLease(2, "b", 6))
	withV4 := v6only(dualLease(3, "x", 7))
	withV4.Subnet = netip.MustParsePrefix("10.244.3.0/24")
	noV6 := dualLease(4, "y", 8)
	noV6.SubnetV6 = netip.Prefix{}
	peers, rejected := Vet(&n, self, []Lease{self, good, withV4, noV6})
	if len(peers) != 1 || peers[0] != good {
		t.Errorf("peers: %+v", peers)
	}
	if len(rejected) != 2 || !strings.Contains(rejected[0].Err.Error(), "IPv6-only") || !strings.Contains(rejected[1].Err.Error(), "IPv6-only") {
		t.Errorf("rejected: %+v", rejected)
	}
}

// A netd that knows the network as IPv4-only (it started before IPv6
// was added) routes IPv4 to a dual-stack lease and ignores its IPv6.
func TestVetIPv4NetworkIgnoresIPv6(t *testing.T) {
	n := vetNetwork()
	ds := dualLease(2, "b", 6)
	ds.SubnetV6 = netip.MustParsePrefix("fd00:99::/64") // whatever it is: not this netd's to judge
	peers, rejected := Vet(n, dualLease(1, "me", 5), []Lease{ds})
	if len(rejected) != 0 || len(peers) != 1 || peers[0].SubnetV6.IsValid() || peers[0].Subnet != ds.Subnet {
		t.Fatalf("peers %+v rejected %+v", peers, rejected)
	}
}

// A dual-stack lease's JSON: the IPv4 fields as before, the IPv6 ones
// beside them under new names.
func TestLeaseJSONDualStack(t *testing.T) {
	l := dualLease(3, "c", 9)
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"subnetV6":"fd00:244:0:3::/64","nodeName":"c","nodeIP":"192.168.50.3","nodeIPv6":"fd00:50::3","mode":"vxlan","vtepMAC":"02:00:00:00:00:03","vni":1}`
	if string(b) != want {
		t.Errorf("marshalled %s, want %s", b, want)
	}
	var back Lease
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	l.Subnet, l.Created = netip.Prefix{}, 0
	if back != l {
		t.Errorf("read back %+v, want %+v", back, l)
	}
}
