package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrInUse: the network cannot be deleted while nodes hold leases.
var ErrInUse = errors.New("network in use")

// Delete removes the network from etcd: its config and every key under
// it, such as keys under leases/ that are no lease (a misbehaving
// writer's). It refuses with ErrInUse while a node holds a lease: its
// netd would write the config back, and its peers would keep its routes.
// A node that is gone holds its lease until it expires (--lease-ttl).
func (r *Registry) Delete(ctx context.Context) error {
	snap, err := r.List(ctx)
	if err != nil {
		return err
	}
	if len(snap.Leases) > 0 {
		var held []string
		for _, l := range snap.Leases {
			var subnets []string
			for _, p := range l.Subnets() {
				subnets = append(subnets, p.String())
			}
			held = append(held, fmt.Sprintf("%s (%s at %s)", strings.Join(subnets, ","), l.NodeName, l.NodeAddrs()))
		}
		return fmt.Errorf("%w: %d nodes hold leases: %s; stop netd and run `netd leave` on each, or wait until their leases expire",
			ErrInUse, len(held), strings.Join(held, ", "))
	}
	// Only if no key under leases/ changed since it was read: a node
	// that leased meanwhile keeps its network.
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(r.LeasesPrefix()), "<", snap.Revision+1).WithPrefix()).
		Then(clientv3.OpDelete(r.prefix, clientv3.WithPrefix())).
		Commit()
	if err != nil {
		return fmt.Errorf("deleting %s: %w", r.prefix, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: a node leased a subnet while deleting; try again", ErrInUse)
	}
	if resp.Responses[0].GetResponseDeleteRange().Deleted == 0 {
		return fmt.Errorf("%w: no network at %s", ErrNotFound, r.prefix)
	}
	return nil
}
