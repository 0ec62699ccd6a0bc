package conf

import (
	"fmt"
	"net/netip"
)

// Datapaths a network can run on. The default is the kernel's: bridge or
// routed veth, iptables rules. "ebpf" adds TC programs that carry the
// traffic between the network's containers past the bridge and netfilter
// (internal/fastpath); the iptables rules stay for everything else.
const (
	DatapathIptables = "iptables"
	DatapathEBPF     = "ebpf"
	// DefaultBPFFS is where the eBPF datapath pins its maps and programs
	// unless told otherwise: the BPF filesystem of a usual Linux host.
	DefaultBPFFS = "/sys/fs/bpf"
)

// ValidDatapath reports why v cannot be a datapath ("" is the default).
func ValidDatapath(field, v string) error {
	switch v {
	case "", DatapathIptables, DatapathEBPF:
		return nil
	}
	return invalid(field, fmt.Sprintf("%q: use %q (the default) or %q", v, DatapathIptables, DatapathEBPF))
}

// EBPF reports whether the network runs the eBPF datapath.
func (c *Bridge) EBPF() bool { return c.Datapath == DatapathEBPF }

// Where the iptables datapath's source guard runs on a host veth
// (internal/srcguard). A tc filter costs an ADD well under a millisecond,
// but its clsact qdisc leaves no room for the `ingress` qdisc of a
// reference bandwidth plugin chained after berth. TCX leaves room, at
// about 10 ms more per ADD (the kernel waits for an RCU grace period).
const (
	GuardHookTC  = "tc"
	GuardHookTCX = "tcx"
)

// GuardOnTCX reports whether the source guard runs on TCX.
func (c *Bridge) GuardOnTCX() bool { return c.GuardHook == GuardHookTCX }

func (c *Bridge) validateDatapath() error {
	if err := ValidDatapath("datapath", c.Datapath); err != nil {
		return err
	}
	switch {
	case c.GuardHook != "" && c.GuardHook != GuardHookTC && c.GuardHook != GuardHookTCX:
		return invalid("guardHook", fmt.Sprintf("%q: use %q (the default) or %q (room for a reference bandwidth plugin chained after berth)", c.GuardHook, GuardHookTC, GuardHookTCX))
	case c.GuardHook != "" && c.EBPF():
		return invalid("guardHook", fmt.Sprintf("only used with the iptables datapath: on %q, from_container does the anti-spoofing", DatapathEBPF))
	}
	if c.BPFFS != "" && !c.EBPF() {
		return invalid("bpffs", fmt.Sprintf("only used with \"datapath\": %q", DatapathEBPF))
	}
	if c.EBPF() && c.BPFFS == "" {
		c.BPFFS = DefaultBPFFS
	}
	if c.BPFFS != "" {
		return absolute("bpffs", c.BPFFS, DefaultBPFFS)
	}
	return nil
}

// checkDatapathFamilies refuses an IPv6 range on the eBPF datapath, whose
// programs handle IPv4 only: no family is skipped silently. (A second
// IPv4 range set, whose address the programs would drop as spoofed, is
// refused on every datapath: CheckAddressing.)
func (c *Bridge) checkDatapathFamilies() error {
	if !c.EBPF() {
		return nil
	}
	for i, set := range c.IPAMConf.RangeSets {
		for j, r := range set {
			if r.Subnet.Addr().Is6() {
				return invalid("datapath", fmt.Sprintf("%q handles IPv4 only, and ipam.ranges[%d][%d] is %s: use \"datapath\": %q for an IPv6 or dual-stack network",
					DatapathEBPF, i, j, r.Subnet, DatapathIptables))
			}
		}
	}
	return nil
}

// CheckLeasedFamilies is checkDatapathFamilies for the leased modes, whose
// ranges come from the node lease at leasePath rather than the config.
func (c *Bridge) CheckLeasedFamilies(leasePath string, subnetV6 netip.Prefix) error {
	if !c.EBPF() || !subnetV6.IsValid() {
		return nil
	}
	return invalid("datapath", fmt.Sprintf("%q handles IPv4 only, and network %s has IPv6 (subnetV6 %s in %s): run it on the %q datapath (netd --datapath=%s)",
		DatapathEBPF, c.Name, subnetV6, leasePath, DatapathIptables, DatapathIptables))
}

// EBPF reports whether the cluster network runs the eBPF datapath.
func (n *Network) EBPF() bool { return n.Datapath == DatapathEBPF }

// datapath is n's datapath with the default spelled out.
func (n *Network) datapath() string {
	if n.Datapath == "" {
		return DatapathIptables
	}
	return n.Datapath
}

// WithDatapath fills c's datapath fields from the network n runs and the
// node's BPF filesystem.
func (c NodeConflist) WithDatapath(n *Network, bpffs string) NodeConflist {
	if n.EBPF() {
		c.Datapath, c.BPFFS = DatapathEBPF, bpffs
	}
	return c
}

// CheckBandwidth refuses shaping on the eBPF datapath: its programs
// redirect a container's packets past the tc qdiscs that shape them
// (plugins/attach/bandwidth.go), so the limit would silently not hold.
func (c *Bridge) CheckBandwidth(b *Bandwidth) error {
	if b == nil || !c.EBPF() {
		return nil
	}
	return invalid("runtimeConfig.bandwidth", fmt.Sprintf("not enforced on \"datapath\": %q, whose programs bypass tc shaping: use \"datapath\": %q for shaped containers",
		DatapathEBPF, DatapathIptables))
}
