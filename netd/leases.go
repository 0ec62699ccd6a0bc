package netd

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/berthnet/berth/netd/registry"
)

// This file is what netd believes about the other nodes: the leases it
// read from etcd, vetted (registry.Vet) so that a misbehaving writer's
// key is ignored, logged and counted instead of becoming a route, and
// kept across an etcd that lost its data until the nodes wrote theirs
// again.

// setLeases takes the leases after a change in etcd.
func (d *daemon) setLeases(c registry.Change) {
	d.mu.Lock()
	if c.Rewound {
		// etcd lost its data: the leases it has now are only the ones
		// written since. Keep routing to the others, as if their keys
		// were still there, until they write them again or for a TTL,
		// the longest a silent node's key would have lived.
		d.held = slices.Clone(d.leases)
		d.heldUntil = time.Now().Add(d.cfg.LeaseTTL)
		time.AfterFunc(d.cfg.LeaseTTL, func() { d.vet(); d.poke() })
	}
	d.leases = c.Leases
	d.unreadable = c.Rejected
	d.mu.Unlock()
	d.m.leases.Set(float64(len(c.Leases)))
	d.vet()
}

// vet recomputes the peers from the leases and this node's own lease,
// logs each rejected key when it appears or its reason changes, and asks
// for the node's own key to be written back when another writer replaced
// or deleted it.
func (d *daemon) vet() {
	d.mu.Lock()
	leases := d.leases
	if len(d.held) > 0 && time.Now().Before(d.heldUntil) {
		leases = withHeld(leases, d.held)
	} else {
		d.held = nil
	}
	peers, rejected := registry.Vet(d.network, d.self, leases)
	rejected = append(slices.Clone(d.unreadable), rejected...)
	old := d.rejected
	d.peerLeases, d.rejected = peers, rejected
	self := d.self
	var selfKey *registry.Lease
	for i, l := range d.leases {
		if l.Subnet == self.Subnet {
			selfKey = &d.leases[i]
		}
	}
	d.mu.Unlock()

	seen := map[string]string{}
	for _, r := range old {
		seen[r.Key] = r.Err.Error()
	}
	for _, r := range rejected {
		if seen[r.Key] != r.Err.Error() {
			d.log.Error("ignoring a lease in etcd: acting on it would break or hijack traffic", "key", short(r.Key), "err", short(r.Err.Error()))
			d.m.leaseRejections.Inc()
		}
		delete(seen, r.Key)
	}
	for key := range seen {
		d.log.Info("rejected lease key fixed or gone", "key", short(key))
	}
	d.m.leasesRejected.Set(float64(len(rejected)))

	if !self.Subnet.IsValid() || self.ID == 0 {
		return
	}
	// The node's own key: replaced by another writer, unreadable, or
	// deleted while its etcd lease is alive.
	var modRev int64
	foreign := selfKey == nil
	if selfKey != nil {
		modRev = selfKey.ModRevision
	}
	for _, r := range rejected {
		if r.Subnet == self.Subnet {
			foreign, modRev = true, r.ModRevision
		}
	}
	if foreign {
		select {
		case d.reclaim <- modRev:
		default:
			// One is queued; it re-reads the key's state when it runs.
		}
	}
}

// withHeld adds to leases the held ones whose subnet and node nobody
// holds in etcd now.
func withHeld(leases, held []registry.Lease) []registry.Lease {
	subnets := map[netip.Prefix]bool{}
	names := map[string]bool{}
	for _, l := range leases {
		subnets[l.Subnet], names[l.NodeName] = true, true
	}
	out := slices.Clone(leases)
	for _, l := range held {
		if !subnets[l.Subnet] && !names[l.NodeName] {
			out = append(out, l)
		}
	}
	return out
}

// guardLease writes this node's key back when vet found it replaced or
// deleted by another writer while the node's etcd lease is alive. It
// backs off while the key keeps being taken, so that a writer that keeps
// rewriting it cannot make netd hammer etcd.
func (d *daemon) guardLease(ctx context.Context) {
	wait := time.Second
	var last time.Time
	for {
		var modRev int64
		select {
		case <-ctx.Done():
			return
		case modRev = <-d.reclaim:
		}
		if time.Since(last) > 5*time.Minute {
			wait = time.Second
		}
		last = time.Now()
		self := d.lease()
		rctx, cancel := context.WithTimeout(ctx, etcdTimeout)
		ok, err := d.reg.Reclaim(rctx, &self, modRev)
		cancel()
		switch {
		case err != nil:
			d.log.Warn("could not write this node's lease back (the keepalive leases again if it is lost)", "subnet", self.Subnet, "err", err)
		case ok:
			d.m.leaseReclaims.Inc()
			d.log.Warn("this node's lease key was replaced or deleted by another writer; wrote it back", "subnet", self.Subnet)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Minute)
	}
}

// short cuts s for a log line: keys and values come from etcd, where
// anyone with write access may have put a megabyte.
func short(s string) string {
	const max = 200
	if len(s) <= max {
		return s
	}
	return s[:max] + "...(" + strconv.Itoa(len(s)) + " bytes)"
}

// errRewound is why the keepalive leases again after etcd lost its data.
var errRewound = errors.New("etcd lost its data")
