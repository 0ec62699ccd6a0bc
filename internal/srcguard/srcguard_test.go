package srcguard

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// The program run by the kernel on frames (BPF_PROG_TEST_RUN), without
// attaching it; attached to a real veth below, and in plugins/attach.
// (The kernel runs no IPv4 frame shorter than an IPv4 header, nor any
// shorter than an Ethernet header: the program drops those, as every
// load it cannot make.)

// ICMPv6 types and next headers of the frames below.
const (
	icmp6RS       = 133
	icmp6RA       = 134
	icmp6NS       = 135
	icmp6NA       = 136
	icmp6Redirect = 137
	mldv2Report   = 143
	nextICMPv6    = 58
)

var (
	ownMAC   = net.HardwareAddr{0x02, 0xbe, 0, 0, 0, 0x02}
	otherMAC = net.HardwareAddr{0x02, 0xbe, 0, 0, 0, 0x03}
	// farMAC differs from ownMAC in its first four bytes only.
	farMAC = net.HardwareAddr{0x0a, 0xbe, 0, 0, 0, 0x02}
	own4   = netip.MustParseAddr("10.70.0.2")
	own6   = netip.MustParseAddr("fd70::2")
)

func eth(src net.HardwareAddr, typ uint16, payload []byte) []byte {
	f := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, src...)
	f = binary.BigEndian.AppendUint16(f, typ)
	return append(f, payload...)
}

// to gives frame the destination dst.
func to(dst string, frame []byte) []byte {
	mac, _ := net.ParseMAC(dst)
	copy(frame, mac)
	return frame
}

func ipv4(src string) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	copy(h[12:], netip.MustParseAddr(src).AsSlice())
	copy(h[16:], netip.MustParseAddr("10.70.0.3").AsSlice())
	return h
}

func arp(sha net.HardwareAddr, spa string) []byte {
	h := []byte{0, 1, 8, 0, 6, 4, 0, 2}
	h = append(h, sha...)
	h = append(h, netip.MustParseAddr(spa).AsSlice()...)
	h = append(h, make([]byte, 6)...)
	return append(h, netip.MustParseAddr("10.70.0.1").AsSlice()...)
}

// ipv6 is a header from src to ff02::1 with next header next and payload.
func ipv6(src string, next byte, payload []byte) []byte { return ipv6to(src, "ff02::1", next, payload) }

// ipv6to is a header from src to dst with next header next and payload.
func ipv6to(src, dst string, next byte, payload []byte) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h[6], h[7] = next, 255
	copy(h[8:], netip.MustParseAddr(src).AsSlice())
	copy(h[24:], netip.MustParseAddr(dst).AsSlice())
	return append(h, payload...)
}

// make16 is an ICMPv6 message of type typ, 16 bytes long.
func make16(typ byte) []byte { return append([]byte{typ}, make([]byte, 15)...) }

func na(target string) []byte {
	m := []byte{icmp6NA, 0, 0, 0, 0x20, 0, 0, 0}
	return append(m, netip.MustParseAddr(target).AsSlice()...)
}

func TestProgram(t *testing.T) {
	mld := append([]byte{nextICMPv6, 0, 5, 2, 0, 0, 1, 0}, mldv2Report, 0, 0, 0, 0, 0, 0, 0)
	ll, node6, allNodes := netip.MustParseAddr("fe80::be:ff:fe00:2"), netip.MustParseAddr("fd70::1"), netip.MustParseAddr("ff02::1")
	// Neighbour discovery from the container with options: a
	// solicitation of the node, an advertisement of itself, a router
	// solicitation.
	nsWith := func(opts ...[]byte) []byte {
		return eth(ownMAC, 0x86dd, nd(own6, node6, icmp6NS, nsBody(node6), opts...))
	}
	naWith := func(opts ...[]byte) []byte {
		return eth(ownMAC, 0x86dd, nd(own6, allNodes, icmp6NA, naBody(own6, true), opts...))
	}
	rsWith := func(opts ...[]byte) []byte {
		return eth(ownMAC, 0x86dd, nd(ll, netip.MustParseAddr("ff02::2"), icmp6RS, make([]byte, 4), opts...))
	}
	nonce := []byte{14, 1, 1, 2, 3, 4, 5, 6} // RFC 3971, which Linux sends in DAD
	// The guard walks 4 options at most.
	four := [][]byte{nonce, nonce, nonce, llOption(1, ownMAC)}
	five := append([][]byte{nonce}, four...)
	// A 3000-byte ping (echo request) in two fragments.
	ping := ipv6to(own6.String(), node6.String(), nextICMPv6, append([]byte{128, 0, 0, 0, 0, 1, 0, 1}, make([]byte, 3000)...))
	// Duplicate address detection: a solicitation from ::, to the
	// target's solicited-node group, without options.
	dad := nd(netip.IPv6Unspecified(), netip.MustParseAddr("ff02::1:ff00:2"), icmp6NS, nsBody(own6))
	naPacket := nd(own6, allNodes, icmp6NA, naBody(own6, true), llOption(2, ownMAC))
	for _, tc := range []struct {
		name  string
		c     Container
		frame []byte
		pass  bool
	}{
		{"own IPv4", Container{ownMAC, own4, own6}, eth(ownMAC, 0x0800, ipv4("10.70.0.2")), true},
		{"neighbour's IPv4", Container{ownMAC, own4, own6}, eth(ownMAC, 0x0800, ipv4("10.70.0.3")), false},
		{"gateway's IPv4", Container{ownMAC, own4, own6}, eth(ownMAC, 0x0800, ipv4("10.70.0.1")), false},
		{"outside IPv4", Container{ownMAC, own4, own6}, eth(ownMAC, 0x0800, ipv4("1.2.3.4")), false},
		{"loopback IPv4", Container{ownMAC, own4, own6}, eth(ownMAC, 0x0800, ipv4("127.0.0.1")), false},
		{"IPv4 without an IPv4 address", Container{ownMAC, netip.Addr{}, own6}, eth(ownMAC, 0x0800, ipv4("10.70.0.2")), false},
		{"neighbour's MAC", Container{ownMAC, own4, own6}, eth(otherMAC, 0x0800, ipv4("10.70.0.2")), false},
		{"MAC differing in its first bytes", Container{ownMAC, own4, own6}, eth(farMAC, 0x0800, ipv4("10.70.0.2")), false},
		{"ARP from itself", Container{ownMAC, own4, own6}, eth(ownMAC, 0x0806, arp(ownMAC, "10.70.0.2")), true},
		{"ARP probe", Container{ownMAC, own4, own6}, eth(ownMAC, 0x0806, arp(ownMAC, "0.0.0.0")), true},
		{"ARP claiming the neighbour's IPv4", Container{ownMAC, own4, own6}, eth(ownMAC, 0x0806, arp(ownMAC, "10.70.0.3")), false},
		{"ARP claiming the gateway", Container{ownMAC, own4, own6}, eth(ownMAC, 0x0806, arp(ownMAC, "10.70.0.1")), false},
		{"ARP with a forged sender MAC", Container{ownMAC, own4, own6}, eth(ownMAC, 0x0806, arp(otherMAC, "10.70.0.2")), false},
		{"ARP with 8-byte hardware addresses", Container{ownMAC, own4, own6}, eth(ownMAC, 0x0806, func() []byte {
			a := arp(ownMAC, "10.70.0.2")
			a[4] = 8
			return a
		}()), false},
		{"ARP with a sender MAC differing in its first bytes", Container{ownMAC, own4, own6}, eth(ownMAC, 0x0806, arp(farMAC, "10.70.0.2")), false},
		{"truncated ARP", Container{ownMAC, own4, own6}, eth(ownMAC, 0x0806, arp(ownMAC, "10.70.0.2")[:20]), false},
		{"ARP without an IPv4 address", Container{ownMAC, netip.Addr{}, own6}, eth(ownMAC, 0x0806, arp(ownMAC, "0.0.0.0")), false},
		{"own IPv6", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, ipv6("fd70::2", 17, make([]byte, 8))), true},
		{"link-local IPv6", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, ipv6("fe80::be:ff:fe00:2", 17, make([]byte, 8))), true},
		{"link-local IPv6, IPv4-only", Container{ownMAC, own4, netip.Addr{}}, eth(ownMAC, 0x86dd, ipv6("fe80::1", 17, make([]byte, 8))), true},
		{"DAD from ::", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, dad), true},
		{"UDP from ::", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, ipv6("::", 17, make([]byte, 8))), false},
		{"neighbour's IPv6", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, ipv6("fd70::3", 17, make([]byte, 8))), false},
		{"made-up IPv6", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, ipv6("2001:db8::1", 17, make([]byte, 8))), false},
		{"global IPv6, IPv4-only", Container{ownMAC, own4, netip.Addr{}}, eth(ownMAC, 0x86dd, ipv6("fd70::2", 17, make([]byte, 8))), false},
		{"NA for itself", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, ipv6("fe80::1", 58, na("fd70::2"))), true},
		{"NA claiming the neighbour's IPv6", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, ipv6("fd70::2", 58, na("fd70::3"))), false},
		{"MLDv2 report", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, ipv6("fe80::1", 0, mld)), true},
		{"MLDv2 report from ::", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, ipv6("::", 0, mld)), true},
		{"router solicitation", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, ipv6("fe80::1", 58, []byte{133, 0, 0, 0, 0, 0, 0, 0})), true},
		{"router advertisement", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, ipv6("fe80::1", 58, make16(icmp6RA))), false},
		{"redirect", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, ipv6("fe80::1", 58, make16(icmp6Redirect))), false},
		{"NA behind hop-by-hop options", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, ipv6("fe80::1", 0, append([]byte{58, 0, 5, 2, 0, 0, 1, 0}, na("fd70::3")...))), false},
		{"NA behind destination options", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, ipv6("fe80::1", 60, append([]byte{58, 0, 1, 4, 0, 0, 0, 0}, na("fd70::3")...))), false},
		// Link-layer address options: the receiver takes them, not the
		// frame's source. The kernel drops malformed options itself.
		{"NS, own source link-layer address", Container{ownMAC, own4, own6}, nsWith(llOption(1, ownMAC)), true},
		{"NS without options", Container{ownMAC, own4, own6}, nsWith(), true},
		{"NS, another source link-layer address", Container{ownMAC, own4, own6}, nsWith(llOption(1, otherMAC)), false},
		{"NS, a source link-layer address differing in its first bytes", Container{ownMAC, own4, own6}, nsWith(llOption(1, farMAC)), false},
		{"NS, another target link-layer address", Container{ownMAC, own4, own6}, nsWith(llOption(2, otherMAC)), false},
		{"NS, a nonce, then own address", Container{ownMAC, own4, own6}, nsWith(nonce, llOption(1, ownMAC)), true},
		{"NS, own address, then another", Container{ownMAC, own4, own6}, nsWith(llOption(1, ownMAC), llOption(1, otherMAC)), false},
		{"NS, an option of length 0", Container{ownMAC, own4, own6}, nsWith([]byte{14, 0, 0, 0, 0, 0, 0, 0}), false},
		{"NS, an option running past the packet", Container{ownMAC, own4, own6}, nsWith([]byte{14, 2, 0, 0, 0, 0, 0, 0}), false},
		{"NS, a truncated option", Container{ownMAC, own4, own6}, nsWith([]byte{1, 1, 2, 0xbe}), false},
		{"NS, a 16-byte source link-layer address", Container{ownMAC, own4, own6}, nsWith(append(append([]byte{1, 2}, ownMAC...), make([]byte, 8)...)), false},
		{"NS, 4 options", Container{ownMAC, own4, own6}, nsWith(four...), true},
		{"NS, 5 options", Container{ownMAC, own4, own6}, nsWith(five...), false},
		{"NS shorter than its target", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, nd(own6, node6, icmp6NS, make([]byte, 12))), false},
		{"NA, own target link-layer address", Container{ownMAC, own4, own6}, naWith(llOption(2, ownMAC)), true},
		{"NA without options", Container{ownMAC, own4, own6}, naWith(), true},
		{"NA, another target link-layer address", Container{ownMAC, own4, own6}, naWith(llOption(2, otherMAC)), false},
		{"NA, another source link-layer address", Container{ownMAC, own4, own6}, naWith(llOption(1, otherMAC)), false},
		{"NA, an option of length 0", Container{ownMAC, own4, own6}, naWith([]byte{2, 0, 2, 0xbe, 0, 0, 0, 2}), false},
		{"NA, an option running past the packet", Container{ownMAC, own4, own6}, naWith([]byte{2, 3, 2, 0xbe, 0, 0, 0, 2}), false},
		{"RS, own source link-layer address", Container{ownMAC, own4, own6}, rsWith(llOption(1, ownMAC)), true},
		{"RS without options", Container{ownMAC, own4, own6}, rsWith(), true},
		{"RS, another source link-layer address", Container{ownMAC, own4, own6}, rsWith(llOption(1, otherMAC)), false},
		{"RS, an option of length 0", Container{ownMAC, own4, own6}, rsWith([]byte{14, 0, 2, 0xbe, 0, 0, 0, 2}), false},
		{"RS, an option running past the packet", Container{ownMAC, own4, own6}, rsWith([]byte{14, 2, 2, 0xbe, 0, 0, 0, 2}), false},
		// Fragments: receivers drop neighbour discovery in them.
		{"NA, an atomic fragment", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, fragment(naPacket, 0, 0, false)), false},
		{"NA, a first fragment", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, fragment(naPacket, 0, 24, true)), false},
		{"RS, a first fragment", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, fragment(ipv6to(ll.String(), "ff02::2", nextICMPv6, []byte{icmp6RS, 0, 0, 0, 0, 0, 0, 0}), 0, 0, false)), false},
		{"a first fragment without the ICMPv6 type", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, fragment(naPacket, 0, 0, false)[:48]), false},
		// Behind a first fragment, another extension header hides the
		// message as it does unfragmented; receivers with
		// suppress_frag_ndisc=0 take it.
		{"NA for the neighbour, atomic fragment, destination options", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, chain(nd(own6, allNodes, icmp6NA, naBody(netip.MustParseAddr("fd70::3"), true)), atomicFrag(), dstOpts())), false},
		{"NA, another target link-layer address, first fragment, destination options", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, chain(naWith(llOption(2, otherMAC))[14:], firstFrag(), dstOpts())), false},
		{"NA for the neighbour, atomic fragment, routing header", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, chain(nd(own6, allNodes, icmp6NA, naBody(netip.MustParseAddr("fd70::3"), true)), atomicFrag(), routingSkipped())), false},
		{"NA for the neighbour, two atomic fragments", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, chain(nd(own6, allNodes, icmp6NA, naBody(netip.MustParseAddr("fd70::3"), true)), atomicFrag(), atomicFrag())), false},
		{"RA, atomic fragment, destination options", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, chain(nd(ll, allNodes, icmp6RA, make([]byte, 12)), atomicFrag(), dstOpts())), false},
		{"ping, atomic fragment, destination options", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, chain(ping, atomicFrag(), dstOpts())), false},
		{"ping, first fragment", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, fragment(ping, 0, 1448, true)), true},
		{"ping, second fragment", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, fragment(ping, 1448, 0, false)), true},
		{"ping fragment from the neighbour's IPv6", Container{ownMAC, own4, own6}, eth(ownMAC, 0x86dd, fragment(ipv6to("fd70::3", node6.String(), nextICMPv6, ping[40:]), 0, 1448, true)), false},
		{"VLAN in band", Container{ownMAC, own4, own6}, eth(ownMAC, 0x8100, append([]byte{0, 1, 8, 0}, ipv4("10.70.0.3")...)), false},
		{"other ethertype", Container{ownMAC, own4, own6}, eth(ownMAC, 0x88cc, make([]byte, 40)), false},
		// A bridge hands these up on the host veth itself, past its rules.
		{"own IPv4 to the LLDP group", Container{ownMAC, own4, own6}, to("01:80:c2:00:00:0e", eth(ownMAC, 0x0800, ipv4("10.70.0.2"))), false},
		{"own ARP to 802.1X's group", Container{ownMAC, own4, own6}, to("01:80:c2:00:00:03", eth(ownMAC, 0x0806, arp(ownMAC, "10.70.0.2"))), false},
		{"DAD to the STP group", Container{ownMAC, own4, own6}, to("01:80:c2:00:00:00", eth(ownMAC, 0x86dd, dad)), false},
		{"own IPv4 to an IPv4 multicast group", Container{ownMAC, own4, own6}, to("01:00:5e:00:00:fb", eth(ownMAC, 0x0800, ipv4("10.70.0.2"))), true},
		{"own IPv4 to 01:80:c2:00:00:10 (not link-local)", Container{ownMAC, own4, own6}, to("01:80:c2:00:00:10", eth(ownMAC, 0x0800, ipv4("10.70.0.2"))), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if pass := run(t, tc.c, tc.frame); pass != tc.pass {
				t.Errorf("passed %v, want %v", pass, tc.pass)
			}
		})
	}
}

// run runs c's program on frame in the kernel and reports whether it
// let the frame through.
func run(t *testing.T, c Container, frame []byte) bool {
	t.Helper()
	prog, err := load(c)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	// The frame's skb (a struct __sk_buff, 192 bytes in Linux 6.x): its
	// mark, at offset 8, with a bit of someone else's set, which the
	// guard must keep.
	const others = 0x1
	ctx, out := make([]byte, 192), make([]byte, 192)
	binary.NativeEndian.PutUint32(ctx[8:], others)
	v, err := prog.Run(&ebpf.RunOptions{Data: frame, Context: ctx, ContextOut: out})
	if err != nil {
		t.Fatal(err)
	}
	mark := binary.NativeEndian.Uint32(out[8:])
	// Anything but the two verdicts is a bug of the program.
	switch int32(v) {
	case -1:
		if mark != others|PassedMark {
			t.Errorf("let through with mark %#x, want %#x: the bridge drops it", mark, others|PassedMark)
		}
		return true
	case 2:
		return false
	}
	t.Fatalf("the program returned %d", int32(v))
	return false
}

func TestProgramRefusesABadMAC(t *testing.T) {
	if _, err := load(Container{MAC: net.HardwareAddr{1, 2, 3}}); err == nil {
		t.Fatal("a 3-byte MAC was taken")
	}
}
