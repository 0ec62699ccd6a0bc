package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/iptables"
	"github.com/berthnet/berth/internal/testenv"
)

func network(name, local string) Network {
	p := netip.MustParsePrefix(local)
	n := Network{Name: name, Masq: true, Isolated: true, Ingress: "br-" + name, Bridge: "br-" + name}
	if p.Addr().Is4() {
		n.IPv4 = Subnet{Local: p, Scope: p}
	} else {
		n.IPv6 = Subnet{Local: p, Scope: p}
	}
	return n
}

// dualStack is a network on both families.
func dualStack(name, local4, local6 string) Network {
	n := network(name, local4)
	n.IPv6 = network(name, local6).IPv6
	return n
}

// in4 is n's IPv4 share, with the node's backend.
func in4(n Network) familyNet {
	fn, _ := n.inFamily(iptables.IPv4, iptables.Backend{RandomFully: true})
	return fn
}
func in6(n Network) familyNet {
	fn, _ := n.inFamily(iptables.IPv6, iptables.Backend{RandomFully: true})
	return fn
}

func TestRules(t *testing.T) {
	n := dualStack("a", "10.1.0.0/24", "fd00:1::/64")
	if got := in4(n).natRules(); !slices.Equal(got, []string{
		"-s 127.0.0.0/8 -d 10.1.0.0/24 -m conntrack --ctstate DNAT -j MASQUERADE --random-fully",
		"-s 10.1.0.0/24 -d 10.1.0.0/24 -m conntrack --ctstate DNAT -j MASQUERADE --random-fully",
		"-s 10.1.0.0/24 -d 10.1.0.0/24 -j RETURN",
		"-s 10.1.0.0/24 -d 224.0.0.0/4 -j RETURN",
		"-s 10.1.0.0/24 -j MASQUERADE --random-fully",
	}) {
		t.Errorf("nat rules: %q", got)
	}
	// IPv6: no localhost rule (no DNAT from ::1), IPv6 multicast.
	if got := in6(n).natRules(); !slices.Equal(got, []string{
		"-s fd00:1::/64 -d fd00:1::/64 -m conntrack --ctstate DNAT -j MASQUERADE --random-fully",
		"-s fd00:1::/64 -d fd00:1::/64 -j RETURN",
		"-s fd00:1::/64 -d ff00::/8 -j RETURN",
		"-s fd00:1::/64 -j MASQUERADE --random-fully",
	}) {
		t.Errorf("IPv6 nat rules: %q", got)
	}
	if got := in6(n).rpfRules(); !slices.Equal(got, []string{"-i br-a -m rpfilter --invert -j DROP"}) {
		t.Errorf("IPv6 anti-spoofing rules: %q", got)
	}
	if fn, _ := n.inFamily(iptables.IPv4, iptables.Backend{}); fn.natRules()[0] != "-s 127.0.0.0/8 -d 10.1.0.0/24 -m conntrack --ctstate DNAT -j MASQUERADE" {
		t.Errorf("iptables without --random-fully: %q", fn.natRules())
	}
	n.Masq = false
	if got := in4(n).natRules(); len(got) != 2 {
		t.Errorf("without masquerade only localhost and hairpin remain: %q", got)
	}
	if got := in6(n).natRules(); len(got) != 1 {
		t.Errorf("IPv6 without masquerade only hairpin remains: %q", got)
	}
	// A leased network: traffic from the rest of the cluster CIDR is let in.
	n.IPv4.Scope = netip.MustParsePrefix("10.0.0.0/8")
	n.IPv6.Scope = netip.Prefix{} // none given: the node's subnet
	if got := in4(n).fwdRules(); len(got) != 3 || got[2] != "-s 10.0.0.0/8 -d 10.1.0.0/24 -j ACCEPT" {
		t.Errorf("forward rules of a leased network: %q", got)
	}
	if got := in6(n).isdRules(); !slices.Equal(got, []string{"-d fd00:1::/64 -j DROP"}) {
		t.Errorf("IPv6 scope defaults to the local subnet: %q", got)
	}
	if got := in4(n).inRules(); !slices.Equal(got, []string{"-d 127.0.0.0/8 -i br-a -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"}) {
		t.Errorf("localnet rules: %q", got)
	}
	if got := in6(n).inRules(); len(got) != 0 {
		t.Errorf("IPv6 has no route_localnet, yet a network with IPv6 has input rules: %q", got)
	}
	v4 := network("v4", "10.9.0.0/24")
	if fn, ok := v4.inFamily(iptables.IPv6, iptables.Backend{}); !ok || !fn.closed ||
		!slices.Equal(fn.closedRules(), []string{"-i br-v4 -j DROP", "-o br-v4 -j DROP"}) || !slices.Equal(fn.inRules(), []string{"-i br-v4 -j DROP"}) {
		t.Errorf("an IPv4-only network's IPv6 must be closed on its bridge: %v %+v", ok, fn)
	}
	v4.Bridge = "" // routed: closed per host veth, not here
	if _, ok := v4.inFamily(iptables.IPv6, iptables.Backend{}); ok {
		t.Error("a routed IPv4-only network has IPv6 rules")
	}
	if _, ok := network("v6", "fd00:9::/64").inFamily(iptables.IPv4, iptables.Backend{}); ok {
		t.Error("an IPv6-only network has IPv4 rules (rp_filter closes IPv4 there: its bridge has no IPv4 route)")
	}
	a := &Attachment{Key: "k", IPv4: netip.MustParseAddr("10.1.0.5"), IPv6: netip.MustParseAddr("fd00:1::5"), Ports: []Port{
		{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"},
		{HostIP: netip.MustParseAddr("192.0.2.2"), HostPort: 53, ContainerPort: 5353, Protocol: "udp"},
		{HostIP: netip.MustParseAddr("2001:db8::2"), HostPort: 54, ContainerPort: 5353, Protocol: "udp"},
		{HostIP: netip.IPv4Unspecified(), HostPort: 9000, ContainerPort: 90, Protocol: "tcp"},
		{HostIP: netip.IPv6Unspecified(), HostPort: 9001, ContainerPort: 91, Protocol: "sctp"},
	}}
	if got := a.dnatRules(iptables.IPv4); !slices.Equal(got, []string{
		"-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.1.0.5:80",
		"-d 192.0.2.2/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.1.0.5:5353",
		"-p tcp -m tcp --dport 9000 -j DNAT --to-destination 10.1.0.5:90",
	}) {
		t.Errorf("dnat rules: %q", got)
	}
	if got := a.dnatRules(iptables.IPv6); !slices.Equal(got, []string{
		"-p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:1::5]:80",
		"-d 2001:db8::2/128 -p udp -m udp --dport 54 -j DNAT --to-destination [fd00:1::5]:5353",
		"-p sctp -m sctp --dport 9001 -j DNAT --to-destination [fd00:1::5]:91",
	}) {
		t.Errorf("IPv6 dnat rules: %q", got)
	}
	a.IPv6 = netip.Addr{}
	if got := a.dnatRules(iptables.IPv6); len(got) != 0 {
		t.Errorf("a container without IPv6 has IPv6 port mappings: %q", got)
	}
}

// save is the namespace's IPv4 rules as iptables-save prints them.
func save(t *testing.T, n ns.NetNS) iptables.Tables { return saveFamily(t, n, iptables.IPv4) }

// saveFamily is the namespace's rules of family f.
func saveFamily(t *testing.T, n ns.NetNS, f iptables.Family) iptables.Tables {
	t.Helper()
	out, err := testenv.InNS(n, f.String()+"-save")
	if err != nil {
		t.Fatalf("iptables-save: %v: %s", err, out)
	}
	ts, err := iptables.Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// noChainsLeft fails unless n has no chain of berth's in either family.
func noChainsLeft(t *testing.T, n ns.NetNS, when string) {
	t.Helper()
	for _, f := range families {
		if got := berthChains(saveFamily(t, n, f)); len(got) != 0 {
			t.Errorf("%s: %s: %v", f, when, got)
		}
	}
}

func berthChains(ts iptables.Tables) []string {
	var out []string
	for _, table := range []string{"nat", "filter", "raw"} {
		for _, c := range ts.Get(table).Chains(iptables.Prefix) {
			out = append(out, table+" "+c)
		}
	}
	slices.Sort(out)
	return out
}

func in(n ns.NetNS, f func() error) error { return n.Do(func(ns.NetNS) error { return f() }) }

// The layout the package comment promises, built and taken down network
// by network; Ensure is idempotent and Check sees tampering.
func TestEnsureAndRemove(t *testing.T) {
	n := testenv.NewNS(t)
	a, b := network("a", "10.1.0.0/24"), network("b", "10.2.0.0/24")
	b.Isolated = false
	att := &Attachment{Key: "ka", IPv4: netip.MustParseAddr("10.1.0.5"), Ports: []Port{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}}
	for _, step := range []func() error{
		func() error { return Ensure(a, att) },
		func() error { return Ensure(a, att) }, // again: nothing changes
		func() error { return Ensure(b, nil) },
		func() error { return Check(a, att) },
		func() error { return Check(b, nil) },
	} {
		if err := in(n, step); err != nil {
			t.Fatal(err)
		}
	}
	ts := save(t, n)
	nat, filter := ts.Get("nat"), ts.Get("filter")
	for _, j := range []struct {
		t             *iptables.Table
		chain, target string
	}{
		{nat, "PREROUTING", chainHostPorts}, {nat, "OUTPUT", chainHostPorts}, {nat, "POSTROUTING", chainPostrouting},
		{nat, chainHostPorts, dnatChain("ka")}, {nat, chainPostrouting, natChain("a")}, {nat, chainPostrouting, natChain("b")},
		{filter, "FORWARD", chainForward}, {filter, chainForward, chainIsolation}, {filter, chainForward, fwdChain("a")},
		{filter, chainIsolation, isoChain("a")}, {filter, chainIsolation, isoChain("b")}, {filter, chainIsolation2, isdChain("a")},
	} {
		count := 0
		for _, r := range j.t.Rules(j.chain) {
			if iptables.JumpTarget(r) == j.target {
				count++
			}
		}
		if count != 1 {
			t.Errorf("%s %s: %d jumps to %s, want 1", j.t.Name, j.chain, count, j.target)
		}
	}
	if filter.Jumps(chainIsolation2, isdChain("b")) {
		t.Error("network b is not isolated, yet others are dropped on their way to it")
	}
	if filter.Rules(chainForward)[0] != "-j "+chainIsolation {
		t.Errorf("isolation must come before the accepts: %q", filter.Rules(chainForward))
	}

	// CHECK notices a rule gone.
	testenv.InNS(n, "iptables", "-t", "nat", "-F", dnatChain("ka"))
	if err := in(n, func() error { return Check(a, att) }); !errors.Is(err, cnierr.ErrCheckFailed) {
		t.Errorf("Check after flushing the port mappings: %v", err)
	}
	if err := in(n, func() error { return Ensure(a, att) }); err != nil { // repairs
		t.Fatal(err)
	}

	// a's last container: a's chains go, b's stay.
	if err := in(n, func() error { return RemoveAttachment("a", att, func() bool { return true }) }); err != nil {
		t.Fatal(err)
	}
	left := strings.Join(berthChains(save(t, n)), "\n")
	if strings.Contains(left, hash("a")) || strings.Contains(left, dnatChain("ka")) || !strings.Contains(left, natChain("b")) {
		t.Errorf("after a's last container:\n%s", left)
	}
	// A GC of a network with containers removes nothing; of an empty one, everything.
	if err := in(n, func() error { return RemoveNetwork("b", func() bool { return false }) }); err != nil {
		t.Fatal(err)
	}
	if got := berthChains(save(t, n)); len(got) == 0 {
		t.Fatal("RemoveNetwork removed a network that has containers")
	}
	if err := in(n, func() error { return RemoveNetwork("b", func() bool { return true }) }); err != nil {
		t.Fatal(err)
	}
	ts = save(t, n)
	if got := berthChains(ts); len(got) != 0 {
		t.Errorf("chains left after the last network: %v", got)
	}
	for _, c := range []string{"PREROUTING", "OUTPUT", "POSTROUTING"} {
		if r := ts.Get("nat").Rules(c); len(r) != 0 {
			t.Errorf("nat %s keeps %q", c, r)
		}
	}
	if r := ts.Get("filter").Rules("FORWARD"); len(r) != 0 {
		t.Errorf("filter FORWARD keeps %q", r)
	}
}

// Ensure and RemoveAttachment of many networks at once in one namespace:
// each builtin chain ends with one jump, each network with its chains, and
// when every network has gone, nothing is left.
func TestConcurrentNetworks(t *testing.T) {
	n := testenv.NewNS(t)
	const nets = 8
	run := func(f func(i int) error) {
		var wg sync.WaitGroup
		errs := make([]error, nets)
		for i := range nets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = in(n, func() error { return f(i) })
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
	}
	att := func(i int) *Attachment {
		return &Attachment{Key: fmt.Sprint("k", i), IPv4: netip.MustParseAddr(fmt.Sprintf("10.3.%d.2", i)),
			Ports: []Port{{HostPort: uint16(9000 + i), ContainerPort: 80, Protocol: "tcp"}}}
	}
	netOf := func(i int) Network { return network(fmt.Sprint("n", i), fmt.Sprintf("10.3.%d.0/24", i)) }
	run(func(i int) error { return Ensure(netOf(i), att(i)) })
	ts := save(t, n)
	nat, filter := ts.Get("nat"), ts.Get("filter")
	if len(nat.Rules("PREROUTING")) != 1 || len(nat.Rules("OUTPUT")) != 1 || len(nat.Rules("POSTROUTING")) != 1 || len(filter.Rules("FORWARD")) != 1 {
		t.Errorf("builtin jumps: %q %q %q %q", nat.Rules("PREROUTING"), nat.Rules("OUTPUT"), nat.Rules("POSTROUTING"), filter.Rules("FORWARD"))
	}
	if len(nat.Rules(chainHostPorts)) != nets || len(nat.Rules(chainPostrouting)) != nets || len(filter.Rules(chainForward)) != nets+1 {
		t.Errorf("per-network jumps: %q %q %q", nat.Rules(chainHostPorts), nat.Rules(chainPostrouting), filter.Rules(chainForward))
	}
	if len(filter.Rules("INPUT")) != 1 || len(filter.Rules(chainInput)) != nets {
		t.Errorf("localnet jumps: %q %q", filter.Rules("INPUT"), filter.Rules(chainInput))
	}
	// IPv4-only: IPv6 closed, a jump each, no more.
	f6 := saveFamily(t, n, iptables.IPv6).Get("filter")
	if len(f6.Rules("INPUT")) != 1 || len(f6.Rules(chainInput)) != nets || len(f6.Rules("FORWARD")) != 1 || len(f6.Rules(chainForward)) != nets {
		t.Errorf("IPv6 closing jumps: %q %q %q %q", f6.Rules("INPUT"), f6.Rules(chainInput), f6.Rules("FORWARD"), f6.Rules(chainForward))
	}
	for i := range nets {
		if err := in(n, func() error { return Check(netOf(i), att(i)) }); err != nil {
			t.Error(err)
		}
	}
	run(func(i int) error {
		return RemoveAttachment(netOf(i).Name, att(i), func() bool { return true })
	})
	noChainsLeft(t, n, "after every network")
	for _, f := range families {
		for _, c := range []string{"INPUT", "FORWARD"} {
			if r := saveFamily(t, n, f).Get("filter").Rules(c); len(r) != 0 {
				t.Errorf("%s filter %s keeps %q", f, c, r)
			}
		}
	}
}

// The node's 127.0.0.0/8 is closed to a network's containers on its
// ingress (route_localnet), and IPv6 to an IPv4-only network on its
// bridge: the chains, their place before anyone's accepts, CHECK seeing
// each go, Ensure repairing it, and the last container taking them away.
func TestLocalnetAndClosedIPv6(t *testing.T) {
	n := testenv.NewNS(t)
	// A dual-stack network first, so that its accepts are in place when
	// the IPv4-only network closes IPv6 before them.
	ds := dualStack("ds", "10.8.0.0/24", "fd00:8::/64")
	v4 := network("v4", "10.9.0.0/24")
	routed := network("rt", "10.10.0.0/24")
	routed.Ingress, routed.Bridge = "bv+", ""
	for _, step := range []func() error{
		func() error { return Ensure(ds, nil) },
		func() error { return Ensure(v4, nil) },
		func() error { return Ensure(routed, nil) },
		func() error { return Check(v4, nil) },
		func() error { return Check(routed, nil) },
	} {
		if err := in(n, step); err != nil {
			t.Fatal(err)
		}
	}
	f4, f6 := save(t, n).Get("filter"), saveFamily(t, n, iptables.IPv6).Get("filter")
	if got := f4.Rules(inChain("rt")); !slices.Equal(got, []string{"-d 127.0.0.0/8 -i bv+ -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"}) {
		t.Errorf("routed network's localnet rule: %q", got)
	}
	if got := f6.Rules(chainForward); len(got) == 0 || got[0] != "-j "+no6Chain("v4") {
		t.Errorf("IPv6 closed after another network's accepts: %q", got)
	}
	if f6.HasChain(no6Chain("rt")) || f6.HasChain(inChain("rt")) || f6.HasChain(inChain("ds")) {
		t.Errorf("IPv6 chains for the routed network or for the dual-stack one's localhost: %v", berthChains(saveFamily(t, n, iptables.IPv6)))
	}
	for _, tt := range []struct {
		tool   string
		tamper []string
	}{
		{"iptables", []string{"-F", inChain("v4")}},
		{"iptables", []string{"-D", chainInput, "-j", inChain("v4")}},
		{"iptables", []string{"-D", "INPUT", "-j", chainInput}},
		{"ip6tables", []string{"-F", no6Chain("v4")}},
		{"ip6tables", []string{"-D", chainForward, "-j", no6Chain("v4")}},
		{"ip6tables", []string{"-F", inChain("v4")}},
		{"ip6tables", []string{"-D", "INPUT", "-j", chainInput}},
	} {
		if out, err := testenv.InNS(n, tt.tool, tt.tamper...); err != nil {
			t.Fatalf("%s %v: %v: %s", tt.tool, tt.tamper, err, out)
		}
		if err := in(n, func() error { return Check(v4, nil) }); !errors.Is(err, cnierr.ErrCheckFailed) {
			t.Errorf("Check after %s %v: %v", tt.tool, tt.tamper, err)
		}
		if err := in(n, func() error { return Ensure(v4, nil) }); err != nil {
			t.Fatal(err)
		}
		if err := in(n, func() error { return Check(v4, nil) }); err != nil {
			t.Errorf("Ensure did not repair %s %v: %v", tt.tool, tt.tamper, err)
		}
	}
	// The IPv4-only network given IPv6 opens it again.
	v4.IPv6 = network("v4", "fd00:9::/64").IPv6
	if err := in(n, func() error { return Ensure(v4, nil) }); err != nil {
		t.Fatal(err)
	}
	if f6 := saveFamily(t, n, iptables.IPv6).Get("filter"); f6.HasChain(no6Chain("v4")) || f6.HasChain(inChain("v4")) || f6.Jumps(chainForward, no6Chain("v4")) {
		t.Errorf("IPv6 still closed for a network that has it now: %v", berthChains(saveFamily(t, n, iptables.IPv6)))
	}
	for _, step := range []func() error{
		func() error { return RemoveAttachment("v4", &Attachment{Key: "x"}, func() bool { return true }) },
		func() error { return RemoveNetwork("rt", func() bool { return true }) },
		func() error { return RemoveAttachment("ds", &Attachment{Key: "y"}, func() bool { return true }) },
	} {
		if err := in(n, step); err != nil {
			t.Fatal(err)
		}
	}
	noChainsLeft(t, n, "after every network")
}

// A dual-stack network gets the same layout in ip6tables, plus the
// anti-spoofing chain in raw; CHECK sees an IPv6 rule go; the last
// container takes both families' rules with it. An IPv6-only network
// leaves iptables alone.
func TestDualStack(t *testing.T) {
	n := testenv.NewNS(t)
	ds := dualStack("ds", "10.5.0.0/24", "fd00:5::/64")
	att := &Attachment{Key: "kds", IPv4: netip.MustParseAddr("10.5.0.2"), IPv6: netip.MustParseAddr("fd00:5::2"),
		Ports: []Port{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}, {HostIP: netip.MustParseAddr("fd00:99::1"), HostPort: 53, ContainerPort: 53, Protocol: "udp"}}}
	v6only := network("v6", "fd00:6::/64")
	att6 := &Attachment{Key: "kv6", IPv6: netip.MustParseAddr("fd00:6::2"), Ports: []Port{{HostIP: netip.IPv6Unspecified(), HostPort: 8081, ContainerPort: 80, Protocol: "tcp"}}}
	for _, step := range []func() error{
		func() error { return Ensure(ds, att) },
		func() error { return Ensure(v6only, att6) },
		func() error { return Check(ds, att) },
		func() error { return Check(v6only, att6) },
	} {
		if err := in(n, step); err != nil {
			t.Fatal(err)
		}
	}
	v4, v6 := save(t, n), saveFamily(t, n, iptables.IPv6)
	for _, j := range []struct {
		t             *iptables.Table
		chain, target string
	}{
		{v6.Get("nat"), "PREROUTING", chainHostPorts}, {v6.Get("nat"), "OUTPUT", chainHostPorts},
		{v6.Get("nat"), chainHostPorts, dnatChain("kds")}, {v6.Get("nat"), chainHostPorts, dnatChain("kv6")},
		{v6.Get("nat"), chainPostrouting, natChain("ds")}, {v6.Get("nat"), chainPostrouting, natChain("v6")},
		{v6.Get("filter"), chainForward, fwdChain("ds")}, {v6.Get("filter"), chainIsolation2, isdChain("v6")},
		{v6.Get("raw"), "PREROUTING", chainAntispoof}, {v6.Get("raw"), chainAntispoof, rpfChain("ds")},
		{v6.Get("raw"), chainAntispoof, rpfChain("v6")},
		{v4.Get("nat"), chainHostPorts, dnatChain("kds")}, {v4.Get("filter"), chainForward, fwdChain("ds")},
	} {
		if !j.t.Jumps(j.chain, j.target) {
			t.Errorf("%s %s: no jump to %s", j.t.Name, j.chain, j.target)
		}
	}
	if got := v6.Get("nat").Rules("OUTPUT"); !slices.Equal(got, []string{"! -d ::1/128 " + jumpHostPorts}) {
		t.Errorf("IPv6 OUTPUT must leave ::1 alone: %q", got)
	}
	if got := v4.Get("nat").Rules(dnatChain("kds")); len(got) != 1 {
		t.Errorf("IPv4 gets the mapping on every address only: %q", got)
	}
	if got := v6.Get("nat").Rules(dnatChain("kds")); len(got) != 2 {
		t.Errorf("IPv6 gets both mappings: %q", got)
	}
	for _, c := range berthChains(v4) {
		if strings.Contains(c, hash("v6")) || strings.Contains(c, dnatChain("kv6")) {
			t.Errorf("the IPv6-only network has IPv4 chain %s", c)
		}
	}

	// CHECK notices an IPv6 rule gone, each kind.
	for _, tamper := range [][]string{
		{"-t", "raw", "-F", rpfChain("ds")},
		{"-t", "nat", "-F", dnatChain("kds")},
		{"-t", "nat", "-F", natChain("ds")},
		{"-t", "filter", "-F", isdChain("ds")},
		{"-t", "raw", "-D", chainAntispoof, "-j", rpfChain("ds")},
	} {
		testenv.InNS(n, "ip6tables", tamper...)
		if err := in(n, func() error { return Check(ds, att) }); !errors.Is(err, cnierr.ErrCheckFailed) {
			t.Errorf("Check after ip6tables %v: %v", tamper, err)
		}
		if err := in(n, func() error { return Ensure(ds, att) }); err != nil { // repairs
			t.Fatal(err)
		}
		if err := in(n, func() error { return Check(ds, att) }); err != nil {
			t.Errorf("Ensure did not repair ip6tables %v: %v", tamper, err)
		}
	}

	for _, step := range []func() error{
		func() error { return RemoveAttachment("ds", att, func() bool { return true }) },
		func() error { return RemoveAttachment("v6", att6, func() bool { return true }) },
	} {
		if err := in(n, step); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range families {
		ts := saveFamily(t, n, f)
		if got := berthChains(ts); len(got) != 0 {
			t.Errorf("%s: chains left after the last network: %v", f, got)
		}
		for _, tc := range [][2]string{{"nat", "PREROUTING"}, {"nat", "OUTPUT"}, {"nat", "POSTROUTING"}, {"filter", "FORWARD"}, {"raw", "PREROUTING"}} {
			if r := ts.Get(tc[0]).Rules(tc[1]); len(r) != 0 {
				t.Errorf("%s %s %s keeps %q", f, tc[0], tc[1], r)
			}
		}
	}
}

// Dual-stack networks added and removed at once: both families end up
// with one jump per builtin chain and nothing once all have gone.
func TestConcurrentDualStackNetworks(t *testing.T) {
	n := testenv.NewNS(t)
	const nets = 6
	netOf := func(i int) Network {
		return dualStack(fmt.Sprint("d", i), fmt.Sprintf("10.6.%d.0/24", i), fmt.Sprintf("fd00:6:%d::/64", i))
	}
	att := func(i int) *Attachment {
		return &Attachment{Key: fmt.Sprint("d", i), IPv4: netip.MustParseAddr(fmt.Sprintf("10.6.%d.2", i)),
			IPv6: netip.MustParseAddr(fmt.Sprintf("fd00:6:%d::2", i)), Ports: []Port{{HostPort: uint16(9100 + i), ContainerPort: 80, Protocol: "tcp"}}}
	}
	run := func(f func(i int) error) {
		var wg sync.WaitGroup
		errs := make([]error, nets)
		for i := range nets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = in(n, func() error { return f(i) })
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
	}
	run(func(i int) error { return Ensure(netOf(i), att(i)) })
	rememberedMatchesKernel(t, n, "after the parallel ADDs")
	v6 := saveFamily(t, n, iptables.IPv6)
	if len(v6.Get("nat").Rules("OUTPUT")) != 1 || len(v6.Get("raw").Rules("PREROUTING")) != 1 || len(v6.Get("filter").Rules("FORWARD")) != 1 {
		t.Errorf("IPv6 builtin jumps: %q %q %q", v6.Get("nat").Rules("OUTPUT"), v6.Get("raw").Rules("PREROUTING"), v6.Get("filter").Rules("FORWARD"))
	}
	if len(v6.Get("raw").Rules(chainAntispoof)) != nets || len(v6.Get("nat").Rules(chainHostPorts)) != nets {
		t.Errorf("IPv6 per-network jumps: %q %q", v6.Get("raw").Rules(chainAntispoof), v6.Get("nat").Rules(chainHostPorts))
	}
	run(func(i int) error { return Check(netOf(i), att(i)) })
	run(func(i int) error { return RemoveAttachment(netOf(i).Name, att(i), func() bool { return true }) })
	noChainsLeft(t, n, "left after every network")
}

// What the firewall remembers between calls (iptables.Cycle) is what the
// kernel has, rule for rule as iptables-save prints it, after every kind
// of change: so a call that trusts it decides as one that saved.
func TestRememberedRulesMatchTheKernel(t *testing.T) {
	n := testenv.NewNS(t)
	ds := dualStack("m", "10.7.0.0/24", "fd00:7::/64")
	v4 := network("m4", "10.8.0.0/24")
	v4.Isolated = false
	att := &Attachment{Key: "km", IPv4: netip.MustParseAddr("10.7.0.2"), IPv6: netip.MustParseAddr("fd00:7::2"),
		Ports: []Port{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}, {HostIP: netip.MustParseAddr("fd00:99::1"), HostPort: 53, ContainerPort: 53, Protocol: "udp"},
			{HostIP: netip.MustParseAddr("192.0.2.1"), HostPort: 54, ContainerPort: 53, Protocol: "sctp"}}}
	att4 := &Attachment{Key: "km4", IPv4: netip.MustParseAddr("10.8.0.2"), Ports: []Port{{HostPort: 8081, ContainerPort: 80, Protocol: "udp"}}}
	ds.Isolated = false
	for i, step := range []func() error{
		func() error { return Ensure(ds, att) },
		func() error { return Ensure(v4, att4) },
		func() error { ds.Isolated = true; return Ensure(ds, nil) },
		func() error { ds.Isolated = false; return Ensure(ds, att) },
		func() error { return RemoveAttachment("m", att, func() bool { return false }) },
		func() error { return RemoveAttachment("m4", att4, func() bool { return true }) },
		func() error { return RemoveNetwork("m", func() bool { return true }) },
	} {
		if err := in(n, step); err != nil {
			t.Fatal(err)
		}
		rememberedMatchesKernel(t, n, fmt.Sprint("step ", i))
	}
}

// rememberedMatchesKernel fails unless the rules the firewall remembers
// in n for its next call are the kernel's, rule for rule; when it
// remembers nothing, berth must have nothing there.
func rememberedMatchesKernel(t *testing.T, n ns.NetNS, when string) {
	t.Helper()
	var c *iptables.Cycle
	if err := in(n, func() error {
		b, err := iptables.Open()
		if b.Name != iptables.NFTables {
			t.Skipf("backend %s: nothing is remembered", b.Name)
		}
		c = b.Begin()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		known, ok := c.Known(f)
		kernel := saveFamily(t, n, f)
		if !ok && len(berthChains(kernel)) == 0 {
			continue // the last network went: nothing to remember
		}
		if !ok {
			t.Fatalf("%s: %s not remembered", when, f)
		}
		for _, table := range []string{"nat", "filter", "raw"} {
			k, r := known.Get(table), kernel.Get(table)
			for _, chain := range append(r.Chains(""), k.Chains("")...) {
				// Built-in chains berth never wrote to may be missing.
				if k.HasChain(chain) && !r.HasChain(chain) || !slices.Equal(k.Rules(chain), r.Rules(chain)) {
					t.Errorf("%s: %s %s %s: remembered %q, kernel %q", when, f, table, chain, k.Rules(chain), r.Rules(chain))
				}
			}
		}
	}
}

// An ADD on a dual-stack network that exists writes its port mappings in
// both families without iptables-restore (iptables.directWrite), and
// those rules are what iptables-restore would have written: CHECK, a
// repair, the remembered rules and DEL all take them as such. A DEL
// that is not the network's last removes them without it too.
func TestEverydayADDWritesWithoutRestore(t *testing.T) {
	n := testenv.NewNS(t)
	var b iptables.Backend
	if err := in(n, func() (err error) { b, err = iptables.Open(); return err }); err != nil {
		t.Fatal(err)
	}
	if b.Name != iptables.NFTables {
		t.Skipf("backend %s: every change goes through iptables-restore", b.Name)
	}
	// The restores run, logged by wrappers found first on PATH.
	dir, log := t.TempDir(), filepath.Join(t.TempDir(), "restores")
	for _, tool := range []string{"iptables-nft-restore", "ip6tables-nft-restore"} {
		real, err := exec.LookPath(tool)
		if err != nil {
			t.Skip(err)
		}
		script := fmt.Sprintf("#!/bin/sh\necho %s >> %s\nexec %s \"$@\"\n", tool, log, real)
		if err := os.WriteFile(filepath.Join(dir, tool), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	restores := func() string {
		data, _ := os.ReadFile(log)
		os.Remove(log)
		return strings.Join(strings.Fields(string(data)), " ")
	}

	ds := dualStack("ev", "10.9.0.0/24", "fd00:9::/64")
	first := &Attachment{Key: "ev1", IPv4: netip.MustParseAddr("10.9.0.2"), IPv6: netip.MustParseAddr("fd00:9::2")}
	att := &Attachment{Key: "ev2", IPv4: netip.MustParseAddr("10.9.0.3"), IPv6: netip.MustParseAddr("fd00:9::3"),
		Ports: []Port{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}, {HostIP: netip.MustParseAddr("fd00:99::1"), HostPort: 53, ContainerPort: 53, Protocol: "udp"}}}
	if err := in(n, func() error { return Ensure(ds, first) }); err != nil {
		t.Fatal(err)
	}
	if got := restores(); got != "iptables-nft-restore ip6tables-nft-restore" {
		t.Errorf("the network's first ADD: restores %q", got)
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"a container with ports", func() error { return Ensure(ds, att) }},
		{"its ports changed", func() error {
			att.Ports = append(att.Ports, Port{HostIP: netip.MustParseAddr("192.0.2.1"), HostPort: 8443, ContainerPort: 443, Protocol: "tcp"})
			return Ensure(ds, att)
		}},
		{"its IPv6 mappings flushed by hand, then repaired", func() error {
			if out, err := testenv.InNS(n, "ip6tables", "-t", "nat", "-F", dnatChain("ev2")); err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			if err := Check(ds, att); !errors.Is(err, cnierr.ErrCheckFailed) {
				return fmt.Errorf("CHECK after the flush: %v", err)
			}
			return Ensure(ds, att)
		}},
	}
	for _, s := range steps {
		if err := in(n, s.do); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := restores(); got != "" {
			t.Errorf("%s: restores %q, want none", s.name, got)
		}
		if err := in(n, func() error { return Check(ds, att) }); err != nil {
			t.Errorf("%s: CHECK: %v", s.name, err)
		}
		rememberedMatchesKernel(t, n, s.name)
	}
	v4, v6 := save(t, n), saveFamily(t, n, iptables.IPv6)
	if got, want := v4.Get("nat").Rules(dnatChain("ev2")), att.dnatRules(iptables.IPv4); !slices.Equal(got, want) {
		t.Errorf("IPv4 mappings %q, want %q", got, want)
	}
	if got, want := v6.Get("nat").Rules(dnatChain("ev2")), att.dnatRules(iptables.IPv6); !slices.Equal(got, want) {
		t.Errorf("IPv6 mappings %q, want %q", got, want)
	}
	// A DEL that is not the network's last removes the mappings
	// without iptables-restore too.
	if err := in(n, func() error { return RemoveAttachment("ev", att, func() bool { return false }) }); err != nil {
		t.Fatal(err)
	}
	if got := restores(); got != "" {
		t.Errorf("a DEL: restores %q, want none", got)
	}
	rememberedMatchesKernel(t, n, "after a DEL")
	for _, f := range families {
		if got := saveFamily(t, n, f).Get("nat"); got.HasChain(dnatChain("ev2")) || got.Jumps(chainHostPorts, dnatChain("ev2")) {
			t.Errorf("%s: the DEL left %s or the jump to it", f, dnatChain("ev2"))
		}
	}
	if err := in(n, func() error { return RemoveAttachment("ev", first, func() bool { return true }) }); err != nil {
		t.Fatal(err)
	}
	noChainsLeft(t, n, "chains left after the last DEL")
}

// A container may publish a thousand ports (podman -p 10000-10999:...,
// one mapping per port): its ADD on a network that exists is far larger
// than a transaction berth writes itself, and works like any other.
func TestManyPortMappings(t *testing.T) {
	n := testenv.NewNS(t)
	ds := dualStack("mp", "10.12.0.0/24", "fd00:12::/64")
	first := &Attachment{Key: "mp1", IPv4: netip.MustParseAddr("10.12.0.2"), IPv6: netip.MustParseAddr("fd00:12::2")}
	if err := in(n, func() error { return Ensure(ds, first) }); err != nil {
		t.Fatal(err)
	}
	att := &Attachment{Key: "mp2", IPv4: netip.MustParseAddr("10.12.0.3"), IPv6: netip.MustParseAddr("fd00:12::3")}
	for p := range 1000 {
		att.Ports = append(att.Ports, Port{HostPort: uint16(10000 + p), ContainerPort: uint16(10000 + p), Protocol: "tcp"})
	}
	if err := in(n, func() error { return Ensure(ds, att) }); err != nil {
		t.Fatalf("ADD with %d ports: %v", len(att.Ports), err)
	}
	if err := in(n, func() error { return Check(ds, att) }); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	rememberedMatchesKernel(t, n, "after the ADD")
	for _, a := range []*Attachment{att, first} {
		if err := in(n, func() error { return RemoveAttachment("mp", a, func() bool { return a == first }) }); err != nil {
			t.Fatal(err)
		}
	}
	noChainsLeft(t, n, "chains left after the last DEL")
}
