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
	"strings"
	"testing"
	"time"
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

func routesOf(s *Speaker) string {
	rs, err := s.Routes(context.Background())
	if err != nil {
		return err.Error()
	}
	return fmt.Sprint(rs)
}

func TestMeshExchangesBlocksAndRejectsForeign(t *testing.T) {
	setupLo(t, "192.0.2.11", "192.0.2.12", "192.0.2.13")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := start(t, ctx, "192.0.2.11", Config{})
	b := start(t, ctx, "192.0.2.12", Config{})
	// A misbehaving peer: no policy of its own, announces a default route,
	// a foreign prefix and a block inside the cluster.
	rogue := start(t, ctx, "192.0.2.13", Config{AcceptForeign: true})
	n := func(ip string) Neighbor { return Neighbor{Address: netip.MustParseAddr(ip), ASN: 64512} }
	for _, s := range []*Speaker{a, b, rogue} {
		if err := s.SetNeighbors(ctx, []Neighbor{n("192.0.2.11"), n("192.0.2.12"), n("192.0.2.13")}); err != nil {
			t.Fatal(err)
		}
	}
	a.Announce(ctx, netip.MustParsePrefix("10.244.1.0/24"))
	b.Announce(ctx, netip.MustParsePrefix("10.244.2.0/24"))
	for _, p := range []string{"0.0.0.0/0", "198.51.100.0/24", "10.244.3.0/24"} {
		rogue.Announce(ctx, netip.MustParsePrefix(p))
	}
	want := "[{10.244.2.0/24 192.0.2.12 192.0.2.12} {10.244.3.0/24 192.0.2.13 192.0.2.13}]"
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
		if got := routesOf(a); got != "[{10.244.3.0/24 192.0.2.13 192.0.2.13}]" {
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
	b := start(t, ctx, "192.0.2.32", Config{ClusterCIDRs: cidrs, ListenAddrs: addrs("192.0.2.32", "fd00:2::32"), AcceptForeign: true})
	n := func(ip string) Neighbor { return Neighbor{Address: netip.MustParseAddr(ip), ASN: 64512} }
	if err := a.SetNeighbors(ctx, []Neighbor{n("192.0.2.32"), n("fd00:2::32")}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetNeighbors(ctx, []Neighbor{n("192.0.2.31"), n("fd00:2::31")}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"10.244.1.0/24", "fd00:244:0:1::/64"} {
		if err := a.Announce(ctx, netip.MustParsePrefix(p)); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"10.244.2.0/24", "fd00:244:0:2::/64", "::/0", "2001:db8::/32"} {
		if err := b.Announce(ctx, netip.MustParsePrefix(p)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "a learns b's blocks of both families, each via b's address of its family", func() error {
		if got, want := routesOf(a), "[{10.244.2.0/24 192.0.2.32 192.0.2.32} {fd00:244:0:2::/64 fd00:2::32 fd00:2::32}]"; got != want {
			return fmt.Errorf("routes %s, want %s", got, want)
		}
		return nil
	})
	eventually(t, "b learns a's blocks", func() error {
		if got, want := routesOf(b), "[{10.244.1.0/24 192.0.2.31 192.0.2.31} {fd00:244:0:1::/64 fd00:2::31 fd00:2::31}]"; got != want {
			return fmt.Errorf("routes %s, want %s", got, want)
		}
		return nil
	})
	sess, err := a.Sessions(ctx)
	if err != nil || len(sess) != 2 || !sess[0].Established || !sess[1].Established || sess[1].Neighbor.Address.String() != "fd00:2::32" {
		t.Errorf("sessions: %+v, %v", sess, err)
	}
	if err := a.Withdraw(ctx, netip.MustParsePrefix("fd00:244:0:1::/64")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "an IPv6 withdrawal reaches b", func() error {
		if got, want := routesOf(b), "[{10.244.1.0/24 192.0.2.31 192.0.2.31}]"; got != want {
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
