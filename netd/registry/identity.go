package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// A node is its name plus an ID it keeps in its own state (Record.NodeID).
// A node name held by a live lease with another ID belongs to another
// node: Acquire and Release refuse it rather than take it over, so that
// a second netd started with a name already in use (a typo, a copied
// config, two machines with the same host name) cannot take the real
// node's subnet and its traffic.

// ErrNodeTaken: another node holds a live lease under this node's name.
var ErrNodeTaken = errors.New("node name held by another node")

// owns reports whether the node claiming c is the one that wrote l, a
// lease under its name. A lease without an ID was written by a netd
// from before node IDs: its owner is the node at the same address, or
// the one whose local lease file names that subnet.
func (c *Claim) owns(l *Lease) bool {
	if l.NodeID != "" {
		return l.NodeID == c.Record.NodeID
	}
	return l.NodeIP == c.Record.NodeIP || (c.Previous.IsValid() && l.Subnet == c.Previous)
}

// taken is the ErrNodeTaken error for l: who holds it, and for how long
// its etcd lease runs unless its netd renews it.
func (r *Registry) taken(ctx context.Context, l *Lease) error {
	id := l.NodeID
	if id == "" {
		id = "none, a netd from before node IDs"
	}
	left := ""
	if l.ID != clientv3.NoLease {
		if ttl, err := r.cli.TimeToLive(ctx, l.ID); err == nil && ttl.TTL > 0 {
			left = fmt.Sprintf(", its lease expires in %s unless its netd renews it", time.Duration(ttl.TTL)*time.Second)
		}
	}
	return fmt.Errorf("%w: node %s at %s (node ID %s) holds subnet %s%s",
		ErrNodeTaken, l.NodeName, l.NodeIP, id, l.Subnet, left)
}

// firstHolder checks, after Acquire created a new key for the node at
// subnet (revision created), that no other node created one under the
// same name meanwhile: two nodes started at once with one name both find
// the name free. The older key keeps the name; the younger gives way
// with ErrNodeTaken.
func (r *Registry) firstHolder(ctx context.Context, c *Claim, created int64) error {
	snap, err := r.List(ctx)
	if err != nil {
		return err
	}
	for i, l := range snap.Leases {
		if l.NodeName == c.Record.NodeName && l.CreateRevision < created && !c.owns(&l) {
			return r.taken(ctx, &snap.Leases[i])
		}
	}
	return nil
}

// CheckNodeID reports whether id can be a node ID: 1..64 hex digits.
// netd makes 32; peers ignore leases with anything else.
func CheckNodeID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("node ID of %d characters: want 1..64 hex digits", len(id))
	}
	for _, c := range []byte(id) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("node ID %q: want lower-case hex digits", id)
		}
	}
	return nil
}
