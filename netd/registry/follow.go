package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Change is the full set of leases after a change.
type Change struct {
	Snapshot
	// Resync is true when the set was re-read from scratch because the
	// watch could not resume (etcd compacted the revision it needed).
	Resync bool
}

// Follow watches the network's leases from snap (a List result) on and
// calls update with the whole set after every change, until ctx ends.
// A broken watch (lost leader, etcd restart) resumes from the last
// revision seen; when etcd has compacted that revision away, Follow
// re-reads every lease instead, so no change is ever missed.
func (r *Registry) Follow(ctx context.Context, snap Snapshot, update func(Change)) error {
	cur := map[string]Lease{}
	for _, l := range snap.Leases {
		cur[r.leaseKey(l.Subnet)] = l
	}
	rev := snap.Revision
	wait := time.Second
	for {
		err := r.watch(ctx, rev, func(resp *clientv3.WatchResponse) error {
			wait = time.Second // the watch works again
			for _, ev := range resp.Events {
				key := string(ev.Kv.Key)
				switch ev.Type {
				case mvccpb.DELETE:
					delete(cur, key)
				case mvccpb.PUT:
					l, err := r.parseLease(ev.Kv.Key, ev.Kv.Value, ev.Kv.Lease, ev.Kv.ModRevision)
					if err != nil {
						return err
					}
					cur[key] = l
				}
			}
			rev = resp.Header.Revision
			if len(resp.Events) > 0 {
				update(Change{Snapshot: snapshotOf(cur, rev)})
			}
			return nil
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			r.Log.Info("lease watch fell behind a compaction, reading all leases again", "revision", rev)
			s, lerr := r.List(ctx)
			if lerr == nil {
				clear(cur)
				for _, l := range s.Leases {
					cur[r.leaseKey(l.Subnet)] = l
				}
				rev = s.Revision
				update(Change{Snapshot: s, Resync: true})
				wait = time.Second
				continue
			}
			err = lerr
		}
		r.Log.Warn("lease watch broken; resuming", "revision", rev, "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// watch runs one watch from after rev and hands each response to f. It
// returns when the watch ends: ctx done, an error (ErrCompacted among
// them), or f failing.
func (r *Registry) watch(ctx context.Context, rev int64, f func(*clientv3.WatchResponse) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// RequireLeader: a member cut off from the cluster ends the watch
	// instead of silently serving nothing.
	wch := r.cli.Watch(clientv3.WithRequireLeader(ctx), r.leasesPrefix(),
		clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify())
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watching %s from revision %d: %w", r.leasesPrefix(), rev+1, err)
		}
		if err := f(&resp); err != nil {
			return err
		}
	}
	return fmt.Errorf("watching %s: watch closed", r.leasesPrefix())
}

func snapshotOf(cur map[string]Lease, rev int64) Snapshot {
	s := Snapshot{Revision: rev}
	for _, l := range cur {
		s.Leases = append(s.Leases, l)
	}
	slices.SortFunc(s.Leases, func(a, b Lease) int { return strings.Compare(a.Subnet.String(), b.Subnet.String()) })
	return s
}
