package registry

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/netd/cluster"
	"github.com/berthnet/berth/test/testbed"
)

// One real etcd server (the Debian binary, inside a test bed namespace)
// serves every test of the package; each test uses its own network name.
var (
	etcdOnce sync.Once
	etcdBed  *testbed.Testbed
	etcdCli  *clientv3.Client
	etcdErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if etcdCli != nil {
		etcdCli.Close()
	}
	if etcdBed != nil {
		etcdBed.Close()
	}
	os.Exit(code)
}

func client(t *testing.T) *clientv3.Client {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (the etcd server runs in a network namespace)")
	}
	etcdOnce.Do(func() {
		testbed.Sweep()
		if etcdBed, etcdErr = testbed.New(testbed.Options{}); etcdErr != nil {
			return
		}
		var e *testbed.Etcd
		if e, etcdErr = etcdBed.StartEtcd(context.Background()); etcdErr != nil {
			return
		}
		etcdCli, etcdErr = etcdBed.Client(e.ClientURL)
	})
	if etcdErr != nil {
		t.Fatal(etcdErr)
	}
	return etcdCli
}

func network(t *testing.T, cidr string, subnetLen int) *conf.Network {
	n := conf.Network{Name: strings.ReplaceAll(t.Name(), "/", "-"), CIDR: netip.MustParsePrefix(cidr), SubnetLen: subnetLen, Mode: "vxlan"}.WithDefaults()
	return &n
}

func rec(node string) cluster.Lease {
	return cluster.Lease{NodeName: node, NodeIP: netip.MustParseAddr("192.0.2.1"), Mode: "vxlan", VNI: 1}
}

// acquire leases node a subnet of n with a new Holder (TTL a minute).
func acquire(ctx context.Context, r *Registry, n *conf.Network, node string) (*Holder, cluster.Lease, error) {
	h := r.Holder(time.Minute)
	l, _, err := h.Acquire(ctx, n, rec(node), netip.Prefix{})
	return h, l, err
}

func TestEnsureConfig(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	r := New(cli, "/test", "ensure")
	first, err := r.EnsureConfig(ctx, conf.Network{Name: "ensure", CIDR: netip.MustParsePrefix("10.50.0.0/16"), Mode: "hostgw"})
	if err != nil {
		t.Fatal(err)
	}
	if first.SubnetLen != 24 || !first.Masq() {
		t.Fatalf("defaults not filled: %+v", first)
	}
	// A joining node that gives only the name adopts the stored config.
	got, err := r.EnsureConfig(ctx, conf.Network{Name: "ensure"})
	if err != nil || got.CIDR != first.CIDR || got.Mode != "hostgw" {
		t.Fatalf("adopting: %+v %v", got, err)
	}
	_, err = r.EnsureConfig(ctx, conf.Network{Name: "ensure", CIDR: netip.MustParsePrefix("10.60.0.0/16"), Mode: "vxlan"})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "cidr: network has 10.50.0.0/16, this netd was given 10.60.0.0/16") ||
		!strings.Contains(err.Error(), "mode:") {
		t.Fatalf("conflict: %v", err)
	}

	// Racing first nodes: exactly one config wins, the others conflict.
	var wg sync.WaitGroup
	results := make([]error, 8)
	for i := range results {
		wg.Go(func() {
			_, results[i] = New(cli, "/test", "race").EnsureConfig(ctx, conf.Network{Name: "race", CIDR: netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 100+i))})
		})
	}
	wg.Wait()
	won := 0
	for _, err := range results {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrConflict):
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d configs won the race, want 1", won)
	}
}

// Nodes racing for the subnets of a small network each get a different
// one; once all are taken the next node gets ErrExhausted.
func TestAcquireRace(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := network(t, "10.1.0.0/24", 28) // 16 subnets
	r := New(cli, "/test", n.Name)
	leases := make([]cluster.Lease, 16)
	errs := make([]error, 16)
	var wg sync.WaitGroup
	for i := range leases {
		wg.Go(func() { _, leases[i], errs[i] = acquire(ctx, r, n, fmt.Sprintf("node%d", i)) })
	}
	wg.Wait()
	seen := map[netip.Prefix]string{}
	for i, l := range leases {
		if errs[i] != nil {
			t.Fatalf("node%d: %v", i, errs[i])
		}
		if other, dup := seen[l.Subnet]; dup {
			t.Fatalf("node%d and %s both hold %s", i, other, l.Subnet)
		}
		seen[l.Subnet] = fmt.Sprintf("node%d", i)
		if !n.CIDR.Contains(l.Subnet.Addr()) || l.Subnet.Bits() != 28 {
			t.Fatalf("node%d got %s, not a /28 of %s", i, l.Subnet, n.CIDR)
		}
	}
	_, _, err := acquire(ctx, r, n, "node16")
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "all 16 node subnets of 10.1.0.0/24 are leased") {
		t.Fatalf("17th node: %v", err)
	}
	snap, err := r.List(ctx)
	if err != nil || len(snap.Leases) != 16 {
		t.Fatalf("list: %d leases, %v", len(snap.Leases), err)
	}
}

// A node that restarts within the TTL gets its subnet back by name, and
// its old etcd lease is revoked; after the TTL ran out it gets its
// previous subnet from the local copy if free, another one if not.
func TestAcquireReuse(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := network(t, "10.2.0.0/16", 24)
	r := New(cli, "/test", n.Name)
	want := rec("a")
	h1 := r.Holder(time.Minute)
	first, origin, err := h1.Acquire(ctx, n, want, netip.Prefix{})
	if err != nil || origin != cluster.OriginNew {
		t.Fatal(origin, err)
	}
	want.VTEPMAC = cluster.MAC{2, 0, 0, 0, 0, 1} // e.g. the VTEP was recreated
	h2 := r.Holder(time.Minute)
	again, origin, err := h2.Acquire(ctx, n, want, netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Subnet != first.Subnet || h2.LeaseID() == h1.LeaseID() || origin != cluster.OriginKept {
		t.Fatalf("restart: got %s (lease %x, %s), had %s (lease %x)", again.Subnet, h2.LeaseID(), origin, first.Subnet, h1.LeaseID())
	}
	if ttl, err := cli.TimeToLive(ctx, h1.LeaseID()); err != nil || ttl.TTL != -1 {
		t.Fatalf("old etcd lease still alive: %+v %v", ttl, err)
	}
	snap, _ := r.List(ctx)
	if len(snap.Leases) != 1 || snap.Leases[0].VTEPMAC.String() != "02:00:00:00:00:01" {
		t.Fatalf("record not updated: %+v", snap.Leases)
	}

	// The key is gone (lease expired, or revoked here to save time); the
	// local copy brings the same subnet back.
	if _, err := cli.Revoke(ctx, h2.LeaseID()); err != nil {
		t.Fatal(err)
	}
	back, origin, err := r.Holder(time.Minute).Acquire(ctx, n, want, first.Subnet)
	if err != nil || back.Subnet != first.Subnet || origin != cluster.OriginPrevious {
		t.Fatalf("from local copy: got %v (%s), want %s (%v)", back, origin, first.Subnet, err)
	}
	// The local copy names a subnet someone else holds now: another one.
	other, _, err := r.Holder(time.Minute).Acquire(ctx, n, cluster.Lease{NodeName: "b", Mode: "vxlan"}, first.Subnet)
	if err != nil || other.Subnet == first.Subnet {
		t.Fatalf("b took a's subnet: %v %v", other, err)
	}
}

// Acquire hangs the key on the etcd lease Prepare granted (netd grants
// it while it reads the network config), and grants no other; the next
// Acquire grants its own.
func TestPrepare(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := network(t, "10.9.0.0/16", 24)
	r := New(cli, "/test", n.Name)
	leases := func() map[clientv3.LeaseID]bool {
		t.Helper()
		resp, err := cli.Leases(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ids := map[clientv3.LeaseID]bool{}
		for _, l := range resp.Leases {
			ids[l.ID] = true
		}
		return ids
	}
	before := leases()
	h := r.Holder(time.Minute)
	h.Prepare(ctx)
	var ahead clientv3.LeaseID
	for deadline := time.Now().Add(10 * time.Second); ahead == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Prepare granted no etcd lease")
		}
		for id := range leases() {
			if !before[id] {
				ahead = id
			}
		}
	}
	if _, _, err := h.Acquire(ctx, n, rec("a"), netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	if h.LeaseID() != ahead || len(leases()) != len(before)+1 {
		t.Fatalf("key on etcd lease %x, granted ahead %x; %d etcd leases, had %d", h.LeaseID(), ahead, len(leases()), len(before))
	}
	// The lease is lost (etcd lost it): leasing again grants anew.
	if _, err := cli.Revoke(ctx, ahead); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.Acquire(ctx, n, rec("a"), netip.Prefix{}); err != nil || h.LeaseID() == ahead {
		t.Fatalf("second Acquire: etcd lease %x (%v)", h.LeaseID(), err)
	}
}

// A lease nobody keeps alive expires, and its subnet goes to the next
// node that needs one.
func TestExpiredLeaseReclaimed(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := network(t, "10.3.0.0/23", 24) // 2 subnets
	r := New(cli, "/test", n.Name)
	kctx, stop := context.WithCancel(ctx)
	defer stop()
	// Short, so that KeepAlive (a renewal every third of it) hears of
	// the revoke below quickly.
	ha := r.Holder(3 * time.Second)
	if _, _, err := ha.Acquire(ctx, n, rec("a"), netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	kept := make(chan error, 1)
	go func() { kept <- ha.KeepAlive(kctx, func(time.Duration) {}) }()
	// etcd's minimum TTL with default timings
	b, _, err := r.Holder(2*time.Second).Acquire(ctx, n, rec("b"), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := acquire(ctx, r, n, "c"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("c before b expired: %v", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, c, err := acquire(ctx, r, n, "c")
		if err == nil {
			if c.Subnet != b.Subnet {
				t.Fatalf("c got %s, b's expired subnet was %s", c.Subnet, b.Subnet)
			}
			break
		}
		if !errors.Is(err, ErrExhausted) || time.Now().After(deadline) {
			t.Fatalf("c after b's TTL: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// a was kept alive all along; once its lease is revoked, KeepAlive
	// says so.
	if _, err := cli.Revoke(ctx, ha.LeaseID()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-kept:
		if err == nil || !strings.Contains(err.Error(), "expired or was revoked") {
			t.Fatalf("KeepAlive after the revoke: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("KeepAlive did not notice its lease was revoked")
	}
}

// Reclaim writes the held key back when another writer replaced or
// deleted it, leaves an intact key alone, and fails once the etcd lease
// is gone.
func TestReclaim(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := network(t, "10.6.0.0/16", 24)
	r := New(cli, "/test", n.Name)
	h, l, err := acquire(ctx, r, n, "a")
	if err != nil {
		t.Fatal(err)
	}
	key := r.leaseKey(l.Subnet)
	check := func(what string, wrote bool) {
		t.Helper()
		got, err := h.Reclaim(ctx)
		if err != nil || got != wrote {
			t.Fatalf("%s: Reclaim = %v, %v; want %v", what, got, err, wrote)
		}
		resp, err := cli.Get(ctx, key)
		if err != nil || len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != h.LeaseID() {
			t.Fatalf("%s: key %+v %v", what, resp, err)
		}
		if back, bad := r.ParseLease(resp.Kvs[0]); bad != nil || back.NodeName != "a" || back.NodeIP != l.NodeIP {
			t.Fatalf("%s: key says %+v %v", what, back, bad)
		}
	}
	check("intact", false)
	if _, err := cli.Put(ctx, key, `{"nodeName":"a","nodeIP":"192.0.2.66","mode":"vxlan"}`); err != nil {
		t.Fatal(err)
	}
	check("rewritten without a lease", true)
	// The same record, but detached from the node's etcd lease: it would
	// outlive the node.
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, key, string(resp.Kvs[0].Value)); err != nil {
		t.Fatal(err)
	}
	check("the same record without a lease", true)
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	check("deleted", true)
	if _, err := cli.Revoke(ctx, h.LeaseID()); err != nil {
		t.Fatal(err)
	}
	if ok, err := h.Reclaim(ctx); err == nil || ok {
		t.Fatalf("Reclaim of a revoked lease: %v %v", ok, err)
	}
}

func TestRelease(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := network(t, "10.4.0.0/16", 24)
	r := New(cli, "/test", n.Name)
	_, a, err := acquire(ctx, r, n, "a")
	if err != nil {
		t.Fatal(err)
	}
	rel, err := r.Release(ctx, rec("a"), netip.Prefix{})
	if err != nil || rel.Subnet != a.Subnet {
		t.Fatalf("release: %v %v", rel, err)
	}
	if snap, _ := r.List(ctx); len(snap.Leases) != 0 {
		t.Fatalf("leases left: %+v", snap.Leases)
	}
	if _, err := r.Release(ctx, rec("a"), netip.Prefix{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second release: %v", err)
	}
}

// Follow resumes after the revision it was given; when etcd compacted
// that away it re-reads everything, and then keeps following.
func TestFollowResyncAfterCompaction(t *testing.T) {
	cli := client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := network(t, "10.5.0.0/16", 24)
	r := New(cli, "/test", n.Name)
	if _, _, err := acquire(ctx, r, n, "a"); err != nil {
		t.Fatal(err)
	}
	old, err := r.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Changes the follower has not seen, then the history is compacted.
	if _, err := r.Release(ctx, rec("a"), netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	_, b, err := acquire(ctx, r, n, "b")
	if err != nil {
		t.Fatal(err)
	}
	now, _ := r.List(ctx)
	if _, err := cli.Compact(ctx, now.Revision); err != nil {
		t.Fatal(err)
	}

	changes := make(chan cluster.Change, 10)
	go r.FollowFrom(ctx, old, func(c cluster.Change) { changes <- c })
	next := func() cluster.Change {
		select {
		case c := <-changes:
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("no change reported")
			return cluster.Change{}
		}
	}
	c := next()
	if !c.Resync || len(c.Leases) != 1 || c.Leases[0].NodeName != "b" || c.Leases[0].Subnet != b.Subnet {
		t.Fatalf("after compaction: %+v", c)
	}
	if _, _, err := acquire(ctx, r, n, "c"); err != nil {
		t.Fatal(err)
	}
	c = next()
	if c.Resync || len(c.Leases) != 2 {
		t.Fatalf("after resync: %+v", c)
	}
}

func dualNetwork(t *testing.T) *conf.Network {
	n := conf.Network{Name: strings.ReplaceAll(t.Name(), "/", "-"), CIDR: netip.MustParsePrefix("10.7.0.0/16"),
		CIDRv6: netip.MustParsePrefix("fd00:7::/56"), Mode: "hostgw"}.WithDefaults()
	return &n
}

// On a dual-stack network each node's IPv6 subnet is the one paired with
// its IPv4 subnet, stored in the value of the IPv4 key.
func TestAcquireDualStack(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := dualNetwork(t)
	r := New(cli, "/test", n.Name)
	seen := map[netip.Prefix]bool{}
	for i := range 5 {
		_, l, err := acquire(ctx, r, n, fmt.Sprintf("node%d", i))
		if err != nil {
			t.Fatal(err)
		}
		b := l.Subnet.Addr().As4()
		if want := netip.MustParsePrefix(fmt.Sprintf("fd00:7:0:%x::/64", b[2])); l.SubnetV6 != want || seen[want] {
			t.Fatalf("node%d: %s with IPv6 %s, want %s once", i, l.Subnet, l.SubnetV6, want)
		}
		seen[l.SubnetV6] = true
		resp, err := cli.Get(ctx, r.leaseKey(l.Subnet))
		if err != nil || len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `"subnetV6":"`+l.SubnetV6.String()+`"`) {
			t.Fatalf("node%d: key %s: %+v %v", i, r.leaseKey(l.Subnet), resp, err)
		}
	}
}

// On an IPv6-only network a lease is named by its IPv6 subnet: acquired,
// reclaimed, released and exhausted like an IPv4 one.
func TestAcquireIPv6Only(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := conf.Network{Name: "v6only", CIDRv6: netip.MustParsePrefix("fd00:8::/62"), Mode: "hostgw"}.WithDefaults() // 4 subnets of /64
	r := New(cli, "/test", n.Name)
	var held []*Holder
	for i := range 4 {
		h, l, err := acquire(ctx, r, &n, fmt.Sprintf("node%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if l.Subnet.IsValid() || !n.IsNodeSubnet(l.SubnetV6) || l.Key() != l.SubnetV6 {
			t.Fatalf("node%d: %+v", i, l)
		}
		held = append(held, h)
	}
	if _, _, err := acquire(ctx, r, &n, "node4"); !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "all 4 node subnets of fd00:8::/62") {
		t.Fatalf("5th node: %v", err)
	}
	snap, err := r.List(ctx)
	if err != nil || len(snap.Leases) != 4 || len(snap.Rejected) != 0 {
		t.Fatalf("list: %+v %v", snap, err)
	}
	key := r.leaseKey(snap.Leases[0].SubnetV6)
	if !strings.HasSuffix(key, "/leases/"+strings.Replace(snap.Leases[0].SubnetV6.String(), "/", "-", 1)) {
		t.Fatalf("key %s", key)
	}
	if _, err := cli.Delete(ctx, r.leaseKey(held[0].held.SubnetV6)); err != nil {
		t.Fatal(err)
	}
	if ok, err := held[0].Reclaim(ctx); !ok || err != nil {
		t.Fatalf("reclaim: %v %v", ok, err)
	}
	rel, err := r.Release(ctx, rec("node1"), netip.Prefix{})
	if err != nil || rel.SubnetV6 != held[1].held.SubnetV6 {
		t.Fatalf("release: %+v %v", rel, err)
	}
}

// A rolling upgrade: the network config and a lease as netd wrote them
// before dual-stack (the exact JSON) are read as an IPv4 network and an
// IPv4 lease; a netd given an IPv6 CIDR adds it to the network, and a
// node taking its old key over gets the IPv6 subnet paired with it.
func TestUpgradeToDualStack(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	r := New(cli, "/test", "upgrade")
	const oldConfig = `{"name":"upgrade","cidr":"10.9.0.0/16","subnetLen":24,"mode":"vxlan","vni":1,"port":8472,"ipMasq":true,"directRouting":false}`
	const oldLease = `{"nodeName":"old","nodeIP":"192.0.2.9","mode":"vxlan","vtepMAC":"02:00:00:00:00:09","vni":1}`
	if _, err := cli.Put(ctx, r.configKey(), oldConfig); err != nil {
		t.Fatal(err)
	}
	oldKey := r.leaseKey(netip.MustParsePrefix("10.9.5.0/24"))
	if _, err := cli.Put(ctx, oldKey, oldLease); err != nil {
		t.Fatal(err)
	}
	// A netd given no IPv6 adopts the IPv4 network unchanged.
	n, err := r.EnsureConfig(ctx, conf.Network{Name: "upgrade"})
	if err != nil || n.CIDRv6.IsValid() {
		t.Fatalf("IPv4 netd: %+v %v", n, err)
	}
	given := conf.Network{Name: "upgrade", CIDR: netip.MustParsePrefix("10.9.0.0/16"), CIDRv6: netip.MustParsePrefix("fd00:9::/56")}
	n, err = r.EnsureConfig(ctx, given)
	if err != nil || n.CIDRv6 != given.CIDRv6 || n.SubnetLenV6 != 64 || n.CIDR != given.CIDR || n.VNI != 1 {
		t.Fatalf("adding IPv6: %+v %v", n, err)
	}
	stored, err := r.Config(ctx)
	if err != nil || stored.CIDRv6 != n.CIDRv6 || stored.SubnetLenV6 != n.SubnetLenV6 || len(stored.Conflicts(n)) > 0 {
		t.Fatalf("stored %+v (%v), want %+v", stored, err, n)
	}
	// Another IPv6 CIDR now conflicts; the same one is adopted.
	if _, err := r.EnsureConfig(ctx, conf.Network{Name: "upgrade", CIDRv6: netip.MustParsePrefix("fd00:10::/56")}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "cidrV6:") {
		t.Fatalf("other IPv6 CIDR: %v", err)
	}
	if again, err := r.EnsureConfig(ctx, given); err != nil || again.CIDRv6 != n.CIDRv6 {
		t.Fatalf("same IPv6 CIDR: %+v %v", again, err)
	}
	// The old lease reads as an IPv4 lease.
	snap, err := r.List(ctx)
	if err != nil || len(snap.Leases) != 1 || snap.Leases[0].Subnet != netip.MustParsePrefix("10.9.5.0/24") || snap.Leases[0].SubnetV6.IsValid() ||
		snap.Leases[0].VTEPMAC.String() != "02:00:00:00:00:09" {
		t.Fatalf("old lease: %+v %v", snap, err)
	}
	peers, rejected := cluster.Vet(n, cluster.Lease{}, snap.Leases)
	if len(peers) != 1 || len(rejected) != 0 {
		t.Fatalf("old lease vetted: %+v %+v", peers, rejected)
	}
	// The node, upgraded, takes its key over and gets its IPv6 subnet.
	want := cluster.Lease{NodeName: "old", NodeIP: netip.MustParseAddr("192.0.2.9"), NodeIPv6: netip.MustParseAddr("2001:db8::9"), Mode: "vxlan", VNI: 1}
	l, origin, err := r.Holder(time.Minute).Acquire(ctx, n, want, netip.Prefix{})
	if err != nil || origin != cluster.OriginKept || l.Subnet != netip.MustParsePrefix("10.9.5.0/24") || l.SubnetV6 != netip.MustParsePrefix("fd00:9:0:5::/64") {
		t.Fatalf("upgraded node: %+v %s %v", l, origin, err)
	}
	resp, err := cli.Get(ctx, oldKey)
	if err != nil || len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `"subnetV6":"fd00:9:0:5::/64"`) {
		t.Fatalf("key after the upgrade: %+v %v", resp, err)
	}
}

// A network on the eBPF datapath (IPv4 only) does not become dual-stack:
// a netd given an IPv6 CIDR for it is refused naming datapath, and the
// stored config stays IPv4.
func TestEBPFNetworkStaysIPv4(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	r := New(cli, "/test", "ebpf4")
	v4 := conf.Network{Name: "ebpf4", CIDR: netip.MustParsePrefix("10.11.0.0/16"), Datapath: conf.DatapathEBPF}
	if _, err := r.EnsureConfig(ctx, v4); err != nil {
		t.Fatal(err)
	}
	_, err := r.EnsureConfig(ctx, conf.Network{Name: "ebpf4", CIDR: v4.CIDR, CIDRv6: netip.MustParsePrefix("fd00:11::/56")})
	if !errors.Is(err, cnierr.ErrInvalidConfig) || !strings.Contains(err.Error(), "datapath") {
		t.Fatalf("adding IPv6 to an eBPF network: %v, want an invalid config naming datapath", err)
	}
	stored, err := r.Config(ctx)
	if err != nil || stored.CIDRv6.IsValid() || !stored.EBPF() {
		t.Fatalf("stored %+v %v, want the IPv4 eBPF network unchanged", stored, err)
	}
}

// A config deleted by hand while a node follows the network comes back
// as it was, so that a node started later with other flags is refused,
// not given a second network under the same name. A follower that never
// settled on a config writes none.
func TestConfigWrittenBack(t *testing.T) {
	cli := client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := New(cli, "/test", "back")
	r.RewindCheck = 50 * time.Millisecond
	stored, err := r.EnsureConfig(ctx, conf.Network{Name: "back", CIDR: netip.MustParsePrefix("10.51.0.0/16"), Mode: "vxlan"})
	if err != nil {
		t.Fatal(err)
	}
	bystander := New(cli, "/test", "back")
	bystander.RewindCheck = 50 * time.Millisecond
	go r.Follow(ctx, func(cluster.Change) {})
	go bystander.Follow(ctx, func(cluster.Change) {})

	key := "/test/networks/back/config"
	for round := range 2 {
		if _, err := cli.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			got, err := r.Config(ctx)
			if err == nil {
				if !reflect.DeepEqual(got, stored) {
					t.Fatalf("round %d: written back as %+v, want %+v", round, got, stored)
				}
				break
			}
			if !errors.Is(err, ErrNotFound) || time.Now().After(deadline) {
				t.Fatalf("round %d: the config did not come back: %v", round, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	_, err = New(cli, "/test", "back").EnsureConfig(ctx, conf.Network{Name: "back", CIDR: netip.MustParsePrefix("10.99.0.0/16"), Mode: "hostgw"})
	if !errors.Is(err, ErrConflict) {
		t.Errorf("a node with other flags after the config came back: %v, want a conflict", err)
	}

	// Without a follower that settled on it, a deleted config stays gone.
	cancel()
	time.Sleep(200 * time.Millisecond)
	if _, err := cli.Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	lone := New(cli, "/test", "back")
	lone.RewindCheck = 50 * time.Millisecond
	lctx, lcancel := context.WithCancel(context.Background())
	defer lcancel()
	go lone.Follow(lctx, func(cluster.Change) {})
	time.Sleep(300 * time.Millisecond)
	if _, err := lone.Config(context.Background()); !errors.Is(err, ErrNotFound) {
		t.Errorf("a follower that never settled on a config wrote one: %v", err)
	}
}
