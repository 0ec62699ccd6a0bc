package netd

import (
	"context"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// reconcileLoop reconciles whenever the leases or the kernel changed,
// and every --resync-interval regardless.
func (d *daemon) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.ResyncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.kick:
		case <-t.C:
		}
		// Let a burst settle (a lease change arrives with the kernel's
		// echo of the previous pass), then handle it in one pass.
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
		select {
		case <-d.kick:
		default:
		}
		d.reconcile(ctx)
	}
}

// reconcile makes the kernel match the leases: it lets the backend
// describe the state it wants, compares that with the part of the
// kernel netd owns, and changes only what differs. This is the one
// place where netd changes the kernel and the routing protocol.
func (d *daemon) reconcile(ctx context.Context) {
	d.reconcileMu.Lock()
	defer d.reconcileMu.Unlock()
	start := time.Now()
	self, _ := d.keeper.lease()
	peers, problems := d.peers.current()
	res := result{At: start}
	d.underlay.Forget()
	if err := d.nw.Ensure(ctx); err != nil {
		res.Err = err
	} else {
		if a, ok := d.nw.(backend.Announcer); ok {
			res.Announced = a.Announce(ctx, self, peers)
			problems = append(problems, res.Announced...)
		}
		in, err := d.input(ctx, self, peers)
		if err != nil {
			res.Err = err
		} else {
			want, more := d.nw.Desired(in)
			problems = append(problems, more...)
			changes := backend.Diff(in.Kernel, want)
			for _, c := range changes {
				d.log.Info("kernel change", "change", c.What)
				res.Changes = append(res.Changes, c.What)
			}
			res.Err = backend.Apply(changes)
			d.m.kernelChanges.Add(float64(len(changes)))
			if sl, ok := d.nw.(backend.SessionLister); ok {
				res.Sessions = sl.Sessions(in)
				d.m.observeSessions(res.Sessions)
			}
		}
	}
	backend.SortProblems(problems)
	res.Problems = problems

	d.m.reconcileDuration.Observe(time.Since(start).Seconds())
	d.m.peers.Set(float64(len(peers)))
	d.m.observeProblems(problems)
	if res.Err != nil {
		d.m.reconcileErrors.Inc()
		d.m.kernelInSync.Set(0)
		d.log.Error("reconcile", "err", res.Err)
	} else {
		d.m.kernelInSync.Set(1)
	}
	d.mu.Lock()
	prev := d.last.Problems
	d.last = res
	d.mu.Unlock()
	d.logProblems(prev, problems)
}

// input reads what the backend computes from: the owned part of the
// kernel and, with a routing protocol, what it learned. A failed read is
// an error, never an empty state (which would remove every route).
func (d *daemon) input(ctx context.Context, self cluster.Lease, peers []cluster.Lease) (backend.Input, error) {
	in := backend.Input{Self: self, Peers: peers, Underlay: d.underlay.Path}
	var err error
	if in.Kernel, err = backend.Read(d.nw.Owned()); err != nil {
		return in, err
	}
	if rr, ok := d.nw.(backend.RoutingReader); ok {
		if in.Routing, err = rr.Routing(ctx); err != nil {
			return in, err
		}
	}
	return in, nil
}

// logProblems logs a problem when it appears or changes, and when it is
// resolved, not on every pass: a peer that cannot be connected as an
// error, one still coming up as information, a refused route as a
// warning (and counted).
func (d *daemon) logProblems(prev, cur []backend.Problem) {
	old := map[string]backend.Problem{}
	for _, p := range prev {
		old[p.Peer] = p
	}
	for _, p := range cur {
		o, seen := old[p.Peer]
		delete(old, p.Peer)
		if seen && o.Kind == p.Kind && o.Err.Error() == p.Err.Error() {
			continue
		}
		switch p.Kind {
		case backend.Pending:
			d.log.Info("peer not connected yet", "peer", p.Peer, "err", p.Err)
		case backend.Refused:
			d.log.Warn("refusing a route", "route", p.Peer, "err", p.Err)
			d.m.routeRefusals.Inc()
		default:
			d.log.Error("cannot connect peer", "peer", p.Peer, "err", p.Err)
		}
	}
	for _, p := range old {
		if p.Kind == backend.Refused {
			d.log.Info("route no longer refused", "route", p.Peer)
		} else {
			d.log.Info("peer problem resolved", "peer", p.Peer)
		}
	}
}

// watchKernel pokes the reconcile loop when something netd owns is
// removed or changed behind its back (a route deleted by hand, the VTEP
// deleted or set down), so it comes back at once rather than at the next
// periodic pass.
func (d *daemon) watchKernel(ctx context.Context) {
	for ctx.Err() == nil {
		routes := make(chan netlink.RouteUpdate, 64)
		neighs := make(chan netlink.NeighUpdate, 64)
		links := make(chan netlink.LinkUpdate, 64)
		done := make(chan struct{})
		var errs []error
		onErr := func(err error) { d.log.Debug("netlink subscription", "err", err) }
		errs = append(errs,
			netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}),
			netlink.NeighSubscribeWithOptions(neighs, done, netlink.NeighSubscribeOptions{ErrorCallback: onErr}),
			netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}))
		for _, err := range errs {
			if err != nil {
				d.log.Warn("subscribing to kernel events; relying on the periodic resync", "err", err)
			}
		}
		d.handleKernelEvents(ctx, routes, neighs, links)
		close(done)
		// A subscription ended (e.g. the socket overflowed): events may
		// be lost, so reconcile fully and subscribe again.
		d.poke()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (d *daemon) handleKernelEvents(ctx context.Context, routes chan netlink.RouteUpdate, neighs chan netlink.NeighUpdate, links chan netlink.LinkUpdate) {
	owned := func(index int) bool {
		for _, i := range d.nw.Owned().Links {
			if i == index {
				return true
			}
		}
		return index == d.node.Link.Attrs().Index
	}
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-routes:
			if !ok {
				return
			}
			if u.Type == unix.RTM_DELROUTE && u.Protocol == backend.RouteProtocol {
				d.poke()
			}
		case u, ok := <-neighs:
			if !ok {
				return
			}
			if u.Type == unix.RTM_DELNEIGH && owned(u.LinkIndex) {
				d.poke()
			}
		case u, ok := <-links:
			if !ok {
				return
			}
			// A VTEP created by hand or by a second netd has a new index.
			if owned(int(u.Index)) || u.Link.Type() == "vxlan" {
				d.poke()
			}
		}
	}
}
