// Package nodeinstall puts berth's CNI plugins on a node and takes
// everything berth made on a node off it again. The Kubernetes manifests
// run it from berth's image (`netd install-cni` in the DaemonSet's init
// container, `netd uninstall` in the uninstall DaemonSet) with the host's
// directories mounted at the same paths, so paths written into the
// conflist are the host's.
package nodeinstall

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
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

// Uninstall removes berth from the node: the network's conflist first (so
// the runtime starts no new container on it), then, once netd has stopped
// and no container is attached any more, the lease file, the routes
// (protocol 73), VTEPs, the bridge, the plugins' state and IPAM data of the
// network, its VTEP guard (firewall.VTEPGuard), the source guard's
// nftables tables once no network's container needs them, and the
// plugins in the CNI bin dir. It does not ask the datastore for anything, so it works
// with either; with etcd, the node's
// lease there expires after netd's --lease-ttl (netd leave releases it at
// once).
//
// Containers still attached make it wait, because their DEL needs the
// plugins: delete or drain those pods first.
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

	var errs []error
	leasePath := lease.Path(n.LeaseDir, n.Network)
	l, err := lease.Read(leasePath, time.Time{})
	if err == nil {
		var cidrs []netip.Prefix
		for _, c := range []netip.Prefix{l.NetworkCIDR, l.NetworkCIDRv6} {
			if c.IsValid() {
				cidrs = append(cidrs, c)
			}
		}
		errs = append(errs, backend.RemoveRoutes(cidrs))
	} else if !errors.Is(err, lease.ErrMissing) {
		log.Warn("cannot read the lease file; routes of protocol 73 are left alone", "path", leasePath, "err", err)
	}
	errs = append(errs,
		removeFile(leasePath),
		// Before the VTEPs: their programs go with them, but an
		// earlier pass that deleted them may have stopped here.
		removeFastpath(n.BPFFS, n.Network, log),
		removeVTEPs(log),
		// After them: a VTEP is never left unguarded.
		firewall.RemoveVTEPGuard(n.Network),
		removeBridge(bridgeName, n.Network, log),
		// The source guard's tables are the node's: they go with the
		// last guarded host veth of any network.
		srcguard.RemoveTables(),
		os.RemoveAll(filepath.Join(n.StateDir, "networks", n.Network)),
		os.RemoveAll(filepath.Join(n.IPAMDataDir, n.Network)),
		removePlugins(n.CNIBinDir),
	)
	// The directories go, with the plugins' shared files, when no other
	// berth network uses them.
	for _, dir := range uniq(n.StateDir, n.LeaseDir) {
		errs = append(errs, removeIfNoOtherNetwork(dir))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	log.Info("berth removed from this node", "network", n.Network)
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

// vtepPrefixes start the names of netd's VTEPs: berth.<vni> over an IPv4
// underlay, berth6.<vni> over an IPv6 one.
var vtepPrefixes = []string{"berth.", "berth6."}

func isVTEPName(name string) bool {
	for _, p := range vtepPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func removeVTEPs(log *slog.Logger) error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	var errs []error
	for _, l := range links {
		if _, ok := l.(*netlink.Vxlan); !ok || !isVTEPName(l.Attrs().Name) {
			continue
		}
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("deleting VTEP %s: %w", l.Attrs().Name, err))
			continue
		}
		log.Info("deleted VTEP", "link", l.Attrs().Name)
	}
	return errors.Join(errs...)
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

// removeIfNoOtherNetwork removes dir (berth's lease or state dir) when no
// other berth network uses it: no other network's lease file (<name>.json)
// and no attachment record of another network (networks/<name>/*.json).
// What else is in it (the iptables lock, host port claims, per-namespace
// directories) belongs to the plugins of the networks there, so it goes
// with the last of them.
func removeIfNoOtherNetwork(dir string) error {
	leases, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return err
	}
	records, err := filepath.Glob(filepath.Join(dir, "networks", "*", "*.json"))
	if err != nil {
		return err
	}
	if len(leases) > 0 || len(records) > 0 {
		return nil
	}
	return os.RemoveAll(dir)
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
