package netd

import (
	"fmt"

	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/netd/backend"
)

// guardVTEP makes the kernel hold the backend's VTEP guard for in's
// peers (vxlan: no container may send to the VTEP port, but peers' VXLAN
// passes on any link, see firewall.VTEPGuard): on a full pass, to repair
// a flushed or deleted table or a set changed by hand; on the first pass
// after it could not be written; and on every pass whose peers differ
// from the ones last written. That last is an event pass, on every join
// and leave in the cluster: like the routes' diff against netd's cache,
// it trusts netd's record of the guard and only adds and deletes the
// peers that changed, without reading the kernel (which cost as much as
// the write: 50 netds on 2 CPUs converged 50-100 ms later). An element
// added by hand thus stays until the next full pass; one deleted by hand
// that the pass would delete fails the update, and the pass compares
// and repairs at once. It is written before the VTEP is made or
// re-created, so that no VTEP runs unguarded, and before the pass's
// routes and FDB entries, so that a new peer's VXLAN is let in no later
// than this node sends it its own. It returns what it changed, for the
// pass's log.
func (d *daemon) guardVTEP(full bool, in backend.Input) ([]string, error) {
	g, ok := d.nw.(backend.Guarded)
	if !ok {
		return nil, nil
	}
	want := g.Guard(in)
	if !full && d.guarded && want.SameChain(d.guard) {
		// Unchanged peers write nothing.
		if changed, err := firewall.UpdateVTEPGuardPeers(d.guard, want); err == nil {
			d.guard = want
			return changed, nil
		}
		// The kernel's guard is not the one last written: compare it.
	}
	changed, err := firewall.EnsureVTEPGuard(want)
	d.guarded, d.guard = err == nil, want
	if err != nil {
		return nil, fmt.Errorf("%w; containers may reach the VTEP port %d, and peers' VXLAN arriving on other links than %s is dropped, until it is fixed", err, want.Port, want.Underlay)
	}
	return changed, nil
}

// pendingGuard lists what the next pass would change in the VTEP guard
// for in's peers, for netd status.
func (d *daemon) pendingGuard(in backend.Input) ([]string, error) {
	g, ok := d.nw.(backend.Guarded)
	if !ok {
		return nil, nil
	}
	return firewall.PendingVTEPGuard(g.Guard(in))
}
