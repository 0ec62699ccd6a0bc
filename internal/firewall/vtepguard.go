package firewall

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// VTEPGuard keeps containers out of every VTEP. Linux's VXLAN socket
// decapsulates a packet to any of the node's addresses from any source,
// learning or not, so a container that sends UDP to the VTEP port (its
// inner frame addressed to the VTEP's MAC, which is derived from public
// names) would have frames with any source delivered on the node, into
// every network's containers and the node's own sockets; sent to another
// node of the network, masquerade gives it this node's address, so that
// node takes it for a peer's tunnel traffic (its eBPF programs
// decapsulate it too). berth drops UDP to the VTEP port, whatever the
// destination (a peer's VTEP answers at each of its addresses, a VIP or a
// secondary address included, which no lease names), unless it comes
// from a peer: in an nftables table of its own,
//
//	table inet berth
//	  set vtep-<net>-v4 { type ipv4_addr }  the peers' tunnel addresses
//	  set vtep-<net>-v6 { type ipv6_addr }
//	  chain vtep-<net>   filter hook prerouting priority raw (-300)
//	    iifname <underlay> return
//	    udp dport <port> meta iifkind "veth" drop  and so on: untrustedKinds
//	    udp dport <port> ip saddr @vtep-<net>-v4 return
//	    udp dport <port> ip6 saddr @vtep-<net>-v6 return
//	    udp dport <port> drop
//
// As Calico does (felix accepts VXLAN from the set of known hosts'
// tunnel addresses on any interface, and drops the rest), a peer's VXLAN
// passes on another link than the VTEP's: a multi-homed node may receive
// it there (asymmetric routing, a second uplink, ARP answered by another
// NIC of the same segment). The sets hold the node addresses the peers'
// VTEPs send from (their leases), which netd keeps equal to the leases.
// A source address proves nothing where something other than the peer
// can send: berth's source guard keeps berth's containers from using a
// peer's address, but not a container of another plugin (Docker's
// docker0, CAP_NET_RAW by default), whose veth or bridge the packet
// arrives on, nor a container's packet that an operator's tunnel (VXLAN,
// GRE, WireGuard...) decapsulates. So the peers' addresses are trusted
// only on links that can be a node's uplink: the VTEP port is dropped
// first on links of a kind containers or tunnels sit behind
// (untrustedKinds, matched by nftables' meta iifkind; one rule per kind,
// which the comparison with the kernel reads like any other). A physical
// NIC has no kind (the expression does not match: NFT_BREAK), nor has lo;
// bonds, teams, VLANs, macvlans and VRFs keep the peers. What is left: a
// link of such a kind that a workload outside berth can send on, e.g. the
// node's own macvlan on the NIC that bridge-mode macvlan containers sit
// on too (a macvlan container on the NIC alone does not reach the node:
// the macvlan driver sends its packets for the NIC's address out on the
// wire, not into the node's stack).
//
// The underlay link stays open to everything, as before: nothing a
// container sends enters the node there, and every container's packet
// (bridge, routed veth, any berth network or none) passes prerouting on
// its own link before it is delivered or forwarded, where the last rule
// drops it. Keeping it means a single-homed node never drops a peer's
// VXLAN that its own view of the leases does not hold yet: a new node
// sends to this one as soon as it has read this node's lease, which may
// be before this node's watch sees the new one; the same while netd is
// stopped, or its nftables write fails. Hosts on the underlay that are
// no peers can send VXLAN there, as with flannel; Calico drops those.
//
// It is written through netlink, so that netd needs no iptables tools
// (berth's image has none). Every table's hooks run, so the chain drops
// whatever iptables-nft's or iptables-legacy's tables accept. At raw
// priority, before conntrack, no plugin rule (BERTH-FORWARD accepts the
// network's traffic) and no NAT can come first. The price: a container
// cannot send UDP to that port anywhere (a VXLAN service outside the
// cluster), as with Calico.
//
// netd of a vxlan network owns the chain and its sets: it compares them
// with the kernel on its full passes (EnsureVTEPGuard), adds and deletes
// the sets' elements when only they differ and writes the rest anew
// otherwise, in one transaction (a flushed or deleted table is
// repaired); when only its peers change, it adds and deletes their
// elements without reading the kernel (UpdateVTEPGuardPeers). It keeps
// them when it stops (a restart does not open a window) and removes them
// on netd leave and netd uninstall.
type VTEPGuard struct {
	Network  string
	Port     int
	Underlay string // the VTEP's underlay link, as iifname matches it
	// Peers are the addresses the peers' VTEPs send from, of either
	// family, in any order.
	Peers []netip.Addr
}

// GuardTable is the nftables table (family inet) of berth's VTEP guards.
const GuardTable = "berth"

// GuardChain is the chain of network's VTEP guard in GuardTable.
func GuardChain(network string) string { return "vtep-" + hash(network) }

// GuardSet is the set of network's peers' tunnel addresses of one family
// in GuardTable.
func GuardSet(network string, v6 bool) string {
	if v6 {
		return GuardChain(network) + "-v6"
	}
	return GuardChain(network) + "-v4"
}

var guardTable = &nftables.Table{Name: GuardTable, Family: nftables.TableFamilyINet}

// guardRule is one rule of the chain: its expressions, and the nft
// syntax they stand for, which the rule carries as its comment (for
// people, netd status and the tests, without an nft binary). The
// comparison with the kernel takes both: the expressions are what runs
// (the kernel gives back exactly what was written, which the namespace
// test checks), the text catches a rule put there by someone else.
type guardRule struct {
	text  string
	exprs []expr.Any
}

// rules are the guard's chain, in order, for both families.
func (g VTEPGuard) rules() []guardRule {
	dport := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(g.Port))},
	}
	fromPeer := func(v6 bool) guardRule {
		ip, proto, offset, length := "ip", byte(unix.NFPROTO_IPV4), uint32(12), uint32(4)
		if v6 {
			ip, proto, offset, length = "ip6", unix.NFPROTO_IPV6, 8, 16
		}
		set := GuardSet(g.Network, v6)
		return guardRule{
			text: fmt.Sprintf("udp dport %d %s saddr @%s return", g.Port, ip, set),
			exprs: slices.Concat(dport, []expr.Any{
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: length},
				&expr.Lookup{SourceRegister: 1, SetName: set},
				&expr.Verdict{Kind: expr.VerdictReturn},
			}),
		}
	}
	fromKind := func(kind string) guardRule {
		return guardRule{
			text: fmt.Sprintf("udp dport %d meta iifkind %q drop", g.Port, kind),
			exprs: slices.Concat(dport, []expr.Any{
				&expr.Meta{Key: metaKeyIIFKIND, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameData(kind)},
				&expr.Verdict{Kind: expr.VerdictDrop},
			}),
		}
	}
	rules := []guardRule{{
		text: fmt.Sprintf("iifname %q return", g.Underlay),
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameData(g.Underlay)},
			&expr.Verdict{Kind: expr.VerdictReturn},
		},
	}}
	for _, kind := range untrustedKinds {
		rules = append(rules, fromKind(kind))
	}
	return append(rules, fromPeer(false), fromPeer(true), guardRule{
		text:  fmt.Sprintf("udp dport %d drop", g.Port),
		exprs: slices.Concat(dport, []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}),
	})
}

// ifnameData is a link's name or kind as nft compares it: the kernel
// loads both NUL-padded to IFNAMSIZ.
func ifnameData(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// untrustedKinds are the kinds of link (rtnl_link_ops->kind, as `ip -d
// link` shows it) that containers or tunnels sit behind: what arrives on
// them may carry a peer's address as its source without being the peer's
// (a container of another plugin on a veth or bridge, a packet
// decapsulated from a tunnel a container can send into), so a peer's
// address is not trusted there. Uplinks stay trusted: physical NICs
// (which have no kind, so that the meta expression does not match),
// bonds, teams, VLANs, macvlans and VRFs.
var untrustedKinds = []string{
	"veth", "netkit", "bridge", "tun",
	"vxlan", "geneve", "gre", "gretap", "ip6gre", "ip6gretap", "erspan", "ip6erspan",
	"ipip", "ip6tnl", "sit", "vti", "vti6", "xfrm", "wireguard",
}

// metaKeyIIFKIND is NFT_META_IIFKIND (linux/netfilter/nf_tables.h),
// which neither google/nftables v0.3.0 nor x/sys/unix names.
const metaKeyIIFKIND expr.MetaKey = 26

// Rules are the guard's chain, in nft's syntax.
func (g VTEPGuard) Rules() []string {
	var texts []string
	for _, r := range g.rules() {
		texts = append(texts, r.text)
	}
	return texts
}

// peers are g.Peers of one family, sorted, each once.
func (g VTEPGuard) peers(v6 bool) []netip.Addr { return ofFamily(g.Peers, v6) }

// ofFamily is addrs of one family, sorted, each once.
func ofFamily(addrs []netip.Addr, v6 bool) []netip.Addr {
	var of []netip.Addr
	for _, a := range addrs {
		if a = a.Unmap(); a.IsValid() && a.Is6() == v6 {
			of = append(of, a)
		}
	}
	slices.SortFunc(of, netip.Addr.Compare)
	return slices.Compact(of)
}

// SameChain reports whether g and o have the same chain and sets, their
// peers aside: the same network, port and underlay link.
func (g VTEPGuard) SameChain(o VTEPGuard) bool {
	return g.Network == o.Network && g.Port == o.Port && g.Underlay == o.Underlay
}

func (g VTEPGuard) valid() error {
	if g.Port <= 0 || g.Port > 65535 || g.Underlay == "" || len(g.Underlay) >= unix.IFNAMSIZ {
		return fmt.Errorf("VTEP guard of network %s: port %d, underlay %q: a port and a link name are needed", g.Network, g.Port, g.Underlay)
	}
	return nil
}

// chainState is how the kernel has the guard's chain.
type chainState int

const (
	absent    chainState = iota
	different            // another hook, priority or type: made anew
	right
)

// setState is how the kernel has one of the guard's sets.
type setState int

const (
	noSet    setState = iota
	otherSet          // another key type or flags: made anew
	rightSet
)

// VTEPGuardState is a network's guard as the kernel has it.
type VTEPGuardState struct {
	Chain chainState
	Rules []string     // the chain's rules, by their comments (guardRule)
	exprs [][]expr.Any // and their expressions
	// Peers are the sets' elements, IPv4 then IPv6, each sorted.
	Peers []netip.Addr
	sets  [2]setState // IPv4's, IPv6's
}

// Exists reports whether the chain is there, hooked as the guard's.
func (s VTEPGuardState) Exists() bool { return s.Chain == right }

// peers are s.Peers of one family.
func (s VTEPGuardState) peers(v6 bool) []netip.Addr { return ofFamily(s.Peers, v6) }

// guardChange is what makes the kernel's guard g.
type guardChange struct {
	// rewrite: the chain and its sets are written anew (the chain, a
	// rule or a set is not g's).
	rewrite bool
	// Otherwise the peers whose addresses are added to their family's set,
	// and removed from it.
	add, del []netip.Addr
}

func (c guardChange) none() bool { return !c.rewrite && len(c.add) == 0 && len(c.del) == 0 }

// diff is what turns the kernel's guard, have, into g.
func (g VTEPGuard) diff(have VTEPGuardState) guardChange {
	var exprs [][]expr.Any
	for _, r := range g.rules() {
		exprs = append(exprs, r.exprs)
	}
	if have.Chain != right || have.sets != [2]setState{rightSet, rightSet} ||
		!slices.Equal(have.Rules, g.Rules()) || !reflect.DeepEqual(have.exprs, exprs) {
		return guardChange{rewrite: true}
	}
	return peerChange(g.Peers, have.Peers)
}

// peerChange is what turns the sets holding the peers got into sets
// holding want.
func peerChange(want, got []netip.Addr) guardChange {
	var c guardChange
	for _, v6 := range []bool{false, true} {
		want, got := ofFamily(want, v6), ofFamily(got, v6)
		for _, a := range want {
			if _, found := slices.BinarySearchFunc(got, a, netip.Addr.Compare); !found {
				c.add = append(c.add, a)
			}
		}
		for _, a := range got {
			if _, found := slices.BinarySearchFunc(want, a, netip.Addr.Compare); !found {
				c.del = append(c.del, a)
			}
		}
	}
	return c
}

// written says what change does to the guard, for the log and netd status.
func (g VTEPGuard) written(c guardChange) []string {
	prefix := fmt.Sprintf("VTEP guard inet %s %s: ", GuardTable, GuardChain(g.Network))
	if c.rewrite {
		// A large cluster's addresses would fill the log line.
		addrs := slices.Concat(g.peers(false), g.peers(true))
		peers := fmt.Sprintf("%d peers", len(addrs))
		switch {
		case len(addrs) == 0:
			peers = "no peer"
		case len(addrs) <= 8:
			peers = "the peers " + join(addrs)
		}
		return []string{fmt.Sprintf("%swritten (port %d, from %s on uplinks or over %s only)", prefix, g.Port, peers, g.Underlay)}
	}
	var what []string
	if len(c.add) > 0 {
		what = append(what, prefix+"peers "+join(c.add)+" let in")
	}
	if len(c.del) > 0 {
		what = append(what, prefix+"peers "+join(c.del)+" no longer let in")
	}
	return what
}

func join(addrs []netip.Addr) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// guardChain is network's base chain.
func guardChain(network string) *nftables.Chain {
	policy := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: GuardChain(network), Table: guardTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &policy}
}

// guardSet is network's set of one family's peer addresses.
func guardSet(network string, v6 bool) *nftables.Set {
	s := &nftables.Set{Table: guardTable, Name: GuardSet(network, false), KeyType: nftables.TypeIPAddr}
	if v6 {
		s.Name, s.KeyType = GuardSet(network, true), nftables.TypeIP6Addr
	}
	return s
}

// ReadVTEPGuard reads network's guard from the calling thread's network
// namespace.
func ReadVTEPGuard(network string) (VTEPGuardState, error) {
	s, err := readGuard(newConn(), network)
	if err != nil {
		return s, fmt.Errorf("reading the VTEP guard of network %s (nftables inet %s): %w", network, GuardTable, err)
	}
	return s, nil
}

func readGuard(c *nftables.Conn, network string) (VTEPGuardState, error) {
	var s VTEPGuardState
	if ok, err := hasGuardTable(c); err != nil || !ok {
		return s, err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return s, err
	}
	chain := guardChain(network)
	for _, ch := range chains {
		if ch.Table.Name != GuardTable || ch.Name != chain.Name {
			continue
		}
		s.Chain = different
		if ch.Type == chain.Type && ch.Hooknum != nil && *ch.Hooknum == *chain.Hooknum &&
			ch.Priority != nil && *ch.Priority == *chain.Priority && (ch.Policy == nil || *ch.Policy == *chain.Policy) {
			s.Chain = right
		}
		rules, err := c.GetRules(guardTable, chain)
		if err != nil {
			return s, err
		}
		for _, r := range rules {
			text, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			s.Rules = append(s.Rules, text)
			s.exprs = append(s.exprs, r.Exprs)
		}
	}
	sets, err := c.GetSets(guardTable)
	if err != nil {
		return s, err
	}
	for i, v6 := range []bool{false, true} {
		want := guardSet(network, v6)
		at := slices.IndexFunc(sets, func(set *nftables.Set) bool { return set.Name == want.Name })
		if at < 0 {
			continue
		}
		set := sets[at]
		s.sets[i] = otherSet
		// A size caps the elements: adding peers past it fails (ENFILE)
		// on every pass, so such a set is made anew like one of another type.
		if set.KeyType.Name != want.KeyType.Name || set.KeyType.Bytes != want.KeyType.Bytes || set.Interval || set.IsMap ||
			set.Constant || set.Anonymous || set.HasTimeout || set.Dynamic || set.Concatenation || set.Size != 0 {
			continue
		}
		s.sets[i] = rightSet
		elems, err := c.GetSetElements(set)
		if err != nil {
			return s, err
		}
		var addrs []netip.Addr
		for _, e := range elems {
			if a, ok := netip.AddrFromSlice(e.Key); ok {
				addrs = append(addrs, a)
			}
		}
		slices.SortFunc(addrs, netip.Addr.Compare)
		s.Peers = append(s.Peers, addrs...)
	}
	return s, nil
}

// newConn talks to the calling thread's network namespace: the
// library opens a socket for each request there, none kept.
func newConn() *nftables.Conn {
	c, _ := nftables.New() // without options it fails never
	return c
}

func hasGuardTable(c *nftables.Conn) (bool, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == GuardTable }), nil
}

// EnsureVTEPGuard makes the calling thread's network namespace hold the
// guard g, with one nftables transaction, and returns what it changed:
// nothing, and no write, when the kernel has it already.
func EnsureVTEPGuard(g VTEPGuard) ([]string, error) {
	if err := g.valid(); err != nil {
		return nil, err
	}
	c := newConn()
	have, err := readGuard(c, g.Network)
	if err != nil {
		return nil, fmt.Errorf("VTEP guard of network %s: reading nftables inet %s: %w", g.Network, GuardTable, err)
	}
	change := g.diff(have)
	if change.none() {
		return nil, nil
	}
	if err := applyGuard(c, g, have, change); err != nil {
		return nil, fmt.Errorf("VTEP guard of network %s: writing nftables inet %s (needs CAP_NET_ADMIN and the kernel's nf_tables): %w", g.Network, GuardTable, err)
	}
	return g.written(change), nil
}

// UpdateVTEPGuardPeers turns the guard last, which the kernel holds as
// far as the caller knows (it wrote it and nothing failed since), into g,
// which differs from it in its peers only (SameChain): it adds and deletes
// their set elements in one transaction, without reading the kernel. A
// node's netd does it on every join and leave in the cluster, where the
// read cost as much as the write (1.5-3 ms; 50 netds on 2 CPUs made a
// join converge 50-100 ms later). When the kernel's guard is not last
// (a set changed by hand: deleting an element it lacks fails the
// transaction, which then changes nothing), it fails: EnsureVTEPGuard
// compares and repairs.
func UpdateVTEPGuardPeers(last, g VTEPGuard) ([]string, error) {
	if !g.SameChain(last) {
		return nil, fmt.Errorf("VTEP guard of network %s: the chain changed, not only the peers", g.Network)
	}
	change := peerChange(g.Peers, last.Peers)
	if change.none() {
		return nil, nil
	}
	if err := applyGuard(newConn(), g, VTEPGuardState{}, change); err != nil {
		return nil, fmt.Errorf("VTEP guard of network %s: changing the peers in nftables inet %s: %w", g.Network, GuardTable, err)
	}
	return g.written(change), nil
}

// PendingVTEPGuard is what EnsureVTEPGuard would change now.
func PendingVTEPGuard(g VTEPGuard) ([]string, error) {
	have, err := ReadVTEPGuard(g.Network)
	if err != nil {
		return nil, err
	}
	if change := g.diff(have); !change.none() {
		return g.written(change), nil
	}
	return nil, nil
}

// applyGuard makes the kernel's guard, have, g in one transaction (Flush
// commits the batch), so that no packet meets a half-written guard: a
// new peer is let in at once, a rewritten chain never lets everything
// through. A chain of the right kind is emptied and refilled rather than
// made anew, so that the hook stays registered; a set of the right kind
// is emptied and refilled too.
func applyGuard(c *nftables.Conn, g VTEPGuard, have VTEPGuardState, change guardChange) error {
	if !change.rewrite {
		for _, v6 := range []bool{false, true} {
			set := guardSet(g.Network, v6)
			if add := family(change.add, v6); len(add) > 0 {
				if err := c.SetAddElements(set, add); err != nil {
					return err
				}
			}
			if del := family(change.del, v6); len(del) > 0 {
				if err := c.SetDeleteElements(set, del); err != nil {
					return err
				}
			}
		}
		return c.Flush()
	}
	c.AddTable(guardTable)
	chain := guardChain(g.Network)
	switch have.Chain {
	case different:
		c.DelChain(chain) // before its sets, which its rules use
		c.AddChain(chain)
	case absent:
		c.AddChain(chain)
	case right:
		c.FlushChain(chain)
	}
	for i, v6 := range []bool{false, true} {
		set := guardSet(g.Network, v6)
		switch have.sets[i] {
		case rightSet:
			c.FlushSet(set)
			if elems := family(g.Peers, v6); len(elems) > 0 {
				if err := c.SetAddElements(set, elems); err != nil {
					return err
				}
			}
			continue
		case otherSet:
			c.DelSet(set)
		}
		if err := c.AddSet(set, family(g.Peers, v6)); err != nil {
			return err
		}
	}
	for _, r := range g.rules() {
		c.AddRule(&nftables.Rule{Table: guardTable, Chain: chain, Exprs: r.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.text)})
	}
	return c.Flush()
}

// family is addrs of one family as set elements.
func family(addrs []netip.Addr, v6 bool) []nftables.SetElement {
	var elems []nftables.SetElement
	for _, a := range ofFamily(addrs, v6) {
		elems = append(elems, nftables.SetElement{Key: a.AsSlice()})
	}
	return elems
}

// RemoveVTEPGuard deletes network's guard, and the table when no other
// network's guard is left in it, in one transaction.
func RemoveVTEPGuard(network string) error {
	if err := removeGuard(newConn(), network); err != nil {
		return fmt.Errorf("removing the VTEP guard of network %s (nftables inet %s): %w", network, GuardTable, err)
	}
	return nil
}

func removeGuard(c *nftables.Conn, network string) error {
	if ok, err := hasGuardTable(c); err != nil || !ok {
		return err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return err
	}
	others := false
	for _, ch := range chains {
		if ch.Table.Name != GuardTable {
			continue
		}
		if ch.Name == GuardChain(network) {
			c.DelChain(ch)
		} else {
			others = true
		}
	}
	if !others {
		c.DelTable(guardTable)
		return c.Flush()
	}
	sets, err := c.GetSets(guardTable)
	if err != nil {
		return err
	}
	for _, set := range sets {
		if set.Name == GuardSet(network, false) || set.Name == GuardSet(network, true) {
			c.DelSet(set) // after the chain whose rules use it
		}
	}
	return c.Flush()
}
