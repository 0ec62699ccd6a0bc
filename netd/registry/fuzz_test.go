package registry

import (
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/berthnet/berth/netd/cluster"
)

// FuzzLease feeds netd what anyone with write access to etcd can put
// under the leases prefix: an arbitrary key and value, next to a
// well-behaved peer and this node's own lease. Whatever it is, netd must
// not crash, and a lease it accepts must be safe to route to: a node
// subnet of the network other than this node's, a unicast node IP
// outside the network that is not this node's, and no name or VTEP MAC
// of another accepted lease.
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
	} {
		f.Add(seed.key, []byte(seed.value))
	}
	n := vetNetwork()
	r := New(nil, "/t", n.Name)
	self := mkLease("10.244.1.0/24", "me", "192.168.50.1", "02:00:00:00:00:01", 5)
	peer := mkLease("10.244.2.0/24", "b", "192.168.50.2", "02:00:00:00:00:02", 6)
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		kv := &mvccpb.KeyValue{Key: []byte(r.LeasesPrefix() + key), Value: value, CreateRevision: 7, ModRevision: 7}
		l, bad := r.ParseLease(kv)
		if bad != nil {
			if bad.Err == nil || bad.Key != key {
				t.Fatalf("rejection without a reason or key: %+v", bad)
			}
			return
		}
		if r.leaseKey(l.Subnet) != string(kv.Key) {
			t.Fatalf("key %q read as subnet %s", key, l.Subnet)
		}
		peers, rejected := cluster.Vet(n, self, []cluster.Lease{self, peer, l})
		if len(peers)+len(rejected) != 2 {
			t.Fatalf("%d peers and %d rejected from 2 leases besides self", len(peers), len(rejected))
		}
		names, macs := map[string]bool{}, map[cluster.MAC]bool{}
		for _, p := range peers {
			if !cluster.NodeSubnet(n, p.Subnet) || p.Subnet == self.Subnet {
				t.Fatalf("accepted subnet %s", p.Subnet)
			}
			if !p.NodeIP.Is4() || !p.NodeIP.IsGlobalUnicast() || n.CIDR.Contains(p.NodeIP) || p.NodeIP == self.NodeIP {
				t.Fatalf("accepted node IP %s", p.NodeIP)
			}
			if names[p.NodeName] || p.NodeName == self.NodeName || cluster.CheckNodeName(p.NodeName) != nil {
				t.Fatalf("accepted node name %q twice or badly formed", p.NodeName)
			}
			names[p.NodeName] = true
			if !p.VTEPMAC.IsZero() {
				if macs[p.VTEPMAC] || p.VTEPMAC == self.VTEPMAC || p.VTEPMAC[0]&1 != 0 {
					t.Fatalf("accepted VTEP MAC %s twice", p.VTEPMAC)
				}
				macs[p.VTEPMAC] = true
			}
		}
		for _, b := range rejected {
			if b.Err == nil || (b.Subnet != l.Subnet && b.Subnet != peer.Subnet) {
				t.Fatalf("odd rejection %+v", b)
			}
		}
	})
}
