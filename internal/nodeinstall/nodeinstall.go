// Package nodeinstall puts berth's CNI plugins on a node and takes
// everything berth made on a node off it again. The Kubernetes manifests
// run it from berth's image (`netd install-cni` in the DaemonSet's init
// container, `netd uninstall` in the uninstall DaemonSet) with the host's
// directories mounted at the same paths, so paths written into the
// conflist are the host's.
package nodeinstall

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/attachments"
	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/nodebridge"
	"github.com/berthnet/berth/internal/srcguard"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/backend/vxlan"
)

// PluginPrefix starts the name of every berth CNI plugin.
const PluginPrefix = "berth-"

// Install copies every berth plugin found in srcDir (berth-*) into the CNI
// bin dir dst. Each file is written under a temporary name and renamed, so
// a runtime exec'ing a plugin meanwhile runs the old or the new one, never
// half of one; a plugin already identical is left alone. It returns the
// names it wrote.
func Install(srcDir, dst string) ([]string, error) {
	plugins, err := filepath.Glob(filepath.Join(srcDir, PluginPrefix+"*"))
	if err != nil {
		return nil, err
	}
	if len(plugins) == 0 {
		return nil, fmt.Errorf("no berth plugins (%s*) in %s", PluginPrefix, srcDir)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, fmt.Errorf("creating CNI bin dir: %w", err)
	}
	var wrote []string
	for _, src := range plugins {
		name := filepath.Base(src)
		data, err := os.ReadFile(src)
		if err != nil {
			return wrote, err
		}
		target := filepath.Join(dst, name)
		if cur, err := os.ReadFile(target); err == nil && bytes.Equal(cur, data) {
			continue
		}
		if err := writeExecutable(target, data); err != nil {
			return wrote, fmt.Errorf("installing %s: %w", name, err)
		}
		wrote = append(wrote, name)
	}
	return wrote, nil
}

func writeExecutable(path string, data []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o755) // whatever the umask
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// Node says where berth's files are on the node and which network to
// remove.
type Node struct {
	Network     string // CNI network name, netd's --network-name
	CNIConfDir  string
	CNIBinDir   string
	LeaseDir    string // default: the conflist's leaseDir, else lease.DefaultDir
	StateDir    string // default: the conflist's stateDir, else conf.DefaultStateDir
	IPAMDataDir string // default: the conflist's ipam dataDir, else conf.DefaultIPAMDataDir
	BPFFS       string // eBPF datapath's pins; default: the conflist's bpffs, else conf.DefaultBPFFS
	MetricsAddr string // netd's; Uninstall waits until nothing answers there
	// Wait bounds how long Uninstall waits for netd to stop and for the
	// node's containers on the network to go.
	Wait time.Duration
}

// Uninstall removes the network from the node, and berth with its last
// network: the network's conflist first (so the runtime starts no new
// container on it), then, once netd has stopped and no container is
// attached any more, its routes (protocol 73, inside its CIDRs), its VTEP
// (berth.<vni> or berth6.<vni> of the VNI its lease file names), its
// eBPF datapath, its VTEP guard (firewall.VTEPGuard), its bridge, the
// plugins' state and IPAM data of the network and its lease file; the
// source guard's nftables tables once no network's container needs them,
// and the plugins in the CNI bin dir and the shared directories once no
// other berth network is on the node. It does not ask the datastore for
// anything, so it works with either; with etcd, the node's lease there
// expires after netd's --lease-ttl (netd leave releases it at once).
//
// Containers still attached make it wait, because their DEL needs the
// plugins: delete or drain those pods first. A run that fails keeps the
// lease file, which the next one needs to find the network's VTEP and
// routes.
func Uninstall(ctx context.Context, n Node, log *slog.Logger) error {
	n.fill()
	ctx, cancel := context.WithTimeout(ctx, n.Wait)
	defer cancel()
	if err := waitNetdStopped(ctx, n.MetricsAddr, log); err != nil {
		return err
	}
	conflist := conf.ConflistPath(n.CNIConfDir, n.Network)
	bridgeName := n.readConflist(conflist, log)
	if err := removeFile(conflist); err != nil {
		return err
	}
	if err := waitDetached(ctx, n.StateDir, n.Network, log); err != nil {
		return err
	}

	leasePath := lease.Path(n.LeaseDir, n.Network)
	own, err := lease.Read(leasePath, time.Time{})
	if err != nil && !errors.Is(err, lease.ErrMissing) {
		log.Warn("cannot read the lease file; the network's routes of protocol 73 and its VTEP are left alone", "path", leasePath, "err", err)
	}
	var errs []error
	if own != nil {
		// No plugin trusts it from now on (an ADD that raced the
		// conflist's removal is told to try again), but it stays until
		// the end: it names the network's VTEP and CIDRs.
		if err := expire(leasePath, own); err != nil {
			return err
		}
		errs = append(errs, backend.RemoveRoutes(own.CIDRs()))
	}
	// Before the VTEP: its programs go with it, but an earlier pass
	// that deleted it may have stopped here.
	errs = append(errs, removeFastpath(n.BPFFS, n.Network, log))
	left, vtepErr := removeVTEPs(n.Network, own, slices.Collect(maps.Values(lease.Others(n.LeaseDir, n.Network))), log)
	errs = append(errs, vtepErr)
	if vtepErr == nil && left == 0 { // a VTEP is never left unguarded
		errs = append(errs, firewall.RemoveVTEPGuard(n.Network))
	} else if left > 0 {
		log.Warn("the network's VTEP guard stays while a VTEP it may guard is left; run netd uninstall again once it is deleted", "network", n.Network, "chain", "inet "+firewall.GuardTable+" "+firewall.GuardChain(n.Network))
	}
	errs = append(errs,
		removeBridge(bridgeName, n.Network, log),
		// The source guard's tables are the node's: they go with the
		// last guarded host veth of any network.
		srcguard.RemoveTables(),
		os.RemoveAll(filepath.Join(n.StateDir, "networks", n.Network)),
		os.RemoveAll(filepath.Join(n.IPAMDataDir, n.Network)),
	)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := removeFile(leasePath); err != nil {
		return err
	}
	// The plugins and the directories, with the plugins' shared files,
	// go with the last berth network on the node.
	others, err := n.otherNetworks()
	if err != nil {
		return err
	}
	if len(others) > 0 {
		log.Info("other berth networks are on this node: the plugins and shared directories stay", "networks", others)
	} else {
		last := []error{removePlugins(n.CNIBinDir)}
		for _, dir := range uniq(n.StateDir, n.LeaseDir) {
			last = append(last, os.RemoveAll(dir))
		}
		if err := errors.Join(last...); err != nil {
			return err
		}
	}
	log.Info("network removed from this node", "network", n.Network, "otherNetworks", len(others))
	return nil
}

// expire makes l's file at path expired, so the plugins refuse an ADD
// (lease.ErrStale: try again later); DEL and GC work without a lease.
func expire(path string, l *lease.Node) error {
	now := time.Now().UTC().Truncate(time.Second)
	if !l.Expires.IsZero() && l.Expires.Before(now) {
		return nil
	}
	e := *l
	e.Expires = now.Add(-time.Second)
	if err := lease.Write(path, &e); err != nil {
		return fmt.Errorf("expiring the lease file: %w", err)
	}
	return nil
}

func (n *Node) fill() {
	if n.Network == "" {
		n.Network = conf.DefaultNetworkName
	}
	if n.CNIConfDir == "" {
		n.CNIConfDir = "/etc/cni/net.d"
	}
	if n.CNIBinDir == "" {
		n.CNIBinDir = "/opt/cni/bin"
	}
	if n.Wait == 0 {
		n.Wait = 10 * time.Minute
	}
}

// readConflist takes the paths and the bridge name from the network's
// conflist, where netd wrote them; a missing one means the defaults (or
// what the caller gave).
func (n *Node) readConflist(path string, log *slog.Logger) (bridgeName string) {
	var list struct {
		Plugins []struct {
			Type     string `json:"type"`
			Bridge   string `json:"bridge"`
			LeaseDir string `json:"leaseDir"`
			StateDir string `json:"stateDir"`
			BPFFS    string `json:"bpffs"`
			IPAM     struct {
				DataDir string `json:"dataDir"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	data, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(data, &list)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn("cannot read the conflist; using the default paths", "path", path, "err", err)
	}
	for _, p := range list.Plugins {
		if !strings.HasPrefix(p.Type, PluginPrefix) {
			continue
		}
		bridgeName = p.Bridge
		if bridgeName == "" && p.Type != PluginPrefix+lease.ModeBGP {
			bridgeName = conf.DefaultBridge
		}
		n.LeaseDir = firstOf(n.LeaseDir, p.LeaseDir)
		n.StateDir = firstOf(n.StateDir, p.StateDir)
		n.IPAMDataDir = firstOf(n.IPAMDataDir, p.IPAM.DataDir)
		n.BPFFS = firstOf(n.BPFFS, p.BPFFS)
	}
	n.LeaseDir = firstOf(n.LeaseDir, lease.DefaultDir)
	n.StateDir = firstOf(n.StateDir, conf.DefaultStateDir)
	n.IPAMDataDir = firstOf(n.IPAMDataDir, conf.DefaultIPAMDataDir)
	n.BPFFS = firstOf(n.BPFFS, conf.DefaultBPFFS)
	return bridgeName
}

func firstOf(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// waitNetdStopped waits until netd no longer accepts connections on addr:
// a netd still running would put back what Uninstall removes.
func waitNetdStopped(ctx context.Context, addr string, log *slog.Logger) error {
	if addr == "" {
		return nil
	}
	for logged := false; ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		if !logged {
			log.Info("waiting for netd to stop (delete berth's DaemonSet first)", "metrics-address", addr)
			logged = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("netd still answers on %s: delete berth's DaemonSet first (kubectl delete -f berth.yaml)", addr)
		case <-time.After(time.Second):
		}
	}
}

// waitDetached waits until no container is attached to network on this
// node any more: their runtime still has to DEL them, which needs the
// plugins and the state.
func waitDetached(ctx context.Context, stateDir, network string, log *slog.Logger) error {
	var last time.Time
	for {
		list, err := attachments.List(stateDir, network)
		if err != nil {
			return err
		}
		ids := make([]string, 0, len(list))
		for _, a := range list {
			ids = append(ids, a.ContainerID)
		}
		if len(ids) == 0 {
			return nil
		}
		if time.Since(last) > 30*time.Second {
			log.Info("waiting for containers on the network to be deleted (delete their pods or drain the node)",
				"network", network, "containers", len(ids), "first", ids[0])
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d containers are still attached to network %s on this node (first %s): delete their pods or drain the node, then uninstall again",
				len(ids), network, ids[0])
		case <-time.After(2 * time.Second):
		}
	}
}

func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// removeFastpath removes the network's eBPF datapath, whatever the
// conflist said (a run stopped after removing it must not leave the
// programs behind): the network's from_uplink from every link (the
// underlay link is netd's --iface, which uninstall does not know) and its
// pins, and bpffs's berth directory when no other network has pins there.
func removeFastpath(bpffs, network string, log *slog.Logger) error {
	if _, err := os.Stat(fastpath.Dir(bpffs, network)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	idx := make([]int, 0, len(links))
	for _, l := range links {
		idx = append(idx, l.Attrs().Index)
	}
	if err := fastpath.Leave(bpffs, network, idx); err != nil {
		return fmt.Errorf("removing the eBPF datapath of %s: %w", network, err)
	}
	log.Info("removed the eBPF datapath", "network", network, "pins", fastpath.Dir(bpffs, network))
	// Empty once the last network is gone; a network's pins in it keep it.
	if err := os.Remove(filepath.Dir(fastpath.Dir(bpffs, network))); err != nil && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// vtep is a VXLAN link named as netd names a VTEP: berth.<vni>, or
// berth6.<vni> over an IPv6 underlay.
type vtep struct {
	link netlink.Link
	vni  int
}

func (v vtep) String() string { return v.link.Attrs().Name }

// berthVTEPs are the VTEPs among links.
func berthVTEPs(links []netlink.Link) []vtep {
	var out []vtep
	for _, l := range links {
		x, ok := l.(*netlink.Vxlan)
		if !ok {
			continue
		}
		if name := l.Attrs().Name; name == vxlan.VTEPName(x.VxlanId) || name == vxlan.VTEPNameV6(x.VxlanId) {
			out = append(out, vtep{link: l, vni: x.VxlanId})
		}
	}
	return out
}

// networkVTEPs sorts the node's VTEPs: the network's, whose VNI its lease
// own names; and, when own does not say (no lease file, or one from a
// netd before the lease recorded the VNI), those whose VNI no other
// network's lease names, which may be the network's. VTEPs of other
// VNIs than own's are other networks' (two networks of one VNI would
// share one VTEP name).
func networkVTEPs(vteps []vtep, own *lease.Node, others []*lease.Node) (ours, unsure []vtep) {
	if own != nil && own.Mode != lease.ModeVXLAN {
		return nil, nil
	}
	for _, v := range vteps {
		switch {
		case own != nil && own.VNI != 0:
			if v.vni == own.VNI {
				ours = append(ours, v)
			}
		case !slices.ContainsFunc(others, func(o *lease.Node) bool { return o.VNI == v.vni }):
			unsure = append(unsure, v)
		}
	}
	return ours, unsure
}

// removeVTEPs deletes network's VTEPs (both underlay families, as netd
// leave does) and names those it cannot tell from another network's,
// returning how many of those it left.
func removeVTEPs(network string, own *lease.Node, others []*lease.Node, log *slog.Logger) (left int, err error) {
	links, err := netlink.LinkList()
	if err != nil {
		return 0, fmt.Errorf("listing links: %w", err)
	}
	ours, unsure := networkVTEPs(berthVTEPs(links), own, others)
	var errs []error
	for _, v := range ours {
		if err := netlink.LinkDel(v.link); err != nil {
			errs = append(errs, fmt.Errorf("deleting VTEP %s: %w", v, err))
			continue
		}
		log.Info("deleted VTEP", "link", v.String(), "vni", v.vni)
	}
	for _, v := range unsure {
		log.Warn("VTEP left alone: the network's lease file does not name its VNI (no lease file, or one written by a netd before 'vni' was recorded) and no other network's lease names it; if it is this network's, delete it",
			"network", network, "link", v.String(), "vni", v.vni, "command", "ip link del "+v.String())
	}
	return len(unsure), errors.Join(errs...)
}

// removeBridge deletes the network's bridge if berth made it for this
// network (its mark says so) and no berth port is left on it, as the
// network's last DEL does (nodebridge.Release).
func removeBridge(name, network string, log *slog.Logger) error {
	if name == "" {
		return nil
	}
	removed, err := nodebridge.Release(name, network)
	if err != nil {
		return fmt.Errorf("removing bridge %s: %w", name, err)
	}
	if removed {
		log.Info("deleted bridge", "link", name)
	}
	return nil
}

func removePlugins(dir string) error {
	plugins, err := filepath.Glob(filepath.Join(dir, PluginPrefix+"*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range plugins {
		errs = append(errs, removeFile(p))
	}
	return errors.Join(errs...)
}

// otherNetworks are the berth networks on the node other than n's: with
// a CNI config in the conf dir that runs a berth plugin, a lease file
// in the lease dir (their netd writes the conflist again when it
// starts) or attachment records in the state dir (their containers'
// DEL needs the plugins). They keep the plugins and the shared
// directories: what else is in those (the iptables lock, host port
// claims, per-namespace directories) belongs to the plugins of every
// network there.
func (n Node) otherNetworks() ([]string, error) {
	var found []string
	configs, err := berthConfigs(n.CNIConfDir)
	if err != nil {
		return nil, err
	}
	found = append(found, configs...)
	leases, err := lease.Networks(n.LeaseDir)
	if err != nil {
		return nil, err
	}
	found = append(found, leases...)
	records, err := filepath.Glob(filepath.Join(n.StateDir, "networks", "*", "*"+attachments.ExtLive))
	if err != nil {
		return nil, err
	}
	leaving, err := filepath.Glob(filepath.Join(n.StateDir, "networks", "*", "*"+attachments.ExtLeaving))
	if err != nil {
		return nil, err
	}
	for _, r := range append(records, leaving...) {
		found = append(found, filepath.Base(filepath.Dir(r)))
	}
	found = slices.DeleteFunc(found, func(name string) bool { return name == n.Network })
	slices.Sort(found)
	return slices.Compact(found), nil
}

// berthConfigs are the networks whose CNI config in dir (a conflist or
// a single plugin's .conf, as libcni reads them) runs a berth plugin.
func berthConfigs(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the CNI conf dir: %w", err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() || !slices.Contains([]string{".conf", ".conflist", ".json"}, filepath.Ext(e.Name())) {
			continue
		}
		var c struct {
			Name    string `json:"name"`
			Type    string `json:"type"`
			Plugins []struct {
				Type string `json:"type"`
			} `json:"plugins"`
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil || json.Unmarshal(data, &c) != nil {
			continue // not a config a runtime loads either
		}
		berth := strings.HasPrefix(c.Type, PluginPrefix)
		for _, p := range c.Plugins {
			berth = berth || strings.HasPrefix(p.Type, PluginPrefix)
		}
		if berth {
			out = append(out, cmp.Or(c.Name, e.Name()))
		}
	}
	return out, nil
}

func uniq(s ...string) []string {
	var out []string
	for _, v := range s {
		if v != "" && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}
