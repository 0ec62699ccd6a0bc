package srcguard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/linkinfo"
)

// The guard's second layer, on the bridge and at the node's IP
// prerouting. A container with CAP_NET_ADMIN in its namespace can get
// frames past every ingress program of its host veth: it redirects its
// eth0's egress to an ifb device of its own, which hands the frames back
// marked tc_skip_classify, and the veth keeps that flag across the pair,
// so the host end's receive path skips TCX, tc and netfilter's netdev
// ingress alike. The bridge's netfilter hooks, and IP's, run whatever the
// flag says. So the guard marks every frame it lets through (PassedMark in
// skb->mark, which the container cannot set: a veth clears the mark when
// a frame changes namespace), and two tables drop a frame from a guarded
// host veth without it. A guarded host veth is one in device group
// GuardedGroup:
//
//	table bridge berth                     bridged veths
//	  chain prerouting   filter hook prerouting priority -350
//	    meta iifgroup 0x62657274 jump passed
//	  chain input        filter hook input priority -350
//	    ether daddr & ff:ff:ff:ff:ff:f0 == 01:80:c2:00:00:00 meta iifgroup 0x62657274 jump passed
//	  chain passed
//	    meta mark & 0x4000000 == 0 drop
//	    meta mark set meta mark & 0xfbffffff
//
//	table inet berth-guard                 routed veths (berth-bgp), and
//	  chain prerouting   filter hook prerouting priority -350    what a bridge
//	    meta iifgroup 0x62657274 jump passed                      hands up on a port
//	  chain passed
//	    (the same two rules)
//
// A link-local frame (01:80:c2:00:00:0X, which a bridge does not forward)
// skips the bridge's prerouting: the bridge hands it to input, and learns
// its source MAC once input let it through; but an LLDP frame (and an STP
// one with STP on) it learns from and hands up past every hook, so
// berth's bridges learn nothing from link-local frames
// (NoLinkLocalLearning). The mark is cleared once checked, so nothing
// after (policy routing, the VTEP's route lookup, other firewalls) sees
// it; a bridged frame the bridge hands up to the node comes in on the
// bridge, in group 0, and meets the inet table no more. Priority -350
// comes before conntrack, iptables' raw table, br_netfilter and the
// reference plugins' macspoofchk.
//
// The device group, not a set of names, says which veths are guarded: it
// is set with the veth and goes with it, so an ADD or DEL commits no
// nftables transaction (each would move the namespace's nf_tables
// generation, which internal/iptables' cache of the rules relies on),
// nothing is left to clean up after a crash, and the veths of an earlier
// berth, whose guard does not mark, stay in group 0 and are not asked
// for the mark. The tables are written when they are missing or differ
// (the first ADD on a node, or after someone flushed them) and stay when
// the last container goes, as berth's bridge and iptables chains do.

// PassedMark is the bit of skb->mark the guard (and the eBPF datapath's
// from_container) sets on each frame it lets through; it is PASSED_MARK in
// bpf/guard.c and in internal/fastpath's fastpath.c.
const PassedMark = 0x04000000

// GuardedGroup is the device group of guarded host veths ("bert").
const GuardedGroup = 0x62657274

// BridgeTable is the nftables table (family bridge) of the second layer;
// RoutedTable its counterpart (family inet) for what enters the node's IP
// stack from a guarded veth itself: a routed (berth-bgp) veth's traffic,
// and what a bridge hands up on its port.
const (
	BridgeTable = "berth"
	RoutedTable = "berth-guard"
)

var (
	bridgeTable = &nftables.Table{Name: BridgeTable, Family: nftables.TableFamilyBridge}
	routedTable = &nftables.Table{Name: RoutedTable, Family: nftables.TableFamilyINet}
)

// layerTable is one table of the layer with its chains, the one the
// others jump to first.
type layerTable struct {
	table  *nftables.Table
	chains []layerChain
}

// layerChain is one chain with its rules, each carrying the nft syntax it
// stands for as its comment (for people and CHECK's messages; there is no
// nft binary on a node).
type layerChain struct {
	chain *nftables.Chain
	rules []layerRule
}

type layerRule struct {
	text  string
	exprs []expr.Any
}

// layerTables are the layer's two tables.
func layerTables() []layerTable {
	return []layerTable{
		{bridgeTable, []layerChain{passed(bridgeTable), prerouting(bridgeTable), linkLocalInput()}},
		{routedTable, []layerChain{passed(routedTable), prerouting(routedTable)}},
	}
}

// bridgeChains are the bridge table's chains.
func bridgeChains() []layerChain { return layerTables()[0].chains }

// Meta keys are in host order.
func hostOrder(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func baseChain(t *nftables.Table, name string, hook *nftables.ChainHook) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: hook, Priority: nftables.ChainPriorityRef(-350), Policy: &accept}
}

// fromGuarded jumps to passed for what comes in from a guarded veth.
func fromGuarded() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFGROUP, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: hostOrder(GuardedGroup)},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: "passed"},
	}
}

// passed drops what the guard did not mark, and clears the mark.
func passed(t *nftables.Table) layerChain {
	return layerChain{
		chain: &nftables.Chain{Name: "passed", Table: t},
		rules: []layerRule{{
			text: fmt.Sprintf("meta mark & %#x == 0 drop", PassedMark),
			exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: hostOrder(PassedMark), Xor: hostOrder(0)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: hostOrder(0)},
				&expr.Verdict{Kind: expr.VerdictDrop},
			},
		}, {
			text: fmt.Sprintf("meta mark set meta mark & %#x", ^uint32(PassedMark)),
			exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: hostOrder(^uint32(PassedMark)), Xor: hostOrder(0)},
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
			},
		}},
	}
}

func prerouting(t *nftables.Table) layerChain {
	return layerChain{
		chain: baseChain(t, "prerouting", nftables.ChainHookPrerouting),
		rules: []layerRule{{text: fmt.Sprintf("meta iifgroup %#x jump passed", GuardedGroup), exprs: fromGuarded()}},
	}
}

// linkLocalInput is the bridge's input chain, for link-local frames,
// which skip prerouting.
func linkLocalInput() layerChain {
	linkLocal := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 0, Len: 6},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 6,
			Mask: []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xf0}, Xor: make([]byte, 6)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x01, 0x80, 0xc2, 0, 0, 0}},
	}
	return layerChain{
		chain: baseChain(bridgeTable, "input", nftables.ChainHookInput),
		rules: []layerRule{{
			text:  fmt.Sprintf("ether daddr & ff:ff:ff:ff:ff:f0 == 01:80:c2:00:00:00 meta iifgroup %#x jump passed", GuardedGroup),
			exprs: append(linkLocal, fromGuarded()...),
		}},
	}
}

// newConn talks to the calling thread's network namespace.
func newConn() *nftables.Conn {
	c, _ := nftables.New() // without options it never fails
	return c
}

// Require puts the host veth ifindex in GuardedGroup, with the layer's
// tables in place: from then on the bridge (or IP's prerouting) drops
// every frame from it that its guard did not let through. The guard must
// be on ifindex first, or every frame from it is dropped.
func Require(ifindex int) error {
	if err := ensureTables(); err != nil {
		return err
	}
	link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}
	if err := netlink.LinkSetGroup(link, GuardedGroup); err != nil {
		return fmt.Errorf("source guard: putting interface %d in device group %#x: %w", ifindex, GuardedGroup, err)
	}
	return nil
}

// ensureTables writes the layer's tables when the kernel's differ from
// them (or it has none), in one transaction: parallel writers leave one
// copy. A table that differs is deleted in that transaction and made anew: a base
// chain's hook or priority cannot be changed in place. When another
// writer deleted it between the look and the write (the transaction
// fails), it looks again.
func ensureTables() error {
	var err error
	// Every try but the last is lost to another writer's commit between
	// this one's look and its write: a few are plenty even with many
	// first ADDs on a node at once.
	for range 8 {
		c := newConn()
		if checkTables(c) == nil {
			return nil
		}
		for _, lt := range layerTables() {
			if _, lerr := c.ListTableOfFamily(lt.table.Name, lt.table.Family); lerr == nil {
				c.DelTable(lt.table)
			}
			c.AddTable(lt.table)
			for _, ch := range lt.chains {
				// Flushed: a parallel writer may have made it since the look.
				c.AddChain(ch.chain)
				c.FlushChain(ch.chain)
				for _, r := range ch.rules {
					c.AddRule(&nftables.Rule{Table: lt.table, Chain: ch.chain, Exprs: r.exprs,
						UserData: userdata.AppendString(nil, userdata.TypeComment, r.text)})
				}
			}
		}
		if err = c.Flush(); err == nil {
			return nil
		}
	}
	return fmt.Errorf("source guard: writing nftables bridge %s and inet %s (needs the kernel's nf_tables with bridge support): %w", BridgeTable, RoutedTable, err)
}

// CheckRequired verifies that the bridge holds the host veth ifindex to
// its guard's mark: the veth in GuardedGroup, the table as Require
// writes it, and on a bridge (if the veth is a port) the bridge learning
// nothing from link-local frames (NoLinkLocalLearning).
func CheckRequired(ifindex int) error {
	link, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("reading interface %d: %w", ifindex, err)
	}
	if g := link.Attrs().Group; g != GuardedGroup {
		return fmt.Errorf("%s is in device group %#x, not %#x: the bridge lets through its frames that skipped the guard", link.Attrs().Name, g, GuardedGroup)
	}
	if master := link.Attrs().MasterIndex; master != 0 {
		on, err := noLinkLocalLearning(master)
		if err != nil {
			return fmt.Errorf("reading the bridge of %s: %w", link.Attrs().Name, err)
		}
		if !on {
			return fmt.Errorf("the bridge of %s learns MACs from link-local frames (no_linklocal_learn off): a forged one can take a neighbour's traffic", link.Attrs().Name)
		}
	}
	return checkTables(newConn())
}

func checkTables(c *nftables.Conn) error {
	for _, lt := range layerTables() {
		where := fmt.Sprintf("nftables %s %s", family(lt.table.Family), lt.table.Name)
		for _, want := range lt.chains {
			have, err := c.ListChain(lt.table, want.chain.Name)
			if err != nil {
				return fmt.Errorf("%s has no chain %s (%v): frames that skipped the guard get through", where, want.chain.Name, err)
			}
			if !sameHook(have, want.chain) {
				return fmt.Errorf("%s chain %s is not hooked as berth makes it", where, want.chain.Name)
			}
			rules, err := c.GetRules(lt.table, want.chain)
			if err != nil {
				return fmt.Errorf("reading %s chain %s: %w", where, want.chain.Name, err)
			}
			if !sameRules(rules, want.rules) {
				return fmt.Errorf("%s chain %s is not berth's (changed by hand?)", where, want.chain.Name)
			}
		}
	}
	return nil
}

func family(f nftables.TableFamily) string {
	if f == nftables.TableFamilyBridge {
		return "bridge"
	}
	return "inet"
}

func sameHook(have, want *nftables.Chain) bool {
	if want.Hooknum == nil {
		return have.Hooknum == nil
	}
	return have.Type == want.Type && have.Hooknum != nil && *have.Hooknum == *want.Hooknum &&
		have.Priority != nil && *have.Priority == *want.Priority && (have.Policy == nil || *have.Policy == *want.Policy)
}

// sameRules compares rules as the kernel gives them back with want: their
// comments, and the expressions that run.
func sameRules(have []*nftables.Rule, want []layerRule) bool {
	if len(have) != len(want) {
		return false
	}
	for i, r := range have {
		text, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		if text != want[i].text || !reflect.DeepEqual(r.Exprs, want[i].exprs) {
			return false
		}
	}
	return true
}

// RemoveTables deletes the tables (at uninstall) when no host veth in
// GuardedGroup is left: another network's containers still need it. A
// container attached meanwhile has the table written again by its ADD.
func RemoveTables() error {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return fmt.Errorf("source guard: listing links: %w", err)
	}
	for _, l := range links {
		if l.Attrs().Group == GuardedGroup {
			return nil
		}
	}
	c := newConn()
	for _, lt := range layerTables() {
		if _, err := c.ListTableOfFamily(lt.table.Name, lt.table.Family); err == nil {
			c.DelTable(lt.table)
		}
	}
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("source guard: removing nftables bridge %s and inet %s: %w", BridgeTable, RoutedTable, err)
	}
	return nil
}

// brBoolOptNoLLLearn is BR_BOOLOPT_NO_LL_LEARN (linux/if_bridge.h): the
// bit of a bridge's IFLA_BR_MULTI_BOOLOPT that stops it learning source
// MACs from link-local frames.
const brBoolOptNoLLLearn = 1 << 0

// NoLinkLocalLearning stops the bridge bridgeIndex learning source MACs
// from link-local frames. A bridge learns the source of an LLDP frame
// (01:80:c2:00:00:0e), and of an STP one with STP on, before any of its
// netfilter hooks (br_handle_frame hands those frames up past them): one
// a container got past its guard (above) with a neighbour's MAC would
// move the neighbour's FDB entry to its own port, and the neighbour's
// traffic to it. No container needs the bridge to learn from those.
func NoLinkLocalLearning(bridgeIndex int) error {
	if on, err := noLinkLocalLearning(bridgeIndex); err == nil && on {
		return nil // as it should be: no change, no notification
	}
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(bridgeIndex)
	req.AddData(msg)
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	// struct br_boolopt_multi: the values, then which of them to set.
	data.AddRtAttr(unix.IFLA_BR_MULTI_BOOLOPT, binary.NativeEndian.AppendUint32(
		binary.NativeEndian.AppendUint32(nil, brBoolOptNoLLLearn), brBoolOptNoLLLearn))
	req.AddData(info)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("source guard: setting no_linklocal_learn on bridge %d: %w", bridgeIndex, err)
	}
	return nil
}

// noLinkLocalLearning reports whether the bridge bridgeIndex learns
// nothing from link-local frames.
func noLinkLocalLearning(bridgeIndex int) (bool, error) {
	data, err := linkinfo.Data(bridgeIndex)
	if err != nil {
		return false, err
	}
	opt := data[unix.IFLA_BR_MULTI_BOOLOPT]
	if len(opt) < 4 {
		return false, fmt.Errorf("link %d is no bridge, or its kernel predates IFLA_BR_MULTI_BOOLOPT (Linux 5.0)", bridgeIndex)
	}
	return binary.NativeEndian.Uint32(opt)&brBoolOptNoLLLearn != 0, nil
}
