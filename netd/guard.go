package netd

import (
	"fmt"
	"slices"

	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// guardVTEP writes the backend's VTEP guard (vxlan: no container may
// send to the VTEP port, see firewall.VTEPGuard) for these peers: on a
// full pass, to repair a flushed or deleted table, and whenever the
// peers' addresses changed since it was last written. It is written
// before the VTEP is made or re-created, so that no VTEP runs unguarded.
// It returns what it changed, for the pass's log.
func (d *daemon) guardVTEP(peers []cluster.Lease, full bool) ([]string, error) {
	g, ok := d.nw.(backend.Guarded)
	if !ok {
		return nil, nil
	}
	want := g.Guard(peers)
	if !full && d.guarded != nil && slices.Equal(d.guarded.Peers, want.Peers) {
		return nil, nil
	}
	changed, err := firewall.EnsureVTEPGuard(want)
	if err != nil {
		d.guarded = nil // written again by the next pass
		return nil, fmt.Errorf("%w; containers may reach the VTEP port %d until it is fixed", err, want.Port)
	}
	d.guarded = &want
	return changed, nil
}

// pendingGuard lists what the next full pass would change in the VTEP
// guard, for netd status.
func (d *daemon) pendingGuard(peers []cluster.Lease) ([]string, error) {
	g, ok := d.nw.(backend.Guarded)
	if !ok {
		return nil, nil
	}
	return firewall.PendingVTEPGuard(g.Guard(peers))
}
