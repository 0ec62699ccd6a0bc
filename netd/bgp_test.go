package netd_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/test/testbed"
)

// bgpPods attaches one berth-bgp container to each given node, through the
// conflist netd wrote, and returns them with their addresses.
type bgpPod struct {
	node *testbed.Node
	rt   *testenv.Runtime
	ctr  *testenv.Attachment
	ip   string
}

func bgpPods(t *testing.T, tb *testbed.Testbed, network string, nodes ...int) []*bgpPod {
	t.Helper()
	testenv.BinDir(t, "berth-bgp")
	var pods []*bgpPod
	for _, i := range nodes {
		n := tb.Node(i)
		conflist, err := os.ReadFile(conf.ConflistPath(n.CNIConfDir, network))
		if err != nil {
			t.Fatal(err)
		}
		p := &bgpPod{node: n, rt: testenv.NewRuntime(t, n.NetNS.NetNS, string(conflist)),
			ctr: &testenv.Attachment{ID: n.Host + "-pod", Netns: testenv.NewNS(t)}}
		res, err := p.rt.Add(p.ctr)
		if err != nil {
			t.Fatalf("ADD on %s: %v", n.Host, err)
		}
		p.ip = res.IPs[0].Address.IP.String()
		t.Cleanup(func() { p.rt.Del(p.ctr) })
		pods = append(pods, p)
	}
	return pods
}

// matrix checks every pod reaches every other one over TCP with its own
// source address (no NAT inside the cluster).
func matrix(t *testing.T, pods []*bgpPod) {
	t.Helper()
	for _, p := range pods {
		testenv.Serve(t, p.ctr.Netns, p.ip+":7000")
	}
	reachAll(t, pods)
}

// reachAll checks, after matrix, that every pod still reaches every other.
func reachAll(t *testing.T, pods []*bgpPod) {
	t.Helper()
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			var seen string
			var err error
			for try := 0; try < 20; try++ { // routes may still be arriving
				if seen, err = testenv.Dial(from.ctr.Netns, to.ip+":7000"); err == nil {
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
			if err != nil || seen != from.ip {
				t.Errorf("%s -> %s: server saw %q (%v), want %s", from.node.Host, to.node.Host, seen, err, from.ip)
			}
		}
	}
}

// watchDeletes follows node n's routes of netd's protocol from now on and
// returns a function that lists the ones deleted so far.
func watchDeletes(t *testing.T, n *testbed.Node) func() []string {
	t.Helper()
	ch := make(chan netlink.RouteUpdate, 1024)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	err := n.Do(func() error {
		return netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{ErrorCallback: func(err error) {
			select {
			case <-done:
			default:
				t.Errorf("route events of %s: %v", n.Host, err)
			}
		}})
	})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var deleted []string
	go func() {
		for u := range ch {
			if u.Type == unix.RTM_DELROUTE && u.Protocol == backend.RouteProtocol {
				mu.Lock()
				deleted = append(deleted, u.Dst.String())
				mu.Unlock()
			}
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(deleted)
	}
}

func established(c *cluster, i, want int) {
	c.t.Helper()
	c.eventually(fmt.Sprintf("node%d: %d BGP sessions established", i, want), 45*time.Second, func() error {
		s, err := c.status(i)
		if err != nil {
			return err
		}
		up := 0
		for _, b := range s.BGP {
			if b.Established {
				up++
			}
		}
		if up != want || len(s.BGP) != want {
			return fmt.Errorf("sessions %+v", s.BGP)
		}
		if !s.KernelMatches {
			return fmt.Errorf("kernel pending %q", s.Pending)
		}
		return nil
	})
}

func TestBGPMesh(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 3})
	c := newCluster(t, tb, []string{startEtcd(t, tb).ClientURL}, "bgp", 9481, "--mode", "bgp", "--network-cidr", "10.246.0.0/16")
	for i := 1; i <= 3; i++ {
		c.start(i, "--bgp-restart-time", "60s")
	}
	for i := 1; i <= 3; i++ {
		established(c, i, 2)
	}
	for i := 1; i <= 3; i++ {
		rs := routes(t, tb.Node(i))
		self := c.lease(i).Subnet.String()
		if !strings.Contains(rs[self], "blackhole") && !strings.HasPrefix(rs[self], self) {
			t.Errorf("node%d: no blackhole route for its own block %s: %v", i, self, rs)
		}
		for j := 1; j <= 3; j++ {
			if j == i {
				continue
			}
			peer := c.lease(j).Subnet.String()
			if want := "via " + tb.Node(j).IP.String(); !strings.Contains(rs[peer], want) {
				t.Errorf("node%d: route to node%d's block %s = %q, want %s", i, j, peer, rs[peer], want)
			}
		}
	}
	pods := bgpPods(t, tb, "bgp", 1, 2, 3)
	matrix(t, pods)

	t.Run("status shows the sessions", func(t *testing.T) {
		out, err := tb.Node(1).Run(context.Background(), c.bin, "status", "--metrics-address", c.metricsAddr())
		if err != nil || !strings.Contains(string(out), "bgp sessions") || strings.Count(string(out), "established up") != 2 {
			t.Errorf("netd status: %v\n%s", err, out)
		}
		body, err := tb.Node(1).Get(context.Background(), "http://"+c.metricsAddr()+"/metrics")
		if err != nil || !regexp.MustCompile(`berth_netd_bgp_session_up\{[^}]*\} 1`).Match(body) {
			t.Errorf("bgp metrics missing: %v", err)
		}
	})

	t.Run("netd kill -9 and restart lose no packet", func(t *testing.T) {
		// A steady ping from node1's pod to node2's, while node2's netd
		// is killed and restarted: graceful restart keeps node2's block
		// on the others, and node2 keeps its routes in the kernel.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		type res struct {
			out string
			err error
		}
		done := make(chan res, 1)
		go func() {
			out, err := testenv.InNS(pods[0].ctr.Netns, "ping", "-n", "-i", "0.05", "-c", "120", "-W", "1", pods[1].ip)
			done <- res{string(out), err}
		}()
		// The ping ends before the sessions are back: node2's routes are
		// watched until then, and a moment after, for the instant the
		// restarted netd stops holding what it found in the kernel.
		deleted := watchDeletes(t, tb.Node(2))
		time.Sleep(time.Second)
		c.netd[2].Kill()
		time.Sleep(500 * time.Millisecond)
		c.start(2, "--bgp-restart-time", "60s")
		r := <-done
		_ = ctx
		m := lossRe.FindStringSubmatch(r.out)
		if m == nil || m[1] != m[2] {
			t.Errorf("packets lost across the restart:\n%s", r.out)
		}
		established(c, 2, 2)
		time.Sleep(4 * time.Second)
		if d := deleted(); len(d) > 0 {
			t.Errorf("node2 deleted routes of netd while it restarted: %v", d)
		}
	})

	t.Run("netd SIGTERM and restart lose no packet", func(t *testing.T) {
		restartUnderPing(t, c, pods[0], pods[1], 2, syscall.SIGTERM, "--bgp-restart-time", "60s")
		established(c, 2, 2)
	})

	t.Run("a node that stops is reported, and withdrawn everywhere when it leaves", func(t *testing.T) {
		block := c.lease(3).Subnet.String()
		pods[2].rt.Del(pods[2].ctr)
		if err := c.netd[3].Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		c.netd[3].Wait(context.Background())
		// Its peers keep its routes for its graceful restart, and say so
		// (until its lease expires, 10s here): not "ok" with "kernel
		// matches the leases".
		c.eventually("node1 reports node3 down", 8*time.Second, func() error {
			s, err := c.status(1)
			if err != nil {
				return err
			}
			for _, p := range s.Peers {
				if p.Name == "node3" && strings.Contains(p.Error, "graceful restart") && !s.Healthy() {
					return nil
				}
			}
			return fmt.Errorf("peers %+v", s.Peers)
		})
		if out, ok := statusCommand(c, 1); ok || !strings.Contains(out, "node3") || !strings.Contains(out, "its routes are kept") {
			t.Errorf("netd status on node1 with node3 stopped:\n%s", out)
		}
		if out, err := tb.Node(3).Run(context.Background(), c.bin, append([]string{"leave"}, c.flags(3)...)...); err != nil {
			t.Fatalf("netd leave: %v\n%s", err, out)
		}
		for _, i := range []int{1, 2} {
			c.eventually(fmt.Sprintf("node%d drops %s", i, block), 30*time.Second, func() error {
				if r, ok := routes(t, tb.Node(i))[block]; ok {
					return fmt.Errorf("still routed: %s", r)
				}
				return nil
			})
		}
	})
}

func TestBGPRouteReflectors(t *testing.T) {
	const nodes = 8
	tb := testbed.ForTest(t, testbed.Options{Nodes: nodes})
	c := newCluster(t, tb, []string{startEtcd(t, tb).ClientURL}, "bgprr", 9482, "--mode", "bgp", "--network-cidr", "10.247.0.0/16")
	c.start(1, "--bgp-route-reflector")
	c.start(2, "--bgp-route-reflector")
	for i := 3; i <= nodes; i++ {
		c.start(i)
	}
	established(c, 1, nodes-1) // a reflector peers with everyone
	established(c, 2, nodes-1)
	for i := 3; i <= nodes; i++ { // a client only with the two reflectors
		established(c, i, 2)
		s, _ := c.status(i)
		for _, b := range s.BGP {
			if b.Peer != tb.Node(1).IP.String() && b.Peer != tb.Node(2).IP.String() {
				t.Errorf("node%d has a session to %s, not a reflector", i, b.Peer)
			}
		}
	}
	// Clients learn each other's blocks through the reflectors, with the
	// originating node as next hop.
	rs := routes(t, tb.Node(3))
	if want := "via " + tb.Node(4).IP.String(); !strings.Contains(rs[c.lease(4).Subnet.String()], want) {
		t.Errorf("node3's route to node4's block: %q, want %s", rs[c.lease(4).Subnet.String()], want)
	}
	matrix(t, bgpPods(t, tb, "bgprr", 1, 2, 3, 4))

	// A client killed with -9 keeps every route while it restarts: the
	// routes it finds in the kernel until its reflectors have sent all
	// theirs (End-of-RIB), and those after.
	t.Run("a client's kill -9 and restart delete no route", func(t *testing.T) {
		for i := 3; i <= nodes; i++ {
			established(c, i, 2)
			if n := len(routes(t, tb.Node(i))); n != nodes {
				t.Fatalf("node%d has %d routes of netd, want %d (its blackhole and every other block)", i, n, nodes)
			}
		}
		deleted := watchDeletes(t, tb.Node(5))
		c.netd[5].Kill()
		c.start(5)
		established(c, 5, 2)
		time.Sleep(3 * time.Second)
		if d := deleted(); len(d) > 0 {
			t.Errorf("node5 deleted routes of netd while it restarted: %v\n%s", d, c.netd[5].Log())
		}
	})
}

// TestBGPAcrossRouterWithBIRD: two L2 segments joined by a router that runs
// BIRD. The nodes peer over eBGP with BIRD only (no node mesh); BIRD learns
// every block and routes between the segments, where host-gw cannot.
func TestBGPAcrossRouterWithBIRD(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 4, Segment2: []int{3, 4}})
	var peers []testbed.BIRDPeer
	for i, pw := range map[int]string{1: "s3cret", 2: "s3cret", 3: "", 4: ""} {
		peers = append(peers, testbed.BIRDPeer{Name: fmt.Sprintf("node%d", i), IP: tb.Node(i).IP.String(), ASN: uint32(65000 + i), Password: pw})
	}
	bird, err := tb.StartBIRD(context.Background(), testbed.BIRDOptions{ASN: 64600, Peers: peers, Hijack: true})
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, tb, []string{startEtcd(t, tb).ClientURL}, "bgpx", 9483, "--mode", "bgp", "--network-cidr", "10.248.0.0/16")
	args := map[int][]string{}
	for i := 1; i <= 4; i++ {
		router, password := testbed.RouterIP1, ":s3cret"
		if i >= 3 {
			router, password = testbed.RouterIP2, ""
		}
		if i == 2 {
			password = ":wrong" // the session must stay down, with a clear reason
		}
		args[i] = []string{"--bgp-node-mesh=false", "--bgp-asn", fmt.Sprint(65000 + i), "--bgp-restart-time", "60s",
			"--bgp-peers", fmt.Sprintf("%s:64600%s", router, password)}
		c.start(i, args[i]...)
	}
	for _, i := range []int{1, 3, 4} {
		established(c, i, 1)
	}
	t.Run("a wrong MD5 password keeps the session down, and status says so", func(t *testing.T) {
		s := sessionProblem(c, 2, testbed.RouterIP1.String(), "TCP MD5 password is set")
		if len(s.BGP) != 1 || s.BGP[0].Established || s.Healthy() {
			t.Fatalf("node2 with a wrong password: %+v", s)
		}
		if out, ok := statusCommand(c, 2); ok {
			t.Errorf("netd status exited 0:\n%s", out)
		}
		if !strings.Contains(c.netd[2].Log(), "MD5 password") {
			t.Errorf("no log line naming the password:\n%s", c.netd[2].Log())
		}
	})
	out, err := bird.Show(context.Background(), "route")
	if err != nil {
		t.Fatalf("birdc: %v\n%s", err, out)
	}
	for _, i := range []int{1, 3, 4} {
		if block := c.lease(i).Subnet.String(); !strings.Contains(string(out), block) {
			t.Errorf("BIRD did not learn node%d's block %s:\n%s", i, block, out)
		}
	}
	pods := bgpPods(t, tb, "bgpx", 1, 3, 4)
	matrix(t, pods)

	t.Run("more-specific and unleased prefixes from BIRD are not installed", func(t *testing.T) {
		b3 := c.lease(3).Subnet
		moreSpecific := netip.PrefixFrom(b3.Addr(), b3.Bits()+1)
		unleased := unleasedBlock(c, netip.MustParsePrefix("10.248.0.0/16"), 4)
		if err := bird.Announce(context.Background(), moreSpecific, unleased); err != nil {
			t.Fatal(err)
		}
		for _, i := range []int{1, 4} {
			c.eventually(fmt.Sprintf("node%d refuses both", i), 20*time.Second, func() error {
				s, err := c.status(i)
				if err != nil {
					return err
				}
				if refused := strings.Join(s.Refused, "\n"); !strings.Contains(refused, moreSpecific.String()) || !strings.Contains(refused, unleased.String()) {
					return fmt.Errorf("refused %q", s.Refused)
				}
				return nil
			})
			rs := routes(t, tb.Node(i))
			for _, p := range []netip.Prefix{moreSpecific, unleased} {
				if r, ok := rs[p.String()]; ok {
					t.Errorf("node%d installed %s: %s", i, p, r)
				}
			}
		}
		reachAll(t, pods)
	})
	t.Run("SIGTERM restart loses no packet", func(t *testing.T) {
		restartUnderPing(t, c, pods[1], pods[0], 1, syscall.SIGTERM, args[1]...)
		established(c, 1, 1)
	})
	t.Run("kill -9 restart loses no packet", func(t *testing.T) {
		restartUnderPing(t, c, pods[1], pods[0], 1, syscall.SIGKILL, args[1]...)
		established(c, 1, 1)
	})

	t.Run("a peer announcing foreign prefixes is ignored", func(t *testing.T) {
		out, _ := bird.Show(context.Background(), "route", "export", "node1")
		if !strings.Contains(string(out), "0.0.0.0/0") || !strings.Contains(string(out), "198.51.100.0/24") {
			t.Fatalf("BIRD does not offer the hijack routes, the test proves nothing:\n%s", out)
		}
		for _, i := range []int{1, 3} {
			rs := routes(t, tb.Node(i))
			for _, p := range []string{"0.0.0.0/0", "198.51.100.0/24"} {
				if r, ok := rs[p]; ok {
					t.Errorf("node%d installed %s from BIRD: %s", i, p, r)
				}
			}
			out, _ := tb.Node(i).Run(context.Background(), "ip", "route", "show", "default")
			if !strings.Contains(string(out), "via "+testbed.RouterIP1.String()) && !strings.Contains(string(out), "via "+testbed.RouterIP2.String()) {
				t.Errorf("node%d's default route changed: %s", i, out)
			}
		}
	})
}
