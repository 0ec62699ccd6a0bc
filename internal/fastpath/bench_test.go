package fastpath

import (
	"encoding/binary"
	"testing"
)

// BenchmarkFromContainer is the cost of from_container on one TCP packet
// between two containers of a node, in the kernel (BPF_PROG_TEST_RUN):
// parsing, the anti-spoofing and destination lookups, the conntrack
// lookup and the redirect verdict. `go test -bench . ./internal/fastpath`
// (as root).
func BenchmarkFromContainer(b *testing.B) {
	objs := loadUnpinned(b)
	// A test run's packet arrives on no interface (ingress_ifindex 0):
	// the sender's endpoint says so.
	src := fastpathEndpoint{Mac: [6]byte{2, 0, 0, 0, 0, 1}, RouterMac: [6]byte{2, 0, 0, 0, 0, 9}}
	dst := fastpathEndpoint{Ifindex: 5, Mac: [6]byte{2, 0, 0, 0, 0, 2}, RouterMac: [6]byte{2, 0, 0, 0, 0, 9}}
	if err := objs.Endpoints.Put([4]byte{10, 77, 0, 2}, &src); err != nil {
		b.Fatal(err)
	}
	if err := objs.Endpoints.Put([4]byte{10, 77, 0, 3}, &dst); err != nil {
		b.Fatal(err)
	}
	ret, d, err := objs.FromContainer.Benchmark(tcpPacket(), b.N, b.ResetTimer)
	if err != nil {
		b.Fatal(err)
	}
	if ret != 7 { // TC_ACT_REDIRECT
		b.Fatalf("verdict %d, want a redirect (7)", ret)
	}
	b.ReportMetric(float64(d.Nanoseconds()), "ns/packet")
}

// tcpPacket is 10.77.0.2:40000 -> 10.77.0.3:80, one byte of data, sent
// to the gateway's MAC.
func tcpPacket() []byte {
	p := make([]byte, 14+20+20+1)
	copy(p[0:6], []byte{2, 0, 0, 0, 0, 9})
	copy(p[6:12], []byte{2, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(p[12:], 0x0800)
	ip := p[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 6 // IPv4, TTL, TCP
	binary.BigEndian.PutUint16(ip[2:], 41)
	copy(ip[12:16], []byte{10, 77, 0, 2})
	copy(ip[16:20], []byte{10, 77, 0, 3})
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 80)
	tcp[12], tcp[13] = 0x50, 0x10 // header length, ACK
	return p
}
