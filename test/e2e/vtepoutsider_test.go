package e2e_test

import (
	"context"
	"encoding/binary"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd/backend/vxlan"
	"github.com/berthnet/berth/test/testbed"
)

// TestVXLANOutsideBerth: VXLAN from a peer's node address that arrives
// on a link no uplink is, from something berth's source guard does not
// watch, is dropped by the VTEP guard (as it was before the peer sets,
// when only the underlay link was trusted). First, node1 and node2 have
// a tunnel of the operator's between them (a VXLAN device "ops", VNI
// 100, port 4789, as a management overlay): a container on node1 sends
// to node2's port 4789, which berth's guard lets out (not its port),
// node1 masquerades it, ops on node2 decapsulates it, and its inner
// packet, from node1's address to node2's VTEP port, enters node2 on
// ops. Second, a container of another plugin on node2 (a veth into the
// node, as docker0's, without berth's source guard, with CAP_NET_RAW as
// Docker gives) sends VXLAN to node2's VTEP from node1's address.
// Datapath under test: BERTH_TEST_DATAPATH.
func TestVXLANOutsideBerth(t *testing.T) {
	ctx := context.Background()
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	etcd, err := tb.StartEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node1, node2 := tb.Node(1), tb.Node(2)
	opts := testbed.NetdOptions{Network: "pods", Etcd: []string{etcd.ClientURL}, Args: []string{"--mode", "vxlan"},
		EBPF: testenv.Datapath() == "ebpf"}
	c := &cluster{t: t, tb: tb, net: opts.Network, netd: map[int]*testbed.Netd{}}
	for i := 1; i <= 2; i++ {
		if c.netd[i], err = tb.StartNetd(ctx, tb.Node(i), opts); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 2; i++ {
		if err := c.netd[i].WaitConverged(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []struct {
		node   *testbed.Node
		remote netip.Addr
		addr   string
	}{{node1, node2.IP, "172.31.0.1/30"}, {node2, node1.IP, "172.31.0.2/30"}} {
		for _, cmd := range [][]string{
			{"ip", "link", "add", "ops", "type", "vxlan", "id", "100", "dstport", "4789", "local", n.node.IP.String(), "remote", n.remote.String()},
			{"ip", "addr", "add", n.addr, "dev", "ops"},
			{"ip", "link", "set", "ops", "up"},
		} {
			if out, err := n.node.Run(ctx, cmd[0], cmd[1:]...); err != nil {
				t.Fatalf("%s: %v: %s", n.node.Host, err, out)
			}
		}
	}
	attacker, v2 := c.run(1, "attacker"), c.run(2, "v2")
	matrix(t, []*container{attacker, v2}, 7000)
	tun2 := vtepOf(t, node2, vxlan.VTEPName(1))
	ops := vtepOf(t, node2, "ops")
	forged := netip.MustParseAddr("1.2.3.4")
	toVTEP2 := netip.AddrPortFrom(node2.IP, uint16(tun2.port))

	// arrives sends the frame for v2's port three times with send and
	// reports whether v2 got it within a second.
	port := uint16(9300)
	arrives := func(t *testing.T, payload string, send func(frame []byte) error) bool {
		t.Helper()
		port++
		got := listenUDP(t, v2.ns, netip.AddrPortFrom(v2.IP, port))
		frame := vxlanFrame(tun2, forged, v2.IP, port, payload)
		for range 3 {
			if err := send(frame); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case <-got:
			return true
		case <-time.After(time.Second):
			return false
		}
	}
	// The same VXLAN from node1's stack arrives: what is dropped below is
	// dropped for the link it arrives on.
	if !arrives(t, "from node1", func(b []byte) error { return sendUDP(node1.NetNS.NetNS, toVTEP2, b) }) {
		t.Fatalf("%s got nothing of node1's VXLAN to %s", v2, toVTEP2)
	}

	t.Run("VXLAN in an operator's tunnel", func(t *testing.T) {
		// What ops on node2 decapsulates: an Ethernet frame to ops' MAC
		// holding IPv4/UDP from node1's address to node2's VTEP port.
		inUDP := func(b []byte) []byte {
			outer := make([]byte, 8, 8+14+28+len(b))
			outer[0] = 0x08 // VNI present
			binary.BigEndian.PutUint32(outer[4:], uint32(ops.vni)<<8)
			outer = append(outer, ops.mac...)
			outer = append(outer, 0x02, 0, 0, 0, 0x77, 0x77, 0x08, 0x00)
			return append(outer, udp4(node1.IP, toVTEP2, b)...)
		}
		if arrives(t, "nested, from "+attacker.Name, func(b []byte) error {
			return sendUDP(attacker.ns, netip.AddrPortFrom(node2.IP, 4789), inUDP(b))
		}) {
			t.Errorf("%s got the VXLAN in VXLAN %s sent to %s:4789: ops on node2 decapsulated it, and the VTEP again", v2, attacker, node2.IP)
		}
	})

	t.Run("another plugin's container spoofing a peer", func(t *testing.T) {
		foreign := testenv.NewNS(t)
		if err := node2.Do(func() error {
			veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "dk0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(foreign.Fd()))}
			if err := netlink.LinkAdd(veth); err != nil {
				return err
			}
			addr, _ := netlink.ParseAddr("172.30.0.1/24")
			if err := netlink.AddrAdd(veth, addr); err != nil {
				return err
			}
			return netlink.LinkSetUp(veth)
		}); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range [][]string{
			{"ip", "addr", "add", "172.30.0.2/24", "dev", "eth0"},
			{"ip", "link", "set", "eth0", "up"},
			{"ip", "route", "add", "default", "via", "172.30.0.1"},
		} {
			if out, err := testenv.InNS(foreign, cmd[0], cmd[1:]...); err != nil {
				t.Fatalf("%v: %v: %s", cmd, err, out)
			}
		}
		if arrives(t, "spoofed by another plugin's container", func(b []byte) error { return rawUDP4(foreign, node1.IP, toVTEP2, b) }) {
			t.Errorf("%s got VXLAN from node1's address sent by a container of another plugin on node2 to %s", v2, toVTEP2)
		}
	})
}

// udp4 is b in IPv4/UDP from src to dst.
func udp4(src netip.Addr, dst netip.AddrPort, b []byte) []byte {
	pkt := make([]byte, 28, 28+len(b))
	pkt[0], pkt[8], pkt[9] = 0x45, 64, syscall.IPPROTO_UDP
	binary.BigEndian.PutUint16(pkt[2:], uint16(28+len(b)))
	copy(pkt[12:], src.AsSlice())
	copy(pkt[16:], dst.Addr().AsSlice())
	binary.BigEndian.PutUint16(pkt[10:], testenv.Checksum(pkt[:20]))
	binary.BigEndian.PutUint16(pkt[20:], 40001)
	binary.BigEndian.PutUint16(pkt[22:], dst.Port())
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(b)))
	return append(pkt, b...)
}

// rawUDP4 sends b as IPv4/UDP from src to dst through a raw socket in
// netns n, whatever address n has (a spoofed source).
func rawUDP4(n ns.NetNS, src netip.Addr, dst netip.AddrPort, b []byte) error {
	return n.Do(func(ns.NetNS) error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		return syscall.Sendto(fd, udp4(src, dst, b), 0, &syscall.SockaddrInet4{Addr: dst.Addr().As4()})
	})
}
