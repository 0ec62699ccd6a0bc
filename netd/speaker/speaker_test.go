// GoBGP needs TCP_MD5SIG on its listener, which MPTCP sockets (Go's default
// for listeners since 1.24) refuse with ENOPROTOOPT; cmd/netd sets the same.
//go:debug multipathtcp=0

package speaker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

// GoBGP opens its sockets from its own goroutines, which a test cannot pin
// to a namespace; so the whole test binary re-runs itself inside a network
// namespace it creates (and always removes), where the speakers listen on
// addresses of lo.
func TestMain(m *testing.M) {
	if os.Getenv("BERTH_SPEAKER_NETNS") != "" || os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	name := fmt.Sprintf("berth-speaker-test-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "creating netns: %v: %s\n", err, out)
		os.Exit(1)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", name, os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), "BERTH_SPEAKER_NETNS="+name)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err := cmd.Run()
	exec.Command("ip", "netns", "del", name).Run()
	if err != nil {
		os.Exit(1)
	}
	os.Exit(0)
}

func setupLo(t *testing.T, addrs ...string) {
	t.Helper()
	if os.Getenv("BERTH_SPEAKER_NETNS") == "" {
		t.Skip("needs root (runs inside its own network namespace)")
	}
	exec.Command("ip", "link", "set", "lo", "up").Run()
	for _, a := range addrs {
		if netip.MustParseAddr(a).Is4() {
			exec.Command("ip", "addr", "add", a+"/32", "dev", "lo").Run()
		} else {
			exec.Command("ip", "addr", "add", a+"/128", "dev", "lo", "nodad").Run()
		}
	}
}

func start(t *testing.T, ctx context.Context, ip string, cfg Config) *Speaker {
	t.Helper()
	cfg.RouterID = netip.MustParseAddr(ip)
	cfg.ListenPort = 1790
	if len(cfg.ClusterCIDRs) == 0 {
		cfg.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// routesOf lists s's best paths as "prefix via next hop from neighbor".
func routesOf(s *Speaker) string {
	ps, err := s.Paths(context.Background())
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, p := range ps {
		if p.Best {
			out = append(out, fmt.Sprintf("%s via %s from %s", p.Prefix, p.NextHop, p.From))
		}
	}
	return strings.Join(out, ", ")
}

func TestMeshExchangesBlocksAndRejectsForeign(t *testing.T) {
	setupLo(t, "192.0.2.11", "192.0.2.12", "192.0.2.13")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := start(t, ctx, "192.0.2.11", Config{})
	b := start(t, ctx, "192.0.2.12", Config{})
	// A misbehaving router: announces a default route, a foreign prefix
	// and a block inside the cluster.
	rogue := start(t, ctx, "192.0.2.13", Config{AcceptForeign: true})
	n := func(ip string) Neighbor { return Neighbor{Address: netip.MustParseAddr(ip), ASN: 64512} }
	for _, s := range []*Speaker{a, b} {
		if err := s.SetNeighbors(ctx, []Neighbor{n("192.0.2.11"), n("192.0.2.12"), n("192.0.2.13")}); err != nil {
			t.Fatal(err)
		}
	}
	ext := func(ip string) Neighbor {
		return Neighbor{Address: netip.MustParseAddr(ip), ASN: 64512, External: true}
	}
	if err := rogue.SetNeighbors(ctx, []Neighbor{ext("192.0.2.11"), ext("192.0.2.12")}); err != nil {
		t.Fatal(err)
	}
	var hijack []netip.Prefix
	for _, p := range []string{"0.0.0.0/0", "198.51.100.0/24", "10.244.3.0/24"} {
		hijack = append(hijack, netip.MustParsePrefix(p))
		rogue.Announce(ctx, netip.MustParsePrefix(p))
	}
	if err := rogue.SetExport(ctx, hijack); err != nil {
		t.Fatal(err)
	}
	a.Announce(ctx, netip.MustParsePrefix("10.244.1.0/24"))
	b.Announce(ctx, netip.MustParsePrefix("10.244.2.0/24"))
	want := "10.244.2.0/24 via 192.0.2.12 from 192.0.2.12, 10.244.3.0/24 via 192.0.2.13 from 192.0.2.13"
	eventually(t, "a learns b's block and only the cluster prefix of the rogue", func() error {
		if got := routesOf(a); got != want {
			return fmt.Errorf("routes %s, want %s", got, want)
		}
		return nil
	})
	sess, err := a.Sessions(ctx)
	if err != nil || len(sess) != 2 || !sess[0].Established || sess[0].Received == 0 {
		t.Errorf("sessions: %+v, %v", sess, err)
	}
	// A withdrawn block disappears.
	b.Withdraw(ctx, netip.MustParsePrefix("10.244.2.0/24"))
	eventually(t, "withdrawal reaches a", func() error {
		if got := routesOf(a); got != "10.244.3.0/24 via 192.0.2.13 from 192.0.2.13" {
			return fmt.Errorf("routes %s", got)
		}
		return nil
	})
}

func TestMD5(t *testing.T) {
	setupLo(t, "192.0.2.21", "192.0.2.22", "192.0.2.23")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := start(t, ctx, "192.0.2.21", Config{})
	good := start(t, ctx, "192.0.2.22", Config{})
	bad := start(t, ctx, "192.0.2.23", Config{})
	nb := func(ip, pw string) Neighbor {
		return Neighbor{Address: netip.MustParseAddr(ip), ASN: 64512, Password: pw}
	}
	if err := md5Supported(); err != nil {
		// This kernel cannot sign segments: a password must be refused
		// with the reason, never dropped silently.
		err := a.SetNeighbors(ctx, []Neighbor{nb("192.0.2.22", "s3cret")})
		if !errors.Is(err, ErrNoMD5) || !strings.Contains(err.Error(), "CONFIG_TCP_MD5SIG") {
			t.Fatalf("password on a kernel without MD5: %v, want ErrNoMD5", err)
		}
		if ss, _ := a.Sessions(ctx); len(ss) != 0 {
			t.Fatalf("a session was opened without its password: %+v", ss)
		}
		t.Log("kernel without TCP MD5: passwords refused with a clear error")
		return
	}
	a.SetNeighbors(ctx, []Neighbor{nb("192.0.2.22", "s3cret"), nb("192.0.2.23", "s3cret")})
	good.SetNeighbors(ctx, []Neighbor{nb("192.0.2.21", "s3cret")})
	bad.SetNeighbors(ctx, []Neighbor{nb("192.0.2.21", "wrong")})
	eventually(t, "the right password establishes the session", func() error {
		ss, _ := a.Sessions(ctx)
		for _, s := range ss {
			if s.Neighbor.Address.String() == "192.0.2.22" && s.Established {
				return nil
			}
		}
		return fmt.Errorf("sessions %+v", ss)
	})
	time.Sleep(3 * time.Second)
	ss, _ := a.Sessions(ctx)
	for _, s := range ss {
		if s.Neighbor.Address.String() == "192.0.2.23" && s.Established {
			t.Errorf("session with a wrong MD5 password came up")
		}
	}
}

// dualStack are the cluster CIDRs of the tests that run per family.
var dualStack = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")}

// familyCase is one family's addresses for a test that runs per family:
// speaker i has router ID ids[i] and peers over addrs[i] (its IPv4 or
// IPv6 address); blocks are of that family.
type familyCase struct {
	name   string
	ids    []string
	addrs  []string
	blocks []string
}

func (fc familyCase) start(t *testing.T, ctx context.Context, i int, cfg Config) *Speaker {
	t.Helper()
	cfg.ClusterCIDRs = dualStack
	cfg.ListenAddrs = []netip.Addr{netip.MustParseAddr(fc.addrs[i])}
	return start(t, ctx, fc.ids[i], cfg)
}

func (fc familyCase) lo(t *testing.T) {
	setupLo(t, append(slices.Clone(fc.ids), fc.addrs...)...)
}

// A node with two external routers passes neither one's routes to the
// other (no transit), only its own block; on the cluster's edge, every
// block SetExport names, still none of the routers' own. Per family: the
// export policy exists once per family.
func TestNoTransit(t *testing.T) {
	for _, fc := range []familyCase{
		{"IPv4", []string{"192.0.2.31", "192.0.2.32", "192.0.2.33"}, []string{"192.0.2.31", "192.0.2.32", "192.0.2.33"}, []string{"10.244.1.0/24", "10.244.7.0/24"}},
		{"IPv6", []string{"192.0.2.131", "192.0.2.132", "192.0.2.133"}, []string{"fd00:2::131", "fd00:2::132", "fd00:2::133"}, []string{"fd00:244:0:1::/64", "fd00:244:0:7::/64"}},
	} {
		t.Run(fc.name, func(t *testing.T) {
			fc.lo(t)
			ctx := context.Background()
			node := fc.start(t, ctx, 0, Config{})
			r1 := fc.start(t, ctx, 1, Config{AcceptForeign: true, ASN: 64601})
			r2 := fc.start(t, ctx, 2, Config{AcceptForeign: true, ASN: 64602})
			ext := func(i int, asn uint32) Neighbor {
				return Neighbor{Address: netip.MustParseAddr(fc.addrs[i]), ASN: asn, External: true}
			}
			if err := node.SetNeighbors(ctx, []Neighbor{ext(1, 64601), ext(2, 64602)}); err != nil {
				t.Fatal(err)
			}
			own, other := netip.MustParsePrefix(fc.blocks[0]), netip.MustParsePrefix(fc.blocks[1])
			for _, r := range []*Speaker{r1, r2} {
				r.SetNeighbors(ctx, []Neighbor{ext(0, 64512)})
			}
			// r1 carries another node's block (as a router between segments does).
			r1.Announce(ctx, other)
			r1.SetExport(ctx, []netip.Prefix{other})
			node.Announce(ctx, own)
			node.SetExport(ctx, []netip.Prefix{own})
			ownVia := fmt.Sprintf("%s via %s from %s", own, fc.addrs[0], fc.addrs[0])
			eventually(t, "node learns r1's route and r2 learns node's block", func() error {
				if got, want := routesOf(node), fmt.Sprintf("%s via %s from %s", other, fc.addrs[1], fc.addrs[1]); got != want {
					return fmt.Errorf("node: %s, want %s", got, want)
				}
				if got := routesOf(r2); got != ownVia {
					return fmt.Errorf("r2: %s, want %s", got, ownVia)
				}
				return nil
			})
			time.Sleep(time.Second) // anything more would have followed by now
			if got := routesOf(r2); strings.Contains(got, other.String()) {
				t.Fatalf("node is a transit: r2 learned r1's route through it: %s", got)
			}
			// The edge announces every block it is told to; when the block goes
			// away (its path withdrawn, its lease gone), so does the route.
			node.SetExport(ctx, []netip.Prefix{own, other})
			eventually(t, "the edge announces the other block", func() error {
				if got := routesOf(r2); !strings.Contains(got, other.String()+" via "+fc.addrs[0]) {
					return fmt.Errorf("r2: %s", got)
				}
				return nil
			})
			node.SetExport(ctx, []netip.Prefix{own})
			r1.Withdraw(ctx, other)
			eventually(t, "the edge withdraws it", func() error {
				if got := routesOf(r2); got != ownVia {
					return fmt.Errorf("r2: %s", got)
				}
				return nil
			})
		})
	}
}

// A speaker started as a restart tells its routers that forwarding was
// preserved (the F bit of the graceful restart capability, RFC 4724) for
// the family of the session; a fresh one must not.
func TestRestartedSetsForwardingBit(t *testing.T) {
	for _, fc := range []familyCase{
		{"IPv4", []string{"192.0.2.51", "192.0.2.52", "192.0.2.53"}, []string{"192.0.2.51", "192.0.2.52", "192.0.2.53"}, nil},
		{"IPv6", []string{"192.0.2.151", "192.0.2.152", "192.0.2.153"}, []string{"fd00:2::151", "fd00:2::152", "fd00:2::153"}, nil},
	} {
		t.Run(fc.name, func(t *testing.T) {
			fc.lo(t)
			ctx := context.Background()
			helper := fc.start(t, ctx, 0, Config{})
			fresh := fc.start(t, ctx, 1, Config{})
			restarted := fc.start(t, ctx, 2, Config{Restarted: true})
			n := func(i int) Neighbor { return Neighbor{Address: netip.MustParseAddr(fc.addrs[i]), ASN: 64512} }
			router := Neighbor{Address: netip.MustParseAddr(fc.addrs[0]), ASN: 64512, External: true}
			helper.SetNeighbors(ctx, []Neighbor{n(1), n(2)})
			fresh.SetNeighbors(ctx, []Neighbor{router})
			restarted.SetNeighbors(ctx, []Neighbor{router})
			eventually(t, "sessions up", func() error {
				ss, _ := helper.Sessions(ctx)
				if len(ss) != 2 || !ss[0].Established || !ss[1].Established {
					return fmt.Errorf("%+v", ss)
				}
				return nil
			})
			// flags of the remote graceful restart capability, per neighbor
			// and family ("192.0.2.53 afi 1").
			flags := map[string]uint32{}
			err := helper.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
				for _, c := range p.GetState().GetRemoteCap() {
					var gr api.GracefulRestartCapability
					if c.UnmarshalTo(&gr) == nil {
						for _, tu := range gr.Tuples {
							flags[fmt.Sprintf("%s afi %d", p.GetConf().GetNeighborAddress(), tu.GetFamily().GetAfi())] = tu.Flags
						}
					}
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			afi := api.Family_AFI_IP
			if netip.MustParseAddr(fc.addrs[0]).Is6() {
				afi = api.Family_AFI_IP6
			}
			key := func(i int) string { return fmt.Sprintf("%s afi %d", fc.addrs[i], afi) }
			if len(flags) != 2 {
				t.Errorf("graceful restart tuples %v, want one per session, of family %s", flags, afi)
			}
			if f, ok := flags[key(2)]; !ok || f&0x80 == 0 {
				t.Errorf("restarted speaker: %s forwarding state not preserved (flags %#x, tuples %v)", fc.name, f, flags)
			}
			if flags[key(1)]&0x80 != 0 {
				t.Errorf("fresh speaker claims preserved forwarding state (flags %#x)", flags[key(1)])
			}
		})
	}
}

// A restarted speaker's router session that comes up only after another
// one has finished the restart (its End-of-RIB in) still restarts: its
// router is told forwarding was preserved. GoBGP alone would have ended
// the restart for it too and told it "not preserved", and the router
// would flush this node's routes. Here the second router is the IPv6
// session of a dual-stack node.
func TestRestartedSessionComingUpLater(t *testing.T) {
	setupLo(t, "192.0.2.81", "fd00:2::81", "192.0.2.82", "192.0.2.83", "fd00:2::83")
	ctx := context.Background()
	addr := netip.MustParseAddr
	node := start(t, ctx, "192.0.2.81", Config{Restarted: true, ClusterCIDRs: dualStack, ListenAddrs: []netip.Addr{addr("192.0.2.81"), addr("fd00:2::81")}})
	r1 := start(t, ctx, "192.0.2.82", Config{ClusterCIDRs: dualStack})
	r2 := start(t, ctx, "192.0.2.83", Config{ClusterCIDRs: dualStack, ListenAddrs: []netip.Addr{addr("fd00:2::83")}})
	node.SetNeighbors(ctx, []Neighbor{{Address: addr("192.0.2.82"), ASN: 64512, External: true}, {Address: addr("fd00:2::83"), ASN: 64512, External: true}})
	r1.SetNeighbors(ctx, []Neighbor{{Address: addr("192.0.2.81"), ASN: 64512}})
	eventually(t, "the IPv4 router's session up and its routes in", func() error {
		ss, _ := node.Sessions(ctx)
		for _, s := range ss {
			if s.Neighbor.Address == addr("192.0.2.82") && s.Established && s.EndOfRIB {
				return nil
			}
		}
		return fmt.Errorf("%+v", ss)
	})
	time.Sleep(500 * time.Millisecond)
	r2.SetNeighbors(ctx, []Neighbor{{Address: addr("fd00:2::81"), ASN: 64512}})
	eventually(t, "the IPv6 router's session up", func() error {
		ss, _ := r2.Sessions(ctx)
		if len(ss) != 1 || !ss[0].Established {
			return fmt.Errorf("%+v", ss)
		}
		return nil
	})
	var flags []uint32
	r2.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		for _, c := range p.GetState().GetRemoteCap() {
			var gr api.GracefulRestartCapability
			if c.UnmarshalTo(&gr) == nil {
				for _, tu := range gr.Tuples {
					flags = append(flags, tu.Flags)
				}
			}
		}
	})
	if len(flags) != 1 || flags[0]&0x80 == 0 {
		t.Errorf("the router whose session came up later: IPv6 forwarding state not preserved (tuple flags %#x)", flags)
	}
}

// Sessions count what FRR counts: a peer that announces nothing has
// received 0 (no End-of-RIB marker), and what it is sent is the prefixes.
func TestSessionCounts(t *testing.T) {
	setupLo(t, "192.0.2.61", "192.0.2.62")
	ctx := context.Background()
	a := start(t, ctx, "192.0.2.61", Config{})
	b := start(t, ctx, "192.0.2.62", Config{})
	n := func(ip string) Neighbor { return Neighbor{Address: netip.MustParseAddr(ip), ASN: 64512} }
	a.SetNeighbors(ctx, []Neighbor{n("192.0.2.62")})
	b.SetNeighbors(ctx, []Neighbor{n("192.0.2.61")})
	b.Announce(ctx, netip.MustParsePrefix("10.244.2.0/24"))
	eventually(t, "counts", func() error {
		as, _ := a.Sessions(ctx)
		bs, _ := b.Sessions(ctx)
		if len(as) != 1 || len(bs) != 1 || !as[0].Established || !as[0].EndOfRIB || !bs[0].EndOfRIB {
			return fmt.Errorf("a %+v b %+v", as, bs)
		}
		if as[0].Received != 1 || as[0].Advertised != 0 || bs[0].Received != 0 || bs[0].Advertised != 1 {
			return fmt.Errorf("a received %d advertised %d; b received %d advertised %d",
				as[0].Received, as[0].Advertised, bs[0].Received, bs[0].Advertised)
		}
		return nil
	})
}

// A session between nodes that drops (the peer restarted) is back within
// a few seconds, not held idle for GoBGP's 5s on each side.
func TestSessionBackQuickly(t *testing.T) {
	setupLo(t, "192.0.2.71", "192.0.2.72")
	ctx := context.Background()
	a := start(t, ctx, "192.0.2.71", Config{})
	b := start(t, ctx, "192.0.2.72", Config{})
	a.SetNeighbors(ctx, []Neighbor{{Address: netip.MustParseAddr("192.0.2.72"), ASN: 64512}})
	toA := []Neighbor{{Address: netip.MustParseAddr("192.0.2.71"), ASN: 64512, Passive: true}}
	b.SetNeighbors(ctx, toA)
	up := func() error {
		ss, _ := a.Sessions(ctx)
		if len(ss) != 1 || !ss[0].Established {
			return fmt.Errorf("%+v", ss)
		}
		return nil
	}
	eventually(t, "session up", up)
	// b goes away and comes back, as a restarted node does.
	b.SetNeighbors(ctx, nil)
	eventually(t, "session down", func() error {
		if up() == nil {
			return errors.New("still established")
		}
		return nil
	})
	t0 := time.Now()
	b.SetNeighbors(ctx, toA)
	eventually(t, "session back", up)
	if took := time.Since(t0); took > 4*time.Second {
		t.Errorf("session back after %s, want < 4s (1s idle hold + the 1-2s before GoBGP dials)", took)
	}
}

// Dual-stack: each pair of speakers has an IPv4 session carrying IPv4
// blocks and an IPv6 session carrying IPv6 blocks (MP-BGP), each with the
// announcing node's address of that family as next hop; the cluster
// policy holds per family, so a foreign IPv6 prefix or ::/0 is refused.
func TestDualStackFamilies(t *testing.T) {
	setupLo(t, "192.0.2.31", "192.0.2.32", "fd00:2::31", "fd00:2::32")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")}
	addrs := func(ip4, ip6 string) []netip.Addr {
		return []netip.Addr{netip.MustParseAddr(ip4), netip.MustParseAddr(ip6)}
	}
	a := start(t, ctx, "192.0.2.31", Config{ClusterCIDRs: cidrs, ListenAddrs: addrs("192.0.2.31", "fd00:2::31")})
	// b, a misbehaving router, sends a every prefix it has.
	b := start(t, ctx, "192.0.2.32", Config{ClusterCIDRs: cidrs, ListenAddrs: addrs("192.0.2.32", "fd00:2::32"), AcceptForeign: true})
	n := func(ip string) Neighbor { return Neighbor{Address: netip.MustParseAddr(ip), ASN: 64512} }
	if err := a.SetNeighbors(ctx, []Neighbor{n("192.0.2.32"), n("fd00:2::32")}); err != nil {
		t.Fatal(err)
	}
	ext := func(ip string) Neighbor {
		return Neighbor{Address: netip.MustParseAddr(ip), ASN: 64512, External: true}
	}
	if err := b.SetNeighbors(ctx, []Neighbor{ext("192.0.2.31"), ext("fd00:2::31")}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"10.244.1.0/24", "fd00:244:0:1::/64"} {
		if err := a.Announce(ctx, netip.MustParsePrefix(p)); err != nil {
			t.Fatal(err)
		}
	}
	var fromB []netip.Prefix
	for _, p := range []string{"10.244.2.0/24", "fd00:244:0:2::/64", "::/0", "2001:db8::/32"} {
		fromB = append(fromB, netip.MustParsePrefix(p))
		if err := b.Announce(ctx, netip.MustParsePrefix(p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.SetExport(ctx, fromB); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a learns b's blocks of both families, each via b's address of its family", func() error {
		if got, want := routesOf(a), "10.244.2.0/24 via 192.0.2.32 from 192.0.2.32, fd00:244:0:2::/64 via fd00:2::32 from fd00:2::32"; got != want {
			return fmt.Errorf("routes %s, want %s", got, want)
		}
		return nil
	})
	eventually(t, "b learns a's blocks", func() error {
		if got, want := routesOf(b), "10.244.1.0/24 via 192.0.2.31 from 192.0.2.31, fd00:244:0:1::/64 via fd00:2::31 from fd00:2::31"; got != want {
			return fmt.Errorf("routes %s, want %s", got, want)
		}
		return nil
	})
	// Each session counts its family's prefixes; received is before the
	// import policy (the bgp backend splits it).
	sess, err := a.Sessions(ctx)
	if err != nil || len(sess) != 2 || !sess[0].Established || !sess[1].Established || sess[1].Neighbor.Address.String() != "fd00:2::32" ||
		sess[0].Received != 1 || sess[1].Received != 3 || sess[0].Advertised != 1 || sess[1].Advertised != 1 {
		t.Errorf("sessions: %+v, %v", sess, err)
	}
	if err := a.Withdraw(ctx, netip.MustParsePrefix("fd00:244:0:1::/64")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "an IPv6 withdrawal reaches b", func() error {
		if got, want := routesOf(b), "10.244.1.0/24 via 192.0.2.31 from 192.0.2.31"; got != want {
			return fmt.Errorf("routes %s, want %s", got, want)
		}
		return nil
	})
}

// An IPv6 block cannot be announced by a speaker without an IPv6 address.
func TestAnnounceNeedsAddressOfFamily(t *testing.T) {
	setupLo(t, "192.0.2.41")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := start(t, ctx, "192.0.2.41", Config{})
	if err := a.Announce(ctx, netip.MustParsePrefix("fd00:244:0:1::/64")); err == nil || !strings.Contains(err.Error(), "no address of its family") {
		t.Fatalf("announce: %v", err)
	}
}

// A session between nodes comes up as soon as both sides have it
// configured: netd dials it itself (dial.go) instead of waiting GoBGP's
// random 1-2s before its first attempt; and when the neighbor does not
// know this node yet, an attempt it refuses leaves the session ready for
// the next one (retried within 250ms), not held idle for a second.
func TestSessionUpAtOnce(t *testing.T) {
	setupLo(t, "192.0.2.81", "192.0.2.82", "192.0.2.83", "fd00::81", "fd00::82")
	ctx := context.Background()
	// GoBGP's own first attempt comes 1s or more after the session is
	// configured, and a session whose connection was closed is held idle
	// for 1s; netd's attempt within milliseconds (a loaded machine
	// allowed).
	const within = 600 * time.Millisecond
	up := func(s *Speaker, peer string) func() error {
		return func() error {
			ss, _ := s.Sessions(ctx)
			for _, x := range ss {
				if x.Neighbor.Address.String() == peer && x.Established {
					return nil
				}
			}
			return fmt.Errorf("no session to %s established: %+v", peer, ss)
		}
	}
	quickly := func(t *testing.T, what string, t0 time.Time, cond func() error) {
		t.Helper()
		for time.Since(t0) < within {
			if cond() == nil {
				t.Logf("%s after %s", what, time.Since(t0).Round(time.Millisecond))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Errorf("%s: not within %s: %v", what, within, cond())
	}
	nb := func(ip string, passive bool) []Neighbor {
		return []Neighbor{{Address: netip.MustParseAddr(ip), ASN: 64512, Passive: passive}}
	}

	t.Run("neighbor ready first", func(t *testing.T) {
		a := start(t, ctx, "192.0.2.81", Config{})
		b := start(t, ctx, "192.0.2.82", Config{})
		if a.accept == nil {
			t.Fatal("GoBGP's queue of accepted connections not found (another GoBGP version?): sessions wait 1-2s for GoBGP to dial")
		}
		b.SetNeighbors(ctx, nb("192.0.2.81", true))
		t0 := time.Now()
		a.SetNeighbors(ctx, nb("192.0.2.82", false))
		quickly(t, "session up", t0, up(a, "192.0.2.82"))
	})
	t.Run("neighbor ready later", func(t *testing.T) {
		a := start(t, ctx, "192.0.2.81", Config{})
		c := start(t, ctx, "192.0.2.83", Config{})
		a.SetNeighbors(ctx, nb("192.0.2.83", false)) // c refuses a while
		time.Sleep(100 * time.Millisecond)
		t0 := time.Now()
		c.SetNeighbors(ctx, nb("192.0.2.81", true))
		quickly(t, "session up", t0, up(a, "192.0.2.83"))
	})
	t.Run("IPv6 with a password", func(t *testing.T) {
		if md5Supported() != nil {
			t.Skip("no TCP MD5 in this kernel")
		}
		a := start(t, ctx, "192.0.2.81", Config{ListenAddrs: []netip.Addr{netip.MustParseAddr("fd00::81")}, ClusterCIDRs: dualStack})
		b := start(t, ctx, "192.0.2.82", Config{ListenAddrs: []netip.Addr{netip.MustParseAddr("fd00::82")}, ClusterCIDRs: dualStack})
		pw := func(ns []Neighbor) []Neighbor { ns[0].Password = "s3cret,x"; return ns }
		b.SetNeighbors(ctx, pw(nb("fd00::81", true)))
		t0 := time.Now()
		a.SetNeighbors(ctx, pw(nb("fd00::82", false)))
		quickly(t, "session up", t0, up(a, "fd00::82"))
	})
}

// The side that waits for the connection keeps a 1s idle hold after
// the other side restarts, not GoBGP's 5s, repeatedly; also when the
// session came up before netd handled GoBGP's event that it waits (the
// other node dialed at once), which it then shortens when it drops.
func TestPassiveSideBackQuickly(t *testing.T) {
	setupLo(t, "192.0.2.91", "192.0.2.92")
	ctx := context.Background()
	a := start(t, ctx, "192.0.2.92", Config{}) // stays; passive
	toB := netip.MustParseAddr("192.0.2.91")
	up := func() error {
		ss, _ := a.Sessions(ctx)
		if len(ss) != 1 || !ss[0].Established {
			return fmt.Errorf("%+v", ss)
		}
		return nil
	}
	startB := func() *Speaker {
		// b starts afresh each time, as a restarted netd does.
		b, err := Start(ctx, Config{RouterID: toB, ListenPort: 1790,
			ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
			Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
		if err != nil {
			t.Fatal(err)
		}
		b.SetNeighbors(ctx, []Neighbor{{Address: netip.MustParseAddr("192.0.2.92"), ASN: 64512}})
		return b
	}
	// The session comes up while a handles no event: a's hold is GoBGP's.
	var b *Speaker
	for try := 0; ; try++ {
		a.SetNeighbors(ctx, []Neighbor{{Address: toB, ASN: 64512, Passive: true}})
		a.nodesMu.Lock() // holds a's event handling
		b = startB()
		eventually(t, "session up at b", func() error {
			if ss, _ := b.Sessions(ctx); len(ss) != 1 || !ss[0].Established {
				return fmt.Errorf("%+v", ss)
			}
			return nil
		})
		a.nodesMu.Unlock()
		eventually(t, "session up", up)
		time.Sleep(100 * time.Millisecond) // a handled its events
		a.nodesMu.Lock()
		short := a.nodes[toB].short
		a.nodesMu.Unlock()
		if !short {
			break
		}
		if try == 5 {
			t.Fatal("a handled the session's events before it came up, every time")
		}
		b.srv.Stop()
		a.SetNeighbors(ctx, nil)
	}
	for i := range 4 {
		time.Sleep(200 * time.Millisecond)
		b.srv.Stop()
		eventually(t, "session down", func() error {
			if up() == nil {
				return errors.New("still established")
			}
			return nil
		})
		t0 := time.Now()
		b = startB()
		eventually(t, "session up", up)
		took := time.Since(t0)
		t.Logf("restart %d: session back after %s", i, took.Round(time.Millisecond))
		// 1-1.1 s on an idle machine; 2.04 s once on a loaded one. The
		// bound tells a 1 s hold from GoBGP's 5 s with room for load.
		if took > 3500*time.Millisecond {
			t.Errorf("restart %d: session back after %s, want < 3.5s (a 1s idle hold, not GoBGP's 5s)", i, took)
		}
	}
	b.srv.Stop()
}
