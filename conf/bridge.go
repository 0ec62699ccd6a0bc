package conf

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berthnet/berth/internal/cnierr"
)

// Defaults shared by the bridge-family plugins.
const (
	DefaultBridge   = "berth0"
	DefaultStateDir = "/run/berth"
	MinMTU          = 576
	MaxMTU          = 65535
)

// SupportedVersions are the CNI spec versions every berth plugin speaks:
// results are given in the config's version (types.PrintResult converts).
// 0.3.x has no CHECK, 1.0.0 no GC and STATUS; libcni does not call them.
var SupportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// DefaultCNIVersion is what berth writes into the conflists it makes: the
// newest version that every runtime in use accepts (podman 4.x and
// containerd 1.6/1.7 refuse 1.1.0 results). 1.1.0 brings GC and STATUS
// for runtimes that call them.
const DefaultCNIVersion = "1.0.0"

// ValidCNIVersion checks a cniVersion berth is asked to write or read.
func ValidCNIVersion(field, v string) error {
	if !slices.Contains(SupportedVersions, v) {
		return fmt.Errorf("%w: %s: cniVersion %q: berth supports %s", cnierr.ErrIncompatibleVersion, field, v, strings.Join(SupportedVersions, ", "))
	}
	return nil
}

// Bridge is the configuration of berth-bridge, and the base of
// berth-vxlan and berth-hostgw (which fill the subnet from the node lease).
type Bridge struct {
	types.NetConf

	BridgeName       string `json:"bridge"`
	IsGateway        *bool  `json:"isGateway"`        // default true
	IsDefaultGateway bool   `json:"isDefaultGateway"` // default route via the gateway
	ForceAddress     bool   `json:"forceAddress"`
	IPMasq           *bool  `json:"ipMasq"` // default true
	MTU              int    `json:"mtu"`
	HairpinMode      *bool  `json:"hairpinMode"` // default true: a container reaches its own published ports
	PromiscMode      bool   `json:"promiscMode"`
	Isolation        *bool  `json:"isolation"` // default true: no traffic to other berth networks
	StateDir         string `json:"stateDir"`
	LeaseDir         string `json:"leaseDir"`  // vxlan/hostgw: where netd writes the node lease
	Datapath         string `json:"datapath"`  // "iptables" (default) or "ebpf"; see datapath.go
	BPFFS            string `json:"bpffs"`     // ebpf: BPF filesystem for the pins (default /sys/fs/bpf)
	GuardHook        string `json:"guardHook"` // iptables: where the source guard runs, "tc" (default) or "tcx"; see datapath.go

	RuntimeConfig RuntimeConfig `json:"runtimeConfig"`
	// Args are the config's "args" (CNI conventions): args.cni.mac.
	Args struct {
		CNI struct {
			MAC string `json:"mac"`
		} `json:"cni"`
	} `json:"args"`

	// Filled by Parse.
	// MAC is the container interface's address: runtimeConfig.mac, else
	// args.cni.mac, else MAC= in CNI_ARGS (podman run --mac-address), as
	// the reference bridge does; "" for a random one.
	MAC      string `json:"-"`
	IPAMConf *IPAM  `json:"-"`
	// Scope is the whole network: its traffic is neither masqueraded nor
	// isolated. The subnet for bridge, the cluster CIDR for overlay modes.
	Scope netip.Prefix `json:"-"`
	// Scope6 is Scope for IPv6: the IPv6 subnet for bridge (ParseIPAMFor),
	// the cluster's IPv6 CIDR for the leased modes (whoever fills the
	// IPv6 range set from the lease sets it too). Zero when the network
	// has no IPv6; if a network has an IPv6 range set but no Scope6, the
	// firewall takes that range's subnet (nothing from other nodes is
	// then let in unmasqueraded).
	Scope6 netip.Prefix `json:"-"`
}

// RuntimeConfig holds the capabilities a runtime passes; a new capability
// is a new field here (with its validation in validateCommon).
type RuntimeConfig struct {
	PortMappings []PortMapping `json:"portMappings"`
	IPs          []string      `json:"ips"`
	MAC          string        `json:"mac"`
}

// PortMapping is one entry of the portMappings capability.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

var nameRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

// ValidIfName reports why name cannot be a Linux interface name, or nil.
func ValidIfName(field, name string) error {
	switch {
	case name == "":
		return invalid(field, "empty interface name")
	case len(name) > 15:
		return invalid(field, fmt.Sprintf("%q is longer than 15 characters (IFNAMSIZ)", name))
	case name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n") || !nameRe.MatchString(name):
		return invalid(field, fmt.Sprintf("%q has characters an interface name cannot have (use letters, digits, '-', '_', '.')", name))
	}
	return nil
}

// ParseBridge decodes and validates the fields every bridge-family plugin
// shares; cniArgs is CNI_ARGS. The caller then fills the addressing:
// ParseIPAMFor for berth-bridge, the node lease for berth-vxlan and
// berth-hostgw.
func ParseBridge(stdin []byte, cniArgs string) (*Bridge, error) {
	c := &Bridge{}
	if err := Decode(stdin, c); err != nil {
		return nil, err
	}
	if err := c.validateCommon(); err != nil {
		return nil, err
	}
	if err := c.resolveMAC(cniArgs); err != nil {
		return nil, err
	}
	return c, nil
}

// resolveMAC picks the container MAC the way the reference bridge does.
func (c *Bridge) resolveMAC(cniArgs string) error {
	for _, kv := range strings.Split(cniArgs, ";") {
		if v, ok := strings.CutPrefix(kv, "MAC="); ok {
			if _, err := net.ParseMAC(v); err != nil {
				return fmt.Errorf("%w: CNI_ARGS MAC=%q is not a MAC address", cnierr.ErrInvalidEnv, v)
			}
			c.MAC = v
		}
	}
	if mac := c.Args.CNI.MAC; mac != "" {
		if _, err := net.ParseMAC(mac); err != nil {
			return invalid("args.cni.mac", fmt.Sprintf("%q is not a MAC address", mac))
		}
		c.MAC = mac
	}
	if c.RuntimeConfig.MAC != "" {
		c.MAC = c.RuntimeConfig.MAC // validated with the other capabilities
	}
	return nil
}

func (c *Bridge) validateCommon() error {
	if c.CNIVersion == "" {
		c.CNIVersion = "0.4.0" // skel refuses a config without one before we get here
	}
	if err := ValidCNIVersion("cniVersion", c.CNIVersion); err != nil {
		return err
	}
	if c.Name == "" {
		return invalid("name", "missing network name")
	}
	if !nameRe.MatchString(c.Name) {
		return invalid("name", fmt.Sprintf("%q: use letters, digits, '-', '_' or '.'", c.Name))
	}
	if c.BridgeName == "" {
		c.BridgeName = DefaultBridge
	}
	if err := ValidIfName("bridge", c.BridgeName); err != nil {
		return err
	}
	if c.MTU != 0 && (c.MTU < MinMTU || c.MTU > MaxMTU) {
		return invalid("mtu", fmt.Sprintf("%d is outside %d..%d", c.MTU, MinMTU, MaxMTU))
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.RuntimeConfig.MAC != "" {
		if _, err := net.ParseMAC(c.RuntimeConfig.MAC); err != nil {
			return invalid("runtimeConfig.mac", fmt.Sprintf("%q is not a MAC address", c.RuntimeConfig.MAC))
		}
	}
	for i := range c.RuntimeConfig.PortMappings {
		if err := c.RuntimeConfig.PortMappings[i].validate(fmt.Sprintf("runtimeConfig.portMappings[%d]", i)); err != nil {
			return err
		}
	}
	if err := checkDuplicatePorts(c.RuntimeConfig.PortMappings); err != nil {
		return err
	}
	return c.validateDatapath()
}

// ParseIPAMFor fills IPAMConf (for bridge, from the config's ipam object).
func (c *Bridge) ParseIPAMFor(stdin []byte, cniArgs string) error {
	ic, err := ParseIPAM(stdin, cniArgs)
	if err != nil {
		return err
	}
	c.IPAMConf = ic
	if c.IPAMConf.Type == "" {
		c.IPAMConf.Type = IPAMType
	}
	c.Scope, c.Scope6 = c.Subnet(false), c.Subnet(true)
	return c.checkMTUForIPv6()
}

// Subnet is the subnet of the network's first IPv4 (or IPv6) range set:
// where this node's containers get their addresses of that family. Zero
// when the network has none.
func (c *Bridge) Subnet(ipv6 bool) netip.Prefix {
	if c.IPAMConf == nil {
		return netip.Prefix{}
	}
	for _, set := range c.IPAMConf.RangeSets {
		if set[0].Subnet.Addr().Is6() == ipv6 {
			return set[0].Subnet.Masked()
		}
	}
	return netip.Prefix{}
}

// CheckPaths refuses, at ADD, a relative stateDir or berth-ipam dataDir.
// Only ADD: configs written before berth checked may have one, and DEL,
// CHECK and GC must still find what such an ADD recorded.
func (c *Bridge) CheckPaths() error {
	if err := absolute("stateDir", c.StateDir, DefaultStateDir); err != nil {
		return err
	}
	if c.IPAMConf != nil {
		return c.IPAMConf.CheckDataDir()
	}
	return nil
}

// CheckAddressing refuses, at ADD, addressing the datapath cannot serve
// or would leave unprotected: IPv6 on the eBPF datapath, a subnet no
// address can come from (IPAM.CheckAllocatable), and more than one subnet
// per family. The firewall (masquerade, isolation, forward accepts, IPv6
// anti-spoofing) and the gateway cover the one subnet per family that
// Subnet names, so an address from a second range set of a family, or
// from another subnet in a set, would escape isolation and masquerade.
// Only ADD: DEL and GC must still clean up what an older berth attached
// with such a config.
func (c *Bridge) CheckAddressing() error {
	if c.IPAMConf == nil {
		return nil
	}
	if err := c.checkDatapathFamilies(); err != nil {
		return err
	}
	if err := c.IPAMConf.CheckAllocatable(); err != nil {
		return err
	}
	first := map[bool]int{} // IPv6? -> index of the family's range set
	for i, set := range c.IPAMConf.RangeSets {
		ipv6 := set[0].Subnet.Addr().Is6()
		if j, ok := first[ipv6]; ok {
			return invalid(fmt.Sprintf("ipam.ranges[%d]", i), fmt.Sprintf("a second %s range set (ipam.ranges[%d] is one): each container gets one address per family, from one subnet; use one range set per family",
				familyName(ipv6), j))
		}
		first[ipv6] = i
		for j, r := range set[1:] {
			if r.Subnet != set[0].Subnet {
				return invalid(fmt.Sprintf("ipam.ranges[%d][%d].subnet", i, j+1), fmt.Sprintf("%s is not the set's subnet %s: a network has one subnet per family (its masquerade, isolation and gateway cover that one); split it into ranges of %s",
					r.Subnet, set[0].Subnet, set[0].Subnet))
			}
		}
	}
	return nil
}

func familyName(ipv6 bool) string {
	if ipv6 {
		return "IPv6"
	}
	return "IPv4"
}

// CheckPortFamilies refuses a port mapping whose hostIP is of a family
// the network has no addresses in: no container of the network could
// answer there. It needs the addressing (ParseIPAMFor or the lease).
func (c *Bridge) CheckPortFamilies() error {
	for i, p := range c.RuntimeConfig.PortMappings {
		if p.HostIP == "" {
			continue
		}
		ipv6 := netip.MustParseAddr(p.HostIP).Is6()
		if c.Subnet(ipv6).IsValid() {
			continue
		}
		have, want := "IPv4", "IPv6"
		if !ipv6 {
			have, want = want, have
		}
		return invalid(fmt.Sprintf("runtimeConfig.portMappings[%d].hostIP", i),
			fmt.Sprintf("%s is an %s address, but network %s has %s addresses only; publish on an %s address of the node, or leave hostIP empty", p.HostIP, want, c.Name, have, have))
	}
	return nil
}

// MinIPv6MTU is the smallest MTU IPv6 works with (RFC 8200): the kernel
// removes IPv6 from an interface with less.
const MinIPv6MTU = 1280

func (c *Bridge) checkMTUForIPv6() error {
	if c.MTU == 0 || c.MTU >= MinIPv6MTU {
		return nil
	}
	for _, set := range c.IPAMConf.RangeSets {
		if set[0].Subnet.Addr().Is6() {
			return invalid("mtu", fmt.Sprintf("%d is below %d, the minimum for IPv6, and ipam has the IPv6 range %s", c.MTU, MinIPv6MTU, set[0].Subnet))
		}
	}
	return nil
}

// Defaults for the tri-state booleans.
func (c *Bridge) Gateway() bool        { return c.IsGateway == nil || *c.IsGateway || c.IsDefaultGateway }
func (c *Bridge) Masq() bool           { return c.IPMasq == nil || *c.IPMasq }
func (c *Bridge) Hairpin() bool        { return c.HairpinMode == nil || *c.HairpinMode }
func (c *Bridge) Isolated() bool       { return c.Isolation == nil || *c.Isolation }
func (c *Bridge) Ports() []PortMapping { return c.RuntimeConfig.PortMappings }

func (p *PortMapping) validate(field string) error {
	if p.HostPort < 1 || p.HostPort > 65535 {
		return invalid(field+".hostPort", fmt.Sprintf("%d is not a port (1..65535)", p.HostPort))
	}
	if p.ContainerPort < 1 || p.ContainerPort > 65535 {
		return invalid(field+".containerPort", fmt.Sprintf("%d is not a port (1..65535)", p.ContainerPort))
	}
	p.Protocol = strings.ToLower(p.Protocol)
	if p.Protocol == "" {
		p.Protocol = "tcp"
	}
	if p.Protocol != "tcp" && p.Protocol != "udp" && p.Protocol != "sctp" {
		return invalid(field+".protocol", fmt.Sprintf("%q: use tcp, udp or sctp", p.Protocol))
	}
	if p.HostIP != "" {
		a, err := netip.ParseAddr(p.HostIP)
		if err != nil || a.Zone() != "" {
			return invalid(field+".hostIP", fmt.Sprintf("%q is not an IP address", p.HostIP))
		}
		a = a.Unmap() // ::ffff:192.0.2.1 is 192.0.2.1
		if a == netip.IPv6Loopback() {
			return invalid(field+".hostIP", "::1: the kernel cannot forward connections to ::1 to a container (IPv6 has no route_localnet); publish on 127.0.0.1, on the node's IPv6 address, or leave hostIP empty")
		}
		// "0.0.0.0" and "::" stay: every address of one family only.
		p.HostIP = a.String()
	}
	return nil
}

// HostFamilies says which families a hostIP of a port mapping publishes
// on: "" both, "0.0.0.0" or an IPv4 address IPv4, "::" or an IPv6 address
// IPv6.
func HostFamilies(hostIP string) (v4, v6 bool) {
	if hostIP == "" {
		return true, true
	}
	a, err := netip.ParseAddr(hostIP)
	if err != nil {
		return false, false
	}
	return a.Unmap().Is4(), !a.Unmap().Is4()
}

// HostsOverlap reports whether two hostIPs of the same port and protocol
// would take the same connections: they share a family, and one is a
// wildcard there or they are the same address.
func HostsOverlap(a, b string) bool {
	a4, a6 := HostFamilies(a)
	b4, b6 := HostFamilies(b)
	if !(a4 && b4 || a6 && b6) {
		return false
	}
	wildcard := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return wildcard(a) || wildcard(b) || a == b
}

// checkDuplicatePorts refuses two mappings that would take the same
// connections (the same port on overlapping host addresses); the same
// port on 0.0.0.0 and on :: is two mappings, one per family.
func checkDuplicatePorts(pms []PortMapping) error {
	for i, p := range pms {
		for j, q := range pms[:i] {
			if p.Protocol == q.Protocol && p.HostPort == q.HostPort && HostsOverlap(p.HostIP, q.HostIP) {
				return invalid(fmt.Sprintf("runtimeConfig.portMappings[%d]", i), fmt.Sprintf("host port %s/%d is also mapped by portMappings[%d]", p.Protocol, p.HostPort, j))
			}
		}
	}
	return nil
}
