package registry

import (
	"net/netip"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/berthnet/berth/netd/cluster"
)

// FuzzLease feeds netd what anyone with write access to etcd can put
// under the leases prefix: an arbitrary key and value, next to a
// well-behaved peer and this node's own lease. Whatever it is, netd must
// not crash, and a lease it accepts must be safe to route to: a node
// subnet of the network other than this node's (of each family), unicast
// node addresses outside the network that are not this node's, and no
// name, IPv6 subnet or VTEP MAC of another accepted lease. The network is
// dual-stack, so the IPv6 half of a lease is fuzzed as well.
func FuzzLease(f *testing.F) {
	for _, seed := range []struct{ key, value string }{
		{"10.244.9.0-24", `{"nodeName":"x","nodeIP":"192.168.50.9","mode":"vxlan","vtepMAC":"02:00:00:00:00:09","vni":1}`},
		{"10.244.1.0-24", `{"nodeName":"x","nodeIP":"192.168.50.9","mode":"vxlan"}`},
		{"0.0.0.0-0", `{"nodeName":"x","nodeIP":"192.168.50.9","mode":"vxlan"}`},
		{"10.244.2.128-25", `{"nodeName":"x","nodeIP":"192.168.50.9","mode":"hostgw"}`},
		{"10.244.9.0-24", `{"nodeName":"b","nodeIP":"10.244.9.1","vtepMAC":"02:00:00:00:00:02"}`},
		{"10.244.9.0-24", `{"nodeName":`},
		{"10.244.9.0-24", `null`},
		{"junk", `{}`},
		{"10.244.9.0-24", `{"nodeName":"x","nodeIP":"192.168.50.9","nodeIPv6":"fd00:50::9","subnetV6":"fd00:244:0:9::/64","mode":"vxlan","vtepMACv6":"02:00:00:00:00:09"}`},
		{"10.244.9.0-24", `{"nodeName":"x","nodeIPv6":"fd00:50::1","subnetV6":"fd00:244:0:2::/64","mode":"vxlan"}`},
		{"fd00:244:0:9::-64", `{"nodeName":"x","nodeIPv6":"fd00:50::9","mode":"vxlan"}`},
	} {
		f.Add(seed.key, []byte(seed.value))
	}
	n := vetNetwork()
	n.CIDRv6, n.SubnetLenV6 = netip.MustParsePrefix("fd00:244::/56"), 64
	r := New(nil, "/t", n.Name)
	dual := func(l cluster.Lease, i int) cluster.Lease {
		l.SubnetV6, _ = n.PairedV6(l.Subnet)
		l.NodeIPv6 = netip.AddrFrom16([16]byte{0: 0xfd, 3: 0x50, 15: byte(i)})
		return l
	}
	self := dual(mkLease("10.244.1.0/24", "me", "192.168.50.1", "02:00:00:00:00:01", 5), 1)
	peer := dual(mkLease("10.244.2.0/24", "b", "192.168.50.2", "02:00:00:00:00:02", 6), 2)
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		kv := &mvccpb.KeyValue{Key: []byte(r.LeasesPrefix() + key), Value: value, CreateRevision: 7, ModRevision: 7}
		l, bad := r.ParseLease(kv)
		if bad != nil {
			if bad.Err == nil || bad.Key != key {
				t.Fatalf("rejection without a reason or key: %+v", bad)
			}
			return
		}
		if r.leaseKey(l.Key()) != string(kv.Key) {
			t.Fatalf("key %q read as subnet %s", key, l.Key())
		}
		peers, rejected := cluster.Vet(n, self, []cluster.Lease{self, peer, l})
		if len(peers)+len(rejected) != 2 {
			t.Fatalf("%d peers and %d rejected from 2 leases besides self", len(peers), len(rejected))
		}
		names, macs, subnets6 := map[string]bool{}, map[cluster.MAC]bool{}, map[netip.Prefix]bool{}
		for _, p := range peers {
			if !cluster.NodeSubnet(n, p.Subnet) || !p.Subnet.Addr().Is4() || p.Subnet == self.Subnet {
				t.Fatalf("accepted subnet %s", p.Subnet)
			}
			if p.SubnetV6.IsValid() {
				if !cluster.NodeSubnet(n, p.SubnetV6) || !p.SubnetV6.Addr().Is6() || p.SubnetV6 == self.SubnetV6 || subnets6[p.SubnetV6] {
					t.Fatalf("accepted IPv6 subnet %s", p.SubnetV6)
				}
				subnets6[p.SubnetV6] = true
			}
			if !p.NodeIP.IsValid() && !p.NodeIPv6.IsValid() {
				t.Fatalf("accepted a lease without node address: %+v", p)
			}
			if p.NodeIP.IsValid() && (!p.NodeIP.Is4() || !p.NodeIP.IsGlobalUnicast() || n.CIDR.Contains(p.NodeIP) || p.NodeIP == self.NodeIP) {
				t.Fatalf("accepted node IP %s", p.NodeIP)
			}
			if p.NodeIPv6.IsValid() && (!p.NodeIPv6.Is6() || p.NodeIPv6.Is4In6() || !p.NodeIPv6.IsGlobalUnicast() || n.CIDRv6.Contains(p.NodeIPv6) || p.NodeIPv6 == self.NodeIPv6) {
				t.Fatalf("accepted node IPv6 %s", p.NodeIPv6)
			}
			if names[p.NodeName] || p.NodeName == self.NodeName || cluster.CheckNodeName(p.NodeName) != nil {
				t.Fatalf("accepted node name %q twice or badly formed", p.NodeName)
			}
			names[p.NodeName] = true
			for _, m := range []cluster.MAC{p.VTEPMAC, p.VTEPMACv6} {
				if m.IsZero() {
					continue
				}
				if macs[m] || m == self.VTEPMAC || m[0]&1 != 0 {
					t.Fatalf("accepted VTEP MAC %s twice", m)
				}
				macs[m] = true
			}
		}
		for _, b := range rejected {
			if b.Err == nil || (b.Subnet != l.Key() && b.Subnet != peer.Subnet) {
				t.Fatalf("odd rejection %+v", b)
			}
		}
	})
}
