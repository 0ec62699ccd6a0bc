package netd

import (
	"context"
	"errors"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// reconcileLoop runs a pass as soon as something changed (a lease, the
// kernel, BGP), coalescing only what is already queued: such a pass
// compares the backend's desired state with netd's cache of the kernel
// (kept from netlink events) and applies what differs, which after a
// lease event is that peer's route, neighbour and FDB entry. A full pass
// (devices checked, the kernel read again) runs every
// --resync-interval, whenever the cache may have missed events, and
// after a pass failed (retried sooner, backing off to the interval).
func (d *daemon) reconcileLoop(ctx context.Context) {
	interval := d.cfg.ResyncInterval
	resync := time.NewTimer(interval)
	defer resync.Stop()
	const firstRetry = 200 * time.Millisecond
	retry := firstRetry
	for {
		full := false
		select {
		case <-ctx.Done():
			return
		case <-d.kick:
		case <-d.fullKick:
			full = true
		case <-resync.C:
			full = true
		}
		select {
		case <-d.kick:
		default:
		}
		select {
		case <-d.fullKick:
			full = true
		default:
		}
		err := d.reconcile(ctx, full)
		switch {
		case err != nil:
			resync.Reset(retry)
			retry = min(2*retry, interval)
		case full:
			resync.Reset(interval)
			retry = firstRetry
		}
	}
}

// reconcile makes the kernel match the leases: it lets the backend
// describe the state it wants, compares that with the part of the
// kernel netd owns, and changes only what differs. This is the one
// place where netd changes the kernel and the routing protocol. A full
// pass also re-creates missing devices and reads the kernel again
// instead of trusting the cache.
func (d *daemon) reconcile(ctx context.Context, full bool) error {
	d.reconcileMu.Lock()
	defer d.reconcileMu.Unlock()
	start := time.Now()
	self, _ := d.keeper.lease()
	peers, problems := d.peers.current()
	res := result{At: start}
	more, err := d.pass(ctx, full, &res, backend.Input{Self: self, Peers: peers, Underlay: d.underlay.Path})
	res.Err = err
	problems = append(append(problems, res.Announced...), more...)
	backend.SortProblems(problems)
	res.Problems = problems

	kind := "event"
	if full {
		kind = "full"
	}
	took := time.Since(start)
	d.m.reconcileDuration.WithLabelValues(kind).Observe(took.Seconds())
	d.log.Debug("reconcile pass", "pass", kind, "took", took, "changes", len(res.Changes), "peers", len(peers))
	d.m.peers.Set(float64(len(peers)))
	d.m.observeProblems(problems)
	if res.Err != nil {
		d.m.reconcileErrors.Inc()
		d.m.kernelInSync.Set(0)
		d.log.Error("reconcile", "err", res.Err, "full", full)
	} else {
		d.m.kernelInSync.Set(1)
	}
	d.mu.Lock()
	prev := d.last.Problems
	d.last = res
	d.mu.Unlock()
	d.logProblems(prev, problems)
	return res.Err
}

// pass is one reconcile pass from in (its Kernel and Routing filled in
// here): it records in res what it changed, what the routing protocol
// could not set up and its sessions, and returns the problems Desired
// found (peers it cannot connect, routes it refuses).
func (d *daemon) pass(ctx context.Context, full bool, res *result, in backend.Input) ([]backend.Problem, error) {
	// Before Ensure may make a VTEP. A failure fails the pass (logged,
	// status, metrics, retried) but holds nothing else up.
	guarded, guardErr := d.guardVTEP(full, in)
	d.logChanges(res, guarded)
	if full {
		if err := d.nw.Ensure(ctx); err != nil {
			// The backend's devices are not what its state needs (a VTEP
			// that would not come up, or be made): that state waits for
			// the next pass. The eBPF datapath follows them now, knowing
			// no peer: a VTEP left down is no tunnel, and an up one
			// carries all its traffic itself meanwhile.
			fast, fastErr := d.reconcileFastpath(in.Self, backend.State{}, full)
			d.logChanges(res, fast)
			return nil, errors.Join(err, fastErr, guardErr)
		}
	}
	if a, ok := d.nw.(backend.Announcer); ok {
		res.Announced = a.Announce(ctx, in.Self, in.Peers)
	}
	owned := d.nw.Owned()
	since := d.kernel.Seq()
	have, cached := d.kernel.State(owned)
	if full || !cached {
		var err error
		if have, err = d.kernel.Load(owned); err != nil {
			return nil, err
		}
	}
	in.Kernel = have
	if err := d.readRouting(ctx, &in); err != nil {
		return nil, err
	}
	want, problems := d.nw.Desired(in)
	changes := backend.Diff(have, want)
	for _, c := range changes {
		d.log.Info("kernel change", "change", c.What)
		res.Changes = append(res.Changes, c.What)
	}
	made, err := backend.Apply(changes)
	d.kernel.Applied(made, since)
	d.m.kernelChanges.Add(float64(len(made)))
	// After the backend's changes: Ensure may have made a new VTEP.
	fast, fastErr := d.reconcileFastpath(in.Self, want, full)
	d.logChanges(res, fast)
	if sl, ok := d.nw.(backend.SessionLister); ok {
		res.Sessions = sl.Sessions(in)
		d.m.observeSessions(res.Sessions)
	}
	return problems, errors.Join(err, fastErr, guardErr)
}

// logChanges logs and counts changes of a pass besides the backend's
// (the eBPF datapath's, the VTEP guard's).
func (d *daemon) logChanges(res *result, made []string) {
	for _, what := range made {
		d.log.Info("kernel change", "change", what)
		res.Changes = append(res.Changes, what)
	}
	d.m.kernelChanges.Add(float64(len(made)))
}

// input reads what the backend computes from, for status: the owned part
// of the kernel (read now, not from the cache) and, with a routing
// protocol, what it learned.
func (d *daemon) input(ctx context.Context, self cluster.Lease, peers []cluster.Lease) (backend.Input, error) {
	in := backend.Input{Self: self, Peers: peers, Underlay: d.underlay.Path}
	var err error
	if in.Kernel, err = backend.Read(d.nw.Owned()); err != nil {
		return in, err
	}
	return in, d.readRouting(ctx, &in)
}

// readRouting fills in what the routing protocol (bgp) learned and its
// sessions. A failed read is an error, never an empty state (which would
// remove every route).
func (d *daemon) readRouting(ctx context.Context, in *backend.Input) error {
	rr, ok := d.nw.(backend.RoutingReader)
	if !ok {
		return nil
	}
	var err error
	in.Routing, err = rr.Routing(ctx)
	return err
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

// kernelEvents are the netlink subscriptions that keep the kernel cache
// current.
type kernelEvents struct {
	routes chan netlink.RouteUpdate
	neighs chan netlink.NeighUpdate
	addrs  chan netlink.AddrUpdate
	links  chan netlink.LinkUpdate
	done   chan struct{}
}

// eventBuffer is each subscription's socket receive buffer: room for the
// events of a burst (a node joining a large cluster, a VTEP re-created)
// so that the socket does not overflow and force a full re-read.
const eventBuffer = 1 << 20

// subscribe opens the netlink subscriptions. Events are queued from now
// on; a full pass after this reads the kernel they change.
func (d *daemon) subscribe() (*kernelEvents, error) {
	e := &kernelEvents{
		routes: make(chan netlink.RouteUpdate, 256),
		neighs: make(chan netlink.NeighUpdate, 256),
		addrs:  make(chan netlink.AddrUpdate, 64),
		links:  make(chan netlink.LinkUpdate, 64),
		done:   make(chan struct{}),
	}
	onErr := func(err error) {
		select {
		case <-e.done: // closing the sockets ends the subscriptions
		default:
			d.log.Warn("kernel event subscription", "err", err)
		}
	}
	err := errors.Join(
		netlink.RouteSubscribeWithOptions(e.routes, e.done, netlink.RouteSubscribeOptions{ErrorCallback: onErr, ReceiveBufferSize: eventBuffer, ReceiveBufferForceSize: true}),
		netlink.NeighSubscribeWithOptions(e.neighs, e.done, netlink.NeighSubscribeOptions{ErrorCallback: onErr, ReceiveBufferSize: eventBuffer, ReceiveBufferForceSize: true}),
		netlink.AddrSubscribeWithOptions(e.addrs, e.done, netlink.AddrSubscribeOptions{ErrorCallback: onErr, ReceiveBufferSize: eventBuffer, ReceiveBufferForceSize: true}),
		netlink.LinkSubscribeWithOptions(e.links, e.done, netlink.LinkSubscribeOptions{ErrorCallback: onErr, ReceiveBufferSize: eventBuffer, ReceiveBufferForceSize: true}))
	if err != nil {
		close(e.done)
		return nil, err
	}
	return e, nil
}

// watchKernel keeps the kernel cache current from events (first from
// those of e, subscribed before the first pass) and pokes the reconcile
// loop when something netd owns or depends on changed behind its back (a
// route deleted by hand comes back at once, not at the next periodic
// pass). When a subscription ends (its socket overflowed: events were
// lost) it subscribes again and asks for a full pass.
func (d *daemon) watchKernel(ctx context.Context, e *kernelEvents) {
	for {
		if e != nil {
			d.handleKernelEvents(ctx, e)
			close(e.done)
		}
		d.kernel.Invalidate()
		d.underlay.Forget()
		if ctx.Err() != nil {
			return
		}
		d.log.Warn("kernel events may have been lost; reading the kernel again")
		d.pokeFull()
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		var err error
		if e, err = d.subscribe(); err != nil {
			d.log.Warn("subscribing to kernel events; relying on full passes until it works", "err", err)
		}
		d.pokeFull()
	}
}

func (d *daemon) handleKernelEvents(ctx context.Context, e *kernelEvents) {
	underlay := d.node.Link.Attrs().Index
	for {
		var ev backend.Event
		select {
		case <-ctx.Done():
			return
		case u, ok := <-e.routes:
			if !ok {
				return
			}
			if ev = d.kernel.Route(u); ev == backend.UnderlayChanged {
				d.underlay.ForgetWithin(u.Dst)
			}
		case u, ok := <-e.neighs:
			if !ok {
				return
			}
			ev = d.kernel.Neigh(u)
		case u, ok := <-e.addrs:
			if !ok {
				return
			}
			if ev = d.kernel.Addr(u); ev == backend.UnderlayChanged {
				d.underlay.Forget()
			}
		case u, ok := <-e.links:
			if !ok {
				return
			}
			ev = d.kernel.Link(u, underlay)
		}
		switch ev {
		case backend.OwnedChanged, backend.UnderlayChanged:
			d.poke()
		case backend.CacheLost:
			d.kernel.Invalidate()
			d.underlay.Forget()
			d.pokeFull()
		}
	}
}
