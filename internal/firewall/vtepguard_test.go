package firewall

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/berthnet/berth/internal/testenv"
)

// The guard's chain, without a namespace: arrivals on the underlay pass,
// then the VTEP port is dropped, whatever the destination.
func TestVTEPGuardRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		g    VTEPGuard
		want []string
	}{
		{"vxlan default port", VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0"}, []string{`iifname "eth0" return`, "udp dport 8472 drop"}},
		{"IANA port", VTEPGuard{Network: "pods", Port: 4789, Underlay: "ens3"}, []string{`iifname "ens3" return`, "udp dport 4789 drop"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.g.Rules(); !slices.Equal(got, tc.want) {
				t.Errorf("rules:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// The comparison with the kernel, without a namespace: equal writes
// nothing, anything else rewrites the chain.
func TestGuardDiffers(t *testing.T) {
	g := VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0"}
	same := VTEPGuardState{Chain: right, Rules: g.Rules()}
	for _, r := range g.rules() {
		same.exprs = append(same.exprs, r.exprs)
	}
	with := func(change func(*VTEPGuardState)) VTEPGuardState {
		s := same
		s.Rules, s.exprs = slices.Clone(s.Rules), slices.Clone(s.exprs)
		change(&s)
		return s
	}
	for _, tc := range []struct {
		name string
		have VTEPGuardState
		want bool
	}{
		{"equal", same, false},
		{"no table", VTEPGuardState{}, true},
		{"flushed chain", with(func(s *VTEPGuardState) { s.Rules, s.exprs = nil, nil }), true},
		{"a rule changed", with(func(s *VTEPGuardState) { s.Rules[1] = "udp dport 8472 accept" }), true},
		{"a rule's expressions changed under berth's comment", with(func(s *VTEPGuardState) {
			s.exprs[1] = slices.Concat(s.exprs[1][:len(s.exprs[1])-1], []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}})
		}), true},
		{"another port under berth's comment", with(func(s *VTEPGuardState) {
			s.exprs[1] = VTEPGuard{Network: "pods", Port: 4789, Underlay: "eth0"}.rules()[1].exprs
		}), true},
		{"a rule without berth's comment", with(func(s *VTEPGuardState) { s.Rules[0] = "" }), true},
		{"chain on another hook", with(func(s *VTEPGuardState) { s.Chain = different }), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := g.differs(tc.have); got != tc.want {
				t.Errorf("differs %v, want %v", got, tc.want)
			}
		})
	}
}

// In a namespace: the kernel reads back what Rules says (so that a pass
// over an unchanged guard writes nothing), a flushed or deleted table is
// repaired, the plugins' iptables rules leave it alone, and Remove takes
// the network's guard away, keeps another network's, and removes the
// table with the last one.
func TestVTEPGuardEnsureAndRemove(t *testing.T) {
	n := testenv.NewNS(t)
	g := VTEPGuard{Network: "pods", Port: 8472, Underlay: "eth0"}
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
		if !s.Exists() || !slices.Equal(s.Rules, g.Rules()) || g.differs(s) {
			t.Errorf("the kernel has %+v, want the rules %q", s, g.Rules())
		}
	}
	nft := func(do func(c *nftables.Conn)) {
		t.Helper()
		if err := in(n, func() error { c := newConn(); do(c); return c.Flush() }); err != nil {
			t.Fatal(err)
		}
	}
	ensure(g, "written (port 8472, from anywhere but eth0)")
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
	if pods.Chain != absent {
		t.Errorf("pods' guard left: %+v", pods)
	}
	if !kept.Exists() || !slices.Equal(kept.Rules, other.Rules()) {
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
