package registry

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/netd/cluster"
)

func recAs(node, id, ip string) cluster.Lease {
	l := rec(node)
	l.NodeID, l.NodeIP = id, netip.MustParseAddr(ip)
	return l
}

// A second node started with a name already held is refused, with who
// holds it; the holder gets its subnet back on a restart, and only it
// can release it.
func TestNodeNameHeldByAnotherNode(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := network(t, "10.7.0.0/16", 24)
	r := New(cli, "/test", n.Name)
	real := recAs("a", "0a0a", "192.0.2.1")
	h := r.Holder(time.Minute)
	first, _, err := h.Acquire(ctx, n, real, netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	impostor := recAs("a", "0b0b", "192.0.2.9")
	_, _, err = r.Holder(time.Minute).Acquire(ctx, n, impostor, netip.Prefix{})
	if !errors.Is(err, cluster.ErrNodeTaken) {
		t.Fatalf("impostor: %v, want ErrNodeTaken", err)
	}
	for _, want := range []string{"node a at 192.0.2.1", "node ID 0a0a", "holds subnet " + first.Subnet.String(), "expires in"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q lacks %q", err, want)
		}
	}
	if _, err := r.Release(ctx, impostor, netip.Prefix{}); !errors.Is(err, cluster.ErrNodeTaken) {
		t.Errorf("impostor's release: %v, want ErrNodeTaken", err)
	}
	entries, _, _ := r.list(ctx)
	if len(entries) != 1 || entries[0].NodeID != "0a0a" || entries[0].id != h.LeaseID() {
		t.Fatalf("leases after the impostor: %+v", entries)
	}
	again, origin, err := r.Holder(time.Minute).Acquire(ctx, n, real, netip.Prefix{})
	if err != nil || again.Subnet != first.Subnet || origin != cluster.OriginKept {
		t.Fatalf("the real node's restart: %+v %s %v", again, origin, err)
	}
	if _, err := r.Release(ctx, real, netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	// Once the name is free, any node may take it.
	if _, _, err := r.Holder(time.Minute).Acquire(ctx, n, impostor, netip.Prefix{}); err != nil {
		t.Fatalf("after the release: %v", err)
	}
}

// Leases written by a netd from before node IDs have none. Their owner
// adopts them after an upgrade: the node at the lease's address, or the
// one whose lease file names the subnet; another node is refused.
func TestLeaseWithoutNodeID(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := network(t, "10.8.0.0/16", 24)
	r := New(cli, "/test", n.Name)
	old, _, err := r.Holder(time.Minute).Acquire(ctx, n, recAs("a", "", "192.0.2.1"), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = r.Holder(time.Minute).Acquire(ctx, n, recAs("a", "0c0c", "192.0.2.9"), netip.Prefix{})
	if !errors.Is(err, cluster.ErrNodeTaken) || !strings.Contains(err.Error(), "node ID none, a netd from before node IDs") {
		t.Fatalf("another node: %v, want ErrNodeTaken", err)
	}
	upgraded, origin, err := r.Holder(time.Minute).Acquire(ctx, n, recAs("a", "0a0a", "192.0.2.1"), netip.Prefix{})
	if err != nil || upgraded.Subnet != old.Subnet || origin != cluster.OriginKept {
		t.Fatalf("same address after the upgrade: %+v %s %v", upgraded, origin, err)
	}
	snap, _ := r.List(ctx)
	if len(snap.Leases) != 1 || snap.Leases[0].NodeID != "0a0a" {
		t.Fatalf("the adopted lease does not carry the node ID: %+v", snap.Leases)
	}

	// A node whose address changed proves it with its lease file.
	m := network(t, "10.9.0.0/16", 24)
	m.Name += "-moved"
	r = New(cli, "/test", m.Name)
	old, _, err = r.Holder(time.Minute).Acquire(ctx, m, recAs("a", "", "192.0.2.1"), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	got, origin, err := r.Holder(time.Minute).Acquire(ctx, m, recAs("a", "0a0a", "192.0.2.2"), old.Subnet)
	if err != nil || got.Subnet != old.Subnet || origin != cluster.OriginKept {
		t.Fatalf("new address, lease file names the subnet: %+v %s %v", got, origin, err)
	}
}

// listBarrier holds each Acquire's first List until every one has made
// it: nodes that start at the same moment all find the name free.
type listBarrier struct {
	Client
	once *sync.Once
	all  *sync.WaitGroup
}

func (b listBarrier) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp, err := b.Client.Get(ctx, key, opts...)
	b.once.Do(func() { b.all.Done(); b.all.Wait() })
	return resp, err
}

// Two nodes started at once with the same name: the older key keeps the
// name, the other is refused and leaves nothing behind.
func TestNodeNameRace(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := network(t, "10.10.0.0/16", 24)
	var all sync.WaitGroup
	all.Add(2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, want := range []cluster.Lease{recAs("a", "0a0a", "192.0.2.1"), recAs("a", "0b0b", "192.0.2.2")} {
		h := New(listBarrier{Client: cli, once: new(sync.Once), all: &all}, "/test", n.Name).Holder(time.Minute)
		wg.Go(func() { _, _, errs[i] = h.Acquire(ctx, n, want, netip.Prefix{}) })
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Fatalf("both or neither got the name: %v, %v", errs[0], errs[1])
	}
	for _, err := range errs {
		if err != nil && !errors.Is(err, cluster.ErrNodeTaken) {
			t.Fatalf("the loser: %v, want ErrNodeTaken", err)
		}
	}
	snap, _ := New(cli, "/test", n.Name).List(ctx)
	if len(snap.Leases) != 1 {
		t.Fatalf("leases: %+v, want the winner's only", snap.Leases)
	}
}

// Delete removes the network, keys that are no lease included, only
// once no node holds a lease.
func TestDeleteNetwork(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := network(t, "10.11.0.0/16", 24)
	r := New(cli, "/test", n.Name)
	if _, err := r.EnsureConfig(ctx, *n); err != nil {
		t.Fatal(err)
	}
	_, a, err := acquire(ctx, r, n, "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, r.LeasesPrefix()+"junk", "{"); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(ctx); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), a.Subnet.String()+" (a at 192.0.2.1)") {
		t.Fatalf("delete with a lease: %v", err)
	}
	if _, err := r.Config(ctx); err != nil {
		t.Fatalf("the refused delete removed the config: %v", err)
	}
	if _, err := r.Release(ctx, rec("a"), netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "/test/networks/"+n.Name+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Fatalf("keys left: %v %v", resp, err)
	}
	if err := r.Delete(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

// staleMember answers serializable reads as a member that has not yet
// applied the latest writes would: with the keys of before, here the
// lease of a node that has since left.
type staleMember struct {
	Client
	before *clientv3.GetResponse
}

func (s staleMember) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if clientv3.OpGet(key, opts...).IsSerializable() && strings.HasSuffix(key, "/leases/") {
		return s.before, nil
	}
	return s.Client.Get(ctx, key, opts...)
}

// Acquire's first read of the leases may be stale (served by one member,
// not through the quorum): a node is refused only on a fresh read, so a
// name that was free again is taken, whatever a lagging member says.
func TestStaleReadRefusesNothing(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := network(t, "10.12.0.0/16", 24)
	r := New(cli, "/test", n.Name)
	if _, _, err := r.Holder(time.Minute).Acquire(ctx, n, recAs("a", "0a0a", "192.0.2.1"), netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	before, err := cli.Get(ctx, r.LeasesPrefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Release(ctx, recAs("a", "0a0a", "192.0.2.1"), netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	got, _, err := New(staleMember{Client: cli, before: before}, "/test", n.Name).Holder(time.Minute).
		Acquire(ctx, n, recAs("a", "0b0b", "192.0.2.2"), netip.Prefix{})
	if err != nil {
		t.Fatalf("refused on a stale read: %v", err)
	}
	if _, err := r.Release(ctx, got, netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
}
