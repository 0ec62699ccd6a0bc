package registry

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/netd/cluster"
)

// A node name held by a live lease of another node (another NodeID, see
// cluster.Lease.Owns) is refused by Holder.Acquire and Registry.Release
// with cluster.ErrNodeTaken, naming the holder.

// taken is the cluster.ErrNodeTaken error for l: who holds it, and for
// how long its etcd lease runs unless its netd renews it.
func (r *Registry) taken(ctx context.Context, l *entry) error {
	id := l.NodeID
	if id == "" {
		id = "none, a netd from before node IDs"
	}
	left := ""
	if l.id != clientv3.NoLease {
		if ttl, err := r.cli.TimeToLive(ctx, l.id); err == nil && ttl.TTL > 0 {
			left = fmt.Sprintf(", its lease expires in %s unless its netd renews it", time.Duration(ttl.TTL)*time.Second)
		}
	}
	return fmt.Errorf("%w: node %s at %s (node ID %s) holds %s%s",
		cluster.ErrNodeTaken, l.NodeName, l.NodeAddrs(), id, subnets(l.Lease), left)
}

// firstHolder checks, after Acquire created the key of subnet for the
// node whose record is self, that no other node created one under the
// same name before it: two nodes started at once with one name both find
// the name free. entries are the leases as the key was created (read in
// the same transaction), so any other key under the name is older: it
// keeps the name, and self gives way with cluster.ErrNodeTaken.
func (r *Registry) firstHolder(ctx context.Context, self cluster.Lease, previous, subnet netip.Prefix, entries []entry) error {
	for i, l := range entries {
		if l.Key() != subnet && l.NodeName == self.NodeName && !self.Owns(l.Lease, previous) {
			return r.taken(ctx, &entries[i])
		}
	}
	return nil
}

// subnets renders a lease's subnets: "subnet 10.244.3.0/24" or "subnets
// 10.244.3.0/24 and fd00:244:0:3::/64".
func subnets(l cluster.Lease) string {
	if l.Subnet.IsValid() && l.SubnetV6.IsValid() {
		return fmt.Sprintf("subnets %s and %s", l.Subnet, l.SubnetV6)
	}
	return "subnet " + l.Key().String()
}
