package bgp_test

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/testenv"
)

// Routed attachments come and go in parallel while GC removes stale ones
// and a DEL races it, on the datapath under test (BERTH_TEST_DATAPATH; on
// the eBPF one each ADD adds an endpoint and a program, DEL and GC remove
// them, and the last one out removes the network's pins): every call
// succeeds, CHECK holds for each live one, and after each round nothing
// is left.
func TestParallelAddDelGC(t *testing.T) {
	testenv.BinDir(t, "berth-bgp")
	node, outside := testenv.NewNS(t), testenv.NewNS(t)
	testenv.Link(t, node, "eth0", nodeIP+"/24", outside, "eth0", outsideIP+"/24")
	leaseDir, stateDir, dataDir := t.TempDir(), t.TempDir(), t.TempDir()
	datapath, bpffs := "", ""
	if testenv.Datapath() == "ebpf" {
		bpffs = testenv.BPFFS(t)
		datapath = fmt.Sprintf(`"datapath":"ebpf","bpffs":%q,`, bpffs)
	}
	list := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bgpc","plugins":[{"type":"berth-bgp","leaseDir":%q,
		"stateDir":%q,%s"ipam":{"type":"berth-ipam","dataDir":%q}}]}`, leaseDir, stateDir, datapath, dataDir)
	err := lease.Write(lease.Path(leaseDir, "bgpc"), &lease.Node{Network: "bgpc", Mode: lease.ModeBGP,
		NetworkCIDR: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.5.0/24"),
		MTU: 1500, IPMasq: true, NodeName: "n1", NodeIP: netip.MustParseAddr(nodeIP), Expires: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	rt := testenv.NewRuntime(t, node, list)
	snapshot := func() string { return testenv.Snapshot(t, node, stateDir, dataDir, bpffs) }
	before := snapshot()
	const rounds, workers = 3, 4
	for r := range rounds {
		stale := []*testenv.Attachment{{ID: fmt.Sprintf("st%d-0", r), Netns: testenv.NewNS(t)}, {ID: fmt.Sprintf("st%d-1", r), Netns: testenv.NewNS(t)}}
		for _, c := range stale {
			if _, err := rt.Add(c); err != nil {
				t.Fatal(err)
			}
		}
		live := make([]*testenv.Attachment, workers)
		for i := range live {
			live[i] = &testenv.Attachment{ID: fmt.Sprintf("lv%d-%d", r, i), Netns: testenv.NewNS(t)}
		}
		var wg sync.WaitGroup
		for i := range workers + 2 {
			wg.Go(func() {
				var err error
				switch {
				case i == workers: // GC keeps the live ones, not the stale ones
					err = rt.GC(live...)
				case i == workers+1:
					err = rt.Del(stale[0])
				default:
					if _, err = rt.Add(live[i]); err == nil {
						err = rt.Check(live[i])
					}
				}
				if err != nil {
					t.Errorf("round %d, call %d: %v", r, i, err)
				}
			})
		}
		wg.Wait()
		for _, c := range live {
			wg.Go(func() {
				if err := rt.Del(c); err != nil {
					t.Errorf("DEL %s: %v", c.ID, err)
				}
			})
		}
		wg.Wait()
		for _, c := range stale {
			if err := rt.Del(c); err != nil { // GC may have been first, or not: both are fine
				t.Errorf("DEL %s: %v", c.ID, err)
			}
		}
		if d := testenv.Diff(before, snapshot()); d != "" {
			t.Fatalf("round %d: left after every container left:\n%s", r, d)
		}
	}
}
