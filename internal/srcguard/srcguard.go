// Package srcguard keeps a container to its own addresses on the iptables
// datapath: a filter on the ingress of its host veth (what the container
// sends) drops every frame whose Ethernet source is not the container's
// MAC, every IPv4 packet whose source is not its IPv4 address, every IPv6
// packet whose source is neither its IPv6 address, a link-local one nor
// :: (ICMPv6 only: duplicate address detection, MLD), every neighbour
// advertisement for another address, every neighbour or router
// solicitation and neighbour advertisement whose link-layer address
// option is not its MAC or whose options are malformed, neighbour
// discovery in fragments, every ARP packet whose sender is not its IPv4 address (or
// 0.0.0.0, a probe) at its MAC, every frame to a link-local group address
// (berth.h), and any other protocol or VLAN tag. That
// is libvirt's clean-traffic and Calico's per-workload rule, in the one
// place that sees bridged traffic too: rp_filter and iptables see only
// routed packets (berth does not load br_netfilter), so a container could
// otherwise send with a neighbour's address or MAC across the bridge, and
// poison the node's neighbour entries and the bridge's FDB with ARP and
// forged MACs.
//
// The guard is an eBPF program (bpf/guard.c), one copy per container
// with its addresses as constants, first on the host veth's ingress,
// before the veth is up. It returns "next" for an allowed frame, which
// runs the veth's later tc filters (berth's own shaping, a redirect to an
// ifb device at priority 2, internal/shaping): the guard must judge a
// frame before such a redirect, since the ifb hands it back past the
// veth's tc and netfilter ingress hooks.
//
// By default it is a tc filter (cls_bpf, direct action, priority 1, on a
// clsact qdisc): a device's first filter costs an ADD well under a
// millisecond. A clsact qdisc leaves no room for the `ingress` qdisc of a
// reference bandwidth plugin chained after berth, whose egress limit then
// fails ADD. A network's "guardHook": "tcx" puts the guard on TCX
// instead, before any qdisc, at about 10 ms more per ADD
// (internal/bpfattach says why). The eBPF datapath does the same checks
// in its from_container program. Both mark what they let through, and
// the bridge drops a guarded veth's frames without the mark: those that
// skipped the veth's ingress programs (bridge.go).
package srcguard

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/bpfattach"
)

// Priority is the guard's place among the veth's tc ingress filters (as
// it was for the classic BPF guard of earlier releases): before the
// bandwidth shaping's redirect (internal/shaping).
const Priority = 1

// progName is the guard's program name, as the kernel has it.
const progName = "berth_guard"

// Container is what the guard lets a container send.
type Container struct {
	MAC  net.HardwareAddr
	IPv4 netip.Addr // invalid: no IPv4 (and no ARP) at all
	IPv6 netip.Addr // invalid: only link-local and :: sources
}

// spec is the guard's program for c: the compiled one with c's
// addresses in its constants.
func spec(c Container) (*ebpf.CollectionSpec, error) {
	if len(c.MAC) != 6 {
		return nil, fmt.Errorf("source guard: the container's MAC %q is not an Ethernet address", c.MAC)
	}
	if c.IPv4.IsValid() && !c.IPv4.Is4() || c.IPv6.IsValid() && !c.IPv6.Is6() {
		return nil, fmt.Errorf("source guard: addresses %v and %v are not IPv4 and IPv6", c.IPv4, c.IPv6)
	}
	s, err := loadGuard()
	if err != nil {
		return nil, fmt.Errorf("source guard: reading its program: %w", err)
	}
	// What is not set stays 0: no IPv4, no IPv6 of its own.
	set := map[string]any{"own_mac": [6]byte(c.MAC)}
	if c.IPv4.IsValid() {
		set["has_ipv4"], set["own_ipv4"] = uint8(1), c.IPv4.As4()
	}
	if c.IPv6.IsValid() {
		set["has_ipv6"], set["own_ipv6"] = uint8(1), c.IPv6.As16()
	}
	for name, v := range set {
		if err := s.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("source guard: setting %s: %w", name, err)
		}
	}
	return s, nil
}

// sameConstants reports whether rodata, the constants of a loaded
// guard, hold the values s gives them.
func sameConstants(s *ebpf.CollectionSpec, rodata []byte) bool {
	for _, v := range s.Variables {
		if v.SectionName != ".rodata" {
			continue
		}
		end := int(v.Offset) + len(v.Value)
		if end > len(rodata) || !bytes.Equal(rodata[v.Offset:end], v.Value) {
			return false
		}
	}
	return true
}

// load loads the guard for c into the kernel.
func load(c Container) (*ebpf.Program, error) {
	s, err := spec(c)
	if err != nil {
		return nil, err
	}
	coll, err := ebpf.NewCollection(s)
	if err != nil {
		return nil, fmt.Errorf("source guard: loading its program: %w", err)
	}
	defer coll.Close()
	return coll.DetachProgram(progName), nil
}

// Apply puts c's guard first on the ingress of the host veth ifindex, in
// place of one there: as a tc filter, or on TCX with onTCX (which the
// kernel must have).
func Apply(ifindex int, c Container, onTCX bool) error {
	return apply(ifindex, c, !onTCX)
}

// Check verifies that the ingress of ifindex runs c's guard, as Apply
// made it, where it is (on TCX, else as a tc filter): a guard missing,
// one made for other addresses (the container's MAC changed after ADD),
// one that is not this build's, or one behind another program fails.
func Check(ifindex int, c Container) error {
	h, err := findGuard(ifindex)
	if err != nil {
		return err
	}
	return checkAttached(ifindex, c, h)
}

func apply(ifindex int, c Container, onTC bool) error {
	prog, err := load(c)
	if err != nil {
		return err
	}
	defer prog.Close()
	if onTC {
		return bpfattach.AttachFilter(ifindex, prog, bpfattach.Filter{Priority: Priority, Name: progName})
	}
	h, err := listHook(ifindex, false)
	if err != nil {
		return fmt.Errorf("source guard on TCX: %w", err)
	}
	place := bpfattach.TCXPlace{First: true}
	if len(h.guards) > 0 {
		place = bpfattach.TCXPlace{Replace: h.guards[0]}
	}
	return bpfattach.AttachTCX(ifindex, prog, place)
}

func check(ifindex int, c Container, onTC bool) error {
	h, err := listHook(ifindex, onTC)
	if err != nil {
		return err
	}
	return checkAttached(ifindex, c, h)
}

// hook is the programs of one ingress hook of a veth (where, for
// messages) and those of them named as the guard.
type hook struct {
	ids, guards []ebpf.ProgramID
	where       string
}

func newHook(ids []ebpf.ProgramID, where string) (hook, error) {
	guards, err := bpfattach.Named(ids, progName)
	return hook{ids: ids, guards: guards, where: where}, err
}

// listHook lists the TCX programs on the ingress of ifindex, or with onTC
// its tc filters.
func listHook(ifindex int, onTC bool) (hook, error) {
	list, where := bpfattach.TCXPrograms, "TCX ingress"
	if onTC {
		list, where = bpfattach.FilterPrograms, fmt.Sprintf("tc ingress, priority %d", Priority)
	}
	ids, err := list(ifindex)
	if err != nil {
		return hook{}, err
	}
	return newHook(ids, where)
}

// findGuard is the hook the guard is on: TCX when a guard is there (a
// kernel without TCX has none), else the tc filters.
func findGuard(ifindex int) (hook, error) {
	if ids, err := bpfattach.TCXPrograms(ifindex); err == nil {
		if h, err := newHook(ids, "TCX ingress"); err != nil || len(h.guards) > 0 {
			return h, err
		}
	}
	return listHook(ifindex, true)
}

// first fails when h has no guard, or its guard runs after another
// program, which may let the container's frames past it.
func (h hook) first(ifindex int) error {
	switch {
	case len(h.guards) == 0:
		return fmt.Errorf("no source guard (%s) on interface %d", h.where, ifindex)
	case h.guards[0] != h.ids[0]:
		return fmt.Errorf("the source guard on interface %d (%s) runs after another program, which may let the container's frames past it", ifindex, h.where)
	}
	return nil
}

// checkAttached is check on h, the hook the guard should be first on.
func checkAttached(ifindex int, c Container, h hook) error {
	s, err := spec(c)
	if err != nil {
		return err
	}
	if err := h.first(ifindex); err != nil {
		return err
	}
	attached, err := ebpf.NewProgramFromID(h.guards[0])
	if err != nil {
		return fmt.Errorf("reading the source guard on interface %d: %w", ifindex, err)
	}
	defer attached.Close()
	same, err := sameCode(s, attached)
	if err != nil {
		return fmt.Errorf("reading the source guard on interface %d: %w", ifindex, err)
	}
	if !same {
		return fmt.Errorf("the program named %s on interface %d is not this berth's source guard (another build's, or someone else's)", progName, ifindex)
	}
	have, err := attachedConstants(attached)
	if err != nil {
		return fmt.Errorf("reading the source guard on interface %d: %w", ifindex, err)
	}
	if !sameConstants(s, have) {
		return fmt.Errorf("the source guard on interface %d lets through other addresses than the container's (MAC %s, %v, %v): was the MAC changed after ADD (use berth's mac capability)?",
			ifindex, c.MAC, c.IPv4, c.IPv6)
	}
	return nil
}

// sameCode reports whether attached runs the code of s's program: its
// tag (a hash of the instructions, the constants left out) is the one the
// kernel gives s's program loaded now.
func sameCode(s *ebpf.CollectionSpec, attached *ebpf.Program) (bool, error) {
	coll, err := ebpf.NewCollection(s)
	if err != nil {
		return false, fmt.Errorf("loading the source guard to compare: %w", err)
	}
	defer coll.Close()
	want, err := coll.Programs[progName].Info()
	if err != nil {
		return false, err
	}
	have, err := attached.Info()
	if err != nil {
		return false, err
	}
	return have.Tag == want.Tag, nil
}

// attachedConstants reads the constants of p, a loaded guard.
func attachedConstants(p *ebpf.Program) ([]byte, error) {
	info, err := p.Info()
	if err != nil {
		return nil, err
	}
	maps, _ := info.MapIDs()
	for _, mid := range maps {
		m, err := ebpf.NewMapFromID(mid)
		if err != nil {
			return nil, err
		}
		var b []byte
		mi, err := m.Info()
		if err == nil && mi.Name == ".rodata" {
			b, err = m.LookupBytes(uint32(0))
		}
		m.Close()
		if err != nil || b != nil {
			return b, err
		}
	}
	return nil, errors.New("its program has no constants")
}

// CheckClassic verifies that the ingress of ifindex has the classic BPF
// guard of an earlier release (a tc filter at Priority): what its
// attachments were made with. Its program is not compared.
func CheckClassic(ifindex int) error {
	fs, err := netlinksafe.FilterList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return fmt.Errorf("listing the tc filters of interface %d: %w", ifindex, err)
	}
	for _, f := range fs {
		if b, ok := f.(*netlink.BpfFilter); ok && b.Priority == Priority && b.DirectAction {
			return nil
		}
	}
	return fmt.Errorf("no source guard (tc filter, priority %d) on the ingress of interface %d", Priority, ifindex)
}

// CheckPresent verifies that the ingress of ifindex runs a program named
// as the guard first, on TCX or as a tc filter: the eBPF guard of an
// earlier release, whose code and constants differ from this build's.
func CheckPresent(ifindex int) error {
	h, err := findGuard(ifindex)
	if err != nil {
		return err
	}
	return h.first(ifindex)
}
