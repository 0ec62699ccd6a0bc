package registry

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/netd/cluster"
)

// revokeFails is the real etcd client, except that revoking one etcd
// lease fails, as when etcd times out or loses its leader at that moment.
type revokeFails struct {
	Client
	lease clientv3.LeaseID
}

func (c revokeFails) Revoke(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error) {
	if id == c.lease {
		return nil, errors.New("injected fault: revoke failed")
	}
	return c.Client.Revoke(ctx, id)
}

// A restarted node moves its key to a new etcd lease and revokes the old
// one. When that revoke fails, the key already belongs to the new lease:
// Acquire must keep it (the old lease holds nothing and expires by
// itself), not revoke the new lease and with it the node's key.
func TestAcquireOldRevokeFails(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := network(t, "10.6.0.0/16", 24)
	before, first, err := acquire(ctx, New(cli, "/test", n.Name), n, "a")
	if err != nil {
		t.Fatal(err)
	}
	old := before.LeaseID()
	defer cli.Revoke(ctx, old) // what the fault left behind
	r := New(revokeFails{Client: cli, lease: old}, "/test", n.Name)
	h := r.Holder(time.Minute)
	again, origin, err := h.Acquire(ctx, n, rec("a"), netip.Prefix{})
	if err != nil {
		t.Fatalf("acquire after a failed revoke of the old lease: %v", err)
	}
	if again.Subnet != first.Subnet || origin != cluster.OriginKept || h.LeaseID() == old {
		t.Fatalf("got %s (%s, lease %x), had %s (lease %x)", again.Subnet, origin, h.LeaseID(), first.Subnet, old)
	}
	resp, err := cli.Get(ctx, r.leaseKey(first.Subnet))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != h.LeaseID() {
		t.Fatalf("the node's key after the failed revoke: %v; want it attached to the new lease %x", resp.Kvs, h.LeaseID())
	}
	if ttl, err := cli.TimeToLive(ctx, h.LeaseID()); err != nil || ttl.TTL <= 0 {
		t.Fatalf("new lease: %+v %v", ttl, err)
	}
}
