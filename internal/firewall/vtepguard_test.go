package firewall

import (
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/testenv"
)

var (
	peer4a, peer4b = netip.MustParseAddr("192.168.50.2"), netip.MustParseAddr("192.168.50.3")
	peer6a         = netip.MustParseAddr("fd00:50::2")
)

// The guard's chain, without a namespace: arrivals on the underlay pass,
// then the VTEP port is dropped on links containers or tunnels sit
// behind, then the peers' VXLAN of each family passes, then the VTEP
// port is dropped, whatever the destination.
func TestVTEPGuardRules(t *testing.T) {
	set := "@" + GuardChain("pods")
	kinds := func(port string) []string {
		var r []string
		for _, k := range []string{"veth", "netkit", "bridge", "tun", "vxlan", "geneve", "gre", "gretap", "ip6gre", "ip6gretap",
			"erspan", "ip6erspan", "ipip", "ip6tnl", "sit", "vti", "vti6", "xfrm", "wireguard"} {
			r = append(r, "udp dport "+port+` meta iifkind "`+k+`" drop`)
		}
		return r
	}
	for _, tc := range []struct {
		name string
		g    VTEPGuard
		want []string
	}{
		{"vxlan default port", VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0"},
			slices.Concat([]string{`iifname "eth0" return`}, kinds("8472"),
				[]string{"udp dport 8472 ip saddr " + set + "-v4 return", "udp dport 8472 ip6 saddr " + set + "-v6 return", "udp dport 8472 drop"})},
		{"IANA port, peers", VTEPGuard{Network: "pods", Port: 4789, Underlay: "ens3", Peers: []netip.Addr{peer4a, peer6a}},
			slices.Concat([]string{`iifname "ens3" return`}, kinds("4789"),
				[]string{"udp dport 4789 ip saddr " + set + "-v4 return", "udp dport 4789 ip6 saddr " + set + "-v6 return", "udp dport 4789 drop"})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.g.Rules(); !slices.Equal(got, tc.want) {
				t.Errorf("rules:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// The peers of a family, whatever order, duplicates or IPv4-mapped
// forms netd passes: each once, sorted.
func TestVTEPGuardPeers(t *testing.T) {
	g := VTEPGuard{Peers: []netip.Addr{peer4b, peer6a, netip.AddrFrom16(peer4a.As16()), peer4b, {}, peer4a}}
	if got, want := g.peers(false), []netip.Addr{peer4a, peer4b}; !slices.Equal(got, want) {
		t.Errorf("IPv4 peers %v, want %v", got, want)
	}
	if got, want := g.peers(true), []netip.Addr{peer6a}; !slices.Equal(got, want) {
		t.Errorf("IPv6 peers %v, want %v", got, want)
	}
}

// What netd's event passes take for an unchanged guard, which they do
// not write (SameChain, then no peer change): the peers' order and form
// do not count, anything else does.
func TestVTEPGuardUnchanged(t *testing.T) {
	g := VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0", Peers: []netip.Addr{peer4a, peer6a}}
	for _, tc := range []struct {
		name string
		o    VTEPGuard
		want bool
	}{
		{"same", g, true},
		{"peers in another order, twice, IPv4-mapped", VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0",
			Peers: []netip.Addr{peer6a, netip.AddrFrom16(peer4a.As16()), peer4a}}, true},
		{"a peer more", VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0", Peers: []netip.Addr{peer4a, peer4b, peer6a}}, false},
		{"another peer instead", VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0", Peers: []netip.Addr{peer4b, peer6a}}, false},
		{"a peer less", VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0", Peers: []netip.Addr{peer4a}}, false},
		{"another underlay", VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth1", Peers: g.Peers}, false},
		{"another port", VTEPGuard{Network: "pods", Port: 4789, Underlay: "eth0", Peers: g.Peers}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := g.SameChain(tc.o) && peerChange(tc.o.Peers, g.Peers).none(); got != tc.want {
				t.Errorf("unchanged %v, want %v", got, tc.want)
			}
		})
	}
}

// The comparison with the kernel, without a namespace: equal writes
// nothing, peers that differ change the sets' elements, anything else
// rewrites the chain and its sets.
func TestGuardDiff(t *testing.T) {
	g := VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0", Peers: []netip.Addr{peer6a, peer4a}}
	same := VTEPGuardState{Chain: right, Rules: g.Rules(), Peers: []netip.Addr{peer4a, peer6a}, sets: [2]setState{rightSet, rightSet}}
	for _, r := range g.rules() {
		same.exprs = append(same.exprs, r.exprs)
	}
	with := func(change func(*VTEPGuardState)) VTEPGuardState {
		s := same
		s.Rules, s.exprs, s.Peers = slices.Clone(s.Rules), slices.Clone(s.exprs), slices.Clone(s.Peers)
		change(&s)
		return s
	}
	rewrite := guardChange{rewrite: true}
	// The rules' places: the first kind's, the IPv4 peers', the last.
	kind, peers, last := 1, 1+len(untrustedKinds), len(same.Rules)-1
	for _, tc := range []struct {
		name string
		have VTEPGuardState
		want guardChange
	}{
		{"equal", same, guardChange{}},
		{"no table", VTEPGuardState{}, rewrite},
		{"flushed chain", with(func(s *VTEPGuardState) { s.Rules, s.exprs = nil, nil }), rewrite},
		{"a rule changed", with(func(s *VTEPGuardState) { s.Rules[last] = "udp dport 8472 accept" }), rewrite},
		{"a rule's expressions changed under berth's comment", with(func(s *VTEPGuardState) {
			s.exprs[last] = slices.Concat(s.exprs[last][:len(s.exprs[last])-1], []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}})
		}), rewrite},
		{"another port under berth's comment", with(func(s *VTEPGuardState) {
			s.exprs[last] = VTEPGuard{Network: "pods", Port: 4789, Underlay: "eth0"}.rules()[last].exprs
		}), rewrite},
		{"another set under berth's comment", with(func(s *VTEPGuardState) {
			s.exprs[peers] = VTEPGuard{Network: "other", Port: 8472, Underlay: "eth0"}.rules()[peers].exprs
		}), rewrite},
		{"a kind's rule missing", with(func(s *VTEPGuardState) {
			s.Rules, s.exprs = slices.Delete(s.Rules, kind, kind+1), slices.Delete(s.exprs, kind, kind+1)
		}), rewrite},
		{"another kind under berth's comment", with(func(s *VTEPGuardState) {
			s.exprs[kind] = slices.Clone(s.exprs[kind])
			s.exprs[kind][5] = &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte("macvlan\x00\x00\x00\x00\x00\x00\x00\x00\x00")}
		}), rewrite},
		{"a rule without berth's comment", with(func(s *VTEPGuardState) { s.Rules[0] = "" }), rewrite},
		{"chain on another hook", with(func(s *VTEPGuardState) { s.Chain = different }), rewrite},
		{"an IPv6 set missing", with(func(s *VTEPGuardState) { s.sets[1], s.Peers = noSet, s.Peers[:1] }), rewrite},
		{"an IPv4 set of another type", with(func(s *VTEPGuardState) { s.sets[0] = otherSet }), rewrite},
		{"a peer joined", with(func(s *VTEPGuardState) { s.Peers = s.Peers[1:] }), guardChange{add: []netip.Addr{peer4a}}},
		{"a peer left, a set's element added by hand", with(func(s *VTEPGuardState) {
			s.Peers = []netip.Addr{peer4a, peer4b, peer6a}
		}), guardChange{del: []netip.Addr{peer4b}}},
		{"both", with(func(s *VTEPGuardState) { s.Peers = []netip.Addr{peer4b} }), guardChange{add: []netip.Addr{peer4a, peer6a}, del: []netip.Addr{peer4b}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := g.diff(tc.have); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("diff: rewrite %v, add %v, del %v; want rewrite %v, add %v, del %v", got.rewrite, got.add, got.del, tc.want.rewrite, tc.want.add, tc.want.del)
			}
		})
	}
}

// In a namespace: the kernel reads back what Rules says and the peers
// (so that a pass over an unchanged guard writes nothing), peers that
// join and leave change the sets' elements only, an element added by
// hand shows as pending and goes, a flushed or deleted table or a set
// of another type is repaired, the plugins' iptables rules leave it
// alone, and Remove takes the network's guard away, keeps another
// network's, and removes the table with the last one.
func TestVTEPGuardEnsureAndRemove(t *testing.T) {
	n := testenv.NewNS(t)
	g := VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0", Peers: []netip.Addr{peer4a, peer6a}}
	ensure := func(g VTEPGuard, want ...string) {
		t.Helper()
		var changed []string
		if err := in(n, func() (err error) { changed, err = EnsureVTEPGuard(g); return err }); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(changed, want) {
			t.Errorf("EnsureVTEPGuard changed %q, want %q", changed, want)
		}
		var s VTEPGuardState
		if err := in(n, func() (err error) { s, err = ReadVTEPGuard(g.Network); return err }); err != nil {
			t.Fatal(err)
		}
		if !s.Exists() || !slices.Equal(s.Rules, g.Rules()) || !g.diff(s).none() {
			t.Errorf("the kernel has %+v, want the rules %q and the peers %v", s, g.Rules(), g.Peers)
		}
	}
	nft := func(do func(c *nftables.Conn) error) {
		t.Helper()
		if err := in(n, func() error {
			c := newConn()
			if err := do(c); err != nil {
				return err
			}
			return c.Flush()
		}); err != nil {
			t.Fatal(err)
		}
	}
	pending := func(want ...string) {
		t.Helper()
		var got []string
		if err := in(n, func() (err error) { got, err = PendingVTEPGuard(g); return err }); err != nil || !slices.Equal(got, want) {
			t.Errorf("pending %q %v, want %q", got, err, want)
		}
	}
	chain := "VTEP guard inet berth " + GuardChain("pods") + ": "
	written := chain + "written (port 8472, from the peers 192.168.50.2, fd00:50::2 on uplinks or over eth0 only)"
	ensure(g, written)
	ensure(g) // again: no write
	pending()

	// A peer joins, another leaves.
	g.Peers = []netip.Addr{peer6a, peer4b, peer4a}
	ensure(g, chain+"peers 192.168.50.3 let in")
	g.Peers = []netip.Addr{peer4b, peer6a}
	ensure(g, chain+"peers 192.168.50.2 no longer let in")

	// An element added by hand: status sees it, Ensure takes it out.
	nft(func(c *nftables.Conn) error {
		return c.SetAddElements(guardSet("pods", false), []nftables.SetElement{{Key: netip.MustParseAddr("10.9.9.9").AsSlice()}})
	})
	pending(chain + "peers 10.9.9.9 no longer let in")
	ensure(g, chain+"peers 10.9.9.9 no longer let in")

	written = chain + "written (port 8472, from the peers 192.168.50.3, fd00:50::2 on uplinks or over eth0 only)"
	// A kind's rule deleted by hand: peers' addresses would pass on veths.
	nft(func(c *nftables.Conn) error {
		rules, err := c.GetRules(guardTable, guardChain("pods"))
		if err != nil {
			return err
		}
		for _, r := range rules {
			if text, _ := userdata.GetString(r.UserData, userdata.TypeComment); text == `udp dport 8472 meta iifkind "veth" drop` {
				return c.DelRule(r)
			}
		}
		return fmt.Errorf("no veth rule in %q", g.Rules())
	})
	pending(written)
	ensure(g, written)
	nft(func(c *nftables.Conn) error { c.FlushTable(guardTable); return nil })
	pending(written)
	ensure(g, written)
	pending()
	nft(func(c *nftables.Conn) error { c.DelTable(guardTable); return nil })
	ensure(g, written)
	// A set of another type under the guard's name.
	nft(func(c *nftables.Conn) error {
		c.FlushChain(guardChain("pods"))
		c.DelSet(guardSet("pods", true))
		return c.AddSet(&nftables.Set{Table: guardTable, Name: GuardSet("pods", true), KeyType: nftables.TypeIPAddr}, nil)
	})
	ensure(g, written)
	// A set of the right type with a size too small for the peers: adding
	// the second peer failed on every pass until it was made anew.
	nft(func(c *nftables.Conn) error {
		c.FlushChain(guardChain("pods"))
		c.DelSet(guardSet("pods", false))
		return c.AddSet(&nftables.Set{Table: guardTable, Name: GuardSet("pods", false), KeyType: nftables.TypeIPAddr, Size: 1}, nil)
	})
	g.Peers = []netip.Addr{peer4a, peer4b, peer6a}
	ensure(g, chain+"written (port 8472, from the peers 192.168.50.2, 192.168.50.3, fd00:50::2 on uplinks or over eth0 only)")
	g.Peers = []netip.Addr{peer4b, peer6a}
	ensure(g, chain+"peers 192.168.50.2 no longer let in")
	other := VTEPGuard{Network: "other", Port: 4789, Underlay: "eth1", Peers: []netip.Addr{peer4a}}
	otherWritten := "VTEP guard inet berth " + GuardChain("other") + ": written (port 4789, from the peers 192.168.50.2 on uplinks or over eth1 only)"
	ensure(other, otherWritten)
	// Rewritten over its sets, one of them without elements.
	nft(func(c *nftables.Conn) error { c.FlushChain(guardChain("other")); return nil })
	ensure(other, otherWritten)
	ensure(g) // untouched

	// A network's iptables rules come and go beside it.
	a := dualStack("a", "10.1.0.0/24", "fd00:1::/64")
	if err := in(n, func() error { return Ensure(a, nil) }); err != nil {
		t.Fatal(err)
	}
	if err := in(n, func() error { return RemoveNetwork("a", func() bool { return true }) }); err != nil {
		t.Fatal(err)
	}
	ensure(g)

	for range 2 { // the second time finds nothing
		if err := in(n, func() error { return RemoveVTEPGuard("pods") }); err != nil {
			t.Fatal(err)
		}
	}
	var pods, kept VTEPGuardState
	if err := in(n, func() (err error) {
		if pods, err = ReadVTEPGuard("pods"); err == nil {
			kept, err = ReadVTEPGuard("other")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if pods.Chain != absent || pods.sets != [2]setState{noSet, noSet} {
		t.Errorf("pods' guard left: %+v", pods)
	}
	if !kept.Exists() || !other.diff(kept).none() {
		t.Errorf("removed another network's guard: %+v", kept)
	}
	if err := in(n, func() error { return RemoveVTEPGuard("other") }); err != nil {
		t.Fatal(err)
	}
	if err := in(n, func() error {
		ok, err := hasGuardTable(newConn())
		if err == nil && ok {
			t.Errorf("table inet %s left after the last network's guard", GuardTable)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// In namespaces, with packets: UDP to the VTEP port from a peer's
// address passes on a macvlan (an uplink's kind) and on lo (no kind, as
// a physical NIC: the kind's meta expression does not match) and is
// dropped on a veth (a container's kind); from an address no peer has it
// is dropped on every link but the underlay link, which passes it
// whatever its kind (a veth here, as a nested node's uplink). Both
// families.
func TestVTEPGuardLinkKinds(t *testing.T) {
	node, sender := testenv.NewNS(t), testenv.NewNS(t)
	testenv.Link(t, sender, "v0", "10.0.0.2/24", node, "v0", "10.0.0.1/24")
	testenv.AddAddr(t, sender, "v0", "fd00:a::2/64")
	testenv.AddAddr(t, node, "v0", "fd00:a::1/64")
	testenv.Link(t, sender, "w1", "10.0.1.2/24", node, "u1", "")
	for _, a := range []string{"10.0.1.3/24", "fd00:b::2/64", "fd00:b::3/64"} {
		testenv.AddAddr(t, sender, "w1", a)
	}
	var mv1 net.HardwareAddr
	if err := in(node, func() error {
		u1, err := netlink.LinkByName("u1")
		if err != nil {
			return err
		}
		la := netlink.NewLinkAttrs()
		la.Name, la.ParentIndex = "mv1", u1.Attrs().Index
		if err := netlink.LinkAdd(&netlink.Macvlan{LinkAttrs: la, Mode: netlink.MACVLAN_MODE_BRIDGE}); err != nil {
			return err
		}
		mv, err := netlink.LinkByName("mv1")
		mv1 = mv.Attrs().HardwareAddr
		return err
	}); err != nil {
		t.Fatal(err)
	}
	testenv.AddAddr(t, node, "mv1", "10.0.1.1/24")
	testenv.AddAddr(t, node, "mv1", "fd00:b::1/64")
	// u1 answers ARP for mv1's address too (arp_ignore 0): the sender is
	// to reach it at mv1's MAC, so that packets arrive on mv1.
	if err := in(sender, func() error {
		w1, err := netlink.LinkByName("w1")
		if err != nil {
			return err
		}
		for _, ip := range []string{"10.0.1.1", "fd00:b::1"} {
			if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: w1.Attrs().Index, IP: net.ParseIP(ip), HardwareAddr: mv1, State: netlink.NUD_PERMANENT}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var conn *net.UDPConn
	if err := in(node, func() (err error) { conn, err = net.ListenUDP("udp", &net.UDPAddr{Port: 8472}); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	addr := netip.MustParseAddr
	peers := []netip.Addr{addr("10.0.0.2"), addr("10.0.1.2"), addr("127.0.0.1"), addr("fd00:a::2"), addr("fd00:b::2"), addr("::1")}
	payload := 0
	for _, tc := range []struct {
		name     string
		underlay string
		from     ns.NetNS
		src, dst netip.Addr
		want     bool
	}{
		{"a peer on a veth", "eth0", sender, addr("10.0.0.2"), addr("10.0.0.1"), false},
		{"a peer on a veth, IPv6", "eth0", sender, addr("fd00:a::2"), addr("fd00:a::1"), false},
		{"a peer on a macvlan", "eth0", sender, addr("10.0.1.2"), addr("10.0.1.1"), true},
		{"a peer on a macvlan, IPv6", "eth0", sender, addr("fd00:b::2"), addr("fd00:b::1"), true},
		{"no peer on a macvlan", "eth0", sender, addr("10.0.1.3"), addr("10.0.1.1"), false},
		{"no peer on a macvlan, IPv6", "eth0", sender, addr("fd00:b::3"), addr("fd00:b::1"), false},
		{"a peer on lo, without kind", "eth0", node, addr("127.0.0.1"), addr("127.0.0.1"), true},
		{"a peer on lo, without kind, IPv6", "eth0", node, addr("::1"), addr("::1"), true},
		{"no peer on lo", "eth0", node, addr("127.0.0.2"), addr("127.0.0.1"), false},
		{"no peer on the underlay, a veth", "v0", sender, addr("fd00:a::2"), addr("fd00:a::1"), true},
		{"no peer on the underlay, a veth, IPv4", "v0", sender, addr("10.0.0.2"), addr("10.0.0.1"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := VTEPGuard{Network: "pods", Port: 8472, Underlay: tc.underlay, Peers: peers}
			if tc.underlay != "eth0" {
				g.Peers = nil
			}
			if err := in(node, func() error { _, err := EnsureVTEPGuard(g); return err }); err != nil {
				t.Fatal(err)
			}
			payload++
			want := fmt.Sprint(payload)
			if err := in(tc.from, func() error {
				c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(tc.src, 0)), net.UDPAddrFromAddrPort(netip.AddrPortFrom(tc.dst, 8472)))
				if err != nil {
					return err
				}
				defer c.Close()
				for range 3 {
					if _, err := c.Write([]byte(want)); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			got := false
			buf := make([]byte, 16)
			for deadline := time.Now().Add(300 * time.Millisecond); ; {
				if err := conn.SetReadDeadline(deadline); err != nil {
					t.Fatal(err)
				}
				n, _, err := conn.ReadFromUDPAddrPort(buf)
				if err != nil {
					break
				}
				got = got || string(buf[:n]) == want
			}
			if got != tc.want {
				t.Errorf("UDP from %s to %s:8472, underlay %s, peers %v: arrived %v, want %v", tc.src, tc.dst, tc.underlay, g.Peers, got, tc.want)
			}
		})
	}
}

// UpdateVTEPGuardPeers adds and deletes the peers' elements without
// reading the kernel, and fails, changing nothing, when the kernel's sets
// are not the guard it was told was last written; EnsureVTEPGuard then
// repairs them.
func TestUpdateVTEPGuardPeers(t *testing.T) {
	n := testenv.NewNS(t)
	p := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	base := VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0"}
	with := func(peers ...string) VTEPGuard {
		g := base
		for _, s := range peers {
			g.Peers = append(g.Peers, p(s))
		}
		return g
	}
	kernelPeers := func() []netip.Addr {
		t.Helper()
		var s VTEPGuardState
		if err := in(n, func() (err error) { s, err = ReadVTEPGuard("pods"); return err }); err != nil {
			t.Fatal(err)
		}
		return s.Peers
	}
	update := func(last, g VTEPGuard) error {
		return in(n, func() error { _, err := UpdateVTEPGuardPeers(last, g); return err })
	}
	first := with("192.168.50.2", "192.168.50.3", "fd00:50::2")
	if err := in(n, func() error { _, err := EnsureVTEPGuard(first); return err }); err != nil {
		t.Fatal(err)
	}
	second := with("192.168.50.3", "192.168.50.4", "fd00:50::4")
	if err := update(first, second); err != nil {
		t.Fatal(err)
	}
	if got, want := kernelPeers(), second.peers(false); !slices.Equal(got, append(want, p("fd00:50::4"))) {
		t.Errorf("after the update the kernel lets in %v, want %v", got, second.Peers)
	}
	// By hand: 192.168.50.4 deleted. An update that deletes it fails as a
	// whole (nothing of it applied), and EnsureVTEPGuard repairs.
	if err := in(n, func() error {
		c := newConn()
		if err := c.SetDeleteElements(guardSet("pods", false), family([]netip.Addr{p("192.168.50.4")}, false)); err != nil {
			return err
		}
		return c.Flush()
	}); err != nil {
		t.Fatal(err)
	}
	third := with("192.168.50.3", "192.168.50.5")
	if err := update(second, third); err == nil {
		t.Fatalf("an update from sets that are not the last guard succeeded; the kernel lets in %v", kernelPeers())
	}
	if got := kernelPeers(); !slices.Equal(got, []netip.Addr{p("192.168.50.3"), p("fd00:50::4")}) {
		t.Errorf("a failed update changed the sets: %v", got)
	}
	if err := in(n, func() error { _, err := EnsureVTEPGuard(third); return err }); err != nil {
		t.Fatal(err)
	}
	if got := kernelPeers(); !slices.Equal(got, []netip.Addr{p("192.168.50.3"), p("192.168.50.5")}) {
		t.Errorf("after EnsureVTEPGuard the kernel lets in %v, want %v", got, third.Peers)
	}
	if err := update(third, VTEPGuard{Network: "pods", Port: 4789, Underlay: "eth0"}); err == nil {
		t.Error("an update of another port succeeded")
	}
}
