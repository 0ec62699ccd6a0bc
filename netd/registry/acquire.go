package registry

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/conf"
)

// Claim is what a node asks Acquire for.
type Claim struct {
	Record Record
	// TTL of the etcd lease: how long the subnet stays reserved after the
	// node stops keeping it alive (netd down, node gone).
	TTL time.Duration
	// Previous is the subnet the node held before, from its local lease
	// file; zero when unknown. Used when etcd no longer has the node's key.
	Previous netip.Prefix
}

// maxAttempts bounds how often Acquire retries after losing a race.
const maxAttempts = 32

// Acquire gives the node a subnet of network under a new etcd lease of
// c.TTL, which the caller keeps alive. In order of preference:
//
//  1. the subnet etcd still holds under the node's name (a restart
//     within the TTL): the key moves to the new etcd lease in place, so
//     the subnet never looks free to anyone;
//  2. c.Previous, if it is still free (a restart after the TTL ran out);
//  3. a random free subnet.
//
// Each step is a transaction that only succeeds if the key is as Acquire
// last read it (absent, for a new subnet); losing a race re-reads and
// tries again. It fails with ErrExhausted when every subnet is taken.
func (r *Registry) Acquire(ctx context.Context, network *conf.Network, c Claim) (_ *Lease, err error) {
	value, err := json.Marshal(c.Record)
	if err != nil {
		return nil, err
	}
	grant, err := r.cli.Grant(ctx, ttlSeconds(c.TTL))
	if err != nil {
		return nil, fmt.Errorf("granting an etcd lease: %w", err)
	}
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
	for range maxAttempts {
		snap, err := r.List(ctx)
		if err != nil {
			return nil, err
		}
		taken := map[netip.Prefix]bool{}
		for _, b := range snap.Rejected {
			// Unreadable, but the key exists: creating it would fail.
			if b.Subnet.IsValid() {
				taken[b.Subnet] = true
			}
		}
		var mine, foreign *Lease // under the node's name: its own, another node's
		for i, l := range snap.Leases {
			if !belongs(network, l.Subnet) {
				continue // a key of another subnet length; not ours to judge
			}
			taken[l.Subnet] = true
			switch {
			case l.NodeName != c.Record.NodeName:
			case !c.owns(&l):
				foreign = &snap.Leases[i]
			case mine == nil || preferred(&l, mine, c.Previous):
				mine = &snap.Leases[i]
			}
		}
		var ok bool
		var subnet netip.Prefix
		origin := OriginNew
		switch {
		case mine == nil && foreign != nil:
			return nil, r.taken(ctx, foreign)
		case mine != nil:
			subnet, origin = mine.Subnet, OriginKept
			ok, err = r.moveLease(ctx, mine, value, grant.ID)
		default:
			subnet, ok = pickFree(network, taken, c.Previous)
			if !ok {
				return nil, fmt.Errorf("%w in network %s: all %d subnets /%d of %s are leased; enlarge the network's CIDR, use longer subnets, or remove nodes (netd leave)",
					ErrExhausted, network.Name, network.Subnets(), network.SubnetLen, network.CIDR)
			}
			if subnet == c.Previous {
				origin = OriginPrevious
			}
			var created int64
			ok, created, err = r.create(ctx, subnet, value, grant.ID)
			if ok {
				err = r.firstHolder(ctx, &c, created)
				ok = err == nil // else revoking grant deletes the key
			}
		}
		holding = ok
		if err != nil {
			return nil, err
		}
		if ok {
			return &Lease{Subnet: subnet, Record: c.Record, ID: grant.ID, Origin: origin}, nil
		}
	}
	return nil, fmt.Errorf("leasing a subnet of network %s: lost the race to other nodes %d times in a row; try again", network.Name, maxAttempts)
}

// preferred says whether a is a better key than b for a node that finds
// two under its name (only a misbehaving writer makes a second one): the
// subnet of its local copy, else the older key. A second key must not
// move the node off the subnet it had.
func preferred(a, b *Lease, previous netip.Prefix) bool {
	if b.Subnet == previous {
		return false
	}
	return a.Subnet == previous || a.CreateRevision < b.CreateRevision
}

// create stores a lease for subnet only if nobody holds it, and returns
// the revision that created it.
func (r *Registry) create(ctx context.Context, subnet netip.Prefix, value []byte, id clientv3.LeaseID) (bool, int64, error) {
	key := r.leaseKey(subnet)
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(value), clientv3.WithLease(id))).
		Commit()
	if err != nil {
		return false, 0, fmt.Errorf("creating lease %s: %w", key, err)
	}
	return resp.Succeeded, resp.Header.Revision, nil
}

// moveLease rewrites the node's key under the new etcd lease id, if the
// key is unchanged since it was read, and revokes the old etcd lease so a
// keepalive left over from a killed netd cannot hold anything. Once the
// key moved, the old lease holds no key: failing to revoke it is logged,
// not an error (it expires after its TTL), so that the caller does not
// give up the new lease, which now holds the node's key.
func (r *Registry) moveLease(ctx context.Context, l *Lease, value []byte, id clientv3.LeaseID) (bool, error) {
	key := r.leaseKey(l.Subnet)
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", l.ModRevision)).
		Then(clientv3.OpPut(key, string(value), clientv3.WithLease(id))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("taking over lease %s: %w", key, err)
	}
	if resp.Succeeded && l.ID != clientv3.NoLease && l.ID != id {
		if _, err := r.cli.Revoke(ctx, l.ID); err != nil && !isLeaseNotFound(err) {
			r.Log.Warn("could not revoke the previous etcd lease; it holds no key now and expires by itself", "key", key, "lease", fmt.Sprintf("%x", l.ID), "err", err)
		}
	}
	return resp.Succeeded, nil
}

// belongs reports whether subnet is a node subnet of network.
func belongs(n *conf.Network, subnet netip.Prefix) bool {
	return subnet.IsValid() && subnet.Bits() == n.SubnetLen && subnet == subnet.Masked() && n.CIDR.Contains(subnet.Addr())
}

// pickFree returns prefer if it is a free subnet of n, else a random free
// one. Random probes find one quickly while the network is sparse; a
// crowded network falls back to one scan from a random start, so racing
// nodes rarely try the same subnet.
func pickFree(n *conf.Network, taken map[netip.Prefix]bool, prefer netip.Prefix) (netip.Prefix, bool) {
	if belongs(n, prefer) && !taken[prefer] {
		return prefer, true
	}
	total := n.Subnets()
	if uint64(len(taken)) >= total {
		return netip.Prefix{}, false
	}
	for range 64 {
		if s := nthSubnet(n, rand.Uint64N(total)); !taken[s] {
			return s, true
		}
	}
	start := rand.Uint64N(total)
	for i := range total {
		if s := nthSubnet(n, (start+i)%total); !taken[s] {
			return s, true
		}
	}
	return netip.Prefix{}, false
}

// nthSubnet is the i-th node subnet of n.
func nthSubnet(n *conf.Network, i uint64) netip.Prefix {
	b := n.CIDR.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(b[:]) + uint32(i)<<(32-n.SubnetLen)
	binary.BigEndian.PutUint32(b[:], v)
	return netip.PrefixFrom(netip.AddrFrom4(b), n.SubnetLen)
}
