package registry

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/conf"
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

func claim(node string) Claim {
	return Claim{Record: Record{NodeName: node, NodeIP: netip.MustParseAddr("192.0.2.1"), Mode: "vxlan", VNI: 1}, TTL: time.Minute}
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
	leases := make([]*Lease, 16)
	errs := make([]error, 16)
	var wg sync.WaitGroup
	for i := range leases {
		wg.Go(func() { leases[i], errs[i] = r.Acquire(ctx, n, claim(fmt.Sprintf("node%d", i))) })
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
	_, err := r.Acquire(ctx, n, claim("node16"))
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "all 16 subnets /28 of 10.1.0.0/24 are leased") {
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
	c := claim("a")
	first, err := r.Acquire(ctx, n, c)
	if err != nil {
		t.Fatal(err)
	}
	c.Record.VTEPMAC = "02:00:00:00:00:01" // e.g. the VTEP was recreated
	again, err := r.Acquire(ctx, n, c)
	if err != nil {
		t.Fatal(err)
	}
	if again.Subnet != first.Subnet || again.ID == first.ID || first.Origin != OriginNew || again.Origin != OriginKept {
		t.Fatalf("restart: got %s (lease %x), had %s (lease %x)", again.Subnet, again.ID, first.Subnet, first.ID)
	}
	if ttl, err := cli.TimeToLive(ctx, first.ID); err != nil || ttl.TTL != -1 {
		t.Fatalf("old etcd lease still alive: %+v %v", ttl, err)
	}
	snap, _ := r.List(ctx)
	if len(snap.Leases) != 1 || snap.Leases[0].VTEPMAC != "02:00:00:00:00:01" {
		t.Fatalf("record not updated: %+v", snap.Leases)
	}

	// The key is gone (lease expired, or revoked here to save time); the
	// local copy brings the same subnet back.
	if _, err := cli.Revoke(ctx, again.ID); err != nil {
		t.Fatal(err)
	}
	c.Previous = first.Subnet
	back, err := r.Acquire(ctx, n, c)
	if err != nil || back.Subnet != first.Subnet || back.Origin != OriginPrevious {
		t.Fatalf("from local copy: got %v, want %s (%v)", back, first.Subnet, err)
	}
	// The local copy names a subnet someone else holds now: another one.
	other, err := r.Acquire(ctx, n, Claim{Record: Record{NodeName: "b", Mode: "vxlan"}, TTL: time.Minute, Previous: first.Subnet})
	if err != nil || other.Subnet == first.Subnet {
		t.Fatalf("b took a's subnet: %v %v", other, err)
	}
}

// A lease nobody keeps alive expires, and its subnet goes to the next
// node that needs one.
func TestExpiredLeaseReclaimed(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := network(t, "10.3.0.0/23", 24) // 2 subnets
	r := New(cli, "/test", n.Name)
	a, err := r.Acquire(ctx, n, claim("a"))
	if err != nil {
		t.Fatal(err)
	}
	keep, err := r.KeepAlive(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range keep {
		}
	}()
	short := claim("b")
	short.TTL = 2 * time.Second // etcd's minimum with default timings
	b, err := r.Acquire(ctx, n, short)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Acquire(ctx, n, claim("c")); !errors.Is(err, ErrExhausted) {
		t.Fatalf("c before b expired: %v", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := r.Acquire(ctx, n, claim("c"))
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
}

func TestRelease(t *testing.T) {
	cli := client(t)
	ctx := context.Background()
	n := network(t, "10.4.0.0/16", 24)
	r := New(cli, "/test", n.Name)
	a, err := r.Acquire(ctx, n, claim("a"))
	if err != nil {
		t.Fatal(err)
	}
	rel, err := r.Release(ctx, claim("a"))
	if err != nil || rel.Subnet != a.Subnet {
		t.Fatalf("release: %v %v", rel, err)
	}
	if snap, _ := r.List(ctx); len(snap.Leases) != 0 {
		t.Fatalf("leases left: %+v", snap.Leases)
	}
	if _, err := r.Release(ctx, claim("a")); !errors.Is(err, ErrNotFound) {
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
	if _, err := r.Acquire(ctx, n, claim("a")); err != nil {
		t.Fatal(err)
	}
	old, err := r.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Changes the follower has not seen, then the history is compacted.
	if _, err := r.Release(ctx, claim("a")); err != nil {
		t.Fatal(err)
	}
	b, err := r.Acquire(ctx, n, claim("b"))
	if err != nil {
		t.Fatal(err)
	}
	now, _ := r.List(ctx)
	if _, err := cli.Compact(ctx, now.Revision); err != nil {
		t.Fatal(err)
	}

	changes := make(chan Change, 10)
	go r.Follow(ctx, old, func(c Change) { changes <- c })
	next := func() Change {
		select {
		case c := <-changes:
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("no change reported")
			return Change{}
		}
	}
	c := next()
	if !c.Resync || len(c.Leases) != 1 || c.Leases[0].NodeName != "b" || c.Leases[0].Subnet != b.Subnet {
		t.Fatalf("after compaction: %+v", c)
	}
	if _, err := r.Acquire(ctx, n, claim("c")); err != nil {
		t.Fatal(err)
	}
	c = next()
	if c.Resync || len(c.Leases) != 2 {
		t.Fatalf("after resync: %+v", c)
	}
}
