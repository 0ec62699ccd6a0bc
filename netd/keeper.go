package netd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/netd/cluster"
)

// keeper holds this node's lease: it acquires it, keeps it alive, leases
// again when it is lost, writes it back when another writer changed it,
// and keeps the node lease file (what the plugins trust) current. The
// datastore side is a cluster.Holder (etcd: registry.Holder); everything
// here works the same on any.
type keeper struct {
	holder  cluster.Holder
	store   cluster.Store
	network *conf.Network
	want    cluster.Lease // this node's record, without a subnet
	ttl     time.Duration
	file    lease.Node // the lease file but Subnet and Expires
	path    string     // of the lease file
	log     *slog.Logger
	m       *metrics
	health  *health
	// acquired is called after each (re)acquire, with the lease held.
	acquired func()
	// retry runs a datastore request until it succeeds or fails for good
	// (daemon.retry).
	retry func(ctx context.Context, what string, f func(context.Context) error) error
	// taken explains a refusal because another node holds this node's
	// name (cluster.ErrNodeTaken) and says how to proceed.
	taken func(error) error

	reclaim chan struct{} // asks guard to write the lease back
	relive  chan struct{} // asks keepAlive to lease again at once (etcd lost its data)

	mu      sync.Mutex // guards the fields below
	self    cluster.Lease
	expires time.Time
}

func newKeeper(d *daemon, holder cluster.Holder) *keeper {
	want := cluster.Lease{NodeName: d.cfg.NodeName, NodeID: d.id, NodeIP: d.node.IP, NodeIPv6: d.node.IPv6, Mode: d.network.Mode}
	d.nw.Publish(&want)
	return &keeper{
		holder: holder, store: d.store, network: d.network, want: want, ttl: d.cfg.LeaseTTL,
		file: lease.Node{
			Network:       d.network.Name,
			Mode:          d.network.Mode,
			NetworkCIDR:   d.network.CIDR,
			NetworkCIDRv6: d.network.CIDRv6,
			MTU:           d.nw.MTU(),
			IPMasq:        d.network.Masq(),
			NodeName:      d.cfg.NodeName,
			NodeIP:        d.node.IP,
			NodeIPv6:      d.node.IPv6,
			VNI:           d.network.VNI, // zero but in vxlan mode
		},
		path: lease.Path(d.cfg.LeaseDir, d.network.Name),
		log:  d.log, m: d.m, health: d.health,
		acquired: func() {},
		retry:    d.retry,
		taken:    func(err error) error { return nodeTaken(d.cfg, want, err) },
		reclaim:  make(chan struct{}, 1),
		relive:   make(chan struct{}, 1),
	}
}

// lease is the lease held (zero Subnet before the first acquire) and
// until when it is valid unless renewed.
func (k *keeper) lease() (cluster.Lease, time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.self, k.expires
}

// acquire leases a subnet, preferring the one this node held before
// (still in the datastore, or in its lease file), retrying until it has
// one or fails in a way retrying cannot fix: among those, another node
// holding a live lease under this node's name (cluster.ErrNodeTaken).
func (k *keeper) acquire(ctx context.Context) error {
	var previous netip.Prefix
	if prev, err := lease.Read(k.path, time.Time{}); err == nil && prev.NodeName == k.want.NodeName {
		// The subnet that names a lease: the IPv4 one, the IPv6 one on
		// an IPv6-only network.
		switch {
		case k.network.CIDR.IsValid() && prev.NetworkCIDR == k.network.CIDR:
			previous = prev.Subnet
		case !k.network.CIDR.IsValid() && prev.NetworkCIDRv6 == k.network.CIDRv6:
			previous = prev.SubnetV6
		}
	}
	cur, _ := k.lease()
	again := cur.Key().IsValid()
	if again {
		previous = cur.Key()
	}
	var l cluster.Lease
	var origin cluster.Origin
	err := k.retry(ctx, "leasing a subnet", func(ctx context.Context) error {
		if again {
			// etcd may have lost its data, the network's config with it:
			// store it again, so that a node joining later finds it.
			if _, err := k.store.EnsureConfig(ctx, *k.network); err != nil {
				return err
			}
		}
		var err error
		l, origin, err = k.holder.Acquire(ctx, k.network, k.want, previous)
		return err
	})
	if errors.Is(err, cluster.ErrNodeTaken) {
		return k.taken(err)
	}
	if err != nil {
		return err
	}
	k.m.leaseAcquisitions.Inc()
	k.health.set(true)
	k.mu.Lock()
	k.self = l
	k.expires = time.Now().Add(k.ttl)
	k.mu.Unlock()
	if cur.Key().IsValid() && cur.Key() != l.Key() {
		k.log.Warn("subnet changed: the old one was taken while this node's lease was lost", "old", cur.Subnets(), "new", l.Subnets())
	}
	k.log.Info("leased subnet", "subnet", l.Subnet, "subnetV6", l.SubnetV6, "origin", origin, "ttl", k.ttl)
	err = k.writeFile()
	k.acquired()
	return err
}

// writeFile tells the plugins this node's subnet, until when to trust
// it, and the MTU.
func (k *keeper) writeFile() error {
	k.mu.Lock()
	n := k.file
	n.Subnet, n.SubnetV6 = k.self.Subnet, k.self.SubnetV6
	n.Expires = k.expires.UTC().Truncate(time.Second)
	k.m.leaseExpiry.Set(float64(k.expires.Unix()))
	k.mu.Unlock()
	if err := lease.Write(k.path, &n); err != nil {
		return fmt.Errorf("writing node lease: %w", err)
	}
	return nil
}

// run keeps the lease until ctx ends: keepAlive and guard.
func (k *keeper) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { k.keepAlive(ctx) })
	wg.Go(func() { k.guard(ctx) })
	wg.Wait()
}

// keepAlive renews the lease and pushes the lease file's expiry forward
// on each renewal. When the lease is lost (etcd unreachable for longer
// than the TTL, or revoked), or etcd lost its data, it leases a subnet
// again, the same one if it is still free.
func (k *keeper) keepAlive(ctx context.Context) {
	for {
		kctx, cancel := context.WithCancel(ctx)
		rewound := make(chan struct{})
		go func() {
			select {
			case <-k.relive:
				close(rewound)
				cancel()
			case <-kctx.Done():
			}
		}()
		err := k.holder.KeepAlive(kctx, k.renewed)
		cancel()
		if ctx.Err() != nil {
			return
		}
		self, _ := k.lease()
		select {
		case <-rewound:
			k.log.Warn("etcd lost its data; writing this node's lease again from its local copy", "subnet", self.Key())
		default:
			k.log.Warn("lost the etcd lease (etcd unreachable for longer than --lease-ttl, or the lease was revoked); leasing again", "subnet", self.Key(), "err", err)
		}
		select {
		case <-k.relive: // this acquire answers it
		default:
		}
		for {
			err := k.acquire(ctx)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				break
			}
			// Another node took this node's name while its lease was
			// lost: keep the datapath and try again until it lets go.
			k.log.Error("cannot lease again; retrying in 10s", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Second):
			}
		}
	}
}

// renewed is called on each renewal of the lease.
func (k *keeper) renewed(ttl time.Duration) {
	k.log.Debug("lease renewed", "ttl", ttl)
	k.mu.Lock()
	k.expires = time.Now().Add(ttl)
	k.mu.Unlock()
	k.health.set(true)
	if err := k.writeFile(); err != nil {
		k.log.Error("renewing lease file", "err", err)
	}
}

// askRelive asks keepAlive to lease again now: etcd lost its data.
func (k *keeper) askRelive() {
	select {
	case k.relive <- struct{}{}:
	default:
	}
}

// askReclaim asks guard to check this node's key and write it back.
func (k *keeper) askReclaim() {
	select {
	case k.reclaim <- struct{}{}:
	default:
		// One is queued; it reads the key's state when it runs.
	}
}

// guard writes this node's key back when the peer view found it replaced
// or deleted by another writer while the node's lease is alive. It
// backs off while the key keeps being taken, so that a writer that keeps
// rewriting it cannot make netd hammer etcd.
func (k *keeper) guard(ctx context.Context) {
	wait := time.Second
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.reclaim:
		}
		self, _ := k.lease()
		rctx, cancel := context.WithTimeout(ctx, etcdTimeout)
		ok, err := k.holder.Reclaim(rctx)
		cancel()
		switch {
		case err != nil:
			k.log.Warn("could not write this node's lease back (the keepalive leases again if it is lost)", "subnet", self.Key(), "err", err)
		case ok:
			k.m.leaseReclaims.Inc()
			k.log.Warn("this node's lease key was replaced or deleted by another writer; wrote it back", "subnet", self.Key())
		default:
			continue // intact: nothing was written, nothing to back off from
		}
		if time.Since(last) > 5*time.Minute {
			wait = time.Second
		}
		last = time.Now()
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Minute)
	}
}
