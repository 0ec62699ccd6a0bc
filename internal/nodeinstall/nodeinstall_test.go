package nodeinstall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/nodebridge"
	"github.com/berthnet/berth/internal/srcguard"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/backend/vxlan"
)

func TestInstall(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "opt", "cni", "bin")
	for name, data := range map[string]string{"berth-bridge": "v1", "berth-vxlan": "v1", "netd": "daemon"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	wrote, err := Install(src, dst)
	if err != nil || strings.Join(wrote, " ") != "berth-bridge berth-vxlan" {
		t.Fatalf("first install wrote %v, %v; want both plugins", wrote, err)
	}
	for _, name := range []string{"berth-bridge", "berth-vxlan"} {
		st, err := os.Stat(filepath.Join(dst, name))
		if err != nil || st.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v %v, want mode 0755", name, st, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dst, "netd")); err == nil {
		t.Error("netd is not a CNI plugin but was installed")
	}
	if wrote, err := Install(src, dst); err != nil || len(wrote) != 0 {
		t.Errorf("second install wrote %v, %v; want nothing (identical)", wrote, err)
	}
	os.WriteFile(filepath.Join(src, "berth-vxlan"), []byte("v2"), 0o755)
	if wrote, err := Install(src, dst); err != nil || strings.Join(wrote, " ") != "berth-vxlan" {
		t.Errorf("after an upgrade of one plugin wrote %v, %v", wrote, err)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, "berth-vxlan")); string(got) != "v2" {
		t.Errorf("berth-vxlan holds %q", got)
	}
	if left, _ := filepath.Glob(filepath.Join(dst, ".*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	if _, err := Install(t.TempDir(), dst); err == nil {
		t.Error("install from a directory without plugins succeeded")
	}
}

// node is what netd and the plugins leave on a node running berth: a
// conflist, a lease file, a VTEP, a bridge, routes of protocol 73, the
// plugins' state and IPAM data, the plugins, in a namespace of its own.
type node struct {
	netns                                     ns.NetNS
	confDir, binDir, runDir, dataDir, cidrDir string
}

func newNode(t *testing.T) *node {
	n := &node{netns: testenv.NewNS(t), confDir: t.TempDir(), binDir: t.TempDir(), runDir: filepath.Join(t.TempDir(), "berth"), dataDir: t.TempDir()}
	list, err := conf.NodeConflist{Network: "berth", Mode: "vxlan", LeaseDir: n.runDir, StateDir: n.runDir, IPAMDataDir: n.dataDir}.Marshal()
	must(t, err)
	must(t, os.WriteFile(conf.ConflistPath(n.confDir, "berth"), list, 0o644))
	must(t, os.WriteFile(filepath.Join(n.confDir, "99-loopback.conf"), []byte(`{"type":"loopback"}`), 0o644))
	must(t, lease.Write(lease.Path(n.runDir, "berth"), &lease.Node{Network: "berth", Mode: "vxlan", NetworkCIDR: netip.MustParsePrefix("10.244.0.0/16"),
		Subnet: netip.MustParsePrefix("10.244.3.0/24"), MTU: 1450, NodeName: "n1", NodeIP: netip.MustParseAddr("192.0.2.1"), VNI: 1}))
	for _, p := range []string{"berth-vxlan", "berth-ipam", "loopback"} {
		must(t, os.WriteFile(filepath.Join(n.binDir, p), []byte("x"), 0o755))
	}
	must(t, os.MkdirAll(filepath.Join(n.runDir, "networks", "berth"), 0o755))
	must(t, os.WriteFile(filepath.Join(n.runDir, "iptables.lock"), nil, 0o600))
	must(t, os.MkdirAll(filepath.Join(n.runDir, "netns", "4097", "ports", "tcp-8080"), 0o755))
	must(t, os.MkdirAll(filepath.Join(n.dataDir, "berth"), 0o755))
	must(t, os.WriteFile(filepath.Join(n.dataDir, "berth", "10.244.3.2"), []byte("c1"), 0o644))
	err = n.netns.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		vtep := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "berth.1"}, VxlanId: 1, Port: 8472}
		if err := netlink.LinkAdd(vtep); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "berth0"}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		if err := netlink.LinkSetAlias(br, nodebridge.Mark("berth", false)); err != nil {
			return err
		}
		// Not berth's: left alone.
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "other0"}}); err != nil {
			return err
		}
		for _, r := range []struct {
			dst   string
			proto netlink.RouteProtocol
		}{{"10.244.7.0/24", backend.RouteProtocol}, {"10.244.3.0/24", backend.RouteProtocol}, {"10.99.0.0/24", unix.RTPROT_STATIC}} {
			_, dst, _ := net.ParseCIDR(r.dst)
			if err := netlink.RouteAdd(&netlink.Route{Dst: dst, Type: unix.RTN_BLACKHOLE, Protocol: r.proto}); err != nil {
				return err
			}
		}
		return nil
	})
	must(t, err)
	return n
}

// spec leaves the other directories to the conflist, as the manifest
// does.
func (n *node) spec(metrics string, wait time.Duration) Node {
	return Node{Network: "berth", CNIConfDir: n.confDir, CNIBinDir: n.binDir, MetricsAddr: metrics, Wait: wait}
}

// attach writes the record the plugins keep for an attached container.
func (n *node) attach(t *testing.T, id string) string {
	path := filepath.Join(n.runDir, "networks", "berth", strings.Repeat("a", 24)+".json")
	must(t, os.WriteFile(path, []byte(`{"network":"berth","containerID":"`+id+`","ifName":"eth0","hostVeth":"bvaaaaaaaaaaa"}`), 0o600))
	return path
}

func (n *node) uninstall(ctx context.Context, spec Node) error {
	return n.uninstallLogged(ctx, spec, slog.New(slog.DiscardHandler))
}

func (n *node) uninstallLogged(ctx context.Context, spec Node, log *slog.Logger) error {
	return n.netns.Do(func(ns.NetNS) error { return Uninstall(ctx, spec, log) })
}

func TestUninstall(t *testing.T) {
	n := newNode(t)
	// netd's VTEP guards: the network's, and another network's (kept).
	for _, network := range []string{"berth", "other"} {
		must(t, n.netns.Do(func(ns.NetNS) error {
			_, err := firewall.EnsureVTEPGuard(firewall.VTEPGuard{Network: network, Port: 8472, Underlay: "eth0"})
			return err
		}))
	}
	// The source guard's bridge table, needed by a guarded host veth of
	// another network (kept until that one goes).
	must(t, n.netns.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "bvother"}, PeerName: "cvother"}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		return srcguard.Require(veth.Index)
	}))
	// A netd still answering on its metrics address.
	var l net.Listener
	must(t, n.netns.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}))
	record := n.attach(t, "c1")
	done := make(chan error, 1)
	go func() { done <- n.uninstall(context.Background(), n.spec(l.Addr().String(), time.Minute)) }()

	time.Sleep(1500 * time.Millisecond)
	if _, err := os.Stat(conf.ConflistPath(n.confDir, "berth")); err != nil {
		t.Fatalf("uninstall removed the conflist while netd still ran: %v", err)
	}
	l.Close()
	time.Sleep(3 * time.Second)
	if _, err := os.Stat(conf.ConflistPath(n.confDir, "berth")); err == nil {
		t.Error("netd stopped, but the conflist is still there: no new pod must start on the network")
	}
	if _, err := os.Stat(filepath.Join(n.binDir, "berth-vxlan")); err != nil {
		t.Fatalf("plugins removed while a container is attached (its DEL needs them): %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("uninstall ended while a container was attached: %v", err)
	default:
	}
	os.Remove(record)
	if err := <-done; err != nil {
		t.Fatalf("uninstall: %v", err)
	}

	left := []string{}
	for _, p := range []string{conf.ConflistPath(n.confDir, "berth"), n.runDir, filepath.Join(n.dataDir, "berth"),
		filepath.Join(n.binDir, "berth-vxlan"), filepath.Join(n.binDir, "berth-ipam")} {
		if _, err := os.Stat(p); err == nil {
			left = append(left, p)
		}
	}
	for _, p := range []string{filepath.Join(n.confDir, "99-loopback.conf"), filepath.Join(n.binDir, "loopback")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("removed what is not berth's: %s", p)
		}
	}
	must(t, n.netns.Do(func(ns.NetNS) error {
		for _, name := range []string{"berth.1", "berth0"} {
			if _, err := netlink.LinkByName(name); err == nil {
				left = append(left, "link "+name)
			}
		}
		if _, err := netlink.LinkByName("other0"); err != nil {
			t.Error("removed bridge other0, which is not berth's")
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Type: unix.RTN_BLACKHOLE}, netlink.RT_FILTER_TYPE)
		for _, r := range routes {
			if r.Protocol == backend.RouteProtocol {
				left = append(left, "route "+r.Dst.String())
			} else if r.Dst.String() != "10.99.0.0/24" {
				t.Errorf("unexpected route %v", r)
			}
		}
		if len(routes) == 0 {
			t.Error("removed the static route 10.99.0.0/24, which is not berth's")
		}
		return err
	}))
	must(t, n.netns.Do(func(ns.NetNS) error {
		for _, network := range []string{"berth", "other"} {
			s, err := firewall.ReadVTEPGuard(network)
			if err != nil {
				return err
			}
			switch {
			case network == "berth" && s.Exists():
				left = append(left, "VTEP guard "+firewall.GuardChain(network))
			case network == "other" && !s.Exists():
				t.Errorf("removed another network's VTEP guard: %+v", s)
			}
		}
		return nil
	}))
	if len(left) > 0 {
		t.Errorf("left on the node: %v", left)
	}
	if k := guardTables(t, n); k != 2 {
		t.Errorf("%d of the source guard's 2 tables left, which another network's container needs", k)
	}
	// Run again, it finds no conflist: name the directories, whose
	// defaults are the machine's own (/run/berth). The other network's
	// container is gone now, and the bridge table goes.
	must(t, n.netns.Do(func(ns.NetNS) error {
		return netlink.LinkDel(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "bvother"}})
	}))
	again := n.spec("", time.Minute)
	again.StateDir, again.LeaseDir, again.IPAMDataDir = n.runDir, n.runDir, n.dataDir
	if err := n.uninstall(context.Background(), again); err != nil {
		t.Errorf("second uninstall: %v", err)
	}
	if k := guardTables(t, n); k != 0 {
		t.Errorf("%d of the source guard's tables left with no guarded host veth", k)
	}
}

// guardTables counts the source guard's nftables tables n has (bridge
// and inet).
func guardTables(t *testing.T, n *node) int {
	t.Helper()
	found := 0
	must(t, n.netns.Do(func(ns.NetNS) error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		for _, want := range []*nftables.Table{
			{Name: srcguard.BridgeTable, Family: nftables.TableFamilyBridge},
			{Name: srcguard.RoutedTable, Family: nftables.TableFamilyINet},
		} {
			if _, err := c.ListTableOfFamily(want.Name, want.Family); err == nil {
				found++
			}
		}
		return nil
	}))
	return found
}

// A node whose containers stay attached gets an error naming the way out.
func TestUninstallTimesOutOnAttachedContainers(t *testing.T) {
	n := newNode(t)
	n.attach(t, "still-there")
	err := n.uninstall(context.Background(), n.spec("", 3*time.Second))
	if err == nil || !strings.Contains(err.Error(), "still-there") || !strings.Contains(err.Error(), "drain the node") {
		t.Fatalf("uninstall with a container attached: %v; want an error naming it and what to do", err)
	}
	if _, err := os.Stat(filepath.Join(n.binDir, "berth-vxlan")); errors.Is(err, os.ErrNotExist) {
		t.Error("plugins removed although a container is still attached")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Another berth network on the node keeps the shared directories (and
// its own lease), and only this network's parts go.
func TestUninstallKeepsOtherNetworks(t *testing.T) {
	n := newNode(t)
	other := lease.Path(n.runDir, "other")
	must(t, os.WriteFile(other, []byte(`{}`), 0o644))
	if err := n.uninstall(context.Background(), n.spec("", time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another network's lease was removed: %v", err)
	}
	for _, p := range []string{lease.Path(n.runDir, "berth"), filepath.Join(n.runDir, "networks", "berth")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s is left", p)
		}
	}
}

// On the eBPF datapath, uninstall detaches the network's uplink program
// from whichever link netd attached it to (uninstall does not know netd's
// --iface) and removes its pins; another network's stay.
func TestUninstallRemovesTheEBPFDatapath(t *testing.T) {
	n := newNode(t)
	bpffs := testenv.BPFFS(t)
	list, err := conf.NodeConflist{Network: "berth", Mode: "vxlan", LeaseDir: n.runDir, StateDir: n.runDir, IPAMDataDir: n.dataDir,
		Datapath: conf.DatapathEBPF, BPFFS: bpffs}.Marshal()
	must(t, err)
	must(t, os.WriteFile(conf.ConflistPath(n.confDir, "berth"), list, 0o644))
	var uplink int
	must(t, n.netns.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0-peer"}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		uplink = l.Attrs().Index
		return err
	}))
	for _, network := range []string{"berth", "other"} {
		lock, err := fastpath.Acquire(bpffs)
		must(t, err)
		f, err := fastpath.Open(bpffs, network)
		lock.Release()
		must(t, err)
		must(t, n.netns.Do(func(ns.NetNS) error { return f.AttachUplink(uplink) }))
		f.Close()
	}

	if err := n.uninstall(context.Background(), n.spec("", time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fastpath.Dir(bpffs, "berth")); err == nil {
		t.Errorf("the pins of berth are left in %s", fastpath.Dir(bpffs, "berth"))
	}
	if _, err := os.Stat(fastpath.Dir(bpffs, "other")); err != nil {
		t.Errorf("another network's pins were removed: %v", err)
	}
	var progs []string
	must(t, n.netns.Do(func(ns.NetNS) (err error) {
		progs, err = testenv.TCXIngressNames(uplink)
		return err
	}))
	if len(progs) != 1 {
		t.Errorf("programs on the uplink after uninstall: %v, want other's from_uplink only", progs)
	}
}

// vxlanNetwork is a second vxlan network on a node, as its netd and
// plugins leave it: conflist, lease file (dual-stack), VTEP over the
// IPv4 or the IPv6 underlay, routes of protocol 73 of both families,
// VTEP guard, bridge, IPAM data and an attached container's record.
type vxlanNetwork struct {
	name   string
	vni    int
	v6     bool // the VTEP runs over the IPv6 underlay: berth6.<vni>
	bridge string
	routes []string // of protocol 73, inside its CIDRs
}

func (w vxlanNetwork) vtepName() string {
	if w.v6 {
		return vxlan.VTEPNameV6(w.vni)
	}
	return vxlan.VTEPName(w.vni)
}

// addVTEP makes the VTEP netd makes for vni over an IPv4 or IPv6
// underlay (eth0).
func addVTEP(name string, vni int, v6 bool) error {
	under, err := netlink.LinkByName("eth0")
	if err != nil {
		// A veth: the kernel refuses an IPv6 VTEP on a dummy.
		under = &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0-peer"}
		if err := netlink.LinkAdd(under); err != nil {
			return err
		}
	}
	local := net.ParseIP("192.0.2.1")
	if v6 {
		local = net.ParseIP("fd00:50::1")
	}
	return netlink.LinkAdd(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: name}, VxlanId: vni, Port: 8472,
		VtepDevIndex: under.Attrs().Index, SrcAddr: local})
}

func (n *node) addVXLANNetwork(t *testing.T, w vxlanNetwork) {
	t.Helper()
	list, err := conf.NodeConflist{Network: w.name, Mode: "vxlan", LeaseDir: n.runDir, StateDir: n.runDir, IPAMDataDir: n.dataDir, Bridge: w.bridge}.Marshal()
	must(t, err)
	must(t, os.WriteFile(conf.ConflistPath(n.confDir, w.name), list, 0o644))
	must(t, lease.Write(lease.Path(n.runDir, w.name), &lease.Node{Network: w.name, Mode: "vxlan",
		NetworkCIDR: netip.MustParsePrefix("10.30.0.0/16"), Subnet: netip.MustParsePrefix("10.30.3.0/24"),
		NetworkCIDRv6: netip.MustParsePrefix("fd00:30::/56"), SubnetV6: netip.MustParsePrefix("fd00:30:0:3::/64"),
		MTU: 1430, NodeName: "n1", NodeIP: netip.MustParseAddr("192.0.2.1"), NodeIPv6: netip.MustParseAddr("fd00:50::1"), VNI: w.vni}))
	must(t, os.MkdirAll(filepath.Join(n.dataDir, w.name), 0o755))
	must(t, os.WriteFile(filepath.Join(n.dataDir, w.name, "10.30.3.2"), []byte("c9"), 0o644))
	must(t, os.MkdirAll(filepath.Join(n.runDir, "networks", w.name), 0o755))
	must(t, os.WriteFile(filepath.Join(n.runDir, "networks", w.name, strings.Repeat("b", 24)+".json"),
		[]byte(`{"network":"`+w.name+`","containerID":"c9","ifName":"eth0","hostVeth":"bvbbbbbbbbbbb"}`), 0o600))
	must(t, n.netns.Do(func(ns.NetNS) error {
		if err := addVTEP(w.vtepName(), w.vni, w.v6); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: w.bridge}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		if err := netlink.LinkSetAlias(br, nodebridge.Mark(w.name, false)); err != nil {
			return err
		}
		for _, r := range w.routes {
			_, dst, _ := net.ParseCIDR(r)
			if err := netlink.RouteAdd(&netlink.Route{Dst: dst, Type: unix.RTN_BLACKHOLE, Protocol: backend.RouteProtocol}); err != nil {
				return fmt.Errorf("route %s: %w", r, err)
			}
		}
		_, err := firewall.EnsureVTEPGuard(firewall.VTEPGuard{Network: w.name, Port: 8472, Underlay: "eth0"})
		return err
	}))
}

// berthState is what of berth a node's namespace holds: its VTEPs, its
// bridges, its routes of protocol 73, the networks whose VTEP guard is
// there.
type berthState struct {
	vteps, bridges, routes, guards []string
}

func (n *node) berthState(t *testing.T, networks ...string) berthState {
	t.Helper()
	var s berthState
	must(t, n.netns.Do(func(ns.NetNS) error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, v := range berthVTEPs(links) {
			s.vteps = append(s.vteps, v.String())
		}
		for _, l := range links {
			if owner, _ := nodebridge.Owner(l.Attrs().Alias); owner != "" {
				s.bridges = append(s.bridges, l.Attrs().Name)
			}
		}
		routes, err := backend.ReadRoutes()
		if err != nil {
			return err
		}
		for _, r := range routes {
			s.routes = append(s.routes, r.Dst.String())
		}
		for _, network := range networks {
			g, err := firewall.ReadVTEPGuard(network)
			if err != nil {
				return err
			}
			if g.Exists() {
				s.guards = append(s.guards, network)
			}
		}
		return nil
	}))
	for _, l := range [][]string{s.vteps, s.bridges, s.routes, s.guards} {
		slices.Sort(l)
	}
	return s
}

// existing are those of paths that exist, missing the others.
func existing(paths ...string) []string {
	return slices.DeleteFunc(slices.Clone(paths), func(p string) bool { _, err := os.Stat(p); return err != nil })
}

func missing(paths ...string) []string {
	return slices.DeleteFunc(slices.Clone(paths), func(p string) bool { _, err := os.Stat(p); return err == nil })
}

// Two vxlan networks on a node, each with its VTEP (over either underlay
// family), routes, guard, bridge, state and plugins: uninstalling one
// leaves every part of the other, twice in a row; uninstalling the other
// then leaves nothing of berth.
func TestUninstallKeepsOtherVXLANNetwork(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ownV6     bool
		otherV6   bool
		ownVTEP   string
		otherVTEP string
	}{
		{"own over IPv4, other over IPv6", false, true, "berth.1", "berth6.2"},
		{"own over IPv6, other over IPv4", true, false, "berth6.1", "berth.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			if tc.ownV6 {
				must(t, n.netns.Do(func(ns.NetNS) error {
					if err := netlink.LinkDel(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "berth.1"}}); err != nil {
						return err
					}
					return addVTEP("berth6.1", 1, true)
				}))
			}
			must(t, n.netns.Do(func(ns.NetNS) error {
				_, err := firewall.EnsureVTEPGuard(firewall.VTEPGuard{Network: "berth", Port: 8472, Underlay: "eth0"})
				return err
			}))
			other := vxlanNetwork{name: "other", vni: 2, v6: tc.otherV6, bridge: "berth1", routes: []string{"10.30.0.0/16", "10.30.7.0/24", "fd00:30::/56", "fd00:30:0:7::/64"}}
			n.addVXLANNetwork(t, other)
			before := n.berthState(t, "berth", "other")
			if !slices.Contains(before.vteps, tc.ownVTEP) || !slices.Contains(before.vteps, tc.otherVTEP) {
				t.Fatalf("VTEPs before: %v", before.vteps)
			}
			want := berthState{vteps: []string{tc.otherVTEP}, bridges: []string{"berth1"}, routes: other.routes, guards: []string{"other"}}
			slices.Sort(want.routes)
			otherFiles := []string{conf.ConflistPath(n.confDir, "other"), lease.Path(n.runDir, "other"),
				filepath.Join(n.dataDir, "other", "10.30.3.2"), filepath.Join(n.runDir, "networks", "other"),
				filepath.Join(n.binDir, "berth-vxlan"), filepath.Join(n.binDir, "berth-ipam"), filepath.Join(n.runDir, "iptables.lock")}

			for run := 1; run <= 2; run++ {
				spec := n.spec("", time.Minute)
				spec.StateDir, spec.LeaseDir, spec.IPAMDataDir = n.runDir, n.runDir, n.dataDir // the second run finds no conflist
				if err := n.uninstall(context.Background(), spec); err != nil {
					t.Fatalf("uninstall berth (run %d): %v", run, err)
				}
				if got := n.berthState(t, "berth", "other"); !reflect.DeepEqual(got, want) {
					t.Errorf("run %d: left %+v, want other's only: %+v", run, got, want)
				}
				if m := missing(otherFiles...); len(m) > 0 {
					t.Errorf("run %d: removed what network other still needs: %v", run, m)
				}
				if left := existing(lease.Path(n.runDir, "berth"), filepath.Join(n.dataDir, "berth"), filepath.Join(n.runDir, "networks", "berth")); len(left) > 0 {
					t.Errorf("run %d: network berth's files left: %v", run, left)
				}
			}

			// The other network's container is gone: it goes too, and
			// berth with it.
			must(t, os.RemoveAll(filepath.Join(n.runDir, "networks", "other")))
			spec := n.spec("", time.Minute)
			spec.Network = "other"
			if err := n.uninstall(context.Background(), spec); err != nil {
				t.Fatalf("uninstall other: %v", err)
			}
			if got := n.berthState(t, "berth", "other"); !reflect.DeepEqual(got, berthState{}) {
				t.Errorf("after the last network: left %+v", got)
			}
			if left := existing(otherFiles...); len(left) > 0 {
				t.Errorf("after the last network, left: %v", left)
			}
		})
	}
}

// A lease file written by a netd before the VNI was recorded: the
// network's VTEP cannot be told from another network's whose lease does
// not name its VNI either, so both stay, each named in a warning with
// the command that deletes it; a VTEP another lease names is not.
func TestUninstallWithoutRecordedVNI(t *testing.T) {
	n := newNode(t)
	l, err := lease.Read(lease.Path(n.runDir, "berth"), time.Time{})
	must(t, err)
	l.VNI = 0
	must(t, lease.Write(lease.Path(n.runDir, "berth"), l))
	n.addVXLANNetwork(t, vxlanNetwork{name: "other", vni: 2, bridge: "berth1"})
	must(t, n.netns.Do(func(ns.NetNS) error { return addVTEP("berth6.3", 3, true) })) // whose lease is elsewhere
	must(t, n.netns.Do(func(ns.NetNS) error {
		_, err := firewall.EnsureVTEPGuard(firewall.VTEPGuard{Network: "berth", Port: 8472, Underlay: "eth0"})
		return err
	}))

	var logs strings.Builder
	if err := n.uninstallLogged(context.Background(), n.spec("", time.Minute), slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	if got := n.berthState(t).vteps; !reflect.DeepEqual(got, []string{"berth.1", "berth.2", "berth6.3"}) {
		t.Errorf("VTEPs after uninstall: %v, want all three left", got)
	}
	for _, v := range []string{"berth.1", "berth6.3"} {
		if !strings.Contains(logs.String(), `command="ip link del `+v+`"`) {
			t.Errorf("no warning names the VTEP %s left behind:\n%s", v, logs.String())
		}
	}
	if strings.Contains(logs.String(), "berth.2") {
		t.Errorf("warned of berth.2, which network other's lease names:\n%s", logs.String())
	}
	// A VTEP left behind, which may be the network's, stays guarded.
	must(t, n.netns.Do(func(ns.NetNS) error {
		s, err := firewall.ReadVTEPGuard("berth")
		if err == nil && !s.Exists() {
			t.Error("the network's VTEP guard was removed while VTEPs it may guard were left")
		}
		return err
	}))
}

// The pure sort of VTEPs: the network's by its recorded VNI; without
// one, those no other lease names are the unsure ones.
func TestNetworkVTEPs(t *testing.T) {
	vteps := []vtep{
		{link: &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "berth.1"}, VxlanId: 1}, vni: 1},
		{link: &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "berth6.1"}, VxlanId: 1}, vni: 1},
		{link: &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "berth6.2"}, VxlanId: 2}, vni: 2},
		{link: &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "berth.3"}, VxlanId: 3}, vni: 3},
	}
	vxlanLease := func(vni int) *lease.Node { return &lease.Node{Mode: lease.ModeVXLAN, VNI: vni} }
	for _, tc := range []struct {
		name         string
		own          *lease.Node
		others       []*lease.Node
		ours, unsure string
	}{
		{"recorded VNI", vxlanLease(1), []*lease.Node{vxlanLease(2)}, "berth.1 berth6.1", ""},
		{"recorded VNI, other leases unknown", vxlanLease(2), nil, "berth6.2", ""},
		{"no VTEP of the VNI", vxlanLease(9), nil, "", ""},
		{"hostgw network", &lease.Node{Mode: lease.ModeHostGW}, nil, "", ""},
		{"lease before the VNI", vxlanLease(0), []*lease.Node{vxlanLease(2), {Mode: lease.ModeHostGW}}, "", "berth.1 berth6.1 berth.3"},
		{"no lease", nil, []*lease.Node{vxlanLease(1), vxlanLease(3)}, "", "berth6.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ours, unsure := networkVTEPs(vteps, tc.own, tc.others)
			names := func(v []vtep) string {
				var s []string
				for _, x := range v {
					s = append(s, x.String())
				}
				return strings.Join(s, " ")
			}
			if names(ours) != tc.ours || names(unsure) != tc.unsure {
				t.Errorf("ours %q, unsure %q; want %q, %q", names(ours), names(unsure), tc.ours, tc.unsure)
			}
		})
	}
}

// Another berth network keeps the plugins and shared directories while
// anything of it is on the node: a CNI config running a berth plugin
// (netd's conflist, or one written by hand for berth-bridge), a lease
// file, an attachment record.
func TestOtherNetworks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string // under conf/, run/
		want  []string
	}{
		{"none", map[string]string{"conf/99-loopback.conf": `{"name":"lo","type":"loopback"}`, "conf/10-flannel.conflist": `{"name":"cbr0","plugins":[{"type":"flannel"}]}`}, nil},
		{"own only", map[string]string{"run/berth.json": `{}`, "run/networks/berth/a.json": `{}`}, nil},
		{"conflist", map[string]string{"conf/20-pods.conflist": `{"name":"pods","plugins":[{"type":"berth-bridge"},{"type":"portmap"}]}`}, []string{"pods"}},
		{"single plugin conf", map[string]string{"conf/20-pods.conf": `{"name":"pods","type":"berth-hostgw"}`}, []string{"pods"}},
		{"lease file", map[string]string{"run/other.json": `{}`}, []string{"other"}},
		{"container leaving", map[string]string{"run/networks/other/a.leaving": `{}`}, []string{"other"}},
		{"all of one", map[string]string{"conf/10-berth-other.conflist": `{"name":"other","plugins":[{"type":"berth-vxlan"}]}`, "run/other.json": `{}`, "run/networks/other/a.json": `{}`}, []string{"other"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for p, data := range tc.files {
				must(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755))
				must(t, os.WriteFile(filepath.Join(dir, p), []byte(data), 0o644))
			}
			n := Node{Network: "berth", CNIConfDir: filepath.Join(dir, "conf"), LeaseDir: filepath.Join(dir, "run"), StateDir: filepath.Join(dir, "run")}
			got, err := n.otherNetworks()
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("other networks %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// A run that fails keeps the lease file, which names the network's VTEP
// and CIDRs for the next run, expired so that no plugin trusts it; the
// next run finishes.
func TestUninstallFailedRunKeepsLease(t *testing.T) {
	n := newNode(t)
	spec := n.spec("", time.Minute)
	spec.IPAMDataDir = filepath.Join(t.TempDir(), "not-a-dir")
	must(t, os.WriteFile(spec.IPAMDataDir, nil, 0o644)) // removing <it>/berth fails
	if err := n.uninstall(context.Background(), spec); err == nil {
		t.Fatal("uninstall succeeded with an IPAM data dir that is a file")
	}
	path := lease.Path(n.runDir, "berth")
	if _, err := lease.Read(path, time.Now()); !errors.Is(err, lease.ErrStale) {
		t.Errorf("lease file after a failed run: %v, want it expired (lease.ErrStale)", err)
	}
	if l, err := lease.Read(path, time.Time{}); err != nil || l.VNI != 1 || len(l.CIDRs()) != 1 {
		t.Errorf("lease file after a failed run: %+v, %v; want it kept whole for the next run", l, err)
	}
	spec.IPAMDataDir, spec.StateDir, spec.LeaseDir = n.dataDir, n.runDir, n.runDir
	if err := n.uninstall(context.Background(), spec); err != nil {
		t.Fatalf("second run: %v", err)
	}
	if left := existing(path, n.runDir); len(left) > 0 {
		t.Errorf("left after the second run: %v", left)
	}
	if s := n.berthState(t, "berth"); !reflect.DeepEqual(s, berthState{}) {
		t.Errorf("left after the second run: %+v", s)
	}
}
