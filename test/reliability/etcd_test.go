package reliability

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/testbed"
)

// outage is how long every etcd member stays down in TestEtcdCluster:
// $BERTH_ETCD_OUTAGE (make test-reliability: 60s), else 15s, which is
// past the 10s lease TTL the test's netd run with.
func outage(t *testing.T) time.Duration {
	if s := os.Getenv("BERTH_ETCD_OUTAGE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("BERTH_ETCD_OUTAGE: %v", err)
		}
		return d
	}
	return 15 * time.Second
}

// A 3-member etcd cluster (the real server binary) under netd on five
// nodes, with containers on nodes 1 and 2 attached by berth-vxlan:
//
//   - the leader is killed twice while nodes 4 and 5 join and leave:
//     no lease is lost (no key of a node that stayed is ever deleted),
//     no subnet is held twice, every node converges;
//   - every member is down for outage(): the containers keep pinging
//     each other, netd reports degraded health (/healthz 503, etcd_up
//     0, status), new containers get CNI error 11, and once etcd is back
//     every netd reconnects and converges by itself on the same subnets;
//   - etcd comes back from empty data directories while node 2's netd is
//     down: every node writes its lease again from its local copy (node
//     2 when it starts), without renumbering, and the others keep their
//     routes to node 2 meanwhile; the network config is written again.
func TestEtcdCluster(t *testing.T) {
	testenv.BinDir(t, "berth-vxlan")
	tb := testbed.ForTest(t, testbed.Options{Nodes: 5})
	ec, err := tb.StartEtcdCluster(context.Background(), 3)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := tb.Client(ec.Endpoints()...)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	c := newCluster(t, tb, ec.Endpoints())
	stable := []int{1, 2, 3}
	for _, i := range stable {
		c.start(i)
	}
	for _, i := range stable {
		c.converged(i, without(stable, i)...)
	}
	subnets := c.checkLeases(cli, stable)

	// Two containers that keep talking through every fault.
	ctrs := map[int]*container{}
	for _, i := range []int{1, 2} {
		ctrs[i] = addContainer(t, tb.Node(i), fmt.Sprintf("ctr%d", i))
	}
	if err := testenv.Ping(ctrs[1].ns, ctrs[2].ip.String()); err != nil {
		t.Fatal(err)
	}

	t.Run("leader killed during lease churn", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		deleted := watchDeletes(ctx, cli, subnets)
		churn := startChurn(t, c, []int{4, 5})
		start := time.Now()
		const leaderKills = 2
		for range leaderKills {
			time.Sleep(2 * time.Second)
			leader := findLeader(t, cli, ec)
			t.Logf("killing the leader %s", leader.Name)
			if err := leader.Kill(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Second) // election, with nodes joining and leaving
			if err := leader.Restart(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		joins, leaves, up := churn.stop(t)
		up = append(up, stable...)
		for _, i := range up {
			c.converged(i, without(up, i)...)
		}
		got := c.checkLeases(cli, up)
		for _, i := range stable {
			if got[i] != subnets[i] {
				t.Errorf("node%d was renumbered from %s to %s", i, subnets[i], got[i])
			}
		}
		c.checkKernels(cli, up)
		cancel()
		if lost := <-deleted; len(lost) > 0 {
			t.Errorf("keys of nodes that stayed were deleted: %v", lost)
		}
		report(t, "%d leader kills of a 3-member etcd in %s while nodes joined %d and left %d times: 0 leases lost, 0 duplicate subnets, 0 renumbered",
			leaderKills, time.Since(start).Round(time.Second), joins, leaves)
		// Nodes 4 and 5 leave for good, so the rest of the test has a
		// fixed set of nodes.
		for _, j := range []int{4, 5} {
			if c.proc(j) != nil && !c.proc(j).Exited() {
				c.leave(j)
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("all members down", func(t *testing.T) {
		down := outage(t)
		p := startPing(t, ctrs[1].ns, "", ctrs[2].ip.String(), down+2*time.Minute)
		time.Sleep(2 * time.Second)
		for _, m := range ec.Members {
			if err := m.Kill(); err != nil {
				t.Fatal(err)
			}
		}
		killed := time.Now()
		for _, i := range stable {
			eventually(t, fmt.Sprintf("node%d to report degraded health", i), 30*time.Second, func() error {
				body, err := tb.Node(i).Get(context.Background(), "http://"+metricsAddr+"/healthz")
				if err == nil || !strings.Contains(string(body), "degraded: etcd unreachable") {
					return fmt.Errorf("/healthz: %v %s", err, body)
				}
				if v, err := c.metric(i, "etcd_up"); err != nil || v != 0 {
					return fmt.Errorf("berth_netd_etcd_up %v (%v)", v, err)
				}
				if st, err := c.status(i); err != nil || st.EtcdUp || st.EtcdDownSince.IsZero() {
					return fmt.Errorf("status: %+v %v", st, err)
				}
				return nil
			})
		}
		degraded := time.Since(killed)
		time.Sleep(down - time.Since(killed) - 3*time.Second)
		// The lease files have expired: a new container is refused with
		// "try again later", and leaves nothing behind.
		refused := false
		if down > 12*time.Second {
			late := &testenv.Attachment{ID: "late", Netns: testenv.NewNS(t)}
			rt := runtime(t, tb.Node(3))
			before := testenv.Snapshot(t, tb.Node(3).NetNS.NetNS, tb.Node(3).IPAMDataDir)
			_, err := rt.Add(late)
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != types.ErrTryAgainLater {
				t.Errorf("ADD while etcd is down for %s: %v, want CNI error 11", time.Since(killed).Round(time.Second), err)
			}
			rt.Del(late)
			if d := testenv.Diff(before, testenv.Snapshot(t, tb.Node(3).NetNS.NetNS, tb.Node(3).IPAMDataDir)); d != "" {
				t.Errorf("refused ADD left:\n%s", d)
			}
			refused = true
		}
		time.Sleep(down - time.Since(killed))
		restartAll(t, ec, false)
		back := time.Now()
		for _, i := range stable {
			eventually(t, fmt.Sprintf("node%d to be healthy again", i), 60*time.Second, func() error {
				_, err := tb.Node(i).Get(context.Background(), "http://"+metricsAddr+"/healthz")
				return err
			})
			c.converged(i, without(stable, i)...)
		}
		reconverged := time.Since(back)
		got := c.checkLeases(cli, stable)
		for _, i := range stable {
			if got[i] != subnets[i] {
				t.Errorf("node%d was renumbered from %s to %s", i, subnets[i], got[i])
			}
		}
		c.checkKernels(cli, stable)
		sent, received := p.stop(t)
		if received != sent {
			t.Errorf("container ping across the outage: %d of %d lost", sent-received, sent)
		}
		report(t, "all 3 etcd members down for %s: container ping %d/%d received, degraded health reported after %s, new ADD refused with code 11: %v, all nodes healthy and converged %s after etcd was back, 0 renumbered",
			down, received, sent, degraded.Round(100*time.Millisecond), refused, reconverged.Round(100*time.Millisecond))
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("restored from an empty data dir", func(t *testing.T) {
		p := startPing(t, ctrs[1].ns, "", ctrs[2].ip.String(), 3*time.Minute)
		removals := map[int]int{}
		for _, i := range []int{1, 3} {
			removals[i] = strings.Count(c.proc(i).Log(), `change="remove route`)
		}
		time.Sleep(2 * time.Second)
		// Node 2's netd is down (SIGTERM keeps its datapath) while etcd
		// loses its data and comes back: the others must keep routing to
		// its containers until it writes its lease again.
		c.stop(2)
		for _, m := range ec.Members {
			if err := m.Kill(); err != nil {
				t.Fatal(err)
			}
		}
		restartAll(t, ec, true)
		back := time.Now()
		eventually(t, "nodes 1 and 3 to notice that etcd lost its data", 30*time.Second, func() error {
			for _, i := range []int{1, 3} {
				if v, err := c.metric(i, "etcd_rewinds_total"); err != nil || v < 1 {
					return fmt.Errorf("node%d: berth_netd_etcd_rewinds_total %v (%v)", i, v, err)
				}
			}
			return nil
		})
		time.Sleep(3 * time.Second) // node 2 stays silent a while longer
		c.start(2)
		eventually(t, "every node to write its lease again", 60*time.Second, func() error {
			snap := c.leases(cli)
			if len(snap.Leases) != len(stable) {
				return fmt.Errorf("%d leases in etcd", len(snap.Leases))
			}
			return nil
		})
		registered := time.Since(back)
		got := c.checkLeases(cli, stable)
		for _, i := range stable {
			if got[i] != subnets[i] {
				t.Errorf("node%d was renumbered from %s to %s", i, subnets[i], got[i])
			}
			c.converged(i, without(stable, i)...)
		}
		c.checkKernels(cli, stable)
		resp, err := cli.Get(context.Background(), "/berth/v1/networks/pods/config")
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("network config not written again: %v %v", resp, err)
		}
		if n, err := conf.ParseNetwork(resp.Kvs[0].Value); err != nil || n.CIDR.String() != "10.244.0.0/16" || n.Mode != "vxlan" {
			t.Errorf("network config written again: %+v %v", n, err)
		}
		// No node dropped a route to a peer that had not written its
		// lease again yet.
		for _, i := range []int{1, 3} {
			if n := strings.Count(c.proc(i).Log(), `change="remove route`); n != removals[i] {
				t.Errorf("node%d removed %d routes while etcd came back empty", i, n-removals[i])
			}
		}
		// A node joining now gets a subnet of its own.
		l4 := c.start(4)
		for _, i := range stable {
			if l4.Subnet == subnets[i] {
				t.Errorf("node4 got node%d's subnet %s", i, l4.Subnet)
			}
		}
		all := append([]int{4}, stable...)
		for _, i := range all {
			c.converged(i, without(all, i)...)
		}
		c.checkLeases(cli, all)
		sent, received := p.stop(t)
		if received != sent {
			t.Errorf("container ping across the data loss: %d of %d lost", sent-received, sent)
		}
		report(t, "etcd (3 members) restarted from empty data dirs, node2's netd down meanwhile: all %d leases written again (the last %s after, when node2's netd was back), 0 renumbered, 0 peer routes dropped, network config restored, container ping node1->node2 %d/%d received, a new node got a fresh subnet",
			len(stable), registered.Round(100*time.Millisecond), received, sent)
	})

	for _, i := range []int{1, 2} {
		if err := ctrs[i].rt.Del(ctrs[i].att); err != nil {
			t.Errorf("DEL on node%d: %v", i, err)
		}
	}
}

// container is one container attached by the node's conflist.
type container struct {
	rt  *testenv.Runtime
	att *testenv.Attachment
	ns  ns.NetNS
	ip  netip.Addr
	ip6 netip.Addr // on a network with IPv6
}

// runtime is a CNI runtime for node n's conflist, as netd wrote it.
func runtime(t *testing.T, n *testbed.Node) *testenv.Runtime {
	t.Helper()
	conflist, err := os.ReadFile(conf.ConflistPath(n.CNIConfDir, "pods"))
	if err != nil {
		t.Fatal(err)
	}
	return testenv.NewRuntime(t, n.NetNS.NetNS, string(conflist))
}

func addContainer(t *testing.T, n *testbed.Node, id string) *container {
	t.Helper()
	c := &container{rt: runtime(t, n)}
	c.ns = testenv.NewNS(t)
	c.att = &testenv.Attachment{ID: id, Netns: c.ns}
	res, err := c.rt.Add(c.att)
	if err != nil {
		t.Fatalf("ADD %s on %s: %v", id, n.Host, err)
	}
	c.ip, _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	for _, ip := range res.IPs {
		if a, _ := netip.AddrFromSlice(ip.Address.IP); ip.Address.IP.To4() == nil && a.Is6() {
			c.ip6 = a
		}
	}
	return c
}

// findLeader returns the member that is the cluster's leader.
func findLeader(t *testing.T, cli *clientv3.Client, ec *testbed.EtcdCluster) *testbed.Etcd {
	t.Helper()
	var leader *testbed.Etcd
	eventually(t, "an etcd leader", 30*time.Second, func() error {
		for _, m := range ec.Members {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			st, err := cli.Status(ctx, m.ClientURL)
			cancel()
			if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
				leader = m
				return nil
			}
		}
		return errors.New("none")
	})
	return leader
}

// restartAll starts every member again (from empty data dirs when
// wipe), together: a member is only healthy once a quorum is up.
func restartAll(t *testing.T, ec *testbed.EtcdCluster, wipe bool) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(ec.Members))
	for i, m := range ec.Members {
		if wipe {
			if err := os.RemoveAll(m.DataDir); err != nil {
				t.Fatal(err)
			}
		}
		wg.Go(func() { errs[i] = m.Restart(context.Background()) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// watchDeletes reports, when ctx ends, every deletion of one of the
// keys of subnets it saw.
func watchDeletes(ctx context.Context, cli *clientv3.Client, subnets map[int]netip.Prefix) <-chan []string {
	keys := map[string]bool{}
	for _, s := range subnets {
		keys["/berth/v1/networks/pods/leases/"+strings.Replace(s.String(), "/", "-", 1)] = true
	}
	out := make(chan []string, 1)
	wch := cli.Watch(ctx, "/berth/v1/networks/pods/leases/", clientv3.WithPrefix())
	go func() {
		var lost []string
		for resp := range wch {
			for _, ev := range resp.Events {
				if ev.Type == mvccpb.DELETE && keys[string(ev.Kv.Key)] {
					lost = append(lost, fmt.Sprintf("%s at revision %d", ev.Kv.Key, ev.Kv.ModRevision))
				}
			}
		}
		out <- lost
	}()
	return out
}

// churner makes nodes join and leave in the background.
type churner struct {
	halt          chan struct{}
	wg            sync.WaitGroup
	mu            sync.Mutex
	errs          []error
	up            map[int]bool
	joins, leaves int
}

// startChurn makes each of nodes join (netd starts) and leave (netd
// stops, netd leave) over and over until stop.
func startChurn(t *testing.T, c *cluster, nodes []int) *churner {
	ch := &churner{halt: make(chan struct{}), up: map[int]bool{}}
	for _, j := range nodes {
		ch.wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(j)))
			for {
				select {
				case <-ch.halt:
					return
				case <-time.After(time.Duration(200+r.IntN(800)) * time.Millisecond):
				}
				ch.mu.Lock()
				up := ch.up[j]
				ch.mu.Unlock()
				var err error
				if up {
					err = c.leaveNode(j)
				} else {
					err = c.joinNode(j)
				}
				ch.mu.Lock()
				if err != nil {
					ch.errs = append(ch.errs, err)
				} else if up {
					ch.up[j] = false
					ch.leaves++
				} else {
					ch.up[j] = true
					ch.joins++
				}
				ch.mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	return ch
}

// stop ends the churn and returns how often nodes joined and left and
// which nodes are up.
func (ch *churner) stop(t *testing.T) (joins, leaves int, up []int) {
	t.Helper()
	close(ch.halt)
	ch.wg.Wait()
	for _, err := range ch.errs {
		t.Error(err)
	}
	for j, u := range ch.up {
		if u {
			up = append(up, j)
		}
	}
	return ch.joins, ch.leaves, up
}

// joinNode starts netd on node j and waits for it to finish starting;
// errors instead of failing the test, for use from goroutines.
func (c *cluster) joinNode(j int) error {
	p, err := c.spawn(j)
	if err != nil {
		return err
	}
	if err := waitLease(c.tb.Node(j), c.network, p); err != nil {
		return fmt.Errorf("node%d joining: %w", j, err)
	}
	return nil
}

// leaveNode stops node j's netd and runs netd leave.
func (c *cluster) leaveNode(j int) error {
	if p := c.proc(j); p != nil && !p.Exited() {
		if err := p.Stop(10 * time.Second); err != nil {
			return fmt.Errorf("node%d: netd on SIGTERM: %w", j, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := c.tb.Node(j).Run(ctx, c.bin, append([]string{"leave"}, c.flags(j)...)...); err != nil {
		return fmt.Errorf("node%d leave: %w\n%s", j, err, out)
	}
	return nil
}
