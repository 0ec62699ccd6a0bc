package e2e_test

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd/backend/vxlan"
	"github.com/berthnet/berth/test/testbed"
)

// TestVXLANInjection: a container of a vxlan network sends VXLAN (UDP to
// the VTEP port, an inner frame for a VTEP's MAC with a made-up source)
// to its own node and to the other node, over the IPv4 underlay and over
// an IPv6 one (berth6.<vni>; iptables datapath only: the eBPF datapath
// takes no IPv6 network, which the container needs to reach the node's
// IPv6 address), and to an address of the other node no lease names (a
// VIP). Nothing arrives: not at a container of the network on
// either node, nor at a container of a bridge network on its node, nor
// at a socket of its node; the same packet sent by the peer node's own
// stack arrives (the frame is right, and the peers' VXLAN still flows).
// The cluster's containers reach each other across nodes; the guard
// netd keeps comes back after its nftables table is flushed or deleted,
// stays while netd is stopped, is not rewritten by the restarted netd,
// and goes with netd leave. Datapath under test: BERTH_TEST_DATAPATH.
func TestVXLANInjection(t *testing.T) { eachUnderlay(t, vxlanInjection) }

func vxlanInjection(t *testing.T, v6 bool) {
	ctx := context.Background()
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	etcd, err := tb.StartEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	opts := testbed.NetdOptions{Network: "pods", Etcd: []string{etcd.ClientURL}, Args: []string{"--mode", "vxlan"},
		EBPF: testenv.Datapath() == "ebpf"}
	vtep := vxlan.VTEPName(1)
	if v6 {
		opts.Args = append(opts.Args, "--network-cidr", "10.244.0.0/16,fd00:244::/56")
		vtep = vxlan.VTEPNameV6(1)
	}
	c := &cluster{t: t, tb: tb, net: opts.Network, netd: map[int]*testbed.Netd{}}
	for i := 1; i <= 2; i++ {
		o := opts
		if n := tb.Node(i); v6 {
			o.Args = append([]string{"--node-ip", n.IPv6.String() + "," + n.IP.String()}, o.Args...)
		}
		if c.netd[i], err = tb.StartNetd(ctx, tb.Node(i), o); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 2; i++ {
		if err := c.netd[i].WaitConverged(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	attacker, v1, v2 := c.run(1, "attacker"), c.run(1, "v1"), c.run(2, "v2")
	// Another network's container on node1, which the forged frames must not
	// reach either: berth-bridge isolates networks by default.
	other := bridgeContainer(t, tb.Node(1), bridgeNet{name: "local", bridge: "berthlocal", subnets: []string{"10.99.0.0/24"}}, "local")
	matrix(t, []*container{attacker, v1, v2}, 7000)

	node1, node2 := tb.Node(1), tb.Node(2)
	underlay := func(n *testbed.Node) netip.Addr {
		if v6 {
			return n.IPv6
		}
		return n.IP
	}
	tun1, tun2 := vtepOf(t, node1, vtep), vtepOf(t, node2, vtep)
	l1, err := c.netd[1].Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	forged := netip.MustParseAddr("1.2.3.4")
	// An address of node2's no lease names (a VIP such as kube-vip's):
	// its VTEP decapsulates what arrives there too.
	vip, vipLen := netip.MustParseAddr("192.168.50.200"), "/24"
	if v6 {
		vip, vipLen = netip.MustParseAddr("fd00:50::200"), "/64"
	}
	if out, err := node2.Run(ctx, "ip", "addr", "add", vip.String()+vipLen, "dev", node2.Iface, "nodad"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	cases := []struct {
		name   string
		to     *testbed.Node // whose underlay address the attacker sends to
		addr   netip.Addr    // another address of to's than its node address
		tun    tunnel        // whose VTEP is to decapsulate it
		peer   *testbed.Node // the node whose own VXLAN must still arrive
		target netip.Addr
		listen ns.NetNS
	}{
		{"into node1's VTEP, to the network's container on node1", node1, netip.Addr{}, tun1, node2, v1.IP, v1.ns},
		{"into node1's VTEP, to another network's container on node1", node1, netip.Addr{}, tun1, node2, other.IP, other.ns},
		{"into node1's VTEP, to node1's own socket", node1, netip.Addr{}, tun1, node2, l1.Subnet.Addr(), node1.NetNS.NetNS},
		{"through node1 into node2's VTEP, to the network's container on node2", node2, netip.Addr{}, tun2, node1, v2.IP, v2.ns},
		{"through node1 into node2's VTEP at a VIP of node2's", node2, vip, tun2, node1, v2.IP, v2.ns},
	}
	inject := func(t *testing.T) {
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				port := 9100 + i
				got := listenUDP(t, tc.listen, netip.AddrPortFrom(tc.target, uint16(port)))
				frame := vxlanFrame(tc.tun, forged, tc.target, uint16(port), "forged by "+attacker.Name)
				to := cmp.Or(tc.addr, underlay(tc.to))
				dst := netip.AddrPortFrom(to, uint16(tc.tun.port))
				for range 3 {
					if err := sendUDP(attacker.ns, dst, frame); err != nil {
						t.Fatalf("%s -> %s: %v", attacker, dst, err)
					}
				}
				select {
				case d := <-got:
					t.Fatalf("%s got %q from %s: the VXLAN %s sent to %s was decapsulated", tc.target, d.payload, d.from, attacker, dst)
				case <-time.After(time.Second):
				}
				// The peer node's own VXLAN, the same frame, arrives.
				if err := sendUDP(tc.peer.NetNS.NetNS, dst, vxlanFrame(tc.tun, forged, tc.target, uint16(port), "from "+tc.peer.Host)); err != nil {
					t.Fatalf("%s -> %s: %v", tc.peer.Host, dst, err)
				}
				select {
				case d := <-got:
					if !strings.HasPrefix(d.payload, "from ") {
						t.Errorf("%s got %q, want the peer's", tc.target, d.payload)
					}
				case <-time.After(3 * time.Second):
					t.Errorf("%s got nothing of the VXLAN %s sent to %s", tc.target, tc.peer.Host, dst)
				}
			})
		}
	}
	t.Run("injection", inject)

	t.Run("a flushed or deleted guard table is guarded again", func(t *testing.T) {
		for _, undo := range []func(*nftables.Conn){
			func(c *nftables.Conn) { c.FlushTable(guardTable) },
			func(c *nftables.Conn) { c.DelTable(guardTable) },
		} {
			if err := node1.NetNS.NetNS.Do(func(ns.NetNS) error {
				c, _ := nftables.New()
				undo(c)
				return c.Flush()
			}); err != nil {
				t.Fatal(err)
			}
			if err := eventually(10*time.Second, func() error {
				if got := guardRules(t, node1); !strings.HasSuffix(got, "dport 8472 drop") {
					return fmt.Errorf("node1 has no VTEP guard: %q", got)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			inject(t)
		}
	})
	matrix(t, []*container{attacker, v1, v2}, 7010)

	t.Run("kept while netd restarts, removed by netd leave", func(t *testing.T) {
		d := c.netd[1]
		before := guardRules(t, node1)
		if err := d.Stop(); err != nil {
			t.Fatal(err)
		}
		if got := guardRules(t, node1); got != before {
			t.Fatalf("the guard changed when netd stopped:\n%s\nthen\n%s", before, got)
		}
		inject(t)
		if err := d.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		if err := d.WaitConverged(ctx, 1); err != nil {
			t.Fatal(err)
		}
		if got := guardRules(t, node1); got != before {
			t.Errorf("the guard changed when netd restarted:\n%s\nthen\n%s", before, got)
		}
		log := d.Process().Log() // of every start, each after a "=== <time> <command>" line
		if i := strings.LastIndex(log, "=== "); strings.Contains(log[i+1:], "VTEP guard") {
			t.Errorf("the restarted netd rewrote the guard:\n%s", log[i:])
		}
		leave(t, d)
		if got := guardRules(t, node1); got != "" {
			t.Errorf("netd leave left the guard:\n%s", got)
		}
	})
}

var guardTable = &nftables.Table{Name: firewall.GuardTable, Family: nftables.TableFamilyINet}

// guardRules are the VTEP guard of network pods on node n as the kernel
// has it; "" when it has none.
func guardRules(t *testing.T, n *testbed.Node) string {
	t.Helper()
	var s firewall.VTEPGuardState
	if err := n.NetNS.NetNS.Do(func(ns.NetNS) (err error) { s, err = firewall.ReadVTEPGuard("pods"); return err }); err != nil {
		t.Fatalf("%s: %v", n.Host, err)
	}
	if !s.Exists() {
		return ""
	}
	return strings.Join(s.Rules, "\n")
}

// tunnel is what a VTEP decapsulates: its VNI, port and MAC.
type tunnel struct {
	vni, port int
	mac       net.HardwareAddr
}

// vtepOf reads node n's VTEP.
func vtepOf(t *testing.T, n *testbed.Node, name string) tunnel {
	t.Helper()
	var tun tunnel
	err := n.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		vx, ok := l.(*netlink.Vxlan)
		if !ok {
			return fmt.Errorf("%s is a %s link", name, l.Type())
		}
		tun = tunnel{vni: vx.VxlanId, port: vx.Port, mac: vx.HardwareAddr}
		return nil
	})
	if err != nil {
		t.Fatalf("VTEP %s of %s: %v", name, n.Host, err)
	}
	return tun
}

// vxlanFrame is the UDP payload of a VXLAN packet for tun: the VXLAN
// header, then an Ethernet frame to the VTEP's MAC holding IPv4/UDP from
// src to dst:port, without a UDP checksum (0: none, as IPv4 allows).
func vxlanFrame(tun tunnel, src, dst netip.Addr, port uint16, payload string) []byte {
	b := make([]byte, 8, 8+14+20+8+len(payload))
	b[0] = 0x08 // the VNI is valid
	binary.BigEndian.PutUint32(b[4:], uint32(tun.vni)<<8)
	b = append(b, tun.mac...)
	b = append(b, 0x02, 0, 0, 0, 0x66, 0x66, 0x08, 0x00) // a made-up source MAC, IPv4
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, 17 // version 4, 5 words; TTL; UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	copy(ip[12:], src.AsSlice())
	copy(ip[16:], dst.AsSlice())
	binary.BigEndian.PutUint16(ip[10:], testenv.Checksum(ip))
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], port)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	return append(append(append(b, ip...), udp...), payload...)
}

// sendUDP sends b from a UDP socket in netns n to dst.
func sendUDP(n ns.NetNS, dst netip.AddrPort, b []byte) error {
	return n.Do(func(ns.NetNS) error {
		conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write(b)
		return err
	})
}

type datagram struct {
	payload string
	from    netip.AddrPort
}

// listenUDP passes on what a UDP socket on addr in netns n receives,
// until the test ends.
func listenUDP(t *testing.T, n ns.NetNS, addr netip.AddrPort) <-chan datagram {
	t.Helper()
	var conn *net.UDPConn
	err := n.Do(func(ns.NetNS) (err error) {
		conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	got := make(chan datagram, 16)
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := conn.ReadFromUDPAddrPort(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err == nil {
				got <- datagram{string(buf[:k]), from}
			}
		}
	}()
	return got
}
