package fastpath

import (
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
