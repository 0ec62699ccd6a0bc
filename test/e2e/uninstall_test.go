package e2e_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/test/testbed"
)

// Two vxlan networks on the same two nodes: pods (VNI 1, over the IPv4
// underlay: berth.1) and other (VNI 2, dual-stack over the IPv6
// underlay: berth6.2; on the eBPF datapath, which is IPv4 only, an
// IPv4 network on it too: berth.2), with containers on both nodes. netd
// uninstall --network-name pods on node1, run twice, removes pods' VTEP,
// routes, guard and eBPF programs there and nothing of other's: other's
// VTEP is the same link (not deleted and made again by its netd), its
// routes, guard, eBPF pins and uplink program, lease, conflist and the
// plugins stay, and its containers keep reaching each other across the
// nodes. Each netd records its VNI in its lease file, which is how
// uninstall tells the VTEPs apart.
func TestUninstallOneOfTwoNetworks(t *testing.T) {
	ctx := context.Background()
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	etcd, err := tb.StartEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pods := startNetwork(t, tb, testbed.NetdOptions{Network: "pods", Etcd: []string{etcd.ClientURL}, Args: []string{"--mode", "vxlan"},
		EBPF: testenv.Datapath() == "ebpf"}, 1, 2)
	ebpf := testenv.Datapath() == "ebpf"
	otherVTEPName, otherCIDRs := "berth6.2", []string{"10.30.0.0/16", "fd00:30::/56"}
	if ebpf {
		otherVTEPName, otherCIDRs = "berth.2", otherCIDRs[:1]
	}
	other := &cluster{t: t, tb: tb, net: "other", netd: map[int]*testbed.Netd{}}
	for _, i := range []int{1, 2} {
		n := tb.Node(i)
		args := []string{"--mode", "vxlan", "--vni", "2", "--network-cidr", strings.Join(otherCIDRs, ","), "--bridge", "berth1"}
		if !ebpf {
			args = append(args, "--node-ip", n.IPv6.String()+","+n.IP.String())
		}
		d, err := tb.StartNetd(ctx, n, testbed.NetdOptions{Network: "other", Etcd: []string{etcd.ClientURL}, MetricsPort: 9473, Args: args, EBPF: ebpf})
		if err != nil {
			t.Fatal(err)
		}
		other.netd[i] = d
	}
	for _, d := range other.netd {
		if err := d.WaitConverged(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	for net, c := range map[string]*cluster{"pods": pods, "other": other} {
		l, err := c.netd[1].Lease(ctx)
		if want := map[string]int{"pods": 1, "other": 2}[net]; err != nil || l.VNI != want {
			t.Fatalf("lease file of %s: VNI %v (%v), want %d", net, l, err, want)
		}
	}
	p1 := pods.run(1, "p1")
	var o1, o2 *container
	if ebpf {
		o1, o2 = other.run(1, "o1"), other.run(2, "o2")
	} else {
		o1, o2 = other.run6(1, "o1", true), other.run6(2, "o2", true)
	}
	node := tb.Node(1)
	otherVTEP := linkIndex(t, node, otherVTEPName)
	if linkIndex(t, node, "berth.1") == 0 || otherVTEP == 0 {
		t.Fatalf("node1 lacks berth.1 or %s before uninstall", otherVTEPName)
	}
	uplinkProgs := len(tcxPrograms(t, node, node.Iface))

	// As the uninstall DaemonSet finds it: netd stopped, the network's
	// pods deleted. The plugins are a copy: uninstall may remove them.
	r, err := node.Runner()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(ctx, "rm", "-f", p1.Name); err != nil {
		t.Fatal(err)
	}
	if err := pods.netd[1].Stop(); err != nil {
		t.Fatal(err)
	}
	binDir := t.TempDir()
	plugins, _ := filepath.Glob(filepath.Join(tb.BinDir, "berth-*"))
	for _, p := range plugins {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(binDir, filepath.Base(p)), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for run := 1; run <= 2; run++ {
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		out, err := node.Run(rctx, pods.netd[1].Bin, "uninstall", "--network-name", "pods", "--cni-conf-dir", node.CNIConfDir,
			"--cni-bin-dir", binDir, "--lease-dir", node.LeaseDir, "--metrics-address", pods.netd[1].MetricsAddr(), "--wait", "30s")
		cancel()
		if err != nil {
			t.Fatalf("netd uninstall (run %d): %v\n%s", run, err, out)
		}
		t.Logf("netd uninstall (run %d):\n%s", run, out)
	}

	if linkIndex(t, node, "berth.1") != 0 {
		t.Error("pods' VTEP berth.1 is left")
	}
	if got := linkIndex(t, node, otherVTEPName); got != otherVTEP {
		t.Errorf("other's VTEP %s: link %d, want the same link %d as before uninstall", otherVTEPName, got, otherVTEP)
	}
	if ebpf {
		if got := len(tcxPrograms(t, node, node.Iface)); got != uplinkProgs-1 {
			t.Errorf("%d programs on the uplink after uninstall, want other's only (%d before, one each)", got, uplinkProgs)
		}
		if _, err := os.Stat(fastpath.Dir(node.BPFFSDir(), "other")); err != nil {
			t.Errorf("other's eBPF pins: %v", err)
		}
		if _, err := os.Stat(fastpath.Dir(node.BPFFSDir(), "pods")); err == nil {
			t.Error("pods' eBPF pins are left")
		}
	}
	var routes []netlink.Route
	var guards []bool
	err = node.Do(func() error {
		var err error
		if routes, err = backend.ReadRoutes(); err != nil {
			return err
		}
		for _, net := range []string{"pods", "other"} {
			g, err := firewall.ReadVTEPGuard(net)
			if err != nil {
				return err
			}
			guards = append(guards, g.Exists())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(backend.OwnedRoutes([]netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, routes)) > 0 {
		t.Errorf("pods' routes left: %v", routes)
	}
	for _, cidr := range otherCIDRs {
		if len(backend.OwnedRoutes([]netip.Prefix{netip.MustParsePrefix(cidr)}, routes)) == 0 {
			t.Errorf("other's routes in %s are gone: %v", cidr, routes)
		}
	}
	if !slices.Equal(guards, []bool{false, true}) {
		t.Errorf("VTEP guards of pods, other: %v, want pods' removed, other's kept", guards)
	}
	for _, p := range []string{other.netd[1].LeasePath(), other.netd[1].ConflistPath(), filepath.Join(binDir, "berth-vxlan")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("network other still needs %s: %v", p, err)
		}
	}
	if _, err := lease.Read(pods.netd[1].LeasePath(), time.Time{}); err == nil {
		t.Error("pods' lease file is left")
	}
	for _, pair := range [][2]*container{{o1, o2}, {o2, o1}} {
		for _, dst := range []netip.Addr{pair[1].IP, pair[1].IPv6} {
			if !dst.IsValid() {
				continue
			}
			if err := pair[0].ping(ctx, dst); err != nil {
				t.Errorf("%s -> %s (%s) after uninstalling pods: %v", pair[0], pair[1], dst, err)
			}
		}
	}
}

// linkIndex is the index of link name on node n, 0 when there is none.
func linkIndex(t *testing.T, n *testbed.Node, name string) int {
	t.Helper()
	idx := 0
	n.Do(func() error {
		if l, err := netlink.LinkByName(name); err == nil {
			idx = l.Attrs().Index
		}
		return nil
	})
	return idx
}
