package conf

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/berthnet/berth/internal/lease"
)

// Defaults of a cluster network, applied by the netd that creates it.
var (
	DefaultNetworkName = "berth"
	DefaultNetworkCIDR = netip.MustParsePrefix("10.244.0.0/16")
)

const (
	DefaultSubnetLen = 24
	// DefaultSubnetLenV6 is an IPv6 node subnet of /64, as Kubernetes'
	// --node-cidr-mask-size-ipv6 and flannel's IPv6SubnetLen default to.
	DefaultSubnetLenV6 = 64
	DefaultVNI         = 1
	// DefaultVXLANPort is the Linux kernel's and flannel's VXLAN port, not
	// IANA's 4789, so that berth replaces flannel without firewall changes.
	DefaultVXLANPort = 8472
	// VXLANOverhead is what VXLAN over IPv4 adds to a frame: outer IPv4
	// (20) + UDP (8) + VXLAN (8) + inner Ethernet (14). The inner packet's
	// family does not matter: an IPv6 container's frame costs the same.
	VXLANOverhead = 50
	// VXLANOverheadV6 is the same over an IPv6 underlay: the outer header
	// is 40 bytes, not 20.
	VXLANOverheadV6 = 70
	// MinMTUv6 is the smallest link MTU IPv6 allows (RFC 8200).
	MinMTUv6 = 1280
	maxVNI   = 1<<24 - 1
)

// Network is a cluster network as netd keeps it in etcd at
// <prefix>/networks/<name>/config. The first netd of the network writes
// it; every other netd must agree with it. A zero field means "not
// given": WithDefaults fills it when the network is created, and
// Conflicts ignores it when a netd joins.
//
// A network has an IPv4 CIDR, an IPv6 CIDR, or both (dual-stack). The
// IPv6 fields are separate ones, so that a netd from before dual-stack
// reads a dual-stack network's config as the IPv4 network it knows
// (unknown JSON fields are ignored) and keeps working during an upgrade.
type Network struct {
	Name      string       `json:"name"`
	CIDR      netip.Prefix `json:"cidr,omitzero"`       // IPv4; zero on an IPv6-only network
	SubnetLen int          `json:"subnetLen,omitempty"` // prefix length of each node's IPv4 subnet
	// CIDRv6 is the IPv6 cluster network; zero on an IPv4-only network.
	CIDRv6      netip.Prefix `json:"cidrV6,omitzero"`
	SubnetLenV6 int          `json:"subnetLenV6,omitempty"` // prefix length of each node's IPv6 subnet
	Mode        string       `json:"mode"`                  // vxlan | hostgw | bgp
	VNI         int          `json:"vni,omitempty"`
	Port        int          `json:"port,omitempty"` // VXLAN UDP port
	// MTU of container interfaces; 0 derives it from each node's underlay
	// (minus VXLANOverhead in vxlan mode).
	MTU    int   `json:"mtu,omitempty"`
	IPMasq *bool `json:"ipMasq,omitempty"` // masquerade traffic leaving CIDR (default true)
	// DirectRouting (vxlan) routes to peers on the same L2 segment
	// directly via their node IP, as hostgw does, and uses VXLAN only for
	// the others.
	DirectRouting *bool `json:"directRouting,omitempty"`
	// Datapath is "iptables" (also when empty) or "ebpf": every node
	// attaches the eBPF fast path (see datapath.go), so all must agree.
	Datapath string `json:"datapath,omitempty"`
}

// WithDefaults returns n with every field that was not given set to its
// default.
func (n Network) WithDefaults() Network {
	if n.Name == "" {
		n.Name = DefaultNetworkName
	}
	if !n.CIDR.IsValid() && !n.CIDRv6.IsValid() {
		n.CIDR = DefaultNetworkCIDR
	}
	if n.CIDR.IsValid() && n.SubnetLen == 0 {
		n.SubnetLen = DefaultSubnetLen
	}
	if n.CIDRv6.IsValid() && n.SubnetLenV6 == 0 {
		n.SubnetLenV6 = DefaultSubnetLenV6
	}
	if n.Mode == "" {
		n.Mode = lease.ModeVXLAN
	}
	if n.Mode == lease.ModeVXLAN {
		if n.VNI == 0 {
			n.VNI = DefaultVNI
		}
		if n.Port == 0 {
			n.Port = DefaultVXLANPort
		}
		if n.DirectRouting == nil {
			n.DirectRouting = new(bool)
		}
	}
	if n.IPMasq == nil {
		t := true
		n.IPMasq = &t
	}
	return n
}

// Masq reports whether traffic leaving the network is masqueraded.
func (n *Network) Masq() bool { return n.IPMasq == nil || *n.IPMasq }

// Direct reports whether vxlan mode routes same-segment peers directly.
func (n *Network) Direct() bool { return n.DirectRouting != nil && *n.DirectRouting }

// Validate checks the fields that are given; field names in errors are
// the JSON names, which match netd's flags (--network-<field>).
func (n *Network) Validate() error {
	switch {
	case n.Name != "" && !nameRe.MatchString(n.Name):
		return invalid("name", fmt.Sprintf("%q: use letters, digits, '-', '_' or '.'", n.Name))
	case n.CIDR.IsValid() && !n.CIDR.Addr().Is4():
		return invalid("cidr", fmt.Sprintf("%s is an IPv6 prefix: give it as cidrV6 (netd: --network-cidr 10.244.0.0/16,%s, or %s alone for an IPv6-only network)", n.CIDR, n.CIDR, n.CIDR))
	case n.CIDR.IsValid() && n.CIDR != n.CIDR.Masked():
		return invalid("cidr", fmt.Sprintf("%s has host bits set; did you mean %s?", n.CIDR, n.CIDR.Masked()))
	case n.CIDRv6.IsValid() && !n.CIDRv6.Addr().Is6():
		return invalid("cidrV6", fmt.Sprintf("%s is not an IPv6 prefix", n.CIDRv6))
	case n.CIDRv6.IsValid() && n.CIDRv6.Addr().Is4In6():
		return invalid("cidrV6", fmt.Sprintf("%s is an IPv4-mapped prefix; give an IPv6 one such as fd00:244::/56", n.CIDRv6))
	case n.CIDRv6.IsValid() && n.CIDRv6 != n.CIDRv6.Masked():
		return invalid("cidrV6", fmt.Sprintf("%s has host bits set; did you mean %s?", n.CIDRv6, n.CIDRv6.Masked()))
	case n.SubnetLen != 0 && (n.SubnetLen < 1 || n.SubnetLen > 30):
		return invalid("subnetLen", fmt.Sprintf("%d: a node subnet needs a length of 1..30 to hold a gateway and containers", n.SubnetLen))
	case n.SubnetLenV6 != 0 && (n.SubnetLenV6 < 1 || n.SubnetLenV6 > 126):
		return invalid("subnetLenV6", fmt.Sprintf("%d: an IPv6 node subnet needs a length of 1..126 to hold a gateway and containers (64 is usual)", n.SubnetLenV6))
	case n.Mode != "" && n.Mode != lease.ModeVXLAN && n.Mode != lease.ModeHostGW && n.Mode != lease.ModeBGP:
		return invalid("mode", fmt.Sprintf("%q: use vxlan, hostgw or bgp", n.Mode))
	case n.VNI != 0 && (n.VNI < 1 || n.VNI > maxVNI):
		return invalid("vni", fmt.Sprintf("%d is outside 1..%d", n.VNI, maxVNI))
	case n.Port != 0 && (n.Port < 1 || n.Port > 65535):
		return invalid("port", fmt.Sprintf("%d is not a UDP port", n.Port))
	case n.MTU != 0 && (n.MTU < MinMTU || n.MTU > MaxMTU):
		return invalid("mtu", fmt.Sprintf("%d is outside %d..%d", n.MTU, MinMTU, MaxMTU))
	case n.MTU != 0 && n.MTU < MinMTUv6 && n.CIDRv6.IsValid():
		return invalid("mtu", fmt.Sprintf("%d is below IPv6's minimum link MTU of %d, and the network has IPv6", n.MTU, MinMTUv6))
	case ValidDatapath("datapath", n.Datapath) != nil:
		return ValidDatapath("datapath", n.Datapath)
	case n.EBPF() && n.CIDRv6.IsValid():
		return invalid("datapath", fmt.Sprintf("%q handles IPv4 only, and the network has IPv6 (cidrV6 %s): use %q (netd --datapath=%s) for a dual-stack or IPv6-only network, or an IPv4 network",
			DatapathEBPF, n.CIDRv6, DatapathIptables, DatapathIptables))
	}
	if n.Mode != "" && n.Mode != lease.ModeVXLAN {
		switch {
		case n.VNI != 0:
			return invalid("vni", "only used in vxlan mode")
		case n.Port != 0:
			return invalid("port", "only used in vxlan mode")
		case n.Direct():
			return invalid("directRouting", "only used in vxlan mode (hostgw always routes directly)")
		}
	}
	if n.CIDR.IsValid() && n.SubnetLen != 0 && n.SubnetLen < n.CIDR.Bits() {
		return invalid("subnetLen", fmt.Sprintf("/%d is larger than the network %s", n.SubnetLen, n.CIDR))
	}
	if n.CIDRv6.IsValid() && n.SubnetLenV6 != 0 && n.SubnetLenV6 < n.CIDRv6.Bits() {
		return invalid("subnetLenV6", fmt.Sprintf("/%d is larger than the network %s", n.SubnetLenV6, n.CIDRv6))
	}
	if n.CIDR.IsValid() && n.SubnetLen != 0 && n.CIDRv6.IsValid() && n.SubnetLenV6 != 0 &&
		n.SubnetLenV6-n.CIDRv6.Bits() < n.SubnetLen-n.CIDR.Bits() {
		return invalid("cidrV6", fmt.Sprintf("%s holds %d IPv6 node subnets of /%d, fewer than the %d IPv4 subnets of /%d in %s; "+
			"each node's IPv6 subnet is paired with its IPv4 one: use a larger IPv6 network (e.g. /%d) or longer IPv6 subnets (subnetLenV6 %d)",
			n.CIDRv6, uint64(1)<<min(n.SubnetLenV6-n.CIDRv6.Bits(), 62), n.SubnetLenV6, uint64(1)<<(n.SubnetLen-n.CIDR.Bits()), n.SubnetLen, n.CIDR,
			n.SubnetLenV6-(n.SubnetLen-n.CIDR.Bits()), n.CIDRv6.Bits()+(n.SubnetLen-n.CIDR.Bits())))
	}
	return nil
}

// Conflicts lists, field by field, where n (what a joining netd was
// told) disagrees with stored (the network's config in etcd). Fields not
// given in n never conflict.
func (n *Network) Conflicts(stored *Network) []string {
	var out []string
	diff := func(field string, given bool, want, have any) {
		if given && fmt.Sprint(want) != fmt.Sprint(have) {
			out = append(out, fmt.Sprintf("%s: network has %v, this netd was given %v", field, have, want))
		}
	}
	deref := func(b *bool) any {
		if b == nil {
			return "unset"
		}
		return *b
	}
	diff("cidr", n.CIDR.IsValid(), n.CIDR, stored.CIDR)
	diff("subnetLen", n.SubnetLen != 0, n.SubnetLen, stored.SubnetLen)
	// An IPv6 network given to a netd joining an IPv4 network without one
	// is not a conflict: it is added (see WithIPv6Of).
	addsIPv6 := !stored.CIDRv6.IsValid() && stored.CIDR.IsValid()
	diff("cidrV6", n.CIDRv6.IsValid() && !addsIPv6, n.CIDRv6, stored.CIDRv6)
	diff("subnetLenV6", n.SubnetLenV6 != 0 && !addsIPv6, n.SubnetLenV6, stored.SubnetLenV6)
	diff("mode", n.Mode != "", n.Mode, stored.Mode)
	diff("vni", n.VNI != 0, n.VNI, stored.VNI)
	diff("port", n.Port != 0, n.Port, stored.Port)
	diff("mtu", n.MTU != 0, n.MTU, stored.MTU)
	diff("ipMasq", n.IPMasq != nil, deref(n.IPMasq), deref(stored.IPMasq))
	diff("directRouting", n.DirectRouting != nil, deref(n.DirectRouting), deref(stored.DirectRouting))
	diff("datapath", n.Datapath != "", n.datapath(), stored.datapath())
	return out
}

// WithIPv6Of returns n (a stored IPv4 network without IPv6) with the
// IPv6 network of given added, and true; or n and false when there is
// nothing to add. This is how an existing network becomes dual-stack: a
// netd given an IPv6 CIDR for it adds it, and netds from before
// dual-stack, which ignore the new fields, keep running IPv4.
func (n Network) WithIPv6Of(given Network) (Network, bool) {
	if !given.CIDRv6.IsValid() || n.CIDRv6.IsValid() || !n.CIDR.IsValid() {
		return n, false
	}
	n.CIDRv6, n.SubnetLenV6 = given.CIDRv6, given.SubnetLenV6
	if n.SubnetLenV6 == 0 {
		n.SubnetLenV6 = DefaultSubnetLenV6
	}
	return n, true
}

// ParseNetwork decodes a stored network config and checks it is complete.
func ParseNetwork(data []byte) (*Network, error) {
	var n Network
	if err := json.Unmarshal(data, &n); err != nil {
		return nil, invalid("network config", err.Error())
	}
	if err := n.Validate(); err != nil {
		return nil, err
	}
	switch {
	case n.Name == "" || n.Mode == "":
		return nil, invalid("network config", "name and mode are required")
	case !n.CIDR.IsValid() && !n.CIDRv6.IsValid():
		return nil, invalid("network config", "cidr (IPv4), cidrV6 (IPv6) or both are required")
	case n.CIDR.IsValid() && n.SubnetLen == 0:
		return nil, invalid("network config", "subnetLen is required with cidr")
	case n.CIDRv6.IsValid() && n.SubnetLenV6 == 0:
		return nil, invalid("network config", "subnetLenV6 is required with cidrV6")
	}
	if n.Mode == lease.ModeVXLAN && (n.VNI == 0 || n.Port == 0) {
		return nil, invalid("network config", "vni and port are required in vxlan mode")
	}
	return &n, nil
}

// NodeConflist describes the conflist netd writes for its network.
type NodeConflist struct {
	Network     string // also the CNI network name
	Mode        string // selects the plugin: berth-<mode>
	LeaseDir    string // where netd writes the node lease
	StateDir    string // the plugin's state
	IPAMDataDir string // berth-ipam's data
	Bridge      string // vxlan/hostgw: the node bridge; "" = berth0. One per network on a node.
	Datapath    string // "" or "iptables": the default; "ebpf" with BPFFS
	BPFFS       string // ebpf: the node's BPF filesystem
	// CNIVersion of the list; "" = DefaultCNIVersion. 1.1.0 for runtimes
	// that call GC and STATUS (and accept 1.1.0 results).
	CNIVersion string
}

// ConflistPath is where netd writes the conflist of network in dir.
func ConflistPath(dir, network string) string {
	return filepath.Join(dir, "10-berth-"+network+".conflist")
}

// Marshal renders the conflist a runtime loads for the network.
func (c NodeConflist) Marshal() ([]byte, error) {
	type ipam struct {
		Type    string `json:"type"`
		DataDir string `json:"dataDir"`
	}
	type plugin struct {
		Type         string          `json:"type"`
		Bridge       string          `json:"bridge,omitempty"`
		Datapath     string          `json:"datapath,omitempty"`
		BPFFS        string          `json:"bpffs,omitempty"`
		LeaseDir     string          `json:"leaseDir"`
		StateDir     string          `json:"stateDir"`
		IPAM         ipam            `json:"ipam"`
		Capabilities map[string]bool `json:"capabilities"`
	}
	version := c.CNIVersion
	if version == "" {
		version = DefaultCNIVersion
	}
	if err := ValidCNIVersion("cniVersion", version); err != nil {
		return nil, err
	}
	list := struct {
		CNIVersion string   `json:"cniVersion"`
		Name       string   `json:"name"`
		Plugins    []plugin `json:"plugins"`
	}{
		CNIVersion: version,
		Name:       c.Network,
		Plugins: []plugin{{
			Type:         "berth-" + c.Mode,
			Bridge:       c.Bridge,
			Datapath:     c.Datapath,
			BPFFS:        c.BPFFS,
			LeaseDir:     c.LeaseDir,
			StateDir:     c.StateDir,
			IPAM:         ipam{Type: IPAMType, DataDir: c.IPAMDataDir},
			Capabilities: map[string]bool{"portMappings": true, "bandwidth": true},
		}},
	}
	data, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}
