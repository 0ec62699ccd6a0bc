package reliability

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/test/testbed"
)

// netd is killed with SIGKILL 20 times at random moments of its life
// (while starting, leasing, reconciling, or idle) on the three core
// nodes, while two more nodes keep joining and leaving (their netd is
// sometimes killed while joining too). Afterwards every node holds a
// distinct subnet, the core nodes the one they started with, each
// node's kernel has exactly the routes, FDB entries and neighbours the
// leases in etcd call for (none stale, none missing), and every node
// reaches every other.
func TestNetdKilledAtRandom(t *testing.T) {
	const kills = 20
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	tb := testbed.ForTest(t, testbed.Options{Nodes: 5})
	etcd, err := tb.StartEtcd(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cli, err := etcd.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	c := newCluster(t, tb, []string{etcd.ClientURL})
	core := []int{1, 2, 3}
	first := map[int]netip.Prefix{}
	for _, i := range core {
		first[i] = c.start(i).Subnet
	}

	// Nodes 4 and 5 join and leave until the kills are done.
	stop := make(chan struct{})
	var churn sync.WaitGroup
	var mu sync.Mutex
	var churnErrs []error
	joined := map[int]bool{}
	joins, leaves, joinKills := 0, 0, 0
	for _, j := range []int{4, 5} {
		churn.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(j)))
			fail := func(err error) {
				mu.Lock()
				churnErrs = append(churnErrs, err)
				mu.Unlock()
			}
			for {
				select {
				case <-stop:
					mu.Lock()
					up := joined[j]
					mu.Unlock()
					if !up && c.proc(j) != nil {
						// Its last join was killed: whatever it made
						// goes with netd leave.
						if err := c.leaveNode(j); err != nil {
							fail(err)
						}
					}
					return
				case <-time.After(time.Duration(r.IntN(800)) * time.Millisecond):
				}
				mu.Lock()
				up := joined[j]
				mu.Unlock()
				switch {
				case !up && r.IntN(3) == 0:
					// Killed while joining; it joins again next time.
					p, err := c.spawn(j)
					if err != nil {
						fail(err)
						return
					}
					time.Sleep(time.Duration(r.IntN(500)) * time.Millisecond)
					p.Kill()
					mu.Lock()
					joinKills++
					mu.Unlock()
				case !up:
					if err := c.joinNode(j); err != nil {
						fail(err)
						return
					}
					mu.Lock()
					joined[j] = true
					joins++
					mu.Unlock()
				default:
					if err := c.leaveNode(j); err != nil {
						fail(err)
						return
					}
					mu.Lock()
					joined[j] = false
					leaves++
					mu.Unlock()
				}
			}
		})
	}

	start := time.Now()
	killedRunning, last := 0, 0
	for k := 0; k < kills; k++ {
		// Half the kills come right after the previous start (netd
		// starts in tens of milliseconds: connecting, leasing, first
		// reconcile), half well after it (idle, or reconciling after a
		// join or leave).
		v := core[rng.IntN(len(core))]
		if k > 0 && rng.IntN(2) == 0 {
			v = last
			time.Sleep(time.Duration(rng.IntN(25)) * time.Millisecond)
		} else {
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
		}
		last = v
		if running(c.proc(v)) {
			killedRunning++
		}
		c.kill(v)
		c.launch(v)
	}
	close(stop)
	churn.Wait()
	for _, err := range churnErrs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	up := append([]int{}, core...)
	for _, j := range []int{4, 5} {
		if joined[j] {
			up = append(up, j)
		} else if p := c.proc(j); p != nil && !p.Exited() {
			t.Fatalf("node%d's netd still runs after leaving", j)
		}
	}
	faults := time.Since(start)

	// Afterwards: nothing lost, nothing duplicated, nothing stale.
	for _, i := range up {
		others := without(up, i)
		c.converged(i, others...)
	}
	subnets := c.checkLeases(cli, up)
	for _, i := range core {
		if subnets[i] != first[i] {
			t.Errorf("node%d was renumbered from %s to %s", i, first[i], subnets[i])
		}
	}
	c.checkKernels(cli, up)
	for _, j := range []int{4, 5} {
		if !joined[j] {
			checkLeft(t, tb.Node(j))
		}
	}
	gws := map[int]netip.Addr{}
	for _, i := range up {
		gws[i] = gateway(t, tb.Node(i), subnets[i])
	}
	fullMesh(t, tb, gws)
	report(t, "%d SIGKILLs of netd on core nodes (%d while starting, %d while running; +%d while joining) in %s, %d joins and %d leaves meanwhile; %d nodes up after: 0 duplicate subnets, 0 renumbered, 0 stale or missing routes/FDB/neighbours, %d/%d node pairs reachable",
		kills, kills-killedRunning, killedRunning, joinKills, faults.Round(time.Second), joins, leaves, len(up), len(up)*(len(up)-1), len(up)*(len(up)-1))
}

// waitLease waits for netd p on node n to write a valid lease file.
func waitLease(n *testbed.Node, network string, p *testbed.Process) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if p.Exited() {
			return fmt.Errorf("netd exited: %v\n%s", p.Wait(context.Background()), tail(p.Log(), 20))
		}
		// The lease file of a killed earlier run may still be valid:
		// wait for this run to finish starting too.
		_, err := lease.Read(lease.Path(n.LeaseDir, network), time.Now())
		if err == nil && running(p) {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkLeft checks that a node that left has no VTEP and no netd route.
func checkLeft(t *testing.T, n *testbed.Node) {
	t.Helper()
	err := n.Do(func() error {
		if _, err := netlink.LinkByName(vtepName); err == nil {
			return fmt.Errorf("VTEP %s still there", vtepName)
		}
		rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: 73}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return err
		}
		if len(rs) > 0 {
			return fmt.Errorf("routes left: %v", rs)
		}
		return nil
	})
	if err != nil {
		t.Errorf("%s after leaving: %v", n.Host, err)
	}
}
