package registry

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/berthnet/berth/conf"
)

func vetNetwork() *conf.Network {
	n := conf.Network{Name: "pods", CIDR: netip.MustParsePrefix("10.244.0.0/16"), Mode: "vxlan"}.WithDefaults()
	return &n
}

func rec(name, ip, mac string) Record {
	return Record{NodeName: name, NodeIP: netip.MustParseAddr(ip), Mode: "vxlan", VTEPMAC: mac, VNI: 1}
}

func mkLease(subnet string, r Record, created int64) Lease {
	return Lease{Subnet: netip.MustParsePrefix(subnet), Record: r, CreateRevision: created, ModRevision: created}
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
		{"this node's subnet, another node ID", mkLease("10.244.1.0/24", Record{NodeName: "me", NodeID: "0f", NodeIP: netip.MustParseAddr("192.168.50.1"), Mode: "vxlan", VTEPMAC: "02:00:00:00:00:01", VNI: 1}, 9), "rewritten by another writer"},
		{"odd node ID", mkLease("10.244.9.0/24", Record{NodeName: "x", NodeID: "x\n; rm", NodeIP: netip.MustParseAddr("192.168.50.9"), Mode: "vxlan", VTEPMAC: "02:00:00:00:00:09", VNI: 1}, 9), "node ID"},
		{"this node's name", mkLease("10.244.9.0/24", rec("me", "192.168.50.9", "02:00:00:00:00:09"), 1), "claims this node's name"},
		{"this node's IP", mkLease("10.244.9.0/24", rec("x", "192.168.50.1", "02:00:00:00:00:09"), 9), "claims this node's IP"},
		{"this node's MAC", mkLease("10.244.9.0/24", rec("x", "192.168.50.9", "02:00:00:00:00:01"), 9), "claims this node's VTEP MAC"},
		{"another node's MAC", mkLease("10.244.9.0/24", rec("x", "192.168.50.9", "02:00:00:00:00:02"), 9), `is node "b"'s`},
		{"another node's name", mkLease("10.244.9.0/24", rec("b", "192.168.50.9", "02:00:00:00:00:09"), 9), `node "b" already holds 10.244.2.0/24`},
		{"empty name", mkLease("10.244.9.0/24", rec("", "192.168.50.9", "02:00:00:00:00:09"), 9), "node name"},
		{"odd name", mkLease("10.244.9.0/24", rec("x\n; rm -rf", "192.168.50.9", "02:00:00:00:00:09"), 9), "node name"},
		{"long name", mkLease("10.244.9.0/24", rec(strings.Repeat("x", 300), "192.168.50.9", "02:00:00:00:00:09"), 9), "node name"},
		{"no IP", mkLease("10.244.9.0/24", Record{NodeName: "x", Mode: "vxlan", VTEPMAC: "02:00:00:00:00:09"}, 9), "not an IPv4 address"},
		{"IPv6 node IP", mkLease("10.244.9.0/24", rec("x", "2001:db8::1", "02:00:00:00:00:09"), 9), "not an IPv4 address"},
		{"loopback node IP", mkLease("10.244.9.0/24", rec("x", "127.0.0.1", "02:00:00:00:00:09"), 9), "not a unicast address"},
		{"broadcast node IP", mkLease("10.244.9.0/24", rec("x", "255.255.255.255", "02:00:00:00:00:09"), 9), "not a unicast address"},
		{"node IP in the CIDR", mkLease("10.244.9.0/24", rec("x", "10.244.2.1", "02:00:00:00:00:09"), 9), "would loop"},
		{"bad MAC", mkLease("10.244.9.0/24", rec("x", "192.168.50.9", "zz:00"), 9), "not an Ethernet address"},
		{"multicast MAC", mkLease("10.244.9.0/24", rec("x", "192.168.50.9", "01:00:5e:00:00:01"), 9), "not a unicast address"},
		{"another VNI", mkLease("10.244.9.0/24", Record{NodeName: "x", NodeIP: netip.MustParseAddr("192.168.50.9"), Mode: "vxlan", VTEPMAC: "02:00:00:00:00:09", VNI: 7}, 9), "vni 7"},
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

// A key List or Follow cannot read is reported, not fatal, and keeps
// the subnet it names taken.
func TestParseLeaseRejects(t *testing.T) {
	r := New(nil, "/t", "pods")
	for _, tc := range []struct {
		key, value, why string
		subnet          bool
	}{
		{"10.244.1.0-24", `{"nodeName":`, "not a lease record", true},
		{"10.244.1.0-24", `[1,2,3]`, "not a lease record", true},
		{"10.244.1.0-24", `{"nodeIP":"999.1.1.1"}`, "not a lease record", true},
		{"10.244.1.0-24", `{"nodeName":"` + strings.Repeat("a", MaxValueSize) + `"}`, "more than the 4096", true},
		{"10.244.1.1-24", `{}`, "host bits set", false},
		{"10.244.1.0/24", `{}`, "not the canonical spelling", false},
		{"junk", `{}`, "does not name a subnet", false},
		{"::-64", `{}`, "not an IPv4 subnet", false},
		{"10.244.1.0-024", `{}`, "", false},
	} {
		_, bad := r.ParseLease(&mvccpb.KeyValue{Key: []byte("/t/networks/pods/leases/" + tc.key), Value: []byte(tc.value), ModRevision: 4})
		if bad == nil || !strings.Contains(bad.Err.Error(), tc.why) || bad.Subnet.IsValid() != tc.subnet || bad.Key != tc.key || bad.ModRevision != 4 {
			t.Errorf("%s = %s: %+v", tc.key, tc.value, bad)
		}
	}
	l, bad := r.ParseLease(&mvccpb.KeyValue{Key: []byte("/t/networks/pods/leases/10.244.1.0-24"), Value: []byte(`{"nodeName":"a","nodeIP":"192.168.50.1","mode":"vxlan","future":1}`), CreateRevision: 3})
	if bad != nil || l.NodeName != "a" || l.CreateRevision != 3 {
		t.Errorf("good lease (with an unknown field): %+v %+v", l, bad)
	}
}
