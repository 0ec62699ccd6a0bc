package srcguard

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/testenv"
)

// The bridge's layer against the bypass it exists for: a container with
// CAP_NET_ADMIN redirects its eth0's egress through an ifb device of its
// own, which hands frames back marked tc_skip_classify, past the host
// veth's guard. Without the layer some forged frames reach the node;
// with it none do, and the container's own still do.
func TestBridgeLayerStopsTheIfbBypass(t *testing.T) {
	node, cont := bridgedContainer(t)
	var hvIndex int
	var brMAC net.HardwareAddr
	node.Do(func(ns.NetNS) error {
		hv, _ := net.InterfaceByName("hv")
		br, _ := net.InterfaceByName("br0")
		hvIndex, brMAC = hv.Index, br.HardwareAddr
		return nil
	})
	inNode(t, node, func() error { return Apply(hvIndex, Container{MAC: ownMAC, IPv4: own4}, false) })
	testenv.IfbTrick(t, cont)

	send := func(src string) int { return arrivals(t, node, cont, brMAC, src) }

	// The control: without the layer the trick works in this bed.
	if got := send("10.70.0.3"); got == 0 {
		t.Fatal("without the bridge's layer no forged frame got past the guard: the bed does not reproduce the bypass")
	} else {
		t.Logf("without the bridge's layer: %d of 40 forged frames past the guard", got)
	}
	inNode(t, node, func() error { return Require(hvIndex) })
	if got := send("10.70.0.3"); got != 0 {
		t.Errorf("with the bridge's layer: %d of 40 forged frames past the guard", got)
	}
	// The container's own frames that kept the flag skipped the guard
	// too: they are dropped as well, the others arrive.
	if got := send("10.70.0.2"); got < 10 || got == 40 {
		t.Errorf("with the bridge's layer: %d of 40 of the container's own frames arrived through the trick, want those that met the guard", got)
	}
	// A container that sends everything through an ifb (shaping its
	// own egress there, say) keeps no flag: its frames meet the guard,
	// and all arrive.
	mustRun(t, cont, "tc", "filter", "replace", "dev", "eth0", "egress", "prio", "1", "protocol", "all", "bpf", "bytecode",
		"1,6 0 0 4294967295", "action", "mirred", "egress", "redirect", "dev", "ifb0")
	if got := send("10.70.0.2"); got != 40 {
		t.Errorf("through an ifb on every frame: %d of 40 of the container's own frames arrived", got)
	}
}

// A routed host veth (berth-bgp) is no bridge's port: what comes in on
// it meets the inet table at prerouting, which drops what skipped the
// guard and clears the mark of what did not, before any of the node's
// rules see it (here an iptables rule dropping marked packets).
func TestRoutedLayer(t *testing.T) {
	testenv.RequireRoot(t)
	node, cont := testenv.NewNS(t), testenv.NewNS(t)
	testenv.Link(t, cont, "eth0", "10.70.0.2/32", node, "hv", "10.70.0.1/32")
	mustRun(t, node, "ip", "route", "add", "10.70.0.2/32", "dev", "hv")
	mustRun(t, cont, "ip", "route", "add", "10.70.0.1/32", "dev", "eth0")
	mustRun(t, cont, "ip", "link", "set", "eth0", "address", ownMAC.String())
	// Not what berth sets on a routed veth (strict): here the layer, not
	// rp_filter, is what drops a forged source.
	mustRun(t, node, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.hv.rp_filter=0")
	mustRun(t, node, "iptables", "-A", "INPUT", "-m", "mark", "--mark", fmt.Sprintf("%#x/%#x", PassedMark, PassedMark), "-j", "DROP")
	var hv *net.Interface
	inNode(t, node, func() (err error) { hv, err = net.InterfaceByName("hv"); return err })
	inNode(t, node, func() error { return Apply(hv.Index, Container{MAC: ownMAC, IPv4: own4}, false) })
	inNode(t, node, func() error { return Require(hv.Index) })

	send := func(src string) int { return arrivals(t, node, cont, hv.HardwareAddr, src) }
	if got := send("10.70.0.2"); got != 40 {
		t.Errorf("%d of 40 of the container's own packets arrived, want all: their mark was not cleared", got)
	}
	testenv.IfbTrick(t, cont)
	if got := send("10.70.0.3"); got != 0 {
		t.Errorf("%d of 40 forged packets got past the guard on a routed veth", got)
	}
}

// Require and CheckRequired without traffic: CHECK finds each kind of
// damage, Require repairs it, and parallel callers leave one table.
func TestBridgeLayerTable(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNS(t)
	var indexes []int
	inNode(t, n, func() error {
		for i := range 16 {
			veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("hv%d", i)}, PeerName: fmt.Sprintf("cv%d", i)}
			if err := netlink.LinkAdd(veth); err != nil {
				return err
			}
			indexes = append(indexes, veth.Index)
		}
		if err := CheckRequired(indexes[0]); err == nil {
			return fmt.Errorf("CheckRequired before Require passed")
		}
		return nil
	})
	// Parallel callers, each in the namespace on its own thread, the
	// first on a node.
	var wg sync.WaitGroup
	for _, i := range indexes {
		wg.Go(func() {
			if err := n.Do(func(ns.NetNS) error { return Require(i) }); err != nil {
				t.Errorf("parallel Require: %v", err)
			}
		})
	}
	wg.Wait()
	inNode(t, n, func() error {
		for _, i := range indexes {
			if err := CheckRequired(i); err != nil {
				t.Errorf("after parallel Require: %v", err)
			}
		}
		// One copy of each rule, however many wrote the table.
		c := newConn()
		for _, ch := range bridgeChains() {
			rules, err := c.GetRules(bridgeTable, ch.chain)
			if err != nil {
				return err
			}
			if len(rules) != len(ch.rules) {
				t.Errorf("chain %s has %d rules, want %d", ch.chain.Name, len(rules), len(ch.rules))
			}
		}
		return nil
	})

	first := indexes[0]
	damage := []struct {
		name, want string
		do         func(c *nftables.Conn)
	}{
		{"the veth's group changed", "not 0x62657274", func(*nftables.Conn) {
			netlink.LinkSetGroup(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: first}}, 0)
		}},
		{"the check flushed", "chain passed is not berth's", func(c *nftables.Conn) { c.FlushChain(bridgeChains()[0].chain) }},
		{"a rule changed", "chain prerouting is not berth's", func(c *nftables.Conn) {
			ch := bridgeChains()[1].chain
			c.FlushChain(ch)
			c.AddRule(&nftables.Rule{Table: bridgeTable, Chain: ch, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}},
				UserData: userdata.AppendString(nil, userdata.TypeComment, bridgeChains()[1].rules[0].text)})
		}},
		{"a hook deleted", "no chain input", func(c *nftables.Conn) { c.DelChain(bridgeChains()[2].chain) }},
		// Another build's, say: a base chain's priority cannot be
		// changed in place, so Require makes the table anew.
		{"a hook at another priority", "chain prerouting is not hooked as berth makes it", func(c *nftables.Conn) {
			ch := *bridgeChains()[1].chain
			c.FlushChain(&ch)
			c.DelChain(&ch)
			ch.Priority = nftables.ChainPriorityRef(-300)
			c.AddChain(&ch)
		}},
		{"the table deleted", "bridge berth has no chain passed", func(c *nftables.Conn) { c.DelTable(bridgeTable) }},
		{"the routed table deleted", "inet berth-guard has no chain passed", func(c *nftables.Conn) { c.DelTable(routedTable) }},
	}
	for _, d := range damage {
		inNode(t, n, func() error {
			c := newConn()
			d.do(c)
			if err := c.Flush(); err != nil {
				return err
			}
			if err := CheckRequired(first); err == nil || !strings.Contains(err.Error(), d.want) {
				t.Errorf("CheckRequired after %s: %v, want %q", d.name, err, d.want)
			}
			if err := Require(first); err != nil {
				return err
			}
			if err := CheckRequired(first); err != nil {
				t.Errorf("after %s, Require did not repair: %v", d.name, err)
			}
			return nil
		})
	}
}

// A bridge learns the source MAC of an LLDP frame before its netfilter
// hooks; NoLinkLocalLearning stops it, and noLinkLocalLearning reads it.
func TestNoLinkLocalLearning(t *testing.T) {
	node, cont := bridgedContainer(t)
	var brIndex int
	inNode(t, node, func() error {
		br, err := net.InterfaceByName("br0")
		brIndex = br.Index
		return err
	})
	// learned reports whether, within a second of an LLDP frame from
	// mac, the bridge has mac on hv.
	learned := func(mac net.HardwareAddr) bool {
		sendOnEth0(t, cont, to("01:80:c2:00:00:0e", eth(mac, 0x88cc, make([]byte, 46))))
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			out, _ := testenv.InNS(node, "bridge", "fdb", "show", "br", "br0")
			if strings.Contains(string(out), mac.String()+" dev hv") {
				return true
			}
		}
		return false
	}
	var on bool
	inNode(t, node, func() (err error) { on, err = noLinkLocalLearning(brIndex); return err })
	if on {
		t.Fatal("a new bridge has no_linklocal_learn on already")
	}
	if !learned(otherMAC) {
		t.Fatal("a new bridge learned no MAC from an LLDP frame: the bed cannot show the option's effect")
	}
	inNode(t, node, func() error { return NoLinkLocalLearning(brIndex) })
	inNode(t, node, func() (err error) { on, err = noLinkLocalLearning(brIndex); return err })
	if !on {
		t.Error("after NoLinkLocalLearning, the bridge still learns from link-local frames")
	}
	if learned(farMAC) {
		t.Error("after NoLinkLocalLearning, the bridge learned a MAC from an LLDP frame")
	}
}

// bridgedContainer is a node with bridge br0 (10.70.0.1/24) and a
// container (eth0: ownMAC, 10.70.0.2/24) whose host veth hv is its port.
func bridgedContainer(t *testing.T) (node, cont ns.NetNS) {
	testenv.RequireRoot(t)
	node, cont = testenv.NewNS(t), testenv.NewNS(t)
	testenv.Link(t, cont, "eth0", "10.70.0.2/24", node, "hv", "")
	for _, cmd := range [][]string{
		{"ip", "link", "add", "br0", "type", "bridge"},
		{"ip", "addr", "add", "10.70.0.1/24", "dev", "br0"},
		{"ip", "link", "set", "br0", "up"},
		{"ip", "link", "set", "hv", "master", "br0"},
	} {
		mustRun(t, node, cmd...)
	}
	mustRun(t, cont, "ip", "link", "set", "eth0", "address", ownMAC.String())
	return node, cont
}

// arrivals sends 40 UDP packets from src (with ownMAC) in cont to
// 10.70.0.1:9 in node, at the MAC to, and counts those that arrive.
func arrivals(t *testing.T, node, cont ns.NetNS, to net.HardwareAddr, src string) int {
	t.Helper()
	var sock *net.UDPConn
	inNode(t, node, func() (err error) {
		sock, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 70, 0, 1), Port: 9})
		return err
	})
	defer sock.Close()
	var frames [][]byte
	for i := range 40 {
		frame := eth(ownMAC, 0x0800, udp4(src, "10.70.0.1", fmt.Sprintf("m%02d", i)))
		copy(frame, to)
		frames = append(frames, frame)
	}
	sendOnEth0(t, cont, frames...)
	// Each read waits up to a second: a loaded machine (CI) may take a
	// while to hand the packets over.
	n, buf := 0, make([]byte, 64)
	for n < len(frames) {
		sock.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := sock.Read(buf); err != nil {
			break
		}
		n++
	}
	return n
}

// sendOnEth0 sends frames out of eth0 in n, through an AF_PACKET socket.
func sendOnEth0(t *testing.T, n ns.NetNS, frames ...[]byte) {
	t.Helper()
	inNode(t, n, func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		eth0, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: eth0.Index, Halen: 6}); err != nil {
				return err
			}
		}
		return nil
	})
}

func inNode(t *testing.T, n ns.NetNS, f func() error) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

func mustRun(t *testing.T, n ns.NetNS, cmd ...string) {
	t.Helper()
	if out, err := testenv.InNS(n, cmd[0], cmd[1:]...); err != nil {
		t.Fatalf("%v: %v\n%s", cmd, err, out)
	}
}
