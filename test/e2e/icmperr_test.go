package e2e_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/testbed"
)

// ICMP errors about the containers' flows reach the sender on the
// datapath under test (BERTH_TEST_DATAPATH), with a rule on every node
// that drops what conntrack calls invalid, as kube-proxy's does. On the
// iptables datapath conntrack tracks the flows and the errors are
// RELATED; on the eBPF datapath the flows skip conntrack, and the
// programs carry the errors about them as they carry the flows
// (icmp_error in fastpath.c): through the kernel's path conntrack would
// call them invalid, and a closed port would time out instead of
// refusing, traceroute show `*` past the first hop, and a smaller path
// MTU stall TCP.
func TestICMPErrors(t *testing.T) {
	for _, mode := range []string{"vxlan", "hostgw"} {
		t.Run(mode, func(t *testing.T) { icmpErrors(t, mode) })
	}
}

func icmpErrors(t *testing.T, mode string) {
	ctx := context.Background()
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	etcd, err := tb.StartEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := startNetwork(t, tb, testbed.NetdOptions{Network: "pods", Etcd: []string{etcd.ClientURL},
		Args: []string{"--mode", mode}, EBPF: testenv.Datapath() == "ebpf"}, 1, 2)
	n1a, n1b, n2a := c.run(1, "n1a"), c.run(1, "n1b"), c.run(2, "n2a")
	dropInvalid(t, tb.Node(1), tb.Node(2))

	t.Run("UDP to a closed port is refused", func(t *testing.T) {
		for _, p := range [][2]*container{{n1a, n2a}, {n2a, n1a}, {n1a, n1b}, {n1b, n1a}} {
			if err := udpToClosed(p[0], p[1].IP.String()+":4444"); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("%s -> %s:4444 (closed): %v, want connection refused (ICMP port unreachable)", p[0], p[1], err)
			}
		}
	})

	t.Run("the error about a translated flow is translated back", func(t *testing.T) {
		// A service address node2 translates to n1a's closed port, as
		// kube-proxy would. n1a's port unreachable is about n2a -> n1a,
		// which node1's conntrack never saw but node2's translated: only
		// node2's kernel can turn it into one about the service address,
		// which n2a's socket is connected to.
		const vip = "10.96.0.20"
		rule := []string{"PREROUTING", "-d", vip + "/32", "-p", "udp", "--dport", "53",
			"-j", "DNAT", "--to-destination", n1a.IP.String() + ":4444"}
		n := tb.Node(2)
		if out, err := n.Run(ctx, "iptables", append([]string{"-t", "nat", "-I"}, rule...)...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		defer n.Run(ctx, "iptables", append([]string{"-t", "nat", "-D"}, rule...)...)
		if err := udpToClosed(n2a, vip+":53"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s -> service %s:53 -> %s:4444 (closed): %v, want connection refused", n2a, vip, n1a, err)
		}
	})

	t.Run("a TTL run out is reported by the node where it ran out", func(t *testing.T) {
		// traceroute's probes: with TTL 1 node1 answers (the kernel's
		// path, as always), with TTL 2 node2, which forwards the probe
		// to n2a with TTL 3.
		for ttl := 1; ttl <= 2; ttl++ {
			typ, from, err := udpProbe(n1a, n2a.IP.String()+":33434", ttl)
			if err != nil || typ != 11 {
				t.Errorf("%s -> %s with TTL %d: ICMP type %d from %v (%v), want time exceeded (11)", n1a, n2a, ttl, typ, from, err)
				continue
			}
			t.Logf("TTL %d: time exceeded from %v", ttl, from)
		}
	})

	t.Run("fragmentation needed lowers the path MTU", func(t *testing.T) {
		// What a router with a smaller MTU (a container routing for
		// others, a link of the underlay) sends back: n2a, the flow's
		// destination, sends it here with a raw socket.
		for _, p := range [][2]*container{{n1a, n2a}, {n1a, n1b}} {
			if err := fragNeeded(p[0], p[1], 1200); err != nil {
				t.Errorf("%s -> %s: %v", p[0], p[1], err)
			}
		}
	})
}

// udpToClosed sends datagrams from c to addr, where nothing listens, and
// returns what reading the answer gave: ECONNREFUSED when the ICMP port
// unreachable came back.
func udpToClosed(c *container, addr string) error {
	var got error
	err := c.ns.Do(func(ns.NetNS) error {
		conn, err := net.Dial("udp4", addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		for range 3 {
			conn.Write([]byte("x"))
			conn.SetReadDeadline(time.Now().Add(time.Second))
			_, got = conn.Read(make([]byte, 8))
			if errors.Is(got, syscall.ECONNREFUSED) {
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return got
}

// udpProbe sends a datagram with the given TTL from c to addr, as
// traceroute does, and returns the ICMP error that came back for it (its
// type and the address that sent it), from the socket's error queue
// (IP_RECVERR).
func udpProbe(c *container, addr string, ttl int) (typ uint8, from netip.Addr, err error) {
	dst, err := netip.ParseAddrPort(addr)
	if err != nil {
		return 0, from, err
	}
	err = c.ns.Do(func(ns.NetNS) error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_IP, syscall.IP_TTL, ttl); err != nil {
			return err
		}
		if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_IP, syscall.IP_RECVERR, 1); err != nil {
			return err
		}
		if err := syscall.Connect(fd, &syscall.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}); err != nil {
			return err
		}
		buf, oob := make([]byte, 64), make([]byte, 256)
		for try := 0; try < 3; try++ {
			if _, err := syscall.Write(fd, []byte("probe")); err != nil && !errors.Is(err, syscall.EHOSTUNREACH) {
				return err
			}
			for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				_, oobn, _, _, err := syscall.Recvmsg(fd, buf, oob, syscall.MSG_ERRQUEUE|syscall.MSG_DONTWAIT)
				if errors.Is(err, syscall.EAGAIN) {
					continue
				}
				if err != nil {
					return err
				}
				msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
				if err != nil {
					return err
				}
				for _, m := range msgs {
					// struct sock_extended_err (16 bytes), then the
					// offender's sockaddr_in.
					if m.Header.Level != syscall.IPPROTO_IP || m.Header.Type != syscall.IP_RECVERR || len(m.Data) < 16+8 {
						continue
					}
					if m.Data[4] != 2 { // SO_EE_ORIGIN_ICMP
						continue
					}
					typ = m.Data[5]
					from = netip.AddrFrom4([4]byte(m.Data[16+4 : 16+8]))
					return nil
				}
			}
		}
		return errors.New("no ICMP error came back")
	})
	return typ, from, err
}

// fragNeeded sends a datagram with DF from a to b, then from b an ICMP
// fragmentation needed (next-hop MTU mtu) about it, as a router with a
// smaller MTU on the way would, and checks that a's route to b learned
// the MTU.
func fragNeeded(a, b *container, mtu int) error {
	var sport int
	var quote []byte
	// The socket stays open: the kernel updates the path MTU for the
	// socket the error is about (udp_err), and finds none once it closed.
	fd := -1
	defer func() {
		if fd >= 0 {
			syscall.Close(fd)
		}
	}()
	err := a.ns.Do(func(ns.NetNS) error {
		var err error
		fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER, syscall.IP_PMTUDISC_DO); err != nil {
			return err
		}
		if err := syscall.Connect(fd, &syscall.SockaddrInet4{Port: 4445, Addr: b.IP.As4()}); err != nil {
			return err
		}
		sa, err := syscall.Getsockname(fd)
		if err != nil {
			return err
		}
		sport = sa.(*syscall.SockaddrInet4).Port
		payload := make([]byte, 1400)
		if _, err := syscall.Write(fd, payload); err != nil {
			return err
		}
		// The packet's IPv4 header and the first 8 bytes of its UDP
		// header, as the router quotes them.
		quote = make([]byte, 28)
		quote[0], quote[8], quote[9] = 0x45, 63, syscall.IPPROTO_UDP
		binary.BigEndian.PutUint16(quote[2:], uint16(20+8+len(payload)))
		binary.BigEndian.PutUint16(quote[6:], 0x4000) // DF
		src := a.IP.As4()
		dst := b.IP.As4()
		copy(quote[12:], src[:])
		copy(quote[16:], dst[:])
		binary.BigEndian.PutUint16(quote[10:], testenv.Checksum(quote[:20]))
		binary.BigEndian.PutUint16(quote[20:], uint16(sport))
		binary.BigEndian.PutUint16(quote[22:], 4445)
		binary.BigEndian.PutUint16(quote[24:], uint16(8+len(payload)))
		return nil
	})
	if err != nil {
		return err
	}
	icmp := make([]byte, 8, 8+len(quote))
	icmp[0], icmp[1] = 3, 4 // destination unreachable, fragmentation needed
	binary.BigEndian.PutUint16(icmp[6:], uint16(mtu))
	icmp = append(icmp, quote...)
	binary.BigEndian.PutUint16(icmp[2:], testenv.Checksum(icmp))
	var route string
	for try := 0; try < 3; try++ {
		err = b.ns.Do(func(ns.NetNS) error {
			fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.IPPROTO_ICMP)
			if err != nil {
				return err
			}
			defer syscall.Close(fd)
			return syscall.Sendto(fd, icmp, 0, &syscall.SockaddrInet4{Addr: a.IP.As4()})
		})
		if err != nil {
			return err
		}
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			route, err = a.in("ip", "-4", "route", "get", b.IP.String())
			if err == nil && strings.Contains(route, fmt.Sprintf(" mtu %d", mtu)) {
				// Leave the next test the MTU it expects.
				a.in("ip", "route", "flush", "cache")
				return nil
			}
		}
	}
	return fmt.Errorf("the route did not learn MTU %d from the ICMP error: %q (%v)", mtu, route, err)
}

// TestICMPErrorsFromARouter: in bgp mode across two segments, a router
// of the underlay between the nodes with a smaller MTU answers the
// containers' large packets with fragmentation needed, from its own
// address (outside the network, and no node's). With an INVALID drop in
// FORWARD on the nodes, the sender must get it (on the eBPF datapath the
// programs deliver it; conntrack never saw the flow), or its TCP stalls
// in a PMTU black hole. Datapath under test: BERTH_TEST_DATAPATH.
func TestICMPErrorsFromARouter(t *testing.T) {
	ctx := context.Background()
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2, Segment2: []int{2}})
	etcd, err := tb.StartEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var peers []testbed.BIRDPeer
	for _, n := range tb.Nodes {
		peers = append(peers, testbed.BIRDPeer{Name: n.Host, IP: n.IP.String(), ASN: uint32(65000 + n.Index)})
	}
	if _, err := tb.StartBIRD(ctx, testbed.BIRDOptions{ASN: 64600, Peers: peers}); err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, tb: tb, net: "pods", netd: map[int]*testbed.Netd{}}
	for i := 1; i <= 2; i++ {
		n := tb.Node(i)
		router := testbed.RouterIP1
		if n.Segment == 2 {
			router = testbed.RouterIP2
		}
		d, err := tb.StartNetd(ctx, n, testbed.NetdOptions{Network: "pods", Etcd: []string{etcd.ClientURL},
			EBPF: testenv.Datapath() == "ebpf",
			Args: []string{"--mode", "bgp", "--bgp-node-mesh=false", "--bgp-asn", fmt.Sprint(65000 + n.Index),
				"--bgp-peers", router.String() + ":64600"}})
		if err != nil {
			t.Fatal(err)
		}
		c.netd[i] = d
	}
	for i := 1; i <= 2; i++ {
		if err := c.netd[i].WaitConverged(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	n1a, n2a := c.run(1, "n1a"), c.run(2, "n2a")
	dropInvalid(t, tb.Node(1), tb.Node(2))
	echoCount(t, n2a.ns, n2a.IP.String()+":7001")
	// The routes through the router first, at full size.
	const size = 1 << 20
	if got, err := send(n1a.ns, n2a.IP.String()+":7001", size); err != nil || got != fmt.Sprint(size) {
		t.Fatalf("bulk TCP %s -> %s: server read %q of %d bytes (%v)", n1a, n2a, got, size, err)
	}
	if out, err := tb.Router.Run(ctx, "ip", "link", "set", "eth1", "mtu", "1300"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got, err := send(n1a.ns, n2a.IP.String()+":7001", size); err != nil || got != fmt.Sprint(size) {
		t.Errorf("bulk TCP %s -> %s past a 1300-byte link: server read %q of %d bytes (%v), want all (fragmentation needed from the router)",
			n1a, n2a, got, size, err)
	}
	if route, err := n1a.in("ip", "-4", "route", "get", n2a.IP.String()); !strings.Contains(route, " mtu 1300") {
		t.Errorf("%s's route to %s did not learn the router's MTU: %q (%v)", n1a, n2a, route, err)
	}
}

// dropInvalid drops what conntrack calls invalid in the nodes' FORWARD
// chain until the test ends, as kube-proxy does.
func dropInvalid(t *testing.T, nodes ...*testbed.Node) {
	t.Helper()
	drop := []string{"FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"}
	for _, n := range nodes {
		if out, err := n.Run(context.Background(), "iptables", append([]string{"-I"}, drop...)...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		t.Cleanup(func() { n.Run(context.Background(), "iptables", append([]string{"-D"}, drop...)...) })
	}
}
