// Package firewall holds berth's iptables rules: masquerade, port mapping
// (DNAT from the node's addresses and localhost, hairpin) and isolation
// between networks. The bridge-family plugins and the bgp plugin share it.
//
// Layout (nat table):
//
//	PREROUTING, OUTPUT  -m addrtype --dst-type LOCAL -j BERTH-HOSTPORTS
//	BERTH-HOSTPORTS     -j BERTH-DN-<attachment>   (one per container with ports)
//	BERTH-DN-<att>      the container's DNAT rules
//	POSTROUTING         -j BERTH-POSTROUTING
//	BERTH-POSTROUTING   -j BERTH-NAT-<network>      (one per network)
//	BERTH-NAT-<net>     localhost/hairpin SNAT, masquerade
//
// (filter table):
//
//	FORWARD             -j BERTH-FORWARD (first rule)
//	BERTH-FORWARD       -j BERTH-ISOLATION, then -j BERTH-FWD-<network>
//	BERTH-ISOLATION     -j BERTH-ISO-<network>     stage 1: leaving network N
//	BERTH-ISOLATION-2   -j BERTH-ISD-<network>     stage 2: entering network M: drop
//	BERTH-FWD-<net>     accept the network's traffic (even under a DROP policy)
//
// A network's chains are rewritten whole on every ADD (self-healing,
// idempotent); the shared chains and builtin jumps are added only if missing.
// Every change holds iptables.Lock, the lock of the network namespace, so
// that networks with different stateDirs never interleave their cycles.
//
// The rules are IPv4 (iptables); each function works on one family's
// tables, so that IPv6 (ip6tables) rules are the same calls with that
// family's rules under the same lock.
package firewall

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"

	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/iptables"
)

const (
	chainHostPorts   = "BERTH-HOSTPORTS"
	chainPostrouting = "BERTH-POSTROUTING"
	chainForward     = "BERTH-FORWARD"
	chainIsolation   = "BERTH-ISOLATION"
	chainIsolation2  = "BERTH-ISOLATION-2"

	jumpHostPorts = "-m addrtype --dst-type LOCAL -j " + chainHostPorts
)

// Network is what the rules of one berth network depend on.
type Network struct {
	Name string
	// Local holds the addresses of this node's containers on the network.
	Local netip.Prefix
	// Scope is the whole network: Local for bridge, the cluster CIDR for
	// overlay and routed modes. Traffic inside it is neither masqueraded
	// nor isolated.
	Scope    netip.Prefix
	Masq     bool
	Isolated bool
}

// Port is one published port.
type Port struct {
	HostIP        netip.Addr // zero: every address of the node
	HostPort      uint16
	ContainerPort uint16
	Protocol      string // tcp | udp | sctp
}

// Attachment is one container's share of the rules.
type Attachment struct {
	Key         string // stable per (network, container, ifName)
	ContainerIP netip.Addr
	Ports       []Port
}

func hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])[:12]
}

func natChain(n string) string    { return "BERTH-NAT-" + hash(n) }
func fwdChain(n string) string    { return "BERTH-FWD-" + hash(n) }
func isoChain(n string) string    { return "BERTH-ISO-" + hash(n) }
func isdChain(n string) string    { return "BERTH-ISD-" + hash(n) }
func dnatChain(key string) string { return "BERTH-DN-" + hash(key) }

// Rules in the exact form iptables-save prints them, so that CHECK can
// compare what is installed with what should be.

func (n Network) natRules() []string {
	l := n.Local.String()
	rules := []string{
		// Connections to a published port from localhost: the container
		// cannot answer 127.0.0.1, so the source becomes the gateway.
		"-s 127.0.0.0/8 -d " + l + " -m conntrack --ctstate DNAT -j MASQUERADE",
		// Hairpin: a container reaching a published port of its own
		// network must get the answer back through the node.
		"-s " + l + " -d " + l + " -m conntrack --ctstate DNAT -j MASQUERADE",
	}
	if n.Masq {
		rules = append(rules,
			"-s "+l+" -d "+n.Scope.String()+" -j RETURN",
			"-s "+l+" -d 224.0.0.0/4 -j RETURN",
			"-s "+l+" -j MASQUERADE")
	}
	return rules
}

func (n Network) fwdRules() []string {
	l := n.Local.String()
	rules := []string{
		"-s " + l + " -j ACCEPT",
		"-d " + l + " -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT",
	}
	if n.Scope != n.Local {
		rules = append(rules, "-s "+n.Scope.String()+" -d "+l+" -j ACCEPT")
	}
	return rules
}

func (n Network) isoRules() []string {
	s := n.Scope.String()
	return []string{
		// Published ports are public, answers are answers.
		"-s " + s + " -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j RETURN",
		"-s " + s + " ! -d " + s + " -j " + chainIsolation2,
	}
}

func (n Network) isdRules() []string { return []string{"-d " + n.Scope.String() + " -j DROP"} }

func (a *Attachment) dnatRules() []string {
	var rules []string
	for _, p := range a.Ports {
		r := ""
		if p.HostIP.IsValid() {
			r = "-d " + p.HostIP.String() + "/32 "
		}
		r += fmt.Sprintf("-p %s -m %s --dport %d -j DNAT --to-destination %s:%d",
			p.Protocol, p.Protocol, p.HostPort, a.ContainerIP, p.ContainerPort)
		rules = append(rules, r)
	}
	return rules
}

// Ensure installs the network's rules and, when a has ports, a's port
// mappings: one iptables-save and at most one iptables-restore.
func Ensure(n Network, a *Attachment) error {
	lock, err := iptables.Lock()
	if err != nil {
		return err
	}
	defer lock.Release()
	return ensure(iptables.IPv4, n, a)
}

func ensure(family iptables.Family, n Network, a *Attachment) error {
	tables, err := iptables.Save(family)
	if err != nil {
		return err
	}

	nat := tables.Get("nat")
	b := iptables.NewBatch("nat")
	ensureChain(b, nat, chainHostPorts)
	ensureChain(b, nat, chainPostrouting)
	b.Owned(nat, natChain(n.Name), n.natRules())
	if a != nil && len(a.Ports) > 0 {
		b.Owned(nat, dnatChain(a.Key), a.dnatRules())
		ensureJump(b, nat, chainHostPorts, "-j "+dnatChain(a.Key))
	}
	ensureJump(b, nat, chainPostrouting, "-j "+natChain(n.Name))
	ensureJump(b, nat, "PREROUTING", jumpHostPorts)
	ensureJump(b, nat, "OUTPUT", jumpHostPorts)
	ensureJump(b, nat, "POSTROUTING", "-j "+chainPostrouting)

	filter := tables.Get("filter")
	f := iptables.NewBatch("filter")
	ensureChain(f, filter, chainIsolation)
	ensureChain(f, filter, chainIsolation2)
	ensureChain(f, filter, chainForward)
	f.Owned(filter, fwdChain(n.Name), n.fwdRules())
	// Stage 1 applies to every network, stage 2 only protects isolated
	// ones: "isolation": false means other networks may reach this one.
	f.Owned(filter, isoChain(n.Name), n.isoRules())
	ensureJump(f, filter, chainIsolation, "-j "+isoChain(n.Name))
	if n.Isolated {
		f.Owned(filter, isdChain(n.Name), n.isdRules())
		ensureJump(f, filter, chainIsolation2, "-j "+isdChain(n.Name))
	} else {
		removeOwned(f, filter, chainIsolation2, isdChain(n.Name))
	}
	if !filter.Jumps(chainForward, chainIsolation) {
		f.Insert(chainForward, "-j "+chainIsolation) // must run before the accepts
	}
	ensureJump(f, filter, chainForward, "-j "+fwdChain(n.Name))
	if !filter.Jumps("FORWARD", chainForward) {
		f.Insert("FORWARD", "-j "+chainForward)
	}
	return iptables.Apply(family, b, f)
}

// RemoveAttachment deletes the port mappings of the attachment key and,
// when isLast reports no container left on the network, the network's
// rules; when no berth network is left at all, the shared chains and
// builtin jumps go too. isLast runs under the lock, so a parallel ADD
// either sees the network's rules gone or keeps them.
func RemoveAttachment(network, key string, hasPorts bool, isLast func() bool) error {
	lock, err := iptables.Lock()
	if err != nil {
		return err
	}
	defer lock.Release()
	last := isLast()
	if !last && !hasPorts {
		return nil // nothing of this container is in iptables
	}
	return remove(iptables.IPv4, network, key, last)
}

// RemoveNetwork deletes the network's rules if isEmpty reports, under the
// lock, that it has no container left (GC: rules a crash left behind).
func RemoveNetwork(network string, isEmpty func() bool) error {
	lock, err := iptables.Lock()
	if err != nil {
		return err
	}
	defer lock.Release()
	if !isEmpty() {
		return nil
	}
	return remove(iptables.IPv4, network, "", true)
}

// remove deletes the port mappings of key (none when "") and, when last,
// the network's chains and the shared ones no other network jumps to.
func remove(family iptables.Family, network, key string, last bool) error {
	tables, err := iptables.Save(family)
	if err != nil {
		return err
	}
	nat := tables.Get("nat")
	b := iptables.NewBatch("nat")
	if key != "" {
		removeOwned(b, nat, chainHostPorts, dnatChain(key))
	}
	f := iptables.NewBatch("filter")
	if last {
		removeOwned(b, nat, chainPostrouting, natChain(network))
		if onlyJumpsTo(nat, chainHostPorts, dnatChain(key)) && onlyJumpsTo(nat, chainPostrouting, natChain(network)) {
			b.DeleteJumps(nat, "OUTPUT", chainHostPorts)
			removeOwned(b, nat, "PREROUTING", chainHostPorts)
			removeOwned(b, nat, "POSTROUTING", chainPostrouting)
		}
		filter := tables.Get("filter")
		removeOwned(f, filter, chainForward, fwdChain(network))
		removeOwned(f, filter, chainIsolation, isoChain(network))
		removeOwned(f, filter, chainIsolation2, isdChain(network))
		if onlyJumpsTo(filter, chainForward, fwdChain(network), chainIsolation) {
			removeOwned(f, filter, chainForward, chainIsolation)
			removeOwned(f, filter, "FORWARD", chainForward)
			if filter.HasChain(chainIsolation2) {
				f.DeleteChain(filter, chainIsolation2)
			}
		}
	}
	return iptables.Apply(family, b, f)
}

// Check reports the first rule of n (and a) that is missing or altered.
func Check(n Network, a *Attachment) error {
	tables, err := iptables.Save(iptables.IPv4)
	if err != nil {
		return err
	}
	nat, filter := tables.Get("nat"), tables.Get("filter")
	type want struct {
		t     *iptables.Table
		chain string
		rules []string
	}
	wants := []want{{nat, natChain(n.Name), n.natRules()}, {filter, fwdChain(n.Name), n.fwdRules()}, {filter, isoChain(n.Name), n.isoRules()}}
	if n.Isolated {
		wants = append(wants, want{filter, isdChain(n.Name), n.isdRules()})
	}
	if a != nil && len(a.Ports) > 0 {
		wants = append(wants, want{nat, dnatChain(a.Key), a.dnatRules()})
		if !nat.Jumps(chainHostPorts, dnatChain(a.Key)) {
			return fmt.Errorf("%w: nat %s has no jump to the container's port mappings %s", cnierr.ErrCheckFailed, chainHostPorts, dnatChain(a.Key))
		}
	}
	for _, w := range wants {
		got := w.t.Rules(w.chain)
		if !w.t.HasChain(w.chain) || fmt.Sprint(got) != fmt.Sprint(w.rules) {
			return fmt.Errorf("%w: %s chain %s of network %s: have %q, want %q", cnierr.ErrCheckFailed, w.t.Name, w.chain, n.Name, got, w.rules)
		}
	}
	for _, j := range []struct {
		t             *iptables.Table
		chain, target string
	}{
		{nat, "PREROUTING", chainHostPorts}, {nat, "OUTPUT", chainHostPorts},
		{nat, "POSTROUTING", chainPostrouting}, {nat, chainPostrouting, natChain(n.Name)},
		{filter, "FORWARD", chainForward}, {filter, chainForward, fwdChain(n.Name)},
	} {
		if !j.t.Jumps(j.chain, j.target) {
			return fmt.Errorf("%w: %s chain %s has no jump to %s", cnierr.ErrCheckFailed, j.t.Name, j.chain, j.target)
		}
	}
	return nil
}

func ensureChain(b *iptables.Batch, t *iptables.Table, chain string) {
	if !t.HasChain(chain) {
		b.Chain(chain)
	}
}

func ensureJump(b *iptables.Batch, t *iptables.Table, chain, spec string) {
	if !t.Jumps(chain, iptables.JumpTarget(spec)) {
		b.Append(chain, spec)
	}
}

// removeOwned deletes the jumps from parent to chain and chain itself.
func removeOwned(b *iptables.Batch, t *iptables.Table, parent, chain string) {
	b.DeleteJumps(t, parent, chain)
	if t.HasChain(chain) {
		b.DeleteChain(t, chain)
	}
}

// onlyJumpsTo reports whether every rule of chain jumps to one of targets.
func onlyJumpsTo(t *iptables.Table, chain string, targets ...string) bool {
	for _, r := range t.Rules(chain) {
		ok := false
		for _, tg := range targets {
			ok = ok || iptables.JumpTarget(r) == tg
		}
		if !ok {
			return false
		}
	}
	return true
}
