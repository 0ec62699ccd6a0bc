package netd_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd"
	"github.com/berthnet/berth/test/testbed"
)

// restartUnderPing restarts netd on node i (SIGTERM, or kill -9) while
// from pings to: not one echo may be lost. args are node i's own flags.
func restartUnderPing(t *testing.T, c *cluster, from, to *bgpPod, i int, sig syscall.Signal, args ...string) {
	t.Helper()
	type res struct {
		out string
		err error
	}
	done := make(chan res, 1)
	go func() {
		out, err := testenv.InNS(from.ctr.Netns, "ping", "-n", "-i", "0.05", "-c", "140", "-W", "1", to.ip)
		done <- res{string(out), err}
	}()
	time.Sleep(time.Second)
	if err := c.netd[i].Signal(sig); err != nil {
		t.Fatal(err)
	}
	if err := c.netd[i].Wait(context.Background()); sig == syscall.SIGTERM && err != nil {
		t.Errorf("netd on node%d after SIGTERM: %v", i, err)
	}
	time.Sleep(500 * time.Millisecond)
	c.start(i, args...)
	r := <-done
	if m := lossRe.FindStringSubmatch(r.out); m == nil || m[1] != m[2] {
		t.Errorf("packets lost across the restart (%s):\n%s", sig, r.out)
	}
}

// statusCommand runs `netd status` on node i and returns its output and
// whether it exited 0.
func statusCommand(c *cluster, i int) (string, bool) {
	out, err := c.tb.Node(i).Run(context.Background(), c.bin, "status", "--metrics-address", c.metricsAddr())
	return string(out), err == nil
}

// sessionProblem waits until node i's session to peer shows a problem
// (past coming up) containing want, and returns the status.
func sessionProblem(c *cluster, i int, peer, want string) *netd.Status {
	c.t.Helper()
	var s *netd.Status
	c.eventually(fmt.Sprintf("node%d reports the session to %s: %q", i, peer, want), 40*time.Second, func() error {
		var err error
		if s, err = c.status(i); err != nil {
			return err
		}
		for _, b := range s.BGP {
			if b.Peer == peer && !b.Pending && strings.Contains(b.Problem, want) {
				return nil
			}
		}
		return fmt.Errorf("sessions %+v", s.BGP)
	})
	return s
}

// routedExactly checks node i's netd routes are its blackhole and
// exactly the blocks in want, each via the given next hop.
func routedExactly(c *cluster, i int, want map[string]netip.Addr) {
	c.t.Helper()
	self := c.lease(i).Subnet.String()
	c.eventually(fmt.Sprintf("node%d routes exactly %v", i, want), 30*time.Second, func() error {
		rs := routes(c.t, c.tb.Node(i))
		if !strings.Contains(rs[self], "blackhole") {
			return fmt.Errorf("no blackhole for its own block %s: %v", self, rs)
		}
		if len(rs) != len(want)+1 {
			return fmt.Errorf("routes %v, want %v and the blackhole", rs, want)
		}
		for block, via := range want {
			if !strings.Contains(rs[block], "via "+via.String()+" ") {
				return fmt.Errorf("%s: %q, want via %s", block, rs[block], via)
			}
		}
		return nil
	})
}

// TestBGPWithFRR: two L2 segments joined by a router that runs FRR 8 as
// a network engineer configures it (route-maps, graceful restart, MD5).
// The nodes peer over eBGP with FRR only; FRR learns exactly each block
// and routes between the segments.
func TestBGPWithFRR(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 4, Segment2: []int{3, 4}})
	const password = "s3,cr:et" // a comma and a colon: only the config file can carry it
	frr, err := tb.StartFRR(context.Background(), testbed.FRROptions{ASN: 64600, Peers: []testbed.FRRPeer{
		{IP: tb.Node(1).IP.String(), ASN: 65001, Password: password},
		{IP: tb.Node(2).IP.String(), ASN: 65002, Password: "s3cret"},
		{IP: tb.Node(3).IP.String(), ASN: 65003},
		{IP: tb.Node(4).IP.String(), ASN: 65004},
	}})
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, tb, []string{startEtcd(t, tb).ClientURL}, "bgpfrr", 9484, "--mode", "bgp", "--network-cidr", "10.249.0.0/16",
		"--bgp-node-mesh=false", "--bgp-restart-time", "60s")
	config := filepath.Join(tb.Dir, "node1-netd.json")
	os.WriteFile(config, []byte(fmt.Sprintf(`{"bgp-peers": [{"address": %q, "asn": 64600, "password": %q, "name": "tor"}]}`,
		testbed.RouterIP1, password)), 0o600)
	args := map[int][]string{
		1: {"--bgp-asn", "65001", "--config", config},
		2: {"--bgp-asn", "65002", "--bgp-peers", testbed.RouterIP1.String() + ":64600:wrong"},
		3: {"--bgp-asn", "65003", "--bgp-peers", testbed.RouterIP2.String() + ":64600", "--bgp-hold-time", "6s"},
		4: {"--bgp-asn", "65004", "--bgp-peers", testbed.RouterIP2.String() + ":64600"},
	}
	for i := 1; i <= 4; i++ {
		c.start(i, args[i]...)
	}
	for _, i := range []int{1, 3, 4} {
		established(c, i, 1)
	}
	block := func(i int) string { return c.lease(i).Subnet.String() }
	ip := func(i int) netip.Addr { return tb.Node(i).IP }
	router := func(i int) netip.Addr { return tb.Node(i).Gateway }

	t.Run("FRR learns exactly each block, with the node as next hop", func(t *testing.T) {
		c.eventually("FRR's table", 20*time.Second, func() error {
			rs, err := frr.Routes(context.Background())
			if err != nil {
				return err
			}
			got := map[string]string{}
			for _, r := range rs {
				got[r.Prefix] = r.NextHop + " path " + r.ASPath
			}
			want := map[string]string{
				block(1): ip(1).String() + " path 65001",
				block(3): ip(3).String() + " path 65003",
				block(4): ip(4).String() + " path 65004",
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("FRR has %v, want %v", got, want)
			}
			return nil
		})
	})
	t.Run("each node routes exactly the others' blocks, via the right next hop", func(t *testing.T) {
		// Across the router via the router; on the same segment straight
		// to the node (FRR passes the node's own next hop on).
		routedExactly(c, 1, map[string]netip.Addr{block(3): testbed.RouterIP1, block(4): testbed.RouterIP1})
		routedExactly(c, 3, map[string]netip.Addr{block(1): testbed.RouterIP2, block(4): ip(4)})
		routedExactly(c, 4, map[string]netip.Addr{block(1): testbed.RouterIP2, block(3): ip(3)})
	})
	pods := bgpPods(t, tb, "bgpfrr", 1, 3, 4)
	matrix(t, pods)

	t.Run("status counts prefixes as FRR does", func(t *testing.T) {
		s, err := c.status(3)
		if err != nil || len(s.BGP) != 1 {
			t.Fatalf("status %+v %v", s, err)
		}
		// FRR sends node1's and node4's blocks; node3 sends its own.
		if b := s.BGP[0]; b.Received != 2 || b.Accepted != 2 || b.Advertised != 1 || b.Name != "external" {
			t.Errorf("session %+v: want received 2, accepted 2, advertised 1", b)
		}
		var sum struct {
			IPv4 struct {
				Peers map[string]struct {
					PfxRcd int `json:"pfxRcd"`
					PfxSnt int `json:"pfxSnt"`
				} `json:"peers"`
			} `json:"ipv4Unicast"`
		}
		if err := frr.JSON(context.Background(), "show bgp summary json", &sum); err != nil {
			t.Fatal(err)
		}
		// FRR also sends node3 its own block back, which node3 drops as
		// an AS-path loop and does not count.
		if p := sum.IPv4.Peers[ip(3).String()]; p.PfxRcd != int(s.BGP[0].Advertised) || p.PfxSnt != int(s.BGP[0].Received)+1 {
			t.Errorf("FRR counts node3: received %d sent %d, netd: advertised %d received %d", p.PfxRcd, p.PfxSnt, s.BGP[0].Advertised, s.BGP[0].Received)
		}
		// node3 runs with --bgp-hold-time 6s, less than FRR's 9s.
		var nb map[string]struct {
			Hold int `json:"bgpTimerHoldTimeMsecs"`
		}
		if err := frr.JSON(context.Background(), "show bgp neighbors "+ip(3).String()+" json", &nb); err != nil || nb[ip(3).String()].Hold != 6000 {
			t.Errorf("hold time FRR negotiated with node3: %+v %v, want 6000 ms", nb, err)
		}
	})

	t.Run("a wrong MD5 password: status fails and says what to check", func(t *testing.T) {
		s := sessionProblem(c, 2, testbed.RouterIP1.String(), "TCP MD5 password is set")
		if s.Healthy() {
			t.Error("status healthy with the session down")
		}
		out, ok := statusCommand(c, 2)
		if ok || !strings.Contains(out, "ERROR: the BGP session to "+testbed.RouterIP1.String()) || !strings.Contains(out, "MD5") {
			t.Errorf("netd status exited 0 or says nothing of the password:\n%s", out)
		}
		if body, err := tb.Node(2).Get(context.Background(), "http://"+c.metricsAddr()+"/healthz"); err == nil || !strings.Contains(err.Error(), "503") {
			t.Errorf("/healthz with the session down: %s %v", body, err)
		}
		// The others say node2's block is not routed, rather than "ok".
		s1, _ := c.status(1)
		for _, p := range s1.Peers {
			if p.Name == "node2" && !strings.Contains(p.Error, "is not routed") {
				t.Errorf("node1 on node2: %+v", p)
			}
		}
	})

	t.Run("more-specific and unleased prefixes from the router are not installed", func(t *testing.T) {
		b1 := c.lease(1).Subnet
		moreSpecific := netip.PrefixFrom(b1.Addr(), b1.Bits()+1)
		unleased := unleasedBlock(c, netip.MustParsePrefix("10.249.0.0/16"), 4)
		if err := frr.Announce(context.Background(), moreSpecific, unleased); err != nil {
			t.Fatal(err)
		}
		for _, i := range []int{1, 3, 4} {
			c.eventually(fmt.Sprintf("node%d refuses both", i), 20*time.Second, func() error {
				s, err := c.status(i)
				if err != nil {
					return err
				}
				refused := strings.Join(s.Refused, "\n")
				if !strings.Contains(refused, "route "+moreSpecific.String()) || !strings.Contains(refused, "route "+unleased.String()+" from "+router(i).String()+": not installed: no node leases it") {
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
		if s, _ := c.status(3); !strings.Contains(strings.Join(s.Refused, "\n"), "more specific of node1's block "+b1.String()) {
			t.Errorf("node3's reason: %q", s.Refused)
		}
		time.Sleep(5 * time.Second) // two more resyncs: each refusal is logged once
		for _, i := range []int{1, 3} {
			log := c.netd[i].Log()
			for _, p := range []netip.Prefix{moreSpecific, unleased} {
				if n := strings.Count(log, `msg="refusing a route" route="route `+p.String()); n != 1 {
					t.Errorf("node%d logged the refusal of %s %d times", i, p, n)
				}
			}
			body, err := tb.Node(i).Get(context.Background(), "http://"+c.metricsAddr()+"/metrics")
			if err != nil || !regexp.MustCompile(`berth_netd_route_refusals_total\{[^}]*\} 2\b`).Match(body) ||
				!regexp.MustCompile(`berth_netd_routes_refused\{[^}]*\} 2\b`).Match(body) {
				t.Errorf("node%d refusal metrics: %v\n%s", i, err, grep(body, "refus"))
			}
		}
		reachAll(t, pods) // still straight to the nodes
	})

	t.Run("SIGTERM restart loses no packet and FRR sees forwarding preserved", func(t *testing.T) {
		restartUnderPing(t, c, pods[1], pods[0], 1, syscall.SIGTERM, args[1]...)
		established(c, 1, 1)
		out, err := frr.VTY(context.Background(), "show bgp neighbors "+ip(1).String())
		if err != nil || !strings.Contains(out, "IPv4 Unicast(preserved)") {
			t.Errorf("FRR's view of node1's graceful restart after the restart: %v\n%s", err, out)
		}
	})
	t.Run("kill -9 restart loses no packet", func(t *testing.T) {
		restartUnderPing(t, c, pods[1], pods[0], 1, syscall.SIGKILL, args[1]...)
		established(c, 1, 1)
	})

	t.Run("a router with ebgp-requires-policy and no route-maps is reported", func(t *testing.T) {
		if err := frr.RemovePolicy(context.Background(), ip(4).String()); err != nil {
			t.Fatal(err)
		}
		s := sessionProblem(c, 4, testbed.RouterIP2.String(), "ebgp-requires-policy")
		if s.Healthy() {
			t.Error("healthy while the router sends nothing")
		}
		if out, ok := statusCommand(c, 4); ok || !strings.Contains(out, "announces nothing") {
			t.Errorf("netd status on node4:\n%s", out)
		}
	})
}

// unleasedBlock is a block of cidr no node of c leases.
func unleasedBlock(c *cluster, cidr netip.Prefix, nodes int) netip.Prefix {
	leased := map[netip.Prefix]bool{}
	for i := 1; i <= nodes; i++ {
		leased[c.lease(i).Subnet] = true
	}
	for b := netip.PrefixFrom(cidr.Addr(), 24); cidr.Contains(b.Addr()); {
		if !leased[b] {
			return b
		}
		a := b.Addr().As4()
		a[2]++
		b = netip.PrefixFrom(netip.AddrFrom4(a), 24)
	}
	c.t.Fatal("no free block")
	return netip.Prefix{}
}

// grep returns the lines of body containing s.
func grep(body []byte, s string) string {
	var out []string
	for _, l := range strings.Split(string(body), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// birdRoute is BIRD's entry for prefix ("" if it has none).
func birdRoute(t *testing.T, bird *testbed.BIRD, prefix string) string {
	t.Helper()
	out, err := bird.Show(context.Background(), "route", prefix, "all")
	if err != nil && !strings.Contains(out, "Network not found") {
		t.Fatalf("birdc: %v\n%s", err, out)
	}
	if !strings.Contains(out, prefix) {
		return ""
	}
	return out
}

// frrRoute is FRR's path for prefix ("" if it has none).
func frrRoute(t *testing.T, frr *testbed.FRR, prefix string) string {
	t.Helper()
	rs, err := frr.Routes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Prefix == prefix {
			return "via " + r.NextHop + " path " + r.ASPath
		}
	}
	return ""
}

// TestBGPNoTransit: node1 is dual-homed, to BIRD (AS 64600) and to FRR
// (AS 64700) on the router; node2 peers with BIRD only, node3 with FRR
// only. node1 must announce its own block to both and pass neither
// router's routes to the other; with --bgp-edge it announces every block.
func TestBGPNoTransit(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 3, Segment2: []int{3}})
	ctx := context.Background()
	bird, err := tb.StartBIRD(ctx, testbed.BIRDOptions{ASN: 64600, Listen: testbed.RouterIP1, Peers: []testbed.BIRDPeer{
		{Name: "node1", IP: tb.Node(1).IP.String(), ASN: 65001},
		{Name: "node2", IP: tb.Node(2).IP.String(), ASN: 65002},
	}})
	if err != nil {
		t.Fatal(err)
	}
	// FRR listens on another port than 179: the nodes get it from their
	// config file's per-router "port".
	frr, err := tb.StartFRR(ctx, testbed.FRROptions{ASN: 64700, Listen: testbed.RouterIP2, Port: 1179, Peers: []testbed.FRRPeer{
		{IP: tb.Node(1).IP.String(), ASN: 65001},
		{IP: tb.Node(3).IP.String(), ASN: 65003},
	}})
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, tb, []string{startEtcd(t, tb).ClientURL}, "bgpnt", 9485, "--mode", "bgp", "--network-cidr", "10.250.0.0/16", "--bgp-node-mesh=false")
	bird1 := fmt.Sprintf(`{"address": %q, "asn": 64600, "name": "bird"}`, testbed.RouterIP1)
	frr1 := fmt.Sprintf(`{"address": %q, "asn": 64700, "port": 1179, "name": "frr"}`, testbed.RouterIP2)
	config := func(i int, peers ...string) string {
		path := filepath.Join(tb.Dir, fmt.Sprintf("node%d-netd.json", i))
		os.WriteFile(path, []byte(`{"bgp-peers": [`+strings.Join(peers, ",")+`]}`), 0o644)
		return path
	}
	args := map[int][]string{
		1: {"--bgp-asn", "65001", "--config", config(1, bird1, frr1)},
		2: {"--bgp-asn", "65002", "--config", config(2, bird1)},
		3: {"--bgp-asn", "65003", "--config", config(3, frr1)},
	}
	for i := 1; i <= 3; i++ {
		c.start(i, args[i]...)
	}
	established(c, 1, 2)
	established(c, 2, 1)
	established(c, 3, 1)
	b1, b2, b3 := c.lease(1).Subnet.String(), c.lease(2).Subnet.String(), c.lease(3).Subnet.String()
	c.eventually("BIRD learns node1's and node2's blocks, FRR node1's and node3's", 20*time.Second, func() error {
		for _, r := range []string{birdRoute(t, bird, b1), birdRoute(t, bird, b2), frrRoute(t, frr, b1), frrRoute(t, frr, b3)} {
			if r == "" {
				return fmt.Errorf("missing")
			}
		}
		return nil
	})
	// node1 learned node2's block from BIRD and node3's from FRR; give it
	// time to (wrongly) pass them on.
	routedExactly(c, 1, map[string]netip.Addr{b2: tb.Node(2).IP, b3: testbed.RouterIP1})
	time.Sleep(3 * time.Second)
	if r := birdRoute(t, bird, b1); !regexp.MustCompile(`BGP.as_path: 65001\n`).MatchString(r) {
		t.Errorf("BIRD's route to node1's block: want AS path 65001 only:\n%s", r)
	}
	if r := birdRoute(t, bird, b3); r != "" {
		t.Errorf("node1 is a transit: BIRD learned node3's block through it:\n%s", r)
	}
	if r := frrRoute(t, frr, b1); r != "via "+tb.Node(1).IP.String()+" path 65001" {
		t.Errorf("FRR's route to node1's block: %q, want via node1 with AS path 65001", r)
	}
	if r := frrRoute(t, frr, b2); r != "" {
		t.Errorf("node1 is a transit: FRR learned node2's block through it: %s", r)
	}

	t.Run("on the cluster's edge node1 announces every block", func(t *testing.T) {
		c.netd[1].Signal(syscall.SIGTERM)
		c.netd[1].Wait(ctx)
		c.start(1, append(args[1], "--bgp-edge")...)
		c.eventually("BIRD learns node3's block through node1", 30*time.Second, func() error {
			if r := birdRoute(t, bird, b3); !strings.Contains(r, "BGP.as_path: 65001 64700 65003") {
				return fmt.Errorf("BIRD: %q", r)
			}
			return nil
		})
	})
}
