package firewall

import (
	"errors"
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
// destination; berth drops only what could reach a VTEP, in an nftables
// table of its own (see Rules for the chain):
//
//	table inet berth
//	  set   vtep-<net>-peers4, vtep-<net>-peers6   the other nodes' addresses
//	  chain vtep-<net>   filter hook prerouting priority raw (-300)
//	    iifname <underlay> return                   peers' VXLAN arrives there
//	    udp dport <port> fib daddr type local|broadcast|multicast drop
//	    ip daddr @peers4 / ip6 daddr @peers6 udp dport <port> drop
//
// It is written through netlink, so that netd needs no iptables tools
// (berth's image has none). Every table's hooks run, so the chain drops
// whatever iptables-nft's or iptables-legacy's tables accept. Nothing a
// container sends enters the node through the underlay link, and every
// container's packet (bridge, routed veth, any berth network or none)
// passes prerouting before it is delivered or forwarded: at raw
// priority, before conntrack, no plugin rule (BERTH-FORWARD accepts the
// network's traffic) and no NAT can come first. Container UDP to the
// port elsewhere (a VXLAN service outside the cluster) still flows.
//
// netd of a vxlan network owns the chain and its sets: it compares them
// with the kernel in its reconcile passes and writes the difference in
// one transaction (a flushed or deleted table is repaired at the next
// full pass, a new peer is one set element), keeps them when it stops (a
// restart does not open a window) and removes them on netd leave and
// netd uninstall.
type VTEPGuard struct {
	Network  string
	Port     int
	Underlay string       // the VTEP's underlay link, as iifname matches it
	Peers    []netip.Addr // the other nodes' underlay addresses, of both families
}

// GuardTable is the nftables table (family inet) of berth's VTEP guards.
const GuardTable = "berth"

// GuardChain is the chain of network's VTEP guard in GuardTable.
func GuardChain(network string) string { return "vtep-" + hash(network) }

// guardSet is the set of network's peer addresses of one family (4 or 6).
func guardSet(network string, family int) string {
	return fmt.Sprintf("%s-peers%d", GuardChain(network), family)
}

// legacyGuardChain is the raw chain (jumped to from PREROUTING) in which
// berth's previous build kept the guard with iptables; leave and
// uninstall remove it from nodes that ran that build.
func legacyGuardChain(network string) string { return "BERTH-VTEP-" + hash(network) }

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

// IPv4's and IPv6's fixed header offsets of the destination address.
var daddr = map[int]struct {
	nfproto, offset, len uint32
	keyword              string
}{
	4: {unix.NFPROTO_IPV4, 16, 4, "ip"},
	6: {unix.NFPROTO_IPV6, 24, 16, "ip6"},
}

// rules are the guard's chain, in order. The same rules serve both
// families: fib answers for either, and each peer rule matches one.
func (g VTEPGuard) rules() []guardRule {
	udp := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(g.Port))},
	}
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	ifname := make([]byte, unix.IFNAMSIZ) // as nft writes it: NUL-padded
	copy(ifname, g.Underlay)
	rules := []guardRule{{
		text: fmt.Sprintf("iifname %q return", g.Underlay),
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname},
			&expr.Verdict{Kind: expr.VerdictReturn},
		},
	}}
	for _, t := range []struct {
		name string
		rtn  uint32
	}{{"local", unix.RTN_LOCAL}, {"broadcast", unix.RTN_BROADCAST}, {"multicast", unix.RTN_MULTICAST}} {
		rules = append(rules, guardRule{
			text: fmt.Sprintf("udp dport %d fib daddr type %s drop", g.Port, t.name),
			exprs: concat(udp, []expr.Any{
				&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(t.rtn)},
				drop,
			}),
		})
	}
	for _, family := range []int{4, 6} {
		d, set := daddr[family], guardSet(g.Network, family)
		rules = append(rules, guardRule{
			text: fmt.Sprintf("%s daddr @%s udp dport %d drop", d.keyword, set, g.Port),
			exprs: concat([]expr.Any{
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(d.nfproto)}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: d.offset, Len: d.len},
				&expr.Lookup{SourceRegister: 1, SetName: set},
			}, udp, []expr.Any{drop}),
		})
	}
	return rules
}

func concat(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }

// Rules are the guard's chain, in nft's syntax.
func (g VTEPGuard) Rules() []string {
	var texts []string
	for _, r := range g.rules() {
		texts = append(texts, r.text)
	}
	return texts
}

// peers are g's peer addresses sorted, once each.
func (g VTEPGuard) peers() []netip.Addr {
	peers := slices.Clone(g.Peers)
	slices.SortFunc(peers, netip.Addr.Compare)
	return slices.Compact(peers)
}

func (g VTEPGuard) valid() error {
	if g.Port <= 0 || g.Port > 65535 || g.Underlay == "" || len(g.Underlay) >= unix.IFNAMSIZ {
		return fmt.Errorf("VTEP guard of network %s: port %d, underlay %q: a port and a link name are needed", g.Network, g.Port, g.Underlay)
	}
	return nil
}

// objState is how the kernel has one of the guard's objects.
type objState int

const (
	absent    objState = iota
	different          // another hook, priority, type or key: made anew
	right
)

// VTEPGuardState is a network's guard as the kernel has it.
type VTEPGuardState struct {
	Chain objState
	Rules []string     // the chain's rules, by their comments (guardRule)
	exprs [][]expr.Any // and their expressions
	Sets  [2]objState  // peers4, peers6
	Peers []netip.Addr // both sets' elements, sorted
}

// Exists reports whether the chain is there, hooked as the guard's.
func (s VTEPGuardState) Exists() bool { return s.Chain == right }

// guardPlan is what makes the kernel's guard g: either the chain and
// sets written anew (their rules or objects differ), or only the peers
// added to and deleted from the sets. Empty: nothing to write.
type guardPlan struct {
	rewrite  bool
	add, del []netip.Addr
}

func (p guardPlan) empty() bool { return !p.rewrite && len(p.add) == 0 && len(p.del) == 0 }

// planGuard compares the guard g with the kernel's.
func planGuard(g VTEPGuard, have VTEPGuardState) guardPlan {
	want := g.peers()
	var exprs [][]expr.Any
	for _, r := range g.rules() {
		exprs = append(exprs, r.exprs)
	}
	if have.Chain != right || have.Sets != [2]objState{right, right} ||
		!slices.Equal(have.Rules, g.Rules()) || !reflect.DeepEqual(have.exprs, exprs) {
		return guardPlan{rewrite: true, add: want}
	}
	var p guardPlan
	for _, a := range want {
		if _, found := slices.BinarySearchFunc(have.Peers, a, netip.Addr.Compare); !found {
			p.add = append(p.add, a)
		}
	}
	for _, a := range have.Peers {
		if _, found := slices.BinarySearchFunc(want, a, netip.Addr.Compare); !found {
			p.del = append(p.del, a)
		}
	}
	return p
}

// describe says what p changes, for the log and netd status.
func (p guardPlan) describe(g VTEPGuard) []string {
	where := fmt.Sprintf("VTEP guard inet %s %s", GuardTable, GuardChain(g.Network))
	switch {
	case p.empty():
		return nil
	case p.rewrite:
		return []string{fmt.Sprintf("%s: written (port %d, %d peer addresses)", where, g.Port, len(p.add))}
	}
	var d []string
	for _, a := range p.add {
		d = append(d, "+"+a.String())
	}
	for _, a := range p.del {
		d = append(d, "-"+a.String())
	}
	return []string{fmt.Sprintf("%s: peers %s", where, strings.Join(d, " "))}
}

// guardChain is network's base chain.
func guardChain(network string) *nftables.Chain {
	policy := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: GuardChain(network), Table: guardTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &policy}
}

func guardSets(network string) [2]*nftables.Set {
	return [2]*nftables.Set{
		{Table: guardTable, Name: guardSet(network, 4), KeyType: nftables.TypeIPAddr},
		{Table: guardTable, Name: guardSet(network, 6), KeyType: nftables.TypeIP6Addr},
	}
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
	for i, mine := range guardSets(network) {
		for _, set := range sets {
			if set.Name != mine.Name {
				continue
			}
			s.Sets[i] = different
			if set.KeyType.Name != mine.KeyType.Name || set.Interval || set.IsMap {
				continue
			}
			s.Sets[i] = right
			elems, err := c.GetSetElements(set)
			if err != nil {
				return s, err
			}
			for _, e := range elems {
				if a, ok := netip.AddrFromSlice(e.Key); ok {
					s.Peers = append(s.Peers, a)
				}
			}
		}
	}
	slices.SortFunc(s.Peers, netip.Addr.Compare)
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
	p := planGuard(g, have)
	if p.empty() {
		return nil, nil
	}
	if err := applyGuard(c, g, have, p); err != nil {
		return nil, fmt.Errorf("VTEP guard of network %s: writing nftables inet %s (needs CAP_NET_ADMIN and the kernel's nf_tables): %w", g.Network, GuardTable, err)
	}
	return p.describe(g), nil
}

// PendingVTEPGuard is what EnsureVTEPGuard would change now.
func PendingVTEPGuard(g VTEPGuard) ([]string, error) {
	have, err := ReadVTEPGuard(g.Network)
	if err != nil {
		return nil, err
	}
	return planGuard(g, have).describe(g), nil
}

// applyGuard writes p in one transaction (Flush commits the batch). A
// chain or set of the right kind is emptied and refilled rather than made
// anew, so that the hook stays registered; the rules go before the sets
// they refer to may be replaced.
func applyGuard(c *nftables.Conn, g VTEPGuard, have VTEPGuardState, p guardPlan) error {
	sets := guardSets(g.Network)
	byFamily := func(addrs []netip.Addr, set int) []nftables.SetElement {
		var elems []nftables.SetElement
		for _, a := range addrs {
			if a.Is6() == (set == 1) {
				elems = append(elems, nftables.SetElement{Key: a.AsSlice()})
			}
		}
		return elems
	}
	if !p.rewrite {
		for i, s := range sets {
			if add := byFamily(p.add, i); len(add) > 0 {
				if err := c.SetAddElements(s, add); err != nil {
					return err
				}
			}
			if del := byFamily(p.del, i); len(del) > 0 {
				if err := c.SetDeleteElements(s, del); err != nil {
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
		c.DelChain(chain)
		c.AddChain(chain)
	case absent:
		c.AddChain(chain)
	case right:
		c.FlushChain(chain)
	}
	for i, s := range sets {
		switch have.Sets[i] {
		case different:
			c.DelSet(s)
		case right:
			c.FlushSet(s)
		}
		if err := c.AddSet(s, byFamily(p.add, i)); err != nil {
			return err
		}
	}
	// The rules find the sets by name, made in this transaction or not.
	for _, r := range g.rules() {
		c.AddRule(&nftables.Rule{Table: guardTable, Chain: chain, Exprs: r.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.text)})
	}
	return c.Flush()
}

// RemoveVTEPGuard deletes network's guard, and the table when no other
// network's guard is left in it, in one transaction; then the iptables
// chain an earlier build of berth kept it in, where iptables tools are
// installed (without them, as in berth's image, there is none).
func RemoveVTEPGuard(network string) error {
	c := newConn()
	err := removeGuard(c, network)
	if err != nil {
		err = fmt.Errorf("removing the VTEP guard of network %s (nftables inet %s): %w", network, GuardTable, err)
	}
	return errors.Join(err, removeLegacyGuard(network))
}

func removeGuard(c *nftables.Conn, network string) error {
	if ok, err := hasGuardTable(c); err != nil || !ok {
		return err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return err
	}
	sets, err := c.GetSets(guardTable)
	if err != nil {
		return err
	}
	mine := []string{GuardChain(network), guardSet(network, 4), guardSet(network, 6)}
	others := false
	for _, ch := range chains {
		if ch.Table.Name == GuardTable {
			if ch.Name == mine[0] {
				c.DelChain(ch) // its rules first: they refer to the sets
			} else {
				others = true
			}
		}
	}
	for _, s := range sets {
		if slices.Contains(mine[1:], s.Name) {
			c.DelSet(s)
		} else {
			others = true
		}
	}
	if !others {
		c.DelTable(guardTable)
	}
	return c.Flush()
}

// removeLegacyGuard deletes the raw chain BERTH-VTEP-<net> and its jump,
// in each family whose iptables tools are installed.
func removeLegacyGuard(network string) error {
	if !iptables.ToolsInstalled() {
		return nil
	}
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
	return inTurn(families, func(f iptables.Family) error {
		if !b.Installed(f) {
			return nil
		}
		tables, err := cycle.Save(f)
		if err != nil {
			return fmt.Errorf("removing the iptables VTEP guard of network %s: %w", network, err)
		}
		batch := iptables.NewBatch("raw")
		removeOwned(batch, tables.Get("raw"), "PREROUTING", legacyGuardChain(network))
		if err := cycle.Apply(f, batch); err != nil {
			return fmt.Errorf("removing the iptables VTEP guard of network %s: %w", network, err)
		}
		return nil
	})
}
