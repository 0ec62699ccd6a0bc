package registry

import (
	"net/netip"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/cluster"
)

func vetNetwork() *conf.Network {
	n := conf.Network{Name: "pods", CIDR: netip.MustParsePrefix("10.244.0.0/16"), Mode: "vxlan"}.WithDefaults()
	return &n
}

func mkLease(subnet, name, ip, mac string, created int64) cluster.Lease {
	m, _ := cluster.ParseMAC(mac)
	return cluster.Lease{Subnet: netip.MustParsePrefix(subnet), NodeName: name, NodeIP: netip.MustParseAddr(ip), Mode: "vxlan", VTEPMAC: m, VNI: 1, Created: created}
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
		{"10.244.1.0-24", `{"vtepMAC":"zz:00"}`, `vtepMAC "zz:00" is not an Ethernet address`, true},
		{"10.244.1.0-24", `{"nodeName":"` + strings.Repeat("a", MaxValueSize) + `"}`, "more than the 4096", true},
		{"10.244.1.1-24", `{}`, "host bits set", false},
		{"10.244.1.0/24", `{}`, "not the canonical spelling", false},
		{"junk", `{}`, "does not name a subnet", false},
		{"::ffff:10.244.1.0-120", `{}`, "neither an IPv4 nor an IPv6 subnet", false},
		{"fd00:244:0:1::-64", `{"subnetV6":"fd00:244:0:2::/64"}`, "value says subnetV6 fd00:244:0:2::/64, the key names fd00:244:0:1::/64", true},
		{"fd00:244:0:1:0:0:0:0-64", `{}`, "not the canonical spelling", false},
		{"10.244.1.0-024", `{}`, "", false},
	} {
		_, bad := r.ParseLease(&mvccpb.KeyValue{Key: []byte("/t/networks/pods/leases/" + tc.key), Value: []byte(tc.value), ModRevision: 4})
		if bad == nil || !strings.Contains(bad.Err.Error(), tc.why) || bad.Subnet.IsValid() != tc.subnet || bad.Key != tc.key {
			t.Errorf("%s = %s: %+v", tc.key, tc.value, bad)
		}
	}
	l, bad := r.ParseLease(&mvccpb.KeyValue{Key: []byte("/t/networks/pods/leases/10.244.1.0-24"), Value: []byte(`{"nodeName":"a","nodeIP":"192.168.50.1","mode":"vxlan","future":1}`), CreateRevision: 3})
	if bad != nil || l.NodeName != "a" || l.Created != 3 || l.Subnet != netip.MustParsePrefix("10.244.1.0/24") {
		t.Errorf("good lease (with an unknown field): %+v %+v", l, bad)
	}
	// A dual-stack lease keeps its IPv4 key; an IPv6-only one is named
	// by its IPv6 subnet.
	l, bad = r.ParseLease(&mvccpb.KeyValue{Key: []byte("/t/networks/pods/leases/10.244.1.0-24"), Value: []byte(`{"nodeName":"a","nodeIP":"192.168.50.1","subnetV6":"fd00:244:0:1::/64","mode":"vxlan"}`)})
	if bad != nil || l.Subnet != netip.MustParsePrefix("10.244.1.0/24") || l.SubnetV6 != netip.MustParsePrefix("fd00:244:0:1::/64") {
		t.Errorf("dual-stack lease: %+v %+v", l, bad)
	}
	l, bad = r.ParseLease(&mvccpb.KeyValue{Key: []byte("/t/networks/pods/leases/fd00:244:0:1::-64"), Value: []byte(`{"nodeName":"a","nodeIPv6":"fd00:50::1","mode":"hostgw"}`)})
	if bad != nil || l.Subnet.IsValid() || l.SubnetV6 != netip.MustParsePrefix("fd00:244:0:1::/64") || l.Key() != l.SubnetV6 {
		t.Errorf("IPv6-only lease: %+v %+v", l, bad)
	}
}
