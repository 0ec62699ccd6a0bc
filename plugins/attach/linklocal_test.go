package attach_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/testenv"
)

// A bridge hands a frame for a link-local group address
// (01:80:c2:00:00:0X) up on the port it came in on: to the node's own
// stack with the host veth as its interface, past every rule that names
// the bridge, and LLDP's (:0e) past the bridge's netfilter hooks too. The
// guard drops a container's frames to those addresses; those a container
// gets past the guard (the ifb trick, guardbypass_test.go) meet the host
// veth's closed stack (rp_filter, disable_ipv6). Either way nothing
// reaches the node's sockets, while the same packets to the bridge's MAC
// do when their source is the container's own.
func TestSourceGuardLinkLocalGroups(t *testing.T) {
	n := newNode(t)
	dual := n.bpffs == "" // the eBPF datapath is IPv4 only
	ranges := `[{"subnet":"10.83.0.0/24"}]`
	if dual {
		ranges += `,[{"subnet":"fd00:83::/64"}]`
	}
	rt := testenv.NewRuntime(t, n.ns, fmt.Sprintf(`{"cniVersion":"1.0.0","name":"llgroups","plugins":[
		{"type":"berth-bridge","bridge":"berth0","isDefaultGateway":true,"stateDir":%q,%s
		 "ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[%s]}}]}`, n.stateDir, n.datapath(), n.dataDir, ranges))
	att := newGuardPeer(t, rt, "attacker")
	const node6 = "2001:db8:83::2"
	testenv.AddAddr(t, n.ns, "eth0", node6+"/64")
	sink := newUDPSink(t, n.ns)
	brMAC := linkMAC(t, n.ns, "berth0")
	lldp, pae := net.HardwareAddr{1, 0x80, 0xc2, 0, 0, 0x0e}, net.HardwareAddr{1, 0x80, 0xc2, 0, 0, 0x03}
	node4 := netip.MustParseAddr(nodeIP)
	far4, far6 := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("2001:db8:66::7")
	to6 := func(src netip.Addr, m string) []byte { return udp6sum(src, netip.MustParseAddr(node6), m) }

	type frames struct {
		name string
		v6   bool
		make func(m string) []byte
	}
	// send sends 40 frames of each kind from the attacker and returns
	// how many of each reached the node.
	send := func(tag string, kinds []frames) map[string]int {
		got := map[string]int{}
		for _, k := range kinds {
			if k.v6 && !dual {
				continue
			}
			for i := range 40 {
				sendFrame(t, att.a.Netns, k.make(fmt.Sprintf("%s/%s/%02d", tag, k.name, i)))
			}
		}
		sink.settle()
		for _, k := range kinds {
			if !k.v6 || dual {
				got[k.name] = sink.count(tag + "/" + k.name + "/")
				t.Logf("%s: %s: %d of 40 reached the node", tag, k.name, got[k.name])
			}
		}
		return got
	}
	own := []frames{
		{"own IPv4 to the bridge's MAC", false, func(m string) []byte { return ethFrame(brMAC, att.mac, unix.ETH_P_IP, udp4(att.ip4, node4, m)) }},
		{"own IPv6 to the bridge's MAC", true, func(m string) []byte { return ethFrame(brMAC, att.mac, unix.ETH_P_IPV6, to6(att.ip6, m)) }},
		{"own IPv4 to LLDP's group", false, func(m string) []byte { return ethFrame(lldp, att.mac, unix.ETH_P_IP, udp4(att.ip4, node4, m)) }},
		{"own IPv4 to 802.1X's group", false, func(m string) []byte { return ethFrame(pae, att.mac, unix.ETH_P_IP, udp4(att.ip4, node4, m)) }},
		{"own IPv6 to LLDP's group", true, func(m string) []byte { return ethFrame(lldp, att.mac, unix.ETH_P_IPV6, to6(att.ip6, m)) }},
	}
	got := send("plain", own)
	for _, k := range own {
		want := 0
		if strings.Contains(k.name, "bridge's MAC") {
			want = 40 // the control: the sink hears the container
		}
		if c, ok := got[k.name]; ok && c != want {
			t.Errorf("%s: %d of 40 reached the node, want %d", k.name, c, want)
		}
	}

	testenv.IfbTrick(t, att.a.Netns)
	forged := []frames{
		{"forged IPv4 to LLDP's group", false, func(m string) []byte { return ethFrame(lldp, att.mac, unix.ETH_P_IP, udp4(far4, node4, m)) }},
		{"forged IPv6 to LLDP's group", true, func(m string) []byte { return ethFrame(lldp, att.mac, unix.ETH_P_IPV6, to6(far6, m)) }},
		{"forged IPv4 to 802.1X's group", false, func(m string) []byte { return ethFrame(pae, att.mac, unix.ETH_P_IP, udp4(far4, node4, m)) }},
		// The control: what went through the guard arrives.
		{"own IPv4 to the bridge's MAC", false, func(m string) []byte { return ethFrame(brMAC, att.mac, unix.ETH_P_IP, udp4(att.ip4, node4, m)) }},
	}
	got = send("ifb", forged)
	for name, c := range got {
		switch {
		case strings.HasPrefix(name, "own") && c < 20:
			t.Errorf("through the ifb trick, %s: %d of 40 reached the node, want those the guard saw", name, c)
		case strings.HasPrefix(name, "forged") && c != 0:
			t.Errorf("through the ifb trick, %s: %d of 40 reached the node, want none", name, c)
		}
	}
}

// udp6sum is udp6 with its checksum, which a socket asks for.
func udp6sum(src, dst netip.Addr, marker string) []byte {
	p := udp6(src, dst, marker)
	u := p[40:]
	pseudo := append(append(append([]byte{}, src.AsSlice()...), dst.AsSlice()...), 0, 0, 0, 0, 0, 0, 0, unix.IPPROTO_UDP)
	binary.BigEndian.PutUint32(pseudo[32:], uint32(len(u)))
	binary.BigEndian.PutUint16(u[6:], checksum(append(pseudo, u...)))
	return p
}

// udpSink records the markers that reach UDP port 9 (udp4's, udp6's) of
// the node, in both families.
type udpSink struct {
	mu  sync.Mutex
	got []string
}

func newUDPSink(t *testing.T, n ns.NetNS) *udpSink {
	t.Helper()
	s := &udpSink{}
	for _, network := range []string{"udp4", "udp6"} {
		var c net.PacketConn
		err := n.Do(func(ns.NetNS) (err error) {
			c, err = net.ListenPacket(network, ":9")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go func() {
			buf := make([]byte, 256)
			for {
				k, _, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				s.mu.Lock()
				s.got = append(s.got, string(buf[:k]))
				s.mu.Unlock()
			}
		}()
	}
	return s
}

// settle waits until nothing has arrived for 300 ms (3 s at most): a
// loaded machine may take a while to hand the packets over.
func (s *udpSink) settle() {
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
		s.mu.Lock()
		before := len(s.got)
		s.mu.Unlock()
		time.Sleep(300 * time.Millisecond)
		s.mu.Lock()
		after := len(s.got)
		s.mu.Unlock()
		if after == before {
			return
		}
	}
}

// count is how many markers that start with prefix arrived.
func (s *udpSink) count(prefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := 0
	for _, m := range s.got {
		if strings.HasPrefix(m, prefix) {
			k++
		}
	}
	return k
}
