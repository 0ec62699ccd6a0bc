package fastpath

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/berthnet/berth/internal/testenv"
)

// from_container's verdicts on packets that end early or are not IPv4
// (BPF_PROG_TEST_RUN): parse reads only the headers it needs and drops an
// IPv4 packet whose headers are cut short or that is shorter than its
// tot_len; ARP passes to the kernel only from the container's own address
// and MAC, anything else not IPv4 is dropped.
func TestParse(t *testing.T) {
	objs := loadUnpinned(t)
	src := fastpathEndpoint{Mac: [6]byte{2, 0, 0, 0, 0, 1}, RouterMac: [6]byte{2, 0, 0, 0, 0, 9}}
	dst := fastpathEndpoint{Ifindex: 5, Mac: [6]byte{2, 0, 0, 0, 0, 2}, RouterMac: [6]byte{2, 0, 0, 0, 0, 9}}
	if err := objs.Endpoints.Put([4]byte{10, 77, 0, 2}, &src); err != nil {
		t.Fatal(err)
	}
	if err := objs.Endpoints.Put([4]byte{10, 77, 0, 3}, &dst); err != nil {
		t.Fatal(err)
	}

	// The network: 10.77.0.0/16, this node's share 10.77.0.0/24.
	be := func(a, b, c, d byte) uint32 { return binary.NativeEndian.Uint32([]byte{a, b, c, d}) }
	cfg := fastpathConfig{LocalAddr: be(10, 77, 0, 0), LocalMask: be(255, 255, 255, 0),
		ScopeAddr: be(10, 77, 0, 0), ScopeMask: be(255, 255, 0, 0)}
	if err := objs.Config.Put(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}

	const (
		next     = 0xffffffff // TCX_NEXT (-1)
		drop     = 2          // TCX_DROP
		redirect = 7          // TC_ACT_REDIRECT
	)
	icmp := func() []byte {
		p := cut(tcpPacket(), 14+20+8)
		p[14+9] = 1    // ICMP
		p[14+20] = 8   // echo request
		p[14+20+1] = 0 // code
		return p
	}
	for _, tc := range []struct {
		name string
		pkt  func() []byte
		want uint32
	}{
		{"TCP with one byte of data", tcpPacket, redirect},
		{"TCP without data", func() []byte { return cut(tcpPacket(), 14+20+20) }, redirect},
		// ICMP stays on the kernel's path: conntrack may have translated
		// it, and the kfuncs cannot look it up (keep_on_stack).
		{"ICMP echo", icmp, next},
		// An ICMP error about a flow conntrack does not know goes where
		// the flow's packets go (icmp_error): 10.77.0.2 tells 10.77.0.3
		// that its UDP port 40000 is closed.
		{"ICMP port unreachable", func() []byte { return icmpError(3, 3, [4]byte{10, 77, 0, 3}, [4]byte{10, 77, 0, 2}, 17, 28) }, redirect},
		{"ICMP fragmentation needed", func() []byte { return icmpError(3, 4, [4]byte{10, 77, 0, 3}, [4]byte{10, 77, 0, 2}, 6, 28) }, redirect},
		{"ICMP time exceeded", func() []byte { return icmpError(11, 0, [4]byte{10, 77, 0, 3}, [4]byte{10, 77, 0, 2}, 17, 28) }, redirect},
		{"ICMP parameter problem", func() []byte { return icmpError(12, 0, [4]byte{10, 77, 0, 3}, [4]byte{10, 77, 0, 2}, 17, 28) }, redirect},
		{"ICMP source quench", func() []byte { return icmpError(4, 0, [4]byte{10, 77, 0, 3}, [4]byte{10, 77, 0, 2}, 17, 28) }, next},
		{"ICMP error about a packet another address sent", func() []byte {
			return icmpError(3, 3, [4]byte{10, 77, 0, 4}, [4]byte{10, 77, 0, 2}, 17, 28)
		}, next},
		{"ICMP error about a packet to the outside world", func() []byte {
			return icmpError(3, 3, [4]byte{10, 77, 0, 3}, [4]byte{192, 0, 2, 1}, 17, 28)
		}, next},
		{"ICMP error about a ping", func() []byte { return icmpError(3, 1, [4]byte{10, 77, 0, 3}, [4]byte{10, 77, 0, 2}, 1, 28) }, next},
		{"ICMP error without the embedded ports", func() []byte { return icmpError(3, 3, [4]byte{10, 77, 0, 3}, [4]byte{10, 77, 0, 2}, 17, 22) }, next},
		{"ports cut short", func() []byte { return cut(tcpPacket(), 14+20+2) }, drop},
		{"IPv4 options promised, not there", func() []byte {
			p := cut(tcpPacket(), 14+24)
			p[14] = 0x4f // 60-byte header
			return p
		}, drop},
		{"not a first fragment: no ports", func() []byte {
			p := cut(tcpPacket(), 14+20+2)
			p[14+6], p[14+7] = 0x00, 0x10 // offset 16 bytes
			return p
		}, next},
		// Shorter than its tot_len: ip_rcv_core would drop it at the node,
		// the destination's stack must not get it past that.
		{"tot_len beyond the frame", func() []byte { return tcpPacket()[:14+20+20] }, drop},
		{"tot_len 1400 in a 60-byte frame", func() []byte {
			p := make([]byte, 60)
			copy(p, tcpPacket())
			binary.BigEndian.PutUint16(p[14+2:], 1400)
			return p
		}, drop},
		{"tot_len shorter than the header", func() []byte {
			p := tcpPacket()
			binary.BigEndian.PutUint16(p[14+2:], 16)
			return p
		}, drop},
		// Ethernet padding after the packet is fine.
		{"padded", func() []byte { return append(tcpPacket(), make([]byte, 10)...) }, redirect},
		// Anti-spoofing of the MAC, ARP and everything not IPv4.
		{"the neighbour's MAC as source", func() []byte {
			p := tcpPacket()
			copy(p[6:12], dst.Mac[:])
			return p
		}, drop},
		{"ARP from itself", func() []byte { return arpPacket(src.Mac, src.Mac, [4]byte{10, 77, 0, 2}, [4]byte{10, 77, 0, 1}) }, next},
		{"ARP probe for its own address", func() []byte { return arpPacket(src.Mac, src.Mac, [4]byte{}, [4]byte{10, 77, 0, 2}) }, next},
		{"ARP probe for another address", func() []byte { return arpPacket(src.Mac, src.Mac, [4]byte{}, [4]byte{10, 77, 0, 3}) }, drop},
		{"ARP claiming the neighbour's address", func() []byte { return arpPacket(src.Mac, src.Mac, [4]byte{10, 77, 0, 3}, [4]byte{10, 77, 0, 1}) }, drop},
		{"ARP claiming the gateway's address", func() []byte { return arpPacket(src.Mac, src.Mac, [4]byte{10, 77, 0, 1}, [4]byte{10, 77, 0, 3}) }, drop},
		{"ARP with a forged sender MAC", func() []byte { return arpPacket(src.Mac, dst.Mac, [4]byte{10, 77, 0, 2}, [4]byte{10, 77, 0, 1}) }, drop},
		{"ARP from a forged Ethernet source", func() []byte { return arpPacket(dst.Mac, src.Mac, [4]byte{10, 77, 0, 2}, [4]byte{10, 77, 0, 1}) }, drop},
		{"ARP with 8-byte hardware addresses", func() []byte {
			p := arpPacket(src.Mac, src.Mac, [4]byte{10, 77, 0, 2}, [4]byte{10, 77, 0, 1})
			p[14+4] = 8
			return p
		}, drop},
		{"a short ARP frame", func() []byte {
			p := tcpPacket()[:20]
			p[12], p[13] = 0x08, 0x06 // ARP
			return p
		}, drop},
		{"IPv6", func() []byte {
			p := make([]byte, 14+40)
			copy(p[6:12], src.Mac[:])
			p[12], p[13], p[14] = 0x86, 0xdd, 0x60
			return p
		}, drop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// (A test run refuses a frame shorter than an Ethernet
			// header, or an IPv4 one shorter than an IPv4 header.)
			ret, _, err := objs.FromContainer.Test(tc.pkt())
			if err != nil {
				t.Fatal(err)
			}
			if ret != tc.want {
				t.Errorf("verdict %#x, want %#x", ret, tc.want)
			}
		})
	}
	// from_uplink leaves a packet shorter than its tot_len to the kernel,
	// which drops it.
	long := make([]byte, 60)
	copy(long, tcpPacket())
	binary.BigEndian.PutUint16(long[14+2:], 1400)
	for _, tc := range []struct {
		name string
		pkt  []byte
		want uint32
	}{{"from_uplink, control", tcpPacket(), redirect}, {"from_uplink, tot_len beyond the frame", long, next}} {
		ret, _, err := objs.FromUplink.Test(tc.pkt)
		if err != nil {
			t.Fatal(err)
		}
		if ret != tc.want {
			t.Errorf("%s: verdict %#x, want %#x", tc.name, ret, tc.want)
		}
	}
}

// cut is p, an IPv4 packet in a frame, cut to n bytes with its tot_len
// to match.
func cut(p []byte, n int) []byte {
	binary.BigEndian.PutUint16(p[14+2:], uint16(n-14))
	return p[:n]
}

// arpPacket is an ARP reply from eth (the frame's source) saying spa is at
// sha, to tpa.
func arpPacket(eth, sha [6]byte, spa, tpa [4]byte) []byte {
	p := make([]byte, 14+28)
	copy(p[0:6], []byte{2, 0, 0, 0, 0, 9})
	copy(p[6:12], eth[:])
	binary.BigEndian.PutUint16(p[12:], 0x0806)
	a := p[14:]
	copy(a, []byte{0, 1, 8, 0, 6, 4, 0, 2})
	copy(a[8:14], sha[:])
	copy(a[14:18], spa[:])
	copy(a[24:28], tpa[:])
	return p
}

// icmpError is an ICMP error (type, code) from 10.77.0.2 to 10.77.0.3
// about a packet from src to dst (protocol proto, its source port 40000,
// destination port 80) of which quoted bytes are embedded.
func icmpError(typ, code byte, src, dst [4]byte, proto byte, quoted int) []byte {
	p := make([]byte, 14+20+8+28)
	copy(p[0:6], []byte{2, 0, 0, 0, 0, 9})
	copy(p[6:12], []byte{2, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(p[12:], 0x0800)
	ip := p[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 1 // IPv4, TTL, ICMP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+quoted))
	copy(ip[12:16], []byte{10, 77, 0, 2})
	copy(ip[16:20], []byte{10, 77, 0, 3})
	icmp := ip[20:]
	icmp[0], icmp[1] = typ, code
	in := icmp[8:]
	in[0], in[8], in[9] = 0x45, 1, proto
	binary.BigEndian.PutUint16(in[2:], 100)
	copy(in[12:16], src[:])
	copy(in[16:20], dst[:])
	binary.BigEndian.PutUint16(in[20:], 40000)
	binary.BigEndian.PutUint16(in[22:], 80)
	return p[:14+20+8+quoted]
}

// loadUnpinned loads the programs with maps of their own, pinned nowhere,
// for BPF_PROG_TEST_RUN; they are closed when the test ends.
func loadUnpinned(tb testing.TB) *fastpathObjects {
	testenv.RequireRoot(tb)
	spec, err := loadFastpath()
	if err != nil {
		tb.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	var objs fastpathObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { objs.Close() })
	return &objs
}
