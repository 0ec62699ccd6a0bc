package fastpath

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/testenv"
)

// from_uplink's verdicts on VXLAN packets from a peer node
// (BPF_PROG_TEST_RUN, in a namespace of the test's): the programs
// decapsulate and deliver a frame only when its inner destination is the
// VTEP's own MAC. Any other (another MAC, a broadcast) the VTEP would
// hand to IP as PACKET_OTHERHOST or BROADCAST, which IP neither
// delivers nor forwards: it must go to the VTEP (TCX_NEXT), not into
// the container.
func TestDecapsulateOnlyForTheVTEP(t *testing.T) {
	objs := loadUnpinned(t)
	n := &Network{objs: *objs}
	vtepMAC := [6]byte{2, 0xbe, 0, 0, 0, 1}
	vx := VXLAN{VTEP: 40, Underlay: 2, Local: netip.MustParseAddr("192.168.50.1"), VNI: 1, Port: 8472, MAC: vtepMAC}
	if err := n.ConfigureVXLAN(vx); err != nil {
		t.Fatal(err)
	}
	if got, err := n.VXLAN(); err != nil || got != vx {
		t.Fatalf("VXLAN() %+v, %v; want %+v", got, err, vx)
	}
	if err := n.Configure(Config{Local: netip.MustParsePrefix("10.77.1.0/24"), Scope: netip.MustParsePrefix("10.77.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	if err := n.AddTunnelPeer(netip.MustParseAddr("192.168.50.2")); err != nil {
		t.Fatal(err)
	}
	dst := fastpathEndpoint{Ifindex: 5, Mac: [6]byte{2, 0, 0, 0, 1, 3}, RouterMac: [6]byte{2, 0, 0, 0, 1, 9}}
	if err := objs.Endpoints.Put([4]byte{10, 77, 1, 3}, &dst); err != nil {
		t.Fatal(err)
	}

	const (
		next     = 0xffffffff // TCX_NEXT (-1): the VTEP's
		redirect = 7          // TC_ACT_REDIRECT: into the container
	)
	run := func(packet []byte) (uint32, Stats) {
		var ret uint32
		// A test run looks conntrack up in the caller's namespace: the
		// test's own, not the machine's.
		err := testenv.NewNS(t).Do(func(ns.NetNS) error {
			var err error
			ret, _, err = objs.FromUplink.Test(packet)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		s, err := n.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return ret, s
	}
	if ret, s := run(vxlanPacket(vtepMAC, 0)); ret != redirect || s.Decapsulated != 1 {
		t.Fatalf("for the VTEP's MAC: verdict %#x, %+v; want %#x, decapsulated (the test proves nothing otherwise)", ret, s, redirect)
	}
	for name, mac := range map[string][6]byte{
		"another MAC":       {2, 0xbe, 0, 0, 0, 2},
		"broadcast":         {0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		"the container's":   dst.Mac,
		"the VTEP's, a bit": {3, 0xbe, 0, 0, 0, 1},
	} {
		if ret, s := run(vxlanPacket(mac, 0)); ret != next || s.Decapsulated != 1 {
			t.Errorf("%s: verdict %#x, %+v; want %#x, nothing more decapsulated", name, ret, s, uint32(next))
		}
	}
	// An outer UDP checksum nothing verified (a test run's packet is
	// CHECKSUM_NONE, as one from a veth of a VTEP with udpcsum is
	// CHECKSUM_PARTIAL) is the VTEP socket's to check: this one is wrong.
	if ret, s := run(vxlanPacket(vtepMAC, 1234)); ret != next || s.Decapsulated != 1 {
		t.Errorf("an outer UDP checksum: verdict %#x, %+v; want %#x, nothing more decapsulated", ret, s, uint32(next))
	}
	// A MAC written for another VTEP (netd re-created it and has not
	// written the new one's yet) is none.
	mac := fastpathVtepMac{VtepIfindex: 41, Mac: vtepMAC}
	if err := objs.VtepMac.Put(uint32(0), &mac); err != nil {
		t.Fatal(err)
	}
	if ret, s := run(vxlanPacket(vtepMAC, 0)); ret != next || s.Decapsulated != 1 {
		t.Errorf("the MAC of another VTEP: verdict %#x, %+v; want %#x", ret, s, uint32(next))
	}
	if got, err := n.VXLAN(); err != nil || got.MAC != ([6]byte{}) {
		t.Errorf("VXLAN() with the MAC of another VTEP: %+v, %v; want no MAC", got, err)
	}
}

// vxlanPacket is a VXLAN packet from peer node 192.168.50.2 to node
// 192.168.50.1 (port 8472, VNI 1) holding a UDP datagram from 10.77.2.5
// to container 10.77.1.3, in a frame for innerDst, with the outer UDP
// checksum udpCheck (0: none).
func vxlanPacket(innerDst [6]byte, udpCheck uint16) []byte {
	const outer = 14 + 20 + 8 + 8
	p := make([]byte, outer+14+20+8+4)
	// Outer Ethernet: the test run's device is the loopback one, whose
	// MAC is zero: the frame is PACKET_HOST.
	binary.BigEndian.PutUint16(p[12:], 0x0800)
	ip := p[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(len(p)-14))
	copy(ip[12:16], []byte{192, 168, 50, 2})
	copy(ip[16:20], []byte{192, 168, 50, 1})
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip[:20]))
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 8472)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(p)-14-20))
	binary.BigEndian.PutUint16(udp[6:], udpCheck)
	vx := udp[8:]
	binary.BigEndian.PutUint32(vx[0:], 0x08000000)
	binary.BigEndian.PutUint32(vx[4:], 1<<8)
	inner := p[outer:]
	copy(inner[0:6], innerDst[:])
	copy(inner[6:12], []byte{2, 0xbe, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(inner[12:], 0x0800)
	iip := inner[14:]
	iip[0], iip[8], iip[9] = 0x45, 63, 17
	binary.BigEndian.PutUint16(iip[2:], 20+8+4)
	copy(iip[12:16], []byte{10, 77, 2, 5})
	copy(iip[16:20], []byte{10, 77, 1, 3})
	binary.BigEndian.PutUint16(iip[10:], ipChecksum(iip[:20]))
	iudp := iip[20:]
	binary.BigEndian.PutUint16(iudp[0:], 5000)
	binary.BigEndian.PutUint16(iudp[2:], 6000)
	binary.BigEndian.PutUint16(iudp[4:], 8+4)
	return p
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
