package fastpath_test

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/testenv"
)

// ctr is a container namespace behind a host veth in the node namespace,
// with nothing else on the node: no bridge, no route, no forwarding. Only
// the fast path can carry a packet from one container to another.
type ctr struct {
	ns      ns.NetNS
	ip      netip.Addr
	host    netlink.Link // in the node
	mac     net.HardwareAddr
	ifindex int
}

const gateway = "169.254.1.1"

func newCtr(t *testing.T, node ns.NetNS, hostName, ip string) *ctr {
	t.Helper()
	c := &ctr{ns: testenv.NewNS(t), ip: netip.MustParseAddr(ip)}
	err := node.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(c.ns.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		l, err := netlink.LinkByName(hostName)
		if err != nil {
			return err
		}
		c.host, c.ifindex = l, l.Attrs().Index
		return netlink.LinkSetUp(l)
	})
	if err == nil {
		err = c.ns.Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			c.mac = l.Attrs().HardwareAddr
			a, _ := netlink.ParseAddr(ip + "/32")
			if err := netlink.AddrAdd(l, a); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
			// Routed, as berth-bgp makes it: everything via a link-local
			// gateway whose MAC is the host veth's.
			gw := net.ParseIP(gateway)
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}}); err != nil {
				return err
			}
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw}); err != nil {
				return err
			}
			return netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, IP: gw, HardwareAddr: c.host.Attrs().HardwareAddr,
				State: netlink.NUD_PERMANENT, Family: unix.AF_INET})
		})
	}
	if err != nil {
		t.Fatalf("container %s: %v", ip, err)
	}
	return c
}

func (c *ctr) endpoint() fastpath.Endpoint {
	return fastpath.Endpoint{IP: c.ip, Ifindex: c.ifindex, MAC: c.mac, RouterMAC: c.host.Attrs().HardwareAddr, Owner: uint64(c.ifindex)}
}

func open(t *testing.T, node ns.NetNS, bpffs, network string) *fastpath.Network {
	t.Helper()
	var n *fastpath.Network
	err := node.Do(func(ns.NetNS) error {
		l, err := fastpath.Acquire(bpffs)
		if err != nil {
			return err
		}
		defer l.Release()
		n, err = fastpath.Open(bpffs, network)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

func TestSameNode(t *testing.T) {
	node := testenv.NewNS(t)
	bpffs := testenv.BPFFS(t)
	a := newCtr(t, node, "hosta", "10.77.0.2")
	b := newCtr(t, node, "hostb", "10.77.0.3")

	if udpTTL(t, a, b) != 0 {
		t.Fatal("control: a reached b with no fast path; the test proves nothing")
	}
	n := open(t, node, bpffs, "net1")
	if err := n.Configure(fastpath.Config{Local: netip.MustParsePrefix("10.77.0.0/24"), Scope: netip.MustParsePrefix("10.77.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	err := node.Do(func(ns.NetNS) error {
		for _, c := range []*ctr{a, b} {
			if err := n.AddEndpoint(c.endpoint()); err != nil {
				return err
			}
			if err := n.AttachContainer(c.ifindex); err != nil {
				return err
			}
			// Twice: attaching is idempotent.
			if err := n.AttachContainer(c.ifindex); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("routed: delivered with one hop less", func(t *testing.T) {
		before, _ := n.Stats()
		for _, p := range [][2]*ctr{{a, b}, {b, a}} {
			if ttl := udpTTL(t, p[0], p[1]); ttl != 63 {
				t.Errorf("%s -> %s: arrived with TTL %d, want 63 (forwarded once; 0: lost)", p[0].ip, p[1].ip, ttl)
			}
		}
		after, _ := n.Stats()
		if after.Local < before.Local+2 {
			t.Errorf("counters: %+v then %+v, want 2 more local deliveries", before, after)
		}
	})

	t.Run("switched: a neighbour addressed by MAC arrives as sent", func(t *testing.T) {
		for _, p := range [][2]*ctr{{a, b}, {b, a}} {
			from, to := p[0], p[1]
			err := from.ns.Do(func(ns.NetNS) error {
				l, _ := netlink.LinkByName("eth0")
				if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_LINK,
					Dst: &net.IPNet{IP: to.ip.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
					return err
				}
				return netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, IP: to.ip.AsSlice(), HardwareAddr: to.mac,
					State: netlink.NUD_PERMANENT, Family: unix.AF_INET})
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		if ttl := udpTTL(t, a, b); ttl != 64 {
			t.Errorf("a -> b on link: arrived with TTL %d, want 64 (0: lost)", ttl)
		}
	})

	t.Run("a spoofed source is dropped", func(t *testing.T) {
		testenv.InNS(a.ns, "ip", "addr", "add", "10.77.0.99/32", "dev", "eth0")
		before, _ := n.Stats()
		if out, err := testenv.InNS(a.ns, "ping", "-c", "1", "-W", "1", "-I", "10.77.0.99", b.ip.String()); err == nil {
			t.Errorf("ping with a spoofed source got an answer:\n%s", out)
		}
		// To an address that is no container's: dropped all the same.
		testenv.InNS(a.ns, "ping", "-c", "1", "-W", "1", "-I", "10.77.0.99", "10.77.0.50")
		after, _ := n.Stats()
		if after.Spoofed < before.Spoofed+2 {
			t.Errorf("counters %+v then %+v: want 2 more spoofed", before, after)
		}
	})

	t.Run("attached and listed", func(t *testing.T) {
		for _, c := range []*ctr{a, b} {
			var ok bool
			node.Do(func(ns.NetNS) error { ok, err = n.Attached(c.ifindex, true); return err })
			if err != nil || !ok {
				t.Errorf("program on %s: %v %v", c.host.Attrs().Name, ok, err)
			}
			// A tc filter, once (attached twice above), and nothing on TCX,
			// whose first attach waits for a full RCU grace period.
			name := c.host.Attrs().Name
			out, _ := testenv.InNS(node, "tc", "filter", "show", "dev", name, "ingress")
			if got := strings.Count(string(out), "direct-action"); got != 1 || !strings.Contains(string(out), "from_container") {
				t.Errorf("tc filters of %s: want from_container once:\n%s", name, out)
			}
			if progs := tcxPrograms(t, node, c.ifindex); len(progs) != 0 {
				t.Errorf("TCX programs on %s: %v, want none", name, progs)
			}
		}
		eps, err := n.Endpoints()
		if err != nil || len(eps) != 2 {
			t.Errorf("endpoints: %v %v", eps, err)
		}
	})

	t.Run("a program an earlier berth attached on TCX counts", func(t *testing.T) {
		prog := pinnedProgram(t, bpffs, "net1", "from_container")
		attached := func() bool {
			var ok bool
			if err := node.Do(func(ns.NetNS) error { ok, err = n.Attached(a.ifindex, true); return err }); err != nil {
				t.Fatal(err)
			}
			return ok
		}
		testenv.InNS(node, "tc", "qdisc", "del", "dev", a.host.Attrs().Name, "clsact")
		if attached() {
			t.Fatal("attached with the filter removed")
		}
		opts := link.RawAttachProgramOptions{Target: a.ifindex, Program: prog, Attach: ebpf.AttachTCXIngress}
		if err := node.Do(func(ns.NetNS) error { return link.RawAttachProgram(opts) }); err != nil {
			t.Fatal(err)
		}
		if !attached() {
			t.Error("the program on TCX is not seen")
		}
		if udpTTL(t, a, b) == 0 { // switched since the test above: TTL 64
			t.Error("a does not reach b through the program on TCX")
		}
	})

	t.Run("a removed endpoint is no longer reachable", func(t *testing.T) {
		if err := n.RemoveEndpoint(b.ip, 12345); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := n.Endpoint(b.ip); !ok {
			t.Fatal("another owner's endpoint was removed")
		}
		if err := n.RemoveEndpoint(b.ip, b.endpoint().Owner); err != nil {
			t.Fatal(err)
		}
		if udpTTL(t, a, b) != 0 {
			t.Error("a still reaches b")
		}
		if n.Empty() {
			t.Error("Empty with a's endpoint left")
		}
	})

	t.Run("remove unpins everything", func(t *testing.T) {
		err := node.Do(func(ns.NetNS) error {
			l, err := fastpath.Acquire(bpffs)
			if err != nil {
				return err
			}
			defer l.Release()
			return fastpath.Remove(bpffs, "net1")
		})
		if err != nil {
			t.Fatal(err)
		}
		left, _ := os.ReadDir(filepath.Join(bpffs, "berth"))
		if len(left) != 0 {
			t.Errorf("left in %s: %v", bpffs, left)
		}
		if n, err := fastpath.OpenExisting(bpffs, "net1"); n != nil || err != nil {
			t.Errorf("OpenExisting after Remove: %v %v", n, err)
		}
	})
}

// tcxPrograms lists the programs on ifindex's TCX ingress in node.
func tcxPrograms(t *testing.T, node ns.NetNS, ifindex int) []ebpf.ProgramID {
	t.Helper()
	var res *link.QueryResult
	err := node.Do(func(ns.NetNS) (err error) {
		res, err = link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

// pinnedProgram loads network's pinned program named name.
func pinnedProgram(t *testing.T, bpffs, network, name string) *ebpf.Program {
	t.Helper()
	pins, _ := filepath.Glob(filepath.Join(bpffs, "berth", network, name+"_*"))
	if len(pins) != 1 {
		t.Fatalf("pins of %s: %v, want one", name, pins)
	}
	p, err := ebpf.LoadPinnedProgram(pins[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestNotABPFFS(t *testing.T) {
	for name, dir := range map[string]string{"a plain directory": t.TempDir(), "a missing path": filepath.Join(t.TempDir(), "gone")} {
		_, err := fastpath.Acquire(dir)
		if !errors.Is(err, fastpath.ErrNoBPFFS) || !strings.Contains(err.Error(), "mount -t bpf") {
			t.Errorf("Acquire on %s: %v, want ErrNoBPFFS saying how to mount one", name, err)
		}
	}
}

// udpTTL sends a datagram from one container to the other and returns the
// TTL it arrived with: 0 when it did not arrive within a second. UDP, not
// ping: the fast path leaves ICMP to the kernel.
func udpTTL(t *testing.T, from, to *ctr) int {
	t.Helper()
	var conn *net.UDPConn
	err := to.ns.Do(func(ns.NetNS) error {
		var err error
		if conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: to.ip.AsSlice()}); err != nil {
			return err
		}
		raw, err := conn.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		err = raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTTL, 1) })
		return errors.Join(err, serr)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = from.ns.Do(func(ns.NetNS) error {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: from.ip.AsSlice()}, conn.LocalAddr().(*net.UDPAddr))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("x"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(time.Second))
	buf, oob := make([]byte, 16), make([]byte, 64)
	_, oobn, _, _, err := conn.ReadMsgUDP(buf, oob)
	if err != nil {
		return 0 // not arrived
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TTL && len(m.Data) >= 4 {
			return int(binary.NativeEndian.Uint32(m.Data))
		}
	}
	t.Fatal("the datagram arrived without its TTL")
	return 0
}
