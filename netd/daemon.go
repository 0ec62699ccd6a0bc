package netd

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/backend/bgp"
	"github.com/berthnet/berth/netd/backend/hostgw"
	"github.com/berthnet/berth/netd/backend/vxlan"
	"github.com/berthnet/berth/netd/cluster"
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

// daemon is one netd: it wires the lease keeping (keeper), the view of
// the other nodes (peerView) and the backend together in one reconcile
// loop (reconcile.go).
type daemon struct {
	cfg       *Config
	log       *slog.Logger
	id        string // this node's ID (identity.go)
	endpoints []string
	node      backend.Node
	network   *conf.Network
	nw        backend.Network
	m         *metrics
	store     cluster.Store
	keeper    *keeper
	peers     *peerView
	health    *health
	underlay  *backend.Underlay
	kernel    *backend.Cache // the owned part of the kernel, from netlink events
	kick      chan struct{}  // asks the reconcile loop for a pass
	fullKick  chan struct{}  // asks it for a full pass

	// eBPF datapath only (fastpath.go). The loop replaces fast when the
	// pins were made anew; fastMu guards that against the metrics scrape.
	fast     *fastpath.Network
	fastMu   sync.Mutex
	replaced []*fastpath.Network // fast's predecessors, until their from_uplink is detached

	mu       sync.Mutex // guards the fields below
	starting string     // what netd waits for before it runs; "" once running (starting.go)
	last     result

	reconcileMu sync.Mutex // one reconcile or status check at a time
	// guarded: the loop wrote the VTEP guard (guard.go), guard, and
	// need not look at it again before the next full pass unless the
	// peers change; under reconcileMu.
	guarded bool
	guard   firewall.VTEPGuard
}

// result is what the last reconcile did.
type result struct {
	At       time.Time
	Changes  []string
	Err      error
	Problems []backend.Problem
	// Announced are the problems the routing protocol's apply step
	// found (bgp), which status shows with the ones it computes.
	Announced []backend.Problem
	// Sessions are the routing sessions (bgp) as the pass found them.
	Sessions []backend.Session
}

// Run is `netd run`. It returns when ctx ends (SIGTERM), leaving the
// datapath and the lease in place: a restarted netd adopts both without
// interrupting traffic, and a node that never comes back loses its lease
// after --lease-ttl.
func Run(ctx context.Context, cfg *Config, log *slog.Logger) error {
	d := &daemon{cfg: cfg, log: log, kick: make(chan struct{}, 1), fullKick: make(chan struct{}, 1), kernel: &backend.Cache{}, starting: startingState}
	if cfg.Network.Mode != "" {
		if _, err := newBackend(cfg.Network.Mode, log); err != nil {
			return err // before writing a network config nobody can run
		}
	}
	// A VNI given on the command line is checked before the datastore
	// stores it as the new network's; one read from there, below.
	if err := vniFree(&cfg.Network, cfg.LeaseDir); err != nil {
		return err
	}
	u, err := detectUnderlay(cfg.NodeIPs, cfg.Iface)
	if err != nil {
		return err
	}
	d.node = u.node(cfg.NodeName, nil) // the network is known once the datastore answers
	// The datastore's first answers wait for its disk (etcd syncs the
	// lease grant before it answers the config read), so the node's own
	// start (its ID, the HTTP server, metrics) runs meanwhile.
	opening := d.openStore(ctx, u)
	defer opening.close()
	if d.id, err = loadNodeID(cfg.NodeIDFile); err != nil {
		return err
	}
	httpListener, err := d.listen()
	if err != nil {
		return err
	}
	d.m = newMetrics(cfg.Network.Name)
	defer d.serveHTTP(httpListener)() // status says what netd waits for while it starts
	log.Info("underlay", "node", cfg.NodeName, "nodeID", d.id, "nodeIP", u.IP, "nodeIPv6", u.IPv6, "preferIPv6", u.PreferIPv6, "iface", u.Link.Attrs().Name, "mtu", u.Link.Attrs().MTU, "found", u.How)
	var holder cluster.Holder
	if d.store, holder, err = opening.wait(); err != nil {
		return err
	}
	n := d.network
	log.Info("network", "name", n.Name, "cidr", n.CIDR, "subnetLen", n.SubnetLen, "cidrV6", n.CIDRv6, "subnetLenV6", n.SubnetLenV6,
		"mode", n.Mode, "vni", n.VNI, "port", n.Port, "ipMasq", n.Masq(), "directRouting", n.Direct())
	be, err := newBackend(n.Mode, log)
	if err != nil {
		return fmt.Errorf("network %s: %w", n.Name, err)
	}
	if err := u.outside(n); err != nil {
		return err
	}
	if err := vniFree(n, cfg.LeaseDir); err != nil {
		return fmt.Errorf("%w (the network's config in the datastore holds that VNI now)", err)
	}
	d.node.Network, d.node.BGP = n, cfg.BGP // the rest was set before /status was served
	if d.nw, err = be.Register(ctx, d.node); err != nil {
		return err
	}
	d.underlay = backend.NewUnderlay(d.node)
	d.health = &health{log: log, endpoints: d.endpoints, gauge: d.m.etcdUp}
	d.peers = newPeerView(n, cfg.LeaseTTL, log, d.m)
	d.keeper = newKeeper(d, holder)
	d.keeper.acquired = d.revet

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The leases are read, and the node's devices (the VTEP) made, while
	// this node leases its own: the lease publishes only what Register
	// computed, and the devices are needed from the first pass on.
	wg.Go(func() { d.store.Follow(ctx, d.leasesChanged) })
	_, statErr := os.Stat(d.keeper.path)
	firstStart := errors.Is(statErr, fs.ErrNotExist) // no datapath of an earlier run here
	if firstStart {
		// No VTEP without its guard; the first pass adds the peers. A
		// restarted netd keeps the guard it wrote (with its peers) until
		// that pass, which writes nothing then. A failure is the passes'
		// error too (status, metrics), not a reason to leave the network
		// down: a kernel without nf_tables cannot be guarded by netd.
		made, err := d.guardVTEP(true, backend.Input{})
		if err != nil {
			log.Error("VTEP guard", "err", err)
		}
		for _, what := range made {
			log.Info("kernel change", "change", what)
		}
	}
	ensured := make(chan error, 1)
	go func() { ensured <- d.nw.Ensure(ctx) }()
	if err := d.keeper.acquire(ctx); err != nil {
		if errors.Is(err, cluster.ErrNodeTaken) && firstStart {
			// Refused at its first start, the node keeps nothing of it:
			// the VTEP just made would stay until `netd uninstall`.
			<-ensured
			if terr := be.Teardown(context.WithoutCancel(ctx), d.node); terr != nil {
				log.Warn("removing what this refused start made", "err", terr)
			}
		}
		return err
	}
	if err := <-ensured; err != nil {
		return err
	}
	if err := d.setupFastpath(); err != nil {
		return err
	}
	if err := d.writeConflist(); err != nil {
		return err
	}
	select {
	case <-d.peers.ready:
	case <-ctx.Done():
		return nil
	}
	// Kernel events queue from before the first pass reads the kernel.
	events, err := d.subscribe()
	if err != nil {
		log.Warn("subscribing to kernel events; relying on full passes until it works", "err", err)
	}
	d.reconcile(ctx, true)
	d.setRunning()

	wg.Go(func() { d.keeper.run(ctx) })
	wg.Go(func() { d.watchKernel(ctx, events) })
	wg.Go(func() { d.probe(ctx) })
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
	self, _ := d.keeper.lease()
	log.Info("running", "subnet", self.Subnet, "subnetV6", self.SubnetV6, "endpoints", d.endpoints)
	wg.Wait()
	log.Info("stopped; datapath and lease left in place for the next start", "subnet", self.Subnet, "subnetV6", self.SubnetV6)
	return nil
}

// storeOpening is the datastore being opened while the node starts
// (openStore): the store with the network's config read, the holder of
// this node's lease, and what closes them.
type storeOpening struct {
	cancel  context.CancelFunc
	done    chan struct{} // closed when the opening ends
	store   cluster.Store
	holder  cluster.Holder
	closers []func() // in the order opened
	err     error
}

// openStore opens the datastore (--datastore) and reads the network's
// config into d.network, in the background; wait returns the store and
// the holder, close ends what they hold (the etcd client, the embedded
// etcd, the Kubernetes informer, which lives as long as the opening's
// context).
func (d *daemon) openStore(ctx context.Context, u *underlay) *storeOpening {
	ctx, cancel := context.WithCancel(ctx)
	o := &storeOpening{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		o.err = d.open(ctx, u, o)
	}()
	return o
}

// wait waits for the opening and returns the store and the holder of
// this node's lease.
func (o *storeOpening) wait() (cluster.Store, cluster.Holder, error) {
	<-o.done
	return o.store, o.holder, o.err
}

// close ends the opening if it still runs and closes what it opened,
// the last first.
func (o *storeOpening) close() {
	o.cancel()
	<-o.done
	for _, c := range slices.Backward(o.closers) {
		c()
	}
}

// open is openStore's work: o's store and holder, and d.network.
func (d *daemon) open(ctx context.Context, u *underlay, o *storeOpening) error {
	cfg, log := d.cfg, d.log
	if cfg.Datastore == DatastoreKubernetes {
		store, err := OpenKubernetes(ctx, cfg.Kubeconfig, cfg.NodeName, log)
		if err != nil {
			return err
		}
		o.store, o.holder = store, store.Holder(cfg.LeaseTTL)
		return d.retry(ctx, "reading the network config", func(ctx context.Context) error { return d.readConfig(ctx, store) })
	}
	etcd, err := openEtcd(ctx, cfg, u.addrs(), log, true)
	if err != nil {
		return err
	}
	o.closers = append(o.closers, etcd.Close)
	d.mu.Lock() // /status reads them
	d.endpoints = etcd.Endpoints
	d.mu.Unlock()
	for _, w := range etcdWarnings(cfg, d.endpoints) {
		log.Warn(w)
	}
	s, err := d.startEtcd(ctx, etcd.TLS)
	if err != nil {
		return err
	}
	o.closers = append(o.closers, func() { s.cli.Close() })
	o.store, o.holder = s.reg, s.held
	log.Info("connected to etcd", "endpoints", d.endpoints, "prefix", cfg.EtcdPrefix)
	return nil
}

// registry is the network's registry in etcd through cli.
func (d *daemon) registry(cli *clientv3.Client) *registry.Registry {
	reg := registry.New(cli, d.cfg.EtcdPrefix, d.cfg.Network.Name)
	reg.Log = d.log
	return reg
}

// readConfig reads the network's config from store (storing the flags'
// if the network has none yet) into d.network.
func (d *daemon) readConfig(ctx context.Context, store cluster.Store) error {
	n, err := store.EnsureConfig(ctx, d.cfg.Network)
	if err == nil {
		d.network = n
	}
	return err
}

// etcdStart is what a starting netd holds of etcd: a client etcd
// answered, the network's registry through it (the config read) and the
// holder of this node's lease.
type etcdStart struct {
	cli  *clientv3.Client
	reg  *registry.Registry
	held *registry.Holder
}

// startEtcd connects to etcd and reads the network config. The etcd
// lease this node's key will hang on is granted, and the leases read,
// while the config is read (Holder.Prepare): the registry and holder
// belong to the client that read it.
func (d *daemon) startEtcd(ctx context.Context, tlsCfg *tls.Config) (*etcdStart, error) {
	var s *etcdStart
	read := func(rctx context.Context, cli *clientv3.Client) error {
		if s == nil || s.cli != cli { // connectEtcd dialed again
			s = &etcdStart{cli: cli, reg: d.registry(cli)}
			s.held = s.reg.Holder(d.cfg.LeaseTTL)
			s.held.Prepare(ctx)
		}
		return d.readConfig(rctx, s.reg)
	}
	cli, ok, err := d.connectEtcd(ctx, tlsCfg, read)
	if err != nil {
		return nil, err
	}
	if !ok {
		err = d.retry(ctx, "reading the network config", func(rctx context.Context) error { return read(rctx, cli) })
		if err != nil {
			cli.Close()
			return nil, err
		}
	}
	return s, nil
}

// leasesChanged takes the leases after a change in the datastore.
func (d *daemon) leasesChanged(c cluster.Change) {
	d.log.Debug("leases changed", "leases", len(c.Leases), "rejected", len(c.Rejected), "resync", c.Resync)
	if c.Resync {
		d.m.resyncs.Inc()
	}
	if c.Rewound {
		d.m.rewinds.Inc()
		d.keeper.askRelive()
		// The leases held from before stop counting after a TTL.
		time.AfterFunc(d.cfg.LeaseTTL, d.revet)
	}
	d.peers.set(c)
	d.revet()
}

// revet vets the leases again for this node's lease, asks for its key to
// be written back if the datastore has it otherwise, and reconciles.
func (d *daemon) revet() {
	self, _ := d.keeper.lease()
	if d.peers.vet(self) {
		d.keeper.askReclaim()
	}
	d.poke()
}

// retry runs f (with a per-request timeout) until it succeeds, fails in
// a way retrying cannot fix, or ctx ends. etcd may still be starting.
// Waits between tries stay well under the lease TTL: when etcd comes
// back after an outage, the leases it kept expire one TTL later, and a
// node must renew its own before that or its peers drop its routes.
// Each failure is logged, with what a probe finds wrong with the etcd
// endpoints when the request timed out, and while netd starts it is what
// its status says netd waits for.
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

// permanent errors need a person: a conflicting or invalid config, or
// this node's name held by another node.
func permanent(err error) bool {
	return errors.Is(err, cluster.ErrConflict) || errors.Is(err, cnierr.ErrInvalidConfig) || errors.Is(err, cluster.ErrNodeTaken)
}

// vniFree refuses a vxlan network whose VNI another network on this node
// has, as that network's lease file in leaseDir says: the two would
// share one VTEP, berth.<vni>, which each netd would make its own, and
// netd uninstall of either would delete the other's. Two netds that
// start at the same moment on a fresh node both pass (neither has
// written its lease file yet).
func vniFree(n *conf.Network, leaseDir string) error {
	if n.Mode != lease.ModeVXLAN || n.VNI == 0 {
		return nil
	}
	others := lease.Others(leaseDir, n.Name)
	for _, name := range slices.Sorted(maps.Keys(others)) {
		if o := others[name]; o.Mode == lease.ModeVXLAN && o.VNI == n.VNI {
			return fmt.Errorf("network %s: VNI %d is network %s's on this node too (lease file %s): both would use the VTEP %s; give each network its own VNI (--vni when it is created), or remove network %s from this node first (netd uninstall --network-name %s)",
				n.Name, n.VNI, name, lease.Path(leaseDir, name), vxlan.VTEPName(n.VNI), name, name)
		}
	}
	return nil
}

// poke asks the reconcile loop for a pass; pokes coalesce.
func (d *daemon) poke() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// pokeFull asks the reconcile loop for a full pass.
func (d *daemon) pokeFull() {
	select {
	case d.fullKick <- struct{}{}:
	default:
	}
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
		CNIVersion:  d.cfg.CNIVersion,
	}.WithDatapath(d.network, d.cfg.BPFFS).Marshal()
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

// probe keeps the etcd_up metric and status current. It notices an
// unreachable etcd well within the lease's validity (the keepalive renews
// it every third of the TTL), so that /healthz says "degraded" while the
// lease is still good, not "no valid lease" at once.
func (d *daemon) probe(ctx context.Context) {
	every, timeout := min(5*time.Second, d.cfg.LeaseTTL/4), min(3*time.Second, d.cfg.LeaseTTL/5)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, timeout)
		err := d.store.Ping(rctx)
		cancel()
		d.health.set(err == nil)
	}
}

// health is whether the datastore answers, for /healthz, /status and the
// etcd_up metric.
type health struct {
	log       *slog.Logger
	endpoints []string
	gauge     interface{ Set(float64) }

	mu        sync.Mutex
	up        bool
	downSince time.Time // when etcd was first found unreachable; zero while up
}

// set records whether etcd answers and logs the changes.
func (h *health) set(up bool) {
	h.mu.Lock()
	was, since := h.up, h.downSince
	h.up = up
	switch {
	case up:
		h.downSince = time.Time{}
	case h.downSince.IsZero():
		h.downSince = time.Now()
	}
	h.mu.Unlock()
	if up {
		h.gauge.Set(1)
	} else {
		h.gauge.Set(0)
	}
	switch {
	case was && !up:
		h.log.Warn("etcd unreachable: degraded; the datapath keeps forwarding on the last known leases", "endpoints", h.endpoints)
	case !was && up && !since.IsZero():
		h.log.Info("etcd reachable again", "after", time.Since(since).Round(time.Second))
	}
}

// get returns whether etcd answers, and since when it does not.
func (h *health) get() (up bool, downSince time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.up, h.downSince
}
