package attach_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/testenv"
)

// The node's and the outside world's IPv6 addresses on their link.
const nodeIP6, outsideIP6 = "2001:db8:2::2", "2001:db8:2::1"

// newDualNode is newNode with IPv6 on the node's link to the outside.
func newDualNode(t *testing.T) *node {
	n := newNode(t)
	testenv.AddAddr(t, n.ns, "eth0", nodeIP6+"/64")
	testenv.AddAddr(t, n.outside, "eth0", outsideIP6+"/64")
	return n
}

// conflistRanges is conflist with one range set per subnet given (one
// address of each family).
func (n *node) conflistRanges(name, bridge string, subnets []string, extra string) string {
	var sets []string
	for _, s := range subnets {
		sets = append(sets, fmt.Sprintf(`[{"subnet":%q}]`, s))
	}
	return fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"berth-bridge","bridge":%q,
		"isDefaultGateway":true,"stateDir":%q,%s
		"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[%s]},
		"capabilities":{"portMappings":true,"ips":true,"mac":true}}]}`,
		name, bridge, n.stateDir, extra, n.dataDir, strings.Join(sets, ","))
}

// addrOf is the container's address of one family in res ("" if none).
func addrOf(res *current.Result, ipv6 bool) string {
	for _, ipc := range res.IPs {
		if (ipc.Address.IP.To4() == nil) == ipv6 {
			return ipc.Address.IP.String()
		}
	}
	return ""
}

func hostPort(ip string, port int) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }

// stackCases are the networks every IPv6 guarantee is tested on.
var stackCases = []struct {
	name    string
	subnets []string
	ipv4    bool
}{
	{"dual-stack", []string{"10.110.0.0/24", "fd00:110::/64"}, true},
	{"IPv6-only", []string{"fd00:111::/64"}, false},
}

// Everything the IPv4 datapath does, over IPv6: containers reach each
// other keeping their source, leave masqueraded, are reached on published
// ports from every side, and leave nothing behind.
func TestIPv6EndToEnd(t *testing.T) {
	for _, sc := range stackCases {
		t.Run(sc.name, func(t *testing.T) {
			n := newDualNode(t)
			rt := testenv.NewRuntime(t, n.ns, n.conflistRanges("e2e6", "berth0", sc.subnets, ""))
			before := n.snapshot(t)
			c1, c2 := container(t, "c1", port(8080, 80, "tcp")), container(t, "c2")
			r1, r2 := rt.MustAdd(t, c1), rt.MustAdd(t, c2)
			ip1, ip2, gw := addrOf(r1, true), addrOf(r2, true), r1.IPs[len(r1.IPs)-1].Gateway.String()
			if ip1 == "" || ip2 == "" || (addrOf(r1, false) != "") != sc.ipv4 {
				t.Fatalf("addresses: %+v %+v", r1.IPs, r2.IPs)
			}
			testenv.Serve(t, c1.Netns, "[::]:80") // both families
			testenv.Serve(t, c2.Netns, "[::]:80")
			testenv.Serve(t, n.outside, hostPort(outsideIP6, 9000))

			t.Run("containers reach each other and the gateway over IPv6", func(t *testing.T) {
				for _, c := range []struct {
					from ns.NetNS
					to   string
				}{{c1.Netns, ip2}, {c2.Netns, ip1}, {c1.Netns, gw}} {
					if err := testenv.Ping(c.from, c.to); err != nil {
						t.Error(err)
					}
				}
				if src, err := testenv.Dial(c2.Netns, hostPort(ip1, 80)); err != nil || src != ip2 {
					t.Errorf("c1 saw %q, %v; want c2's own address %s", src, err, ip2)
				}
			})
			t.Run("IPv6 forwarding is on in the node", func(t *testing.T) {
				out, _ := testenv.InNS(n.ns, "sysctl", "-n", "net.ipv6.conf.all.forwarding")
				if strings.TrimSpace(string(out)) != "1" {
					t.Errorf("net.ipv6.conf.all.forwarding = %s", out)
				}
			})
			t.Run("outbound IPv6 leaves masqueraded with the node address", func(t *testing.T) {
				if err := testenv.Ping(c2.Netns, outsideIP6); err != nil {
					t.Error(err)
				}
				src, err := testenv.Dial(c2.Netns, hostPort(outsideIP6, 9000))
				if err != nil || src != nodeIP6 {
					t.Errorf("outside saw %q, %v; want %s", src, err, nodeIP6)
				}
			})
			t.Run("published port answers on the node's IPv6 address", func(t *testing.T) {
				src, err := testenv.Dial(n.outside, hostPort(nodeIP6, 8080))
				if err != nil || src != outsideIP6 {
					t.Errorf("container saw %q, %v; want the client %s unchanged", src, err, outsideIP6)
				}
				if _, err := testenv.Dial(n.ns, hostPort(nodeIP6, 8080)); err != nil {
					t.Errorf("from the node itself: %v", err)
				}
			})
			t.Run("published port from another container and from itself (hairpin)", func(t *testing.T) {
				if _, err := testenv.Dial(c2.Netns, hostPort(nodeIP6, 8080)); err != nil {
					t.Errorf("neighbour: %v", err)
				}
				if _, err := testenv.Dial(c1.Netns, hostPort(nodeIP6, 8080)); err != nil {
					t.Errorf("hairpin: %v", err)
				}
			})
			t.Run("[::1] is refused at once, not left hanging", func(t *testing.T) {
				start := time.Now()
				_, err := testenv.Dial(n.ns, "[::1]:8080")
				if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > time.Second {
					t.Errorf("dial [::1]:8080: %v after %v, want connection refused at once", err, time.Since(start))
				}
			})
			if sc.ipv4 {
				t.Run("IPv4 still works on the dual-stack network", func(t *testing.T) {
					if _, err := testenv.Dial(n.outside, hostPort(nodeIP, 8080)); err != nil {
						t.Error(err)
					}
					if err := testenv.Ping(c1.Netns, addrOf(r2, false)); err != nil {
						t.Error(err)
					}
				})
			}
			t.Run("CHECK passes", func(t *testing.T) {
				for _, c := range []*testenv.Attachment{c1, c2} {
					if err := rt.Check(c); err != nil {
						t.Error(err)
					}
				}
			})
			t.Run("DEL leaves nothing behind, ip6tables included", func(t *testing.T) {
				for _, c := range []*testenv.Attachment{c1, c2, c1} {
					if err := rt.Del(c); err != nil {
						t.Fatalf("DEL %s: %v", c.ID, err)
					}
				}
				if after := n.snapshot(t); after != before {
					t.Errorf("leftovers:\n%s", testenv.Diff(before, after))
				}
			})
		})
	}
}

// Port mappings on specific addresses: :: is every IPv6 address only,
// 0.0.0.0 every IPv4 one, an IPv6 address that address only.
func TestIPv6HostIPs(t *testing.T) {
	n := newDualNode(t)
	testenv.AddAddr(t, n.ns, "eth0", "2001:db8:2::3/64") // a second node address
	rt := testenv.NewRuntime(t, n.ns, n.conflistRanges("hostip6", "berth0", stackCases[0].subnets, ""))
	c := container(t, "h1",
		map[string]any{"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": "::"},
		map[string]any{"hostPort": 8082, "containerPort": 80, "protocol": "tcp", "hostIP": "0.0.0.0"},
		map[string]any{"hostPort": 8083, "containerPort": 80, "protocol": "tcp", "hostIP": nodeIP6})
	if _, err := rt.Add(c); err != nil {
		t.Fatal(err)
	}
	defer rt.Del(c)
	testenv.Serve(t, c.Netns, "[::]:80")
	for _, tc := range []struct {
		addr  string
		works bool
	}{
		{hostPort(nodeIP6, 8081), true}, {hostPort(nodeIP, 8081), false},
		{hostPort(nodeIP, 8082), true}, {hostPort(nodeIP6, 8082), false},
		{hostPort(nodeIP6, 8083), true}, {hostPort("2001:db8:2::3", 8083), false},
	} {
		_, err := testenv.Dial(n.outside, tc.addr)
		if (err == nil) != tc.works {
			t.Errorf("dial %s: %v, want it to work: %v", tc.addr, err, tc.works)
		}
	}
	// The claims know the families: :: on 8081 does not stop 0.0.0.0 on
	// 8081 for another container, but stops "" (both families).
	other := testenv.NewRuntime(t, n.ns, n.conflistRanges("hostip6b", "berth1", []string{"10.112.0.0/24", "fd00:112::/64"}, ""))
	v4only := container(t, "h2", map[string]any{"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": "0.0.0.0"})
	if _, err := other.Add(v4only); err != nil {
		t.Errorf("0.0.0.0:8081 next to [::]:8081: %v", err)
	} else {
		other.Del(v4only)
	}
	both := container(t, "h3", port(8081, 80, "tcp"))
	var ce *types.Error
	if _, err := other.Add(both); !errors.As(err, &ce) || ce.Code != 102 {
		t.Errorf("*:8081 next to [::]:8081: %v, want code 102", err)
		other.Del(both)
	}
}

// Isolation holds over IPv6: another berth network cannot reach an
// isolated one (ping6 or TCP), a non-isolated one neither, and the
// isolated network still reaches the outside.
func TestIPv6IsolationBetweenNetworks(t *testing.T) {
	for _, sc := range stackCases {
		t.Run(sc.name, func(t *testing.T) {
			n := newDualNode(t)
			six := func(i int) []string {
				s := []string{fmt.Sprintf("fd00:12%d::/64", i)}
				if sc.ipv4 {
					s = append([]string{fmt.Sprintf("10.12%d.0.0/24", i)}, s...)
				}
				return s
			}
			a := testenv.NewRuntime(t, n.ns, n.conflistRanges("iso6-a", "berth-a", six(0), ""))
			b := testenv.NewRuntime(t, n.ns, n.conflistRanges("iso6-b", "berth-b", six(1), ""))
			open := testenv.NewRuntime(t, n.ns, n.conflistRanges("iso6-c", "berth-c", six(2), `"isolation":false,`))
			ca, cb, cc := container(t, "a1"), container(t, "b1"), container(t, "c1")
			var res []*current.Result
			for _, x := range []struct {
				rt *testenv.Runtime
				c  *testenv.Attachment
			}{{a, ca}, {b, cb}, {open, cc}} {
				r, err := x.rt.Add(x.c)
				if err != nil {
					t.Fatal(err)
				}
				res = append(res, r)
				defer x.rt.Del(x.c)
			}
			ipA, ipB, ipC := addrOf(res[0], true), addrOf(res[1], true), addrOf(res[2], true)
			for _, c := range []*testenv.Attachment{ca, cb, cc} {
				testenv.Serve(t, c.Netns, "[::]:80")
			}
			for _, blocked := range []struct {
				from ns.NetNS
				to   string
				what string
			}{
				{ca.Netns, ipB, "net-a to net-b"}, {cb.Netns, ipA, "net-b to net-a"},
				{cc.Netns, ipA, "a non-isolated network to an isolated one"},
			} {
				if err := testenv.Ping(blocked.from, blocked.to); err == nil {
					t.Errorf("ping6 %s got through", blocked.what)
				}
				if _, err := testenv.Dial(blocked.from, hostPort(blocked.to, 80)); err == nil {
					t.Errorf("TCP %s got through", blocked.what)
				}
			}
			// "isolation": false lets the others in.
			if _, err := testenv.Dial(ca.Netns, hostPort(ipC, 80)); err != nil {
				t.Errorf("an isolated network cannot reach a non-isolated one: %v", err)
			}
			testenv.Serve(t, n.outside, hostPort(outsideIP6, 9000))
			if _, err := testenv.Dial(ca.Netns, hostPort(outsideIP6, 9000)); err != nil {
				t.Errorf("isolated network cannot reach the outside over IPv6: %v", err)
			}
		})
	}
}

// A container sending IPv6 with a source address that is not its own,
// one it made up or one of another berth network, has the packet dropped
// at the node (IPv6 has no rp_filter: ip6tables' rpfilter match).
func TestIPv6SpoofedSourceDropped(t *testing.T) {
	n := newDualNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflistRanges("spoof6", "berth0", []string{"fd00:93::/64"}, ""))
	other := testenv.NewRuntime(t, n.ns, n.conflistRanges("spoof6b", "berth1", []string{"fd00:94::/64"}, `"isolation":false,`))
	c, o := container(t, "s1"), container(t, "s2")
	rc, err := rt.Add(c)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Del(c)
	ro, err := other.Add(o)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Del(o)
	// The outside and the other network's container count what arrives
	// from each source; every source is routed back to the node, so that
	// only the node can drop the spoofed ones.
	const madeUp, otherNet = "2001:db8:66::6", "fd00:94::99"
	mustRun(t, n.outside, "ip", "-6", "route", "add", "fd00::/8", "via", nodeIP6)
	mustRun(t, n.outside, "ip", "-6", "route", "add", "2001:db8:66::/64", "via", nodeIP6)
	for _, src := range []string{nodeIP6, madeUp, otherNet} {
		mustRun(t, n.outside, "ip6tables", "-A", "INPUT", "-s", src, "-p", "ipv6-icmp", "--icmpv6-type", "echo-request", "-j", "ACCEPT")
	}
	for _, src := range []string{madeUp, otherNet} {
		mustRun(t, o.Netns, "ip6tables", "-A", "INPUT", "-s", src, "-p", "ipv6-icmp", "--icmpv6-type", "echo-request", "-j", "ACCEPT")
		mustRun(t, c.Netns, "ip", "addr", "add", src+"/128", "dev", "eth0", "nodad")
		for _, dst := range []string{outsideIP6, addrOf(ro, true)} {
			testenv.InNS(c.Netns, "ping", "-c", "2", "-W", "1", "-I", src, dst)
		}
	}
	// Control: the container's own address does get out (a few tries: on
	// a link a second old, the first echo may wait for neighbour discovery).
	var out []byte
	for try := 0; try < 3; try++ {
		if out, err = testenv.InNS(c.Netns, "ping", "-c", "1", "-W", "2", "-I", addrOf(rc, true), outsideIP6); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("control: the container's own address does not get out: %v: %s", err, out)
	}
	// Packets counted by each ACCEPT rule, by source.
	counts := func(n ns.NetNS) map[string]int {
		out, _ := testenv.InNS(n, "ip6tables-save", "-c", "-t", "filter")
		m := map[string]int{}
		for _, line := range strings.Split(string(out), "\n") {
			var pkts, bytes int
			var src string
			if _, err := fmt.Sscanf(line, "[%d:%d] -A INPUT -s %s", &pkts, &bytes, &src); err == nil {
				m[strings.TrimSuffix(src, "/128")] = pkts
			}
		}
		return m
	}
	// (From the other network's subnet, a packet that got past the node
	// would leave masqueraded as that network's: the outside cannot tell
	// it, the other container can.)
	got := counts(n.outside)
	if n, ok := got[madeUp]; !ok || n != 0 {
		t.Errorf("spoofed packets from %s reached the outside: %v", madeUp, got)
	}
	if got[nodeIP6] == 0 {
		t.Errorf("control packets (masqueraded to the node) did not arrive: %v", got)
	}
	got = counts(o.Netns)
	for _, src := range []string{madeUp, otherNet} {
		if n, ok := got[src]; !ok || n != 0 {
			t.Errorf("spoofed packets from %s reached the other network's container: %v", src, got)
		}
	}
}

// CHECK finds every kind of IPv6 rule missing, and GC removes the IPv6
// rules and addresses of what it collects.
func TestIPv6CheckAndGC(t *testing.T) {
	n := newDualNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflistRanges("chk6", "berth0", stackCases[0].subnets, ""))
	before := n.snapshot(t)
	ip6tablesDel := func(match func(line string) bool) func(t *testing.T) {
		return func(t *testing.T) {
			out, _ := testenv.InNS(n.ns, "ip6tables-save")
			table := ""
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, "*") {
					table = l[1:]
				}
				if strings.HasPrefix(l, "-A ") && match(l) {
					mustRun(t, n.ns, "sh", "-c", "ip6tables -t "+table+" "+strings.Replace(l, "-A ", "-D ", 1))
					return
				}
			}
			t.Fatalf("no such ip6tables rule:\n%s", out)
		}
	}
	for i, tamper := range []struct {
		name string
		do   func(t *testing.T)
	}{
		{"IPv6 port mapping", ip6tablesDel(func(l string) bool { return strings.HasPrefix(l, "-A BERTH-DN-") })},
		{"IPv6 masquerade", ip6tablesDel(func(l string) bool {
			return strings.HasPrefix(l, "-A BERTH-NAT-") && strings.Contains(l, "MASQUERADE") && !strings.Contains(l, "ctstate")
		})},
		{"IPv6 anti-spoofing", ip6tablesDel(func(l string) bool { return strings.HasPrefix(l, "-A BERTH-RPF-") })},
		{"IPv6 isolation", ip6tablesDel(func(l string) bool { return strings.HasPrefix(l, "-A BERTH-ISD-") })},
		{"IPv6 forward accept", ip6tablesDel(func(l string) bool { return strings.HasPrefix(l, "-A BERTH-FWD-") })},
	} {
		t.Run(tamper.name, func(t *testing.T) {
			c := container(t, fmt.Sprintf("k%d", i), port(9200+i, 80, "tcp"))
			if _, err := rt.Add(c); err != nil {
				t.Fatal(err)
			}
			defer rt.Del(c)
			if err := rt.Check(c); err != nil {
				t.Fatalf("CHECK before: %v", err)
			}
			tamper.do(t)
			var ce *types.Error
			if err := rt.Check(c); !errors.As(err, &ce) || ce.Code != 104 {
				t.Errorf("CHECK after removing the %s rule: %v, want code 104", tamper.name, err)
			}
		})
	}
	keep := container(t, "keep", port(9300, 80, "tcp"))
	stale := container(t, "stale", port(9301, 80, "udp"))
	for _, c := range []*testenv.Attachment{keep, stale} {
		if _, err := rt.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	withKeep := n.snapshot(t)
	if err := rt.GC(keep); err != nil {
		t.Fatal(err)
	}
	if err := rt.Del(keep); err != nil {
		t.Fatal(err)
	}
	if after := n.snapshot(t); after != before {
		t.Errorf("left after GC and the last DEL:\n%s\n(with both containers:\n%s)", testenv.Diff(before, after), testenv.Diff(before, withKeep))
	}
}

// ADD, DEL and GC of dual-stack networks at once: nothing of either
// family is left once every container has gone.
func TestDualStackMixedAddDelGCLeaveNothing(t *testing.T) {
	n := newDualNode(t)
	nets := []*testenv.Runtime{
		testenv.NewRuntime(t, n.ns, n.conflistRanges("mix6a", "berth-a", []string{"10.130.0.0/24", "fd00:130::/64"}, "")),
		testenv.NewRuntime(t, n.ns, n.conflistRanges("mix6b", "berth-b", []string{"fd00:131::/64"}, "")),
	}
	before := n.snapshot(t)
	const rounds, workers = 3, 6
	for r := range rounds {
		stale := container(t, fmt.Sprintf("st%d", r), port(23100+r, 80, "tcp"))
		if _, err := nets[0].Add(stale); err != nil {
			t.Fatal(err)
		}
		live := make([]*testenv.Attachment, workers)
		for i := range live {
			live[i] = container(t, fmt.Sprintf("m%d-%d", r, i), port(23000+i, 80, "tcp"))
		}
		rtOf := func(i int) *testenv.Runtime { return nets[i%2] }
		keep := func(rt *testenv.Runtime) []*testenv.Attachment {
			var out []*testenv.Attachment
			for i, c := range live {
				if rtOf(i) == rt {
					out = append(out, c)
				}
			}
			return out
		}
		errs := parallel(workers+2, func(i int) error {
			switch i {
			case workers:
				return nets[0].GC(keep(nets[0])...)
			case workers + 1:
				return nets[1].GC(keep(nets[1])...)
			}
			if _, err := rtOf(i).Add(live[i]); err != nil {
				return fmt.Errorf("ADD %s: %w", live[i].ID, err)
			}
			return rtOf(i).Check(live[i])
		})
		noErrors(t, fmt.Sprintf("round %d", r), errs)
		noErrors(t, "DEL", parallel(workers, func(i int) error { return rtOf(i).Del(live[i]) }))
		nets[0].Del(stale) // GC may have been first, or not
		if after := n.snapshot(t); after != before {
			t.Fatalf("round %d: left after every container left:\n%s", r, testenv.Diff(before, after))
		}
	}
}

// No container can give the node routes with a router advertisement
// (CVE-2020-10749): berth's bridge accepts none, even on an IPv4-only
// network of a node that does not forward IPv6.
func TestRouterAdvertisementFromContainerIgnored(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("ra", "berth0", "10.140.0.0/24", ""))
	c := container(t, "ra1")
	if _, err := rt.Add(c); err != nil {
		t.Fatal(err)
	}
	defer rt.Del(c)
	// The container's link-local address may still be tentative (DAD):
	// the advertisement goes out once it is not.
	for range 6 {
		if err := sendRouterAdvertisement(c.Netns, "eth0"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	out, _ := testenv.InNS(n.ns, "ip", "-6", "route", "show", "proto", "ra")
	if len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("the node took routes from a container's router advertisement:\n%s", out)
	}
}

// sendRouterAdvertisement sends, from ifName in n, a router advertisement
// offering itself as default router (lifetime 1800s) to every node.
func sendRouterAdvertisement(n ns.NetNS, ifName string) error {
	return n.Do(func(ns.NetNS) error {
		iface, err := net.InterfaceByName(ifName)
		if err != nil {
			return err
		}
		fd, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_RAW, syscall.IPPROTO_ICMPV6)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		// Router advertisements must come with hop limit 255 (RFC 4861).
		if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_IPV6, syscall.IPV6_MULTICAST_HOPS, 255); err != nil {
			return err
		}
		if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_IPV6, syscall.IPV6_MULTICAST_IF, iface.Index); err != nil {
			return err
		}
		// type 134, code 0, checksum (the kernel's), cur hop limit 64,
		// flags 0, router lifetime 1800, reachable 0, retrans 0.
		ra := []byte{134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0}
		all := netip.MustParseAddr("ff02::1").As16()
		err = syscall.Sendto(fd, ra, 0, &syscall.SockaddrInet6{Addr: all, ZoneId: uint32(iface.Index)})
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			return nil // no link-local address yet (DAD): the next try
		}
		return err
	})
}

// A node whose rules are in the legacy backend, Docker-style (FORWARD
// policy DROP in both families): berth writes its rules next to them, so
// that its accepts count, and nothing into nf_tables. Rules in nf_tables
// would be evaluated too, but a legacy DROP policy drops what they accept.
func TestLegacyBackendNode(t *testing.T) {
	for _, tool := range []string{"iptables-legacy", "ip6tables-legacy", "iptables-nft-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	n := newDualNode(t)
	for _, tool := range []string{"iptables-legacy", "ip6tables-legacy"} {
		mustRun(t, n.ns, tool, "-P", "FORWARD", "DROP")
		mustRun(t, n.ns, tool, "-N", "DOCKER-USER")
		mustRun(t, n.ns, tool, "-A", "FORWARD", "-j", "DOCKER-USER")
	}
	rt := testenv.NewRuntime(t, n.ns, n.conflistRanges("legacy", "berth0", stackCases[0].subnets, ""))
	before := n.snapshot(t)
	c1, c2 := container(t, "l1", port(8080, 80, "tcp")), container(t, "l2")
	r1, r2 := rt.MustAdd(t, c1), rt.MustAdd(t, c2)
	testenv.Serve(t, c1.Netns, "[::]:80")
	testenv.Serve(t, n.outside, "[::]:9000")
	for _, ipv6 := range []bool{false, true} {
		node, outside := nodeIP, outsideIP
		if ipv6 {
			node, outside = nodeIP6, outsideIP6
		}
		if src, err := testenv.Dial(c2.Netns, hostPort(addrOf(r1, ipv6), 80)); err != nil || src != addrOf(r2, ipv6) {
			t.Errorf("container to container: %q, %v", src, err)
		}
		if src, err := testenv.Dial(c2.Netns, hostPort(outside, 9000)); err != nil || src != node {
			t.Errorf("to the outside: the outside saw %q, %v; want %s", src, err, node)
		}
		if src, err := testenv.Dial(n.outside, hostPort(node, 8080)); err != nil || src != outside {
			t.Errorf("published port: the container saw %q, %v; want %s", src, err, outside)
		}
	}
	for _, tool := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		out, _ := testenv.InNS(n.ns, tool)
		if has := strings.Contains(string(out), "BERTH-"); has != strings.Contains(tool, "legacy") {
			t.Errorf("%s has berth's rules: %v", tool, has)
		}
	}
	for _, c := range []*testenv.Attachment{c1, c2} {
		if err := rt.Check(c); err != nil {
			t.Error(err)
		}
		if err := rt.Del(c); err != nil {
			t.Error(err)
		}
	}
	if after := n.snapshot(t); after != before {
		t.Errorf("leftovers:\n%s", testenv.Diff(before, after))
	}
}

// Each CNI call reads each family's rules once and commits them at most
// once: a dual-stack ADD is two iptables-save and two iptables-restore
// (one of each per family), and so is an IPv4-only one, whose IPv6 is
// closed on its bridge (BERTH-NO6-<net>).
func TestOneTransactionPerFamily(t *testing.T) {
	n := newDualNode(t)
	// Every iptables tool the plugins may run, logged, then run.
	shims, log := t.TempDir(), filepath.Join(t.TempDir(), "execs")
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, variant := range []string{"", "-nft", "-legacy"} {
			for _, op := range []string{"save", "restore"} {
				name := fam + variant + "-" + op
				real, err := exec.LookPath(name)
				if err != nil {
					continue
				}
				script := fmt.Sprintf("#!/bin/sh\necho %s >>%s\nexec %s \"$@\"\n", name, log, real)
				if err := os.WriteFile(filepath.Join(shims, name), []byte(script), 0o755); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	t.Setenv("PATH", shims+":"+os.Getenv("PATH"))
	execs := func(do func() error) map[string]int {
		t.Helper()
		os.Remove(log)
		if err := do(); err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(log)
		count := map[string]int{}
		for _, name := range strings.Fields(string(data)) {
			family, op := "v4", "save"
			if strings.HasPrefix(name, "ip6") {
				family = "v6"
			}
			if strings.HasSuffix(name, "restore") {
				op = "restore"
			}
			count[family+" "+op]++
		}
		return count
	}
	for _, tt := range []struct {
		name    string
		subnets []string
		want    map[string]int // at most
	}{
		{"dual-stack", stackCases[0].subnets, map[string]int{"v4 save": 1, "v4 restore": 1, "v6 save": 1, "v6 restore": 1}},
		{"IPv6-only", stackCases[1].subnets, map[string]int{"v6 save": 1, "v6 restore": 1}},
		{"IPv4-only", []string{"10.113.0.0/24"}, map[string]int{"v4 save": 1, "v4 restore": 1, "v6 save": 1, "v6 restore": 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rt := testenv.NewRuntime(t, n.ns, n.conflistRanges("tx-"+strings.ToLower(tt.name[:4]), "berth-tx", tt.subnets, ""))
			resident, c := container(t, "resident"), container(t, "c", port(8090, 80, "tcp"))
			for _, call := range []struct {
				name string
				do   func() error
			}{
				{"first ADD", func() error { _, err := rt.Add(resident); return err }},
				{"ADD", func() error { _, err := rt.Add(c); return err }},
				{"CHECK", func() error { return rt.Check(c) }},
				{"DEL", func() error { return rt.Del(c) }},
				{"last DEL", func() error { return rt.Del(resident) }},
			} {
				detecting := tt.name == "dual-stack" && call.name == "first ADD"
				got := execs(call.do)
				for k, v := range got {
					max := tt.want[k]
					if call.name == "CHECK" && strings.HasSuffix(k, "save") || call.name == "last DEL" {
						max = 1 // the last DEL looks at both families: the config may not say which the network had
					}
					if call.name == "CHECK" && strings.HasSuffix(k, "restore") {
						max = 0
					}
					if detecting && strings.HasSuffix(k, "save") {
						max += 2 // the namespace's first call: both backends read once (iptables.Detect)
					}
					if v > max {
						t.Errorf("%s: %d× %s, want at most %d (all: %v)", call.name, v, k, max, got)
					}
				}
			}
		})
	}
}
