package netd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/netd/registry"
)

// ErrNotRunning: no netd answers on the metrics address.
var ErrNotRunning = errors.New("netd is not running")

// FetchStatus asks the netd serving on addr (its --metrics-address).
func FetchStatus(ctx context.Context, addr string) (*Status, error) {
	if addr == "" {
		return nil, errors.New("--metrics-address is empty: the daemon serves no status")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w (nothing answers on %s: %v)", ErrNotRunning, addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("netd on %s: %s: %s", addr, resp.Status, body)
	}
	var s Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("netd on %s: decoding status: %w", addr, err)
	}
	return &s, nil
}

// Print renders the status for a person.
func (s *Status) Print(w io.Writer, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "node\t%s (%s on %s)\n", s.Node, join(s.NodeIP, s.NodeIPv6), s.Iface)
	fmt.Fprintf(tw, "network\t%s, %s mode, %s\n", s.Network, s.Mode, join(s.CIDR, s.CIDRv6))
	expiry := "expired"
	if left := s.LeaseExpires.Sub(now); left > 0 {
		expiry = "expires in " + left.Round(time.Second).String()
	}
	fmt.Fprintf(tw, "lease\t%s, MTU %d, %s\n", join(s.Subnet, s.SubnetV6), s.MTU, expiry)
	etcd := "reachable"
	if !s.EtcdUp {
		etcd = "UNREACHABLE (degraded: the datapath keeps the last known leases)"
		if !s.EtcdDownSince.IsZero() {
			etcd = fmt.Sprintf("UNREACHABLE for %s (degraded: the datapath keeps the last known leases)", now.Sub(s.EtcdDownSince).Round(time.Second))
		}
	}
	fmt.Fprintf(tw, "etcd\t%s %s\n", strings.Join(s.EtcdEndpoints, ","), etcd)
	kernel := "matches the leases"
	if !s.KernelMatches {
		kernel = "DIFFERS from the leases:"
	}
	fmt.Fprintf(tw, "kernel\t%s (last reconcile %s ago)\n", kernel, now.Sub(s.LastReconcile).Round(time.Millisecond))
	for _, p := range s.Pending {
		fmt.Fprintf(tw, "\t  %s\n", p)
	}
	if s.LastError != "" {
		fmt.Fprintf(tw, "error\t%s\n", s.LastError)
	}
	fmt.Fprintf(tw, "peers\t%d\n", len(s.Peers))
	for _, p := range s.Peers {
		state := "ok"
		switch {
		case p.Pending:
			state = "waiting: " + p.Error
		case p.Error != "":
			state = "ERROR: " + p.Error
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", p.Name, join(p.NodeIP, p.NodeIPv6), join(p.Subnet, p.SubnetV6), state)
	}
	if len(s.BGP) > 0 {
		fmt.Fprintf(tw, "bgp sessions\t%d\n", len(s.BGP))
		for _, b := range s.BGP {
			since := ""
			switch {
			case b.Since.IsZero():
			case b.Established:
				since = "up " + now.Sub(b.Since).Round(time.Second).String()
			default:
				since = "down " + now.Sub(b.Since).Round(time.Second).String()
			}
			filtered := ""
			if b.Filtered > 0 {
				filtered = fmt.Sprintf(" (and %d outside the cluster, ignored)", b.Filtered)
			}
			fmt.Fprintf(tw, "  %s\t%s\tAS %d\t%s\t%s %s\treceived %d%s, accepted %d, advertised %d\n",
				b.Peer, b.Name, b.ASN, b.Family, b.State, since, b.Received, filtered, b.Accepted, b.Advertised)
			switch {
			case b.Pending:
				fmt.Fprintf(tw, "\t  waiting: %s\n", b.Problem)
			case b.Problem != "":
				fmt.Fprintf(tw, "\t  ERROR: %s\n", b.Problem)
			}
		}
	}
	if len(s.Refused) > 0 {
		fmt.Fprintf(tw, "REFUSED\t%d routes offered by peers are not installed (a misconfigured router or a hijack?)\n", len(s.Refused))
		for _, r := range s.Refused {
			fmt.Fprintf(tw, "  %s\n", r)
		}
	}
	for _, p := range s.Problems {
		fmt.Fprintf(tw, "ERROR\t%s\n", p)
	}
	if len(s.Rejected) > 0 {
		fmt.Fprintf(tw, "IGNORED\t%d keys in etcd are not usable leases (a misbehaving writer?)\n", len(s.Rejected))
		for _, r := range s.Rejected {
			fmt.Fprintf(tw, "  %s\t%s\n", r.Key, r.Error)
		}
	}
	tw.Flush()
}

// join lists the values of both families that are set: "10.244.3.0/24,
// fd00:244:0:3::/64".
func join(v4, v6 string) string {
	switch {
	case v4 == "":
		return v6
	case v6 == "":
		return v4
	}
	return v4 + "," + v6
}

// Leave is `netd leave`: the node gives up its subnet on purpose. It
// releases the lease in etcd (peers then remove their routes to it),
// removes this node's datapath for the network, the lease file and the
// conflist. netd must be stopped first: a running netd would lease again.
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
	u, err := detectUnderlay(cfg.NodeIPs, cfg.Iface)
	if err != nil {
		return err
	}
	endpoints := cfg.EtcdEndpoints
	if len(endpoints) == 0 {
		// This node ran the embedded etcd: start it again to release.
		emb, err := startEmbedded(ctx, cfg, u.primary(), log)
		if err != nil {
			return err
		}
		defer emb.Close()
		endpoints = emb.Endpoints
	}
	cli, err := newClient(cfg, endpoints)
	if err != nil {
		return err
	}
	defer cli.Close()
	reg := registry.New(cli, cfg.EtcdPrefix, cfg.Network.Name)
	rctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	network, err := reg.Config(rctx)
	if err != nil {
		return err
	}
	released, err := reg.Release(rctx, cfg.NodeName)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		log.Info("no lease in etcd (expired or released already)", "node", cfg.NodeName, "network", network.Name)
	case err != nil:
		return err
	default:
		log.Info("released lease", "node", cfg.NodeName, "network", network.Name, "subnet", released.Subnet, "subnetV6", released.SubnetV6)
	}
	be, err := newBackend(network.Mode, log)
	if err != nil {
		return err
	}
	node := u.node(cfg.NodeName, network)
	var errs []error
	if err := be.Teardown(ctx, node); err != nil {
		errs = append(errs, fmt.Errorf("removing the datapath: %w", err))
	}
	for _, path := range []string{lease.Path(cfg.LeaseDir, network.Name), conf.ConflistPath(cfg.CNIConfDir, network.Name)} {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		log.Info("left the network; its datapath, lease file and conflist are removed", "network", network.Name)
	}
	return errors.Join(errs...)
}
