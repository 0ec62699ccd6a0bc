package firewall

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/berthnet/berth/internal/testenv"
)

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// The guard's chain, without a namespace: arrivals on the underlay pass,
// then the VTEP port is dropped to the node itself and to the peers' sets.
func TestVTEPGuardRules(t *testing.T) {
	h := hash("pods")
	for _, tc := range []struct {
		name string
		g    VTEPGuard
		want []string
	}{
		{"vxlan default port", VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0"}, []string{
			`iifname "eth0" return`,
			"udp dport 8472 fib daddr type local drop",
			"udp dport 8472 fib daddr type broadcast drop",
			"udp dport 8472 fib daddr type multicast drop",
			"ip daddr @vtep-" + h + "-peers4 udp dport 8472 drop",
			"ip6 daddr @vtep-" + h + "-peers6 udp dport 8472 drop",
		}},
		{"IANA port, peers do not change the chain", VTEPGuard{Network: "pods", Port: 4789, Underlay: "ens3", Peers: addrs("192.168.50.2")}, []string{
			`iifname "ens3" return`,
			"udp dport 4789 fib daddr type local drop",
			"udp dport 4789 fib daddr type broadcast drop",
			"udp dport 4789 fib daddr type multicast drop",
			"ip daddr @vtep-" + h + "-peers4 udp dport 4789 drop",
			"ip6 daddr @vtep-" + h + "-peers6 udp dport 4789 drop",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.g.Rules(); !slices.Equal(got, tc.want) {
				t.Errorf("rules:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// The comparison with the kernel, without a namespace: equal writes
// nothing, peers alone are set elements, anything else rewrites.
func TestPlanGuard(t *testing.T) {
	g := VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0", Peers: addrs("192.168.50.3", "fd00:50::2", "192.168.50.2", "192.168.50.3")}
	sorted := addrs("192.168.50.2", "192.168.50.3", "fd00:50::2")
	same := VTEPGuardState{Chain: right, Rules: g.Rules(), Sets: [2]objState{right, right}, Peers: sorted}
	for _, r := range g.rules() {
		same.exprs = append(same.exprs, r.exprs)
	}
	with := func(change func(*VTEPGuardState)) VTEPGuardState {
		s := same
		s.Rules, s.Peers, s.exprs = slices.Clone(s.Rules), slices.Clone(s.Peers), slices.Clone(s.exprs)
		change(&s)
		return s
	}
	for _, tc := range []struct {
		name string
		have VTEPGuardState
		want guardPlan
	}{
		{"equal", same, guardPlan{}},
		{"no table", VTEPGuardState{}, guardPlan{rewrite: true, add: sorted}},
		{"flushed chain", with(func(s *VTEPGuardState) { s.Rules = nil }), guardPlan{rewrite: true, add: sorted}},
		{"a rule changed", with(func(s *VTEPGuardState) { s.Rules[1] = "udp dport 8472 fib daddr type local accept" }), guardPlan{rewrite: true, add: sorted}},
		{"a rule's expressions changed under berth's comment", with(func(s *VTEPGuardState) {
			s.exprs[4] = slices.Concat(s.exprs[4][:len(s.exprs[4])-1], []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}})
		}), guardPlan{rewrite: true, add: sorted}},
		{"a rule without berth's comment", with(func(s *VTEPGuardState) { s.Rules[0] = "" }), guardPlan{rewrite: true, add: sorted}},
		{"chain on another hook", with(func(s *VTEPGuardState) { s.Chain = different }), guardPlan{rewrite: true, add: sorted}},
		{"IPv6 set missing", with(func(s *VTEPGuardState) { s.Sets[1] = absent }), guardPlan{rewrite: true, add: sorted}},
		{"a new peer", with(func(s *VTEPGuardState) { s.Peers = addrs("192.168.50.2", "fd00:50::2") }), guardPlan{add: addrs("192.168.50.3")}},
		{"a peer gone", with(func(s *VTEPGuardState) { s.Peers = addrs("192.168.50.1", "192.168.50.2", "192.168.50.3", "fd00:50::2") }), guardPlan{del: addrs("192.168.50.1")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := planGuard(g, tc.have); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("plan %+v, want %+v", got, tc.want)
			}
		})
	}
}

// In a namespace: the kernel reads back what Rules says (so that a pass
// over an unchanged guard writes nothing), a flushed or deleted table is
// repaired, a new peer is one element, the plugins' iptables rules leave
// it alone, and Remove takes the network's guard away, keeps another
// network's, and removes the table with the last one and the iptables
// chain of the previous build.
func TestVTEPGuardEnsureAndRemove(t *testing.T) {
	n := testenv.NewNS(t)
	g := VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0", Peers: addrs("192.168.50.2", "fd00:50::2")}
	ensure := func(g VTEPGuard, want string) {
		t.Helper()
		var changed []string
		if err := in(n, func() (err error) { changed, err = EnsureVTEPGuard(g); return err }); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(changed, "; "); !strings.Contains(got, want) || (want == "") != (got == "") {
			t.Errorf("EnsureVTEPGuard changed %q, want %q", got, want)
		}
		var s VTEPGuardState
		if err := in(n, func() (err error) { s, err = ReadVTEPGuard(g.Network); return err }); err != nil {
			t.Fatal(err)
		}
		if !s.Exists() || s.Sets != [2]objState{right, right} || !slices.Equal(s.Rules, g.Rules()) || !slices.Equal(s.Peers, g.peers()) {
			t.Errorf("the kernel has %+v, want the rules %q and peers %v", s, g.Rules(), g.peers())
		}
	}
	nft := func(do func(c *nftables.Conn)) {
		t.Helper()
		if err := in(n, func() error { c := newConn(); do(c); return c.Flush() }); err != nil {
			t.Fatal(err)
		}
	}
	ensure(g, "written (port 8472, 2 peer addresses)")
	ensure(g, "") // again: no write
	nft(func(c *nftables.Conn) { c.FlushTable(guardTable) })
	var pending []string
	if err := in(n, func() (err error) { pending, err = PendingVTEPGuard(g); return err }); err != nil || len(pending) != 1 || !strings.Contains(pending[0], "written") {
		t.Errorf("pending after a flush: %q %v, want the chain written", pending, err)
	}
	ensure(g, "written")
	if err := in(n, func() (err error) { pending, err = PendingVTEPGuard(g); return err }); err != nil || len(pending) != 0 {
		t.Errorf("pending after Ensure: %q %v, want none", pending, err)
	}
	nft(func(c *nftables.Conn) { c.DelTable(guardTable) })
	ensure(g, "written")
	g.Peers = append(g.Peers, netip.MustParseAddr("192.168.50.3"))
	ensure(g, "peers +192.168.50.3")
	other := VTEPGuard{Network: "other", Port: 4789, Underlay: "eth1"}
	ensure(other, "written")

	// A network's iptables rules come and go beside it.
	a := dualStack("a", "10.1.0.0/24", "fd00:1::/64")
	if err := in(n, func() error { return Ensure(a, nil) }); err != nil {
		t.Fatal(err)
	}
	if err := in(n, func() error { return RemoveNetwork("a", func() bool { return true }) }); err != nil {
		t.Fatal(err)
	}
	ensure(g, "")

	// The previous build's chain, as it wrote it.
	for _, tool := range []string{"iptables", "ip6tables"} {
		for _, args := range [][]string{{"-N", legacyGuardChain("pods")}, {"-I", "PREROUTING", "-j", legacyGuardChain("pods")}} {
			if out, err := testenv.InNS(n, tool, append([]string{"-t", "raw"}, args...)...); err != nil {
				t.Fatalf("%s %v: %v\n%s", tool, args, err, out)
			}
		}
	}
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
	if pods.Chain != absent || pods.Sets != [2]objState{} {
		t.Errorf("pods' guard left: %+v", pods)
	}
	if !kept.Exists() || !slices.Equal(kept.Rules, other.Rules()) {
		t.Errorf("removed another network's guard: %+v", kept)
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
