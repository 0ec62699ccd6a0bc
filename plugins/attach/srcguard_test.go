package attach_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/testenv"
)

// The anti-spoofing of a container on the bridge, on both datapaths: raw
// frames with each forged field, sent from an attacker container's eth0
// (AF_PACKET), must not reach the victim container, change the node's or
// the victim's neighbour entries or the bridge's FDB; the attacker's own
// traffic still works. (Bridged traffic never meets rp_filter or iptables:
// before the guard every forged source below reached the victim.)

// guardPeer is a container of the test with its addresses.
type guardPeer struct {
	a        *testenv.Attachment
	ip4, ip6 netip.Addr
	mac      net.HardwareAddr
	hostVeth string
}

func newGuardPeer(t *testing.T, rt *testenv.Runtime, id string) *guardPeer {
	t.Helper()
	a := container(t, id)
	res, err := rt.Add(a)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Del(a) })
	p := &guardPeer{a: a, hostVeth: res.Interfaces[1].Name}
	p.ip4, _ = netip.ParseAddr(addrOf(res, false))
	p.ip6, _ = netip.ParseAddr(addrOf(res, true))
	p.mac, _ = net.ParseMAC(containerIf(res).Mac)
	return p
}

func containerIf(res *current.Result) *current.Interface {
	for _, i := range res.Interfaces {
		if i.Sandbox != "" {
			return i
		}
	}
	return nil
}

// rawSocket opens an AF_PACKET socket on eth0 in n.
func rawSocket(t *testing.T, n ns.NetNS) (fd, ifindex int) {
	t.Helper()
	err := n.Do(func(ns.NetNS) error {
		l, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		ifindex = l.Index
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, ifindex
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// sendFrame sends frame out of eth0 in n as it is.
func sendFrame(t *testing.T, n ns.NetNS, frame []byte) {
	t.Helper()
	fd, ifindex := rawSocket(t, n)
	if err := unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6}); err != nil {
		t.Fatalf("sending a raw frame: %v", err)
	}
}

// received collects, from fd, the markers of frames that arrive within
// wait.
func received(fd int, wait time.Duration, markers []string) map[string]bool {
	got := map[string]bool{}
	deadline := time.Now().Add(wait)
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		tv := unix.NsecToTimeval(int64(time.Until(deadline)) + 1000)
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue
		}
		for _, m := range markers {
			if bytes.Contains(buf[:n], []byte(m)) {
				got[m] = true
			}
		}
	}
	return got
}

func ethFrame(dst, src net.HardwareAddr, typ uint16, payload []byte) []byte {
	f := append(append(append([]byte{}, dst...), src...), byte(typ>>8), byte(typ))
	return append(f, payload...)
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// udp4 is an IPv4 UDP packet from src to dst carrying marker.
func udp4(src, dst netip.Addr, marker string) []byte {
	u := make([]byte, 8, 8+len(marker))
	binary.BigEndian.PutUint16(u[0:], 40000)
	binary.BigEndian.PutUint16(u[2:], 9)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(marker)))
	u = append(u, marker...)
	h := make([]byte, 20)
	h[0], h[8], h[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(u)))
	copy(h[12:], src.AsSlice())
	copy(h[16:], dst.AsSlice())
	binary.BigEndian.PutUint16(h[10:], checksum(h))
	return append(h, u...)
}

// udp6 is an IPv6 UDP packet from src to dst carrying marker (the UDP
// checksum left 0: only AF_PACKET sockets read it).
func udp6(src, dst netip.Addr, marker string) []byte {
	u := make([]byte, 8, 8+len(marker))
	binary.BigEndian.PutUint16(u[0:], 40000)
	binary.BigEndian.PutUint16(u[2:], 9)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(marker)))
	return ip6(src, dst, unix.IPPROTO_UDP, append(u, marker...))
}

func ip6(src, dst netip.Addr, next byte, payload []byte) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h[6], h[7] = next, 255
	copy(h[8:], src.AsSlice())
	copy(h[24:], dst.AsSlice())
	return append(h, payload...)
}

// na6 is an unsolicited neighbour advertisement from src that target is
// at mac (override set), as the node takes it.
func na6(src, target netip.Addr, mac net.HardwareAddr) []byte {
	all := netip.MustParseAddr("ff02::1")
	m := []byte{136, 0, 0, 0, 0x20, 0, 0, 0}
	m = append(m, target.AsSlice()...)
	m = append(append(m, 2, 1), mac...) // target link-layer address option
	pseudo := append(append(append([]byte{}, src.AsSlice()...), all.AsSlice()...), 0, 0, 0, byte(len(m)), 0, 0, 0, 58)
	binary.BigEndian.PutUint16(m[2:], checksum(append(pseudo, m...)))
	return ip6(src, all, 58, m)
}

// arpReply says spa is at sha, to tpa at tha.
func arpReply(sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	b := []byte{0, 1, 8, 0, 6, 4, 0, 2}
	b = append(append(b, sha...), spa.AsSlice()...)
	return append(append(b, tha...), tpa.AsSlice()...)
}

// neighMAC is the MAC n's neighbour table has for ip ("" if none).
func neighMAC(t *testing.T, n ns.NetNS, ip netip.Addr) string {
	out, _ := testenv.InNS(n, "ip", "neigh", "show", ip.String())
	f := strings.Fields(string(out))
	for i := range f {
		if f[i] == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

// fdbPort is the bridge port the node's FDB has mac on ("" if none).
func fdbPort(t *testing.T, n ns.NetNS, mac net.HardwareAddr) string {
	out, _ := testenv.InNS(n, "bridge", "fdb", "show", "br", "berth0")
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] == mac.String() && f[1] == "dev" {
			return f[2]
		}
	}
	return ""
}

func TestSourceGuard(t *testing.T) {
	n := newNode(t)
	subnets := []string{"10.94.0.0/24", "fd00:95::/64"}
	dual := n.bpffs == "" // the eBPF datapath is IPv4 only
	if !dual {
		subnets = subnets[:1]
	}
	rt := testenv.NewRuntime(t, n.ns, n.conflistRanges("guard", "berth0", subnets, n.datapath()))
	att, vic, nbr := newGuardPeer(t, rt, "attacker"), newGuardPeer(t, rt, "victim"), newGuardPeer(t, rt, "neighbour")
	gw := netip.MustParseAddr("10.94.0.1")
	var brMAC net.HardwareAddr
	if err := n.ns.Do(func(ns.NetNS) error {
		br, err := net.InterfaceByName("berth0")
		if err == nil {
			brMAC = br.HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// Without a lock time the node takes any ARP reply at once: an attack
	// that got through shows, whatever the timing.
	mustRun(t, n.ns, "sysctl", "-qw", "net.ipv4.neigh.berth0.locktime=0")
	mustRun(t, vic.a.Netns, "sysctl", "-qw", "net.ipv4.neigh.eth0.locktime=0")
	// Everyone knows everyone: the entries the forged ARP would rewrite,
	// and the FDB entries the forged MACs would move.
	for _, p := range []*guardPeer{att, vic, nbr} {
		if err := testenv.Ping(n.ns, p.ip4.String()); err != nil {
			t.Fatal(err)
		}
		if err := testenv.Ping(p.a.Netns, gw.String()); err != nil {
			t.Fatal(err)
		}
	}

	rx, _ := rawSocket(t, vic.a.Netns)
	type frame struct {
		name  string
		frame []byte
		legit bool // the attacker's own traffic: must arrive
	}
	frames := []frame{ // the forged MACs first: see below
		{"neighbour's MAC", ethFrame(vic.mac, nbr.mac, unix.ETH_P_IP, udp4(att.ip4, vic.ip4, "m-nbrmac")), false},
		// To the node: on the eBPF datapath too, through the bridge.
		{"neighbour's MAC, to the node", ethFrame(brMAC, nbr.mac, unix.ETH_P_IP, udp4(att.ip4, gw, "m-nbrmacgw")), false},
		{"own IPv4", ethFrame(vic.mac, att.mac, unix.ETH_P_IP, udp4(att.ip4, vic.ip4, "m-own4")), true},
		{"neighbour's IPv4", ethFrame(vic.mac, att.mac, unix.ETH_P_IP, udp4(nbr.ip4, vic.ip4, "m-nbr4")), false},
		{"gateway's IPv4", ethFrame(vic.mac, att.mac, unix.ETH_P_IP, udp4(gw, vic.ip4, "m-gw4")), false},
		{"outside IPv4", ethFrame(vic.mac, att.mac, unix.ETH_P_IP, udp4(netip.MustParseAddr("1.2.3.4"), vic.ip4, "m-out4")), false},
		{"127.0.0.1", ethFrame(vic.mac, att.mac, unix.ETH_P_IP, udp4(netip.MustParseAddr("127.0.0.1"), vic.ip4, "m-lo4")), false},
	}
	if dual {
		frames = append(frames,
			frame{"own IPv6", ethFrame(vic.mac, att.mac, unix.ETH_P_IPV6, udp6(att.ip6, vic.ip6, "m-own6")), true},
			frame{"neighbour's IPv6", ethFrame(vic.mac, att.mac, unix.ETH_P_IPV6, udp6(nbr.ip6, vic.ip6, "m-nbr6")), false},
			frame{"made-up IPv6", ethFrame(vic.mac, att.mac, unix.ETH_P_IPV6, udp6(netip.MustParseAddr("2001:db8::66"), vic.ip6, "m-made6")), false})
	}
	// Each frame's payload ends in its marker.
	var markers []string
	for _, f := range frames {
		i := bytes.Index(f.frame, []byte("m-"))
		markers = append(markers, string(f.frame[i:]))
	}
	for i, f := range frames {
		sendFrame(t, att.a.Netns, f.frame)
		// Checked at once, before the frames from the neighbour's address
		// make the victim ask for its MAC: the neighbour's answer would
		// move the entry back.
		if i == 1 {
			if port := fdbPort(t, n.ns, nbr.mac); port != nbr.hostVeth {
				t.Errorf("neighbour's MAC: the bridge's FDB has it on %q, want %s", port, nbr.hostVeth)
			}
		}
	}
	got := received(rx, 500*time.Millisecond, markers)
	for i, f := range frames {
		if got[markers[i]] != f.legit {
			t.Errorf("%s: arrived at the victim %v, want %v", f.name, got[markers[i]], f.legit)
		}
	}

	// Forged ARP: to the node (the neighbour's IPv4 at the attacker's
	// MAC; the attacker's own IPv4 at the neighbour's MAC), to the victim
	// (the gateway at the attacker's MAC).
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	sendFrame(t, att.a.Netns, ethFrame(brMAC, att.mac, unix.ETH_P_ARP, arpReply(att.mac, nbr.ip4, brMAC, gw)))
	sendFrame(t, att.a.Netns, ethFrame(bcast, att.mac, unix.ETH_P_ARP, arpReply(nbr.mac, att.ip4, bcast, att.ip4)))
	sendFrame(t, att.a.Netns, ethFrame(vic.mac, att.mac, unix.ETH_P_ARP, arpReply(att.mac, gw, vic.mac, vic.ip4)))
	if dual {
		// The neighbour's IPv6 claimed by an advertisement from the
		// attacker's own address: the node must have the entry to rewrite.
		if err := testenv.Ping(n.ns, nbr.ip6.String()); err != nil {
			t.Fatal(err)
		}
		sendFrame(t, att.a.Netns, ethFrame(net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, att.mac, unix.ETH_P_IPV6, na6(att.ip6, nbr.ip6, att.mac)))
		// The attacker's own IPv6 at the neighbour's MAC, in the
		// advertisement's link-layer address option, which the node
		// takes rather than the frame's source.
		if err := testenv.Ping(n.ns, att.ip6.String()); err != nil {
			t.Fatal(err)
		}
		sendFrame(t, att.a.Netns, ethFrame(net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, att.mac, unix.ETH_P_IPV6, na6(att.ip6, att.ip6, nbr.mac)))
	}
	time.Sleep(200 * time.Millisecond)
	for _, c := range []struct {
		what string
		n    ns.NetNS
		ip   netip.Addr
		want net.HardwareAddr
	}{
		{"ARP reply claiming the neighbour's IPv4: the node's entry", n.ns, nbr.ip4, nbr.mac},
		{"ARP with a forged sender MAC: the node's entry of the attacker", n.ns, att.ip4, att.mac},
		{"ARP reply claiming the gateway: the victim's entry", vic.a.Netns, gw, brMAC},
	} {
		if mac := neighMAC(t, c.n, c.ip); mac != c.want.String() {
			t.Errorf("%s for %s is %q, want %s", c.what, c.ip, mac, c.want)
		}
	}
	if dual {
		if mac := neighMAC(t, n.ns, nbr.ip6); mac != nbr.mac.String() {
			t.Errorf("neighbour advertisement claiming the neighbour's IPv6: the node's entry for %s is %q, want %s", nbr.ip6, mac, nbr.mac)
		}
		if mac := neighMAC(t, n.ns, att.ip6); mac != att.mac.String() {
			t.Errorf("neighbour advertisement of the attacker's IPv6 at the neighbour's MAC: the node's entry for %s is %q, want %s", att.ip6, mac, att.mac)
		}
	}

	// The attacker's own traffic, through the kernel's stack: ARP, ping,
	// and in IPv6 neighbour discovery and duplicate address detection
	// (from ::), which finds the neighbour's address taken.
	if err := testenv.Ping(att.a.Netns, vic.ip4.String()); err != nil {
		t.Errorf("the attacker's own IPv4: %v", err)
	}
	if dual {
		if err := testenv.Ping(att.a.Netns, vic.ip6.String()); err != nil {
			t.Errorf("the attacker's own IPv6: %v", err)
		}
		// berth turns DAD off in the container (its addresses are IPAM's).
		mustRun(t, att.a.Netns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=1")
		mustRun(t, att.a.Netns, "ip", "addr", "add", nbr.ip6.String()+"/64", "dev", "eth0")
		dad := ""
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end) && !strings.Contains(dad, "dadfailed"); time.Sleep(100 * time.Millisecond) {
			out, _ := testenv.InNS(att.a.Netns, "ip", "-6", "addr", "show", "dev", "eth0", "to", nbr.ip6.String())
			dad = string(out)
		}
		if !strings.Contains(dad, "dadfailed") {
			t.Errorf("duplicate address detection of the neighbour's address did not fail: %s", dad)
		}
	}
	if err := rt.Check(att.a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
}

// A process already in the container's namespace (a network added to a
// running container) that sends forged frames while ADD runs: none gets
// past, because the host veth goes up only once its guard is on (on the
// eBPF datapath, a filter dropping everything until from_container). Here
// the process even brings eth0 up itself as soon as it appears (it has
// CAP_NET_ADMIN in its namespace), before ADD would.
func TestSourceGuardDuringADD(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("win", "berth0", "10.101.0.0/24", ""))
	vic := newGuardPeer(t, rt, "victim")
	rx, _ := rawSocket(t, vic.a.Netns)
	sent, arrived := 0, 0
	for round := range 5 {
		att := container(t, fmt.Sprintf("late%d", round))
		stop, count := make(chan struct{}), make(chan int)
		go func() { count <- floodForged(att.Netns, vic.ip4, stop) }()
		if _, err := rt.Add(att); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		close(stop)
		c := <-count
		var markers []string
		for i := range c {
			markers = append(markers, fmt.Sprintf("m-late-%d;", i))
		}
		sent += c
		arrived += len(received(rx, 300*time.Millisecond, markers))
		if err := rt.Del(att); err != nil {
			t.Fatal(err)
		}
	}
	if sent == 0 {
		t.Fatal("no forged frame was sent while ADD ran")
	}
	if arrived > 0 {
		t.Fatalf("%d of %d forged frames sent while ADD ran reached the victim", arrived, sent)
	}
	t.Logf("%d forged frames sent while ADD ran, none arrived", sent)
}

// floodForged sends, from eth0 in n once it appears (setting it up),
// broadcast frames from a forged address to victim until stop, each with
// its own marker, and returns how many it sent.
func floodForged(n ns.NetNS, victim netip.Addr, stop chan struct{}) int {
	sent := 0
	n.Do(func(ns.NetNS) error {
		fd := -1
		defer func() {
			if fd >= 0 {
				unix.Close(fd)
			}
		}()
		var eth0 netlink.Link
		for {
			select {
			case <-stop:
				return nil
			default:
			}
			if eth0 == nil {
				l, err := netlink.LinkByName("eth0")
				if err != nil {
					continue
				}
				netlink.LinkSetUp(l)
				if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
					return err
				}
				eth0 = l
			}
			bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
			f := ethFrame(bcast, eth0.Attrs().HardwareAddr, unix.ETH_P_IP,
				udp4(netip.MustParseAddr("10.101.0.250"), victim, fmt.Sprintf("m-late-%d;", sent)))
			if unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: eth0.Attrs().Index, Halen: 6}) == nil {
				sent++
			}
		}
	})
	return sent
}
