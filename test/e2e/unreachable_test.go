package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/testbed"
)

// In vxlan and hostgw mode an address of the network that no node holds
// is refused at once on the sending node, and nothing for it leaves the
// node's uplink: netd keeps `unreachable <network CIDR> proto 73` per
// family, below every node subnet's route. Without it such a packet
// follows the node's default route (the test bed's underlay) out of the
// node, unencapsulated, with the container's address. Two cases: a
// subnet nobody leased, and the subnet of a node whose netd was killed
// and whose lease expired. IPv6 too, on the iptables datapath (the eBPF
// datapath takes IPv4 networks only). netd's status shows the kernel
// in sync with the route, and a restart of netd leaves it alone.
func TestUnreachableSubnets(t *testing.T) {
	for _, mode := range []string{"vxlan", "hostgw"} {
		t.Run(mode, func(t *testing.T) { unreachableSubnets(t, mode) })
	}
}

func unreachableSubnets(t *testing.T, mode string) {
	ctx := context.Background()
	ebpf := testenv.Datapath() == "ebpf"
	cidrs := "10.244.0.0/16,fd00:244::/56"
	if ebpf {
		cidrs = "10.244.0.0/16"
	}
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	etcd, err := tb.StartEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := startNetwork(t, tb, testbed.NetdOptions{Network: "pods", Etcd: []string{etcd.ClientURL}, LeaseTTL: 3 * time.Second,
		Args: []string{"--mode", mode, "--network-cidr", cidrs}, EBPF: ebpf}, 1, 2)
	// The kernel sends a container at most a few ICMP errors at once
	// (per destination, net.ipv4.icmp_ratelimit and ip_error's own
	// limit): one container pings, another connects.
	var pinger, dialer, n2a *container
	if ebpf {
		pinger, dialer, n2a = c.run(1, "pinger"), c.run(1, "dialer"), c.run(2, "n2a")
	} else {
		pinger, dialer, n2a = c.run6(1, "pinger", true), c.run6(1, "dialer", true), c.run6(2, "n2a", true)
	}
	l1, err := c.netd[1].Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := c.netd[2].Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := pinger.ping(ctx, n2a.IP); err != nil {
		t.Fatalf("%s -> %s before node2's netd died: %v", pinger, n2a, err)
	}

	// Addresses no node holds: one of a subnet nobody leased, and node2's
	// container once node2's lease expired; of each family.
	taken := append(l1.Subnets(), l2.Subnets()...)
	var dsts []netip.Addr
	for _, cidr := range []netip.Prefix{l1.NetworkCIDR, l1.NetworkCIDRv6} {
		if !cidr.IsValid() {
			continue
		}
		subnet := l1.Subnet
		if cidr.Addr().Is6() {
			subnet = l1.SubnetV6
		}
		dsts = append(dsts, unleased(cidr, subnet, taken))
	}
	dsts = append(dsts, n2a.IP)
	if !ebpf {
		dsts = append(dsts, n2a.IPv6)
	}
	for _, d := range dsts {
		t.Logf("no node holds %s", d)
	}

	if err := c.netd[2].Kill(); err != nil {
		t.Fatal(err)
	}
	err = c.netd[1].Poll(ctx, 30*time.Second, "node2's lease to expire and its routes to go", func() error {
		for _, s := range l2.Subnets() {
			if out, err := tb.Node(1).Run(ctx, "ip", family(s), "route", "show", "exact", s.String(), "proto", "73"); err != nil || len(strings.TrimSpace(string(out))) > 0 {
				return fmt.Errorf("route to %s: %s (%v)", s, out, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.netd[1].WaitConverged(ctx, 0); err != nil {
		t.Fatalf("node1's kernel does not match its netd's state without peers: %v", err)
	}
	for _, cidr := range []netip.Prefix{l1.NetworkCIDR, l1.NetworkCIDRv6} {
		if !cidr.IsValid() {
			continue
		}
		out, err := tb.Node(1).Run(ctx, "ip", family(cidr), "route", "show", "exact", cidr.String())
		// The kernel shows an IPv6 one on lo.
		if err != nil || !regexp.MustCompile(`^unreachable `+cidr.String()+` (dev lo )?proto 73 `).Match(out) {
			t.Errorf("node1's route to the network %s: %q (%v), want unreachable proto 73", cidr, out, err)
		}
	}

	leaked := countUnderlay(t, tb, dsts)
	t.Run("refused at once", func(t *testing.T) {
		for _, d := range dsts {
			start := time.Now()
			out, err := pinger.in("ping", "-n", "-c", "1", "-W", "3", d.String())
			took := time.Since(start)
			t.Logf("ping %s: %s, %s", d, err, took.Round(time.Millisecond))
			if err == nil || !strings.Contains(out, "nreachable") || took > 2*time.Second {
				t.Errorf("ping %s -> %s: %v after %s, want an ICMP unreachable at once:\n%s", pinger, d, err, took.Round(time.Millisecond), out)
			}
			start = time.Now()
			err = dialFrom(dialer.ns, netip.AddrPortFrom(d, 7000).String())
			took = time.Since(start)
			t.Logf("TCP %s: %v, %s", d, err, took.Round(time.Millisecond))
			if !errors.Is(err, syscall.EHOSTUNREACH) && !errors.Is(err, syscall.ENETUNREACH) || took > 2*time.Second {
				t.Errorf("TCP %s -> %s: %v after %s, want EHOSTUNREACH or ENETUNREACH at once", dialer, d, err, took.Round(time.Millisecond))
			}
		}
	})
	t.Run("nothing leaves the node", func(t *testing.T) {
		if n := leaked(); n != 0 {
			t.Errorf("%d packets for addresses no node holds reached the underlay from node1", n)
		}
	})
	t.Run("a restart keeps the route", func(t *testing.T) {
		if err := c.netd[1].Stop(); err != nil {
			t.Fatal(err)
		}
		if err := c.netd[1].Restart(ctx); err != nil {
			t.Fatal(err)
		}
		var log string
		err := c.netd[1].Poll(ctx, 30*time.Second, "its first pass", func() error {
			log = c.netd[1].Process().Log()
			log = log[strings.LastIndex(log, "\n=== ")+1:] // the restarted netd's
			if !strings.Contains(log, "msg=running") {
				return errors.New("not running yet")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.netd[1].WaitConverged(ctx, 0); err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "kernel change") && strings.Contains(l, "unreachable") {
				t.Errorf("restarted netd changed the unreachable route: %s", l)
			}
		}
	})
}

// family is ip's flag for the family of p.
func family(p netip.Prefix) string {
	if p.Addr().Is6() {
		return "-6"
	}
	return "-4"
}

// unleased is an address (host 5) of a subnet of cidr as long as subnet,
// near it, that none of taken is.
func unleased(cidr, subnet netip.Prefix, taken []netip.Prefix) netip.Addr {
	for bit := subnet.Bits() - 1; bit >= cidr.Bits(); bit-- {
		b := subnet.Addr().AsSlice()
		b[bit/8] ^= 0x80 >> (bit % 8)
		b[len(b)-1] |= 5
		a, _ := netip.AddrFromSlice(b)
		free := true
		for _, p := range taken {
			free = free && !p.Contains(a)
		}
		if free {
			return a
		}
	}
	panic("no free subnet next to " + subnet.String())
}

// dialFrom connects to addr from inside netns n and returns why it
// could not.
func dialFrom(n ns.NetNS, addr string) error {
	return n.Do(func(ns.NetNS) error {
		conn, err := (&net.Dialer{Timeout: 5 * time.Second}).Dial("tcp", addr)
		if err == nil {
			conn.Close()
			return errors.New("connected")
		}
		return err
	})
}

// countUnderlay counts, in the underlay namespace, the packets for dsts
// arriving from the nodes (a rule without a target in raw PREROUTING,
// which sees what the nodes route to their default gateway there, and
// what the bridge passes on when bridged traffic is filtered too). It
// returns the count so far.
func countUnderlay(t *testing.T, tb *testbed.Testbed, dsts []netip.Addr) func() int {
	t.Helper()
	ctx := context.Background()
	const tag = "berth-unreachable-test"
	tool := func(a netip.Addr) string {
		if a.Is6() {
			return "ip6tables"
		}
		return "iptables"
	}
	for _, d := range dsts {
		rule := []string{"PREROUTING", "-d", d.String(), "-m", "comment", "--comment", tag}
		if out, err := tb.Underlay.Run(ctx, tool(d), append([]string{"-w", "-t", "raw", "-A"}, rule...)...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	counter := regexp.MustCompile(`^\[(\d+):\d+\] -A PREROUTING .*` + tag)
	return func() int {
		t.Helper()
		n := 0
		for _, save := range []string{"iptables-save", "ip6tables-save"} {
			out, err := tb.Underlay.Run(ctx, save, "-c", "-t", "raw")
			if err != nil {
				t.Fatalf("%s: %v: %s", save, err, out)
			}
			for _, l := range strings.Split(string(out), "\n") {
				if m := counter.FindStringSubmatch(l); m != nil {
					v, _ := strconv.Atoi(m[1])
					n += v
				}
			}
		}
		return n
	}
}
