package reliability

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/testbed"
)

// 100 containers come and go across three vxlan nodes, three workers per
// node, each keeping up to three alive: every new container pings a live
// one on another node and connects to it over TCP. Besides, one ADD in
// ten is given a netns that
// is already gone. Every operation succeeds or returns a CNI error; no address is
// ever held by two live containers (cluster-wide); when they are all
// deleted, every node has the links, iptables rules and IPAM/state files
// it had before.
//
// On the eBPF datapath, besides: the connections went through the
// programs (the pings take the kernel's path there, see the README: only
// TCP and UDP can be checked against conntrack), counted on both nodes of
// each, and the endpoints map and the pins end as they began, holding
// only the containers that stay; once those are deleted, the map is
// empty.
func TestChurnAcrossNodes(t *testing.T) {
	testenv.BinDir(t, "berth-vxlan")
	for _, dp := range datapaths {
		t.Run(dp, func(t *testing.T) { churnAcrossNodes(t, dp == "ebpf") })
	}
}

// churnPort is where every churned container answers connections.
const churnPort = 7000

func churnAcrossNodes(t *testing.T, ebpf bool) {
	const total, workersPerNode, keep = 100, 3, 3
	tb := testbed.ForTest(t, testbed.Options{Nodes: 3})
	etcd, err := tb.StartEtcd(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, tb, []string{etcd.ClientURL})
	c.ebpf = ebpf
	all := nodes(3)
	for _, i := range all {
		c.start(i)
	}
	for _, i := range all {
		c.converged(i, without(all, i)...)
	}
	// One container per node stays throughout: the bridge and the
	// node's rules exist before the snapshot, as on a busy node.
	before := map[int]string{}
	rts := map[int]*testenv.Runtime{}
	warm := map[int]*container{}
	statsBefore := map[int]fastpath.Stats{}
	for _, i := range all {
		n := tb.Node(i)
		warm[i] = addContainer(t, n, fmt.Sprintf("warm%d", i))
		rts[i] = runtime(t, n)
		dirs := []string{n.IPAMDataDir, n.StateDir}
		if ebpf {
			// The pins: a DEL must neither leave a pin behind nor
			// remove one netd still uses.
			dirs = append(dirs, n.BPFFSDir())
			statsBefore[i] = fastStats(t, n, c.network)
		}
		before[i] = testenv.Snapshot(t, n.NetNS.NetNS, dirs...)
	}

	type live struct {
		node   int
		id     string
		ctr    *testenv.Attachment
		ip     string
		server io.Closer
	}
	var (
		mu                   sync.Mutex
		byIP                 = map[string]string{} // live address -> container
		alive                []live
		adds, dels, cniErrs  int
		pings, gone          int
		next                 int
		failures             []string
		maxAlive, crossPings int
		crossDials           int
		dialsOf              = map[int]int{} // node -> connections it took part in
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, i := range all {
		for w := range workersPerNode {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(i), uint64(w)))
				var mine []live
				del := func(l live) {
					if err := rts[l.node].Del(l.ctr); err != nil {
						fail("DEL %s: %v", l.id, err)
					}
					mu.Lock()
					dels++
					if byIP[l.ip] == l.id {
						delete(byIP, l.ip)
					}
					for k, a := range alive {
						if a.id == l.id {
							alive = append(alive[:k], alive[k+1:]...)
							break
						}
					}
					mu.Unlock()
					if l.server != nil {
						l.server.Close()
					}
					l.ctr.Netns.Close()
				}
				for {
					mu.Lock()
					if next >= total {
						mu.Unlock()
						break
					}
					next++
					id := fmt.Sprintf("n%d-w%d-%d", i, w, next)
					mu.Unlock()
					if r.IntN(10) == 0 {
						// Besides the 100: the runtime lost a container
						// before ADD.
						att := &testenv.Attachment{ID: id + "-gone", Netns: testenv.NewNS(t)}
						att.Netns.Close()
						if err := vanish(att.Netns.Path()); err != nil {
							fail("%v", err)
						}
						_, err := rts[i].Add(att)
						var cniErr *types.Error
						if !errors.As(err, &cniErr) {
							fail("ADD %s into a vanished netns: %v, want a CNI error", att.ID, err)
						}
						if err := rts[i].Del(att); err != nil {
							fail("DEL %s after a failed ADD: %v", att.ID, err)
						}
						mu.Lock()
						adds++
						dels++
						gone++
						if cniErr != nil {
							cniErrs++
						}
						mu.Unlock()
					}
					att := &testenv.Attachment{ID: id, Netns: testenv.NewNS(t)}
					res, err := rts[i].Add(att)
					mu.Lock()
					adds++
					mu.Unlock()
					var cniErr *types.Error
					switch {
					case err != nil:
						if !errors.As(err, &cniErr) {
							fail("ADD %s: not a CNI error: %v", id, err)
						} else {
							mu.Lock()
							cniErrs++
							mu.Unlock()
						}
						continue
					}
					ip := res.IPs[0].Address.IP.String()
					// Listening before it is listed as alive: whoever
					// picks it as a peer finds the server up.
					server, err := testenv.Listen(att.Netns, fmt.Sprintf("0.0.0.0:%d", churnPort))
					if err != nil {
						fail("%s: serving on port %d: %v", id, churnPort, err)
					}
					l := live{node: i, id: id, ctr: att, ip: ip, server: server}
					mu.Lock()
					if other, dup := byIP[ip]; dup {
						failures = append(failures, fmt.Sprintf("%s given to %s while %s holds it", ip, id, other))
					}
					byIP[ip] = id
					var peer *live
					for k := range alive {
						if alive[k].node != i && (peer == nil || r.IntN(2) == 0) {
							peer = &alive[k]
						}
					}
					var peerIP, peerID string
					var peerNode int
					if peer != nil {
						peerIP, peerID, peerNode = peer.ip, peer.id, peer.node
					}
					alive = append(alive, l)
					maxAlive = max(maxAlive, len(alive))
					mu.Unlock()
					if peerIP != "" {
						// The peer may be going away right now: a
						// failure counts only while it is still there.
						stillThere := func() bool {
							mu.Lock()
							defer mu.Unlock()
							return byIP[peerIP] == peerID
						}
						if err := testenv.Ping(att.Netns, peerIP); err != nil {
							if stillThere() {
								fail("%s -> %s (%s): %v", id, peerID, peerIP, err)
							}
						} else {
							mu.Lock()
							crossPings++
							mu.Unlock()
						}
						// Inside the cluster nothing translates: the
						// server sees the client's own address.
						seen, err := testenv.Dial(att.Netns, fmt.Sprintf("%s:%d", peerIP, churnPort))
						switch {
						case err != nil || seen != ip:
							if stillThere() {
								fail("%s -> %s (%s:%d) over TCP: server saw %q (%v)", id, peerID, peerIP, churnPort, seen, err)
							}
						default:
							mu.Lock()
							crossDials++
							dialsOf[i]++
							dialsOf[peerNode]++
							mu.Unlock()
						}
						mu.Lock()
						pings++
						mu.Unlock()
					}
					mine = append(mine, l)
					if len(mine) > keep {
						del(mine[0])
						mine = mine[1:]
					}
				}
				for _, l := range mine {
					del(l)
				}
			})
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, f := range failures {
		t.Error(f)
	}
	if len(byIP) != 0 {
		t.Errorf("addresses still held after every DEL: %v", byIP)
	}
	for _, i := range all {
		n := tb.Node(i)
		dirs := []string{n.IPAMDataDir, n.StateDir}
		if ebpf {
			dirs = append(dirs, n.BPFFSDir())
		}
		if d := testenv.Diff(before[i], testenv.Snapshot(t, n.NetNS.NetNS, dirs...)); d != "" {
			t.Errorf("node%d leaked:\n%s", i, d)
		}
		c.converged(i, without(all, i)...)
	}
	datapath := "iptables"
	var fast string
	if ebpf {
		datapath = "eBPF"
		fast = checkChurnFastpath(t, tb, c.network, warm, statsBefore, dialsOf)
	}
	report(t, "%d containers added and deleted across 3 vxlan nodes (%s datapath) by 9 workers in %s, up to %d alive at once, plus %d ADDs into a vanished netns (%d ADDs, %d DELs in all): %d CNI errors (the vanished netns), 0 other errors, 0 duplicate addresses, 0 leaked links/rules/IPAM files, %d/%d cross-node pings answered, %d/%d TCP connections across nodes answered%s",
		adds-gone, datapath, elapsed.Round(time.Second), maxAlive, gone, adds, dels, cniErrs, crossPings, pings, crossDials, pings, fast)
}

// checkChurnFastpath checks the eBPF datapath after the churn: each node's
// counters show every connection it took part in (dialsOf) in both
// directions, the endpoints map holds only the warm container (then,
// once that is deleted, nothing), and it describes that for the figure.
func checkChurnFastpath(t *testing.T, tb *testbed.Testbed, network string, warm map[int]*container, before map[int]fastpath.Stats, dialsOf map[int]int) string {
	t.Helper()
	var fig []string
	for i, w := range warm {
		n := tb.Node(i)
		// Each connection's client sends at least SYN and ACK, its
		// server at least SYN-ACK and the answer, each packet counted
		// once by the node that sends it (FIB or Neigh) and once by the
		// one it arrives at (Arrived). Pings are not counted: they take
		// the kernel's path.
		s := fastStats(t, n, network)
		out, in := sent(s)-sent(before[i]), s.Arrived-before[i].Arrived
		if dialsOf[i] == 0 || out < 2*uint64(dialsOf[i]) || in < 2*uint64(dialsOf[i]) {
			t.Errorf("node%d took part in %d connections across nodes, but its programs sent %d packets to other nodes and delivered %d from them (counters %+v, before %+v): want at least 2 each way per connection",
				i, dialsOf[i], out, in, s, before[i])
		}
		fig = append(fig, fmt.Sprintf("node%d %d connections, %d packets sent and %d arrived by the programs", i, dialsOf[i], out, in))
		if got, want := endpointIPs(t, n, network), []string{w.ip.String()}; !slices.Equal(got, want) {
			t.Errorf("node%d's eBPF endpoints after the churn: %v, want only the warm container's %v", i, got, want)
		}
		if err := w.rt.Del(w.att); err != nil {
			t.Errorf("DEL warm%d: %v", i, err)
		}
		if got := endpointIPs(t, n, network); len(got) != 0 {
			t.Errorf("node%d's eBPF endpoints once every container is deleted: %v, want none", i, got)
		}
	}
	slices.Sort(fig)
	return "; fast path: " + strings.Join(fig, ", ") + "; endpoints maps empty after the last DEL"
}

// vanish removes a namespace's bind mount and file, as a runtime that
// lost the container would have, and checks that it is gone: an ADD that
// then succeeds is the plugin's fault, not the setup's. (testutils'
// UnmountNS, used before, ignored errors here, and once an ADD found the
// namespace still there.) The unmount is lazy, so that nothing holding the
// mount can keep the path alive.
func vanish(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmounting %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("namespace %s still there after unmount and remove (%v)", path, err)
	}
	return nil
}
