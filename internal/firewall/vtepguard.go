package firewall

import (
	"fmt"
	"reflect"
	"slices"

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
// decapsulate it too). As Calico does, berth drops UDP to the VTEP port
// from anything but the underlay link, whatever the destination: a
// peer's VTEP answers at each of its addresses, a VIP or a secondary
// address included, which no lease names. In an nftables table of its
// own:
//
//	table inet berth
//	  chain vtep-<net>   filter hook prerouting priority raw (-300)
//	    iifname <underlay> return     peers' VXLAN arrives there
//	    udp dport <port> drop
//
// It is written through netlink, so that netd needs no iptables tools
// (berth's image has none). Every table's hooks run, so the chain drops
// whatever iptables-nft's or iptables-legacy's tables accept. Nothing a
// container sends enters the node through the underlay link, and every
// container's packet (bridge, routed veth, any berth network or none)
// passes prerouting before it is delivered or forwarded: at raw
// priority, before conntrack, no plugin rule (BERTH-FORWARD accepts the
// network's traffic) and no NAT can come first. The price: a container
// cannot send UDP to that port anywhere (a VXLAN service outside the
// cluster), as with Calico.
//
// netd of a vxlan network owns the chain: it compares it with the
// kernel on its full passes and writes it anew in one transaction when
// it differs (a flushed or deleted table is repaired), keeps it when it
// stops (a restart does not open a window) and removes it on netd leave
// and netd uninstall.
type VTEPGuard struct {
	Network  string
	Port     int
	Underlay string // the VTEP's underlay link, as iifname matches it
}

// GuardTable is the nftables table (family inet) of berth's VTEP guards.
const GuardTable = "berth"

// GuardChain is the chain of network's VTEP guard in GuardTable.
func GuardChain(network string) string { return "vtep-" + hash(network) }

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
	ifname := make([]byte, unix.IFNAMSIZ) // as nft writes it: NUL-padded
	copy(ifname, g.Underlay)
	return []guardRule{{
		text: fmt.Sprintf("iifname %q return", g.Underlay),
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname},
			&expr.Verdict{Kind: expr.VerdictReturn},
		},
	}, {
		text: fmt.Sprintf("udp dport %d drop", g.Port),
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(g.Port))},
			&expr.Verdict{Kind: expr.VerdictDrop},
		},
	}}
}

// Rules are the guard's chain, in nft's syntax.
func (g VTEPGuard) Rules() []string {
	var texts []string
	for _, r := range g.rules() {
		texts = append(texts, r.text)
	}
	return texts
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

// VTEPGuardState is a network's guard as the kernel has it.
type VTEPGuardState struct {
	Chain chainState
	Rules []string     // the chain's rules, by their comments (guardRule)
	exprs [][]expr.Any // and their expressions
}

// Exists reports whether the chain is there, hooked as the guard's.
func (s VTEPGuardState) Exists() bool { return s.Chain == right }

// differs reports whether the kernel's guard is not g: then the chain is
// written anew.
func (g VTEPGuard) differs(have VTEPGuardState) bool {
	var exprs [][]expr.Any
	for _, r := range g.rules() {
		exprs = append(exprs, r.exprs)
	}
	return have.Chain != right || !slices.Equal(have.Rules, g.Rules()) || !reflect.DeepEqual(have.exprs, exprs)
}

// written says what writing g changes, for the log and netd status.
func (g VTEPGuard) written() []string {
	return []string{fmt.Sprintf("VTEP guard inet %s %s: written (port %d, from anywhere but %s)", GuardTable, GuardChain(g.Network), g.Port, g.Underlay)}
}

// guardChain is network's base chain.
func guardChain(network string) *nftables.Chain {
	policy := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: GuardChain(network), Table: guardTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &policy}
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
	if !g.differs(have) {
		return nil, nil
	}
	if err := applyGuard(c, g, have); err != nil {
		return nil, fmt.Errorf("VTEP guard of network %s: writing nftables inet %s (needs CAP_NET_ADMIN and the kernel's nf_tables): %w", g.Network, GuardTable, err)
	}
	return g.written(), nil
}

// PendingVTEPGuard is what EnsureVTEPGuard would change now.
func PendingVTEPGuard(g VTEPGuard) ([]string, error) {
	have, err := ReadVTEPGuard(g.Network)
	if err != nil || !g.differs(have) {
		return nil, err
	}
	return g.written(), nil
}

// applyGuard writes g's chain in one transaction (Flush commits the
// batch). A chain of the right kind is emptied and refilled rather than
// made anew, so that the hook stays registered.
func applyGuard(c *nftables.Conn, g VTEPGuard, have VTEPGuardState) error {
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
	for _, r := range g.rules() {
		c.AddRule(&nftables.Rule{Table: guardTable, Chain: chain, Exprs: r.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.text)})
	}
	return c.Flush()
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
	}
	return c.Flush()
}
