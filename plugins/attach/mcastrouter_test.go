package attach_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/testenv"
)

// A container is no multicast router either: a general query (IGMP or
// MLD, any version) from a container must not make its bridge port a
// multicast router port, which the bridge's snooping hands the traffic of
// every group. The victim joins a group, the attacker queries, a third
// container sends to the group: the victim gets it, the attacker not.
//
// The attacker's query is also what makes the bridge filter at all: a
// bridge that has seen no querier floods multicast to every port (berth's
// bridge runs none of its own), so before the query any container gets
// every group's traffic; once a querier is seen, only members and router
// ports do.
func TestContainerIsNoMulticastRouter(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ipv6  bool
		query func(src netip.Addr) []byte // an Ethernet payload to the all-hosts group
	}{
		{"IGMPv2 general query", false, func(src netip.Addr) []byte { return igmpQuery(src, false) }},
		{"IGMPv3 general query", false, func(src netip.Addr) []byte { return igmpQuery(src, true) }},
		{"MLDv1 general query", true, func(src netip.Addr) []byte { return mldQuery(src, false) }},
		{"MLDv2 general query", true, func(src netip.Addr) []byte { return mldQuery(src, true) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.ipv6 && testenv.Datapath() == "ebpf" {
				t.Skip("the eBPF datapath is IPv4 only")
			}
			n := newNode(t)
			subnets := []string{"10.96.0.0/24"}
			if n.bpffs == "" {
				subnets = append(subnets, "fd00:96::/64")
			}
			rt := testenv.NewRuntime(t, n.ns, n.conflistRanges("mcast", "berth0", subnets, n.datapath()))
			att, vic, snd := newGuardPeer(t, rt, "attacker"), newGuardPeer(t, rt, "victim"), newGuardPeer(t, rt, "sender")
			group, from, typ := netip.MustParseAddr("239.1.2.3"), snd.ip4, uint16(unix.ETH_P_IP)
			querier, allHosts := att.ip4, net.HardwareAddr{0x01, 0, 0x5e, 0, 0, 1}
			if tc.ipv6 {
				group, from, typ = netip.MustParseAddr("ff05::1:3"), snd.ip6, unix.ETH_P_IPV6
				querier, allHosts = linkLocal(t, att.a.Netns), net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
			}
			joinGroup(t, vic.a.Netns, group)
			waitForMember(t, n.ns, group, vic.hostVeth)

			sendFrame(t, att.a.Netns, ethFrame(allHosts, att.mac, typ, tc.query(querier)))
			// The query's maximum response time (a second) is the bridge's
			// wait before it counts the querier and filters.
			time.Sleep(1500 * time.Millisecond)

			rxAtt, _ := rawSocket(t, att.a.Netns)
			rxVic, _ := rawSocket(t, vic.a.Netns)
			var markers []string
			for i := range 3 {
				m := fmt.Sprintf("m-group-%d;", i)
				markers = append(markers, m)
				payload := udp4(from, group, m)
				if tc.ipv6 {
					payload = udp6(from, group, m)
				}
				sendFrame(t, snd.a.Netns, ethFrame(groupMAC(group), snd.mac, typ, payload))
			}
			atAttacker := received(rxAtt, 500*time.Millisecond, markers)
			atVictim := received(rxVic, 100*time.Millisecond, markers)
			if len(atAttacker) > 0 {
				t.Errorf("%d of %d frames to %s reached the attacker (port %s), which only sent a query (the bridge's %s)",
					len(atAttacker), len(markers), group, att.hostVeth, routerPorts(t, n.ns))
			}
			if len(atVictim) != len(markers) {
				t.Errorf("%d of %d frames to %s reached the victim, a member", len(atVictim), len(markers), group)
			}
		})
	}
}

// CHECK finds a container's bridge port made a multicast router port
// again by hand, temporarily (1) or for good (2), and only that one: the
// containers are ADDed at once, as a runtime starting a pod's, and
// CHECKed at once.
func TestCheckMulticastRouterPort(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("mrcheck", "berth0", "10.97.0.0/24", n.datapath()))
	cs, veths := make([]*testenv.Attachment, 4), make([]string, 4)
	for i := range cs {
		cs[i] = container(t, fmt.Sprintf("c%d", i))
	}
	noErrors(t, "ADD", parallel(len(cs), func(i int) error {
		res, err := rt.Add(cs[i])
		if err == nil {
			veths[i] = res.Interfaces[1].Name
		}
		return err
	}))
	t.Cleanup(func() { parallel(len(cs), func(i int) error { return rt.Del(cs[i]) }) })
	noErrors(t, "CHECK", parallel(len(cs), func(i int) error { return rt.Check(cs[i]) }))
	for _, mode := range []string{"1", "2"} {
		mustRun(t, n.ns, "bridge", "link", "set", "dev", veths[0], "mcast_router", mode)
		errs := parallel(len(cs), func(i int) error { return rt.Check(cs[i]) })
		var ce *types.Error
		if !errors.As(errs[0], &ce) || ce.Code != 104 || !strings.Contains(ce.Details, veths[0]) || !strings.Contains(ce.Details, "mcast_router 0") {
			t.Errorf("CHECK with mcast_router %s on %s: %v, want code 104 naming the veth and the fix", mode, veths[0], errs[0])
		}
		noErrors(t, "CHECK of the other containers", errs[1:])
	}
	mustRun(t, n.ns, "bridge", "link", "set", "dev", veths[0], "mcast_router", "0")
	if err := rt.Check(cs[0]); err != nil {
		t.Errorf("CHECK with mcast_router 0 again: %v", err)
	}
}

// igmpQuery is an IPv4 IGMP general query from src to 224.0.0.1 (IGMPv2,
// or with v3 IGMPv3), a second's maximum response time, TTL 1 and the
// router alert option as a querier sends it.
func igmpQuery(src netip.Addr, v3 bool) []byte {
	q := []byte{0x11, 10, 0, 0, 0, 0, 0, 0}
	if v3 {
		q = append(q, 2, 125, 0, 0) // QRV 2, QQIC 125s, no sources
	}
	binary.BigEndian.PutUint16(q[2:], checksum(q))
	h := make([]byte, 24)
	h[0], h[8], h[9] = 0x46, 1, unix.IPPROTO_IGMP
	binary.BigEndian.PutUint16(h[2:], uint16(len(h)+len(q)))
	copy(h[12:], src.AsSlice())
	copy(h[16:], []byte{224, 0, 0, 1})
	copy(h[20:], []byte{0x94, 4, 0, 0}) // router alert
	binary.BigEndian.PutUint16(h[10:], checksum(h))
	return append(h, q...)
}

// mldQuery is an MLD general query from src (link-local, as MLD wants)
// to ff02::1 (MLDv1, or with v2 MLDv2), a second's maximum response
// delay, hop limit 1 and the router alert option.
func mldQuery(src netip.Addr, v2 bool) []byte {
	all := netip.MustParseAddr("ff02::1")
	q := make([]byte, 24)
	q[0] = 130
	binary.BigEndian.PutUint16(q[4:], 1000)
	if v2 {
		q = append(q, 2, 125, 0, 0)
	}
	pseudo := append(append(append([]byte{}, src.AsSlice()...), all.AsSlice()...), 0, 0, 0, byte(len(q)), 0, 0, 0, unix.IPPROTO_ICMPV6)
	binary.BigEndian.PutUint16(q[2:], checksum(append(pseudo, q...)))
	hbh := []byte{unix.IPPROTO_ICMPV6, 0, 5, 2, 0, 0, 1, 0} // router alert (MLD), PadN
	p := ip6(src, all, unix.IPPROTO_HOPOPTS, append(hbh, q...))
	p[7] = 1 // hop limit
	return p
}

// groupMAC is the Ethernet address group is sent to.
func groupMAC(group netip.Addr) net.HardwareAddr {
	b := group.AsSlice()
	if group.Is4() {
		return net.HardwareAddr{0x01, 0, 0x5e, b[1] & 0x7f, b[2], b[3]}
	}
	return net.HardwareAddr{0x33, 0x33, b[12], b[13], b[14], b[15]}
}

// joinGroup joins group on eth0 in n, until the test ends: the kernel
// sends the membership report the bridge learns the member from.
func joinGroup(t *testing.T, n ns.NetNS, group netip.Addr) {
	t.Helper()
	var fd int
	err := n.Do(func(ns.NetNS) error {
		eth0, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		if group.Is4() {
			if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
				return err
			}
			return unix.SetsockoptIPMreqn(fd, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP,
				&unix.IPMreqn{Multiaddr: group.As4(), Ifindex: int32(eth0.Index)})
		}
		if fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		return unix.SetsockoptIPv6Mreq(fd, unix.IPPROTO_IPV6, unix.IPV6_JOIN_GROUP,
			&unix.IPv6Mreq{Multiaddr: group.As16(), Interface: uint32(eth0.Index)})
	})
	if err != nil {
		t.Fatalf("joining %s: %v", group, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
}

// waitForMember waits until the bridge in node has port as a member of
// group.
func waitForMember(t *testing.T, node ns.NetNS, group netip.Addr, port string) {
	t.Helper()
	var out []byte
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		out, _ = testenv.InNS(node, "bridge", "mdb", "show", "dev", "berth0")
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) >= 6 && f[3] == port && f[5] == group.String() {
				return
			}
		}
	}
	t.Fatalf("the bridge did not learn %s as a member of %s: %s", port, group, out)
}

// routerPorts is the bridge's multicast router ports, for messages.
func routerPorts(t *testing.T, node ns.NetNS) string {
	out, _ := testenv.InNS(node, "bridge", "-d", "mdb", "show", "dev", "berth0")
	var ports []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "router port") {
			ports = append(ports, strings.TrimSpace(l))
		}
	}
	return strings.Join(ports, "; ")
}

// linkLocal is eth0's link-local address in n.
func linkLocal(t *testing.T, n ns.NetNS) netip.Addr {
	t.Helper()
	var ll netip.Addr
	err := n.Do(func(ns.NetNS) error {
		eth0, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := eth0.Addrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().IsLinkLocalUnicast() {
				ll = p.Addr()
			}
		}
		return nil
	})
	if err != nil || !ll.IsValid() {
		t.Fatalf("eth0's link-local address: %v", err)
	}
	return ll
}
