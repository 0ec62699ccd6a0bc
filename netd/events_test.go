package netd_test

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/test/testbed"
)

// With the periodic full reconcile an hour away, netd still follows every
// change within moments, from events alone: a node joining and leaving
// (etcd's watch) and its datapath damaged by hand (netlink events). Only
// the full pass at start reads the whole kernel.
func TestEventsWithoutResync(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 3})
	etcd := startEtcd(t, tb)
	c := newCluster(t, tb, []string{etcd.ClientURL}, "ev", 9473, "--network-cidr", "10.244.0.0/16", "--mode", "vxlan")
	hour := []string{"--resync-interval", "1h"}
	c.start(1, hour...)
	c.start(2, hour...)
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
				t.Fatalf("%s not within %s: %v", what, soon, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	routed := func(n, peer int) func() error {
		subnet := c.lease(peer).Subnet.String()
		return func() error {
			if r := routes(t, tb.Node(n))[subnet]; !strings.Contains(r, "dev berth.1 onlink") {
				return fmt.Errorf("node%d's route to node%d's %s: %q", n, peer, subnet, r)
			}
			return nil
		}
	}
	within("node1 routing to node2", routed(1, 2))

	// A node joins: the others route to it at once.
	c.start(3, hour...)
	within("node1 routing to node3", routed(1, 3))
	within("node2 routing to node3", routed(2, 3))

	// Damage by hand on node1: a route, a neighbour and an FDB entry
	// deleted, a stale route of netd's protocol added. All undone.
	n1 := tb.Node(1)
	ctx := context.Background()
	run := func(args ...string) {
		t.Helper()
		if out, err := n1.Run(ctx, args[0], args[1:]...); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	s2, s3 := c.lease(2).Subnet, c.lease(3).Subnet
	var mac3 string
	for _, p := range c.converged(1, 2).Peers {
		if p.Name == "node3" {
			mac3 = p.VTEPMAC
		}
	}
	stale := spareSubnet(s2, s3, c.lease(1).Subnet)
	run("ip", "route", "del", s2.String())
	within("node1's route to node2 back", routed(1, 2))
	run("ip", "neigh", "del", s3.Addr().String(), "dev", "berth.1")
	run("bridge", "fdb", "del", mac3, "dev", "berth.1", "dst", tb.Node(3).IP.String())
	within("node1's neighbour and FDB entry of node3 back", func() error {
		_, fdb, neigh := vtep(t, n1, "berth.1")
		if fdb[mac3] != tb.Node(3).IP.String() || neigh[s3.Addr().String()] != mac3 {
			return fmt.Errorf("fdb %v, neighbours %v", fdb, neigh)
		}
		return nil
	})
	run("ip", "route", "add", stale.String(), "via", stale.Addr().String(), "dev", "berth.1", "onlink", "proto", fmt.Sprint(backend.RouteProtocol))
	within("node1's stale route gone", func() error {
		if r, ok := routes(t, n1)[stale.String()]; ok {
			return fmt.Errorf("still there: %s", r)
		}
		return nil
	})

	// A node leaves: the others drop its routes at once.
	c.netd[3].Stop(10 * time.Second)
	if out, err := tb.Node(3).Run(ctx, c.bin, append([]string{"leave"}, c.flags(3)...)...); err != nil {
		t.Fatalf("netd leave: %v\n%s", err, out)
	}
	for _, n := range []int{1, 2} {
		within(fmt.Sprintf("node%d dropping node3's route", n), func() error {
			if r, ok := routes(t, tb.Node(n))[s3.String()]; ok {
				return fmt.Errorf("still routed: %s", r)
			}
			return nil
		})
	}
	c.converged(1, 1)

	// All of it from events: node1's only full pass was at start.
	if full := fullPasses(t, c, 1); full != 1 {
		t.Errorf("node1 ran %d full reconcile passes, want only the one at start", full)
	}
}

// spareSubnet is a /24 of 10.244.0.0/16 none of taken is.
func spareSubnet(taken ...netip.Prefix) netip.Prefix {
	for i := 250; ; i-- {
		p := netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i))
		free := true
		for _, s := range taken {
			free = free && s != p
		}
		if free {
			return p
		}
	}
}

// fullPasses reads how many full reconcile passes node i's netd ran.
func fullPasses(t *testing.T, c *cluster, i int) int {
	t.Helper()
	body, err := c.tb.Node(i).Get(context.Background(), "http://"+c.metricsAddr()+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^berth_netd_reconcile_duration_seconds_count\{network="[^"]*",pass="full"\} (\d+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("no full pass count in the metrics:\n%s", body)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}
