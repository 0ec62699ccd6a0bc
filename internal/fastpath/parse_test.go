package fastpath

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/berthnet/berth/internal/testenv"
)

// from_container's verdicts on packets that end early or are not IPv4
// (BPF_PROG_TEST_RUN): parse reads only the headers it needs and drops an
// IPv4 packet whose headers are cut short, leaving anything else to the
// kernel.
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
		p := tcpPacket()[:14+20+8]
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
		{"TCP without data", func() []byte { return tcpPacket()[:14+20+20] }, redirect},
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
		{"ports cut short", func() []byte { return tcpPacket()[:14+20+2] }, drop},
		{"IPv4 options promised, not there", func() []byte {
			p := tcpPacket()[:14+24]
			p[14] = 0x4f // 60-byte header
			return p
		}, drop},
		{"not a first fragment: no ports", func() []byte {
			p := tcpPacket()[:14+20+2]
			p[14+6], p[14+7] = 0x00, 0x10 // offset 16 bytes
			return p
		}, next},
		{"a short frame that is not IPv4", func() []byte {
			p := tcpPacket()[:20]
			p[12], p[13] = 0x08, 0x06 // ARP
			return p
		}, next},
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
