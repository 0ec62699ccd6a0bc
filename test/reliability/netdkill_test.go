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

	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/testbed"
)

// netd is killed with SIGKILL 20 times at random moments of its life
// (while starting, leasing, reconciling, or idle) on the three core
// nodes, while two more nodes keep joining and leaving (their netd is
// sometimes killed while joining too), and containers on node1 and node2
// keep connecting to each other: no connection fails. Afterwards every
// node holds a distinct subnet, the core nodes the one they started
// with, each node's kernel has exactly the routes, FDB entries and
// neighbours the leases in etcd call for (none stale, none missing), and
// every node reaches every other.
//
// On the eBPF datapath, besides: each killed netd leaves from_uplink
// attached (the containers' traffic does not wait for the restart), the
// connections went through the programs (their counters), after the
// restarts each node up has the pinned from_uplink exactly once on its
// uplink and VTEP, and the nodes that left keep no program and no pins.
func TestNetdKilledAtRandom(t *testing.T) {
	for _, dp := range datapaths {
		t.Run(dp, func(t *testing.T) { netdKilledAtRandom(t, dp == "ebpf") })
	}
}

func netdKilledAtRandom(t *testing.T, ebpf bool) {
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
	c.ebpf = ebpf
	core := []int{1, 2, 3}
	first := map[int]netip.Prefix{}
	for _, i := range core {
		first[i] = c.start(i).Subnet
	}
	for _, i := range core {
		c.converged(i, without(core, i)...)
	}
	ctr1, ctr2 := addContainer(t, tb.Node(1), "ctr1"), addContainer(t, tb.Node(2), "ctr2")
	var statsBefore [3]fastpath.Stats
	if ebpf {
		for _, i := range []int{1, 2} {
			statsBefore[i] = fastStats(t, tb.Node(i), c.network)
		}
	}
	talk := startTraffic(t, ctr1, ctr2)

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
		if ebpf {
			// Dead netd, datapath intact: the next start must not be
			// what brings the traffic back.
			if err := uplinkPrograms(tb.Node(v), c.network); err != nil {
				t.Errorf("kill %d, netd of node%d just killed: %v", k+1, v, err)
			}
		}
		c.launch(v)
	}
	close(stop)
	churn.Wait()
	for _, err := range churnErrs {
		t.Error(err)
	}
	conns := talk.stop(t)
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
	var fast string
	if ebpf {
		fast = checkKillFastpath(t, tb, c.network, up, joined, statsBefore, conns)
	}
	gws := map[int]netip.Addr{}
	for _, i := range up {
		gws[i] = gateway(t, tb.Node(i), subnets[i])
	}
	fullMesh(t, tb, gws)
	report(t, "%d SIGKILLs of netd on core nodes (%d while starting, %d while running; +%d while joining) in %s, %d joins and %d leaves meanwhile; %d nodes up after: 0 duplicate subnets, 0 renumbered, 0 stale or missing routes/FDB/neighbours, %d/%d node pairs reachable, %d/%d connections between containers on node1 and node2 answered across the kills%s",
		kills, kills-killedRunning, killedRunning, joinKills, faults.Round(time.Second), joins, leaves, len(up), len(up)*(len(up)-1), len(up)*(len(up)-1), conns, conns, fast)
}

// checkKillFastpath checks the eBPF datapath after the kills: node1's and
// node2's programs carried the conns connections between their
// containers both ways, every node up has its from_uplink once, the
// nodes that left (joined false) have no program and no pins; it
// describes that for the figure.
func checkKillFastpath(t *testing.T, tb *testbed.Testbed, network string, up []int, joined map[int]bool, before [3]fastpath.Stats, conns int) string {
	t.Helper()
	fig := "; fast path:"
	for _, i := range []int{1, 2} {
		// As in the churn: at least SYN and ACK from each client, SYN-ACK
		// and the answer from each server, each counted by the node that
		// sends it and the one it arrives at.
		s := fastStats(t, tb.Node(i), network)
		out, in := sent(s)-sent(before[i]), s.Arrived-before[i].Arrived
		if out < 2*uint64(conns) || in < 2*uint64(conns) {
			t.Errorf("node%d: %d connections with the other node's container, but its programs sent %d packets to other nodes and delivered %d from them (counters %+v, before %+v): want at least 2 each way per connection",
				i, conns, out, in, s, before[i])
		}
		fig += fmt.Sprintf(" node%d's programs sent %d packets and delivered %d,", i, out, in)
	}
	for _, i := range up {
		if err := uplinkPrograms(tb.Node(i), network); err != nil {
			t.Errorf("after the restarts: %v", err)
		}
	}
	for _, j := range []int{4, 5} {
		if !joined[j] {
			checkLeftEBPF(t, tb.Node(j), network)
		}
	}
	return fig + " from_uplink attached after every kill and exactly once on every uplink and VTEP after the restarts"
}

// traffic is containers on two nodes connecting to each other over TCP,
// in turns, until stop.
type traffic struct {
	done     chan struct{}
	wg       sync.WaitGroup
	ok       int
	failures []string
}

// trafficPort is where the containers of startTraffic answer.
const trafficPort = 7100

// startTraffic has a and b connect to each other, one connection each
// way every 100ms: a gap in the datapath longer than a connection's
// retries (3s) fails a connection.
func startTraffic(t *testing.T, a, b *container) *traffic {
	t.Helper()
	testenv.Serve(t, a.ns, fmt.Sprintf("0.0.0.0:%d", trafficPort))
	testenv.Serve(t, b.ns, fmt.Sprintf("0.0.0.0:%d", trafficPort))
	tr := &traffic{done: make(chan struct{})}
	start := time.Now()
	tr.wg.Go(func() {
		for {
			for _, p := range [][2]*container{{a, b}, {b, a}} {
				from, to := p[0], p[1]
				seen, err := testenv.Dial(from.ns, fmt.Sprintf("%s:%d", to.ip, trafficPort))
				if err == nil && seen == from.ip.String() {
					tr.ok++
					continue
				}
				tr.failures = append(tr.failures, fmt.Sprintf("%s after the start: %s -> %s: server saw %q (%v)",
					time.Since(start).Round(time.Millisecond), from.ip, to.ip, seen, err))
			}
			select {
			case <-tr.done:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	t.Cleanup(tr.halt)
	return tr
}

func (tr *traffic) halt() {
	select {
	case <-tr.done:
	default:
		close(tr.done)
	}
	tr.wg.Wait()
}

// stop ends the traffic, fails t for each connection that failed, and
// returns how many succeeded.
func (tr *traffic) stop(t *testing.T) int {
	t.Helper()
	tr.halt()
	for _, f := range tr.failures {
		t.Errorf("connection between the containers failed %s", f)
	}
	if tr.ok == 0 {
		t.Errorf("no connection between the containers")
	}
	return tr.ok
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
