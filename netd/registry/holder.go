package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/cluster"
)

// Holder keeps one node's lease in etcd: netd's cluster.Holder. The key
// is attached to an etcd lease of the holder's TTL that KeepAlive keeps
// alive; when the node stops (netd down, node gone) the key expires one
// TTL later and the subnet is free again.
type Holder struct {
	r   *Registry
	ttl time.Duration

	mu    sync.Mutex
	held  cluster.Lease // as written
	value []byte        // held's record, as written
	id    clientv3.LeaseID
	ahead *ahead // Prepare's requests, for the next Acquire
}

// ahead are the requests Prepare starts for the next Acquire.
type ahead struct {
	grant chan granted
	list  chan listed
}

// granted is the answer to an etcd lease grant.
type granted struct {
	resp *clientv3.LeaseGrantResponse
	err  error
}

// listed is the answer to a read of the leases.
type listed struct {
	entries []entry
	snap    cluster.Snapshot
	err     error
}

var _ cluster.Holder = (*Holder)(nil)

// Holder returns a holder whose etcd leases last ttl (rounded up to whole
// seconds, at least 1) unless kept alive.
func (r *Registry) Holder(ttl time.Duration) *Holder { return &Holder{r: r, ttl: ttl} }

// LeaseID is the etcd lease the held key is attached to (0 before Acquire).
func (h *Holder) LeaseID() clientv3.LeaseID {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.id
}

// Prepare starts the two requests the next Acquire begins with: granting
// the etcd lease it attaches the node's key to, and reading the leases.
// netd starts them while it reads the network config rather than after:
// a grant is a write through etcd's log, so taking a lease then waits for
// one write, not two. A grant Acquire does not use holds no key and
// expires by itself after the TTL.
func (h *Holder) Prepare(ctx context.Context) {
	a := h.begin(ctx)
	h.mu.Lock()
	h.ahead = a
	h.mu.Unlock()
}

// begin starts the grant and the read of the leases that Acquire begins
// with.
func (h *Holder) begin(ctx context.Context) *ahead {
	return &ahead{grant: h.grant(ctx), list: h.list(ctx)}
}

// grant asks etcd for a lease of the holder's TTL; the answer comes on
// the channel.
func (h *Holder) grant(ctx context.Context) chan granted {
	ch := make(chan granted, 1)
	go func() {
		resp, err := h.r.cli.Grant(ctx, ttlSeconds(h.ttl))
		ch <- granted{resp, err}
	}()
	return ch
}

// list reads the leases from the member netd reached, without a round
// through the quorum (see Acquire); the answer comes on the channel.
func (h *Holder) list(ctx context.Context) chan listed {
	ch := make(chan listed, 1)
	go func() {
		entries, snap, err := h.r.list(ctx, clientv3.WithSerializable())
		ch <- listed{entries, snap, err}
	}()
	return ch
}

// maxAttempts bounds how often Acquire retries after losing a race.
const maxAttempts = 32

// Acquire gives the node named in want a subnet of network under a new
// etcd lease, which KeepAlive keeps alive. In order of preference:
//
//  1. the subnet etcd still holds under the node's name (a restart
//     within the TTL): the key moves to the new etcd lease in place, so
//     the subnet never looks free to anyone;
//  2. previous, if it is still free (a restart after the TTL ran out);
//  3. a random free subnet.
//
// The subnet is the lease's key: its IPv4 subnet, or its IPv6 subnet on
// an IPv6-only network. On a dual-stack network the lease's IPv6 subnet
// is the one paired with its IPv4 subnet (conf.Network.PairedV6), so it
// is unique because the key is, and a node whose lease was written
// without one (by a netd from before dual-stack, or before the network
// had IPv6) gets it when it takes its key over.
//
// Each step is a transaction that only succeeds if the key is as Acquire
// last read it (absent, for a new subnet); losing a race re-reads and
// tries again. It fails with ErrExhausted when every subnet is taken,
// and with cluster.ErrNodeTaken when another node holds a live lease
// under the node's name (see cluster.Lease.Owns).
func (h *Holder) Acquire(ctx context.Context, network *conf.Network, want cluster.Lease, previous netip.Prefix) (_ cluster.Lease, _ cluster.Origin, err error) {
	r := h.r
	want.Subnet, want.SubnetV6, want.Created = netip.Prefix{}, netip.Prefix{}, 0
	// The grant and the first read of the leases go to etcd together
	// (Prepare's, if it started them). That read is served by the member
	// netd reached, without a round through the quorum, which would wait
	// for the grant's disk sync: each step below is a transaction that
	// compares what was read, so a stale view costs a retry, and the
	// verdicts that end Acquire without one (the name taken, no subnet
	// free) are only given on a linearizable read.
	h.mu.Lock()
	a := h.ahead
	h.ahead = nil
	h.mu.Unlock()
	if a == nil {
		a = h.begin(ctx)
	}
	var g granted
	var l listed
	select {
	case l = <-a.list:
	case <-ctx.Done(): // Prepare's requests are not bound by ctx
		l.err = ctx.Err()
	}
	select {
	case g = <-a.grant:
	case <-ctx.Done():
		g.err = ctx.Err()
	}
	entries, snap, listErr := l.entries, l.snap, l.err
	fresh := false // entries come from a linearizable read
	if g.err != nil {
		return cluster.Lease{}, "", fmt.Errorf("granting an etcd lease: %w", g.err)
	}
	grant := g.resp
	// Until a key is attached to grant, a failure revokes it; once one
	// is, grant is the node's lease and only the caller may end it.
	holding := false
	defer func() {
		if err != nil && !holding {
			// Detached: ctx may be what failed.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			r.cli.Revoke(rctx, grant.ID)
			cancel()
		}
	}()
	if listErr != nil {
		return cluster.Lease{}, "", listErr
	}
	for attempt := range maxAttempts {
		if attempt > 0 {
			if entries, snap, err = r.list(ctx); err != nil {
				return cluster.Lease{}, "", err
			}
			fresh = true
		}
		taken := map[netip.Prefix]bool{}
		for _, b := range snap.Rejected {
			// Unreadable, but the key exists: creating it would fail.
			if b.Subnet.IsValid() {
				taken[b.Subnet] = true
			}
		}
		var mine, foreign *entry // under the node's name: its own, another node's
		for i, l := range entries {
			if !cluster.NodeSubnet(network, l.Key()) || l.Key().Addr().Is6() != network.KeyFamilyV6() {
				continue // a key of another subnet length or family; not ours to judge
			}
			taken[l.Key()] = true
			switch {
			case l.NodeName != want.NodeName:
			case !want.Owns(l.Lease, previous):
				foreign = &entries[i]
			case mine == nil || preferred(&l.Lease, &mine.Lease, previous):
				mine = &entries[i]
			}
		}
		var ok bool
		var subnet netip.Prefix
		origin := cluster.OriginNew
		switch {
		case mine == nil && foreign != nil && !fresh:
			continue // read again before refusing
		case mine == nil && foreign != nil:
			return cluster.Lease{}, "", r.taken(ctx, foreign)
		case mine != nil:
			subnet, origin = mine.Key(), cluster.OriginKept
		default:
			subnet, ok = pickFree(network, taken, previous)
			if !ok && !fresh {
				continue
			}
			if !ok {
				return cluster.Lease{}, "", fmt.Errorf("%w in network %s: all %d node subnets of %s are leased; enlarge the network's CIDR, use longer subnets, or remove nodes (netd leave)",
					ErrExhausted, network.Name, network.Subnets(), strings.Join(cidrs(network), " and "))
			}
			if subnet == previous {
				origin = cluster.OriginPrevious
			}
		}
		held, err := withSubnet(network, want, subnet)
		if err != nil {
			return cluster.Lease{}, "", err
		}
		value, err := json.Marshal(held)
		if err != nil {
			return cluster.Lease{}, "", err
		}
		if mine != nil {
			ok, err = r.moveLease(ctx, mine, value, grant.ID)
		} else {
			var others []entry // the leases as the key was created
			ok, others, err = r.create(ctx, subnet, value, grant.ID)
			if ok {
				err = r.firstHolder(ctx, want, previous, subnet, others)
				ok = err == nil // else revoking grant deletes the key
			}
		}
		holding = ok
		if err != nil {
			return cluster.Lease{}, "", err
		}
		if ok {
			h.mu.Lock()
			h.held, h.value, h.id = held, value, grant.ID
			h.mu.Unlock()
			return held, origin, nil
		}
	}
	return cluster.Lease{}, "", fmt.Errorf("leasing a subnet of network %s: lost the race to other nodes %d times in a row; try again", network.Name, maxAttempts)
}

// withSubnet is want holding key, the subnet that names it, and on a
// dual-stack network the IPv6 subnet paired with it.
func withSubnet(n *conf.Network, want cluster.Lease, key netip.Prefix) (cluster.Lease, error) {
	if key.Addr().Is6() {
		want.SubnetV6 = key
		return want, nil
	}
	want.Subnet = key
	if n.CIDRv6.IsValid() {
		v6, ok := n.PairedV6(key)
		if !ok {
			return cluster.Lease{}, fmt.Errorf("subnet %s has no IPv6 subnet paired with it in %s", key, n.CIDRv6)
		}
		want.SubnetV6 = v6
	}
	return want, nil
}

// cidrs are n's prefixes as strings, for messages.
func cidrs(n *conf.Network) []string {
	var out []string
	for _, p := range n.CIDRs() {
		out = append(out, p.String())
	}
	return out
}

// preferred says whether a is a better key than b for a node that finds
// two under its name (only a misbehaving writer makes a second one): the
// subnet of its local copy, else the older key. A second key must not
// move the node off the subnet it had.
func preferred(a, b *cluster.Lease, previous netip.Prefix) bool {
	if b.Key() == previous {
		return false
	}
	return a.Key() == previous || a.Created < b.Created
}

// create stores a lease for subnet only if nobody holds it, and returns
// the revision that created it.
func (r *Registry) create(ctx context.Context, subnet netip.Prefix, value []byte, id clientv3.LeaseID) (bool, []entry, error) {
	key := r.leaseKey(subnet)
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(value), clientv3.WithLease(id)), clientv3.OpGet(r.LeasesPrefix(), clientv3.WithPrefix())).
		Commit()
	if err != nil {
		return false, nil, fmt.Errorf("creating lease %s: %w", key, err)
	}
	if !resp.Succeeded {
		return false, nil, nil
	}
	entries, _ := r.parseAll(resp.Responses[1].GetResponseRange().Kvs)
	return true, entries, nil
}

// moveLease rewrites the node's key under the new etcd lease id, if the
// key is unchanged since it was read, and revokes the old etcd lease so a
// keepalive left over from a killed netd cannot hold anything. Once the
// key moved, the old lease holds no key: failing to revoke it is logged,
// not an error (it expires after its TTL), so that the caller does not
// give up the new lease, which now holds the node's key.
func (r *Registry) moveLease(ctx context.Context, l *entry, value []byte, id clientv3.LeaseID) (bool, error) {
	key := r.leaseKey(l.Key())
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", l.modRev)).
		Then(clientv3.OpPut(key, string(value), clientv3.WithLease(id))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("taking over lease %s: %w", key, err)
	}
	if resp.Succeeded && l.id != clientv3.NoLease && l.id != id {
		if _, err := r.cli.Revoke(ctx, l.id); err != nil && !isLeaseNotFound(err) {
			r.Log.Warn("could not revoke the previous etcd lease; it holds no key now and expires by itself", "key", key, "lease", fmt.Sprintf("%x", l.id), "err", err)
		}
	}
	return resp.Succeeded, nil
}

// pickFree returns prefer if it is a free subnet of n, else a random free
// one. Random probes find one quickly while the network is sparse; a
// crowded network falls back to one scan from a random start, so racing
// nodes rarely try the same subnet.
func pickFree(n *conf.Network, taken map[netip.Prefix]bool, prefer netip.Prefix) (netip.Prefix, bool) {
	if cluster.NodeSubnet(n, prefer) && prefer.Addr().Is6() == n.KeyFamilyV6() && !taken[prefer] {
		return prefer, true
	}
	total := n.Subnets()
	if uint64(len(taken)) >= total {
		return netip.Prefix{}, false
	}
	for range 64 {
		if s := n.NthSubnet(rand.Uint64N(total)); !taken[s] {
			return s, true
		}
	}
	start := rand.Uint64N(total)
	for i := range total {
		if s := n.NthSubnet((start + i) % total); !taken[s] {
			return s, true
		}
	}
	return netip.Prefix{}, false
}

// KeepAlive keeps the held etcd lease alive until ctx ends (nil) or
// etcd says it is gone: expired while etcd was unreachable for longer
// than the TTL, or revoked.
func (h *Holder) KeepAlive(ctx context.Context, renewed func(ttl time.Duration)) error {
	id := h.LeaseID()
	ch, err := h.r.cli.KeepAlive(ctx, id)
	if err != nil {
		return fmt.Errorf("keeping etcd lease %x alive: %w", id, err)
	}
	for resp := range ch {
		renewed(time.Duration(resp.TTL) * time.Second)
	}
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("etcd lease %x expired or was revoked", id)
}

// Reclaim writes the held record back at its key, attached to the held
// etcd lease, when the key says anything else or is gone: another writer
// replaced or deleted it while the node's etcd lease is alive (no
// well-behaved node writes a key that exists). The write only succeeds if
// the key is still as Reclaim read it. It fails when the etcd lease is
// gone.
func (h *Holder) Reclaim(ctx context.Context) (bool, error) {
	h.mu.Lock()
	held, value, id := h.held, h.value, h.id
	h.mu.Unlock()
	if !held.Key().IsValid() {
		return false, nil
	}
	key := h.r.leaseKey(held.Key())
	resp, err := h.r.cli.Get(ctx, key)
	if err != nil {
		return false, fmt.Errorf("reading lease %s: %w", key, err)
	}
	var modRev int64
	if len(resp.Kvs) == 1 {
		kv := resp.Kvs[0]
		if bytes.Equal(kv.Value, value) && clientv3.LeaseID(kv.Lease) == id {
			return false, nil
		}
		modRev = kv.ModRevision
	}
	txn, err := h.r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpPut(key, string(value), clientv3.WithLease(id))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("writing lease %s back: %w", key, err)
	}
	return txn.Succeeded, nil
}
