package firewall

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/berthnet/berth/internal/iptables"
	"github.com/berthnet/berth/internal/testenv"
)

// The guard's chain, without a namespace: arrivals on the underlay pass,
// then the VTEP port is dropped to the node itself and to each peer
// address of the table's family, sorted and once each.
func TestVTEPGuardRules(t *testing.T) {
	peers := []netip.Addr{
		netip.MustParseAddr("192.168.50.3"), netip.MustParseAddr("fd00:50::2"),
		netip.MustParseAddr("192.168.50.2"), netip.MustParseAddr("192.168.50.3"),
	}
	for _, tc := range []struct {
		name   string
		g      VTEPGuard
		family iptables.Family
		want   []string
	}{
		{"no peers yet", VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0"}, iptables.IPv4, []string{
			"-i eth0 -j RETURN",
			"-p udp -m udp --dport 8472 -m addrtype --dst-type LOCAL,BROADCAST,MULTICAST -j DROP",
		}},
		{"IPv4 peers", VTEPGuard{Network: "pods", Port: 4789, Underlay: "ens3", Peers: peers}, iptables.IPv4, []string{
			"-i ens3 -j RETURN",
			"-p udp -m udp --dport 4789 -m addrtype --dst-type LOCAL,BROADCAST,MULTICAST -j DROP",
			"-d 192.168.50.2/32 -p udp -m udp --dport 4789 -j DROP",
			"-d 192.168.50.3/32 -p udp -m udp --dport 4789 -j DROP",
		}},
		{"IPv6 peers (berth6.<vni>)", VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0", Peers: peers}, iptables.IPv6, []string{
			"-i eth0 -j RETURN",
			"-p udp -m udp --dport 8472 -m addrtype --dst-type LOCAL -j DROP",
			"-p udp -m udp --dport 8472 -m addrtype --dst-type MULTICAST -j DROP",
			"-d fd00:50::2/128 -p udp -m udp --dport 8472 -j DROP",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.g.Rules(tc.family); !slices.Equal(got, tc.want) {
				t.Errorf("%s rules:\n got %q\nwant %q", tc.family, got, tc.want)
			}
		})
	}
}

// In a namespace: the chain as iptables-save prints it is what Rules
// says (so that a pass over unchanged rules commits nothing), a flush of
// the raw table is repaired, a new peer is added, the plugins' rules of
// a network's last container leave it alone, and Remove takes it away in
// both families.
func TestVTEPGuardEnsureAndRemove(t *testing.T) {
	n := testenv.NewNS(t)
	g := VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0", Peers: []netip.Addr{netip.MustParseAddr("192.168.50.2"), netip.MustParseAddr("fd00:50::2")}}
	ensure := func(want bool) {
		t.Helper()
		var changed bool
		if err := in(n, func() (err error) { changed, err = EnsureVTEPGuard(g); return err }); err != nil {
			t.Fatal(err)
		}
		if changed != want {
			t.Errorf("EnsureVTEPGuard changed %v, want %v", changed, want)
		}
		for _, f := range families {
			raw := saveFamily(t, n, f).Get("raw")
			if got := raw.Rules(GuardChain("pods")); !slices.Equal(got, g.Rules(f)) {
				t.Errorf("%s raw %s:\n got %q\nwant %q", f, GuardChain("pods"), got, g.Rules(f))
			}
			if r := raw.Rules("PREROUTING"); len(r) == 0 || r[0] != "-j "+GuardChain("pods") {
				t.Errorf("%s raw PREROUTING must jump to the guard first: %q", f, r)
			}
		}
	}
	ensure(true)
	ensure(false) // again: no commit
	testenv.InNS(n, "iptables", "-t", "raw", "-F")
	testenv.InNS(n, "ip6tables", "-t", "raw", "-F")
	ensure(true)
	g.Peers = append(g.Peers, netip.MustParseAddr("192.168.50.3"))
	ensure(true)

	// A network's rules come and go beside it.
	a := dualStack("a", "10.1.0.0/24", "fd00:1::/64")
	if err := in(n, func() error { return Ensure(a, nil) }); err != nil {
		t.Fatal(err)
	}
	if err := in(n, func() error { return RemoveNetwork("a", func() bool { return true }) }); err != nil {
		t.Fatal(err)
	}
	ensure(false)

	for range 2 { // the second time finds nothing
		if err := in(n, func() error { return RemoveVTEPGuard("pods") }); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range families {
		ts := saveFamily(t, n, f)
		if got := berthChains(ts); len(got) != 0 {
			t.Errorf("%s chains left: %v", f, got)
		}
		if r := ts.Get("raw").Rules("PREROUTING"); len(r) != 0 {
			t.Errorf("%s raw PREROUTING keeps %q", f, r)
		}
	}
}
