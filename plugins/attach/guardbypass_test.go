package attach_test

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/testenv"
)

// A container with CAP_NET_ADMIN in its own namespace can make an ifb
// device there and redirect its eth0's egress to it. ifb hands a frame
// back marked tc_skip_classify, veth keeps the mark across the pair, and
// the host veth's receive path then skips TCX, tc and netfilter's netdev
// ingress: every place the source guard could sit. Whatever berth does
// about it, forged frames sent this way must not reach another container,
// move its FDB entry or rewrite the node's neighbour entry of it, while
// the attacker's own traffic still flows.

// perKind is how many frames of each kind the attacker sends. The trick
// keeps the flag on about a quarter of them (testenv.IfbTrick): 40 make
// "none got through" mean something (0.75^40 is about 1e-5) and cost
// little time.
const perKind = 40

func TestSourceGuardIfbBypass(t *testing.T) {
	egress := map[string]any{"bandwidth": map[string]any{"egressRate": 10e6, "egressBurst": 2e6}}
	for i, c := range []struct {
		name  string
		berth string         // fields spliced into berth-bridge's config
		chain string         // plugins chained after berth-bridge
		caps  map[string]any // the attacker's capability args
		// iptablesOnly, when set, says why the case cannot run on the
		// eBPF datapath.
		iptablesOnly string
	}{
		{name: "plain"},
		// berth's own egress limit redirects what the host veth
		// receives to an ifb of the node's, which hands it back
		// flagged too: a second ifb, after the guard.
		{
			name: "berth bandwidth egress", berth: `"capabilities":{"bandwidth":true},`, caps: egress,
			iptablesOnly: "the eBPF datapath refuses a bandwidth limit (error 7: its programs bypass tc shaping)",
		},
		// The reference plugin does the same with its own ingress
		// qdisc, which needs the guard on TCX.
		{
			name:  "reference bandwidth egress",
			berth: `"guardHook":"tcx",`,
			chain: `,{"type":"bandwidth","capabilities":{"bandwidth":true}}`,
			caps:  egress,
			iptablesOnly: "the eBPF datapath refuses guardHook and a reference bandwidth plugin after berth " +
				"(TestInteropReferenceBandwidthAfterBerthBridge)",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.iptablesOnly != "" && testenv.Datapath() == "ebpf" {
				t.Skip(c.iptablesOnly)
			}
			if c.chain != "" {
				testenv.ReferenceCNIDir(t, "bandwidth")
			}
			ifbBypass(t, 105+i, c.berth, c.chain, c.caps)
		})
	}
}

// ifbBypass runs the attack on a fresh node whose network has the
// subnets 10.<net>.0.0/24 and (iptables datapath) fd00:<net>::/64.
func ifbBypass(t *testing.T, net4 int, berth, chain string, caps map[string]any) {
	n := newNode(t)
	dual := n.bpffs == "" // the eBPF datapath is IPv4 only
	ranges := fmt.Sprintf(`[{"subnet":"10.%d.0.0/24"}]`, net4)
	if dual {
		ranges += fmt.Sprintf(`,[{"subnet":"fd00:%d::/64"}]`, net4)
	}
	// cniVersion 1.0.0: what the reference plugins of Debian speak.
	list := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"ifbbypass","plugins":[
		{"type":"berth-bridge","bridge":"berth0","isDefaultGateway":true,"stateDir":%q,%s%s
		 "ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[%s]}}%s]}`,
		n.stateDir, n.datapath(), berth, n.dataDir, ranges, chain)
	rt := testenv.NewRuntime(t, n.ns, list)
	empty := n.snapshot(t)

	vic := newGuardPeer(t, rt, "victim")
	// Taken with the victim there, so that what the network itself keeps
	// until its last container goes does not count against the attacker's
	// DEL; nftables too, where a layer against this attack may keep
	// per-attachment state.
	withVictim := attachmentState(t, n)
	att := &guardPeer{a: container(t, "attacker")}
	att.a.Caps = caps
	res := rt.MustAdd(t, att.a)
	t.Cleanup(func() { rt.Del(att.a) })
	att.hostVeth = res.Interfaces[1].Name
	att.ip4, _ = netip.ParseAddr(addrOf(res, false))
	att.ip6, _ = netip.ParseAddr(addrOf(res, true))
	att.mac, _ = net.ParseMAC(containerIf(res).Mac)

	gw := netip.MustParseAddr(fmt.Sprintf("10.%d.0.1", net4))
	brMAC := linkMAC(t, n.ns, "berth0")
	// Without a lock time the node takes any ARP reply at once: a forged
	// one that got through shows, whatever the timing.
	mustRun(t, n.ns, "sysctl", "-qw", "net.ipv4.neigh.berth0.locktime=0")
	// The entries the attack would rewrite: the node's neighbour entry of
	// the victim, and the bridge's FDB entry of the victim's MAC (learnt
	// from the replies). Before the trick, which would lose a quarter of
	// the attacker's own packets.
	if err := testenv.Ping(n.ns, vic.ip4.String()); err != nil {
		t.Fatal(err)
	}
	if err := testenv.Ping(att.a.Netns, vic.ip4.String()); err != nil {
		t.Fatal(err)
	}
	if mac := neighMAC(t, n.ns, vic.ip4); mac != vic.mac.String() {
		t.Fatalf("before the attack, the node's neighbour entry for the victim is %q, want %s", mac, vic.mac)
	}
	if port := fdbPort(t, n.ns, vic.mac); port != vic.hostVeth {
		t.Fatalf("before the attack, the bridge has the victim's MAC on %q, want %s", port, vic.hostVeth)
	}

	testenv.IfbTrick(t, att.a.Netns)

	rx, _ := rawSocket(t, vic.a.Netns)
	// Every frame goes out through the trick; sent counts them.
	var sent uint64
	plain, marked := frameSender(t, att.a.Netns, 0), frameSender(t, att.a.Netns, -1)
	send := func(frame []byte) { sent++; plain(frame) }
	// sendMarked sends with every bit of the socket's mark set: a mark
	// the sender chose must not stand for one the node's guard set.
	sendMarked := func(frame []byte) { sent++; marked(frame) }
	// sendKind sends count frames of a kind, each with its own marker,
	// and returns the markers; arrived counts those the victim receives.
	sendKind := func(kind string, count int, frame func(marker string) []byte, send func([]byte)) []string {
		var markers []string
		for i := range count {
			m := fmt.Sprintf("m-%s-%02d;", kind, i)
			send(frame(m))
			markers = append(markers, m)
		}
		return markers
	}
	arrived := func(markers []string) int { return len(received(rx, 300*time.Millisecond, markers)) }
	// victimSpeaks undoes a move of the victim's FDB entry, whatever
	// moved it: the bridge learns the victim's port again from its ping.
	victimSpeaks := func() {
		t.Helper()
		if err := testenv.Ping(vic.a.Netns, gw.String()); err != nil {
			t.Fatal(err)
		}
		if port := fdbPort(t, n.ns, vic.mac); port != vic.hostVeth {
			t.Fatalf("after the victim's ping, the bridge has the victim's MAC on %q, want %s", port, vic.hostVeth)
		}
	}
	redirected := ifbTxPackets(t, att.a.Netns)

	// The victim's MAC as source, to the link-local LLDP address (which
	// the bridge learns from without passing it to netfilter) and to a
	// unicast address no port has (flooded, so the victim would see it):
	// the bridge must keep the victim's MAC on the victim's port, or it
	// sends the victim's traffic to the attacker. Checked at once, before
	// the victim sends anything (an ARP request, an ICMP error) that
	// would move it back; and first, so that a move is not hidden by
	// the victim's reactions to the frames further down. Each kind on
	// its own: the victim speaks after each.
	for _, d := range []struct {
		name string
		dst  net.HardwareAddr
	}{
		{"lldp", net.HardwareAddr{0x01, 0x80, 0xc2, 0, 0, 0x0e}},
		{"unicast", net.HardwareAddr{0x02, 0x42, 0, 0, 0, 0x99}},
	} {
		markers := sendKind("fdb-"+d.name, perKind, func(m string) []byte { return ethFrame(d.dst, vic.mac, 0x88cc, []byte(m)) }, send)
		if port := fdbPort(t, n.ns, vic.mac); port != vic.hostVeth {
			t.Errorf("frames from the victim's MAC to %s (%s) through the ifb trick: the bridge has the victim's MAC on %q (the attacker's port is %s), want %s",
				d.name, d.dst, port, att.hostVeth, vic.hostVeth)
		}
		if got := arrived(markers); got > 0 {
			t.Errorf("frames from the victim's MAC to %s (%s) through the ifb trick: %d of %d reached the victim, want none", d.name, d.dst, got, perKind)
		}
		victimSpeaks()
	}
	// ARP replies to the node saying the victim's IPv4 is at the
	// attacker's MAC. Before the frames to the victim's IP below: those
	// that got through would make the victim ARP for their forged
	// source, and its requests would set the node's entry right again.
	for range perKind {
		send(ethFrame(brMAC, att.mac, unix.ETH_P_ARP, arpReply(att.mac, vic.ip4, brMAC, gw)))
	}
	time.Sleep(100 * time.Millisecond)
	if mac := neighMAC(t, n.ns, vic.ip4); mac != vic.mac.String() {
		t.Errorf("forged ARP replies through the ifb trick: the node's neighbour entry for the victim %s is %q (the attacker's is %s), want %s",
			vic.ip4, mac, att.mac, vic.mac)
	}

	// The same in IPv6: unsolicited neighbour advertisements (override
	// set) from the attacker's own address, saying the victim's IPv6 is
	// at the attacker's MAC.
	if dual {
		if err := testenv.Ping(n.ns, vic.ip6.String()); err != nil {
			t.Fatal(err)
		}
		if mac := neighMAC(t, n.ns, vic.ip6); mac != vic.mac.String() {
			t.Fatalf("before the attack, the node's neighbour entry for the victim %s is %q, want %s", vic.ip6, mac, vic.mac)
		}
		allNodes := net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
		for range perKind {
			send(ethFrame(allNodes, att.mac, unix.ETH_P_IPV6, na6(att.ip6, vic.ip6, att.mac)))
		}
		time.Sleep(100 * time.Millisecond)
		if mac := neighMAC(t, n.ns, vic.ip6); mac != vic.mac.String() {
			t.Errorf("forged neighbour advertisements through the ifb trick: the node's neighbour entry for the victim %s is %q (the attacker's is %s), want %s",
				vic.ip6, mac, att.mac, vic.mac)
		}
	}

	// Whatever got through is undone, so that the frames below find the
	// victim where it is: the node learns its MAC anew from its ping (the
	// ping's replies need it).
	mustRun(t, n.ns, "ip", "neigh", "del", vic.ip4.String(), "dev", "berth0")
	victimSpeaks()

	forged4 := netip.MustParseAddr(fmt.Sprintf("10.%d.0.200", net4))
	forgedMAC := net.HardwareAddr{0x02, 0x66, 0x66, 0x66, 0x66, 0x66}
	type kind struct {
		name  string
		frame func(marker string) []byte
		send  func([]byte)
	}
	forgedIP4 := func(m string) []byte { return ethFrame(vic.mac, att.mac, unix.ETH_P_IP, udp4(forged4, vic.ip4, m)) }
	own := []kind{
		{"own4", func(m string) []byte { return ethFrame(vic.mac, att.mac, unix.ETH_P_IP, udp4(att.ip4, vic.ip4, m)) }, send},
	}
	forged := []kind{
		{"ip4", forgedIP4, send},
		{"mac", func(m string) []byte { return ethFrame(vic.mac, forgedMAC, unix.ETH_P_IP, udp4(att.ip4, vic.ip4, m)) }, send},
		{"ip4-marked", forgedIP4, sendMarked},
	}
	if dual {
		forged6 := netip.MustParseAddr(fmt.Sprintf("fd00:%d::c8", net4))
		own = append(own, kind{"own6", func(m string) []byte {
			return ethFrame(vic.mac, att.mac, unix.ETH_P_IPV6, udp6(att.ip6, vic.ip6, m))
		}, send})
		forged = append(forged, kind{"ip6", func(m string) []byte {
			return ethFrame(vic.mac, att.mac, unix.ETH_P_IPV6, udp6(forged6, vic.ip6, m))
		}, send})
	}
	// The control: the attacker's own frames, through the same trick,
	// must flow, or "nothing forged arrived" proves nothing. Frames the
	// trick leaves unflagged meet the guard as usual; the flagged ones a
	// defence may drop (they skipped the guard): most must arrive, not
	// all. Twice as many as of the other kinds, so that a quarter lost
	// falls short of half only once in millions of runs.
	const ownCount = 2 * perKind
	for _, k := range own {
		got := arrived(sendKind(k.name, ownCount, k.frame, k.send))
		t.Logf("own frames (%s) through the ifb trick that reached the victim: %d of %d", k.name, got, ownCount)
		if got < ownCount/2 {
			t.Errorf("own frames (%s) through the ifb trick: %d of %d reached the victim, want at least %d", k.name, got, ownCount, ownCount/2)
		}
	}
	for _, k := range forged {
		got := arrived(sendKind(k.name, perKind, k.frame, k.send))
		t.Logf("forged frames (%s) through the ifb trick that reached the victim: %d of %d", k.name, got, perKind)
		if got > 0 {
			t.Errorf("forged frames (%s) through the ifb trick: %d of %d reached the victim, want none", k.name, got, perKind)
		}
	}

	// The trick took effect: ifb0 handed frames back (about half of all
	// sent; a quarter keep the flag).
	if r := ifbTxPackets(t, att.a.Netns) - redirected; r < sent/4 {
		t.Errorf("ifb0 handed back %d of %d frames: the trick did not take effect", r, sent)
	} else {
		t.Logf("ifb0 handed back %d of %d frames", r, sent)
	}

	// Whatever berth does against the attack is still in place: CHECK
	// passes, and DEL takes it all away.
	if err := rt.Check(att.a); err != nil {
		t.Errorf("CHECK of the attacker: %v", err)
	}
	if err := rt.Del(att.a); err != nil {
		t.Fatalf("DEL of the attacker: %v", err)
	}
	if after := attachmentState(t, n); after != withVictim {
		t.Errorf("left after the attacker's DEL:\n%s", testenv.Diff(withVictim, after))
	}
	if err := rt.Del(vic.a); err != nil {
		t.Fatalf("DEL of the victim: %v", err)
	}
	n.checkNothingLeft(t, empty, "berth0")
}

// attachmentState is n's snapshot and nftState: what a container's ADD
// and DEL would leave behind.
func attachmentState(t *testing.T, n *node) string {
	t.Helper()
	return n.snapshot(t) + nftState(t, n.ns)
}

// frameSender is a function sending frames as they are out of eth0 in n,
// through one AF_PACKET socket (sendFrame opens one per frame) whose
// SO_MARK is mark unless 0.
func frameSender(t *testing.T, n ns.NetNS, mark int) func(frame []byte) {
	t.Helper()
	fd, ifindex := rawSocket(t, n)
	if mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, mark); err != nil {
			t.Fatal(err)
		}
	}
	// The socket sees every frame on eth0 too: no need to queue them.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 0)
	return func(frame []byte) {
		t.Helper()
		if err := unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6}); err != nil {
			t.Fatalf("sending a raw frame: %v", err)
		}
	}
}

// ifbTxPackets is how many frames ifb0 in n has handed back.
func ifbTxPackets(t *testing.T, n ns.NetNS) uint64 {
	t.Helper()
	var tx uint64
	err := n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("ifb0")
		if err == nil && l.Attrs().Statistics != nil {
			tx = l.Attrs().Statistics.TxPackets
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return tx
}

// nftState lists n's nftables tables, chains, their number of rules, and
// the elements of every set, one a line, sorted: what an attachment's
// leftovers there would change. (testenv.Snapshot covers iptables only.)
func nftState(t *testing.T, n ns.NetNS) string {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(n.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatalf("listing nftables tables: %v", err)
	}
	var lines []string
	for _, tb := range tables {
		id := fmt.Sprintf("nft %d %s", tb.Family, tb.Name)
		lines = append(lines, id)
		chains, err := c.ListChainsOfTableFamily(tb.Family)
		if err != nil {
			t.Fatalf("listing nftables chains: %v", err)
		}
		for _, ch := range chains {
			if ch.Table.Name != tb.Name {
				continue
			}
			rules, err := c.GetRules(tb, ch)
			if err != nil {
				t.Fatalf("listing nftables rules: %v", err)
			}
			lines = append(lines, fmt.Sprintf("%s chain %s: %d rules", id, ch.Name, len(rules)))
		}
		sets, err := c.GetSets(tb)
		if err != nil {
			t.Fatalf("listing nftables sets: %v", err)
		}
		for _, s := range sets {
			lines = append(lines, fmt.Sprintf("%s set %s", id, s.Name))
			elems, err := c.GetSetElements(s)
			if err != nil {
				t.Fatalf("listing the elements of nftables set %s: %v", s.Name, err)
			}
			for _, e := range elems {
				lines = append(lines, fmt.Sprintf("%s set %s element %s %q", id, s.Name, hex.EncodeToString(e.Key), strings.TrimRight(string(e.Key), "\x00")))
			}
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}
