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

	"github.com/berthnet/berth/netd/cluster"
)

// DefaultRewindCheck is how often Follow checks that etcd's revision has
// not gone back.
const DefaultRewindCheck = 5 * time.Second

// errRewound: etcd's revision is below one Follow has seen.
var errRewound = errors.New("etcd's revision went back")

// Follow reads every lease of the network (retrying until etcd answers),
// calls update with them, then follows them as FollowFrom does.
func (r *Registry) Follow(ctx context.Context, update func(cluster.Change)) error {
	wait := 100 * time.Millisecond
	for {
		snap, err := r.List(ctx)
		if err == nil {
			update(cluster.Change{Snapshot: snap})
			return r.FollowFrom(ctx, snap, update)
		}
		r.Log.Warn("listing leases failed; retrying", "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// FollowFrom watches the network's leases from snap (a List result) on
// and calls update with the whole set after every change, until ctx ends.
// A broken watch (lost leader, etcd restart) resumes from the last
// revision seen; when etcd has compacted that revision away, or its
// revision went back (a watch from the future would wait silently),
// FollowFrom re-reads every lease instead, so no change is ever missed.
// Keys that are not a valid lease are reported in Rejected, never fatal.
func (r *Registry) FollowFrom(ctx context.Context, snap cluster.Snapshot, update func(cluster.Change)) error {
	cur := map[string]cluster.Lease{}
	bad := map[string]cluster.Rejected{}
	reset := func(s cluster.Snapshot) {
		clear(cur)
		clear(bad)
		for _, l := range s.Leases {
			cur[keyOf(l.Key())] = l
		}
		for _, b := range s.Rejected {
			bad[b.Key] = b
		}
	}
	reset(snap)
	rev := snap.Revision
	wait := time.Second
	for {
		err := r.watch(ctx, &rev, func(resp *clientv3.WatchResponse) {
			wait = time.Second // the watch works again
			for _, ev := range resp.Events {
				key := strings.TrimPrefix(string(ev.Kv.Key), r.LeasesPrefix())
				delete(cur, key)
				delete(bad, key)
				if ev.Type != mvccpb.PUT {
					continue
				}
				if l, b := r.ParseLease(ev.Kv); b != nil {
					bad[key] = *b
				} else {
					cur[key] = l
				}
			}
			rev = resp.Header.Revision
			if len(resp.Events) > 0 {
				update(cluster.Change{Snapshot: snapshotOf(cur, bad, rev)})
			}
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		rewound := errors.Is(err, errRewound)
		if rewound || errors.Is(err, rpctypes.ErrCompacted) {
			if rewound {
				r.Log.Warn("etcd's revision went back: it lost its data (restored from an empty data dir or a backup); reading all leases again", "revision", rev, "err", err)
			} else {
				r.Log.Info("lease watch fell behind a compaction, reading all leases again", "revision", rev)
			}
			s, lerr := r.List(ctx)
			if lerr == nil {
				reset(s)
				rev = s.Revision
				update(cluster.Change{Snapshot: s, Resync: true, Rewound: rewound})
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

// watch runs one watch from after *rev and hands each response to f. It
// returns when the watch ends: ctx done or an error (ErrCompacted among
// them). Every RewindCheck it compares etcd's revision with *rev and
// ends with errRewound when etcd's is lower.
func (r *Registry) watch(ctx context.Context, rev *int64, f func(*clientv3.WatchResponse)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// RequireLeader: a member cut off from the cluster ends the watch
	// instead of silently serving nothing.
	wch := r.cli.Watch(clientv3.WithRequireLeader(ctx), r.LeasesPrefix(),
		clientv3.WithPrefix(), clientv3.WithRev(*rev+1), clientv3.WithProgressNotify())
	every := r.RewindCheck
	if every <= 0 {
		every = DefaultRewindCheck
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case resp, ok := <-wch:
			if !ok {
				return fmt.Errorf("watching %s: watch closed", r.LeasesPrefix())
			}
			if err := resp.Err(); err != nil {
				return fmt.Errorf("watching %s from revision %d: %w", r.LeasesPrefix(), *rev+1, err)
			}
			f(&resp)
		case <-tick.C:
			rctx, rcancel := context.WithTimeout(ctx, every)
			now, err := r.checkConfig(rctx)
			rcancel()
			// An unreachable etcd is the watch's business; only a
			// revision that answers and is lower ends the watch.
			if err == nil && now < *rev {
				return fmt.Errorf("%w from %d to %d", errRewound, *rev, now)
			}
		}
	}
}

func snapshotOf(cur map[string]cluster.Lease, bad map[string]cluster.Rejected, rev int64) cluster.Snapshot {
	s := cluster.Snapshot{Revision: rev}
	for _, l := range cur {
		s.Leases = append(s.Leases, l)
	}
	for _, b := range bad {
		s.Rejected = append(s.Rejected, b)
	}
	slices.SortFunc(s.Leases, func(a, b cluster.Lease) int { return strings.Compare(keyOf(a.Key()), keyOf(b.Key())) })
	slices.SortFunc(s.Rejected, func(a, b cluster.Rejected) int { return strings.Compare(a.Key, b.Key) })
	return s
}
