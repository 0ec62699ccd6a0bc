package netd

// While netd starts (before it holds a lease and has reconciled once) it
// already serves /status, /healthz and /metrics, so that `netd status`
// says what it waits for ("waiting for etcd at ...: connection refused
// ...", exit 2) rather than that netd is not running.

// startingState is what Status.Starting says before netd says anything
// more precise.
const startingState = "starting"

// setStarting records what netd waits for, until it runs.
func (d *daemon) setStarting(what string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.starting != "" {
		d.starting = what
	}
}

// setRunning ends the starting phase: status reports the lease, peers
// and kernel from now on.
func (d *daemon) setRunning() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.starting = ""
}

// startingStatus is the status while netd starts; nil once it runs.
func (d *daemon) startingStatus() *Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.starting == "" {
		return nil
	}
	s := &Status{
		Node:          d.cfg.NodeName,
		Network:       d.cfg.Network.Name,
		EtcdEndpoints: d.endpoints,
		Starting:      d.starting,
		Warnings:      etcdWarnings(d.cfg, d.endpoints),
	}
	if d.node.Link != nil {
		s.NodeIP, s.NodeIPv6, s.Iface = str(d.node.IP), str(d.node.IPv6), d.node.Link.Attrs().Name
	}
	return s
}
