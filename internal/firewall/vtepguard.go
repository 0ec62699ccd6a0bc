package firewall

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/berthnet/berth/internal/iptables"
)

// VTEPGuard keeps containers out of the node's VTEP. Linux's VXLAN
// socket decapsulates a packet from any source, learning or not, so a
// container that sends UDP to the VTEP port (its inner frame addressed
// to the VTEP's MAC, which is derived from public names) would have
// frames with any source delivered on the node, into every network's
// containers and the node's own sockets; sent to another node of the
// network, masquerade gives it this node's address, so that node takes
// it for a peer's tunnel traffic (its eBPF programs decapsulate it too).
// Calico drops UDP to its VXLAN port from every workload, whatever the
// destination; berth drops only what could reach a VTEP:
//
//	raw PREROUTING   -j BERTH-VTEP-<network>   (first rule)
//	BERTH-VTEP-<net> -i <underlay> -j RETURN   peers' VXLAN arrives there
//	                 -p udp --dport <port> -m addrtype --dst-type LOCAL,BROADCAST,MULTICAST -j DROP
//	                 -d <peer node address> -p udp --dport <port> -j DROP   (each peer)
//
// The same in ip6tables (LOCAL and MULTICAST, see Rules) for a VTEP over
// an IPv6 underlay, and for the peers' addresses of the other family,
// which cost nothing. Nothing a container sends enters the node through the
// underlay link, and every container's packet (bridge, routed veth, any
// berth network or none) passes raw PREROUTING before it is delivered
// or forwarded: in raw, before conntrack, no plugin rule (BERTH-FORWARD
// accepts the network's traffic) and no NAT can come first, and no
// ordering with the plugins' FORWARD jumps is needed. Container UDP to
// the port elsewhere (a VXLAN service outside the cluster) still flows.
//
// netd of a vxlan network owns the chain: it writes it in its reconcile
// passes (whole chain: a flush by an administrator is repaired at the
// next full pass), keeps it when it stops (a restart does not open a
// window) and removes it on netd leave and netd uninstall.
type VTEPGuard struct {
	Network  string
	Port     int
	Underlay string       // the VTEP's underlay link, as iptables -i takes it
	Peers    []netip.Addr // the other nodes' underlay addresses, of both families
}

// GuardChain is the raw chain of network's VTEP guard.
func GuardChain(network string) string { return "BERTH-VTEP-" + hash(network) }

// Rules are the guard's chain in family f, in iptables-save's form.
func (g VTEPGuard) Rules(f iptables.Family) []string {
	udp := fmt.Sprintf("-p udp -m udp --dport %d", g.Port)
	// IPv4's addrtype matches any of the types listed, IPv6's wants a
	// multicast address besides a local one when both are listed (and
	// IPv6 has no broadcast): one rule per type there.
	types, bits := []string{"LOCAL,BROADCAST,MULTICAST"}, 32
	if f == iptables.IPv6 {
		types, bits = []string{"LOCAL", "MULTICAST"}, 128
	}
	rules := []string{"-i " + g.Underlay + " -j RETURN"}
	for _, t := range types {
		rules = append(rules, udp+" -m addrtype --dst-type "+t+" -j DROP")
	}
	peers := slices.Clone(g.Peers)
	slices.SortFunc(peers, netip.Addr.Compare)
	for _, p := range slices.Compact(peers) {
		if p.Is6() == (f == iptables.IPv6) {
			rules = append(rules, fmt.Sprintf("-d %s/%d %s -j DROP", p, bits, udp))
		}
	}
	return rules
}

// EnsureVTEPGuard makes the guard's chains and jumps what g says, in both
// families, and reports whether it changed anything. Chains that are
// right already cost no commit.
func EnsureVTEPGuard(g VTEPGuard) (changed bool, err error) {
	if g.Port <= 0 || g.Underlay == "" {
		return false, fmt.Errorf("VTEP guard of network %s: port %d, underlay %q: both are needed", g.Network, g.Port, g.Underlay)
	}
	err = withCycle(func(cycle *iptables.Cycle, f iptables.Family) error {
		tables, err := cycle.Save(f)
		if err != nil {
			return fmt.Errorf("VTEP guard of network %s: %w", g.Network, err)
		}
		raw, chain := tables.Get("raw"), GuardChain(g.Network)
		b := iptables.NewBatch("raw")
		b.Owned(raw, chain, g.Rules(f))
		if !raw.Jumps("PREROUTING", chain) {
			b.Insert("PREROUTING", "-j "+chain) // before anything that could accept
		}
		changed = changed || !b.Empty()
		if err := cycle.Apply(f, b); err != nil {
			return fmt.Errorf("VTEP guard of network %s: %w", g.Network, err)
		}
		return nil
	})
	return changed, err
}

// RemoveVTEPGuard deletes network's guard, in both families, if there.
func RemoveVTEPGuard(network string) error {
	return withCycle(func(cycle *iptables.Cycle, f iptables.Family) error {
		tables, err := cycle.Save(f)
		if err != nil {
			return fmt.Errorf("removing the VTEP guard of network %s: %w", network, err)
		}
		b := iptables.NewBatch("raw")
		removeOwned(b, tables.Get("raw"), "PREROUTING", GuardChain(network))
		if err := cycle.Apply(f, b); err != nil {
			return fmt.Errorf("removing the VTEP guard of network %s: %w", network, err)
		}
		return nil
	})
}

// withCycle runs do for each family in one read-modify-write cycle under
// the namespace's iptables lock, the one the plugins take.
func withCycle(do func(*iptables.Cycle, iptables.Family) error) error {
	lock, err := iptables.Lock()
	if err != nil {
		return err
	}
	defer lock.Release()
	b, err := iptables.Open()
	if err != nil {
		return err
	}
	cycle := b.Begin()
	defer cycle.Close()
	return inTurn(families, func(f iptables.Family) error { return do(cycle, f) })
}
