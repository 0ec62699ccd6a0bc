package srcguard

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/testenv"
)

// IPv6 neighbour discovery through the guard on a bridge: a container's
// solicitations and advertisements whose link-layer address option names
// another MAC would make the node write that MAC into its neighbour
// entries (a receiver takes the option, not the frame's source); the
// guard drops them, while the container's own neighbour discovery,
// duplicate address detection and fragmented pings go on.
func TestNeighbourDiscovery(t *testing.T) {
	node, cont := bridgedContainer(t)
	// The node routes (berth's bridge of a network with IPv6 does): a
	// router takes a router solicitation's source link-layer address.
	mustRun(t, node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.br0.forwarding=1")
	mustRun(t, node, "ip", "addr", "add", "fd70::1/64", "dev", "br0", "nodad")
	var hvIndex int
	var brMAC net.HardwareAddr
	inNode(t, node, func() error {
		hv, err := net.InterfaceByName("hv")
		if err != nil {
			return err
		}
		br, err := net.InterfaceByName("br0")
		hvIndex, brMAC = hv.Index, br.HardwareAddr
		return err
	})
	inNode(t, node, func() error { return Apply(hvIndex, Container{MAC: ownMAC, IPv4: own4, IPv6: own6}, false) })

	// The container's own: duplicate address detection of its address
	// (from ::), then the node's ping, answered with an advertisement
	// of its own MAC, and its own ping, with its solicitation; 3000
	// bytes of ping go in fragments.
	mustRun(t, cont, "ip", "addr", "add", own6.String()+"/64", "dev", "eth0")
	waitAddr(t, cont, own6, "tentative", false)
	mustRun(t, node, "ping", "-c", "1", "-W", "2", own6.String())
	mustRun(t, cont, "ping", "-c", "1", "-W", "2", "fd70::1")
	mustRun(t, cont, "ping", "-c", "1", "-W", "2", "-s", "3000", "fd70::1")
	if mac := neigh(t, node, own6); mac != ownMAC.String() {
		t.Fatalf("after the pings the node has %s at %q, want %s", own6, mac, ownMAC)
	}

	llNS, llRS := netip.MustParseAddr("fe80::66"), netip.MustParseAddr("fe80::67")
	node6 := netip.MustParseAddr("fd70::1")
	allNodes, allRouters := netip.MustParseAddr("ff02::1"), netip.MustParseAddr("ff02::2")
	for _, tc := range []struct {
		name  string
		dst   net.HardwareAddr
		entry netip.Addr // the node's neighbour entry it writes
		make  func(lladdr net.HardwareAddr) []byte
	}{
		{"advertisement of its own address", hw("33:33:00:00:00:01"), own6, func(lladdr net.HardwareAddr) []byte {
			return nd(own6, allNodes, icmp6NA, naBody(own6, true), llOption(2, lladdr))
		}},
		{"solicitation from its own address", brMAC, own6, func(lladdr net.HardwareAddr) []byte {
			return nd(own6, node6, icmp6NS, nsBody(node6), llOption(1, lladdr))
		}},
		{"solicitation from a link-local address", brMAC, llNS, func(lladdr net.HardwareAddr) []byte {
			return nd(llNS, node6, icmp6NS, nsBody(node6), llOption(1, lladdr))
		}},
		{"router solicitation", hw("33:33:00:00:00:02"), llRS, func(lladdr net.HardwareAddr) []byte {
			return nd(llRS, allRouters, icmp6RS, make([]byte, 4), llOption(1, lladdr))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			send := func(lladdr net.HardwareAddr) string {
				frame := eth(ownMAC, 0x86dd, tc.make(lladdr))
				copy(frame, tc.dst)
				sendOnEth0(t, cont, frame)
				return neighAfter(t, node, tc.entry, lladdr)
			}
			// An entry of a third MAC, or none: the message with the
			// container's own MAC writes it, which shows the node
			// takes the message.
			if tc.entry == own6 {
				mustRun(t, node, "ip", "-6", "neigh", "replace", own6.String(), "lladdr", farMAC.String(), "dev", "br0", "nud", "stale")
			} else {
				testenv.InNS(node, "ip", "-6", "neigh", "del", tc.entry.String(), "dev", "br0")
			}
			if mac := send(ownMAC); mac != ownMAC.String() {
				t.Fatalf("with the container's own MAC: the node has %s at %q, want %s", tc.entry, mac, ownMAC)
			}
			if mac := send(otherMAC); mac != ownMAC.String() {
				t.Errorf("with another MAC: the node has %s at %q, want %s", tc.entry, mac, ownMAC)
			}
		})
	}

	// Duplicate address detection still finds an address taken: the
	// node's, which answers the container's solicitation from ::.
	mustRun(t, cont, "ip", "addr", "add", "fd70::1/64", "dev", "eth0")
	waitAddr(t, cont, node6, "dadfailed", true)
	mustRun(t, node, "ping", "-c", "1", "-W", "2", own6.String())
}

// TestKernelDropsFragmentedND is the kernel's part of the guard's choice
// about fragments: Linux drops a neighbour advertisement in a fragment
// (RFC 6980), atomic or not, that it takes unfragmented. Here without
// the guard, on a veth between a node and a container.
func TestKernelDropsFragmentedND(t *testing.T) {
	testenv.RequireRoot(t)
	node, cont := testenv.NewNS(t), testenv.NewNS(t)
	testenv.Link(t, cont, "eth0", "", node, "hv", "")
	mustRun(t, node, "ip", "addr", "add", "fd70::1/64", "dev", "hv", "nodad")
	mustRun(t, cont, "ip", "link", "set", "eth0", "address", ownMAC.String())
	mustRun(t, cont, "ip", "addr", "add", own6.String()+"/64", "dev", "eth0", "nodad")
	allNodes := netip.MustParseAddr("ff02::1")
	na := nd(own6, allNodes, icmp6NA, naBody(own6, true), llOption(2, otherMAC))
	for _, tc := range []struct {
		name    string
		packets [][]byte
		taken   bool
	}{
		{"atomic fragment", [][]byte{fragment(na, 0, 0, false)}, false},
		{"two fragments", [][]byte{fragment(na, 0, 24, true), fragment(na, 24, 0, false)}, false},
		// The control: the same advertisement unfragmented is taken.
		{"unfragmented", [][]byte{na}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mustRun(t, node, "ip", "-6", "neigh", "replace", own6.String(), "lladdr", ownMAC.String(), "dev", "hv", "nud", "stale")
			before := advertisementsIn(t, node)
			for _, p := range tc.packets {
				sendOnEth0(t, cont, to("33:33:00:00:00:01", eth(ownMAC, 0x86dd, p)))
			}
			mac := neighOn(t, node, "hv", own6, otherMAC)
			if taken := mac == otherMAC.String(); taken != tc.taken {
				t.Errorf("the node has %s at %s: advertisement taken %v, want %v", own6, mac, taken, tc.taken)
			}
			// It was reassembled and its checksum right: neighbour
			// discovery, not an earlier step, dropped it.
			if got := advertisementsIn(t, node) - before; got != 1 {
				t.Errorf("the node's ICMPv6 counted %d advertisements in, want 1", got)
			}
		})
	}
}

// A first fragment with another extension header behind its fragment
// header: Linux reads the ICMPv6 message behind both, and a receiver
// with suppress_frag_ndisc=0 takes neighbour discovery in fragments.
// The guard drops those fragments as it drops the headers unfragmented:
// without it the node wrote another MAC (TLLA) into its entry for the
// container's address, each of 10 times out of 10.
func TestNeighbourDiscoveryBehindFragmentAndOptions(t *testing.T) {
	node, cont := bridgedContainer(t)
	mustRun(t, node, "ip", "addr", "add", "fd70::1/64", "dev", "br0", "nodad")
	mustRun(t, node, "sysctl", "-qw", "net.ipv6.conf.br0.suppress_frag_ndisc=0")
	mustRun(t, cont, "ip", "addr", "add", own6.String()+"/64", "dev", "eth0", "nodad")
	var hvIndex int
	inNode(t, node, func() error {
		hv, err := net.InterfaceByName("hv")
		hvIndex = hv.Index
		return err
	})
	forged := nd(own6, netip.MustParseAddr("ff02::1"), icmp6NA, naBody(own6, true), llOption(2, otherMAC))
	taken := func(exts ...ext) bool {
		mustRun(t, node, "ip", "-6", "neigh", "replace", own6.String(), "lladdr", ownMAC.String(), "dev", "br0", "nud", "stale")
		sendOnEth0(t, cont, to("33:33:00:00:00:01", eth(ownMAC, 0x86dd, chain(forged, exts...))))
		return neighAfter(t, node, own6, otherMAC) == otherMAC.String()
	}
	// The control: without the guard the node takes it.
	if !taken(atomicFrag(), dstOpts()) {
		t.Fatal("without the guard the node did not take the advertisement behind a fragment header and destination options: the bed does not reproduce the attack")
	}
	inNode(t, node, func() error { return Apply(hvIndex, Container{MAC: ownMAC, IPv4: own4, IPv6: own6}, false) })
	for _, tc := range []struct {
		name string
		exts []ext
	}{
		{"atomic fragment, destination options", []ext{atomicFrag(), dstOpts()}},
		{"atomic fragment, routing header", []ext{atomicFrag(), routingSkipped()}},
		{"atomic fragment, atomic fragment", []ext{atomicFrag(), atomicFrag()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if taken(tc.exts...) {
				t.Errorf("the node has %s at %s", own6, otherMAC)
			}
		})
	}
}

// advertisementsIn is n's count of neighbour advertisements ICMPv6
// received, before neighbour discovery judged them.
func advertisementsIn(t *testing.T, n ns.NetNS) int {
	t.Helper()
	out, err := testenv.InNS(n, "cat", "/proc/net/snmp6")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "Icmp6InNeighborAdvertisements" {
			v, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("no Icmp6InNeighborAdvertisements in /proc/net/snmp6: %s", out)
	return 0
}

// nd is a neighbour discovery message of type typ from src to dst, body
// the rest of its fixed part after type, code and checksum, with opts.
func nd(src, dst netip.Addr, typ byte, body []byte, opts ...[]byte) []byte {
	m := append([]byte{typ, 0, 0, 0}, body...)
	for _, o := range opts {
		m = append(m, o...)
	}
	binary.BigEndian.PutUint16(m[2:], icmp6Checksum(src, dst, m))
	return ipv6to(src.String(), dst.String(), nextICMPv6, m)
}

func icmp6Checksum(src, dst netip.Addr, m []byte) uint16 {
	pseudo := append(append([]byte{}, src.AsSlice()...), dst.AsSlice()...)
	pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(m)))
	pseudo = append(pseudo, 0, 0, 0, nextICMPv6)
	return testenv.Checksum(append(pseudo, m...))
}

// naBody is an advertisement's flags and target (override set when
// override: a receiver then replaces the MAC of an entry it has).
func naBody(target netip.Addr, override bool) []byte {
	flags := byte(0)
	if override {
		flags = 0x20
	}
	return append([]byte{flags, 0, 0, 0}, target.AsSlice()...)
}

// nsBody is a solicitation's reserved field and target.
func nsBody(target netip.Addr) []byte { return append(make([]byte, 4), target.AsSlice()...) }

// llOption is a link-layer address option of type typ (1 source, 2
// target) with mac.
func llOption(typ byte, mac net.HardwareAddr) []byte { return append([]byte{typ, 1}, mac...) }

// fragment is the part of packet (an IPv6 packet without extension
// headers) from offset off, n bytes of its payload long, as a fragment
// (more: more follow).
func fragment(packet []byte, off, n int, more bool) []byte {
	h := append([]byte{}, packet[:40]...)
	next := h[6]
	h[6] = 44 // fragment header
	fh := []byte{next, 0, 0, 0, 0, 0, 0x0b, 0xe7}
	fo := uint16(off)
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(fh[2:], fo)
	if n == 0 {
		n = len(packet) - 40 - off
	}
	payload := append(fh, packet[40+off:40+off+n]...)
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	return append(h, payload...)
}

// Extension header numbers.
const (
	nextRouting  = 43
	nextFragment = 44
	nextDstOpts  = 60
)

// ext is an extension header: its protocol number and its bytes, whose
// first (next header) chain sets.
type ext struct {
	proto byte
	body  []byte
}

func atomicFrag() ext     { return ext{nextFragment, []byte{0, 0, 0, 0, 0, 0, 0x0b, 0xe7}} }
func firstFrag() ext      { return ext{nextFragment, []byte{0, 0, 0, 1, 0, 0, 0x0b, 0xe8}} }
func dstOpts() ext        { return ext{nextDstOpts, []byte{0, 0, 1, 4, 0, 0, 0, 0}} }
func routingSkipped() ext { return ext{nextRouting, []byte{0, 0, 253, 0, 0, 0, 0, 0}} } // an unknown type, segments left 0: skipped

// chain puts exts between packet's IPv6 header and its payload.
func chain(packet []byte, exts ...ext) []byte {
	h := append([]byte{}, packet[:40]...)
	payload := packet[40:]
	next := h[6]
	var mid []byte
	for i := len(exts) - 1; i >= 0; i-- {
		b := append([]byte{}, exts[i].body...)
		b[0] = next
		next = exts[i].proto
		mid = append(b, mid...)
	}
	h[6] = next
	all := append(mid, payload...)
	binary.BigEndian.PutUint16(h[4:], uint16(len(all)))
	return append(h, all...)
}

func hw(s string) net.HardwareAddr {
	m, _ := net.ParseMAC(s)
	return m
}

func neigh(t *testing.T, n ns.NetNS, ip netip.Addr) string { return neighOn(t, n, "br0", ip, nil) }

// neighAfter is the MAC of n's neighbour entry on br0 for ip once it
// is want, or after half a second.
func neighAfter(t *testing.T, n ns.NetNS, ip netip.Addr, want net.HardwareAddr) string {
	return neighOn(t, n, "br0", ip, want)
}

// neighOn is the MAC of n's neighbour entry for ip on dev ("" if none):
// with want, once it is want, or after half a second.
func neighOn(t *testing.T, n ns.NetNS, dev string, ip netip.Addr, want net.HardwareAddr) string {
	t.Helper()
	for deadline := time.Now().Add(500 * time.Millisecond); ; time.Sleep(20 * time.Millisecond) {
		out, _ := testenv.InNS(n, "ip", "-6", "neigh", "show", ip.String(), "dev", dev)
		mac := ""
		if f := strings.Fields(string(out)); len(f) > 2 && f[1] == "lladdr" {
			mac = f[2]
		}
		if want == nil || mac == want.String() || time.Now().After(deadline) {
			return mac
		}
	}
}

// waitAddr waits up to 5 s until n's address ip on eth0 has the flag
// (want), or has it no more (!want).
func waitAddr(t *testing.T, n ns.NetNS, ip netip.Addr, flag string, want bool) {
	t.Helper()
	out := []byte{}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		out, _ = testenv.InNS(n, "ip", "-6", "addr", "show", "dev", "eth0", "to", ip.String())
		if len(out) > 0 && strings.Contains(string(out), flag) == want {
			return
		}
	}
	t.Fatalf("%s on eth0 %s %s after 5 s: %s", ip, map[bool]string{true: "is not", false: "is still"}[want], flag, out)
}
