package netd_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/test/testbed"
)

// Three nodes with a real etcd and netd in vxlan mode: unique leases,
// lease files and conflists, the VTEP with its static FDB, neighbours and
// routes, traffic between the nodes' subnets, repair of hand-made damage,
// kill -9 without packet loss, and a node leaving.
func TestVXLAN(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 3})
	etcd := startEtcd(t, tb)
	c := newCluster(t, tb, []string{etcd.ClientURL}, "vx", 9472, "--network-cidr", "10.244.0.0/16", "--mode", "vxlan")
	for i := 1; i <= 3; i++ {
		c.start(i)
	}

	subnets := map[int]netip.Prefix{}
	seen := map[netip.Prefix]int{}
	for i := 1; i <= 3; i++ {
		l := c.lease(i)
		if j, dup := seen[l.Subnet]; dup {
			t.Fatalf("node%d and node%d both hold %s", i, j, l.Subnet)
		}
		seen[l.Subnet], subnets[i] = i, l.Subnet
		if l.Mode != "vxlan" || l.MTU != 1450 || l.NodeName != tb.Node(i).Host || l.NodeIP != tb.Node(i).IP ||
			l.Subnet.Bits() != 24 || !l.NetworkCIDR.Contains(l.Subnet.Addr()) || !l.IPMasq || l.Expires.Before(time.Now()) {
			t.Errorf("node%d lease file: %+v", i, l)
		}
		cl := c.conflist(i)
		plugin := cl["plugins"].([]any)[0].(map[string]any)
		if cl["cniVersion"] != "1.0.0" || cl["name"] != "vx" || plugin["type"] != "berth-vxlan" ||
			plugin["leaseDir"] != tb.Node(i).LeaseDir || plugin["stateDir"] != tb.Node(i).StateDir ||
			plugin["ipam"].(map[string]any)["dataDir"] != tb.Node(i).IPAMDataDir {
			t.Errorf("node%d conflist: %v", i, cl)
		}
	}
	for i := 1; i <= 3; i++ {
		c.converged(i, 2)
	}

	// The datapath on node 1.
	n1 := tb.Node(1)
	v, fdb, neigh := vtep(t, n1, "berth.1")
	if v.VxlanId != 1 || v.Port != 8472 || v.Learning || v.MTU != 1450 || !v.SrcAddr.Equal(n1.IP.AsSlice()) {
		t.Errorf("VTEP: vni %d port %d learning %v mtu %d local %s", v.VxlanId, v.Port, v.Learning, v.MTU, v.SrcAddr)
	}
	st, _ := c.status(1)
	for _, p := range st.Peers {
		if fdb[p.VTEPMAC] != p.NodeIP {
			t.Errorf("fdb for %s: %s -> %q, want %s (fdb %v)", p.Name, p.VTEPMAC, fdb[p.VTEPMAC], p.NodeIP, fdb)
		}
		gw := netip.MustParsePrefix(p.Subnet).Addr().String()
		if neigh[gw] != p.VTEPMAC {
			t.Errorf("neighbour %s for %s: %q, want %s", gw, p.Name, neigh[gw], p.VTEPMAC)
		}
	}
	r := routes(t, n1)
	for i := 2; i <= 3; i++ {
		want := fmt.Sprintf("%s via %s dev berth.1 onlink", subnets[i], subnets[i].Addr())
		if r[subnets[i].String()] != want {
			t.Errorf("route to node%d: %q, want %q", i, r[subnets[i].String()], want)
		}
	}
	// and the network's CIDR refused past the node subnets.
	if len(r) != 3 || r["10.244.0.0/16"] != "unreachable 10.244.0.0/16 metric 4294967295" {
		t.Errorf("node1 routes: %v", r)
	}
	// The MAC node1's lease publishes (netd made the VTEP while it
	// leased) is the one its VTEP has.
	st2, _ := c.status(2)
	for _, p := range st2.Peers {
		if p.Name == n1.Host && p.VTEPMAC != v.HardwareAddr.String() {
			t.Errorf("node1's lease publishes VTEP MAC %s; its VTEP has %s", p.VTEPMAC, v.HardwareAddr)
		}
	}

	// Traffic between the subnets, from gateway to gateway.
	gws := map[int]netip.Addr{}
	for i := 1; i <= 3; i++ {
		gws[i] = gateway(t, tb.Node(i), subnets[i], "berth0")
	}
	for i := 1; i <= 3; i++ {
		for j := 1; j <= 3; j++ {
			if i != j {
				ping(t, tb.Node(i), gws[i], gws[j])
			}
		}
	}

	t.Run("repairs", func(t *testing.T) { repairs(t, c, subnets) })
	t.Run("status and metrics", func(t *testing.T) {
		out, err := n1.Run(context.Background(), c.bin, "status", "--metrics-address", c.metricsAddr())
		if err != nil || !strings.Contains(string(out), "matches the leases") || !strings.Contains(string(out), "node2") {
			t.Errorf("netd status: %v\n%s", err, out)
		}
		m, err := n1.Get(context.Background(), "http://"+c.metricsAddr()+"/metrics")
		for _, want := range []string{`berth_netd_peers{network="vx"} 2`, `berth_netd_leases{network="vx"} 3`, `berth_netd_kernel_in_sync{network="vx"} 1`, `berth_netd_etcd_up{network="vx"}`, "berth_netd_reconcile_duration_seconds_bucket"} {
			if !strings.Contains(string(m), want) {
				t.Errorf("metrics lack %q (%v)", want, err)
			}
		}
		if _, err := n1.Get(context.Background(), "http://"+c.metricsAddr()+"/healthz"); err != nil {
			t.Error(err)
		}
	})
	t.Run("kill -9 and restart", func(t *testing.T) {
		// A continuous ping from node 1 to node 2 while node 2's netd is
		// killed and restarted: the datapath stays, nothing is lost.
		done := make(chan string)
		go func() {
			out, _ := n1.Run(context.Background(), "ping", "-n", "-q", "-i", "0.05", "-c", "80", "-W", "1", "-I", gws[1].String(), gws[2].String())
			done <- string(out)
		}()
		time.Sleep(300 * time.Millisecond)
		if err := c.netd[2].Kill(); err != nil {
			t.Fatal(err)
		}
		c.start(2)
		if l := c.lease(2); l.Subnet != subnets[2] {
			t.Errorf("node2 came back with %s, had %s", l.Subnet, subnets[2])
		}
		c.converged(2, 2)
		out := <-done
		if m := lossRe.FindStringSubmatch(out); m == nil || m[1] != m[2] {
			t.Errorf("packets lost across the restart:\n%s", out)
		}
		for i := 1; i <= 3; i++ {
			c.converged(i, 2)
		}
	})
	t.Run("conflicting config refused", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := n1.Run(ctx, c.bin, append(c.flags(1), "--node-name", "intruder", "--metrics-address", "",
			"--network-cidr", "10.99.0.0/16", "--mode", "hostgw")...)
		if err == nil || !strings.Contains(string(out), "network config conflict") ||
			!strings.Contains(string(out), "cidr: network has 10.244.0.0/16, this netd was given 10.99.0.0/16") ||
			!strings.Contains(string(out), "mode: network has vxlan, this netd was given hostgw") {
			t.Errorf("conflicting netd: %v\n%s", err, out)
		}
	})
	t.Run("lease file renewed", func(t *testing.T) {
		// The lease file's expiry moves on with each etcd keepalive
		// (every third of the 10s TTL).
		first := c.lease(3).Expires
		c.eventually("node3's lease file to be renewed", 10*time.Second, func() error {
			if l := c.lease(3); !l.Expires.After(first) {
				return fmt.Errorf("expires %s, was %s", l.Expires, first)
			}
			return nil
		})
	})
	t.Run("lost etcd lease", func(t *testing.T) {
		// The etcd lease vanishes (as when etcd was unreachable for
		// longer than the TTL): netd leases the same subnet again.
		cli, err := etcd.Client()
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		resp, err := cli.Get(context.Background(), "/berth/v1/networks/vx/leases/"+strings.Replace(subnets[3].String(), "/", "-", 1))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("node3's key: %v %v", resp, err)
		}
		if _, err := cli.Revoke(context.Background(), clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
			t.Fatal(err)
		}
		c.eventually("node3 to lease again", 10*time.Second, func() error {
			if !strings.Contains(c.netd[3].Log(), "lost the etcd lease") {
				return fmt.Errorf("not noticed yet")
			}
			return nil
		})
		for i := 1; i <= 3; i++ {
			c.converged(i, 2)
		}
		if l := c.lease(3); l.Subnet != subnets[3] {
			t.Errorf("node3 leased %s, had %s", l.Subnet, subnets[3])
		}
	})
	t.Run("etcd restart", func(t *testing.T) {
		if err := etcd.Kill(); err != nil {
			t.Fatal(err)
		}
		c.eventually("node1 to see etcd down", 15*time.Second, func() error {
			if st, err := c.status(1); err != nil || st.EtcdUp {
				return fmt.Errorf("etcdUp %v, %v", st != nil && st.EtcdUp, err)
			}
			return nil
		})
		ping(t, n1, gws[1], gws[3]) // the datapath does not need etcd
		if err := etcd.Restart(context.Background()); err != nil {
			t.Fatal(err)
		}
		c.eventually("node1 to see etcd up", 15*time.Second, func() error {
			if st, err := c.status(1); err != nil || !st.EtcdUp {
				return fmt.Errorf("etcdUp %v, %v", st != nil && st.EtcdUp, err)
			}
			return nil
		})
		for i := 1; i <= 3; i++ {
			if st := c.converged(i, 2); st.Subnet != subnets[i].String() {
				t.Errorf("node%d holds %s after the etcd restart, had %s", i, st.Subnet, subnets[i])
			}
		}
	})
	t.Run("leave", func(t *testing.T) {
		// Node 1's netd is down while node 3 leaves: it catches up when it
		// starts again. Node 2 sees it through the watch.
		n3 := tb.Node(3)
		out, err := n3.Run(context.Background(), c.bin, append([]string{"leave"}, c.flags(3)...)...)
		if err == nil || !strings.Contains(string(out), "netd is still running") {
			t.Fatalf("leave while netd runs: %v\n%s", err, out)
		}
		if err := c.netd[1].Stop(10 * time.Second); err != nil {
			t.Fatalf("netd on node1 did not stop cleanly: %v", err)
		}
		if err := c.netd[3].Stop(10 * time.Second); err != nil {
			t.Fatalf("netd on node3 did not stop cleanly: %v", err)
		}
		out, err = n3.Run(context.Background(), c.bin, append([]string{"leave"}, c.flags(3)...)...)
		if err != nil {
			t.Fatalf("netd leave: %v\n%s", err, out)
		}
		c.eventually("node2 to drop node3's route", 10*time.Second, func() error {
			if r := routes(t, tb.Node(2)); r[subnets[3].String()] != "" {
				return fmt.Errorf("still there: %v", r)
			}
			return nil
		})
		if r := routes(t, n1); r[subnets[3].String()] == "" {
			t.Fatalf("node1's netd is down; its route to node3 should still be there: %v", r)
		}
		c.start(1)
		c.converged(1, 1)
		if r := routes(t, n1); r[subnets[3].String()] != "" || len(r) != 2 {
			t.Errorf("node1 after restart: %v", r)
		}
		err = n3.Do(func() error {
			_, err := netlink.LinkByName("berth.1")
			return err
		})
		if err == nil {
			t.Error("node3's VTEP survived leave")
		}
		if r := routes(t, n3); len(r) != 0 {
			t.Errorf("node3's routes survived leave: %v", r)
		}
		ping(t, n1, gws[1], gws[2])
	})
	// SIGTERM ends netd cleanly.
	if err := c.netd[2].Stop(10 * time.Second); err != nil {
		t.Errorf("netd on node2 on SIGTERM: %v", err)
	}
}

// repairs damages node 1's datapath by hand and expects netd to undo it,
// without touching routes that are not its own.
func repairs(t *testing.T, c *cluster, subnets map[int]netip.Prefix) {
	n1 := c.tb.Node(1)
	ctx := context.Background()
	run := func(args ...string) {
		t.Helper()
		if _, err := n1.Run(ctx, args[0], args[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	st := c.converged(1, 2)
	var mac2 string
	for _, p := range st.Peers {
		if p.Name == "node2" {
			mac2 = p.VTEPMAC
		}
	}
	// Two /24s of the CIDR that no node holds (leases are random).
	var spare []string
	for i := 250; len(spare) < 2; i-- {
		p := netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i))
		taken := false
		for _, s := range subnets {
			taken = taken || s == p
		}
		if !taken {
			spare = append(spare, p.String())
		}
	}
	foreign, stale := spare[0], spare[1]
	// Someone else's route inside the CIDR (another protocol) stays.
	run("ip", "route", "add", foreign, "dev", "berth0", "proto", "static")
	// A stale route with netd's protocol goes.
	run("ip", "route", "add", stale, "via", strings.TrimSuffix(stale, "/24"), "dev", "berth.1", "onlink", "proto", fmt.Sprint(backend.RouteProtocol))
	// Hand-deleted route, neighbour and FDB entry come back.
	run("ip", "route", "del", subnets[2].String())
	run("ip", "neigh", "del", subnets[3].Addr().String(), "dev", "berth.1")
	run("bridge", "fdb", "del", mac2, "dev", "berth.1", "dst", c.tb.Node(2).IP.String())
	c.converged(1, 2)
	r := routes(t, n1)
	if r[subnets[2].String()] == "" || r[stale] != "" {
		t.Errorf("routes after repair: %v", r)
	}
	out, err := n1.Run(ctx, "ip", "route", "show", foreign)
	if err != nil || !strings.Contains(string(out), foreign) {
		t.Errorf("netd removed a route that is not its own: %v %s", err, out)
	}
	_, fdb, neigh := vtep(t, n1, "berth.1")
	if fdb[mac2] != c.tb.Node(2).IP.String() || neigh[subnets[3].Addr().String()] == "" {
		t.Errorf("fdb %v, neighbours %v after repair", fdb, neigh)
	}
	// The VTEP itself deleted: re-created with the same MAC, and
	// everything through it restored.
	run("ip", "link", "del", "berth.1")
	c.converged(1, 2)
	ping(t, n1, subnets[1].Addr().Next(), subnets[2].Addr().Next())
	run("ip", "route", "del", foreign)
}

// A second vxlan network on a node with the VNI of one already there
// would share its VTEP (berth.<vni>) and rewrite it as its own: its netd
// refuses to start, naming the other network, and leaves the first
// network's VTEP and lease file as they were; a network of another VNI
// starts beside it.
func TestRefusesAVNIAnotherNetworkHas(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 1})
	etcd := startEtcd(t, tb)
	n1 := tb.Node(1)
	first := newCluster(t, tb, []string{etcd.ClientURL}, "vnia", 9492, "--network-cidr", "10.244.0.0/16", "--mode", "vxlan", "--vni", "7")
	first.start(1)
	first.converged(1, 0)
	before, _, _ := vtep(t, n1, "berth.7")
	leaseOf := func(network string) string {
		l, err := lease.Read(lease.Path(n1.LeaseDir, network), time.Time{})
		if err != nil {
			return err.Error()
		}
		l.Expires = time.Time{} // netd refreshes it
		return fmt.Sprintf("%+v", *l)
	}
	leaseBefore := leaseOf("vnia")

	second := newCluster(t, tb, []string{etcd.ClientURL}, "vnib", 9493, "--network-cidr", "10.245.0.0/16", "--mode", "vxlan", "--vni", "7")
	p, err := n1.Start(testbed.ProcSpec{Name: "netd-vnib-node1", Path: second.bin, Args: append(second.flags(1), second.args...)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err == nil || !strings.Contains(p.Log(), "VNI 7 is network vnia's on this node too") {
		t.Errorf("netd of network vnib with vnia's VNI: exit %v, want a refusal naming vnia; log:\n%s", err, p.Log())
	}
	after, _, _ := vtep(t, n1, "berth.7")
	if after.Index != before.Index || !after.SrcAddr.Equal(before.SrcAddr) {
		t.Errorf("vnia's VTEP changed: %+v, was %+v", after.Attrs(), before.Attrs())
	}
	if got := leaseOf("vnia"); got != leaseBefore {
		t.Errorf("vnia's lease file changed: %s, was %s", got, leaseBefore)
	}
	if _, err := os.Stat(lease.Path(n1.LeaseDir, "vnib")); err == nil {
		t.Error("the refused netd wrote a lease file")
	}
	// Refused before the datastore stored the new network with that VNI:
	// started again with another, it is created.
	cli, err := etcd.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if resp, err := cli.Get(ctx, "/berth/v1/networks/vnib/config"); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("network vnib's config in etcd after the refusal: %v %v", resp, err)
	}

	third := newCluster(t, tb, []string{etcd.ClientURL}, "vnic", 9494, "--network-cidr", "10.246.0.0/16", "--mode", "vxlan", "--vni", "8")
	third.start(1)
	third.converged(1, 0)
}
