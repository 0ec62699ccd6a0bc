package firewall

import (
	"errors"
	"fmt"
	"net/netip"
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
	return Network{Name: name, Local: p, Scope: p, Masq: true, Isolated: true}
}

func TestRules(t *testing.T) {
	n := network("a", "10.1.0.0/24")
	if got := n.natRules(); !slices.Equal(got, []string{
		"-s 127.0.0.0/8 -d 10.1.0.0/24 -m conntrack --ctstate DNAT -j MASQUERADE",
		"-s 10.1.0.0/24 -d 10.1.0.0/24 -m conntrack --ctstate DNAT -j MASQUERADE",
		"-s 10.1.0.0/24 -d 10.1.0.0/24 -j RETURN",
		"-s 10.1.0.0/24 -d 224.0.0.0/4 -j RETURN",
		"-s 10.1.0.0/24 -j MASQUERADE",
	}) {
		t.Errorf("nat rules: %q", got)
	}
	n.Masq = false
	if got := n.natRules(); len(got) != 2 {
		t.Errorf("without masquerade only localhost and hairpin remain: %q", got)
	}
	// A leased network: traffic from the rest of the cluster CIDR is let in.
	n.Scope = netip.MustParsePrefix("10.0.0.0/8")
	if got := n.fwdRules(); len(got) != 3 || got[2] != "-s 10.0.0.0/8 -d 10.1.0.0/24 -j ACCEPT" {
		t.Errorf("forward rules of a leased network: %q", got)
	}
	a := &Attachment{Key: "k", ContainerIP: netip.MustParseAddr("10.1.0.5"), Ports: []Port{
		{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"},
		{HostIP: netip.MustParseAddr("192.0.2.2"), HostPort: 53, ContainerPort: 5353, Protocol: "udp"},
	}}
	if got := a.dnatRules(); !slices.Equal(got, []string{
		"-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.1.0.5:80",
		"-d 192.0.2.2/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.1.0.5:5353",
	}) {
		t.Errorf("dnat rules: %q", got)
	}
}

// save is the namespace's IPv4 rules as iptables-save prints them.
func save(t *testing.T, n ns.NetNS) iptables.Tables {
	t.Helper()
	out, err := testenv.InNS(n, "iptables-save")
	if err != nil {
		t.Fatalf("iptables-save: %v: %s", err, out)
	}
	ts, err := iptables.Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func berthChains(ts iptables.Tables) []string {
	var out []string
	for _, table := range []string{"nat", "filter"} {
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
	att := &Attachment{Key: "ka", ContainerIP: netip.MustParseAddr("10.1.0.5"), Ports: []Port{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}}
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
	if err := in(n, func() error { return RemoveAttachment("a", "ka", true, func() bool { return true }) }); err != nil {
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
		return &Attachment{Key: fmt.Sprint("k", i), ContainerIP: netip.MustParseAddr(fmt.Sprintf("10.3.%d.2", i)),
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
	for i := range nets {
		if err := in(n, func() error { return Check(netOf(i), att(i)) }); err != nil {
			t.Error(err)
		}
	}
	run(func(i int) error {
		return RemoveAttachment(netOf(i).Name, att(i).Key, true, func() bool { return true })
	})
	if got := berthChains(save(t, n)); len(got) != 0 {
		t.Errorf("left after every network: %v", got)
	}
}
