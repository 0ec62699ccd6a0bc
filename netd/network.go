package netd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"text/tabwriter"
	"time"

	"github.com/berthnet/berth/netd/pki"
	"github.com/berthnet/berth/netd/registry"
)

// commandRegistry connects a one-off command (netd network ..., leave)
// to the network's registry in this node's etcd: --etcd-endpoints, the
// one it joined, the one its running netd uses, or else its embedded
// etcd, started for the command. done closes what it opened.
func commandRegistry(ctx context.Context, cfg *Config, nodeIPs []netip.Addr, log *slog.Logger) (reg *registry.Registry, done func(), err error) {
	if joined, _ := pki.Dir(cfg.PKIDir).Joined(); len(cfg.EtcdEndpoints) == 0 && len(joined) == 0 && cfg.MetricsAddr != "" {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		s, err := FetchStatus(sctx, cfg.MetricsAddr)
		cancel()
		if err == nil && len(s.EtcdEndpoints) > 0 {
			cfg.EtcdEndpoints = s.EtcdEndpoints // the embedded etcd of the netd running here
		}
	}
	etcd, err := openEtcd(ctx, cfg, nodeIPs, log, false)
	if err != nil {
		return nil, nil, err
	}
	if problems := probeAll(ctx, cfg, etcd.Endpoints, etcd.TLS); problems != nil {
		etcd.Close()
		err := fmt.Errorf("etcd does not answer: %w", errors.Join(problems...))
		if joined, _ := pki.Dir(cfg.PKIDir).Joined(); len(joined) > 0 {
			err = fmt.Errorf("%w; this node uses the embedded etcd of another node's netd, which must be running (leave the other nodes before that one)", err)
		}
		return nil, nil, err
	}
	cli, err := newClient(etcd.Endpoints, etcd.TLS)
	if err != nil {
		etcd.Close()
		return nil, nil, err
	}
	reg = registry.New(cli, cfg.EtcdPrefix, cfg.Network.Name)
	reg.Log = log
	return reg, func() { cli.Close(); etcd.Close() }, nil
}

// errNetworkInCluster refuses netd network show and delete with
// --datastore=kubernetes: they read and change etcd, and would otherwise
// start an embedded etcd that holds no network at all.
var errNetworkInCluster = errors.New("--datastore=kubernetes: the network is the cluster's, not etcd's: " +
	"its subnets are the Nodes' pod CIDRs (kubectl get nodes -o custom-columns=NODE:.metadata.name,PODCIDRS:.spec.podCIDRs), " +
	"its config netd's flags; netd network show and delete work on etcd only")

// networkRegistry is commandRegistry for netd network show and delete,
// which work on etcd only.
func networkRegistry(ctx context.Context, cfg *Config, log *slog.Logger) (*registry.Registry, func(), error) {
	if cfg.Datastore == DatastoreKubernetes {
		return nil, nil, errNetworkInCluster
	}
	u, err := detectUnderlay(cfg.NodeIPs, cfg.Iface)
	if err != nil {
		return nil, nil, err
	}
	return commandRegistry(ctx, cfg, u.addrs(), log)
}

// ShowNetwork is `netd network show`: the network's config and leases.
func ShowNetwork(ctx context.Context, cfg *Config, log *slog.Logger, out io.Writer) error {
	reg, done, err := networkRegistry(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer done()
	rctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	n, err := reg.Config(rctx)
	if err != nil {
		return err
	}
	snap, err := reg.List(rctx)
	if err != nil {
		return err
	}
	config, _ := json.Marshal(n)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "network\t%s, %s mode, %s\n", n.Name, n.Mode, join(str(n.CIDR), str(n.CIDRv6)))
	fmt.Fprintf(tw, "config\t%s\n", config)
	fmt.Fprintf(tw, "leases\t%d\n", len(snap.Leases))
	for _, l := range snap.Leases {
		id := l.NodeID
		if id == "" {
			id = "-"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\tnode ID %s\n", l.NodeName, l.NodeAddrs(), join(str(l.Subnet), str(l.SubnetV6)), id)
	}
	for _, r := range snap.Rejected {
		fmt.Fprintf(tw, "  IGNORED %s\t%s\n", short(r.Key), short(r.Err.Error()))
	}
	return tw.Flush()
}

// DeleteNetwork is `netd network delete`: it removes the network from
// etcd once no node holds a lease, so that a netd may create it anew,
// e.g. in another mode.
func DeleteNetwork(ctx context.Context, cfg *Config, log *slog.Logger) error {
	reg, done, err := networkRegistry(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer done()
	rctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	if err := reg.Delete(rctx); err != nil {
		return err
	}
	log.Info("deleted the network from etcd; the next netd to start creates it with its flags", "network", cfg.Network.Name)
	return nil
}
