// Package firewall holds berth's iptables rules: masquerade, port mapping
// (DNAT from the node's addresses and localhost, hairpin), isolation
// between networks and, for IPv6, anti-spoofing. The bridge-family plugins
// and the bgp plugin share it.
//
// Layout, the same in iptables and ip6tables (nat table):
//
//	PREROUTING, OUTPUT  -m addrtype --dst-type LOCAL -j BERTH-HOSTPORTS
//	                    (IPv6 OUTPUT: ! -d ::1/128, see localhostRule)
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
//	INPUT               -j BERTH-INPUT (first rule)
//	BERTH-INPUT         -j BERTH-IN-<network>
//	BERTH-IN-<net>      what the network's containers may not send to the node
//
// A network without IPv6 (on a bridge) gets in ip6tables' filter table
// only BERTH-IN-<net> and, first in BERTH-FORWARD, BERTH-NO6-<net>: every
// IPv6 packet from or to its bridge is dropped (closedRules).
//
// (raw table, ip6tables only):
//
//	PREROUTING          -j BERTH-ANTISPOOF
//	BERTH-ANTISPOOF     -j BERTH-RPF-<network>
//	BERTH-RPF-<net>     -i <ingress> -m rpfilter --invert -j DROP
//
// IPv4 drops spoofed sources with rp_filter on the bridge or host veth
// (plugins/attach.EnableForwarding); IPv6 has no rp_filter, so the rpfilter
// match does the same: a packet entering from the network's containers
// whose source the node would not route back there is dropped, in raw,
// before conntrack keeps any state for it. It is per network interface,
// not node-wide, so asymmetric routing elsewhere on the node is untouched.
//
// A network's chains are rewritten whole on every ADD (self-healing,
// idempotent); the shared chains and builtin jumps are added only if missing.
// Every change holds iptables.Lock, the lock of the network namespace (both
// families), so that networks with different stateDirs never interleave
// their cycles. Each family costs at most one iptables-restore per call,
// and one iptables-save only when the rules changed since berth last
// wrote them (iptables.Cycle); the two families run one after the other.
package firewall

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/iptables"
)

const (
	chainHostPorts   = "BERTH-HOSTPORTS"
	chainPostrouting = "BERTH-POSTROUTING"
	chainForward     = "BERTH-FORWARD"
	chainIsolation   = "BERTH-ISOLATION"
	chainIsolation2  = "BERTH-ISOLATION-2"
	chainAntispoof   = "BERTH-ANTISPOOF"
	chainInput       = "BERTH-INPUT"

	jumpHostPorts = "-m addrtype --dst-type LOCAL -j " + chainHostPorts
)

// Network is what the rules of one berth network depend on.
type Network struct {
	Name string
	// IPv4 and IPv6 are the network's addressing in each family; a family
	// whose Local is zero is not on the network and gets no rules.
	IPv4, IPv6 Subnet
	Masq       bool
	Isolated   bool
	// Ingress is where the containers' packets enter the node's IP stack,
	// as iptables -i takes it: the bridge, or "bv+" for routed host veths
	// (with br_netfilter, bridged packets show the bridge as their input
	// too). IPv6 anti-spoofing checks their source's reverse path there,
	// and the node's 127.0.0.0/8 is closed to them there (inRules).
	Ingress string
	// Bridge is the network's own bridge, "" for routed host veths. A
	// network without IPv6 has every IPv6 packet from or to it dropped
	// (closedRules); routed host veths are shared by every routed network
	// under one iptables -i pattern, so plugins/attach turns IPv6 off on
	// each of those instead.
	Bridge string
}

// Subnet is a network's addressing in one family.
type Subnet struct {
	// Local holds the addresses of this node's containers on the network.
	Local netip.Prefix
	// Scope is the whole network: Local for bridge, the cluster CIDR for
	// overlay and routed modes; zero means Local. Traffic inside it is
	// neither masqueraded nor isolated.
	Scope netip.Prefix
}

// Port is one published port.
type Port struct {
	// HostIP is the node address it answers on: zero for every address
	// of both families, 0.0.0.0 or :: for every address of one.
	HostIP        netip.Addr
	HostPort      uint16
	ContainerPort uint16
	Protocol      string // tcp | udp | sctp
}

// Attachment is one container's share of the rules.
type Attachment struct {
	Key string // stable per (network, container, ifName)
	// IPv4 and IPv6 are the container's addresses; zero for a family it
	// has none in (its ports are not published in that family).
	IPv4, IPv6 netip.Addr
	Ports      []Port
	// Earlier: attached by an earlier berth, before the network's rules
	// closing the node's 127/8 and an IPv4-only network's IPv6 (inRules,
	// closedRules). CHECK does not ask for those, which the network's
	// next ADD adds: after an upgrade it passes as before.
	Earlier bool
}

func hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])[:12]
}

func natChain(n string) string    { return "BERTH-NAT-" + hash(n) }
func fwdChain(n string) string    { return "BERTH-FWD-" + hash(n) }
func isoChain(n string) string    { return "BERTH-ISO-" + hash(n) }
func isdChain(n string) string    { return "BERTH-ISD-" + hash(n) }
func rpfChain(n string) string    { return "BERTH-RPF-" + hash(n) }
func inChain(n string) string     { return "BERTH-IN-" + hash(n) }
func no6Chain(n string) string    { return "BERTH-NO6-" + hash(n) }
func dnatChain(key string) string { return "BERTH-DN-" + hash(key) }

var families = []iptables.Family{iptables.IPv4, iptables.IPv6}

// inFamily is n's share of family f, false when n has no rules in f. An
// IPv4-only network on a bridge is closed in IPv6: its containers could
// otherwise turn IPv6 on in their own namespace and, once the node
// forwards IPv6 for another network, reach that network and the world
// from any source they like, with no rule of berth's in the way.
func (n Network) inFamily(f iptables.Family, b iptables.Backend) (familyNet, bool) {
	s := n.IPv4
	if f == iptables.IPv6 {
		s = n.IPv6
	}
	if !s.Local.IsValid() {
		closed := f == iptables.IPv6 && n.IPv4.Local.IsValid() && n.Bridge != ""
		return familyNet{Network: n, family: f, closed: closed}, closed
	}
	if !s.Scope.IsValid() {
		s.Scope = s.Local
	}
	return familyNet{Network: n, family: f, local: s.Local.Masked(), scope: s.Scope.Masked(), randomFully: b.RandomFully}, true
}

// familyNet is one network's rules in one family.
type familyNet struct {
	Network
	family       iptables.Family
	local, scope netip.Prefix
	randomFully  bool
	// closed: the network has no address in this family, and its
	// containers may send nothing in it (closedRules, inRules).
	closed bool
}

// Rules in the exact form iptables-save prints them, so that CHECK can
// compare what is installed with what should be.

func (n familyNet) masquerade() string {
	if n.randomFully {
		return "-j MASQUERADE --random-fully"
	}
	return "-j MASQUERADE"
}

func (n familyNet) natRules() []string {
	l := n.local.String()
	var rules []string
	if n.family == iptables.IPv4 {
		// Connections to a published port from localhost: the container
		// cannot answer 127.0.0.1, so the source becomes the gateway.
		rules = append(rules, "-s 127.0.0.0/8 -d "+l+" -m conntrack --ctstate DNAT "+n.masquerade())
	}
	// Hairpin: a container reaching a published port of its own network
	// must get the answer back through the node.
	rules = append(rules, "-s "+l+" -d "+l+" -m conntrack --ctstate DNAT "+n.masquerade())
	if n.Masq {
		multicast := "224.0.0.0/4"
		if n.family == iptables.IPv6 {
			multicast = "ff00::/8"
		}
		rules = append(rules,
			"-s "+l+" -d "+n.scope.String()+" -j RETURN",
			"-s "+l+" -d "+multicast+" -j RETURN",
			"-s "+l+" "+n.masquerade())
	}
	return rules
}

func (n familyNet) fwdRules() []string {
	l := n.local.String()
	rules := []string{
		"-s " + l + " -j ACCEPT",
		"-d " + l + " -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT",
	}
	if n.scope != n.local {
		rules = append(rules, "-s "+n.scope.String()+" -d "+l+" -j ACCEPT")
	}
	return rules
}

func (n familyNet) isoRules() []string {
	s := n.scope.String()
	return []string{
		// Published ports are public, answers are answers.
		"-s " + s + " -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j RETURN",
		"-s " + s + " ! -d " + s + " -j " + chainIsolation2,
	}
}

func (n familyNet) isdRules() []string { return []string{"-d " + n.scope.String() + " -j DROP"} }

// rpfRules drop IPv6 packets from the network's containers whose source
// the node would route elsewhere: another network's address, or one the
// container made up. In routed mode each container's /128 is routed
// through its own veth, so a container cannot take a neighbour's either.
func (n familyNet) rpfRules() []string {
	return []string{"-i " + n.Ingress + " -m rpfilter --invert -j DROP"}
}

// inRules keep the network's containers off what the node serves on
// 127.0.0.0/8 (CVE-2020-8558): route_localnet on the ingress, which lets
// the answers of a published port's connections from 127.0.0.1 back in
// (plugins/attach.EnableForwarding), would also let a container's own
// packets for 127.0.0.1 through to the node's localhost services. Those
// answers are ESTABLISHED by then; kube-proxy's KUBE-FIREWALL rule, but
// only on the network's ingress. Closed in IPv6: everything to the node.
func (n familyNet) inRules() []string {
	switch {
	case n.closed:
		return []string{"-i " + n.Bridge + " -j DROP"}
	case n.family == iptables.IPv6:
		return nil // no route_localnet: the kernel drops ::1 from outside
	}
	return []string{"-d 127.0.0.0/8 -i " + n.Ingress + " -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"}
}

// closedRules drop what the node would forward from or to the bridge of
// a network closed in this family. A bridge with no address of the
// family needs no neighbour discovery either: the node's own packets
// (OUTPUT) are left alone.
func (n familyNet) closedRules() []string {
	return []string{"-i " + n.Bridge + " -j DROP", "-o " + n.Bridge + " -j DROP"}
}

// localhostRule is the OUTPUT jump to the port mappings. IPv6 has no
// route_localnet: the kernel drops the answer to a connection DNATed from
// ::1 (a packet with a loopback address arriving on another device,
// RFC 4291), so [::1]:port is left alone and fails at once (connection
// refused) instead of hanging; 127.0.0.1 works.
func localhostRule(f iptables.Family) string {
	if f == iptables.IPv6 {
		return "! -d ::1/128 " + jumpHostPorts
	}
	return jumpHostPorts
}

// portInFamily says whether p is published in family f.
func portInFamily(p Port, f iptables.Family) bool {
	return !p.HostIP.IsValid() || p.HostIP.Is4() == (f == iptables.IPv4)
}

func (a *Attachment) addr(f iptables.Family) netip.Addr {
	if f == iptables.IPv6 {
		return a.IPv6
	}
	return a.IPv4
}

// dnatRules are a's port mappings in family f; none when a has no
// address there.
func (a *Attachment) dnatRules(f iptables.Family) []string {
	if a == nil || !a.addr(f).IsValid() {
		return nil
	}
	ip := a.addr(f)
	var rules []string
	for _, p := range a.Ports {
		if !portInFamily(p, f) {
			continue
		}
		r := ""
		if p.HostIP.IsValid() && !p.HostIP.IsUnspecified() {
			r = fmt.Sprintf("-d %s/%d ", p.HostIP, p.HostIP.BitLen())
		}
		r += fmt.Sprintf("-p %s -m %s --dport %d -j DNAT --to-destination %s",
			p.Protocol, p.Protocol, p.HostPort, netip.AddrPortFrom(ip, p.ContainerPort))
		rules = append(rules, r)
	}
	return rules
}

// eachFamily runs do for each family the network is on, one after the
// other. Side by side (the second family's restore on a goroutine that
// enters the caller's namespace) a dual-stack ADD of berth-bridge was
// slower on 2 cores: 53 against 50 ms (p50 of 50 ADDs), 1.48 against
// 1.40 times an IPv4 ADD in the quick bench. Each iptables-restore is an
// exec that keeps a CPU busy while the plugin sets up the veth, and the
// commits take the namespace's one nf_tables mutex anyway.
func eachFamily(n Network, b iptables.Backend, do func(familyNet) error) error {
	var fns []familyNet
	for _, f := range families {
		if fn, ok := n.inFamily(f, b); ok && (!fn.closed || carries(b, f)) {
			fns = append(fns, fn)
		}
	}
	return inTurn(fns, do)
}

// carries reports whether the node can carry family f at all: a node
// without IPv6 (the kernel's IPv6 off, or no ip6tables to write rules
// with, in which case no network of berth's has IPv6 either) needs no
// rule closing it, and an ADD must not fail for want of one.
func carries(b iptables.Backend, f iptables.Family) bool {
	if f != iptables.IPv6 {
		return true
	}
	_, err := os.Stat("/proc/sys/net/ipv6")
	return err == nil && b.Installed(f)
}

// inTurn runs do for each of xs, one after the other (see eachFamily),
// and joins their errors: one family's failure does not keep the other's
// rules from being written or removed.
func inTurn[T any](xs []T, do func(T) error) error {
	var errs []error
	for _, x := range xs {
		errs = append(errs, do(x))
	}
	return errors.Join(errs...)
}

// Ensure installs the network's rules and, when a has ports, a's port
// mappings: per family of the network, at most one iptables-restore
// (and an iptables-save if the remembered rules are stale).
func Ensure(n Network, a *Attachment) error {
	lock, err := iptables.Lock()
	if err != nil {
		return err
	}
	defer lock.Release()
	b, err := iptables.Open()
	if err != nil {
		return err
	}
	if n.IPv6.Local.IsValid() && n.Ingress == "" {
		return fmt.Errorf("%w: network %s has IPv6 but no ingress interface for its anti-spoofing rule", cnierr.ErrInvalidConfig, n.Name)
	}
	cycle := b.Begin()
	defer cycle.Close()
	return eachFamily(n, b, func(fn familyNet) error { return ensure(cycle, fn, a) })
}

func ensure(cycle *iptables.Cycle, n familyNet, a *Attachment) error {
	tables, err := cycle.Save(n.family)
	if err != nil {
		return err
	}
	filter := tables.Get("filter")
	f := iptables.NewBatch("filter")
	ensureInput(f, filter, n)
	if n.closed {
		ensureChain(f, filter, chainForward)
		f.Owned(filter, no6Chain(n.Name), n.closedRules())
		if !filter.Jumps(chainForward, no6Chain(n.Name)) {
			f.Insert(chainForward, "-j "+no6Chain(n.Name)) // before any network's accepts
		}
		if !filter.Jumps("FORWARD", chainForward) {
			f.Insert("FORWARD", "-j "+chainForward)
		}
		return cycle.Apply(n.family, f)
	}
	// A network given IPv6 since its last ADD (a lease or config that
	// gained a range) opens it again.
	removeOwned(f, filter, chainForward, no6Chain(n.Name))
	if len(n.inRules()) == 0 {
		removeOwned(f, filter, chainInput, inChain(n.Name))
	}

	nat := tables.Get("nat")
	b := iptables.NewBatch("nat")
	ensureChain(b, nat, chainHostPorts)
	ensureChain(b, nat, chainPostrouting)
	b.Owned(nat, natChain(n.Name), n.natRules())
	if dnat := a.dnatRules(n.family); len(dnat) > 0 {
		b.Owned(nat, dnatChain(a.Key), dnat)
		ensureJump(b, nat, chainHostPorts, "-j "+dnatChain(a.Key))
	}
	ensureJump(b, nat, chainPostrouting, "-j "+natChain(n.Name))
	ensureJump(b, nat, "PREROUTING", jumpHostPorts)
	ensureJump(b, nat, "OUTPUT", localhostRule(n.family))
	ensureJump(b, nat, "POSTROUTING", "-j "+chainPostrouting)

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

	r := iptables.NewBatch("raw")
	if n.family == iptables.IPv6 {
		raw := tables.Get("raw")
		ensureChain(r, raw, chainAntispoof)
		r.Owned(raw, rpfChain(n.Name), n.rpfRules())
		ensureJump(r, raw, chainAntispoof, "-j "+rpfChain(n.Name))
		ensureJump(r, raw, "PREROUTING", "-j "+chainAntispoof)
	}
	return cycle.Apply(n.family, b, f, r)
}

// RemoveAttachment deletes a's port mappings and, when isLast reports no
// container left on the network, the network's rules in both families;
// when no berth network is left at all, the shared chains and builtin
// jumps go too. isLast runs under the lock, so a parallel ADD either sees
// the network's rules gone or keeps them.
func RemoveAttachment(network string, a *Attachment, isLast func() bool) error {
	lock, err := iptables.Lock()
	if err != nil {
		return err
	}
	defer lock.Release()
	last := isLast()
	if !last && len(a.dnatRules(iptables.IPv4))+len(a.dnatRules(iptables.IPv6)) == 0 {
		return nil // nothing of this container is in iptables
	}
	b, err := iptables.Open()
	if err != nil {
		return err
	}
	var fams []iptables.Family
	for _, f := range families {
		// The network's rules may be in either family, whatever the
		// config given to this DEL says: it may lack the lease. A family
		// the node has no tools for holds none.
		if (last || len(a.dnatRules(f)) > 0) && b.Installed(f) {
			fams = append(fams, f)
		}
	}
	if len(fams) == 0 {
		return nil
	}
	cycle := b.Begin()
	defer cycle.Close()
	return inTurn(fams, func(f iptables.Family) error { return remove(cycle, f, network, a.Key, last) })
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
	b, err := iptables.Open()
	if err != nil {
		return err
	}
	cycle := b.Begin()
	defer cycle.Close()
	fams := slices.DeleteFunc(slices.Clone(families), func(f iptables.Family) bool { return !b.Installed(f) })
	return inTurn(fams, func(f iptables.Family) error { return remove(cycle, f, network, "", true) })
}

// remove deletes the port mappings of key (none when "") and, when last,
// the network's chains and the shared ones no other network jumps to.
func remove(cycle *iptables.Cycle, family iptables.Family, network, key string, last bool) error {
	tables, err := cycle.Save(family)
	if err != nil {
		return err
	}
	nat := tables.Get("nat")
	b := iptables.NewBatch("nat")
	if key != "" {
		removeOwned(b, nat, chainHostPorts, dnatChain(key))
	}
	f := iptables.NewBatch("filter")
	r := iptables.NewBatch("raw")
	if last {
		removeOwned(b, nat, chainPostrouting, natChain(network))
		if onlyJumpsTo(nat, chainHostPorts, dnatChain(key)) && onlyJumpsTo(nat, chainPostrouting, natChain(network)) {
			b.DeleteJumps(nat, "OUTPUT", chainHostPorts)
			removeOwned(b, nat, "PREROUTING", chainHostPorts)
			removeOwned(b, nat, "POSTROUTING", chainPostrouting)
		}
		filter := tables.Get("filter")
		removeOwned(f, filter, chainForward, fwdChain(network))
		removeOwned(f, filter, chainForward, no6Chain(network))
		removeOwned(f, filter, chainIsolation, isoChain(network))
		removeOwned(f, filter, chainIsolation2, isdChain(network))
		removeOwned(f, filter, chainInput, inChain(network))
		if onlyJumpsTo(filter, chainInput, inChain(network)) {
			removeOwned(f, filter, "INPUT", chainInput)
		}
		if onlyJumpsTo(filter, chainForward, fwdChain(network), no6Chain(network), chainIsolation) {
			removeOwned(f, filter, chainForward, chainIsolation)
			removeOwned(f, filter, "FORWARD", chainForward)
			if filter.HasChain(chainIsolation2) {
				f.DeleteChain(filter, chainIsolation2)
			}
		}
		raw := tables.Get("raw")
		removeOwned(r, raw, chainAntispoof, rpfChain(network))
		if onlyJumpsTo(raw, chainAntispoof, rpfChain(network)) {
			removeOwned(r, raw, "PREROUTING", chainAntispoof)
		}
	}
	return cycle.Apply(family, b, f, r)
}

// Check reports the first rule of n (and a) that is missing or altered,
// in any family of the network.
func Check(n Network, a *Attachment) error {
	// Read while no berth call commits: a save that overlaps a commit
	// can list a chain's rules twice (seen with iptables-nft 1.8.9 under
	// parallel ADD and CHECK), which CHECK would report as a fault.
	lock, err := iptables.SharedLock()
	if err != nil {
		return err
	}
	defer lock.Release()
	b, err := iptables.Open()
	if err != nil {
		return err
	}
	return eachFamily(n, b, func(fn familyNet) error { return check(b, fn, a) })
}

func check(backend iptables.Backend, n familyNet, a *Attachment) error {
	tables, err := backend.Save(n.family)
	if err != nil {
		return err
	}
	nat, filter, raw := tables.Get("nat"), tables.Get("filter"), tables.Get("raw")
	var wants []want
	var jumps []jump
	earlier := a != nil && a.Earlier
	if in := n.inRules(); len(in) > 0 && !earlier {
		wants = append(wants, want{filter, inChain(n.Name), in})
		jumps = append(jumps, jump{filter, "INPUT", chainInput}, jump{filter, chainInput, inChain(n.Name)})
	}
	if n.closed {
		if earlier {
			return nil // nothing else of berth's is in this family
		}
		wants = append(wants, want{filter, no6Chain(n.Name), n.closedRules()})
		jumps = append(jumps, jump{filter, "FORWARD", chainForward}, jump{filter, chainForward, no6Chain(n.Name)})
		return checkRules(n, wants, jumps)
	}
	wants = append(wants, want{nat, natChain(n.Name), n.natRules()}, want{filter, fwdChain(n.Name), n.fwdRules()}, want{filter, isoChain(n.Name), n.isoRules()})
	if n.Isolated {
		wants = append(wants, want{filter, isdChain(n.Name), n.isdRules()})
	}
	if n.family == iptables.IPv6 {
		wants = append(wants, want{raw, rpfChain(n.Name), n.rpfRules()})
	}
	if dnat := a.dnatRules(n.family); len(dnat) > 0 {
		wants = append(wants, want{nat, dnatChain(a.Key), dnat})
		if !nat.Jumps(chainHostPorts, dnatChain(a.Key)) {
			return fmt.Errorf("%w: %s nat %s has no jump to the container's port mappings %s", cnierr.ErrCheckFailed, n.family, chainHostPorts, dnatChain(a.Key))
		}
	}
	jumps = append(jumps,
		jump{nat, "PREROUTING", chainHostPorts}, jump{nat, "OUTPUT", chainHostPorts},
		jump{nat, "POSTROUTING", chainPostrouting}, jump{nat, chainPostrouting, natChain(n.Name)},
		jump{filter, "FORWARD", chainForward}, jump{filter, chainForward, fwdChain(n.Name)})
	if n.family == iptables.IPv6 {
		jumps = append(jumps, jump{raw, "PREROUTING", chainAntispoof}, jump{raw, chainAntispoof, rpfChain(n.Name)})
	}
	return checkRules(n, wants, jumps)
}

// want is a chain of berth's and its exact rules; jump, a jump CHECK
// looks for.
type want struct {
	t     *iptables.Table
	chain string
	rules []string
}

type jump struct {
	t             *iptables.Table
	chain, target string
}

// checkRules fails on the first of wants whose chain does not hold
// exactly its rules, or of jumps missing.
func checkRules(n familyNet, wants []want, jumps []jump) error {
	for _, w := range wants {
		got := w.t.Rules(w.chain)
		if !w.t.HasChain(w.chain) || fmt.Sprint(got) != fmt.Sprint(w.rules) {
			return fmt.Errorf("%w: %s %s chain %s of network %s: have %q, want %q", cnierr.ErrCheckFailed, n.family, w.t.Name, w.chain, n.Name, got, w.rules)
		}
	}
	for _, j := range jumps {
		if !j.t.Jumps(j.chain, j.target) {
			return fmt.Errorf("%w: %s %s chain %s has no jump to %s", cnierr.ErrCheckFailed, n.family, j.t.Name, j.chain, j.target)
		}
	}
	return nil
}

// ensureInput installs n's BERTH-IN chain and the jumps to it, first in
// INPUT so that no ACCEPT of the node's own comes before it.
func ensureInput(f *iptables.Batch, filter *iptables.Table, n familyNet) {
	rules := n.inRules()
	if len(rules) == 0 {
		return
	}
	ensureChain(f, filter, chainInput)
	f.Owned(filter, inChain(n.Name), rules)
	ensureJump(f, filter, chainInput, "-j "+inChain(n.Name))
	if !filter.Jumps("INPUT", chainInput) {
		f.Insert("INPUT", "-j "+chainInput)
	}
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
