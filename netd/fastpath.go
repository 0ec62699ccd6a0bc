package netd

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// netd's share of the eBPF datapath (--datapath=ebpf, internal/fastpath):
// it creates the network's pinned maps and programs on this node before
// the plugins learn of the network, marks them as its own (the plugins
// then leave them in place after their last container), and keeps
// from_uplink attached to the underlay link and, in vxlan mode, the VTEP,
// where the network's other nodes' packets arrive. The attachments stay
// when netd stops or crashes; `netd leave` removes them and the pins.
//
// It follows the reconcile loop's split: desiredFastpath describes the
// state (pure), readFastpath reads it, diffFastpath compares (pure), and
// applyFastpath, called from the loop's one apply step (pass), changes
// it.

// setupFastpath opens (creating if needed) the network's pins, so that
// they exist before the conflist, and registers their counters. The
// reconcile loop configures them and attaches the uplink programs.
// Without the eBPF datapath it does nothing.
func (d *daemon) setupFastpath() error {
	if !d.network.EBPF() {
		return nil
	}
	lock, err := fastpath.Acquire(d.cfg.BPFFS)
	if err != nil {
		return fmt.Errorf("--bpffs: %w", err)
	}
	defer lock.Release()
	d.fast, err = fastpath.Open(d.cfg.BPFFS, d.network.Name)
	if err != nil {
		return fmt.Errorf("eBPF datapath of network %s: %w", d.network.Name, err)
	}
	// Marked as netd's at once, the rest as it was (a restart must not
	// disturb traffic): a plugin's last DEL before the first pass must
	// not remove the pins.
	cfg, err := d.fast.Config()
	if err == nil {
		cfg.Netd = true
		err = d.fast.Configure(cfg)
	}
	if err != nil {
		return fmt.Errorf("eBPF datapath of network %s: %w", d.network.Name, err)
	}
	d.m.reg.MustRegister(fastpathCollector{d: d, desc: prometheus.NewDesc("berth_netd_fastpath_packets_total",
		"eBPF datapath: packets by path on this node (local: delivered to a container of this node, fib and neigh: sent to another node, "+
			"arrived: from another node into a container, translated: left to the kernel because conntrack translated the flow, "+
			"spoofed: dropped, not the container's own source address; vxlan mode: encapsulated and decapsulated, what of fib and arrived "+
			"the programs encapsulated or decapsulated themselves rather than the VTEP).",
		[]string{"path"}, prometheus.Labels{"network": d.network.Name})})
	d.log.Info("eBPF datapath", "pins", fastpath.Dir(d.cfg.BPFFS, d.network.Name), "uplinks", d.uplinks())
	return nil
}

// fastpathState is the part of the eBPF datapath netd keeps: the
// network's config in the programs' map, the links where the current
// from_uplink is attached and, in vxlan mode, the VTEP and the peers the
// programs encapsulate for.
type fastpathState struct {
	Config  fastpath.Config
	Uplinks []int // ifindexes, sorted
	VXLAN   fastpath.VXLAN
	Tunnels map[netip.Addr]netip.Addr // next hop of a peer subnet -> peer node address
	Peers   []netip.Addr              // the nodes of Tunnels, sorted: whose VXLAN packets the programs decapsulate
}

// desiredFastpath is the state for this node holding self in network n,
// with uplinks (the underlay link and the backend's links), the backend's
// VTEP (tunnel, nil without one; vtepUp: whether it is up) and the
// backend's desired kernel state (want), whose VTEP neighbours and FDB
// entries name the peers' tunnels. It only computes.
//
// A VTEP that is not up (set down by hand and not up again yet, or one
// netd cannot set up) is no tunnel: the kernel drops what would go
// through it, and the programs must not carry it past it either.
func desiredFastpath(n *conf.Network, self cluster.Lease, uplinks []int, tunnel *backend.Tunnel, vtepUp bool, want backend.State) fastpathState {
	s := fastpathState{Config: fastpath.Config{Local: self.Subnet, Scope: n.CIDR, Netd: true}, Uplinks: slices.Clone(uplinks),
		Tunnels: map[netip.Addr]netip.Addr{}}
	slices.Sort(s.Uplinks)
	if tunnel == nil || !tunnel.Local.Is4() || !vtepUp {
		return s
	}
	s.VXLAN = fastpath.VXLAN{VTEP: tunnel.VTEP, Underlay: tunnel.Underlay, Local: tunnel.Local, VNI: uint32(tunnel.VNI), Port: uint16(tunnel.Port),
		MAC: tunnel.MAC}
	nodeOf := map[string]netip.Addr{} // peer VTEP MAC -> its node address
	for _, f := range want.FDB {
		if a, ok := netip.AddrFromSlice(f.IP); ok && f.LinkIndex == tunnel.VTEP && a.Unmap().Is4() {
			nodeOf[f.HardwareAddr.String()] = a.Unmap()
		}
	}
	for _, nb := range want.Neighs {
		via, ok := netip.AddrFromSlice(nb.IP)
		node, found := nodeOf[nb.HardwareAddr.String()]
		if ok && found && nb.LinkIndex == tunnel.VTEP && via.Unmap().Is4() {
			s.Tunnels[via.Unmap()] = node
			s.Peers = append(s.Peers, node)
		}
	}
	slices.SortFunc(s.Peers, netip.Addr.Compare)
	s.Peers = slices.Compact(s.Peers)
	return s
}

// readFastpath reads the state of f on the links of want (a link where
// netd wants no program is not netd's to look at).
func readFastpath(f *fastpath.Network, want []int) (fastpathState, error) {
	var s fastpathState
	var err error
	if s.Config, err = f.Config(); err != nil {
		return s, err
	}
	if s.VXLAN, err = f.VXLAN(); err != nil {
		return s, err
	}
	if s.Tunnels, err = f.Tunnels(); err != nil {
		return s, err
	}
	if s.Peers, err = f.TunnelPeers(); err != nil {
		return s, err
	}
	for _, idx := range want {
		ok, err := f.UplinkCurrent(idx)
		if err != nil {
			return s, err
		}
		if ok {
			s.Uplinks = append(s.Uplinks, idx)
		}
	}
	slices.Sort(s.Uplinks)
	return s, nil
}

// fastpathChange is one change diffFastpath found necessary.
type fastpathChange struct {
	What  string
	apply func(*fastpath.Network) error
}

// diffFastpath lists the changes that turn have into want. It only
// compares.
func diffFastpath(have, want fastpathState) []fastpathChange {
	var out []fastpathChange
	if have.Config != want.Config {
		c := want.Config
		out = append(out, fastpathChange{What: fmt.Sprintf("configure eBPF datapath: local %s, scope %s", c.Local, c.Scope),
			apply: func(f *fastpath.Network) error { return f.Configure(c) }})
	}
	if have.VXLAN != want.VXLAN {
		v := want.VXLAN
		what := fmt.Sprintf("configure eBPF VXLAN encapsulation: VTEP %d (%s) over %d, local %s, VNI %d, port %d",
			v.VTEP, net.HardwareAddr(v.MAC[:]), v.Underlay, v.Local, v.VNI, v.Port)
		if v == (fastpath.VXLAN{}) {
			what = "stop eBPF VXLAN encapsulation and decapsulation (no VTEP, or not up)"
		}
		out = append(out, fastpathChange{What: what, apply: func(f *fastpath.Network) error { return f.ConfigureVXLAN(v) }})
	}
	for _, via := range slices.SortedFunc(maps.Keys(want.Tunnels), netip.Addr.Compare) {
		if node := want.Tunnels[via]; have.Tunnels[via] != node {
			out = append(out, fastpathChange{What: fmt.Sprintf("eBPF VXLAN tunnel via %s to node %s", via, node),
				apply: func(f *fastpath.Network) error { return f.SetTunnel(via, node) }})
		}
	}
	for _, via := range slices.SortedFunc(maps.Keys(have.Tunnels), netip.Addr.Compare) {
		if _, ok := want.Tunnels[via]; !ok {
			out = append(out, fastpathChange{What: fmt.Sprintf("remove eBPF VXLAN tunnel via %s", via),
				apply: func(f *fastpath.Network) error { return f.RemoveTunnel(via) }})
		}
	}
	out = append(out, diffSet(have.Peers, want.Peers,
		func(node netip.Addr) fastpathChange {
			return fastpathChange{What: fmt.Sprintf("decapsulate eBPF VXLAN from node %s", node),
				apply: func(f *fastpath.Network) error { return f.AddTunnelPeer(node) }}
		},
		func(node netip.Addr) fastpathChange {
			return fastpathChange{What: fmt.Sprintf("stop decapsulating eBPF VXLAN from node %s", node),
				apply: func(f *fastpath.Network) error { return f.RemoveTunnelPeer(node) }}
		})...)
	out = append(out, diffSet(have.Uplinks, want.Uplinks,
		func(idx int) fastpathChange {
			return fastpathChange{What: fmt.Sprintf("attach eBPF from_uplink to interface %d", idx),
				apply: func(f *fastpath.Network) error { return f.AttachUplink(idx) }}
		},
		func(idx int) fastpathChange {
			return fastpathChange{What: fmt.Sprintf("detach eBPF from_uplink from interface %d", idx),
				apply: func(f *fastpath.Network) error { return f.DetachUplink(idx) }}
		})...)
	return out
}

// diffSet is add of each element of want that have lacks, then remove of
// each element of have that want lacks, in their order.
func diffSet[T comparable](have, want []T, add, remove func(T) fastpathChange) []fastpathChange {
	var out []fastpathChange
	for _, x := range want {
		if !slices.Contains(have, x) {
			out = append(out, add(x))
		}
	}
	for _, x := range have {
		if !slices.Contains(want, x) {
			out = append(out, remove(x))
		}
	}
	return out
}

// applyFastpath makes the changes on f, all of them even when some fail,
// and returns what it made and the failures joined.
func applyFastpath(f *fastpath.Network, changes []fastpathChange) (made []string, err error) {
	var errs []error
	for _, c := range changes {
		if err := c.apply(f); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.What, err))
			continue
		}
		made = append(made, c.What)
	}
	return made, errors.Join(errs...)
}

// reconcileFastpath is the eBPF datapath's share of a pass: the config
// follows this node's lease (the subnet changes when the lease is lost),
// and a VTEP re-created by Ensure is a new link that needs from_uplink.
// A full pass also follows the pins when they were made anew (followPins).
// It is cheap when nothing changed.
func (d *daemon) reconcileFastpath(self cluster.Lease, backendWant backend.State, full bool) (made []string, err error) {
	if d.fast == nil {
		return nil, nil
	}
	if full {
		if made, err = d.followPins(); err != nil {
			return made, err
		}
	}
	have, want, err := d.readFastpath(self, backendWant)
	if err != nil {
		return made, err
	}
	changed, err := applyFastpath(d.fast, diffFastpath(have, want))
	made = append(made, changed...)
	if err != nil {
		return made, err
	}
	// The new from_uplink is attached: the old ones can go. One whose
	// detach fails stays for the next pass; those before it are closed,
	// so they leave the list as they go.
	for len(d.replaced) > 0 {
		old := d.replaced[0]
		for _, idx := range want.Uplinks {
			if err := old.DetachUplink(idx); err != nil {
				return made, err
			}
		}
		old.Close()
		d.replaced = d.replaced[1:]
		made = append(made, "detach the eBPF from_uplink of the replaced pins")
	}
	return made, nil
}

// readFastpath reads the eBPF datapath's state on this node and what
// desiredFastpath wants it to be, with the backend's VTEP as the kernel
// has it now and the backend's desired kernel state.
func (d *daemon) readFastpath(self cluster.Lease, backendWant backend.State) (have, want fastpathState, err error) {
	var tunnel *backend.Tunnel
	vtepUp := false
	if t, is := d.nw.(backend.Tunneler); is {
		if vtep, ok := t.Tunnel(); ok {
			tunnel = &vtep
			if vtepUp, err = linkUp(vtep.VTEP); err != nil {
				return have, want, err
			}
		}
	}
	want = desiredFastpath(d.network, self, d.uplinks(), tunnel, vtepUp, backendWant)
	have, err = readFastpath(d.fast, want.Uplinks)
	return have, want, err
}

// pendingFastpath lists what the next pass would change in the eBPF
// datapath, for status (which holds reconcileMu); it changes nothing.
// The maps change without an event (bpftool, a plugin of another
// version): only a pass or this comparison sees it.
func (d *daemon) pendingFastpath(self cluster.Lease, backendWant backend.State) ([]string, error) {
	if d.fast == nil {
		return nil, nil
	}
	var pending []string
	if pinned, err := d.fast.Pinned(); err != nil {
		return nil, err
	} else if !pinned {
		pending = append(pending, "follow the eBPF pins made anew (netd's were removed)")
	}
	if len(d.replaced) > 0 {
		pending = append(pending, "detach the eBPF from_uplink of the replaced pins")
	}
	have, want, err := d.readFastpath(self, backendWant)
	if err != nil {
		return nil, err
	}
	for _, c := range diffFastpath(have, want) {
		pending = append(pending, c.What)
	}
	return pending, nil
}

// followPins opens the network's pins again when they are no longer the
// maps and programs netd holds (fastpath.Network.Pinned): someone removed
// them, and a plugin's ADD made new ones, or none yet (Open makes them
// here). The pins are what every plugin uses, so netd follows them: the
// pass then configures the new maps and attaches the new from_uplink, and
// detaches the old one. Containers attached before keep their programs
// and the old maps; traffic from other nodes reaches them through the
// kernel's path.
func (d *daemon) followPins() ([]string, error) {
	if pinned, err := d.fast.Pinned(); err != nil || pinned {
		return nil, err
	}
	lock, err := fastpath.Acquire(d.cfg.BPFFS)
	if err != nil {
		return nil, fmt.Errorf("--bpffs: %w", err)
	}
	defer lock.Release()
	n, err := fastpath.Open(d.cfg.BPFFS, d.network.Name)
	if err != nil {
		return nil, fmt.Errorf("eBPF datapath of network %s: opening its pins again: %w", d.network.Name, err)
	}
	// The containers attached before run programs of the set netd held:
	// move them onto the new one (a plugin that made the pins anew moved
	// those it has records of already).
	eps, err := d.fast.Endpoints()
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("eBPF datapath of network %s: listing the endpoints of its older pins: %w", d.network.Name, err)
	}
	for _, ep := range eps {
		if _, err := n.Adopt(ep.Ifindex); err != nil {
			n.Close()
			return nil, fmt.Errorf("eBPF datapath of network %s: moving interface %d onto its new pins: %w", d.network.Name, ep.Ifindex, err)
		}
	}
	d.fastMu.Lock()
	d.replaced = append(d.replaced, d.fast)
	d.fast = n
	d.fastMu.Unlock()
	return []string{"follow the eBPF pins of network " + d.network.Name + ", made anew in " + fastpath.Dir(d.cfg.BPFFS, d.network.Name)}, nil
}

// linkUp reads whether link idx is administratively up (IFF_UP); a
// missing link is not.
func linkUp(idx int) (bool, error) {
	l, err := netlink.LinkByIndex(idx)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading link %d: %w", idx, err)
	}
	return l.Attrs().Flags&net.FlagUp != 0, nil
}

// uplinks are where the network's other nodes' packets arrive: the
// underlay link, and the backend's own links (the VTEP).
func (d *daemon) uplinks() []int {
	links := []int{d.node.Link.Attrs().Index}
	for _, idx := range d.nw.Owned().Links {
		if idx > 0 {
			links = append(links, idx)
		}
	}
	return links
}

// fastpathCollector publishes the programs' counters when scraped.
type fastpathCollector struct {
	d    *daemon
	desc *prometheus.Desc
}

func (c fastpathCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c fastpathCollector) Collect(ch chan<- prometheus.Metric) {
	c.d.fastMu.Lock()
	s, err := c.d.fast.Stats()
	c.d.fastMu.Unlock()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for path, v := range map[string]uint64{"local": s.Local, "fib": s.FIB, "neigh": s.Neigh, "arrived": s.Arrived,
		"translated": s.Translated, "spoofed": s.Spoofed, "encapsulated": s.Encapsulated, "decapsulated": s.Decapsulated} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(v), path)
	}
}
