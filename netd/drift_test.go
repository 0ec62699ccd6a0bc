package netd_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/test/testbed"
)

// TestRepairsByHandDualStack: on a dual-stack vxlan network whose
// periodic full reconcile is an hour away, what a careless operator does
// to node1's datapath is undone within moments in both families: a route
// deleted, a peer's route replaced by another protocol's (`ip route
// replace`, which the kernel reports as a new route only), a neighbour
// deleted, the VTEP's MTU, up state, learning flag and addresses changed,
// the VTEP deleted.
//
// Each check waits for its repair and moves on; only the full pass at
// start and those an event asks for (an owned link changed, another
// protocol's route at one of netd's) read the whole kernel.
func TestRepairsByHandDualStack(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	etcd := startEtcd(t, tb)
	c := newCluster(t, tb, []string{etcd.ClientURL}, "dr", 9491, "--network-cidr", "10.244.0.0/16,fd00:244::/56", "--mode", "vxlan")
	hour := []string{"--resync-interval", "1h"}
	c.start(1, hour...)
	c.start(2, hour...)
	c.converged(1, 1)
	n1 := tb.Node(1)
	ctx := context.Background()
	const soon = 3 * time.Second
	within := func(what string, cond func() error) {
		t.Helper()
		deadline := time.Now().Add(soon)
		for {
			err := cond()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%s not within %s: %v", what, soon, err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := n1.Run(ctx, args[0], args[1:]...); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	l2 := c.lease(2)
	s2, s2v6 := l2.Subnet, l2.SubnetV6
	routed := func() error {
		r, r6 := routes(t, n1)[s2.String()], routes6(t, n1)[s2v6.String()]
		if !strings.Contains(r, "dev berth.1 onlink") || !strings.Contains(r6, "dev berth.1 onlink") {
			return fmt.Errorf("routes %q %q", r, r6)
		}
		return nil
	}
	within("node1 routing to node2", routed)
	run("ip", "-6", "route", "del", s2v6.String())
	within("IPv6 route deleted by hand back", routed)
	run("ip", "route", "replace", s2.String(), "via", tb.Node(2).IP.String(), "dev", "eth0")
	within("IPv4 route replaced by hand back", routed)
	run("ip", "-6", "route", "replace", s2v6.String(), "via", tb.Node(2).IPv6.String(), "dev", "eth0")
	within("IPv6 route replaced by hand back", routed)
	var mac2 string
	for _, p := range c.converged(1, 1).Peers {
		mac2 = p.VTEPMAC
	}
	neighbour := func() error {
		out, _ := n1.Run(ctx, "ip", "-6", "neigh", "show", "dev", "berth.1")
		if !strings.Contains(string(out), s2v6.Addr().String()+" lladdr "+mac2+" PERMANENT") {
			return fmt.Errorf("%s", out)
		}
		return nil
	}
	run("ip", "-6", "neigh", "del", s2v6.Addr().String(), "dev", "berth.1")
	within("IPv6 neighbour deleted by hand back", neighbour)
	run("ip", "-6", "neigh", "replace", s2v6.Addr().String(), "lladdr", "02:00:00:00:00:66", "dev", "berth.1", "nud", "reachable")
	within("IPv6 neighbour replaced by hand back", neighbour)
	fdb := func() error {
		_, fdb, _ := vtep(t, n1, "berth.1")
		if len(fdb) != 1 || fdb[mac2] != tb.Node(2).IP.String() {
			return fmt.Errorf("fdb %v", fdb)
		}
		return nil
	}
	for _, dst := range []string{"192.168.50.10", "192.168.50.99"} { // sorting before and after node2's
		run("bridge", "fdb", "replace", mac2, "dev", "berth.1", "dst", dst, "self", "permanent")
		within("FDB entry pointed elsewhere by hand back to "+dst, fdb)
		run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "berth.1", "dst", dst, "self", "permanent")
		run("bridge", "fdb", "add", "02:00:00:00:00:77", "dev", "berth.1", "dst", dst, "self", "permanent")
		within("FDB entries added by hand gone "+dst, fdb)
	}
	mtu := func() int {
		var m int
		n1.Do(func() error {
			l, err := netlink.LinkByName("berth.1")
			if err == nil {
				m = l.Attrs().MTU
			}
			return err
		})
		return m
	}
	want := mtu()
	run("ip", "link", "set", "berth.1", "mtu", "1280")
	within("VTEP MTU set by hand restored", func() error {
		if m := mtu(); m != want {
			return fmt.Errorf("mtu %d want %d", m, want)
		}
		return routed()
	})
	run("ip", "link", "set", "berth.1", "down")
	within("VTEP set down by hand up again", func() error {
		out, _ := n1.Run(ctx, "ip", "link", "show", "berth.1")
		if !strings.Contains(string(out), ",UP") {
			return fmt.Errorf("%s", out)
		}
		return routed()
	})
	run("ip", "link", "set", "berth.1", "type", "vxlan", "learning")
	within("VTEP learning set by hand off again", func() error {
		var learning bool
		if err := n1.Do(func() error {
			l, err := netlink.LinkByName("berth.1")
			if err == nil {
				learning = l.(*netlink.Vxlan).Learning
			}
			return err
		}); err != nil {
			return err
		}
		if learning {
			return fmt.Errorf("learning on")
		}
		return routed()
	})
	// `ip addr flush` deletes in rounds until nothing is left: it races
	// netd putting the addresses back, again and again. When netd wins
	// ten rounds, ip gives up ("Flush remains incomplete"): no failure.
	l1 := c.lease(1)
	for i := range 30 {
		if out, err := n1.Run(ctx, "ip", "addr", "flush", "dev", "berth.1"); err != nil && !strings.Contains(string(out), "Flush remains incomplete") {
			t.Fatalf("ip addr flush dev berth.1: %v: %s", err, out)
		}
		within(fmt.Sprintf("VTEP addresses flushed by hand back (%d)", i), func() error {
			out, _ := n1.Run(ctx, "ip", "addr", "show", "dev", "berth.1")
			if !strings.Contains(string(out), l1.SubnetV6.Addr().String()+"/128") || !strings.Contains(string(out), l1.Subnet.Addr().String()+"/32") {
				return fmt.Errorf("%s", out)
			}
			return nil
		})
		if t.Failed() {
			break
		}
	}
	run("ip", "link", "del", "berth.1")
	within("VTEP deleted by hand re-created and routing", routed)
}
