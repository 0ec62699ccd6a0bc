package reliability

import (
	"context"
	"fmt"
	"net/netip"
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
// do; the real node keeps its subnets and its traffic (before node IDs the
// impostor took over the lease and the real node's containers were
// unreachable until ~45 s after it stopped). On an IPv4 network, and on a
// dual-stack one over the IPv6 underlay (the lease's IPv6 subnet, node
// address and VTEP stay the real node's: IPv6 traffic keeps flowing).
func TestImpostorRefused(t *testing.T) {
	for _, tc := range []struct {
		name      string
		dualStack bool // dual-stack network, VXLAN over the IPv6 underlay
		args      []string
	}{
		{name: "ipv4"},
		{name: "dual-stack over an ipv6 underlay", dualStack: true, args: []string{"--network-cidr", "10.244.0.0/16,fd00:244::/56"}},
	} {
		t.Run(tc.name, func(t *testing.T) { impostorRefused(t, tc.dualStack, tc.args) })
	}
}

func impostorRefused(t *testing.T, dualStack bool, args []string) {
	testenv.BinDir(t, "berth-vxlan")
	tb := testbed.ForTest(t, testbed.Options{Nodes: 3})
	e, err := tb.StartEtcd(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, tb, []string{e.ClientURL}, args...)
	c.v6Underlay = dualStack
	c.start(1)
	held := c.start(2)
	c.converged(1, 2)
	c.converged(2, 1)
	if dualStack && !held.SubnetV6.IsValid() {
		t.Fatalf("node2's lease has no IPv6 subnet: %+v", held)
	}
	ctr1 := addContainer(t, tb.Node(1), "ctr1")
	ctr2 := addContainer(t, tb.Node(2), "ctr2")
	dsts := []netip.Addr{ctr2.ip}
	if dualStack {
		dsts = append(dsts, ctr2.ip6)
	}
	for _, dst := range dsts {
		// A new container's IPv6 address may need a moment (DAD).
		eventually(t, "ping "+dst.String(), 10*time.Second, func() error { return testenv.Ping(ctr1.ns, dst.String()) })
	}
	node2 := tb.Node(2)
	id, err := os.ReadFile(filepath.Join(node2.Dir, "node-id"))
	if err != nil {
		t.Fatal(err)
	}

	var pings []*pinger
	for _, dst := range dsts {
		pings = append(pings, startPing(t, ctr1.ns, "", dst.String(), 2*time.Minute))
	}
	// stopPings stops them and reports what each lost.
	stopPings := func() (lost []string, sent, received int) {
		for i, p := range pings {
			s, r := p.stop(t)
			if s == 0 || r != s {
				lost = append(lost, fmt.Sprintf("%d of %d pings to %s", s-r, s, dsts[i]))
			}
			sent, received = sent+s, received+r
		}
		return lost, sent, received
	}
	time.Sleep(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	// node3 with node2's name (the last --node-name wins).
	out, err := tb.Node(3).Run(ctx, c.bin, append(c.flags(3), "--node-name", node2.Host, "--metrics-address", "")...)
	took := time.Since(start)
	if ctx.Err() != nil {
		lost, _, _ := stopPings()
		t.Fatalf("the impostor was not refused within 30s (lost meanwhile: %v):\n%s", lost, tail(string(out), 10))
	}
	holder, holds, self := "node "+node2.Host+" at "+node2.IP.String(), "holds subnet "+held.Subnet.String(), "This node ("+tb.Node(3).IP.String()
	if dualStack {
		holder += "," + node2.IPv6.String()
		holds = "holds subnets " + held.Subnet.String() + " and " + held.SubnetV6.String()
		self += "," + tb.Node(3).IPv6.String()
	}
	for _, want := range []string{
		"node name held by another node", holder, "node ID " + strings.TrimSpace(string(id)), holds, self,
		"give this one its own --node-name", "netd leave --node-name=" + node2.Host,
	} {
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("impostor: %v; output lacks %q:\n%s", err, want, tail(string(out), 5))
		}
	}
	// node3 never ran before: its refused start leaves no VTEP behind.
	if links, err := tb.Node(3).Run(ctx, "ip", "-o", "link", "show", "type", "vxlan"); err != nil || len(strings.TrimSpace(string(links))) > 0 {
		t.Errorf("the refused node keeps VXLAN devices (%v):\n%s", err, links)
	}
	time.Sleep(3 * time.Second) // peers would have moved node2's FDB entry by now
	lost, sent, received := stopPings()
	if len(lost) > 0 {
		t.Errorf("pings to node2's container lost while the impostor tried: %v", lost)
	}
	s := c.converged(1, 2)
	i := slices.IndexFunc(s.Peers, func(p netd.PeerStatus) bool { return p.Name == node2.Host })
	if i < 0 || s.Peers[i].NodeIP != node2.IP.String() || s.Peers[i].Subnet != held.Subnet.String() {
		t.Errorf("node1's peers after the impostor: %+v", s.Peers)
	} else if dualStack && (s.Peers[i].NodeIPv6 != node2.IPv6.String() || s.Peers[i].SubnetV6 != held.SubnetV6.String()) {
		t.Errorf("node1's peer node2 after the impostor: IPv6 %s, subnet %s; want %s, %s", s.Peers[i].NodeIPv6, s.Peers[i].SubnetV6, node2.IPv6, held.SubnetV6)
	}
	if l := c.lease(2); l.Subnet != held.Subnet || l.SubnetV6 != held.SubnetV6 {
		t.Errorf("node2 now holds %s, had %s", l.Subnets(), held.Subnets())
	}
	if log := c.proc(2).Log(); strings.Contains(log, "rewritten by another writer") || strings.Contains(log, "wrote it back") {
		t.Errorf("node2's lease was touched:\n%s", tail(log, 10))
	}
	report(t, "impostor refused in %s with exit status 1, naming node2's addresses and ID; %d of %d pings to node2's container answered meanwhile",
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
