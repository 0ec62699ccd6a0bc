package reliability

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/testbed"
)

// 100 containers come and go across three vxlan nodes, three workers per
// node, each keeping up to three alive: every new container pings a live
// one on another node. Besides, one ADD in ten is given a netns that
// is already gone. Every operation succeeds or returns a CNI error; no address is
// ever held by two live containers (cluster-wide); when they are all
// deleted, every node has the links, iptables rules and IPAM/state files
// it had before.
func TestChurnAcrossNodes(t *testing.T) {
	testenv.BinDir(t, "berth-vxlan")
	const total, workersPerNode, keep = 100, 3, 3
	tb := testbed.ForTest(t, testbed.Options{Nodes: 3})
	etcd, err := tb.StartEtcd(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, tb, []string{etcd.ClientURL})
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
	for _, i := range all {
		n := tb.Node(i)
		addContainer(t, n, fmt.Sprintf("warm%d", i))
		rts[i] = runtime(t, n)
		before[i] = testenv.Snapshot(t, n.NetNS.NetNS, n.IPAMDataDir, n.StateDir)
	}

	type live struct {
		node int
		id   string
		ctr  *testenv.Attachment
		ip   string
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
					l := live{node: i, id: id, ctr: att, ip: ip}
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
					if peer != nil {
						peerIP, peerID = peer.ip, peer.id
					}
					alive = append(alive, l)
					maxAlive = max(maxAlive, len(alive))
					mu.Unlock()
					if peerIP != "" {
						if err := testenv.Ping(att.Netns, peerIP); err != nil {
							// The peer may be going away right now.
							mu.Lock()
							stillThere := byIP[peerIP] == peerID
							mu.Unlock()
							if stillThere {
								fail("%s -> %s (%s): %v", id, peerID, peerIP, err)
							}
						} else {
							mu.Lock()
							crossPings++
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
		if d := testenv.Diff(before[i], testenv.Snapshot(t, n.NetNS.NetNS, n.IPAMDataDir, n.StateDir)); d != "" {
			t.Errorf("node%d leaked:\n%s", i, d)
		}
		c.converged(i, without(all, i)...)
	}
	report(t, "%d containers added and deleted across 3 vxlan nodes by 9 workers in %s, up to %d alive at once, plus %d ADDs into a vanished netns (%d ADDs, %d DELs in all): %d CNI errors (the vanished netns), 0 other errors, 0 duplicate addresses, 0 leaked links/rules/IPAM files, %d/%d cross-node pings answered",
		adds-gone, elapsed.Round(time.Second), maxAlive, gone, adds, dels, cniErrs, crossPings, pings)
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
