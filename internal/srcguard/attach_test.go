package srcguard

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/bpfattach"
	"github.com/berthnet/berth/internal/testenv"
)

// The guard on a real veth, on TCX and as a tc filter (a kernel without
// TCX): a forged packet is dropped and the container's own arrives,
// Apply again replaces it, Check finds it missing, made for another MAC
// or behind another program. On TCX the `ingress` qdisc a reference
// bandwidth plugin adds after it has its place.
func TestAttached(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tc := range []struct {
		name string
		onTC bool
	}{{"TCX", false}, {"tc filter", true}} {
		t.Run(tc.name, func(t *testing.T) {
			n := testenv.NewNS(t)
			err := n.Do(func(ns.NetNS) error {
				testAttached(t, n, tc.onTC)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// testAttached runs in n: the host end "hv" with 10.70.0.1, the
// container end "cv" with 10.70.0.2 (both in n: what matters is what
// arrives at hv from cv).
func testAttached(t *testing.T, n ns.NetNS, onTC bool) {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "hv"}, PeerName: "cv",
		PeerHardwareAddr: ownMAC}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{
		{"ip", "addr", "add", "10.70.0.1/32", "dev", "hv"},
		{"ip", "link", "set", "hv", "up"},
		{"ip", "link", "set", "cv", "up"},
	} {
		if out, err := testenv.InNS(n, cmd[0], cmd[1:]...); err != nil {
			t.Fatalf("%v: %v\n%s", cmd, err, out)
		}
	}
	hv, err := netlink.LinkByName("hv")
	if err != nil {
		t.Fatal(err)
	}
	ifindex := hv.Attrs().Index
	c := Container{MAC: ownMAC, IPv4: own4, IPv6: own6}

	if err := check(ifindex, c, onTC); err == nil || !strings.Contains(err.Error(), "no source guard") {
		t.Errorf("Check before Apply: %v, want no source guard", err)
	}
	for range 2 { // the second replaces the first
		if err := apply(ifindex, c, onTC); err != nil {
			t.Fatal(err)
		}
	}
	list := bpfattach.TCXPrograms
	if onTC {
		list = bpfattach.FilterPrograms
	}
	ids, err := list(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	if guards, _ := bpfattach.Named(ids, progName); len(guards) != 1 {
		t.Errorf("after two Apply: %d guards, want 1", len(guards))
	}
	if err := check(ifindex, c, onTC); err != nil {
		t.Errorf("Check: %v", err)
	}
	// A program of that name with the guard's constants, passing all.
	impostor := impostor(t, ifindex)
	defer impostor.Close()
	ids, _ = list(ifindex)
	guards, _ := bpfattach.Named(ids, progName)
	if onTC {
		err = bpfattach.AttachFilter(ifindex, impostor, bpfattach.Filter{Priority: Priority, Name: progName})
	} else {
		err = bpfattach.AttachTCX(ifindex, impostor, bpfattach.TCXPlace{Replace: guards[0]})
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := check(ifindex, c, onTC); err == nil || !strings.Contains(err.Error(), "not this berth's source guard") {
		t.Errorf("Check of an impostor: %v, want not this berth's source guard", err)
	}
	if err := apply(ifindex, c, onTC); err != nil {
		t.Fatal(err)
	}
	other := c
	other.MAC = otherMAC
	if err := check(ifindex, other, onTC); err == nil || !strings.Contains(err.Error(), "other addresses") {
		t.Errorf("Check for another MAC: %v, want other addresses", err)
	}

	// A UDP socket of the node on hv's address; frames from cv with
	// the container's source and a neighbour's.
	sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 70, 0, 1), Port: 9})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	cv, err := netlink.LinkByName("cv")
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, f := range []struct{ src, marker string }{{"10.70.0.3", "forged"}, {"10.70.0.2", "own"}} {
		frame := append(append(append([]byte{}, hv.Attrs().HardwareAddr...), ownMAC...), 0x08, 0x00)
		frame = append(frame, udp4(f.src, "10.70.0.1", f.marker)...)
		if err := unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: cv.Attrs().Index, Halen: 6}); err != nil {
			t.Fatal(err)
		}
	}
	sock.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 64)
	var got []string
	for {
		k, err := sock.Read(buf)
		if err != nil {
			break
		}
		got = append(got, string(buf[:k]))
	}
	if strings.Join(got, ",") != "own" {
		t.Errorf("arrived at the node: %q, want only the container's own", got)
	}

	if !onTC {
		// What the reference bandwidth plugin's egress limit adds.
		ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex,
			Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
		if err := netlink.QdiscAdd(ingress); err != nil {
			t.Errorf("an ingress qdisc beside the guard: %v", err)
		}
		// A program put before the guard could let frames past it.
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "other", Type: ebpf.SchedCLS, License: "MIT",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
		if err != nil {
			t.Fatal(err)
		}
		defer prog.Close()
		if err := bpfattach.AttachTCX(ifindex, prog, bpfattach.TCXPlace{First: true}); err != nil {
			t.Fatal(err)
		}
		if err := check(ifindex, c, onTC); err == nil || !strings.Contains(err.Error(), "after another program") {
			t.Errorf("Check with a program before the guard: %v", err)
		}
	}
}

// udp4 is an IPv4 UDP packet from src to dst carrying payload (the UDP
// checksum left 0: none).
func udp4(src, dst, payload string) []byte {
	h := ipv4(src)
	h[9], h[8] = unix.IPPROTO_UDP, 64
	copy(h[16:], netip.MustParseAddr(dst).AsSlice())
	binary.BigEndian.PutUint16(h[2:], uint16(20+8+len(payload)))
	binary.BigEndian.PutUint16(h[10:], 0)
	binary.BigEndian.PutUint16(h[10:], testenv.Checksum(h))
	u := make([]byte, 8)
	binary.BigEndian.PutUint16(u[0:], 40000)
	binary.BigEndian.PutUint16(u[2:], 9)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	return append(append(h, u...), payload...)
}

// impostor is a program named as the guard, with the constants of the
// guard attached to ifindex in a map named as the guard's, that lets
// everything through.
func impostor(t *testing.T, ifindex int) *ebpf.Program {
	t.Helper()
	ids, err := bpfattach.TCXPrograms(ifindex)
	if err == nil && len(ids) == 0 {
		ids, err = bpfattach.FilterPrograms(ifindex)
	}
	if err != nil || len(ids) == 0 {
		t.Fatalf("no guard to copy: %v", err)
	}
	real, err := ebpf.NewProgramFromID(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	defer real.Close()
	rodata, err := attachedConstants(real)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: ".rodata", Type: ebpf.Array, KeySize: 4, ValueSize: uint32(len(rodata)), MaxEntries: 1,
		Contents: []ebpf.MapKV{{Key: uint32(0), Value: rodata}}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: progName, Type: ebpf.SchedCLS, License: "MIT",
		Instructions: asm.Instructions{asm.LoadMapValue(asm.R1, m.FD(), 0), asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
