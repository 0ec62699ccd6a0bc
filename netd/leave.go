package netd

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/attachments"
	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/nodebridge"
	"github.com/berthnet/berth/netd/cluster"
	"github.com/berthnet/berth/netd/registry"
)

// ErrContainersAttached: netd leave was refused because containers still
// use the network on this node.
var ErrContainersAttached = errors.New("containers are attached")

// Leave is `netd leave`: the node gives up its part of the network on
// purpose. It releases the lease in etcd (peers then remove their routes
// to it) and removes everything the network made on this node: routes,
// VTEP, the node bridge with its address and owner mark, the plugins'
// and IPAM's state of the network, the lease file and the conflist. So
// the node can run another network, or the same in another mode, next.
// It is refused, before anything changes, while netd runs (it would lease
// again) or containers are attached (they would lose their network).
func Leave(ctx context.Context, cfg *Config, log *slog.Logger) error {
	if cfg.Datastore == DatastoreKubernetes {
		return errors.New("--datastore=kubernetes: a node leaves the network when its Node is deleted (kubectl delete node NAME: every other node drops its routes); remove berth from the node itself with netd uninstall")
	}
	if cfg.MetricsAddr != "" {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := FetchStatus(sctx, cfg.MetricsAddr)
		cancel()
		if err == nil {
			return fmt.Errorf("netd is still running for this node (it answers on %s); stop it first (SIGTERM keeps the datapath for a restart, leave removes it)", cfg.MetricsAddr)
		}
	}
	name := cfg.Network.Name
	local := localNetwork(cfg)
	if err := refuseAttached(local, name); err != nil {
		return err
	}
	u, err := detectUnderlay(cfg.NodeIPs, cfg.Iface)
	if err != nil {
		return err
	}
	// On the node that ran the embedded etcd, this starts it again.
	reg, done, err := commandRegistry(ctx, cfg, u.addrs(), log)
	if err != nil {
		return err
	}
	defer done()
	rctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	network, err := reg.Config(rctx)
	if err != nil {
		return fmt.Errorf("%w; if the network was deleted from etcd already, create it again as it was (start netd once) to leave it, or remove its links by hand", err)
	}
	id, err := readNodeID(cfg.NodeIDFile)
	if err != nil {
		return err
	}
	self := cluster.Lease{NodeName: cfg.NodeName, NodeID: id, NodeIP: u.IP, NodeIPv6: u.IPv6}
	var previous netip.Prefix // the key of the lease this node's lease file names
	if prev, err := lease.Read(lease.Path(cfg.LeaseDir, name), time.Time{}); err == nil && prev.NodeName == cfg.NodeName {
		previous = cmp.Or(prev.Subnet, prev.SubnetV6)
	}
	released, err := reg.Release(rctx, self, previous)
	switch {
	case errors.Is(err, cluster.ErrNodeTaken):
		return fmt.Errorf("%w; netd leave only releases this node's own lease: run it on that node", err)
	case errors.Is(err, registry.ErrNotFound):
		log.Info("no lease in etcd (expired or released already)", "node", cfg.NodeName, "network", name)
	case err != nil:
		return err
	default:
		log.Info("released lease", "node", cfg.NodeName, "network", name, "subnet", released.Subnet, "subnetV6", released.SubnetV6)
	}
	be, err := newBackend(network.Mode, log)
	if err != nil {
		return err
	}
	var errs []error
	if err := be.Teardown(ctx, u.node(cfg.NodeName, network)); err != nil {
		errs = append(errs, fmt.Errorf("removing the datapath: %w", err))
	}
	if network.EBPF() {
		// The backend's teardown deleted the VTEP with its programs.
		if err := fastpath.Leave(cfg.BPFFS, name, []int{u.Link.Attrs().Index}); err != nil {
			errs = append(errs, fmt.Errorf("removing the eBPF datapath: %w", err))
		}
	}
	if network.Mode != lease.ModeBGP {
		removed, err := nodebridge.Release(local.Bridge, name)
		if err != nil {
			errs = append(errs, err)
		} else if removed {
			log.Info("removed the node bridge", "bridge", local.Bridge)
		}
	}
	for _, path := range []string{
		lease.Path(cfg.LeaseDir, name),
		conf.ConflistPath(cfg.CNIConfDir, name),
		attachments.Dir(local.StateDir, name), // empty but for writes a crash interrupted
		filepath.Join(local.IPAMDataDir, name),
	} {
		if err := os.RemoveAll(path); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		log.Info("left the network; its datapath, bridge, state, lease file and conflist are removed", "network", name)
	}
	return errors.Join(errs...)
}

// localConflist is what the network's conflist on this node told the
// plugins: where their state is and which bridge they used.
type localConflist struct {
	Bridge      string
	StateDir    string
	IPAMDataDir string
}

// localNetwork reads the network's conflist on this node, falling back
// to the flags (and their defaults) for what it does not say.
func localNetwork(cfg *Config) localConflist {
	l := localConflist{Bridge: cfg.Bridge, StateDir: cfg.CNIStateDir, IPAMDataDir: cfg.IPAMDataDir}
	var list struct {
		Plugins []struct {
			Bridge   string `json:"bridge"`
			StateDir string `json:"stateDir"`
			IPAM     struct {
				DataDir string `json:"dataDir"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if data, err := os.ReadFile(conf.ConflistPath(cfg.CNIConfDir, cfg.Network.Name)); err == nil && json.Unmarshal(data, &list) == nil && len(list.Plugins) > 0 {
		p := list.Plugins[0]
		l.Bridge = cmp.Or(p.Bridge, l.Bridge)
		l.StateDir = cmp.Or(p.StateDir, l.StateDir)
		l.IPAMDataDir = cmp.Or(p.IPAM.DataDir, l.IPAMDataDir)
	}
	l.Bridge = cmp.Or(l.Bridge, conf.DefaultBridge)
	return l
}

// refuseAttached fails when the plugins hold attachments of network on
// this node (their records, see internal/attachments), live or still
// being removed, or when a berth host veth is still plugged into its
// bridge.
func refuseAttached(l localConflist, network string) error {
	list, err := attachments.List(l.StateDir, network)
	if err != nil {
		return err
	}
	var live, leaving []string
	for _, a := range list {
		if a.Leaving {
			leaving = append(leaving, a.String())
		} else {
			live = append(live, a.String())
		}
	}
	records := attachments.Dir(l.StateDir, network)
	switch {
	case len(live) > 0:
		return fmt.Errorf("%w: %d containers are attached to network %s on this node (%s; records in %s): remove them first (runner rm, podman rm, kubectl drain); for containers whose runtime is gone, the runtime's CNI GC (runner gc) removes the attachments",
			ErrContainersAttached, len(live), network, upTo(5, live), records)
	case len(leaving) > 0:
		return fmt.Errorf("%w: %d attachments to network %s on this node are being removed (%s; records in %s): a DEL is running, or one was interrupted: let the runtime repeat it, or run its CNI GC (runner gc), then leave",
			ErrContainersAttached, len(leaving), network, upTo(5, leaving), records)
	}
	veths, err := nodebridge.Containers(l.Bridge, network)
	if err != nil {
		return err
	}
	if len(veths) > 0 {
		return fmt.Errorf("%w: the node bridge %s of network %s still has container veths %s (no container record names them); remove them, or run the runtime's CNI GC, first",
			ErrContainersAttached, l.Bridge, network, upTo(5, veths))
	}
	return nil
}

// upTo lists the first n of items, and how many more there are.
func upTo(n int, items []string) string {
	if len(items) > n {
		items = append(items[:n:n], fmt.Sprintf("and %d more", len(items)-n))
	}
	return strings.Join(items, ", ")
}
