package netd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/backend/bgp"
	"github.com/berthnet/berth/netd/backend/hostgw"
	"github.com/berthnet/berth/netd/backend/vxlan"
	"github.com/berthnet/berth/netd/registry"
)

// newBackend returns the backend of mode.
func newBackend(mode string, log *slog.Logger) (backend.Backend, error) {
	switch mode {
	case lease.ModeVXLAN:
		return &vxlan.Backend{Log: log}, nil
	case lease.ModeHostGW:
		return hostgw.Backend{}, nil
	case lease.ModeBGP:
		return bgp.Backend{Log: log}, nil
	}
	return nil, fmt.Errorf("mode %q: use vxlan, hostgw or bgp", mode)
}

// etcdTimeout bounds each etcd request, so a dead etcd shows as an error
// that is retried rather than a hang.
const etcdTimeout = 10 * time.Second

type daemon struct {
	cfg       *Config
	log       *slog.Logger
	id        string // this node's ID (identity.go)
	endpoints []string
	node      backend.Node
	reg       *registry.Registry
	network   *conf.Network
	nw        backend.Network
	m         *metrics
	kick      chan struct{} // asks the reconcile loop for a pass

	reclaim chan int64    // asks guardLease to write this node's key back (its ModRevision)
	relive  chan struct{} // asks keepAlive to lease again at once (etcd lost its data)

	mu         sync.Mutex // guards the fields below
	self       registry.Lease
	expires    time.Time
	leases     []registry.Lease    // in etcd, as last read
	unreadable []registry.Rejected // keys in etcd that are no lease
	held       []registry.Lease    // read before etcd lost its data; see setLeases
	heldUntil  time.Time
	peerLeases []registry.Lease    // the other nodes, vetted
	rejected   []registry.Rejected // leases ignored, and why
	etcdUp     bool
	etcdDown   time.Time // when etcd was first found unreachable; zero while up
	starting   string    // what netd waits for before it runs; "" once running (starting.go)
	last       result

	reconcileMu sync.Mutex // one reconcile or status check at a time
}

// result is what the last reconcile did.
type result struct {
	At       time.Time
	Changes  []string
	Err      error
	Problems []backend.Problem
}

// Run is `netd run`. It returns when ctx ends (SIGTERM), leaving the
// datapath and the lease in place: a restarted netd adopts both without
// interrupting traffic, and a node that never comes back loses its lease
// after --lease-ttl.
func Run(ctx context.Context, cfg *Config, log *slog.Logger) error {
	d := &daemon{cfg: cfg, log: log, kick: make(chan struct{}, 1), reclaim: make(chan int64, 1), relive: make(chan struct{}, 1), starting: startingState}
	if cfg.Network.Mode != "" {
		if _, err := newBackend(cfg.Network.Mode, log); err != nil {
			return err // before writing a network config nobody can run
		}
	}
	u, err := detectUnderlay(cfg.NodeIP, cfg.Iface)
	if err != nil {
		return err
	}
	if d.id, err = loadNodeID(cfg.NodeIDFile); err != nil {
		return err
	}
	httpListener, err := d.listen()
	if err != nil {
		return err
	}
	d.node = backend.Node{Name: cfg.NodeName, IP: u.IP, Link: u.Link}
	d.m = newMetrics(cfg.Network.Name)
	defer d.serveHTTP(httpListener)() // status says what netd waits for while it starts
	log.Info("underlay", "node", cfg.NodeName, "nodeID", d.id, "nodeIP", u.IP, "iface", u.Link.Attrs().Name, "mtu", u.Link.Attrs().MTU, "found", u.How)

	etcd, err := openEtcd(ctx, cfg, u.IP, log, true)
	if err != nil {
		return err
	}
	defer etcd.Close()
	d.mu.Lock() // /status reads them
	d.endpoints = etcd.Endpoints
	d.mu.Unlock()
	for _, w := range etcdWarnings(cfg, d.endpoints) {
		log.Warn(w)
	}
	if err := d.waitEtcd(ctx, etcd.TLS); err != nil {
		return err
	}
	cli, err := newClient(d.endpoints, etcd.TLS)
	if err != nil {
		return err
	}
	defer cli.Close()
	d.reg = registry.New(cli, cfg.EtcdPrefix, cfg.Network.Name)
	d.reg.Log = log
	log.Info("connecting to etcd", "endpoints", d.endpoints, "prefix", cfg.EtcdPrefix)

	err = d.retry(ctx, "reading the network config", func(ctx context.Context) error {
		d.network, err = d.reg.EnsureConfig(ctx, cfg.Network)
		return err
	})
	if err != nil {
		return err
	}
	n := d.network
	log.Info("network", "name", n.Name, "cidr", n.CIDR, "subnetLen", n.SubnetLen, "mode", n.Mode, "vni", n.VNI, "port", n.Port, "ipMasq", n.Masq(), "directRouting", n.Direct())
	be, err := newBackend(n.Mode, log)
	if err != nil {
		return fmt.Errorf("network %s: %w", n.Name, err)
	}
	d.node.Network, d.node.BGP = n, cfg.BGP // the rest was set before /status was served
	if d.nw, err = be.Register(ctx, d.node); err != nil {
		return err
	}

	if err := d.acquire(ctx); err != nil {
		return err
	}
	if err := d.writeConflist(); err != nil {
		return err
	}
	var snap registry.Snapshot
	err = d.retry(ctx, "listing leases", func(ctx context.Context) error {
		snap, err = d.reg.List(ctx)
		return err
	})
	if err != nil {
		return err
	}
	d.setLeases(registry.Change{Snapshot: snap})
	d.reconcile(ctx)
	d.setRunning()

	var wg sync.WaitGroup
	wg.Go(func() { d.keepAlive(ctx) })
	wg.Go(func() {
		d.reg.Follow(ctx, snap, func(c registry.Change) {
			if c.Resync {
				d.m.resyncs.Inc()
			}
			if c.Rewound {
				d.m.rewinds.Inc()
				select {
				case d.relive <- struct{}{}:
				default:
				}
			}
			d.setLeases(c)
			d.poke()
		})
	})
	wg.Go(func() { d.guardLease(ctx) })
	wg.Go(func() { d.watchKernel(ctx) })
	wg.Go(func() { d.probeEtcd(ctx, cli) })
	wg.Go(func() { d.reconcileLoop(ctx) })
	if n, ok := d.nw.(backend.Notifier); ok {
		wg.Go(func() { // BGP learned or lost a route, or a session changed
			for {
				select {
				case <-ctx.Done():
					return
				case <-n.Changes():
					d.poke()
				}
			}
		})
	}
	log.Info("running", "subnet", d.lease().Subnet, "endpoints", d.endpoints)
	wg.Wait()
	log.Info("stopped; datapath and lease left in place for the next start", "subnet", d.lease().Subnet)
	return nil
}

// retry runs f (with a per-request timeout) until it succeeds, fails in
// a way retrying cannot fix, or ctx ends. etcd may still be starting.
// Waits between tries stay well under the lease TTL: when etcd comes
// back after an outage, the leases it kept expire one TTL later, and a
// node must renew its own before that or its peers drop its routes.
func (d *daemon) retry(ctx context.Context, what string, f func(context.Context) error) error {
	wait := 500 * time.Millisecond
	longest := min(10*time.Second, d.cfg.LeaseTTL/4)
	for {
		rctx, cancel := context.WithTimeout(ctx, etcdTimeout)
		err := f(rctx)
		cancel()
		if err == nil || ctx.Err() != nil || permanent(err) {
			return err
		}
		if errors.Is(err, context.DeadlineExceeded) {
			err = d.explainEtcd(ctx, err) // which endpoint, and what to check
		}
		d.setStarting(what + ": " + err.Error())
		d.log.Warn(what+" failed; retrying", "err", err, "in", wait, "etcd", d.endpoints)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = max(min(2*wait, longest), 100*time.Millisecond)
	}
}

// permanent errors need a person: a conflicting or invalid config.
func permanent(err error) bool {
	return errors.Is(err, registry.ErrConflict) || errors.Is(err, cnierr.ErrInvalidConfig) || errors.Is(err, registry.ErrNodeTaken)
}

// acquire leases a subnet, preferring the one this node held before.
func (d *daemon) acquire(ctx context.Context) error {
	attrs := d.nw.Attrs()
	c := registry.Claim{
		Record: registry.Record{NodeName: d.cfg.NodeName, NodeID: d.id, NodeIP: d.node.IP, Mode: d.network.Mode, VNI: attrs.VNI,
			ASN: attrs.ASN, RouteReflector: attrs.RouteReflector},
		TTL: d.cfg.LeaseTTL,
	}
	if attrs.VTEPMAC != nil {
		c.Record.VTEPMAC = attrs.VTEPMAC.String()
	}
	if prev, err := lease.Read(lease.Path(d.cfg.LeaseDir, d.network.Name), time.Time{}); err == nil &&
		prev.NodeName == d.cfg.NodeName && prev.NetworkCIDR == d.network.CIDR {
		c.Previous = prev.Subnet
	}
	again := false
	if cur := d.lease(); cur.Subnet.IsValid() {
		c.Previous, again = cur.Subnet, true
	}
	var l *registry.Lease
	err := d.retry(ctx, "leasing a subnet", func(ctx context.Context) error {
		if again {
			// etcd may have lost its data, the network's config with it:
			// store it again, so that a node joining later finds it.
			if _, err := d.reg.EnsureConfig(ctx, *d.network); err != nil {
				return err
			}
		}
		var err error
		l, err = d.reg.Acquire(ctx, d.network, c)
		return err
	})
	if errors.Is(err, registry.ErrNodeTaken) {
		return nodeTaken(d.cfg, c.Record, err)
	}
	if err != nil {
		return err
	}
	d.m.leaseAcquisitions.Inc()
	d.setEtcdUp(true)
	d.mu.Lock()
	old := d.self.Subnet
	d.self = *l
	d.expires = time.Now().Add(d.cfg.LeaseTTL)
	d.mu.Unlock()
	d.vet()
	if old.IsValid() && old != l.Subnet {
		d.log.Warn("subnet changed: the old one was taken while this node's lease was lost", "old", old, "new", l.Subnet)
	}
	d.log.Info("leased subnet", "subnet", l.Subnet, "origin", l.Origin, "ttl", d.cfg.LeaseTTL)
	return d.writeLeaseFile()
}

func (d *daemon) lease() registry.Lease {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.self
}

// poke asks the reconcile loop for a pass; pokes coalesce.
func (d *daemon) poke() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// writeLeaseFile tells the plugins this node's subnet, until when to
// trust it, and the MTU.
func (d *daemon) writeLeaseFile() error {
	d.mu.Lock()
	n := &lease.Node{
		Network:     d.network.Name,
		Mode:        d.network.Mode,
		NetworkCIDR: d.network.CIDR,
		Subnet:      d.self.Subnet,
		MTU:         d.nw.MTU(),
		IPMasq:      d.network.Masq(),
		NodeName:    d.cfg.NodeName,
		NodeIP:      d.node.IP,
		Expires:     d.expires.UTC().Truncate(time.Second),
	}
	d.m.leaseExpiry.Set(float64(d.expires.Unix()))
	d.mu.Unlock()
	path := lease.Path(d.cfg.LeaseDir, n.Network)
	if err := lease.Write(path, n); err != nil {
		return fmt.Errorf("writing node lease: %w", err)
	}
	return nil
}

// writeConflist writes the network's conflist, unless it is already
// there: runtimes watch the directory.
func (d *daemon) writeConflist() error {
	data, err := conf.NodeConflist{
		Network:     d.network.Name,
		Mode:        d.network.Mode,
		LeaseDir:    d.cfg.LeaseDir,
		StateDir:    d.cfg.CNIStateDir,
		IPAMDataDir: d.cfg.IPAMDataDir,
		Bridge:      d.cfg.Bridge,
	}.Marshal()
	if err != nil {
		return err
	}
	path := conf.ConflistPath(d.cfg.CNIConfDir, d.network.Name)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := lease.WriteFileAtomic(path, data, 0o644); err != nil {
		return fmt.Errorf("writing conflist: %w", err)
	}
	d.log.Info("wrote conflist", "path", path)
	return nil
}

// keepAlive renews the etcd lease and the lease file. When the etcd
// lease is lost (etcd unreachable for longer than the TTL, or revoked),
// it leases a subnet again, the same one if it is still free.
func (d *daemon) keepAlive(ctx context.Context) {
	for {
		kctx, cancel := context.WithCancel(ctx)
		ch, err := d.reg.KeepAlive(kctx, d.lease().ID)
		if err == nil {
			err = d.renew(ch)
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errRewound) {
			d.log.Warn("etcd lost its data; writing this node's lease again from its local copy", "subnet", d.lease().Subnet)
		} else {
			d.log.Warn("lost the etcd lease (etcd unreachable for longer than --lease-ttl, or the lease was revoked); leasing again", "subnet", d.lease().Subnet, "err", err)
		}
		select {
		case <-d.relive: // this acquire answers it
		default:
		}
		for {
			err := d.acquire(ctx)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				break
			}
			// Another node took this node's name while its lease was
			// lost: keep the datapath and try again until it lets go.
			d.log.Error("cannot lease again; retrying in 10s", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Second):
			}
		}
		d.poke()
	}
}

// renew pushes the lease file's expiry forward on each keepalive until
// the keepalive ends (nil) or etcd is found to have lost its data.
func (d *daemon) renew(ch <-chan *clientv3.LeaseKeepAliveResponse) error {
	for {
		select {
		case <-d.relive:
			return errRewound
		case resp, ok := <-ch:
			if !ok {
				return nil
			}
			d.mu.Lock()
			d.expires = time.Now().Add(time.Duration(resp.TTL) * time.Second)
			d.mu.Unlock()
			d.setEtcdUp(true)
			if err := d.writeLeaseFile(); err != nil {
				d.log.Error("renewing lease file", "err", err)
			}
		}
	}
}

// setEtcdUp records whether etcd answers, for /healthz, /status and the
// etcd_up metric, and logs the changes.
func (d *daemon) setEtcdUp(up bool) {
	d.mu.Lock()
	was, since := d.etcdUp, d.etcdDown
	d.etcdUp = up
	switch {
	case up:
		d.etcdDown = time.Time{}
	case d.etcdDown.IsZero():
		d.etcdDown = time.Now()
	}
	d.mu.Unlock()
	if up {
		d.m.etcdUp.Set(1)
	} else {
		d.m.etcdUp.Set(0)
	}
	switch {
	case was && !up:
		d.log.Warn("etcd unreachable: degraded; the datapath keeps forwarding on the last known leases", "endpoints", d.endpoints)
	case !was && up && !since.IsZero():
		d.log.Info("etcd reachable again", "after", time.Since(since).Round(time.Second))
	}
}

// probeEtcd keeps the etcd_up metric and status current.
func (d *daemon) probeEtcd(ctx context.Context, cli *clientv3.Client) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := cli.Get(rctx, "health-probe", clientv3.WithCountOnly())
		cancel()
		d.setEtcdUp(err == nil)
	}
}

// peers are the other nodes' leases, as the backend takes them, and the
// ones that cannot be used at all.
func (d *daemon) peers() (self netip.Prefix, peers []backend.Peer, problems []backend.Problem) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.peerLeases {
		if l.Mode != d.network.Mode {
			problems = append(problems, backend.Problem{Peer: l.NodeName, Err: fmt.Errorf("its lease says mode %s, the network runs %s", l.Mode, d.network.Mode)})
			continue
		}
		p := backend.Peer{Name: l.NodeName, IP: l.NodeIP, Subnet: l.Subnet, ASN: l.ASN, RouteReflector: l.RouteReflector}
		if l.VTEPMAC != "" {
			mac, err := net.ParseMAC(l.VTEPMAC)
			if err != nil {
				problems = append(problems, backend.Problem{Peer: l.NodeName, Err: fmt.Errorf("vtepMAC %q: %w", l.VTEPMAC, err)})
				continue
			}
			p.VTEPMAC = mac
		}
		peers = append(peers, p)
	}
	return d.self.Subnet, peers, problems
}
