package netd

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/fastpath"
)

// netd's share of the eBPF datapath (--datapath=ebpf, internal/fastpath):
// it creates the network's pinned maps and programs on this node before
// the plugins learn of the network, marks them as its own (the plugins
// then leave them in place after their last container), and keeps
// from_uplink attached to the underlay link and, in vxlan mode, the VTEP,
// where the network's other nodes' packets arrive. The attachments stay
// when netd stops or crashes; `netd leave` removes them and the pins.

// setupFastpath opens (creating if needed) the network's pins and
// attaches the uplink programs. Without the eBPF datapath it does nothing.
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
	if err := d.ensureFastpath(); err != nil {
		return err
	}
	d.m.reg.MustRegister(fastpathCollector{n: d.fast, desc: prometheus.NewDesc("berth_netd_fastpath_packets_total",
		"eBPF datapath: packets by path on this node (local: delivered to a container of this node, fib and neigh: sent to another node, "+
			"arrived: from another node into a container, translated: left to the kernel because conntrack translated the flow, "+
			"spoofed: dropped, not the container's own source address).",
		[]string{"path"}, prometheus.Labels{"network": d.network.Name})})
	d.log.Info("eBPF datapath", "pins", fastpath.Dir(d.cfg.BPFFS, d.network.Name), "uplinks", d.uplinks())
	return nil
}

// ensureFastpath keeps the network's config current (the subnet may
// change when the lease is lost) and from_uplink attached: a VTEP
// re-created by Ensure is a new link. It is cheap when nothing changed.
func (d *daemon) ensureFastpath() error {
	if d.fast == nil {
		return nil
	}
	want := fastpath.Config{Local: d.lease().Subnet, Scope: d.network.CIDR, Netd: true}
	if have, err := d.fast.Config(); err != nil || have != want {
		if err := d.fast.Configure(want); err != nil {
			return err
		}
	}
	var errs []error
	for _, idx := range d.uplinks() {
		errs = append(errs, d.fast.AttachUplink(idx))
	}
	return errors.Join(errs...)
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

// leaveFastpath detaches the network's uplink programs from link (the
// backend's teardown deleted the VTEP with its programs) and removes the
// network's pins. Containers still attached keep their programs with the
// unpinned maps until they are deleted.
func leaveFastpath(bpffs, network string, link netlink.Link) error {
	lock, err := fastpath.Acquire(bpffs)
	if errors.Is(err, fastpath.ErrNoBPFFS) {
		return nil // nothing can be pinned
	}
	if err != nil {
		return err
	}
	defer lock.Release()
	n, err := fastpath.OpenExisting(bpffs, network)
	if err != nil || n == nil {
		return err
	}
	defer n.Close()
	if err := n.DetachUplink(link.Attrs().Index); err != nil {
		return err
	}
	return fastpath.Remove(bpffs, network)
}

// fastpathCollector publishes the programs' counters when scraped.
type fastpathCollector struct {
	n    *fastpath.Network
	desc *prometheus.Desc
}

func (c fastpathCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c fastpathCollector) Collect(ch chan<- prometheus.Metric) {
	s, err := c.n.Stats()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for path, v := range map[string]uint64{"local": s.Local, "fib": s.FIB, "neigh": s.Neigh, "arrived": s.Arrived,
		"translated": s.Translated, "spoofed": s.Spoofed} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(v), path)
	}
}
