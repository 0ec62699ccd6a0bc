package netd

import (
	"fmt"

	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/netd/backend"
)

// guardVTEP writes the backend's VTEP guard (vxlan: no container may
// send to the VTEP port, see firewall.VTEPGuard) on a full pass, to
// repair a flushed or deleted table, and on the first pass after it
// could not be written. It is written before the VTEP is made or
// re-created, so that no VTEP runs unguarded. It returns what it
// changed, for the pass's log.
func (d *daemon) guardVTEP(full bool) ([]string, error) {
	g, ok := d.nw.(backend.Guarded)
	if !ok || !full && d.guarded {
		return nil, nil
	}
	want := g.Guard()
	changed, err := firewall.EnsureVTEPGuard(want)
	d.guarded = err == nil
	if err != nil {
		return nil, fmt.Errorf("%w; containers may reach the VTEP port %d until it is fixed", err, want.Port)
	}
	return changed, nil
}

// pendingGuard lists what the next full pass would change in the VTEP
// guard, for netd status.
func (d *daemon) pendingGuard() ([]string, error) {
	g, ok := d.nw.(backend.Guarded)
	if !ok {
		return nil, nil
	}
	return firewall.PendingVTEPGuard(g.Guard())
}
