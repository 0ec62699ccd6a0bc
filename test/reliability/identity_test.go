package reliability

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd"
	"github.com/berthnet/berth/test/testbed"
)

// A netd started on another machine with a node name that a live node
// holds is refused at start, with a message naming the holder and what to
// do; the real node keeps its subnet and its traffic (before node IDs the
// impostor took over the lease and the real node's containers were
// unreachable until ~45 s after it stopped).
func TestImpostorRefused(t *testing.T) {
	testenv.BinDir(t, "berth-vxlan")
	tb := testbed.ForTest(t, testbed.Options{Nodes: 3})
	e, err := tb.StartEtcd(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, tb, []string{e.ClientURL})
	c.start(1)
	held := c.start(2)
	c.converged(1, 2)
	c.converged(2, 1)
	ctr1 := addContainer(t, tb.Node(1), "ctr1")
	ctr2 := addContainer(t, tb.Node(2), "ctr2")
	if err := testenv.Ping(ctr1.ns, ctr2.ip.String()); err != nil {
		t.Fatal(err)
	}
	node2 := tb.Node(2)
	id, err := os.ReadFile(filepath.Join(node2.Dir, "node-id"))
	if err != nil {
		t.Fatal(err)
	}

	p := startPing(t, ctr1.ns, "", ctr2.ip.String(), 2*time.Minute)
	time.Sleep(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	// node3 with node2's name (the last --node-name wins).
	out, err := tb.Node(3).Run(ctx, c.bin, append(c.flags(3), "--node-name", node2.Host, "--metrics-address", "")...)
	took := time.Since(start)
	if ctx.Err() != nil {
		sent, received := p.stop(t)
		t.Fatalf("the impostor was not refused within 30s (%d of %d pings lost meanwhile):\n%s", sent-received, sent, tail(string(out), 10))
	}
	for _, want := range []string{
		"node name held by another node", "node " + node2.Host + " at " + node2.IP.String(),
		"node ID " + strings.TrimSpace(string(id)), "holds subnet " + held.Subnet.String(),
		"This node (" + tb.Node(3).IP.String(), "give this one its own --node-name",
		"netd leave --node-name=" + node2.Host,
	} {
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("impostor: %v; output lacks %q:\n%s", err, want, tail(string(out), 5))
		}
	}
	time.Sleep(3 * time.Second) // peers would have moved node2's FDB entry by now
	sent, received := p.stop(t)
	if sent == 0 || received != sent {
		t.Errorf("ping to node2's container while the impostor tried: %d of %d lost", sent-received, sent)
	}
	s := c.converged(1, 2)
	if i := slices.IndexFunc(s.Peers, func(p netd.PeerStatus) bool { return p.Name == node2.Host }); i < 0 || s.Peers[i].NodeIP != node2.IP.String() || s.Peers[i].Subnet != held.Subnet.String() {
		t.Errorf("node1's peers after the impostor: %+v", s.Peers)
	}
	if l := c.lease(2); l.Subnet != held.Subnet {
		t.Errorf("node2 now holds %s, had %s", l.Subnet, held.Subnet)
	}
	if log := c.proc(2).Log(); strings.Contains(log, "rewritten by another writer") || strings.Contains(log, "wrote it back") {
		t.Errorf("node2's lease was touched:\n%s", tail(log, 10))
	}
	report(t, "impostor refused in %s with exit status 1, naming node2's IP and ID; %d of %d pings to node2's container answered meanwhile",
		took.Round(time.Millisecond), received, sent)
}

// --node-name defaults to the host name: two machines that share one
// collide by default. The second is refused and told so.
func TestSameHostNameRefused(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2}) // the nodes share this machine's host name
	e, err := tb.StartEtcd(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, tb, []string{e.ClientURL})
	withoutName := func(i int) []string {
		f := c.flags(i)
		k := slices.Index(f, "--node-name")
		return slices.Delete(f, k, k+2)
	}
	p, err := tb.Node(1).Start(testbed.ProcSpec{Name: "netd-node1", Path: c.bin, Args: withoutName(1)})
	if err != nil {
		t.Fatal(err)
	}
	if err := waitLease(tb.Node(1), c.network, p); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := tb.Node(2).Run(ctx, c.bin, append(withoutName(2), "--metrics-address", "")...)
	if err == nil || !strings.Contains(string(out), "node name held by another node") ||
		!strings.Contains(string(out), "--node-name defaults to the host name, "+host+" here") {
		t.Fatalf("second node with the same host name: %v\n%s", err, out)
	}
}
