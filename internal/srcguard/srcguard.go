// Package srcguard keeps a container to its own addresses on the iptables
// datapath: a filter on the ingress of its host veth (what the container
// sends) drops every frame whose Ethernet source is not the container's
// MAC, every IPv4 packet whose source is not its IPv4 address, every IPv6
// packet whose source is neither its IPv6 address, a link-local one nor ::
// (duplicate address detection), every neighbour advertisement for another
// address, every ARP packet whose sender is not its IPv4 address (or
// 0.0.0.0, a probe) at its MAC, and any other protocol or VLAN tag. That
// is libvirt's clean-traffic and Calico's per-workload rule, in the one
// place that sees bridged traffic too: rp_filter and iptables see only
// routed packets (berth does not load br_netfilter), so a container could
// otherwise send with a neighbour's address or MAC across the bridge, and
// poison the node's neighbour entries and the bridge's FDB with ARP and
// forged MACs.
//
// The filter is a classic BPF program in cls_bpf, direct action, on the
// veth's clsact ingress, with the container's addresses as constants: one
// netlink request at ADD, no map, no verifier. It returns TC_ACT_SHOT for
// a forged frame and TC_ACT_UNSPEC for an allowed one, which lets the
// veth's next filters run (berth's bandwidth shaping, a u32 redirect to an
// ifb device, at a later priority). TC_ACT_OK would end the
// classification: shaping would never see the container's traffic. (Not
// a "match, then drop" filter: this kernel has no gact action.) The eBPF
// datapath does the same checks in its from_container program instead.
package srcguard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Priority is the guard's place on the veth's ingress: first, before the
// bandwidth shaping's redirect (internal/shaping), which must only see
// what the guard lets through.
const Priority = 1

// handle is the guard filter's handle, fixed so that Apply replaces it.
const handle = 1

// Container is what the guard lets a container send.
type Container struct {
	MAC  net.HardwareAddr
	IPv4 netip.Addr // invalid: no IPv4 (and no ARP) at all
	IPv6 netip.Addr // invalid: only link-local and :: sources
}

// Ethernet, ARP and IPv6 offsets in the frame, as cls_bpf shows it at
// ingress (from the Ethernet header).
const (
	ethSrc     = 6
	ethType    = 12
	ethLen     = 14
	ip4Src     = ethLen + 12
	ip4Min     = ethLen + 20
	arpHWProto = ethLen     // htype (1, Ethernet) and ptype (IPv4), one word
	arpLens    = ethLen + 4 // hlen 6, plen 4
	arpSHA     = ethLen + 8
	arpSPA     = ethLen + 14
	arpMin     = ethLen + 28
	ip6Next    = ethLen + 6
	ip6Src     = ethLen + 8
	ip6Min     = ethLen + 40
	ip6Payload = ip6Min
)

// ICMPv6 types the guard looks into (RFC 4861, 2710, 3810).
const (
	icmp6RA         = 134
	icmp6NA         = 136
	icmp6Redirect   = 137
	mldQuery        = 130
	mldReport       = 131
	mldDone         = 132
	mldv2Report     = 143
	nextHopByHop    = 0
	nextRouting     = 43
	nextDestOptions = 60
	nextICMPv6      = 58
)

// The program's verdicts (direct action): drop, or let the next filter
// decide.
const (
	tcActShot   = 2          // TC_ACT_SHOT
	tcActUnspec = 0xffffffff // TC_ACT_UNSPEC, -1
)

// Program is the guard's classic BPF program for c.
//
// Classic BPF ends a program with 0 when a load falls outside the packet,
// which cls_bpf takes as TC_ACT_OK (accept, past the shaping): every load
// below is behind a length check, so that a short frame is judged.
func Program(c Container) ([]bpf.RawInstruction, error) {
	if len(c.MAC) != 6 {
		return nil, fmt.Errorf("source guard: the container's MAC %q is not an Ethernet address", c.MAC)
	}
	macHi, macLo := binary.BigEndian.Uint32(c.MAC[:4]), uint32(binary.BigEndian.Uint16(c.MAC[4:]))
	p := &asm{}
	// A tag the veth carries out of band (the container's VLAN device,
	// offloaded) would hide its frames' real type behind the one below.
	p.ins(bpf.LoadExtension{Num: bpf.ExtVLANTagPresent})
	p.jump(bpf.JumpNotEqual, 0, "drop")
	p.atLeast(ethLen)
	p.ins(bpf.LoadAbsolute{Off: ethSrc, Size: 4})
	p.jump(bpf.JumpNotEqual, macHi, "drop")
	p.ins(bpf.LoadAbsolute{Off: ethSrc + 4, Size: 2})
	p.jump(bpf.JumpNotEqual, macLo, "drop")
	p.ins(bpf.LoadAbsolute{Off: ethType, Size: 2})
	p.jump(bpf.JumpEqual, unix.ETH_P_IP, "ipv4")
	p.jump(bpf.JumpEqual, unix.ETH_P_ARP, "arp")
	p.jump(bpf.JumpEqual, unix.ETH_P_IPV6, "ipv6")
	p.goTo("drop")

	p.label("ipv4")
	if c.IPv4.IsValid() {
		ip4 := binary.BigEndian.Uint32(c.IPv4.AsSlice())
		p.atLeast(ip4Min)
		p.ins(bpf.LoadAbsolute{Off: ip4Src, Size: 4})
		p.jump(bpf.JumpEqual, ip4, "pass")
		p.goTo("drop")

		p.label("arp")
		p.atLeast(arpMin)
		// Only the layout the kernel reads (Ethernet, IPv4, 6- and
		// 4-byte addresses): the sender fields are at fixed places.
		p.ins(bpf.LoadAbsolute{Off: arpHWProto, Size: 4})
		p.jump(bpf.JumpNotEqual, 1<<16|unix.ETH_P_IP, "drop")
		p.ins(bpf.LoadAbsolute{Off: arpLens, Size: 2})
		p.jump(bpf.JumpNotEqual, 6<<8|4, "drop")
		p.ins(bpf.LoadAbsolute{Off: arpSHA, Size: 4})
		p.jump(bpf.JumpNotEqual, macHi, "drop")
		p.ins(bpf.LoadAbsolute{Off: arpSHA + 4, Size: 2})
		p.jump(bpf.JumpNotEqual, macLo, "drop")
		p.ins(bpf.LoadAbsolute{Off: arpSPA, Size: 4})
		p.jump(bpf.JumpEqual, ip4, "pass")
		p.jump(bpf.JumpEqual, 0, "pass") // a probe (RFC 5227)
		p.goTo("drop")
	} else {
		p.label("arp")
		p.goTo("drop")
	}

	p.label("ipv6")
	p.atLeast(ip6Min)
	p.ins(bpf.LoadAbsolute{Off: ip6Next, Size: 1})
	p.jump(bpf.JumpEqual, nextICMPv6, "icmpv6")
	p.jump(bpf.JumpEqual, nextHopByHop, "hop-by-hop")
	// Headers the kernel reads before an ICMPv6 message behind them,
	// whose neighbour advertisement the program would not see below.
	p.jump(bpf.JumpEqual, nextRouting, "drop")
	p.jump(bpf.JumpEqual, nextDestOptions, "drop")
	p.goTo("source6")

	// A neighbour advertisement names the address it claims (its
	// target): the IPv6 counterpart of an ARP reply's sender address.
	p.label("icmpv6")
	p.atLeast(ip6Payload + 1)
	p.ins(bpf.LoadAbsolute{Off: ip6Payload, Size: 1})
	// A container is no router: its router advertisements and redirects
	// would give its neighbours (accept_ra=1, the kernel's default) a
	// default route or a next hop through it. The node takes none
	// (accept_ra=0 on its side).
	p.jump(bpf.JumpEqual, icmp6RA, "drop")
	p.jump(bpf.JumpEqual, icmp6Redirect, "drop")
	p.jump(bpf.JumpNotEqual, icmp6NA, "source6")
	p.atLeast(ip6Payload + 24)
	p.own6(c.IPv6, ip6Payload+8, "source6", "drop")

	// Hop-by-hop options carry MLD's router alert; nothing else from a
	// container needs them, and behind them the target above would move.
	p.label("hop-by-hop")
	p.atLeast(ip6Payload + 9)
	p.ins(bpf.LoadAbsolute{Off: ip6Payload, Size: 1})
	p.jump(bpf.JumpNotEqual, nextICMPv6, "drop")
	p.ins(bpf.LoadAbsolute{Off: ip6Payload + 1, Size: 1})
	p.jump(bpf.JumpNotEqual, 0, "drop") // 8 bytes of options
	p.ins(bpf.LoadAbsolute{Off: ip6Payload + 8, Size: 1})
	for _, t := range []uint32{mldQuery, mldReport, mldDone, mldv2Report} {
		p.jump(bpf.JumpEqual, t, "source6")
	}
	p.goTo("drop")

	p.label("source6")
	p.own6(c.IPv6, ip6Src, "pass", "unspecified6")
	p.label("unspecified6")
	for i := uint32(0); i < 4; i++ {
		p.ins(bpf.LoadAbsolute{Off: ip6Src + 4*i, Size: 4})
		p.jump(bpf.JumpNotEqual, 0, "drop")
	}
	p.goTo("pass")

	p.label("pass")
	p.ins(bpf.RetConstant{Val: tcActUnspec})
	p.label("drop")
	p.ins(bpf.RetConstant{Val: tcActShot})
	return p.assemble()
}

// own6 jumps to yes when the IPv6 address at off is own or link-local
// (fe80::/10; the container picks its own, by its addr_gen_mode), else
// to no.
func (p *asm) own6(own netip.Addr, off uint32, yes, no string) {
	p.ins(bpf.LoadAbsolute{Off: off, Size: 4})
	p.ins(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xffc00000})
	p.jump(bpf.JumpEqual, 0xfe800000, yes)
	if !own.IsValid() {
		p.goTo(no)
		return
	}
	b := own.As16()
	for i := uint32(0); i < 4; i++ {
		p.ins(bpf.LoadAbsolute{Off: off + 4*i, Size: 4})
		p.jump(bpf.JumpNotEqual, binary.BigEndian.Uint32(b[4*i:]), no)
	}
	p.goTo(yes)
}

// asm assembles a program whose jumps name labels.
type asm struct {
	prog   []bpf.Instruction
	labels map[string]int
	jumps  map[int]string // instruction → the label it jumps to when true (or always)
}

func (p *asm) ins(i bpf.Instruction) { p.prog = append(p.prog, i) }

func (p *asm) label(name string) {
	if p.labels == nil {
		p.labels = map[string]int{}
	}
	p.labels[name] = len(p.prog)
}

func (p *asm) jump(cond bpf.JumpTest, val uint32, to string) {
	if p.jumps == nil {
		p.jumps = map[int]string{}
	}
	p.jumps[len(p.prog)] = to
	p.ins(bpf.JumpIf{Cond: cond, Val: val})
}

func (p *asm) goTo(to string) {
	if p.jumps == nil {
		p.jumps = map[int]string{}
	}
	p.jumps[len(p.prog)] = to
	p.ins(bpf.Jump{})
}

// atLeast drops frames shorter than n bytes.
func (p *asm) atLeast(n uint32) {
	p.ins(bpf.LoadExtension{Num: bpf.ExtLen})
	p.jump(bpf.JumpLessThan, n, "drop")
}

func (p *asm) assemble() ([]bpf.RawInstruction, error) {
	for at, to := range p.jumps {
		target, ok := p.labels[to]
		if !ok || target <= at {
			return nil, fmt.Errorf("source guard: jump to %q", to)
		}
		skip := target - at - 1
		switch j := p.prog[at].(type) {
		case bpf.JumpIf:
			if skip > 255 {
				return nil, fmt.Errorf("source guard: jump to %q too far", to)
			}
			j.SkipTrue = uint8(skip)
			p.prog[at] = j
		case bpf.Jump:
			p.prog[at] = bpf.Jump{Skip: uint32(skip)}
		}
	}
	return bpf.Assemble(p.prog)
}

// ops is prog as cls_bpf takes it (struct sock_filter, native order).
func ops(prog []bpf.RawInstruction) []byte {
	var b bytes.Buffer
	for _, i := range prog {
		binary.Write(&b, binary.NativeEndian, i)
	}
	return b.Bytes()
}

// Apply puts c's guard on the ingress of the host veth ifindex (adding
// its clsact qdisc), in place of one there.
func Apply(ifindex int, c Container) error {
	prog, err := Program(c)
	if err != nil {
		return err
	}
	clsact := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(clsact); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding a clsact qdisc to interface %d for the source guard: %w", ifindex, err)
	}
	// vishvananda/netlink's BpfFilter takes eBPF programs only: the
	// request is written here, as tc writes "bpf bytecode ... da".
	req := nl.NewNetlinkRequest(unix.RTM_NEWTFILTER, unix.NLM_F_CREATE|unix.NLM_F_ACK)
	req.AddData(&nl.TcMsg{Family: nl.FAMILY_ALL, Ifindex: int32(ifindex), Handle: handle,
		Parent: netlink.HANDLE_MIN_INGRESS, Info: netlink.MakeHandle(Priority, nl.Swap16(unix.ETH_P_ALL))})
	req.AddData(nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("bpf")))
	options := nl.NewRtAttr(nl.TCA_OPTIONS, nil)
	options.AddRtAttr(nl.TCA_BPF_OPS_LEN, nl.Uint16Attr(uint16(len(prog))))
	options.AddRtAttr(nl.TCA_BPF_OPS, ops(prog))
	options.AddRtAttr(nl.TCA_BPF_FLAGS, nl.Uint32Attr(nl.TCA_BPF_FLAG_ACT_DIRECT))
	req.AddData(options)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("adding the source guard to interface %d (tc ingress, priority %d): %w", ifindex, Priority, err)
	}
	return nil
}

// Check verifies that the ingress of ifindex runs c's guard, as Apply
// made it: a filter missing, or one made for other addresses (the
// container's MAC changed after ADD), fails.
func Check(ifindex int, c Container) error {
	prog, err := Program(c)
	if err != nil {
		return err
	}
	want := ops(prog)
	have, err := guardOps(ifindex)
	if err != nil {
		return err
	}
	switch {
	case have == nil:
		return fmt.Errorf("no source guard (tc filter, priority %d) on the ingress of interface %d", Priority, ifindex)
	case !bytes.Equal(have, want):
		return fmt.Errorf("the source guard on interface %d lets through other addresses than the container's (MAC %s, %v, %v): was the MAC changed after ADD (use berth's mac capability)?",
			ifindex, c.MAC, c.IPv4, c.IPv6)
	}
	return nil
}

// guardOps returns the classic program of the guard's filter on ifindex,
// or nil when there is none.
func guardOps(ifindex int) ([]byte, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETTFILTER, unix.NLM_F_DUMP)
	req.AddData(&nl.TcMsg{Family: nl.FAMILY_ALL, Ifindex: int32(ifindex), Parent: netlink.HANDLE_MIN_INGRESS,
		Info: netlink.MakeHandle(Priority, 0)})
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWTFILTER)
	if err != nil {
		return nil, fmt.Errorf("listing the ingress filters of interface %d: %w", ifindex, err)
	}
	for _, m := range msgs {
		tc := nl.DeserializeTcMsg(m)
		if tc.Handle != handle || tc.Info>>16 != Priority {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[nl.SizeofTcMsg:])
		if err != nil {
			return nil, err
		}
		var kind string
		var options []syscall.NetlinkRouteAttr
		for _, a := range attrs {
			switch a.Attr.Type {
			case nl.TCA_KIND:
				kind = string(bytes.TrimRight(a.Value, "\x00"))
			case nl.TCA_OPTIONS:
				if options, err = nl.ParseRouteAttr(a.Value); err != nil {
					return nil, err
				}
			}
		}
		if kind != "bpf" {
			continue
		}
		for _, o := range options {
			if o.Attr.Type == nl.TCA_BPF_OPS {
				return o.Value, nil
			}
		}
	}
	return nil, nil
}
